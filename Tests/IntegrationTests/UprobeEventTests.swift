import Foundation
@testable import NetnsTestSupport
import Loader
import MemcacheClient
import MemcachedProbes
import ProbeTargets
import Testing

/// The two memcached builds the probes must work on: Debian's stripped one (shipped offset table)
/// and the same source rebuilt with symbols (kernel-scripts/build-memcached.sh, run by `make deps`).
enum MemcachedBuild: String, CaseIterable, CustomTestStringConvertible {
    case debianStripped, withSymbols

    var testDescription: String { rawValue }

    var binary: String {
        get throws {
            switch self {
            case .debianStripped: return LoopbackMemcached.binary
            case .withSymbols: return try MemcachedBuild.symbolBinary()
            }
        }
    }

    /// Where build-memcached.sh put (or puts now) the build with symbols.
    static func symbolBinary() throws -> String {
        let script = Paths.repoRoot.appendingPathComponent("kernel-scripts/build-memcached.sh").path
        let result = try runProcess("/bin/bash", [script, "--print-path"], timeout: .seconds(600))
        guard result.status == 0, let path = result.stdout.split(separator: "\n").last.map(String.init),
              FileManager.default.isExecutableFile(atPath: path) else {
            throw HarnessError("build-memcached.sh failed: \(result)")
        }
        return path
    }
}

/// Probes attached to one memcached process, and the events they report.
final class ProbedMemcached {
    let server: LoopbackMemcached
    let probes: MemcachedProbes
    let reader: MemcachedEventReader
    private(set) var events: [MemcachedEvent] = []

    init(server: LoopbackMemcached, binary: String, ringBytes: UInt32 = MemcachedProbes.defaultRingBytes,
         scope: MemcachedProbes.Scope? = nil) throws {
        self.server = server
        let targets = try MemcachedTargets.resolve(binary: binary)
        probes = try MemcachedProbes(targets: targets, scope: scope ?? .process(pid: server.pid), ringBytes: ringBytes)
        reader = try probes.eventReader()
    }

    /// Reads events until `done` holds for what was read (or the timeout); returns the new ones.
    @discardableResult
    func collect(timeout: Duration = .seconds(5), until done: ([MemcachedEvent]) -> Bool) throws -> [MemcachedEvent] {
        let start = events.count
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            try reader.poll(timeoutMs: 50) { events.append($0) }
            if done(Array(events[start...])) { break }
        }
        return Array(events[start...])
    }

    /// The events until one of `kind` for `key` arrives.
    func next(_ kind: MemcachedEvent.Kind, _ key: String, timeout: Duration = .seconds(5)) throws -> MemcachedEvent {
        let got = try collect(timeout: timeout) { $0.contains { $0.kind == kind && $0.keyString == key } }
        guard let event = got.first(where: { $0.kind == kind && $0.keyString == key }) else {
            throw HarnessError("no \(kind) event for \(key); got: \(got.map(\.summary))")
        }
        return event
    }

    /// Lets late events arrive, then returns everything seen since `mark`.
    func settle(since mark: Int) throws -> [MemcachedEvent] {
        try collect(timeout: .milliseconds(300)) { _ in false }
        return Array(events[mark...])
    }

    var mark: Int { events.count }
}

private func now() -> Int64 { Int64(Date().timeIntervalSince1970) }

@Suite(.serialized, .enabled(if: Privilege.shouldRun && LoopbackMemcached.shouldRun))
struct UprobeEventTests {
    init() throws { try Privilege.require() }

    @Test("text protocol: every kind of event, decoded", arguments: MemcachedBuild.allCases)
    func textProtocol(build: MemcachedBuild) throws {
        let binary = try build.binary
        let targets = try MemcachedTargets.resolve(binary: binary)
        switch build {
        case .debianStripped:
            #expect(targets.functions["do_store_item"]?.source == .offsetTable("memcached-1.6.18-deb12u1.offsets"))
        case .withSymbols:
            #expect(targets.functions["do_store_item"]?.source == .symbols)
        }
        // The same code in both builds (the rebuild is byte-identical but for symbols), found by
        // scanning the functions the symbols or the table delimit; checked against objdump.
        #expect(targets.storeSites.map(\.address) == [0xe59f, 0xe67f, 0xe83b])
        #expect(targets.storeSites.map(\.callee) == ["item_replace", "do_item_link", "item_replace"])
        #expect(targets.deleteSites.map(\.address) == [0x21d43, 0x2277c, 0x2479a, 0x24fb2, 0x2745e, 0x27ccd])
        #expect(targets.evictSites.map(\.address) == [0x16dda, 0x16f40, 0x17007])
        #expect(targets.failedStoreLookups.map(\.address) == [0x21d2f, 0x27cbd],
                "the item_get calls of a failed text and binary set, each followed by item_unlink")
        #expect(targets.flushSites.map(\.address) == [0x23ab6, 0x24427, 0x2713c, 0x280f0],
                "two text and two binary flush stores")
        #expect(targets.flushSites.allSatisfy { $0.register == 0 }, "mov %eax, oldest_live")
        // Known code: the link probe reads the command from r13, do_store_item's entry has no probe.
        #expect(targets.storeCommandRegister == 13)

        try LoopbackMemcached.with(binary: binary) { server in
            let probed = try ProbedMemcached(server: server, binary: binary)
            let c = try server.tcp()

            #expect(try c.set("alpha", Array("hello".utf8), flags: 42, exptime: 100) == .stored)
            let set = try probed.next(.store, "alpha")
            #expect(set.storeCommand == .set)
            #expect(set.pid == server.pid)
            #expect(set.clientFlags == 42)
            #expect(set.value == Array("hello".utf8))
            #expect(set.valueLength == 5)
            // memcached assigns the CAS inside the link, after the probe: fetched on demand.
            #expect(set.cas == nil)
            let fetched = try MemcachedValueFetcher(host: "127.0.0.1", port: server.port).fetch(set)
            let gets = try c.gets(["alpha"])
            #expect(fetched == .fetched(set.with(value: Array("hello".utf8), clientFlags: 42, cas: gets.first?.cas)))
            #expect(abs((set.exptimeUnix ?? 0) - (now() + 100)) <= 2, "exptime \(String(describing: set.exptimeUnix))")

            // A store that is not applied reports nothing.
            let mark = probed.mark
            #expect(try c.request(.store(.add, key: "alpha", value: Array("x".utf8))) == .notStored)
            #expect(try c.request(.store(.add, key: "beta", value: Array("b1".utf8), flags: 7)) == .stored)
            let add = try probed.next(.store, "beta")
            #expect(add.storeCommand == .add && add.clientFlags == 7 && add.value == Array("b1".utf8))
            #expect(!probed.events[mark...].contains { $0.keyString == "alpha" && $0.kind == .store })

            #expect(try c.request(.store(.replace, key: "beta", value: Array("b2".utf8), flags: 8)) == .stored)
            let replace = try probed.next(.store, "beta")
            #expect(replace.storeCommand == .replace && replace.clientFlags == 8 && replace.value == Array("b2".utf8))

            #expect(try c.request(.store(.append, key: "beta", value: Array("+ap".utf8))) == .stored)
            let append = try probed.next(.store, "beta")
            #expect(append.storeCommand == .append && append.value == Array("b2+ap".utf8) && append.clientFlags == 8)
            #expect(try c.request(.store(.prepend, key: "beta", value: Array("pp+".utf8))) == .stored)
            let prepend = try probed.next(.store, "beta")
            #expect(prepend.storeCommand == .prepend && prepend.value == Array("pp+b2+ap".utf8))
            let fetcher = try MemcachedValueFetcher(host: "127.0.0.1", port: server.port)
            guard case .fetched(let full) = try fetcher.fetch(prepend) else {
                Issue.record("prepend value not fetched")
                return
            }
            #expect(full.value == Array("pp+b2+ap".utf8) && full.clientFlags == 8)

            let casValue = try #require(try c.gets(["beta"]).first?.cas)
            #expect(try c.request(.cas(key: "beta", value: Array("b3".utf8), cas: casValue, flags: 9)) == .stored)
            let cas = try probed.next(.store, "beta")
            #expect(cas.storeCommand == .cas && cas.value == Array("b3".utf8) && cas.clientFlags == 9)

            #expect(try c.get("nothing-here") == nil)
            let miss = try probed.next(.miss, "nothing-here")
            #expect(miss.missSource == .get)

            #expect(try c.request(.touch("beta", exptime: 300)) == .touched)
            let touch = try probed.next(.touch, "beta")
            #expect(abs((touch.exptimeUnix ?? 0) - (now() + 300)) <= 2)

            #expect(try c.set("counter", Array("10".utf8)) == .stored)
            #expect(try c.request(.incr("counter", by: 5)) == .number(15))
            let incr = try probed.next(.delta, "counter")
            #expect(incr.isIncrement && incr.number == 15)
            #expect(try c.request(.decr("counter", by: 20)) == .number(0))
            let decr = try probed.next(.delta, "counter")
            #expect(!decr.isIncrement && decr.number == 0)

            #expect(try c.delete("alpha") == .deleted)
            let delete = try probed.next(.delete, "alpha")
            #expect(delete.kind == .delete && !delete.deletedAbsentKey)
            // A delete of a key memcached does not hold: L3 may hold it, so it is reported too.
            #expect(try c.delete("alpha") == .notFound)
            let absent = try probed.next(.delete, "alpha")
            #expect(absent.deletedAbsentKey)
            // Every write counts in its key's write-sequence slot: the second delete follows the first.
            let slot = MemcachedProbes.writeSequenceSlot(of: Array("alpha".utf8))
            #expect(delete.writeSeq != nil && absent.writeSeq == delete.writeSeq.map { $0 &+ 1 })
            #expect(try probed.probes.writeSequences().current(slot: slot) == absent.writeSeq)
            #expect(miss.writeSeq == 0, "a miss carries its slot's count (no write to it yet) and takes no number")
            // A set memcached cannot store (too large) drops the old value: for a key it does not
            // hold, that is a delete of an absent key (L3 must forget it), not a GET miss.
            let bigMark = probed.mark
            let tooBig = try c.request(.store(.set, key: "too-big", value: [UInt8](repeating: 0x61, count: 2 << 20)))
            #expect("\(tooBig)".contains("too large"), "\(tooBig)")
            #expect(try probed.next(.delete, "too-big").deletedAbsentKey)
            _ = try probed.settle(since: bigMark)
            #expect(!probed.events[bigMark...].contains { $0.kind == .miss && $0.keyString == "too-big" })
            // A GET through limited_get_locked (mg with N) that misses is a miss, not a delete.
            let lockedMark = probed.mark
            _ = try c.request(.metaGet("locked-miss", flags: ["v", "N30"]))
            _ = try probed.next(.miss, "locked-miss")
            _ = try probed.settle(since: lockedMark)
            #expect(!probed.events[lockedMark...].contains { $0.kind == .delete })

            #expect(try c.request(.flushAll(delay: 5)) == .ok)
            let delayed = try probed.collect { $0.contains { $0.kind == .flush } }.first { $0.kind == .flush }
            #expect(delayed?.number == 5)
            #expect(try c.flushAll() == .ok)
            let immediate = try probed.collect { $0.contains { $0.kind == .flush } }.first { $0.kind == .flush }
            #expect(immediate?.number == 0)
            #expect(delayed?.writeSeq != nil && immediate?.writeSeq == delayed?.writeSeq.map { $0 &+ 1 },
                    "flushes count in their own slot")
            #expect(try probed.probes.writeSequences().current(slot: MemcachedProbes.flushSequenceSlot) == immediate?.writeSeq)

            let stats = try probed.probes.stats()
            #expect(stats.lost == 0 && stats.readFaults == 0)
            #expect(probed.reader.malformed == 0)
        }
    }

    @Test("meta protocol: ms, mg miss, md, ma", arguments: MemcachedBuild.allCases)
    func metaProtocol(build: MemcachedBuild) throws {
        let binary = try build.binary
        try LoopbackMemcached.with(binary: binary) { server in
            let probed = try ProbedMemcached(server: server, binary: binary)
            let c = try server.tcp()
            _ = try c.request(.metaSet("m1", value: Array("meta".utf8), flags: ["F5", "T60"]))
            let set = try probed.next(.store, "m1")
            #expect(set.storeCommand == .set && set.clientFlags == 5 && set.value == Array("meta".utf8))
            #expect(abs((set.exptimeUnix ?? 0) - (now() + 60)) <= 2)
            _ = try c.request(.metaSet("m1", value: Array("zz".utf8), flags: ["MA"]))
            let append = try probed.next(.store, "m1")
            #expect(append.storeCommand == .append && append.value == Array("metazz".utf8))
            _ = try c.request(.metaGet("m-missing", flags: ["v"]))
            #expect(try probed.next(.miss, "m-missing").missSource == .get)
            _ = try c.request(.metaGet("m-missing2", flags: ["v", "N30"]))
            #expect(try probed.next(.miss, "m-missing2").missSource == .getLocked)
            _ = try c.request(.metaSet("mc", value: Array("1".utf8)))
            _ = try c.request(.metaArithmetic("mc", flags: ["D9", "v"]))
            #expect(try probed.next(.delta, "mc").number == 10)
            _ = try c.request(.metaDelete("m1"))
            #expect(try probed.next(.delete, "m1").deletedAbsentKey == false)
            _ = try c.request(.metaDelete("m1"))
            #expect(try probed.next(.delete, "m1").deletedAbsentKey, "md of a key memcached does not hold")
        }
    }

    @Test("binary protocol: set, add, get miss, gat, touch, incr, delete, flush", arguments: MemcachedBuild.allCases)
    func binaryProtocol(build: MemcachedBuild) throws {
        let binary = try build.binary
        try LoopbackMemcached.with(binary: binary) { server in
            let probed = try ProbedMemcached(server: server, binary: binary)
            let c = try server.tcp()
            #expect(try c.binary(MemcacheBinary.set(key: "b1", value: Array("bin".utf8), flags: 3, exptime: 50)).status == 0)
            let set = try probed.next(.store, "b1")
            #expect(set.storeCommand == .set && set.clientFlags == 3 && set.value == Array("bin".utf8))
            #expect(abs((set.exptimeUnix ?? 0) - (now() + 50)) <= 2)
            #expect(try c.binary(MemcacheBinary.store(.add, key: "b2", value: Array("two".utf8))).status == 0)
            #expect(try probed.next(.store, "b2").storeCommand == .add)
            #expect(try c.binary(MemcacheBinary.get(key: "b-none")).status == 1)
            #expect(try probed.next(.miss, "b-none").missSource == .get)
            #expect(try c.binary(MemcacheBinary.get(key: "b-none2", touch: 10)).status == 1)
            #expect(try probed.next(.miss, "b-none2").missSource == .touch)
            #expect(try c.binary(MemcacheBinary.touch(key: "b1", exptime: 500)).status == 0)
            let touch = try probed.next(.touch, "b1")
            #expect(abs((touch.exptimeUnix ?? 0) - (now() + 500)) <= 2)
            #expect(try c.binary(MemcacheBinary.arithmetic(.increment, key: "bn", delta: 7, initial: 100, exptime: 0)).status == 0)
            #expect(try c.binary(MemcacheBinary.arithmetic(.increment, key: "bn", delta: 7)).status == 0)
            let incr = try probed.collect { $0.contains { $0.kind == .delta } }.first { $0.kind == .delta }
            #expect(incr?.number == 107 && incr?.keyString == "bn")
            #expect(try c.binary(MemcacheBinary.delete(key: "b2")).status == 0)
            #expect(try probed.next(.delete, "b2").deletedAbsentKey == false)
            #expect(try c.binary(MemcacheBinary.delete(key: "b2")).status == 1)
            #expect(try probed.next(.delete, "b2").deletedAbsentKey, "binary delete of a key memcached does not hold")
            #expect(try c.binary(MemcacheBinary.set(key: "b-big", value: [UInt8](repeating: 0x62, count: 2 << 20))).status == 3)
            #expect(try probed.next(.delete, "b-big").deletedAbsentKey, "a binary set too large for memcached")
            #expect(try c.binary(MemcacheBinary.flush(delay: 9)).status == 0)
            let flush = try probed.collect { $0.contains { $0.kind == .flush } }.first { $0.kind == .flush }
            #expect(flush?.number == 9)
        }
    }

    @Test("evictions from a small memcached carry key and value", arguments: MemcachedBuild.allCases)
    func evictions(build: MemcachedBuild) throws {
        let binary = try build.binary
        try LoopbackMemcached.with(["-m", "2"], binary: binary) { server in
            let probed = try ProbedMemcached(server: server, binary: binary)
            let c = try server.tcp()
            func value(_ i: Int) -> [UInt8] { Array(String(repeating: "v\(i)-", count: 600).utf8.prefix(2000)) }
            for i in 0..<3000 { _ = try c.set("ev\(i)", value(i)) }
            let got = try probed.collect(timeout: .seconds(5)) { $0.filter { $0.kind == .evict }.count >= 10 }
            let evicted = got.filter { $0.kind == .evict }
            #expect(evicted.count >= 10, "memcached -m 2 holding 6 MB must evict")
            for e in evicted.prefix(50) {
                let i = Int(e.keyString.dropFirst(2))
                #expect(i != nil && e.value == value(i ?? -1), "evicted \(e.keyString) with its value")
            }
            #expect(try probed.probes.stats().lost == 0)
        }
    }

    @Test("a value over 600 KB is chunked: the event says so and the fetched value is byte-exact")
    func largeValue() throws {
        try LoopbackMemcached.with(["-I", "2m"]) { server in
            let probed = try ProbedMemcached(server: server, binary: LoopbackMemcached.binary)
            let c = try server.tcp()
            let big = (0..<700_001).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 9) }
            #expect(try c.set("big", big, flags: 77) == .stored)
            let event = try probed.next(.store, "big")
            #expect(event.value == nil && event.needsFetch && event.valueLength == big.count)
            #expect(event.clientFlags == 77)
            let fetcher = try MemcachedValueFetcher(host: "127.0.0.1", port: server.port)
            guard case .fetched(let full) = try fetcher.fetch(event) else {
                Issue.record("not fetched")
                return
            }
            #expect(full.value == big && full.cas != nil && full.clientFlags == 77)
        }
    }

    @Test("--pid: two processes of one binary, events from the probed one only")
    func pidFilter() throws {
        try LoopbackMemcached.with { a in
            try LoopbackMemcached.with { b in
                let probed = try ProbedMemcached(server: a, binary: LoopbackMemcached.binary)
                let ca = try a.tcp(), cb = try b.tcp()
                for i in 0..<50 {
                    _ = try cb.set("other\(i)", [1, 2, 3])
                    _ = try ca.set("mine\(i)", [4, 5])
                }
                let got = try probed.collect { $0.filter { $0.kind == .store }.count >= 50 }
                try probed.collect(timeout: .milliseconds(300)) { _ in false }
                #expect(got.filter { $0.kind == .store }.count >= 50)
                #expect(probed.events.allSatisfy { $0.pid == a.pid }, "an event of pid \(b.pid) leaked")
                #expect(!probed.events.contains { $0.keyString.hasPrefix("other") })
            }
        }
    }

    @Test("network-namespace scope: every process of the binary in this namespace")
    func binaryScope() throws {
        try LoopbackMemcached.with { a in
            try LoopbackMemcached.with { b in
                let probed = try ProbedMemcached(server: a, binary: LoopbackMemcached.binary,
                                                 scope: try .currentNetworkNamespace())
                _ = try a.tcp().set("in-a", [1])
                _ = try b.tcp().set("in-b", [2])
                let got = try probed.collect { e in ["in-a", "in-b"].allSatisfy { k in e.contains { $0.keyString == k } } }
                #expect(Set(got.filter { $0.kind == .store }.map(\.pid)) == [a.pid, b.pid])
            }
        }
    }

    @Test("a full ring buffer counts what it loses")
    func lossIsCounted() throws {
        try LoopbackMemcached.with { server in
            let probed = try ProbedMemcached(server: server, binary: LoopbackMemcached.binary, ringBytes: 4096)
            let c = try server.tcp()
            let n = 300
            for i in 0..<n { _ = try c.set("flood\(i)", Array(repeating: 0x61, count: 100)) }
            let stats = try probed.probes.stats()
            #expect(stats.lost > 0, "a 4 KiB ring cannot hold \(n) events of ~420 B")
            let read = try probed.collect(timeout: .seconds(1)) { _ in false }.filter { $0.kind == .store }
            #expect(UInt64(read.count) == stats.emitted(.store))
            #expect(stats.emitted(.store) + stats.lost == UInt64(n))
        }
    }

    @Test("do_store_item keeps comm in r13 from its prologue to every link call (objdump)")
    func storeCommandRegisterHolds() throws {
        let targets = try MemcachedTargets.resolve(binary: LoopbackMemcached.binary)
        let f = try #require(targets.functions["do_store_item"])
        let size = try #require(f.size)
        let result = try runProcess("/usr/bin/objdump", [
            "-d", "--no-show-raw-insn", "-w", "--start-address=0x\(String(f.address, radix: 16))",
            "--stop-address=0x\(String(f.address + size, radix: 16))", LoopbackMemcached.binary,
        ])
        try #require(result.status == 0, "objdump: \(result)")
        let instructions = result.stdout.split(separator: "\n").compactMap { line -> (UInt64, String)? in
            let parts = line.split(separator: "\t", omittingEmptySubsequences: false)
            guard parts.count >= 2, let address = UInt64(parts[0].trimmingCharacters(in: .whitespaces).dropLast(), radix: 16)
            else { return nil }
            return (address, parts[1...].joined(separator: " ").split(whereSeparator: \.isWhitespace).joined(separator: " "))
        }
        #expect(instructions.count > 300)
        // What writes r13 (AT&T: the destination is the last operand; push, cmp and test only
        // read it): the prologue's copy of comm (%esi) and the epilogues' pops, nothing else. The
        // calls in between preserve it (callee-saved).
        let writes = instructions.filter { _, text in
            let fields = text.split(separator: " ", maxSplits: 1).map(String.init)
            let mnemonic = fields[0], operands = fields.count > 1 ? fields[1] : ""
            guard !["push", "cmp", "cmpl", "test", "testl"].contains(mnemonic) else { return false }
            let destination = operands.split(separator: ",").last.map(String.init) ?? ""
            return destination.hasPrefix("%r13") || mnemonic.hasPrefix("xchg") && operands.contains("%r13")
        }
        let first = try #require(writes.first)
        #expect(first.1 == "mov %esi,%r13d", "\(writes)")
        #expect(writes.dropFirst().allSatisfy { $0.1 == "pop %r13" }, "\(writes)")
        // The copy happens before the first call, and every link call comes after it.
        let firstCall = try #require(instructions.first { $0.1.hasPrefix("call") })
        #expect(first.0 < firstCall.0)
        #expect(targets.storeSites.allSatisfy { $0.address > first.0 })
    }

    @Test("an unknown do_store_item keeps the entry probe, and commands are still right")
    func storeCommandFallback() throws {
        // Debian's binary with one byte of do_store_item's never-executed padding changed (the
        // nopw after a jmp at 0xe61a: 66 0f 1f 44 00 00 -> displacement 1): its prologues and
        // build-id still match the shipped table, but its bytes are no longer the known body.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cxl-bmc-fallback-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let binary = dir.appendingPathComponent("memcached").path
        var bytes = try Array(Data(contentsOf: URL(fileURLWithPath: LoopbackMemcached.binary)))
        try #require(Array(bytes[0xe61a..<0xe620]) == [0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00])
        bytes[0xe61f] = 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: binary))
        try #require(chmod(binary, 0o755) == 0)

        let known = try MemcachedTargets.resolve(binary: LoopbackMemcached.binary)
        let targets = try MemcachedTargets.resolve(binary: binary)
        #expect(targets.functions["do_store_item"]?.source == .offsetTable("memcached-1.6.18-deb12u1.offsets"))
        #expect(targets.storeCommandRegister == nil)
        #expect(targets.storeSites == known.storeSites)

        let fastCount = try LoopbackMemcached.with { server in
            try MemcachedProbes(targets: known, scope: .process(pid: server.pid)).probeCount
        }
        try LoopbackMemcached.with(binary: binary) { server in
            let probed = try ProbedMemcached(server: server, binary: binary)
            #expect(probed.probes.probeCount == fastCount + 1, "do_store_item's entry probe is back")
            let c = try server.tcp()
            #expect(try c.request(.store(.add, key: "k", value: Array("a".utf8), flags: 3)) == .stored)
            #expect(try probed.next(.store, "k").storeCommand == .add)
            #expect(try c.set("k", Array("b".utf8)) == .stored)
            #expect(try probed.next(.store, "k").storeCommand == .set)
            #expect(try c.request(.store(.append, key: "k", value: Array("c".utf8))) == .stored)
            let append = try probed.next(.store, "k")
            #expect(append.storeCommand == .append && append.value == Array("bc".utf8))
        }
    }

    @Test("a table offset whose prologue differs is refused; memcached keeps serving")
    func prologueMismatch() throws {
        let shipped = try #require(OffsetTable.shipped.first { $0.name.hasPrefix("memcached-1.6.18") })
        // The shipped table with one prologue byte changed, as a table for another build would be.
        var lines = ["# test table, build-id \(shipped.buildID)"]
        for e in shipped.entries.values.sorted(by: { $0.line < $1.line }) {
            let offset = "0x" + String(e.fileOffset, radix: 16)
            if e.isData {
                lines.append("\(e.function) \(offset) kind=data")
                continue
            }
            var prologue = e.prologue
            if e.function == "do_store_item" { prologue[0] ^= 0xff }
            let hex = prologue.map { String(format: "%02x", $0) }.joined()
            lines.append("\(e.function) \(offset) size=\(e.size ?? 0) prologue=\(hex)")
        }
        let broken = lines.joined(separator: "\n")
        let table = try OffsetTable(name: "broken.offsets", text: broken)
        try LoopbackMemcached.with { server in
            let c = try server.tcp()
            #expect(try c.set("before", [1]) == .stored)
            #expect {
                _ = try MemcachedTargets.resolve(binary: LoopbackMemcached.binary, debugRoot: "/nonexistent", tables: [table])
            } throws: { error in
                guard case ProbeTargetError.prologueMismatch(let function, _, _, _, _) = error else { return false }
                return function == "do_store_item" && "\(error)".contains("do_store_item")
            }
            #expect(try c.set("after", [2]) == .stored)
            #expect(try c.get("before")?.data == [1])
        }
    }

    @Test("cxl-bmc events --json prints each event live and the counters at the end")
    func eventsCommand() throws {
        try LoopbackMemcached.with { server in
            let out = OutputFile(), err = OutputFile()
            let events = try ChildProcess(try Paths.product("cxl-bmc"),
                                          ["events", "--pid", String(server.pid), "--json", "--count", "3", "--duration", "20"],
                                          stdout: out.path, stderr: err.path)
            defer { if !events.hasExited { events.signal(SIGKILL) } }
            let deadline = ContinuousClock.now + .seconds(20)
            while !err.contents().contains("tracing"), ContinuousClock.now < deadline, !events.hasExited { usleep(20_000) }
            let c = try server.tcp()
            #expect(try c.set("cli-key", Array("v1".utf8), flags: 11) == .stored)
            #expect(try c.get("cli-missing") == nil)
            #expect(try c.delete("cli-key") == .deleted)
            #expect(events.wait(timeout: .seconds(20)) == 0, "\(err.contents())")
            let lines = out.contents().split(separator: "\n").map(String.init)
            #expect(lines.count == 4, "\(lines)")
            func object(_ line: String) throws -> [String: Any] {
                try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            }
            let kinds = try lines.prefix(3).map { try object($0)["kind"] as? String }
            #expect(kinds == ["store", "miss", "delete"])
            let store = try object(lines[0])
            #expect(store["key"] as? String == "cli-key" && store["flags"] as? Int == 11 && store["store"] as? String == "set")
            #expect(store["value_b64"] as? String == Data("v1".utf8).base64EncodedString())
            let totals = try object(lines[3])
            #expect(totals["printed"] as? Int == 3 && totals["lost"] as? Int == 0)
        }
    }

    @Test("the shipped offset table is derived again, identically, from Debian's source rebuilt (kernel-scripts)")
    func offsetTableIsReproducible() throws {
        _ = try MemcachedBuild.symbolBinary() // builds it if `make deps` did not
        let script = Paths.repoRoot.appendingPathComponent("kernel-scripts/check-offsets-table.sh").path
        let r = try runProcess("/bin/bash", [script], timeout: .seconds(300))
        #expect(r.status == 0, "\(r)")
        #expect(r.stderr.contains("matches") || r.stdout.contains("matches"), "\(r)")
    }

    @Test("a stripped build with no table names its build-id and what to install")
    func noTable() throws {
        #expect {
            _ = try MemcachedTargets.resolve(binary: LoopbackMemcached.binary, debugRoot: "/nonexistent", tables: [])
        } throws: { error in
            let text = "\(error)"
            return text.contains("cb4951e778913a1598cb9fa92e8c377dfc545320") && text.contains("dbgsym")
        }
    }
}
