import Foundation
@testable import NetnsTestSupport
import MemcacheClient

/// A memcached on 127.0.0.1 and ::1 for tests that need a real server but no privileges.
/// Killed by its own pid when the test ends.
final class LoopbackMemcached {
    static let binary = "/usr/bin/memcached"
    /// Run when memcached is installed; under CI (CI=true) run anyway, so a missing one fails.
    static let shouldRun = FileManager.default.isExecutableFile(atPath: binary) || Privilege.isCI

    let port: UInt16
    private let process: ChildProcess
    var pid: pid_t { process.pid }

    /// Starts memcached with UDP and TCP on one free port, runs `body`, and stops it.
    static func with<T>(_ arguments: [String] = [], binary: String = binary, _ body: (LoopbackMemcached) throws -> T) throws -> T {
        let server = try LoopbackMemcached(arguments, binary: binary)
        defer { server.stop() }
        return try body(server)
    }

    private init(_ arguments: [String], binary: String) throws {
        // A random port may be taken; memcached then exits at once and the next one is tried.
        for _ in 0..<10 {
            let port = UInt16.random(in: 20000...40000)
            // memcached refuses to run as root unless told which user to be.
            let process = try ChildProcess(
                binary, ["-l", "127.0.0.1,[::1]", "-p", String(port), "-U", String(port), "-t", "1"]
                    + (Privilege.isRoot ? ["-u", "root"] : []) + arguments)
            if Self.waitUntilListening(process, port) {
                self.port = port
                self.process = process
                return
            }
            process.signal(SIGKILL)
            _ = process.wait(timeout: .seconds(5))
        }
        throw HarnessError("memcached did not start on any of 10 random loopback ports")
    }

    private static func waitUntilListening(_ process: ChildProcess, _ port: UInt16) -> Bool {
        let deadline = ContinuousClock.now + .seconds(5)
        while !process.hasExited && ContinuousClock.now < deadline {
            if (try? MemcacheTCPClient(host: "127.0.0.1", port: port, timeout: .milliseconds(200))) != nil { return true }
            usleep(20_000)
        }
        return false
    }

    func tcp(_ host: String = "127.0.0.1") throws -> MemcacheTCPClient {
        try MemcacheTCPClient(host: host, port: port)
    }

    func udp(_ host: String = "127.0.0.1") throws -> MemcacheUDPClient {
        try MemcacheUDPClient(host: host, port: port)
    }

    /// SIGKILL: memcached takes seconds to act on SIGTERM, and a test memcached has nothing to save.
    private func stop() {
        process.signal(SIGKILL)
        _ = process.wait(timeout: .seconds(5))
    }
}
