import CCXLTierShim
#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// What a validated lookup found.
enum Lookup {
    case hit(TierItem, pos: Int)
    /// The newest record for the key is a tombstone (or expired item) with this version.
    case deleted(version: UInt64, pos: Int)
    case expired(TierItem, pos: Int)
    case miss
    /// The slot changed while the record was copied: look again.
    case retry
}

/// Lock-free, validated reads of one partition, safe in any process or host that maps the pool.
///
/// It trusts nothing it finds in shared memory: every slot and length is bounds-checked against
/// the geometry copied at open, the record is copied out, and the copy is accepted only when its
/// crc32c (seeded with its log position), its key and the slot it came from (re-read after the
/// copy, seqlock style) all agree. Anything else is a miss. It never writes to the pool and never
/// waits for the writer.
/// A partition's answer for one key (``PartitionReader/versioned(_:)``).
public enum VersionedLookup: Sendable, Equatable {
    case item(TierItem)
    /// Deleted or expired, at this version.
    case gone(version: UInt64)
    /// Nothing valid held (never written, reclaimed, or failed validation).
    case absent
}

public final class PartitionReader: @unchecked Sendable {
    let memory: PartitionMemory
    private let hitCount = Atomic<UInt64>(0)
    private let missCount = Atomic<UInt64>(0)
    private let checksumFailureCount = Atomic<UInt64>(0)

    /// Whether hits set CLOCK's reference bit in the pool: on coherent memory (every reader),
    /// and for the owner's own reader under any policy (its writes and the writer's reads are
    /// on one host). A reader on another host of non-coherent memory writes nothing.
    let marksReferences: Bool

    init(memory: PartitionMemory, marksReferences: Bool? = nil) {
        self.memory = memory
        self.marksReferences = marksReferences ?? memory.coherent
    }

    public var geometry: PartitionGeometry { memory.geometry }

    /// This reader's own counters (readers never write to the pool).
    public var counters: (hits: UInt64, misses: UInt64, checksumFailures: UInt64) {
        (hitCount.load(ordering: .relaxed), missCount.load(ordering: .relaxed), checksumFailureCount.load(ordering: .relaxed))
    }

    /// The item stored under `key`, or nil (absent, deleted, expired, or failed validation).
    public func get(_ key: [UInt8]) -> TierItem? {
        let result = key.withUnsafeBytes { lookup($0) }
        if case let .hit(item, pos) = result {
            hitCount.add(1, ordering: .relaxed)
            referenced(pos)
            return item
        }
        missCount.add(1, ordering: .relaxed)
        return nil
    }

    /// The version of `key`'s newest record and whether it is a deletion (tombstone) or an
    /// expired item; nil when the partition holds nothing valid for the key. For version
    /// comparisons (Peering's "nothing older than an acknowledged write").
    public func currentVersion(_ key: [UInt8]) -> (version: UInt64, deleted: Bool)? {
        switch key.withUnsafeBytes({ lookup($0) }) {
        case let .hit(item, _): (item.version, false)
        case let .expired(item, _): (item.version, true)
        case let .deleted(version, _): (version, true)
        case .miss, .retry: nil
        }
    }

    /// What the partition says about `key`, in one lookup: the live item, or the version of its
    /// deletion (or expiry), or nothing valid. Peering merges these across partitions (newest wins).
    public func versioned(_ key: [UInt8]) -> VersionedLookup {
        switch key.withUnsafeBytes({ lookup($0) }) {
        case let .hit(item, pos):
            hitCount.add(1, ordering: .relaxed)
            referenced(pos)
            return .item(item)
        case let .expired(item, _):
            missCount.add(1, ordering: .relaxed)
            return .gone(version: item.version)
        case let .deleted(version, _):
            missCount.add(1, ordering: .relaxed)
            return .gone(version: version)
        case .miss, .retry:
            missCount.add(1, ordering: .relaxed)
            return .absent
        }
    }

    /// Starts loading `key`'s two index buckets without waiting: call it a few keys ahead of the
    /// gets of a batch (a multi-get) so their memory misses overlap.
    public func prefetch(_ key: [UInt8]) {
        guard !key.isEmpty, key.count <= PoolFormat.Item.maxKeyLength, memory.coherent else { return }
        let h = key.withUnsafeBytes { KeyHash($0, buckets: memory.geometry.bucketCount) }
        cxltier_prefetch(memory.bucketAddress(h.bucket1))
        cxltier_prefetch(memory.bucketAddress(h.bucket2))
    }

    /// Where `key`'s current record is, for PGAS reads by other nodes.
    public func locate(_ key: [UInt8]) -> GlobalPointer? {
        guard case let .hit(_, pos) = key.withUnsafeBytes({ lookup($0) }) else { return nil }
        return GlobalPointer(partition: memory.geometry.id, offset: UInt64(memory.geometry.logOffset + memory.phys(pos)))
    }

    /// The log position (monotonic, see Log and records) of `key`'s current record, or nil on a
    /// miss. The writer's recovery reports the window [head, tail) in the same positions: the
    /// kill -9 tests tell a record the CLOCK hand passed (position < head) from one it must find.
    public func position(_ key: [UInt8]) -> Int? {
        guard case let .hit(_, pos) = key.withUnsafeBytes({ lookup($0) }) else { return nil }
        return pos
    }

    /// The partition's statistics as its writer last stored them (range-checked by nobody: informational).
    public func stats() -> PartitionStats { memory.stats() }

    /// A hit's record gets a second chance when the CLOCK hand reaches it. `pos` came from a
    /// validated record, so the bit is inside the map.
    @inline(__always) func referenced(_ pos: Int) {
        if marksReferences { memory.markReferenced(pos) }
    }

    func lookup(_ key: UnsafeRawBufferPointer) -> Lookup {
        guard key.count > 0, key.count <= PoolFormat.Item.maxKeyLength else { return .miss }
        let h = KeyHash(key, buckets: memory.geometry.bucketCount)
        // A concurrent put moved the key: a bounded number of fresh looks, then a miss.
        for _ in 0..<4 {
            let result = lookupOnce(key, h)
            if case .retry = result { continue }
            return result
        }
        return .miss
    }

    private func lookupOnce(_ key: UnsafeRawBufferPointer, _ h: KeyHash) -> Lookup {
        let m = memory
        // Both candidate buckets' misses overlap instead of following each other (on coherent
        // memory; a non-coherent policy invalidates each line right before reading it).
        if m.coherent { cxltier_prefetch(m.bucketAddress(h.bucket2)) }
        for choice in 0..<2 {
            let bucket = choice == 0 ? h.bucket1 : h.bucket2
            m.invalidate(m.bucketAddress(bucket), count: PoolFormat.line)
            for i in 0..<PoolFormat.slotsPerBucket {
                let slot = m.slot(bucket, i)
                let s = cxltier_load_acquire(slot)
                guard s != 0, s >> 48 == h.tag else { continue }
                let result = read(slot: slot, value: s, key: key)
                if case .miss = result { continue }
                return result
            }
        }
        return .miss
    }

    /// Copies out and validates the record `s` points at; `.miss` unless it is `key`'s.
    private func read(slot: UnsafeMutablePointer<UInt64>, value s: UInt64, key: UnsafeRawBufferPointer) -> Lookup {
        let m = memory
        let logSize = m.geometry.logSize
        let pos = PartitionMemory.position(ofSlot: s)
        guard pos >= 0 else { return .miss }
        let phys = m.phys(pos)
        guard phys + PoolFormat.Item.headerSize <= logSize else { return .miss }
        let src = UnsafeRawPointer(m.log + phys)
        if m.coherent {
            // Start the record's second line (a 65–128 B record spans two) and the reference
            // bit now, so their misses overlap the first line's.
            cxltier_prefetch(src + PoolFormat.line)
            if marksReferences { cxltier_prefetch(m.referenceBit(pos).word) }
        }
        m.invalidate(src, count: PoolFormat.Item.headerSize)
        var head = (UInt64(0), UInt64(0))
        withUnsafeMutableBytes(of: &head) { cxltier_copy_volatile($0.baseAddress, src, 16) }
        let header = withUnsafeBytes(of: &head) { RecordHeader(at: $0.baseAddress!, phys: phys, logSize: logSize) }
        guard let header, !header.isPad, header.keyLength == key.count, header.length <= m.geometry.maxRecordSize else { return .miss }
        let length = header.length
        m.invalidate(src, count: length)
        return withUnsafeTemporaryAllocation(byteCount: length, alignment: 16) { buffer -> Lookup in
            let copy = UnsafeRawPointer(buffer.baseAddress!)
            cxltier_copy_volatile(buffer.baseAddress, src, length)
            cxltier_fence_acquire()
            // Seqlock: the writer clears or moves the slot before reusing the record's space.
            guard cxltier_load_acquire(slot) == s else { return .retry }
            // The copy's own header must be the one the lengths came from.
            guard copy.loadUnaligned(fromByteOffset: 4, as: UInt32.self) == UInt32(truncatingIfNeeded: head.0 >> 32),
                  copy.loadUnaligned(fromByteOffset: 8, as: UInt64.self) == head.1 else { return .miss }
            guard header.checksumMatches(copy, pos: pos, nonce: m.geometry.nonce) else {
                checksumFailureCount.add(1, ordering: .relaxed)
                return .miss
            }
            guard memcmp(copy + header.keyOffset, key.baseAddress!, key.count) == 0 else { return .miss }
            if header.isTombstone { return .deleted(version: header.version, pos: pos) }
            let valueStart = header.keyOffset + header.keyLength
            let value = [UInt8](UnsafeRawBufferPointer(start: copy + valueStart, count: header.valueLength))
            let item = TierItem(value: value, flags: header.flags(copy), exptime: header.exptime(copy), version: header.version)
            if item.exptime != 0 && item.exptime <= m.clock() { return .expired(item, pos: pos) }
            return .hit(item, pos: pos)
        }
    }
}
