import Foundation
@testable import NetnsTestSupport
import Testing

/// cxl-bmc attached in front of Debian's memcached in the netns testbed: GETs answered by XDP,
/// byte-exact, and no write ever followed by an old value. Needs root; failed (not skipped) in CI.
@Suite(.serialized, .enabled(if: Privilege.shouldRun, "needs root for BPF and network namespaces"))
struct L1EndToEndTests {
    /// `cxl-bmc stats IFACE --json`: counter name → value.
    static func stats(_ tb: Testbed) throws -> [String: Int] {
        let result = try runProcess(try Paths.product("cxl-bmc"), ["stats", tb.serverIF, "--json"])
        guard result.status == 0, let data = result.stdout.data(using: .utf8),
              let all = try JSONSerialization.jsonObject(with: data) as? [String: [String: Any]],
              let counters = all[tb.serverIF]
        else { throw HarnessError("cxl-bmc stats failed: \(result)") }
        // L1's counters; a daemon's "events" and "l3" objects are beside them.
        return counters.compactMapValues { $0 as? Int }
    }

    /// GETs `key` over TCP every 100 ms until the reply contains `text` (a promotion landed) or
    /// 5 s pass; returns the last reply.
    static func getOverTCP(_ tb: Testbed, _ key: String, until text: String) throws -> String {
        let deadline = ContinuousClock.now + .seconds(5)
        var reply = ""
        while ContinuousClock.now < deadline {
            usleep(100_000)
            reply = try tb.mcLoad(["get", "--server", tb.serverIP4, key]).stdout
            if reply.contains(text) { break }
        }
        return reply
    }

    /// Runs `body` with memcached and cxl-bmc attached (XDP + TC egress) on the server veth;
    /// afterwards checks that SIGTERM detached everything and left memcached running.
    /// With `probes`, `attach --pid` puts memcached's uprobes in charge of invalidation (ingress
    /// write parsing off).
    static func withL1(probes: Bool = false, _ body: (Testbed) throws -> Void) throws {
        try withL1(probeArguments: probes ? { _, pid in ["--pid", String(pid)] } : nil) { tb, _, _ in try body(tb) }
    }

    /// `probeArguments(testbed, memcached pid)`: the uprobe options of `attach`. The body gets the
    /// testbed, memcached's pid and the daemon's log.
    /// `stopSignal` ends the daemon (SIGTERM or SIGINT: the same graceful shutdown).
    static func withL1(probeArguments: ((Testbed, Int32) -> [String])?, memcachedSurvives: Bool = true,
                       stopSignal: Int32 = SIGTERM, _ body: (Testbed, Int32, OutputFile) throws -> Void) throws {
        try Privilege.require()
        let probes = probeArguments != nil
        try Testbed.with { tb in
            let memcached = try tb.startMemcached(["-t", "2"])
            let log = OutputFile()
            let attach = try ChildProcess(
                "/usr/bin/nsenter", ["--net=/run/netns/\(tb.serverNS)", try Paths.product("cxl-bmc"), "attach", tb.serverIF, "--tc-attach"]
                    + (probeArguments?(tb, memcached) ?? []),
                stdout: log.path, stderr: log.path)
            defer {
                if !attach.hasExited { attach.signal(SIGKILL) }
            }
            // Attached once the XDP program shows on the interface.
            let deadline = ContinuousClock.now + .seconds(20)
            while try !xdpAttached(tb), ContinuousClock.now < deadline {
                if attach.hasExited { throw HarnessError("cxl-bmc attach exited: \(log.contents())") }
                usleep(50_000)
            }
            guard try xdpAttached(tb) else { throw HarnessError("cxl-bmc did not attach: \(log.contents())") }
            if probes {
                while !log.contents().contains("uprobes:"), ContinuousClock.now < deadline {
                    if attach.hasExited { throw HarnessError("cxl-bmc attach exited: \(log.contents())") }
                    usleep(50_000)
                }
                guard log.contents().contains("uprobes:") else { throw HarnessError("no uprobes: \(log.contents())") }
            }

            try body(tb, memcached, log)

            attach.signal(stopSignal)
            let status = attach.wait(timeout: .seconds(20))
            #expect(status == 0, "cxl-bmc attach exit status after signal \(stopSignal): \(String(describing: status)); log: \(log.contents())")
            #expect(try !xdpAttached(tb), "XDP program left on the interface after signal \(stopSignal)")
            #expect(!FileManager.default.fileExists(atPath: "/sys/fs/bpf/cxl-bmc/\(tb.serverIF)"), "pins left after signal \(stopSignal)")
            #expect(kill(memcached, 0) == 0 || !memcachedSurvives, "memcached must keep running")
            if probes {
                let text = log.contents()
                #expect(text.contains("detached the uprobes"), "\(text)")
                #expect(!FileManager.default.fileExists(atPath: "/run/cxl-bmc/\(tb.serverIF).json"), "status file left")
                // The shutdown order: L1 first (while it serves, the uprobes must keep invalidating
                // it), then the uprobes, then L3's write-through.
                let order = ["detached L1 from", "detached the uprobes", text.contains("\nL3: ") ? " stores, " : nil]
                    .compactMap { $0 }.map { text.range(of: $0)?.lowerBound }
                #expect(order.allSatisfy { $0 != nil } && zip(order, order.dropFirst()).allSatisfy { $0! < $1! },
                        "shutdown order: \(text)")
            }
        }
    }

    /// Starts `cxl-bmc attach` in the server namespace and waits until its XDP program is on.
    static func startAttach(_ tb: Testbed, _ extra: [String], log: OutputFile) throws -> ChildProcess {
        let attach = try ChildProcess(
            "/usr/bin/nsenter", ["--net=/run/netns/\(tb.serverNS)", try Paths.product("cxl-bmc"), "attach", tb.serverIF] + extra,
            stdout: log.path, stderr: log.path)
        let deadline = ContinuousClock.now + .seconds(20)
        while try !xdpAttached(tb), ContinuousClock.now < deadline {
            if attach.hasExited { throw HarnessError("cxl-bmc attach exited: \(log.contents())") }
            usleep(50_000)
        }
        guard try xdpAttached(tb) else { throw HarnessError("cxl-bmc did not attach: \(log.contents())") }
        return attach
    }

    static func xdpAttached(_ tb: Testbed) throws -> Bool {
        let r = try tb.runInServer("/sbin/ip", ["-d", "link", "show", "dev", tb.serverIF])
        return r.stdout.contains("prog/xdp")
    }

    @Test func hitsAreServedByXDPByteExact() throws {
        try Self.withL1 { tb in
            let populate = try tb.mcLoad(["populate", "--server", tb.serverIP4, "--keys", "200", "--value-size", "100", "--json"])
            #expect(populate.status == 0, "\(populate)")
            // The first pass fills L1 from memcached's replies; the second is served by XDP.
            _ = try tb.mcLoad(["load", "--server", tb.serverIP4, "--keys", "200", "--value-size", "100",
                               "--duration", "1", "--inflight", "8", "--validate", "--json"])
            let before = try Self.stats(tb)
            // A dropped GET still counts as a timeout; a reply delayed by a stall of the machine does not.
            let run = try tb.mcLoad(["load", "--server", tb.serverIP4, "--keys", "200", "--value-size", "100",
                                     "--duration", "2", "--inflight", "8", "--validate", "--timeout-ms", "2000", "--json"])
            let load = try run.json(McLoad.Load.self)
            let after = try Self.stats(tb)
            #expect(load.validationErrors == 0, "values must be byte-exact: \(run)")
            #expect(load.errors == 0 && load.timeouts == 0, "\(run)")
            #expect(load.hits == load.replies && load.replies > 1000, "\(run)")
            let seen = after["get_seen"]! - before["get_seen"]!
            let hits = after["hit"]! - before["hit"]!
            #expect(seen >= load.requests)
            #expect(Double(hits) > 0.9 * Double(seen), "L1 hits \(hits) of \(seen) GETs")
        }
    }

    @Test func ipv6HitsAreServedByXDP() throws {
        try Self.withL1 { tb in
            _ = try tb.mcLoad(["populate", "--server", tb.serverIP6, "--keys", "20", "--value-size", "64"])
            _ = try tb.mcLoad(["load", "--server", tb.serverIP6, "--keys", "20", "--value-size", "64",
                               "--duration", "0.5", "--inflight", "4", "--json"])
            let before = try Self.stats(tb)
            let run = try tb.mcLoad(["load", "--server", tb.serverIP6, "--keys", "20", "--value-size", "64",
                                     "--duration", "1", "--inflight", "4", "--validate", "--timeout-ms", "2000", "--json"])
            let load = try run.json(McLoad.Load.self)
            let hits = try Self.stats(tb)["hit"]! - before["hit"]!
            #expect(load.validationErrors == 0 && load.timeouts == 0, "\(run)")
            #expect(hits > 100, "IPv6 L1 hits: \(hits)")
        }
    }

    /// Every kind of write, over TCP and UDP, is seen: the next UDP GET never returns the old value.
    @Test func writesAreNeverFollowedByTheOldValue() throws {
        try Self.withL1 { tb in
            let server = ["--server", tb.serverIP4]
            func get(_ key: String) throws -> McLoad.Get {
                let r = try tb.mcLoad(["get", "--udp", "--json"] + server + [key])
                return try r.json(McLoad.Get.self)
            }
            func raw(_ text: String, udp: Bool = false) throws {
                let r = try tb.mcLoad(["raw", "--json"] + (udp ? ["--udp"] : []) + server + [text])
                #expect(r.status == 0, "\(r)")
            }
            for round in 0..<3 {
                let key = "e2e\(round)"
                try raw("set \(key) 5 0 3\r\nold\r\n")
                // GET until one is answered by L1 (the first fills it, unless the short hold
                // after the set's STORED is still running): always the value just written.
                let hitsBefore = try Self.stats(tb)["hit"]!
                var served = false
                for _ in 0..<20 where !served {
                    #expect(try get(key).hits.first?.value == "old")
                    served = try Self.stats(tb)["hit"]! > hitsBefore
                }
                #expect(served, "repeated GETs of \(key) must become L1 hits")

                // Each write, then at once a GET that must see it.
                try raw("set \(key) 5 0 3\r\nnew\r\n")
                #expect(try get(key).hits.first?.value == "new")
                _ = try get(key)
                try raw("append \(key) 0 0 1\r\nA\r\n")
                #expect(try get(key).hits.first?.value == "newA")
                _ = try get(key)
                try raw("ms \(key) 2 T0\r\nms\r\n")
                #expect(try get(key).hits.first?.value == "ms")
                _ = try get(key)
                try raw("set \(key) 5 0 3\r\nudp\r\n", udp: true)
                #expect(try get(key).hits.first?.value == "udp")
                _ = try get(key)
                try raw("delete \(key)\r\n")
                #expect(try get(key).misses == [key])
            }
            let counters = try Self.stats(tb)
            #expect(counters["invalidate"]! >= 15)
        }
    }

    /// The user's flow: attach, pin the egress filter by hand with tc, restart cxl-bmc (keeping
    /// its pins): the hand-attached filter keeps filling the very same L1.
    @Test func handAttachedEgressFilterSurvivesARestart() throws {
        try Privilege.require()
        try Testbed.with { tb in
            _ = try tb.startMemcached(["-t", "1"])
            let log = OutputFile()
            var attach = try Self.startAttach(tb, ["--keep-pins"], log: log)
            defer { if !attach.hasExited { attach.signal(SIGKILL) } }
            let pin = "/sys/fs/bpf/cxl-bmc/\(tb.serverIF)/tc_egress"
            for args in [["qdisc", "add", "dev", tb.serverIF, "clsact"],
                         ["filter", "add", "dev", tb.serverIF, "egress", "bpf", "da", "object-pinned", pin]] {
                let r = try tb.runInServer("/sbin/tc", args)
                #expect(r.status == 0, "\(r)")
            }
            func hitsAfterLoad(keys: String, prefix: String) throws -> Int {
                _ = try tb.mcLoad(["populate", "--server", tb.serverIP4, "--keys", keys, "--value-size", "32", "--prefix", prefix])
                _ = try tb.mcLoad(["load", "--server", tb.serverIP4, "--keys", keys, "--value-size", "32", "--prefix", prefix,
                                   "--duration", "1.5", "--inflight", "4"])
                let before = try Self.stats(tb)["hit"]!
                let run = try tb.mcLoad(["load", "--server", tb.serverIP4, "--keys", keys, "--value-size", "32", "--prefix", prefix,
                                         "--duration", "1", "--inflight", "4", "--validate", "--json"])
                #expect(try run.json(McLoad.Load.self).validationErrors == 0, "\(run)")
                return try Self.stats(tb)["hit"]! - before
            }
            #expect(try hitsAfterLoad(keys: "50", prefix: "a") > 100)

            let cached = try tb.mcLoad(["get", "--udp", "--json", "--server", tb.serverIP4, "a7"]).json(McLoad.Get.self)
            #expect(cached.hits.count == 1)

            attach.signal(SIGTERM)
            #expect(attach.wait(timeout: .seconds(20)) == 0, "\(log.contents())")
            #expect(FileManager.default.fileExists(atPath: pin), "--keep-pins keeps the pins")
            // A write while no XDP program watches: the kept entry must not survive the restart.
            let write = try tb.mcLoad(["raw", "--server", tb.serverIP4, "set a7 0 0 5\\r\\nwhile\\r\\n"])
            #expect(write.status == 0, "\(write)")
            attach = try Self.startAttach(tb, ["--keep-pins"], log: log)
            let after = try tb.mcLoad(["get", "--udp", "--json", "--server", tb.serverIP4, "a7"]).json(McLoad.Get.self)
            #expect(after.hits.first?.value == "while", "an entry from before the restart was served: \(after.hits)")
            // New keys: only the hand-attached filter (from before the restart) can fill them.
            #expect(try hitsAfterLoad(keys: "50", prefix: "b") > 100, "fills through the hand-attached filter after a restart")

            attach.signal(SIGTERM)
            #expect(attach.wait(timeout: .seconds(20)) == 0)
            // `detach` removes what --keep-pins left: the pins and the hand-attached filter.
            let detach = try tb.runInServer(try Paths.product("cxl-bmc"), ["detach", tb.serverIF])
            #expect(detach.status == 0, "\(detach)")
            #expect(!FileManager.default.fileExists(atPath: pin))
            let filters = try tb.runInServer("/sbin/tc", ["filter", "show", "dev", tb.serverIF, "egress"])
            #expect(!filters.stdout.contains("tc_mcache_fill"), "\(filters.stdout)")
        }
    }

    /// The whole path on one host: a set is written through to L3 (in memory here); memcached is
    /// killed and a new one started (probed automatically: `--memcached` covers future processes in
    /// the namespace); a GET misses, L3 answers, the item is promoted, and the next GET hits —
    /// byte-exact with its flags — and is then served by L1 over UDP.
    /// Once the last write reached L3: memcached killed and started again, empty (the host
    /// failure L3 covers), and the probes armed in the new process. Its pid.
    static func replaceMemcached(_ tb: Testbed, _ memcached: Int32) throws -> Int32 {
        usleep(300_000) // the event reaches L3
        kill(memcached, SIGKILL)
        usleep(300_000)
        let second = try tb.startMemcached(["-t", "2"])
        usleep(300_000) // the probes arm in the new process
        return second
    }

    @Test func itemLostByMemcachedIsPromotedBackFromL3() throws {
        try Self.withL1(probeArguments: { tb, _ in
            ["--memcached", "/usr/bin/memcached", "--no-cxl", "--memcached-addr", "\(tb.serverIP4):11211",
             "--stats-interval", "1", "--metrics", "127.0.0.1:9477"]
        }, memcachedSurvives: false) { tb, memcached, log in
            let value = "promoted-\(UInt64.random(in: 0...UInt64.max))"
            let set = try tb.mcLoad(["raw", "--server", tb.serverIP4, "set pk 31 600 \(value.utf8.count)\r\n\(value)\r\n"])
            #expect(set.status == 0 && set.stdout.contains("stored"), "\(set)")
            let second = try Self.replaceMemcached(tb, memcached)
            defer { kill(second, SIGKILL) }
            let miss = try tb.mcLoad(["get", "--server", tb.serverIP4, "pk"])
            #expect(!miss.stdout.contains(value), "the new memcached starts empty: \(miss)")
            let hit = try Self.getOverTCP(tb, "pk", until: value)
            #expect(hit.contains("pk flags=31 bytes=\(value.utf8.count): \"\(value)\""), "promoted: \(hit); log: \(log.contents())")
            // And L1 serves it from then on (UDP; the promotion's own store gave L1 its TTL).
            var udpHits = 0
            for _ in 0..<5 {
                let udp = try tb.mcLoad(["get", "--server", tb.serverIP4, "--udp", "pk"])
                if udp.stdout.contains(value) { udpHits += 1 }
            }
            #expect(udpHits == 5)
            let stats = try Self.stats(tb)
            #expect(stats["hit"]! >= 3, "L1 hits after the promotion: \(stats)")
            usleep(1_200_000)
            let block = log.contents()
            #expect(block.contains("L3: ") && block.contains("1 promoted"), "the --stats-interval block: \(block)")
            // The same from another terminal.
            let other = try tb.runInServer(try Paths.product("cxl-bmc"), ["stats", tb.serverIF, "--json"])
            #expect(other.status == 0 && other.stdout.contains("\"promoted\":1") && other.stdout.contains("\"store\":"),
                    "\(other)")
            #expect(FileManager.default.fileExists(atPath: "/run/cxl-bmc/\(tb.serverIF).json"))
            // And in Prometheus format.
            let scrape = try tb.runInServer("/usr/bin/curl", ["-sf", "http://127.0.0.1:9477/metrics"])
            #expect(scrape.status == 0 && scrape.stdout.contains("cxlbmc_l3_promoted_total 1")
                    && scrape.stdout.contains("# TYPE cxlbmc_l1_hit_total counter"), "\(scrape)")
            let notFound = try tb.runInServer("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:9477/"])
            #expect(notFound.stdout == "404", "\(notFound)")
        }
    }

    /// `--no-cxl -t N`: L3 is a CXLTier partition of exactly N index buckets in the daemon's memory;
    /// an item written through to it is promoted back after memcached lost it.
    @Test func noCXLHashTableKeepsL3InASizedPartition() throws {
        try Self.withL1(probeArguments: { tb, _ in
            ["--memcached", "/usr/bin/memcached", "--no-cxl", "-t", "100", "--memcached-addr", "\(tb.serverIP4):11211"]
        }, memcachedSurvives: false) { tb, memcached, log in
            #expect(log.contents().contains("a CXLTier partition of 100 index buckets (800 items at most)"), "\(log.contents())")
            let value = "sized-\(UInt64.random(in: 0...UInt64.max))"
            let set = try tb.mcLoad(["raw", "--server", tb.serverIP4, "set sized 7 600 \(value.utf8.count)\r\n\(value)\r\n"])
            #expect(set.stdout.contains("stored"), "\(set)")
            let second = try Self.replaceMemcached(tb, memcached)
            defer { kill(second, SIGKILL) }
            _ = try tb.mcLoad(["get", "--server", tb.serverIP4, "sized"])
            let hit = try Self.getOverTCP(tb, "sized", until: value)
            #expect(hit.contains("sized flags=7 bytes=\(value.utf8.count): \"\(value)\""), "\(hit); log: \(log.contents())")
        }
    }

    /// SIGINT shuts the daemon down exactly as SIGTERM does (withL1 checks the detach and its order).
    @Test func sigintDetachesInOrder() throws {
        try Self.withL1(probeArguments: { _, pid in ["--pid", String(pid)] }, stopSignal: SIGINT) { _, _, log in
            #expect(log.contents().contains("uprobes:"))
        }
    }

    /// `cxl-bmc detach IFACE` while the daemon runs: the daemon notices, exits 0 without touching
    /// L1 again, and still stops the rest in order (the uprobes detach).
    @Test func detachFromOutsideEndsTheDaemon() throws {
        try Privilege.require()
        try Testbed.with { tb in
            let memcached = try tb.startMemcached()
            defer { kill(memcached, SIGKILL) }
            let log = OutputFile()
            let attach = try Self.startAttach(tb, ["--pid", String(memcached)], log: log)
            defer { if !attach.hasExited { attach.signal(SIGKILL) } }
            let deadline = ContinuousClock.now + .seconds(20)
            while !log.contents().contains("uprobes:"), ContinuousClock.now < deadline { usleep(50_000) }
            let detach = try tb.runInServer(try Paths.product("cxl-bmc"), ["detach", tb.serverIF])
            #expect(detach.status == 0, "\(detach)")
            let status = attach.wait(timeout: .seconds(20))
            let text = log.contents()
            #expect(status == 0, "exit status \(String(describing: status)); log: \(text)")
            #expect(text.contains("by someone else") && text.contains("detached the uprobes"), "\(text)")
            #expect(!text.contains("detached L1 from"), "the daemon must not detach L1 again: \(text)")
            #expect(try !Self.xdpAttached(tb))
            #expect(kill(memcached, 0) == 0, "memcached must keep running")
        }
    }

    /// A SIGTERM that arrives while attach is still loading its BPF programs is kept: once
    /// attached, the daemon detaches and exits 0, never leaving L1 attached. libbpf's messages
    /// (CXL_BMC_DEBUG=2) show when the load is under way, after the signals are trapped.
    @Test func signalDuringAttachDetachesOnceAttached() throws {
        try Privilege.require()
        try Testbed.with { tb in
            var caughtDuringAttach = 0
            for _ in 0..<3 {
                let log = OutputFile()
                let attach = try ChildProcess(
                    "/usr/bin/nsenter", ["--net=/run/netns/\(tb.serverNS)", "/usr/bin/env", "CXL_BMC_DEBUG=2",
                                         try Paths.product("cxl-bmc"), "attach", tb.serverIF],
                    stdout: log.path, stderr: log.path)
                defer { if !attach.hasExited { attach.signal(SIGKILL) } }
                let deadline = ContinuousClock.now + .seconds(20)
                while !log.contents().contains("libbpf: "), !attach.hasExited, ContinuousClock.now < deadline { usleep(2_000) }
                attach.signal(SIGTERM)
                let status = attach.wait(timeout: .seconds(20))
                let text = log.contents()
                #expect(status == 0 && text.contains("detached L1 from"), "\(String(describing: status)): \(text)")
                #expect(try !Self.xdpAttached(tb), "XDP left after a SIGTERM during the attach: \(text)")
                #expect(!FileManager.default.fileExists(atPath: "/sys/fs/bpf/cxl-bmc/\(tb.serverIF)"), "pins left: \(text)")
                if text.contains("will detach as soon as the attach finishes") { caughtDuringAttach += 1 }
            }
            #expect(caughtDuringAttach > 0, "no SIGTERM landed during the attach")
        }
    }

    /// L3 in an emulated CXL pool outlives the daemon: a set is written through to the pool; the
    /// daemon and memcached both go; a new memcached and a new daemon on the same pool promote the
    /// item back on the first miss.
    @Test func poolOutlivesTheDaemon() throws {
        let pool = "/dev/shm/cxl-bmc-e2e-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { unlink(pool) }
        let create = try runProcess(try Paths.product("cxl-bmc"), ["pool", "create", pool, "--size", "64M"])
        #expect(create.status == 0, "\(create)")
        let value = "pooled-\(UInt64.random(in: 0...UInt64.max))"
        let arguments: (Testbed, Int32) -> [String] = { tb, _ in
            ["--memcached", "/usr/bin/memcached", "--pool", pool, "--memcached-addr", "\(tb.serverIP4):11211"]
        }
        try Self.withL1(probeArguments: arguments) { tb, _, log in
            let set = try tb.mcLoad(["raw", "--server", tb.serverIP4, "set pool-key 5 0 \(value.utf8.count)\r\n\(value)\r\n"])
            #expect(set.stdout.contains("stored"), "\(set)")
            usleep(300_000)
            #expect(log.contents().contains("L3: pool \(pool), partition 0"), "\(log.contents())")
        }
        // Daemon gone (SIGTERM), memcached gone with its test bed. Both anew, same pool.
        try Self.withL1(probeArguments: arguments) { tb, _, log in
            _ = try tb.mcLoad(["get", "--server", tb.serverIP4, "pool-key"])
            let hit = try Self.getOverTCP(tb, "pool-key", until: value)
            #expect(hit.contains("pool-key flags=5 bytes=\(value.utf8.count): \"\(value)\""), "\(hit); log: \(log.contents())")
        }
        let inspect = try runProcess(try Paths.product("cxl-bmc"), ["pool", "check", pool])
        #expect(inspect.status == 0, "the pool is clean after two daemons: \(inspect)")
    }

    /// memccapable (libmemcached's protocol conformance suite, text and binary over TCP) passes
    /// the same tests against memcached with all of cxl-bmc attached — L1, the uprobes, L3 in a
    /// pool — as against vanilla memcached in the same kind of test bed.
    @Test func conformanceMatchesVanilla() throws {
        func run(_ tb: Testbed) throws -> [String] {
            let r = try tb.runInClient("/usr/bin/memccapable", ["-h", tb.serverIP4, "-p", "11211", "-t", "5"],
                                       timeout: .seconds(180))
            let results = r.stdout.split(separator: "\n").filter { $0.contains("[pass]") || $0.contains("[fail]") || $0.contains("[skip]") }
                .map { $0.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ") }
            guard results.count > 20 else { throw HarnessError("memccapable printed no results: \(r)") }
            return results
        }
        let vanilla = try Testbed.with { tb in
            _ = try tb.startMemcached(["-t", "2"])
            return try run(tb)
        }
        let pool = "/dev/shm/cxl-bmc-conf-\(getpid())"
        defer { unlink(pool) }
        let create = try runProcess(try Paths.product("cxl-bmc"), ["pool", "create", pool, "--size", "64M"])
        #expect(create.status == 0, "\(create)")
        try Self.withL1(probeArguments: { tb, _ in
            ["--memcached", "/usr/bin/memcached", "--pool", pool, "--memcached-addr", "\(tb.serverIP4):11211"]
        }) { tb, _, _ in
            let attached = try run(tb)
            #expect(attached == vanilla, "vanilla:\n\(vanilla.joined(separator: "\n"))\nattached:\n\(attached.joined(separator: "\n"))")
            #expect(vanilla.allSatisfy { $0.contains("[pass]") }, "vanilla memcached fails some: \(vanilla)")
        }
    }

    /// The stale-read checker with memcached's uprobes as L1's only invalidation (ingress write
    /// parsing off): every write bumps its set exactly when memcached applies it. A heavier mix
    /// than the wire-only check: more keys, writes four times as often.
    @Test func staleCheckerWithUprobesFindsNoStaleRead() throws {
        let seconds = ProcessInfo.processInfo.environment["CXLBMC_STALE_SECONDS"] ?? "20"
        try Self.withL1(probes: true) { tb in
            let before = try Self.stats(tb)
            let run = try tb.mcLoad(["stale-check", "--server", tb.serverIP4, "--keys", "128", "--readers", "2",
                                     "--duration", seconds, "--write-interval-us", "500", "--multiget-max", "8", "--json"],
                                    timeout: .seconds(Int(Double(seconds)! + 60)))
            let check = try run.json(McLoad.StaleCheck.self)
            let after = try Self.stats(tb)
            #expect(run.status == 0, "\(run)")
            #expect(check.stale == 0 && check.corrupt == 0, "\(run)")
            #expect(check.writes > 4000 && check.reads > 1000, "\(run)")
            let hits = after["hit"]! - before["hit"]!
            let refused = after["fill_refused"]! - before["fill_refused"]!
            let segments = after["tcp_segments"]! - before["tcp_segments"]!
            #expect(hits > 1000, "L1 hits during the check: \(hits)")
            #expect(refused > 0, "fills refused (by the uprobes' bumps) during the check: \(refused)")
            #expect(segments == 0, "ingress parsed \(segments) TCP segments with the uprobes in charge")
        }
    }

    /// The stale-read checker with L1 attached: a writer sets hot keys over TCP with rising
    /// versions while readers GET over UDP; no reply may be older than the last acknowledged
    /// write. The writer is paced so that L1 really serves hits between writes.
    @Test func staleCheckerFindsNoStaleRead() throws {
        let seconds = ProcessInfo.processInfo.environment["CXLBMC_STALE_SECONDS"] ?? "20"
        try Self.withL1 { tb in
            let before = try Self.stats(tb)
            let run = try tb.mcLoad(["stale-check", "--server", tb.serverIP4, "--keys", "64", "--readers", "2",
                                     "--duration", seconds, "--write-interval-us", "2000", "--json"],
                                    timeout: .seconds(Int(Double(seconds)! + 60)))
            let check = try run.json(McLoad.StaleCheck.self)
            let after = try Self.stats(tb)
            #expect(run.status == 0, "\(run)")
            #expect(check.stale == 0 && check.corrupt == 0, "\(run)")
            #expect(check.writes > 1000 && check.reads > 1000, "\(run)")
            let hits = after["hit"]! - before["hit"]!
            let refused = after["fill_refused"]! - before["fill_refused"]!
            // Both sides of the race must really have happened.
            #expect(hits > 1000, "L1 hits during the check: \(hits)")
            #expect(refused > 0, "fills refused during the check: \(refused)")
        }
    }
}
