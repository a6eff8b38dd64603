import Foundation
import Synchronization

/// A two-namespace test network from kernel-scripts/testbed.sh: a server and a client namespace
/// joined by a veth pair, with IPv4 and IPv6 addresses. Use ``Testbed/with(_:)`` so that it is
/// removed, with any memcached started in it, however the test ends.
final class Testbed {
    let name: String
    let serverNS: String
    let clientNS: String
    let serverIF: String
    let clientIF: String
    let serverIP4: String
    let clientIP4: String
    let serverIP6: String
    let clientIP6: String
    /// memcached processes started in the server namespace.
    private(set) var memcachedPIDs: [Int32] = []

    /// Names are `it<pid>n<counter>`: unique per test, and tied to the process that made them.
    private static let counter = Atomic<Int>(0)

    /// Brings up a testbed, runs `body` with it and always takes it down again.
    static func with<T>(_ body: (Testbed) throws -> T) throws -> T {
        let testbed = try Testbed()
        defer { testbed.down() }
        return try body(testbed)
    }

    private init() throws {
        try Privilege.require()
        Self.removeOrphans()
        name = "it\(getpid())n\(Self.counter.add(1, ordering: .relaxed).newValue)"
        let up = try runProcess("/bin/bash", [Paths.testbedScript, "up", name])
        guard up.status == 0 else { throw HarnessError("testbed up failed: \(up)") }
        var env: [String: String] = [:]
        for line in up.stdout.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
            if parts.count == 2 { env[parts[0]] = parts[1] }
        }
        func value(_ key: String) throws -> String {
            guard let v = env[key] else { throw HarnessError("testbed up printed no \(key): \(up)") }
            return v
        }
        do {
            serverNS = try value("SERVER_NS")
            clientNS = try value("CLIENT_NS")
            serverIF = try value("SERVER_IF")
            clientIF = try value("CLIENT_IF")
            serverIP4 = try value("SERVER_IP4")
            clientIP4 = try value("CLIENT_IP4")
            serverIP6 = try value("SERVER_IP6")
            clientIP6 = try value("CLIENT_IP6")
        } catch {
            _ = try? runProcess("/bin/bash", [Paths.testbedScript, "down", name])
            throw error
        }
    }

    /// Starts /usr/bin/memcached in the server namespace on both addresses, UDP and TCP port 11211
    /// (`arguments` are appended, so they can override), and returns its pid.
    @discardableResult
    func startMemcached(_ arguments: [String] = ["-t", "1"]) throws -> Int32 {
        let result = try runProcess("/bin/bash", [Paths.testbedScript, "memcached", name] + arguments)
        guard result.status == 0,
              let line = result.stdout.split(separator: "\n").first(where: { $0.hasPrefix("MEMCACHED_PID=") }),
              let pid = Int32(line.dropFirst("MEMCACHED_PID=".count))
        else { throw HarnessError("memcached did not start: \(result)") }
        memcachedPIDs.append(pid)
        return pid
    }

    /// Runs a command in the client namespace. `nsenter` switches only the network namespace, so
    /// the host's /sys/fs/bpf stays visible.
    func runInClient(_ executable: String, _ arguments: [String], timeout: Duration = .seconds(60)) throws -> ProcessResult {
        try runProcess("/usr/bin/nsenter", ["--net=/run/netns/\(clientNS)", executable] + arguments, timeout: timeout)
    }

    /// Runs a command in the server namespace.
    func runInServer(_ executable: String, _ arguments: [String], timeout: Duration = .seconds(60)) throws -> ProcessResult {
        try runProcess("/usr/bin/nsenter", ["--net=/run/netns/\(serverNS)", executable] + arguments, timeout: timeout)
    }

    /// Runs `mc-load` in the client namespace.
    func mcLoad(_ arguments: [String], timeout: Duration = .seconds(60)) throws -> ProcessResult {
        try runInClient(try Paths.product("mc-load"), arguments, timeout: timeout)
    }

    /// Brings up `count` testbeds (hosts), runs `body` with them and always takes them down again.
    static func withMany<T>(_ count: Int, _ body: ([Testbed]) throws -> T) throws -> T {
        guard count > 0 else { return try body([]) }
        return try with { first in try withMany(count - 1) { rest in try body([first] + rest) } }
    }

    /// Joins the hosts' server namespaces on one bridged network (`testbed.sh lan`), for more than
    /// two hosts; it belongs to the first host's testbed and goes with its `down`. Returns each
    /// host's address on it, in order.
    static func lan(_ hosts: [Testbed]) throws -> [String] {
        guard let owner = hosts.first else { return [] }
        let result = try runProcess("/bin/bash", [Paths.testbedScript, "lan", owner.name] + hosts.map(\.name))
        guard result.status == 0 else { throw HarnessError("testbed lan failed: \(result)") }
        return try hosts.map { host in
            guard let line = result.stdout.split(separator: "\n").first(where: { $0.hasPrefix("LAN_IP4_\(host.name)=") })
            else { throw HarnessError("testbed lan printed no address for \(host.name): \(result)") }
            return String(line.split(separator: "=", maxSplits: 1)[1])
        }
    }

    /// Removes the namespaces and stops the memcached processes started in them (the script kills
    /// each by the pid it recorded, after checking it is still that memcached).
    func down() {
        _ = try? runProcess("/bin/bash", [Paths.testbedScript, "down", name])
        memcachedPIDs = []
    }

    /// Takes down testbeds left by test processes that died before cleaning up.
    private static func removeOrphans() {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/run/cxl-bmc-testbed")) ?? []
        for name in names {
            guard let match = name.wholeMatch(of: /it(\d+)n\d+/), let pid = Int32(match.1),
                  kill(pid, 0) != 0 && errno == ESRCH
            else { continue }
            _ = try? runProcess("/bin/bash", [Paths.testbedScript, "down", name])
        }
    }
}
