import Foundation
import Testing
import NIOCore
import NIOPosix
@testable import Peering

/// One root suite, serialized: the 1 M-key placement tests would otherwise starve the timing-
/// sensitive transport tests of the (2-thread) cooperative pool on this machine.
@Suite(.serialized) struct PeeringTests {}

let testPSK = try! PreSharedKey("test-key-0123456789abcdef")
let group = MultiThreadedEventLoopGroup.singleton

/// A PeerServer on 127.0.0.1 (a free port) serving an InMemoryStore as node 1.
func startServer(psk: PreSharedKey? = testPSK, store: InMemoryStore = InMemoryStore(),
                 configure: (inout PeerServer.Configuration) -> Void = { _ in }) async throws -> PeerServer {
    var configuration = PeerServer.Configuration(localNodeID: 1, psk: psk, allowedPeers: [0, 2])
    configure(&configuration)
    return try await PeerServer.start(host: "127.0.0.1", port: 0, store: store, configuration: configuration,
                                      group: group)
}

func makeClient(port: Int, psk: PreSharedKey? = testPSK, local: NodeID = 0, peer: NodeID = 1,
                configure: (inout PeerClient.Configuration) -> Void = { _ in }) -> PeerClient {
    var configuration = PeerClient.Configuration(localNodeID: local, peerNodeID: peer, psk: psk)
    configure(&configuration)
    return PeerClient(address: PeerAddress(host: "127.0.0.1", port: port), configuration: configuration,
                      eventLoop: group.next())
}

/// A blocking TCP socket to 127.0.0.1 for speaking raw bytes at a server.
final class RawSocket {
    let fd: Int32

    init(port: Int, receiveTimeoutMilliseconds: Int = 3000) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else { close(fd); throw POSIXError(.ECONNREFUSED) }
        self.fd = fd
        var timeout = timeval(tv_sec: receiveTimeoutMilliseconds / 1000,
                              tv_usec: (receiveTimeoutMilliseconds % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    func send(_ text: String) { send(Array(text.utf8)) }

    /// Reads one `\r\n`-terminated line; nil on EOF or timeout.
    func readLine() -> String? {
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while recv(fd, &byte, 1, 0) == 1 {
            line.append(byte)
            if line.suffix(2) == [0x0d, 0x0a] { return String(decoding: line.dropLast(2), as: UTF8.self) }
        }
        return nil
    }

    /// True when the peer closed the connection (recv returns 0) within the receive timeout.
    func isClosedByPeer() -> Bool {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n == 0 { return true }
            if n < 0 { return errno == ECONNRESET }
        }
    }
}

/// A socket that listens but never accepts: TCP connects succeed (the kernel completes them into
/// the backlog) and nothing is ever said — a stalled peer.
final class SilentListener {
    let fd: Int32
    let port: Int

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        listen(fd, 16)
        self.fd = fd
        port = localPort(fd)
    }

    deinit { close(fd) }
}

func localPort(_ fd: Int32) -> Int {
    var bound = sockaddr_in()
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &bound) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return Int(UInt16(bigEndian: bound.sin_port))
}

/// A port nothing listens on right now.
func freePort() -> Int {
    let listener = try! SilentListener()
    return listener.port
}

func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

/// A memcached started by a test on 127.0.0.1, killed by pid when done.
final class MemcachedProcess {
    static let path = "/usr/bin/memcached"
    static var available: Bool { FileManager.default.isExecutableFile(atPath: path) }

    let process = Process()
    let port: Int

    init() throws {
        port = freePort()
        process.executableURL = URL(fileURLWithPath: Self.path)
        process.arguments = ["-U", "0", "-p", String(port), "-l", "127.0.0.1", "-u", "root", "-m", "64"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        for _ in 0..<100 {
            if (try? RawSocket(port: port)) != nil { return }
            usleep(20_000)
        }
        stop()
        throw POSIXError(.ETIMEDOUT)
    }

    /// SIGKILL: the test runner blocks SIGTERM and a spawned child inherits that signal mask,
    /// so memcached would never see a SIGTERM.
    func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    deinit { stop() }
}

/// A tiny seeded generator, so a failing fuzz case can be replayed.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
