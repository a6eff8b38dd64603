import Foundation
@testable import NetnsTestSupport
import Testing

/// `cxl-bmc attach` running in a testbed's server namespace, with its log.
final class AttachDaemon {
    let process: ChildProcess
    let log = OutputFile()
    let testbed: Testbed
    var pid: pid_t { process.pid }

    /// Starts `cxl-bmc attach SERVER_IF --tc-attach` plus `extra`, with `environment` (NAME=VALUE)
    /// set for it alone, and waits until every text in `ready` shows in its log.
    init(_ tb: Testbed, _ extra: [String], environment: [String] = [], ready: [String] = ["uprobes:"]) throws {
        testbed = tb
        // nsenter and env both exec: the daemon keeps the pid of the process started here.
        process = try ChildProcess(
            "/usr/bin/nsenter",
            ["--net=/run/netns/\(tb.serverNS)", "/usr/bin/env"] + environment
                + [try Paths.product("cxl-bmc"), "attach", tb.serverIF, "--tc-attach"] + extra,
            stdout: log.path, stderr: log.path)
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            if process.hasExited { throw HarnessError("cxl-bmc attach exited: \(log.contents())") }
            let text = log.contents()
            if ready.allSatisfy(text.contains), try Self.xdpAttached(tb) { return }
            usleep(50_000)
        }
        process.signal(SIGKILL)
        throw HarnessError("cxl-bmc attach not ready after 30 s: \(log.contents())")
    }

    /// The attach options that put the uprobes on every /usr/bin/memcached of the server namespace
    /// and keep L3 in `pool`.
    static func fullOptions(_ tb: Testbed, pool: String?) -> [String] {
        ["--memcached", "/usr/bin/memcached"]
            + (pool.map { ["--pool", $0, "--memcached-addr", "\(tb.serverIP4):11211"] } ?? [])
    }

    static func xdpAttached(_ tb: Testbed) throws -> Bool {
        try tb.runInServer("/sbin/ip", ["-d", "link", "show", "dev", tb.serverIF]).stdout.contains("prog/xdp")
    }

    /// SIGTERM, then its exit status (nil: still running after 20 s, then killed).
    @discardableResult
    func terminate() -> Int32? {
        process.signal(SIGTERM)
        let status = process.wait(timeout: .seconds(20))
        if status == nil {
            process.signal(SIGKILL)
            _ = process.wait(timeout: .seconds(5))
        }
        return status
    }

    func kill9() {
        process.signal(SIGKILL)
        _ = process.wait(timeout: .seconds(10))
    }

    deinit { if !process.hasExited { kill9() } }
}

/// `cxl-bmc stats IFACE --json`: L1's counters, and the daemon's "events" and "l3" objects.
struct DaemonStats {
    var l1: [String: Int] = [:]
    var events: [String: Int] = [:]
    var l3: [String: Int] = [:]

    static func read(_ tb: Testbed, pinRoot: String? = nil) throws -> DaemonStats {
        let result = try runProcess(try Paths.product("cxl-bmc"),
                                    ["stats", tb.serverIF, "--json"] + (pinRoot.map { ["--pin-root", $0] } ?? []))
        guard result.status == 0, let data = result.stdout.data(using: .utf8),
              let all = try JSONSerialization.jsonObject(with: data) as? [String: [String: Any]],
              let counters = all[tb.serverIF]
        else { throw HarnessError("cxl-bmc stats failed: \(result)") }
        var stats = DaemonStats()
        stats.l1 = counters.compactMapValues { $0 as? Int }
        stats.events = (counters["events"] as? [String: Any])?.compactMapValues { $0 as? Int } ?? [:]
        stats.l3 = (counters["l3"] as? [String: Any])?.compactMapValues { $0 as? Int } ?? [:]
        return stats
    }

    /// Polls until `condition` holds (the daemon publishes its counters once a second).
    static func wait(_ tb: Testbed, timeout: Duration = .seconds(20), until condition: (DaemonStats) -> Bool) throws -> DaemonStats {
        let deadline = ContinuousClock.now + timeout
        var last = DaemonStats()
        while ContinuousClock.now < deadline {
            if let s = try? read(tb) {
                last = s
                if condition(s) { return s }
            }
            usleep(200_000)
        }
        throw HarnessError("condition not reached in \(timeout); last stats: l1 \(last.l1), events \(last.events), l3 \(last.l3)")
    }
}

/// A pool file in /dev/shm for one test, removed afterwards.
final class PoolFile {
    let path = "/dev/shm/cxl-bmc-fault-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"

    init(size: String = "64M") throws {
        let r = try runProcess(try Paths.product("cxl-bmc"), ["pool", "create", path, "--size", size])
        guard r.status == 0 else { throw HarnessError("pool create failed: \(r)") }
    }

    func check(repair: Bool = false) throws -> ProcessResult {
        try runProcess(try Paths.product("cxl-bmc"), ["pool", "check", path] + (repair ? ["--repair"] : []))
    }

    deinit { unlink(path) }
}

/// Kills a memcached this test started (by pid) and waits until it is gone.
func killMemcached(_ pid: Int32) {
    kill(pid, SIGKILL)
    for _ in 0..<200 {
        // Gone, or a zombie waiting for init.
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        if stat.isEmpty || stat.split(separator: " ").dropFirst(2).first == "Z" { return }
        usleep(20_000)
    }
}

/// The value `mc-load populate --value-size N` writes under `key`.
func pattern(_ key: String, _ size: Int) -> [UInt8] {
    let unit = Array((key + "|").utf8)
    return (0..<size).map { unit[$0 % unit.count] }
}
