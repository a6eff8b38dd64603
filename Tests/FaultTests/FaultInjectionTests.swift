import CXLTier
import Foundation
@testable import NetnsTestSupport
import Testing

/// Faults injected under a fully attached cxl-bmc (L1 + uprobes + L3 in a pool) in the netns
/// testbed with Debian's memcached: what the user sees, that nothing wrong is served, and that it
/// recovers without manual steps. Needs root; failed (not skipped) under CI=true.
@Suite(.serialized, .enabled(if: Privilege.shouldRun, "needs root for BPF and network namespaces"))
struct FaultInjectionTests {
    init() throws { try Privilege.require() }

    private static func populate(_ tb: Testbed, keys: Int, size: Int, prefix: String) throws -> McLoad.Populate {
        let r = try tb.mcLoad(["populate", "--server", tb.serverIP4, "--keys", String(keys), "--value-size", String(size),
                               "--prefix", prefix, "--json"], timeout: .seconds(120))
        guard r.status == 0 else { throw HarnessError("populate failed: \(r)") }
        return try r.json(McLoad.Populate.self)
    }

    private static func staleCheck(_ tb: Testbed, seconds: Int = 4) throws -> (McLoad.StaleCheck, ProcessResult) {
        let r = try tb.mcLoad(["stale-check", "--server", tb.serverIP4, "--duration", String(seconds), "--readers", "2",
                               "--keys", "16", "--write-interval-us", "500", "--json"], timeout: .seconds(60))
        return (try r.json(McLoad.StaleCheck.self), r)
    }

    /// What the pool holds under `prefix0…N-1`, against the values memcached acknowledged.
    struct PoolContents { var latest = 0, older = 0, wrong = 0, absent = 0 }

    private static func readPool(_ path: String, keys: Int, prefix: String, older: Int, latest: Int) throws -> PoolContents {
        let pool = try Pool(path: path)
        let reader = try pool.reader(partition: 0)
        var c = PoolContents()
        for i in 0..<keys {
            let key = prefix + String(i)
            guard let item = reader.get(Array(key.utf8)) else { c.absent += 1; continue }
            if item.value == pattern(key, latest) { c.latest += 1 } else if item.value == pattern(key, older) { c.older += 1 } else { c.wrong += 1 }
        }
        return c
    }

    // MARK: a. kill -9 the daemon during heavy ingest

    @Test func daemonKilledDuringIngestThenRestartedOnTheSamePool() throws {
        try Testbed.with { tb in
            let memcachedPID = try tb.startMemcached(["-t", "2", "-m", "256"])
            let pool = try PoolFile()
            let options = AttachDaemon.fullOptions(tb, pool: pool.path)
            let first = try AttachDaemon(tb, options, ready: ["uprobes:", "L3:"])
            let keys = 20_000
            // Round 1 (100-byte values) is written through to L3 completely.
            #expect(try Self.populate(tb, keys: keys, size: 100, prefix: "a:").stored == keys)
            _ = try DaemonStats.wait(tb) { $0.l3["stores"] ?? 0 >= keys }

            // Round 2 (300-byte values) is running when the daemon is killed.
            let out = OutputFile()
            let ingest = try ChildProcess(
                "/usr/bin/nsenter",
                ["--net=/run/netns/\(tb.clientNS)", try Paths.product("mc-load"), "populate", "--server", tb.serverIP4,
                 "--keys", String(keys), "--value-size", "300", "--prefix", "a:", "--batch", "20", "--json"],
                stdout: out.path)
            usleep(300_000)
            #expect(!ingest.hasExited, "the ingest must still be running when the daemon dies")
            first.kill9()
            #expect(ingest.wait(timeout: .seconds(120)) == 0, "memcached keeps taking writes: \(out.contents())")

            // No daemon: XDP is still attached (a kill -9 cannot detach it), but with the uprobes gone
            // its lease runs out and it answers nothing, so writes made now cannot be served stale.
            #expect(try AttachDaemon.xdpAttached(tb))
            sleep(3)
            let beforeGap = try DaemonStats.read(tb)
            let (gap, gapRun) = try Self.staleCheck(tb)
            #expect(gap.stale == 0 && gap.corrupt == 0, "\(gapRun)")
            let afterGap = try DaemonStats.read(tb)
            #expect(afterGap.l1["hit"] == beforeGap.l1["hit"], "L1 answered while no daemon held its uprobes: \(afterGap.l1)")
            #expect(afterGap.l1["pass_no_lease"] ?? 0 > 0, "\(afterGap.l1)")

            // The pool after a kill -9 during writes: checks clean, holds nothing it was not given.
            let check = try pool.check()
            #expect(check.status == 0, "pool check after kill -9: \(check)")
            let contents = try Self.readPool(pool.path, keys: keys, prefix: "a:", older: 100, latest: 300)
            #expect(contents.wrong == 0, "\(contents)")
            #expect(contents.latest > 0, "round 2 was written through until the kill: \(contents)")

            // Restart on the same pool: no manual step.
            let second = try AttachDaemon(tb, options, ready: ["uprobes:", "L3:"])
            #expect(second.log.contents().contains("reused"), "\(second.log.contents())")
            let (after, afterRun) = try Self.staleCheck(tb)
            #expect(after.stale == 0 && after.corrupt == 0 && after.hits > 0, "\(afterRun)")
            let restarted = try DaemonStats.read(tb)
            #expect(restarted.l1["hit"] ?? 0 > afterGap.l1["hit"] ?? 0, "L1 answers again after the restart: \(restarted.l1)")

            // Writes made while no daemon watched (round 2 after the kill) never reached L3, so the
            // pool holds values older than memcached acknowledged: the new daemon finds memcached's
            // write counters moved with no record of the last daemon's, and empties L3.
            let recheck = try Self.readPool(pool.path, keys: keys, prefix: "a:", older: 100, latest: 300)
            #expect(recheck.older > 0 && recheck.wrong == 0, "the gap left older values in the pool: \(recheck)")
            #expect(second.log.contents().contains("L3 emptied"), "\(second.log.contents())")
            #expect(try DaemonStats.read(tb).l3["resyncs"] == 1)
            // What a user sees of L3: memcached loses everything; every key GET over TCP is promoted
            // from L3 or missed, and must be the value memcached last acknowledged (300 bytes).
            // And as a client sees it: memcached restarts empty; a key last written during the gap
            // is missed (L3 was emptied), never promoted with its older value.
            killMemcached(memcachedPID)
            try tb.startMemcached(["-t", "2", "-m", "256"])
            let gapKey = "a:\(keys - 1)"
            var promoted: String?
            for _ in 0..<30 {
                let got = try tb.mcLoad(["get", "--server", tb.serverIP4, gapKey, "--json"]).json(McLoad.Get.self)
                if let hit = got.hits.first { promoted = hit.value; break }
                usleep(100_000)
            }
            if let promoted {
                let bytes = Array(promoted.utf8)
                #expect(bytes == pattern(gapKey, 100) || bytes == pattern(gapKey, 300), "never a value no one wrote")
                #expect(bytes == pattern(gapKey, 300), "\(gapKey): \(bytes.count) bytes promoted, 300 acknowledged")
            }
            #expect(second.terminate() == 0, "\(second.log.contents())")
            #expect(try !AttachDaemon.xdpAttached(tb))
            let final = try pool.check()
            #expect(final.status == 0, "pool check after a clean stop: \(final)")
        }
    }

    /// The clean counterpart of (a): a daemon stopped with SIGTERM records memcached's write
    /// counters; the next one trusts the pool when nothing was written meanwhile (and promotes from
    /// it), and empties L3 when a write reached memcached while no daemon watched.
    @Test func daemonStoppedCleanlyTrustsThePoolOnlyWithoutUnseenWrites() throws {
        try Testbed.with { tb in
            _ = try tb.startMemcached(["-t", "2", "-m", "64"])
            let pool = try PoolFile()
            let options = AttachDaemon.fullOptions(tb, pool: pool.path)
            let first = try AttachDaemon(tb, options, ready: ["uprobes:", "L3:"])
            #expect(first.log.contents().contains("memcached has taken no write yet: L3 kept"), "\(first.log.contents())")
            #expect(try Self.populate(tb, keys: 200, size: 50, prefix: "c:").stored == 200)
            _ = try DaemonStats.wait(tb) { $0.l3["stores"] ?? 0 >= 200 }
            #expect(first.terminate() == 0, "\(first.log.contents())")

            // Nothing written while no daemon ran: L3 is trusted.
            let second = try AttachDaemon(tb, options, ready: ["uprobes:", "L3: no write reached memcached"])
            #expect(try DaemonStats.wait(tb) { $0.l3["resyncs"] != nil }.l3["resyncs"] == 0)
            #expect(second.terminate() == 0, "\(second.log.contents())")

            // A delete while no daemon runs: the next daemon cannot know which key, so L3 is emptied.
            let gap = try tb.mcLoad(["raw", "--server", tb.serverIP4, "delete c:7\r\n"])
            #expect(gap.stdout.contains("DELETED") || gap.stdout.contains("deleted"), "\(gap)")
            let third = try AttachDaemon(tb, options, ready: ["uprobes:", "L3 emptied"])
            #expect(third.log.contents().contains("memcached took writes while no daemon watched it"), "\(third.log.contents())")
            #expect(try DaemonStats.wait(tb) { $0.l3["resyncs"] != nil }.l3["resyncs"] == 1)
            #expect(third.terminate() == 0, "\(third.log.contents())")
        }
    }

    // MARK: b. memcached killed and restarted under a running daemon

    @Test func memcachedRestartedUnderTheDaemonIsProbedAgain() throws {
        try Testbed.with { tb in
            let firstMemcached = try tb.startMemcached(["-t", "2"])
            let pool = try PoolFile()
            let daemon = try AttachDaemon(tb, AttachDaemon.fullOptions(tb, pool: pool.path), ready: ["uprobes:", "L3:"])
            #expect(try Self.populate(tb, keys: 500, size: 64, prefix: "b:").stored == 500)
            _ = try DaemonStats.wait(tb) { $0.l3["stores"] ?? 0 >= 500 }
            let (before, beforeRun) = try Self.staleCheck(tb, seconds: 3)
            #expect(before.stale == 0 && before.hits > 0, "\(beforeRun)")
            let storedBefore = try DaemonStats.read(tb).events["store"] ?? 0

            killMemcached(firstMemcached)
            try tb.startMemcached(["-t", "2"])

            // The new process is probed with no action: its misses are promoted from L3 ...
            let get = try tb.mcLoad(["get", "--server", tb.serverIP4, "b:7", "--json"])
            _ = get
            let promoted = try DaemonStats.wait(tb) { $0.l3["promoted"] ?? 0 >= 1 }
            #expect(promoted.events["miss"] ?? 0 >= 1)
            var reply: String?
            for _ in 0..<50 {
                reply = try tb.mcLoad(["get", "--server", tb.serverIP4, "b:7", "--json"]).json(McLoad.Get.self).hits.first?.value
                if reply != nil { break }
                usleep(100_000)
            }
            #expect(reply.map { Array($0.utf8) } == pattern("b:7", 64), "promoted byte-exact: \(String(describing: reply))")
            // ... its writes are events again, and L1 stays exact under a writer.
            let (after, afterRun) = try Self.staleCheck(tb, seconds: 4)
            #expect(after.stale == 0 && after.corrupt == 0 && after.hits > 0, "\(afterRun)")
            let stats = try DaemonStats.read(tb)
            #expect(stats.events["store"] ?? 0 > storedBefore + 100, "stores of the new process seen: \(stats.events)")
            #expect(stats.l3["failures"] ?? 0 == 0, "\(stats.l3)")
            #expect(daemon.terminate() == 0, "\(daemon.log.contents())")
            #expect(try !AttachDaemon.xdpAttached(tb))
        }
    }

    // MARK: c. the pool damaged while no daemon runs

    @Test func bitFlipInThePoolIsFoundRepairedAndNeverServed() throws {
        let pool = try PoolFile(size: "16M")
        do {
            let writer = try Pool(path: pool.path).writer(partition: 0)
            for i in 0..<100 { _ = try writer.put(Array("c:\(i)".utf8), pattern("c:\(i)", 200), version: UInt64(i + 1)) }
            writer.close()
        }
        // Flip one byte inside the value of c:42 (and of c:43's record header).
        let opened = try Pool(path: pool.path)
        let reader = try opened.reader(partition: 0)
        let at = try #require(reader.locate(Array("c:42".utf8)))
        let base = UInt64(opened.partitions[0].offset)
        let fd = open(pool.path, O_RDWR)
        #expect(fd >= 0)
        var byte: UInt8 = 0
        let where42 = off_t(base + at.offset + 120)
        #expect(pread(fd, &byte, 1, where42) == 1)
        byte ^= 0x10
        #expect(pwrite(fd, &byte, 1, where42) == 1)
        close(fd)

        // Never served: the reader validates the checksum and sees a miss.
        #expect(try Pool(path: pool.path).reader(partition: 0).get(Array("c:42".utf8)) == nil)
        #expect(try Pool(path: pool.path).reader(partition: 0).get(Array("c:41".utf8))?.value == pattern("c:41", 200))

        let check = try pool.check()
        #expect(check.status == 2, "\(check)")
        #expect(check.stdout.contains("damage:") && check.stdout.contains("0x"), "says where: \(check)")
        let repair = try pool.check(repair: true)
        #expect(repair.status == 3, "\(repair)")
        let clean = try pool.check()
        #expect(clean.status == 0, "\(clean)")
        let after = try Pool(path: pool.path).reader(partition: 0)
        #expect(after.get(Array("c:42".utf8)) == nil, "the damaged item is dropped, not served")
        var intact = 0
        for i in 0..<100 where i != 42 { if after.get(Array("c:\(i)".utf8))?.value == pattern("c:\(i)", 200) { intact += 1 } }
        #expect(intact == 99, "every undamaged item survives the repair")
    }

    @Test func truncatedPoolIsRefusedWithAClearMessage() throws {
        let pool = try PoolFile(size: "16M")
        #expect(truncate(pool.path, 1 << 20) == 0)
        let check = try pool.check()
        #expect(check.status == 1 || check.status == 2, "\(check)")
        #expect(!(check.stdout + check.stderr).isEmpty)
        let inspect = try runProcess(try Paths.product("cxl-bmc"), ["pool", "inspect", pool.path])
        #expect(inspect.status < 128, "no crash: \(inspect)")
        try Testbed.with { tb in
            try tb.startMemcached(["-t", "1"])
            let log = OutputFile()
            let attach = try ChildProcess(
                "/usr/bin/nsenter",
                ["--net=/run/netns/\(tb.serverNS)", try Paths.product("cxl-bmc"), "attach", tb.serverIF]
                    + AttachDaemon.fullOptions(tb, pool: pool.path),
                stdout: log.path, stderr: log.path)
            let status = attach.wait(timeout: .seconds(30))
            #expect(status == 1, "attach must refuse a truncated pool: \(String(describing: status)) \(log.contents())")
            if status == nil { attach.signal(SIGKILL); _ = attach.wait(timeout: .seconds(5)) }
            let text = log.contents()
            #expect(text.contains("error:") && text.contains(pool.path), "a clear message naming the pool: \(text)")
            // attach opens the pool before it attaches anything: a refused pool leaves nothing behind.
            #expect(try !AttachDaemon.xdpAttached(tb), "nothing left attached after the refusal")
            #expect(!FileManager.default.fileExists(atPath: "/sys/fs/bpf/cxl-bmc/\(tb.serverIF)"), "no pins left")
        }
    }

    // MARK: d. bpffs unmounted, or the pin directory removed, under a running daemon

    enum PinLoss: String, CaseIterable, CustomTestStringConvertible {
        case unmounted, pinDirectoryRemoved
        var testDescription: String { rawValue }
    }

    @Test(arguments: PinLoss.allCases)
    func pinsLostUnderARunningDaemon(_ loss: PinLoss) throws {
        // A bpffs of our own: the host's /sys/fs/bpf is shared with everyone else on the machine.
        let root = "/tmp/cxl-bmc-fault-bpffs-\(getpid())-\(loss.rawValue)"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let mount = try runProcess("/bin/mount", ["-t", "bpf", "bpf", root])
        try #require(mount.status == 0, "\(mount)")
        defer {
            _ = try? runProcess("/bin/umount", ["-l", root])
            rmdir(root)
        }
        try Testbed.with { tb in
            try tb.startMemcached(["-t", "2"])
            let daemon = try AttachDaemon(tb, ["--pin-root", root] + AttachDaemon.fullOptions(tb, pool: nil))
            #expect(try Self.populate(tb, keys: 200, size: 64, prefix: "d:").stored == 200)
            switch loss {
            case .unmounted: #expect(try runProcess("/bin/umount", ["-l", root]).status == 0)
            case .pinDirectoryRemoved: try FileManager.default.removeItem(atPath: "\(root)/\(tb.serverIF)")
            }
            sleep(3)
            #expect(!daemon.process.hasExited, "the daemon keeps running on its own file descriptors: \(daemon.log.contents())")
            // It keeps serving, exactly.
            _ = try tb.mcLoad(["load", "--server", tb.serverIP4, "--keys", "200", "--value-size", "64", "--duration", "1", "--prefix", "d:"])
            let run = try tb.mcLoad(["load", "--server", tb.serverIP4, "--keys", "200", "--value-size", "64", "--duration", "2",
                                     "--prefix", "d:", "--validate", "--json"])
            let load = try run.json(McLoad.Load.self)
            #expect(load.validationErrors == 0 && load.replies > 100, "\(run)")
            let (stale, staleRun) = try Self.staleCheck(tb, seconds: 3)
            #expect(stale.stale == 0 && stale.hits > 0, "\(staleRun)")
            // `cxl-bmc stats` cannot find the pins any more, and says so.
            let stats = try runProcess(try Paths.product("cxl-bmc"), ["stats", tb.serverIF, "--pin-root", root])
            #expect(stats.status == 1 && stats.stderr.contains("error:"), "\(stats)")
            // SIGTERM still detaches XDP and the egress filter; no crash.
            let status = daemon.terminate()
            #expect(status == 0, "exit status \(String(describing: status)): \(daemon.log.contents())")
            #expect(try !AttachDaemon.xdpAttached(tb), "XDP left attached: \(daemon.log.contents())")
            let tc = try tb.runInServer("/sbin/tc", ["filter", "show", "dev", tb.serverIF, "egress"])
            #expect(!tc.stdout.contains("tc_mcache"), "egress filter left: \(tc.stdout)")
        }
    }

    // MARK: e. the event ring buffer flooded

    @Test func floodedRingBufferIsCountedAndL3Resyncs() throws {
        try Testbed.with { tb in
            let memcachedPID = try tb.startMemcached(["-t", "2", "-m", "256"])
            let pool = try PoolFile()
            // A 4 KiB ring (CXL_BMC_RING_BYTES; attach has no --ring-size) holds a few dozen events.
            let daemon = try AttachDaemon(tb, AttachDaemon.fullOptions(tb, pool: pool.path),
                                          environment: ["CXL_BMC_RING_BYTES=4096"], ready: ["uprobes:", "L3:"])
            #expect(try Self.populate(tb, keys: 30_000, size: 100, prefix: "e:").stored == 30_000)
            let stats = try DaemonStats.wait(tb) { $0.events["lost"] ?? 0 > 0 && $0.l3["resyncs"] ?? 0 >= 1 }
            let shown = try runProcess(try Paths.product("cxl-bmc"), ["stats", tb.serverIF])
            #expect(shown.stdout.contains("lost") && shown.stdout.contains("resyncs"), "\(shown)")
            #expect(daemon.log.contents().contains("events lost"), "logged as it happens: \(daemon.log.contents())")
            // L1 does not depend on the ring: its invalidations happen in the uprobes themselves.
            let (check, run) = try Self.staleCheck(tb, seconds: 3)
            #expect(check.stale == 0 && check.corrupt == 0 && check.hits > 0, "\(run)")
            // memcached loses everything: whatever L3 promotes back must be byte-exact.
            killMemcached(memcachedPID)
            try tb.startMemcached(["-t", "2"])
            let get = try tb.mcLoad(["get", "--server", tb.serverIP4, "--json"] + (0..<50).map { "e:\($0 * 600)" })
            let first = try get.json(McLoad.Get.self)
            _ = first
            usleep(1_500_000)
            let again = try tb.mcLoad(["get", "--server", tb.serverIP4, "--json"] + (0..<50).map { "e:\($0 * 600)" })
            let values = try again.json(McLoad.Get.self)
            for item in values.hits {
                #expect(item.value.map { Array($0.utf8) } == pattern(item.key, 100), "promoted \(item.key) wrong")
            }
            let after = try DaemonStats.read(tb)
            #expect(after.l3["failures"] ?? 0 == 0, "\(after.l3); \(stats.l3)")
            #expect(daemon.terminate() == 0, "\(daemon.log.contents())")
        }
    }
}
