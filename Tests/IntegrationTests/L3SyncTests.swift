import CXLBMCABI
import CXLTier
import Foundation
@testable import NetnsTestSupport
@testable import L3Sync
import Synchronization
import MemcacheClient
import MemcachedProbes
import Testing

/// L3 kept in step with a real memcached through its uprobes: written through, and promoted back
/// after memcached lost its data (killed and restarted), byte-exact with flags and TTL, never
/// clobbering a newer write, never resurrecting a deleted key.
@Suite(.serialized, .enabled(if: Privilege.shouldRun && LoopbackMemcached.shouldRun))
struct L3SyncTests {
    init() throws { try Privilege.require() }

    /// Where L3 lives: this process's memory, or a CXLTier partition in an emulated pool.
    enum Backing: String, CaseIterable, CustomTestStringConvertible {
        case memory, cxlPool
        var testDescription: String { rawValue }

        /// A fresh store (and what to do afterwards).
        func make() throws -> (any L3Store, () -> Void) {
            switch self {
            case .memory:
                return (InMemoryL3Store(), {})
            case .cxlPool:
                let path = "/dev/shm/cxl-bmc-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
                let pool = try Pool.create(path: path, size: 64 << 20)
                let store = try CXLTierStore(pool: pool, partition: 0)
                return (store, { store.close(); unlink(path) })
            }
        }
    }

    /// Feeds `probed`'s events to `sync` until `done` holds.
    private func pump(_ probed: ProbedMemcached, _ sync: L3Sync, until done: () throws -> Bool) throws {
        let deadline = ContinuousClock.now + .seconds(5)
        var applied = probed.mark
        while ContinuousClock.now < deadline {
            try probed.collect(timeout: .milliseconds(50)) { _ in true }
            for e in probed.events[applied...] { sync.apply(e) }
            applied = probed.events.count
            _ = sync.drain(timeout: .seconds(2))
            if try done() { return }
        }
        throw HarnessError("condition not reached; events: \(probed.events.map(\.summary))")
    }

    @Test(arguments: Backing.allCases)
    func writeThroughThenPromotionAfterMemcachedRestarts(backing: Backing) throws {
        let (store, cleanup) = try backing.make()
        defer { cleanup() }
        let value = Array("the value \u{1}\u{2}\r\n with CRLF inside".utf8)
        var sync: L3Sync!
        var expiry: Int64 = 0
        // memcached A: the writes.
        try LoopbackMemcached.with { a in
            sync = L3Sync(store: store, memcachedHost: "127.0.0.1", port: a.port)
            let probed = try ProbedMemcached(server: a, binary: LoopbackMemcached.binary)
            let c = try a.tcp()
            #expect(try c.set("keep", value, flags: 77, exptime: 300) == .stored)
            #expect(try c.set("gone", [1, 2, 3]) == .stored)
            #expect(try c.delete("gone") == .deleted)
            try pump(probed, sync) { try store.get(key: Array("keep".utf8)) != nil }
            #expect(try store.get(key: Array("gone".utf8)) == nil)
            let held = try #require(try store.get(key: Array("keep".utf8)))
            #expect(held.value == value && held.flags == 77)
            #expect(abs(held.exptimeUnix - Int64(Date().timeIntervalSince1970) - 300) <= 2)
            expiry = held.exptimeUnix
            sync.stop()
        }
        // memcached B: empty after the restart. A GET misses, L3 answers, the item is promoted.
        try LoopbackMemcached.with { b in
            let sync = L3Sync(store: store, memcachedHost: "127.0.0.1", port: b.port)
            defer { sync.stop() }
            let probed = try ProbedMemcached(server: b, binary: LoopbackMemcached.binary)
            let c = try b.tcp()
            #expect(try c.get("keep") == nil, "B starts empty")
            #expect(try c.get("gone") == nil)
            try pump(probed, sync) { sync.snapshot.promoted >= 1 }
            let promoted = try #require(try c.get("keep"))
            #expect(promoted.data == value && promoted.flags == 77)
            guard case .meta(let meta) = try c.request(.metaGet("keep", flags: ["t"])),
                  let ttl = meta.flags.first(where: { $0.hasPrefix("t") }).flatMap({ Int($0.dropFirst()) }) else {
                Issue.record("no TTL")
                return
            }
            let now = Int64(Date().timeIntervalSince1970)
            #expect(abs(now + Int64(ttl) - expiry) <= 2, "the same expiry carried over: \(ttl) s left")
            #expect(try c.get("gone") == nil, "a deleted key is never resurrected")
            let counts = sync.snapshot
            #expect(counts.misses >= 2 && counts.l3Hits == 1 && counts.promoted == 1 && counts.failures == 0)
            #expect(counts.lookups >= 1 && counts.lookupNsTotal > 0 && counts.lookupLatencyPercentileNs(0.99) != nil)
            #expect(counts.promotionLatencyPercentileUs(0.99) != nil)

            // A newer write wins over a promotion (add semantics): L3 holds an older value.
            try store.put(key: Array("race".utf8), item: L3Item(value: [9], flags: 0, exptimeUnix: 0, version: 1))
            #expect(try c.set("race", Array("new".utf8)) == .stored)
            sync.apply(MemcachedEvent(kind: .miss, command: 1, key: Array("race".utf8)))
            #expect(sync.drain())
            #expect(try c.get("race")?.data == Array("new".utf8))
            #expect(sync.snapshot.promotionsRaced == 1)
        }
    }

    /// Lost events may have been deletes: after a loss nothing in L3 is promoted, L3 is emptied.
    @Test(arguments: Backing.allCases)
    func lostEventsStopPromotionsAndEmptyL3(backing: Backing) throws {
        let (store, cleanup) = try backing.make()
        defer { cleanup() }
        let lost = Mutex<UInt64>(0)
        try LoopbackMemcached.with { a in
            // Every slot counts 7 writes whose events were lost: after the resync, promotions trust
            // L3 without waiting for later writes (else each would wait and be deferred). y's slot
            // reads 7 at the resync and before its promotion, 8 after its add.
            let ySlot = MemcachedProbes.writeSequenceSlot(of: Array("y".utf8))
            let yReads = Mutex(0)
            let sync = L3Sync(store: store, memcachedHost: "127.0.0.1", port: a.port,
                              lostEvents: { lost.withLock { $0 } },
                              writeSequence: { slot in
                                  guard slot == ySlot else { return 7 }
                                  return yReads.withLock { n in n += 1; return n <= 2 ? 7 : 8 }
                              })
            defer { sync.stop() }
            try store.put(key: Array("x".utf8), item: L3Item(value: [1], flags: 0, exptimeUnix: 0, version: 1))
            lost.withLock { $0 = 3 }
            sync.apply(MemcachedEvent(kind: .miss, command: 1, key: Array("x".utf8)))
            #expect(sync.drain())
            #expect(try a.tcp().get("x") == nil, "not promoted after a loss")
            #expect(try store.get(key: Array("x".utf8)) == nil)
            #expect(sync.snapshot.resyncs == 1 && sync.snapshot.promoted == 0)
            // No new loss: promotions resume.
            // Written after the loss: a real write's version is its wall-clock time.
            let after = UInt64(Date().timeIntervalSince1970 * 1e6) + 1_000
            try store.put(key: Array("y".utf8), item: L3Item(value: [2], flags: 0, exptimeUnix: 0, version: after))
            sync.apply(MemcachedEvent(kind: .miss, command: 1, key: Array("y".utf8)))
            #expect(sync.drain())
            let c = try a.tcp()
            #expect(try c.get("y")?.data == [2])
            #expect(sync.snapshot.resyncs == 1 && sync.snapshot.promotionsDeferred == 0)
        }
    }

    /// The p99 of a log2 histogram is the upper bound of the bucket where 99 % is reached.
    @Test func latencyPercentilesComeFromLog2Buckets() {
        var c = L3Sync.Counters()
        #expect(c.promotionLatencyPercentileUs(0.99) == nil && c.lookupLatencyPercentileNs(0.5) == nil)
        c.lookupLatencyLog2Ns[2] = 50 // [2, 4) ns
        c.lookupLatencyLog2Ns[10] = 49 // [512, 1024) ns
        c.lookupLatencyLog2Ns[20] = 1 // about 1 ms
        #expect(c.lookupLatencyPercentileNs(0.5) == 4)
        #expect(c.lookupLatencyPercentileNs(0.99) == 1024)
        #expect(c.lookupLatencyPercentileNs(1.0) == 1 << 20)
    }

    /// flush_all with a delay: items stored before the flush time disappear at that time, not
    /// before; items stored after it stay (versions are wall-clock µs of the write).
    @Test func delayedFlushTakesEffectAtItsTime() throws {
        let now = Mutex<Int64>(1_000_000)
        let store = InMemoryL3Store(clock: { now.withLock { $0 } })
        let ns: (Int64) -> UInt64 = { UInt64($0) * 1_000_000 } // versions are µs
        try store.put(key: [1], item: L3Item(value: [1], flags: 0, exptimeUnix: 0, version: ns(999_999)))
        try store.flush(versionsBefore: ns(1_000_005), effectiveUnix: 1_000_005)
        #expect(try store.get(key: [1]) != nil, "not yet")
        now.withLock { $0 = 1_000_006 }
        try store.put(key: [2], item: L3Item(value: [2], flags: 0, exptimeUnix: 0, version: ns(1_000_006)))
        #expect(try store.get(key: [1]) == nil, "stored before the flush time")
        #expect(try store.get(key: [2]) != nil, "stored after it")
        // A late put of an older version cannot come back after a delete.
        try store.delete(key: [2], version: ns(1_000_007))
        try store.put(key: [2], item: L3Item(value: [3], flags: 0, exptimeUnix: 0, version: ns(1_000_006) + 1))
        #expect(try store.get(key: [2]) == nil)
    }

    @Test(arguments: Backing.allCases)
    func flushAllEmptiesL3(backing: Backing) throws {
        let (store, cleanup) = try backing.make()
        defer { cleanup() }
        try LoopbackMemcached.with { a in
            let sync = L3Sync(store: store, memcachedHost: "127.0.0.1", port: a.port)
            defer { sync.stop() }
            let probed = try ProbedMemcached(server: a, binary: LoopbackMemcached.binary)
            let c = try a.tcp()
            #expect(try c.set("f1", [1]) == .stored)
            try pump(probed, sync) { try store.get(key: Array("f1".utf8)) != nil }
            #expect(try c.flushAll() == .ok)
            try pump(probed, sync) { sync.snapshot.flushes == 1 }
            #expect(try store.get(key: Array("f1".utf8)) == nil)
        }
    }

    /// A delete of a key memcached no longer holds (evicted, or lost in a restart) while L3 still
    /// does: memcached answers NOT_FOUND, the probes report it, L3 forgets the key, and the next
    /// GET's miss promotes nothing.
    @Test(arguments: Backing.allCases)
    func deleteOfAKeyOnlyL3HoldsIsNeverResurrected(backing: Backing) throws {
        let (store, cleanup) = try backing.make()
        defer { cleanup() }
        try LoopbackMemcached.with { a in
            let probed = try ProbedMemcached(server: a, binary: LoopbackMemcached.binary)
            let sequences = try probed.probes.writeSequences()
            let sync = L3Sync(store: store, memcachedHost: "127.0.0.1", port: a.port,
                              writeSequence: { sequences.current(slot: $0) })
            defer { sync.stop() }
            let key = Array("only-in-l3".utf8)
            try store.put(key: key, item: L3Item(value: [7], flags: 0, exptimeUnix: 0,
                                                 version: L3VersionClock.wallClockMicros()))
            let c = try a.tcp()
            #expect(try c.delete("only-in-l3") == .notFound)
            try pump(probed, sync) { sync.snapshot.deletesOfAbsentKeys == 1 }
            #expect(try store.get(key: key) == nil, "L3 forgot it")
            #expect(try c.get("only-in-l3") == nil)
            try pump(probed, sync) { sync.snapshot.misses >= 1 }
            #expect(try c.get("only-in-l3") == nil, "not promoted back")
            #expect(sync.snapshot.promoted == 0)
        }
    }

    /// The promotion race, made deterministic with a write-sequence reader the test controls:
    /// right after memcached's HD the key's slot shows a write besides the promotion's own (the
    /// reader applies that write's event as it answers). The added item is deleted again at once
    /// by its CAS. If the write was a delete of the key, that is the end of it; if it was to another
    /// key of the same slot (L3 unchanged), the promotion is made again and stands.
    @Test(arguments: [true, false])
    func promotionIsUndoneWhenADeleteSlipsIn(deleteSlipsIn: Bool) throws {
        let store = InMemoryL3Store()
        let key = Array("raced".utf8)
        let slot = MemcachedProbes.writeSequenceSlot(of: key)
        let neighbour = try #require((0..<2_000_000).lazy.map { Array("n\($0)".utf8) }
            .first { MemcachedProbes.writeSequenceSlot(of: $0) == slot })
        try store.put(key: key, item: L3Item(value: Array("old".utf8), flags: 3, exptimeUnix: 0, version: 10))
        try LoopbackMemcached.with { a in
            let syncBox = Mutex<L3Sync?>(nil)
            // Reads of the key's slot: 0 before the promotion; 2 after its add (its own and the one
            // that slipped in, applied now); then 2 and 3 around a second promotion.
            let reads = Mutex(0)
            let sequence: L3Sync.WriteSequenceReader = { s in
                guard s == slot else { return 0 }
                let n = reads.withLock { n in n += 1; return n }
                if n == 2 {
                    let slipped = deleteSlipsIn
                        ? MemcachedEvent(kind: .delete, command: UInt8(MC_DELETE_ABSENT), key: key, writeSeq: 2)
                        : MemcachedEvent(kind: .store, command: 2, key: neighbour, value: [1], writeSeq: 2)
                    syncBox.withLock { $0 }?.apply(slipped)
                }
                switch n {
                case 1: return 0
                case 2, 3: return 2
                default: return 3
                }
            }
            let sync = L3Sync(store: store, memcachedHost: "127.0.0.1", port: a.port, writeSequence: sequence)
            syncBox.withLock { $0 = sync }
            defer { sync.stop() }
            let c = try a.tcp()
            sync.apply(MemcachedEvent(kind: .miss, command: 1, key: key))
            #expect(sync.drain())
            let counts = sync.snapshot
            #expect(counts.promotionsUndone == 1)
            if deleteSlipsIn {
                #expect(try c.get("raced") == nil, "the promotion was undone")
                #expect(counts.promoted == 0)
            } else {
                #expect(try c.get("raced")?.data == Array("old".utf8), "promoted again, and it stands")
                #expect(counts.promoted == 1)
                #expect(counts.promotionLatencyPercentileUs(0.99) != nil)
            }
            #expect(counts.failures == 0)
        }
    }

    /// A miss carries its key's write count: when the key was written after it (a set that
    /// memcached holds now, or a delete that made L3's copy obsolete), the miss is outdated and
    /// nothing is promoted for it.
    @Test func aMissOutdatedByALaterWriteIsNotPromoted() throws {
        let store = InMemoryL3Store()
        let key = Array("outdated".utf8)
        try LoopbackMemcached.with { a in
            let sync = L3Sync(store: store, memcachedHost: "127.0.0.1", port: a.port,
                              writeSequence: { $0 == MemcachedProbes.flushSequenceSlot ? 0 : 5 })
            defer { sync.stop() }
            // The write that made the count 5, applied to L3; the miss happened before it (count 4).
            sync.apply(MemcachedEvent(kind: .store, command: 2, key: key, value: [1], writeSeq: 5))
            sync.apply(MemcachedEvent(kind: .miss, command: 1, key: key, writeSeq: 4))
            #expect(sync.drain())
            let c = try a.tcp()
            #expect(try c.get("outdated") == nil, "not promoted")
            #expect(try store.get(key: key)?.value == [1], "L3 holds the write")
            #expect(sync.snapshot.promotionsRaced == 1 && sync.snapshot.promoted == 0 && sync.snapshot.l3Hits == 0)
        }
    }

    /// A promotion waits until L3 has applied every write the probes counted in the key's slot;
    /// when L3 never catches up it is skipped (deferred), never made from a stale L3.
    @Test func promotionWaitsForL3ToCatchUp() throws {
        let store = InMemoryL3Store()
        let key = Array("behind".utf8)
        try store.put(key: key, item: L3Item(value: [1], flags: 0, exptimeUnix: 0, version: 10))
        try LoopbackMemcached.with { a in
            let sync = L3Sync(store: store, memcachedHost: "127.0.0.1", port: a.port, writeSequence: { _ in 5 })
            defer { sync.stop() }
            sync.apply(MemcachedEvent(kind: .miss, command: 1, key: key))
            #expect(sync.drain())
            let c = try a.tcp()
            #expect(try c.get("behind") == nil)
            #expect(sync.snapshot.promotionsDeferred == 1 && sync.snapshot.promoted == 0)
        }
    }

    /// A pool that outlived its daemon: L3 is trusted only when memcached cannot have taken a
    /// write nobody saw — it is not running, has never been written, or is the same process with
    /// the same write counters the last daemon recorded when it stopped.
    @Test func l3FoundAtAttachIsTrustedOnlyWhenNoWriteWentUnseen() throws {
        let store = InMemoryL3Store()
        let key = Array("kept".utf8)
        func held() throws -> Bool { try store.get(key: key) != nil }
        func reset() throws {
            try store.put(key: key, item: L3Item(value: [1], flags: 0, exptimeUnix: 0, version: L3VersionClock.wallClockMicros()))
        }
        try reset()
        let nobody = L3Sync(store: store, memcachedHost: "127.0.0.1", port: 1)
        #expect(try nobody.reconcile(previous: nil, host: "127.0.0.1", port: 1) == .memcachedNotRunning)
        nobody.stop()
        #expect(try held())
        try LoopbackMemcached.with { a in
            let sync = L3Sync(store: store, memcachedHost: "127.0.0.1", port: a.port)
            defer { sync.stop() }
            #expect(try sync.reconcile(previous: nil, host: "127.0.0.1", port: a.port) == .memcachedNeverWritten)
            #expect(try held())
            let c = try a.tcp()
            #expect(try c.delete("kept") == .notFound) // a write (delete_misses) no daemon saw
            guard case .resynced = try sync.reconcile(previous: nil, host: "127.0.0.1", port: a.port) else {
                Issue.record("L3 trusted after an unseen write")
                return
            }
            #expect(try !held() && sync.snapshot.resyncs == 1)
            // The last daemon recorded memcached's counters when it stopped; nothing since.
            usleep(2_000) // versions are µs: the item must postdate the flush
            try reset()
            let record = try #require(try MemcachedWriteRecord.read(host: "127.0.0.1", port: a.port))
            #expect(record.pid == a.pid && record.writes["delete_misses"] == 1)
            let path = MemcachedWriteRecord.path(pool: "/dev/shm/test pool", partition: 2,
                                                 directory: NSTemporaryDirectory() + "cxl-bmc-\(getpid())")
            #expect(path.hasSuffix("/l3-writes/_dev_shm_test_pool-p2.json"))
            try record.save(to: path)
            defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
            let loaded = MemcachedWriteRecord.load(from: path)
            #expect(loaded == record)
            #expect(try sync.reconcile(previous: loaded, host: "127.0.0.1", port: a.port) == .noWritesSinceLastDaemon)
            #expect(try held())
            #expect(try c.set("other", [2]) == .stored)
            guard case .resynced = try sync.reconcile(previous: loaded, host: "127.0.0.1", port: a.port) else {
                Issue.record("L3 trusted after a set no daemon saw")
                return
            }
            #expect(try !held())
        }
    }
}
