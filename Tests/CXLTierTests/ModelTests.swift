import Foundation
import PropertyBased
import Synchronization
import Testing
@testable import CXLTier

/// One random operation: (opcode, key number, value length, argument).
typealias Op = (Int, Int, Int, Int)

let opGenerator = zip(Gen.int(in: 0...11), Gen.int(in: 0...23), Gen.int(in: 0...300), Gen.int(in: 0...40)).array(of: 1...250)

/// What the tier must hold: the last put per key, minus deletes and expired items.
struct ModelEntry: Equatable {
    var value: [UInt8]
    var flags: UInt32
    var exptime: UInt32
    var version: UInt64
}

func modelValue(key: Int, length: Int, salt: Int) -> [UInt8] {
    (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ key &* 7 &+ salt) }
}

/// Runs `ops` against a writer (reopened now and then) and a Dictionary model. With `exact`,
/// the pool is large enough that nothing is reclaimed and every get must equal the model;
/// otherwise a hit must equal the model and a miss is allowed only if something was reclaimed.
@discardableResult
func runModel(_ ops: [Op], poolSize: Int, exact: Bool) throws -> PartitionStats {
    let tmp = TempPool()
    let clock = TestClock()
    let pool = try tmp.create(size: poolSize)
    var writer = try pool.writer(partition: 0, clock: clock.function)
    let reader = try pool.reader(partition: 0, clock: clock.function)
    var model: [Int: ModelEntry] = [:]
    var tombstones: [Int: UInt64] = [:]
    func key(_ k: Int) -> [UInt8] { bytes("key:\(k):" + String(repeating: "k", count: k % 5)) }
    func live(_ k: Int) -> ModelEntry? {
        guard let e = model[k] else { return nil }
        if e.exptime != 0 && e.exptime <= clock.now.load(ordering: .relaxed) { return nil }
        return e
    }
    func verify(_ k: Int) {
        let got = reader.get(key(k))
        let expected = live(k)
        if let got {
            #expect(ModelEntry(value: got.value, flags: got.flags, exptime: got.exptime, version: got.version) == expected, "key \(k)")
        } else if exact {
            #expect(expected == nil, "key \(k) missing")
        }
    }
    for (n, (opcode, k, length, arg)) in ops.enumerated() {
        let now = clock.now.load(ordering: .relaxed)
        switch opcode {
        case 0...3:
            let exptime: UInt32 = arg < 30 ? 0 : now + UInt32(arg - 29)
            let flags = UInt32(arg % 3)
            let value = modelValue(key: k, length: length, salt: n)
            let result = try writer.put(key(k), value, flags: flags, exptime: exptime)
            guard case let .stored(version) = result else { Issue.record("put refused: \(result)"); continue }
            #expect(version > max(model[k]?.version ?? 0, tombstones[k] ?? 0))
            model[k] = ModelEntry(value: value, flags: flags, exptime: exptime, version: version)
        case 4:
            // An explicit version: refused unless newer than what the key has (tombstones too).
            let current = max(model[k]?.version ?? 0, tombstones[k] ?? 0)
            let version = current + UInt64(arg) > 20 ? current + UInt64(arg) - 20 : 1
            let value = modelValue(key: k, length: length, salt: n)
            let result = try writer.put(key(k), value, version: version)
            let known = exact || model[k] != nil || tombstones[k] != nil
            if version > current {
                #expect(result == .stored(version: version))
                model[k] = ModelEntry(value: value, flags: 0, exptime: 0, version: version)
                tombstones[k] = nil
            } else if known && exact {
                #expect(result == .stale(current: current), "key \(k) v\(version) over v\(current)")
            } else if case .stored = result {
                model[k] = ModelEntry(value: value, flags: 0, exptime: 0, version: version)
            }
        case 5:
            let result = try writer.delete(key(k))
            if case let .stored(version) = result {
                model[k] = nil
                tombstones[k] = version
            }
        case 6:
            let exptime: UInt32 = arg < 10 ? 0 : now + UInt32(arg)
            let touched = try writer.touch(key(k), exptime: exptime)
            if exact { #expect(touched == (live(k) != nil), "touch key \(k)") }
            if touched { model[k]?.exptime = exptime }
        case 7:
            clock.advance(UInt32(arg % 7))
        case 8:
            if arg % 8 == 0 {
                writer.close()
                writer = try pool.writer(partition: 0, clock: clock.function)
            }
        default:
            verify(k)
        }
    }
    for k in 0...23 { verify(k) }
    let stats = writer.stats()
    // Every live record in the log is reached by the index (replaced and displaced ones are
    // marked dead), and the writer's counters equal what a full walk of the log finds.
    let check = PoolCheck.check(pool.region, clock: clock.now.load(ordering: .relaxed))
    #expect(check.isClean, "\(check.damage)")
    #expect(UInt64(check.partitions[0].scannedItems) == stats.items, "items: scan vs stats")
    #expect(UInt64(check.partitions[0].scannedBytes) == stats.bytes, "bytes: scan vs stats")
    if exact {
        #expect(stats.reclaimed == 0)
        #expect(check.partitions[0].liveItems == (0...23).filter { live($0) != nil }.count)
    }
    return stats
}

/// A hot set of keys put once and then read (by a non-owner reader) after every round of puts
/// of fresh cold keys; returns how many hot keys are missing at the end. Every hit must be the
/// value put. `rounds` are (cold puts in the round, cold value bytes).
func runHotSet(_ rounds: [(Int, Int)], policy: ReclaimPolicy, hotKeys: Int = 16) throws -> (missing: Int, stats: PartitionStats) {
    let tmp = TempPool()
    let pool = try tmp.create(size: 192 << 10)
    let writer = try pool.writer(partition: 0, reclaimPolicy: policy)
    let reader = try pool.reader(partition: 0)
    func hot(_ k: Int) -> [UInt8] { bytes("hot:\(k)") }
    let hotValues = (0..<hotKeys).map { modelValue(key: $0, length: 100, salt: 1) }
    for k in 0..<hotKeys { _ = try writer.put(hot(k), hotValues[k]) }
    var cold = 0
    var coldBytes = 0
    for (count, size) in rounds {
        for _ in 0..<count {
            _ = try writer.put(bytes("cold:\(cold)"), [UInt8](repeating: UInt8(truncatingIfNeeded: cold), count: size))
            cold += 1
            coldBytes += size
        }
        for k in 0..<hotKeys {
            if let got = reader.get(hot(k)), got.value != hotValues[k] { Issue.record("hot \(k): wrong value") }
        }
    }
    #expect(coldBytes > 2 * writer.geometry.logSize, "the cold puts must lap the log at least twice")
    let stats = writer.stats()
    let check = PoolCheck.check(pool.region)
    #expect(check.isClean, "\(check.damage)")
    #expect(UInt64(check.partitions[0].scannedItems) == stats.items)
    #expect(UInt64(check.partitions[0].scannedBytes) == stats.bytes)
    return ((0..<hotKeys).filter { reader.get(hot($0)) == nil }.count, stats)
}

@Suite("Model")
struct ModelTests {
    @Test("random put/get/delete/touch/TTL/reopen sequences match a dictionary")
    func exactModel() async {
        await propertyCheck(count: 60, input: opGenerator) { ops in
            #expect(throws: Never.self) { try runModel(ops, poolSize: 4 << 20, exact: true) }
        }
    }

    @Test("with reclaim in a small pool, a hit is always the model's value")
    func reclaimModel() async {
        let longOps = zip(Gen.int(in: 0...11), Gen.int(in: 0...23), Gen.int(in: 0...2000), Gen.int(in: 0...40)).array(of: 200...600)
        let reclaimed = Atomic<UInt64>(0)
        await propertyCheck(count: 25, input: longOps) { ops in
            #expect(throws: Never.self) {
                let stats = try runModel(ops, poolSize: 96 << 10, exact: false)
                reclaimed.add(stats.reclaimed + stats.indexEvictions, ordering: .relaxed)
            }
        }
        #expect(reclaimed.load(ordering: .relaxed) > 0, "the small pool must force reclaim")
    }

    @Test("CLOCK keeps a hot key set read between rounds of cold puts; FIFO over the same puts loses all of it")
    func hotSetSurvivesClock() async {
        // A round writes at most 12 × 3000 B, well under a lap of the ~170 KB log, so every hot
        // key is read between two passes of the hand.
        let rounds = zip(Gen.int(in: 3...12), Gen.int(in: 1000...3000)).array(of: 150...250)
        await propertyCheck(count: 12, input: rounds) { rounds in
            #expect(throws: Never.self) {
                let clock = try runHotSet(rounds, policy: .clock)
                let fifo = try runHotSet(rounds, policy: .fifo)
                #expect(clock.missing == 0, "CLOCK lost \(clock.missing) hot keys: \(clock.stats)")
                #expect(clock.stats.secondChances > 0 && clock.stats.reclaimed > 0)
                #expect(fifo.missing == 16, "FIFO kept \(16 - fifo.missing) hot keys")
                #expect(fifo.stats.secondChances == 0)
            }
        }
    }
}
