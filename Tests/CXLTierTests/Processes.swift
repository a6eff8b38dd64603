import Foundation
import Testing
@testable import CXLTier

/// A child started with posix_spawn (signal mask emptied so SIGKILL/SIGTERM act normally),
/// stdout and stderr to temporary files. Only its own pid is ever signalled.
final class Child {
    let pid: pid_t
    let out: String
    let err: String
    private(set) var status: Int32?

    init(_ executable: String, _ arguments: [String]) throws {
        let tag = "\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        out = NSTemporaryDirectory() + "cxl-tier-test-\(tag).out"
        err = NSTemporaryDirectory() + "cxl-tier-test-\(tag).err"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, err, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var mask = sigset_t()
        sigemptyset(&mask)
        posix_spawnattr_setsigmask(&attributes, &mask)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK))
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
        guard rc == 0 else { throw TestFailure("cannot start \(executable): \(String(cString: strerror(rc)))") }
        self.pid = pid
    }

    /// Waits for exit; the exit code, or 128 + signal.
    @discardableResult
    func wait(timeout: Double = 60) throws -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        while status == nil {
            var s: Int32 = 0
            let r = waitpid(pid, &s, WNOHANG)
            if r == pid {
                status = s & 0x7F == 0 ? (s >> 8) & 0xFF : 128 + (s & 0x7F)
                break
            }
            if Date() > deadline {
                kill(pid, SIGKILL)
                _ = waitpid(pid, &s, 0)
                status = 128 + SIGKILL
                throw TestFailure("pid \(pid) timed out; stderr: \(stderrText)")
            }
            usleep(2000)
        }
        return status!
    }

    func kill9() {
        if status == nil { kill(pid, SIGKILL) }
    }

    var stdoutText: String { (try? String(contentsOfFile: out, encoding: .utf8)) ?? "" }
    var stderrText: String { (try? String(contentsOfFile: err, encoding: .utf8)) ?? "" }

    /// The last stdout line as a JSON object of integers.
    func json() throws -> [String: Int] {
        guard let line = stdoutText.split(separator: "\n").last,
              let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Int] else {
            throw TestFailure("no JSON from pid \(pid): \(stdoutText) / \(stderrText)")
        }
        return object
    }

    deinit {
        kill9()
        if status == nil { var s: Int32 = 0; _ = waitpid(pid, &s, 0) }
        unlink(out)
        unlink(err)
    }
}

@Suite("Processes", .serialized)
struct ProcessTests {
    @Test("one writer and two reader processes on a /dev/shm pool under load: 0 wrong values")
    func writerAndReaders() throws {
        let tool = try Products.path("cxl-tier-tool")
        let tmp = TempPool()
        // Small enough that the log wraps and reclaims many times during the run.
        _ = try tmp.create(size: 4 << 20)
        let writer = try Child(tool, ["write", tmp.path, "--keys", "3000", "--seconds", "4", "--value-size", "600", "--delete-every", "17"])
        usleep(200_000)
        let readers = try (0..<2).map { try Child(tool, ["read", tmp.path, "--keys", "3000", "--seconds", "3", "--seed", "\($0)"]) }
        // And a reader thread in this process.
        let pool = try tmp.open()
        let reader = try pool.reader(partition: 0)
        var localHits = 0
        let end = Date().addingTimeInterval(2)
        while Date() < end {
            for i in 0..<1000 where reader.get(bytes("k\(i)")) != nil { localHits += 1 }
        }
        for r in readers {
            #expect(try r.wait() == 0, "\(r.stderrText)")
            let result = try r.json()
            #expect(result["wrong"] == 0)
            #expect(result["regressions"] == 0)
            #expect(result["hits"]! > 1000, "\(result)")
        }
        #expect(try writer.wait() == 0, "\(writer.stderrText)")
        let ops = try writer.json()["ops"]!
        #expect(ops > 10_000)
        #expect(localHits > 0)
        #expect(try pool.stats(partition: 0).reclaimed > 0, "the run must exercise reclaim")
        #expect(PoolCheck.check(pool.region).isClean)
    }

    @Test("kill -9 the writer at random moments, 50 times: every acknowledged operation survives")
    func killNine() throws {
        let tool = try Products.path("cxl-tier-tool")
        let tmp = TempPool()
        _ = try tmp.create(size: 64 << 20)
        let ack = NSTemporaryDirectory() + "cxl-tier-ack-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        defer { unlink(ack) }
        #expect(FileManager.default.createFile(atPath: ack, contents: nil))
        var killed = 0
        for iteration in 0..<50 {
            let writer = try Child(tool, ["write", tmp.path, "--keys", "500", "--ack", ack, "--count", "20000",
                                          "--delete-every", "11", "--seed", "\(iteration)"])
            // Mostly while puts run; one time in five during start-up and recovery.
            if iteration % 5 != 0 {
                let start = Date()
                while !writer.stdoutText.hasPrefix("ready") && Date().timeIntervalSince(start) < 20 { usleep(1000) }
            }
            usleep(UInt32.random(in: 0...40_000))
            writer.kill9()
            let status = try writer.wait()
            if status == 128 + SIGKILL { killed += 1 }
            let verify = try Child(tool, ["verify", tmp.path, "--keys", "500", "--ack", ack])
            #expect(try verify.wait() == 0, "iteration \(iteration): \(verify.stdoutText) \(verify.stderrText)")
            let result = try verify.json()
            #expect(result["lost"] == 0 && result["wrong"] == 0, "iteration \(iteration): \(result)")
        }
        #expect(killed >= 40, "most writers must die mid-run (\(killed) of 50)")
        let acked = try String(contentsOfFile: ack, encoding: .utf8).split(separator: "\n").count
        #expect(acked > 50 * 100, "the writers acknowledged only \(acked) operations")
        let pool = try tmp.open()
        #expect(try pool.stats(partition: 0).reclaimed == 0, "no reclaim, so every ack is checkable")
        #expect(try pool.stats(partition: 0).epoch > 50)
        let check = PoolCheck.check(pool.region)
        #expect(check.isClean, "\(check.damage)")
    }

    /// The same kills on a pool small enough that the log wraps all the time, with the writer
    /// reading 50 hot keys (one after each operation) so that the CLOCK hand re-appends them
    /// while the other 20 000 keys are dropped when it passes them. What the verifier accepts:
    /// a key whose last acknowledged operation is a put is found at that version or newer with
    /// its own value, or — only if the acknowledged record's log position is before the head
    /// recovery kept — is missing (the hand passed it: dropped, or re-appended and dropped on a
    /// later lap). A delete's key is absent or newer. A wrong value, an older version, or a
    /// missing put at or after the head fails, as does a reset log window.
    @Test("kill -9 the writer 50 times while CLOCK reclaims and re-appends: every acknowledged put is found or was passed by the hand")
    func killNineUnderClock() throws {
        let tool = try Products.path("cxl-tier-tool")
        let tmp = TempPool()
        // 1 MiB: about 4 500 records of ~200 B per lap of the log, so the 20 000 keys cannot all
        // stay; a sparse index (64 log bytes per slot, load about 30 %) so that no key loses its
        // slot to index displacement.
        _ = try tmp.create(size: 1 << 20, bytesPerSlot: 64)
        let ack = NSTemporaryDirectory() + "cxl-tier-ack-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        defer { unlink(ack) }
        #expect(FileManager.default.createFile(atPath: ack, contents: nil))
        var killed = 0, found = 0, reclaimed = 0, hotExpected = 0, hotFound = 0
        for iteration in 0..<50 {
            let writer = try Child(tool, ["write", tmp.path, "--keys", "20000", "--ack", ack, "--positions", "--hot", "50",
                                          "--count", "30000", "--delete-every", "13", "--seed", "\(iteration)"])
            if iteration % 5 != 0 {
                let start = Date()
                while !writer.stdoutText.hasPrefix("ready") && Date().timeIntervalSince(start) < 20 { usleep(1000) }
            }
            usleep(UInt32.random(in: 0...200_000))
            writer.kill9()
            let status = try writer.wait()
            if status == 128 + SIGKILL { killed += 1 }
            let verify = try Child(tool, ["verify", tmp.path, "--keys", "20000", "--ack", ack, "--reclaim"])
            #expect(try verify.wait() == 0, "iteration \(iteration): \(verify.stdoutText) \(verify.stderrText)")
            let result = try verify.json()
            #expect(result["lost"] == 0 && result["wrong"] == 0, "iteration \(iteration): \(result)")
            #expect(result["reset"] == 0, "recovery must never reset the log window: \(result)")
            found = result["found"] ?? 0
            reclaimed = result["reclaimed"] ?? 0
            // The hot keys are read every 50 operations, far more often than the hand comes round
            // (a lap is ~4 500 records), so CLOCK keeps them: a hot key whose last acknowledged
            // operation is a put should be in the pool. Not always (the verifier's own reads mark
            // every key it finds, and the re-append budget then drops a few records whatever
            // their bits), so this is counted, not required per key; a re-append that loses its
            // item would drop them all, and the verifier alone would accept that as reclaim.
            let reader = try tmp.open().reader(partition: 0)
            var lastOp: [String: Bool] = [:]
            for line in try String(contentsOfFile: ack, encoding: .utf8).split(separator: "\n") {
                let f = line.split(separator: " ")
                guard f.count >= 3, let i = Int(f[1].dropFirst()), i < 50 else { continue }
                lastOp[String(f[1])] = f[0] == "P"
            }
            for (key, isPut) in lastOp where isPut {
                hotExpected += 1
                if let v = reader.currentVersion(bytes(key)), !v.deleted { hotFound += 1 }
            }
        }
        #expect(hotExpected > 500 && Double(hotFound) >= 0.95 * Double(hotExpected),
                "CLOCK must keep the hot keys: \(hotFound) of \(hotExpected) found")
        #expect(killed >= 40, "most writers must die mid-run (\(killed) of 50)")
        let pool = try tmp.open()
        let stats = try pool.stats(partition: 0)
        #expect(stats.reclaimed > 10_000, "the log must have wrapped many times: \(stats)")
        #expect(stats.secondChances > 100, "CLOCK must have re-appended hot items: \(stats)")
        #expect(stats.indexEvictions == 0, "no index displacement, so only the hand can remove an acknowledged put")
        #expect(stats.epoch > 50)
        // At the end both cases must have occurred many times: found items and reclaimed ones.
        #expect(found > 1000 && reclaimed > 1000, "found \(found), reclaimed \(reclaimed)")
        let check = PoolCheck.check(pool.region)
        #expect(check.isClean, "\(check.damage)")
    }
}
