import CCXLTierShim
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The outcome of a put or delete.
public enum WriteResult: Sendable, Equatable {
    /// Written with this version.
    case stored(version: UInt64)
    /// Refused: the key already has this version, which is not older than the one given.
    case stale(current: UInt64)
}

/// The one writer of a partition (its owner). Appends records to the log, keeps the index
/// consistent, reclaims the oldest records (FIFO) when the log is full.
///
/// Publication order for a put: record bytes → write-back → store fence → index slot (atomic
/// store) → tail. A reader that sees the slot therefore sees the whole record; the tail lets
/// recovery know what was completed. Calls are serialized by a lock, so one instance can be
/// shared by threads of the owning process.
public final class PartitionWriter: @unchecked Sendable {
    typealias H = PoolFormat.PartitionHeader
    let memory: PartitionMemory
    let reader: PartitionReader
    private let lock = Mutex(())
    // Writer-local copies of the header's runtime words (the header is written, never read back).
    private var head = 0
    private var tail = 0
    private var lastVersion: UInt64 = 0
    private var closed = false

    init(memory: PartitionMemory) throws {
        self.memory = memory
        self.reader = PartitionReader(memory: memory)
        let wasClean = memory.loadHeader(H.cleanShutdown) == 1
        try Self.acquireLease(memory)
        let report = Recovery.rebuild(memory, wasClean: wasClean)
        head = report.head
        tail = report.tail
        lastVersion = report.lastVersion
        lastRecovery = report
    }

    /// What recovery found when this writer attached.
    public private(set) var lastRecovery: RecoveryReport

    public var geometry: PartitionGeometry { memory.geometry }

    /// A lock-free reader of this partition (for the owner's own gets).
    public var partitionReader: PartitionReader { reader }

    /// Stores `value` under `key`. Without `version`, the next version of this partition is used;
    /// with one, the put is refused (`.stale`) unless it is newer than what the key has,
    /// tombstones included, so a delayed older put cannot resurrect or overwrite.
    public func put(_ key: [UInt8], _ value: [UInt8], flags: UInt32 = 0, exptime: UInt32 = 0, version: UInt64? = nil) throws -> WriteResult {
        try lock.withLock { _ in try write(key: key, value: value, flags: flags, exptime: exptime, version: version, tombstone: false) }
    }

    /// Starts loading `key`'s index buckets: call it a few puts ahead in a batch (the daemon's
    /// write-through queue) so the puts' memory misses overlap.
    public func prefetch(_ key: [UInt8]) { reader.prefetch(key) }

    /// Deletes `key` by writing a tombstone (so an older put cannot bring it back).
    public func delete(_ key: [UInt8], version: UInt64? = nil) throws -> WriteResult {
        try lock.withLock { _ in try write(key: key, value: [], flags: 0, exptime: 0, version: version, tombstone: true) }
    }

    /// Sets a new exptime on a live item, keeping its version. False when there is no live item.
    public func touch(_ key: [UInt8], exptime: UInt32) throws -> Bool {
        try lock.withLock { _ in
            guard case let .hit(item, _) = key.withUnsafeBytes({ reader.lookup($0) }) else { return false }
            _ = try write(key: key, value: item.value, flags: item.flags, exptime: exptime, version: item.version,
                          tombstone: false, sameVersion: true)
            return true
        }
    }

    /// The owner's read: the same validated path as any reader; counts expired items found.
    public func get(_ key: [UInt8]) -> TierItem? {
        switch key.withUnsafeBytes({ reader.lookup($0) }) {
        case let .hit(item, _): return item
        case .expired:
            lock.withLock { _ in bump(H.statExpired, 1) }
            return nil
        default: return nil
        }
    }

    public func stats() -> PartitionStats { memory.stats() }

    /// Releases the partition: marks a clean shutdown and clears the writer lease.
    public func close() {
        lock.withLock { _ in
            guard !closed else { return }
            closed = true
            cxltier_store_release(memory.header(H.cleanShutdown), 1)
            cxltier_store_release(memory.header(H.writerPID), 0)
            memory.writeBack(memory.base + 64, count: 64)
        }
    }

    deinit { close() }

    // MARK: - Lease

    private static func acquireLease(_ memory: PartitionMemory) throws {
        let word = memory.header(H.writerPID)
        let me = UInt64(getpid())
        var current = cxltier_load_acquire(word)
        while true {
            if current != 0 && current != me {
                let pid = pid_t(truncatingIfNeeded: current)
                // Alive (or not ours to signal) → owned. Same-host only; see docs/CXLTier.md.
                if pid > 0 && (kill(pid, 0) == 0 || errno == EPERM) {
                    throw CXLTierError.partitionOwned(partition: memory.geometry.id, pid: pid)
                }
            }
            var expected = current
            if cxltier_compare_exchange(word, &expected, me) != 0 { break }
            current = expected
        }
        _ = cxltier_fetch_add(memory.header(H.epoch), 1)
        cxltier_store_release(memory.header(H.cleanShutdown), 0)
        memory.writeBack(memory.base + 64, count: 64)
        memory.storeFence()
    }

    // MARK: - Writing

    private func bump(_ field: Int, _ delta: Int64) {
        let p = memory.header(field)
        cxltier_store_relaxed(p, cxltier_load_relaxed(p) &+ UInt64(bitPattern: delta))
    }

    private func write(key: [UInt8], value: [UInt8], flags: UInt32, exptime: UInt32, version: UInt64?,
                       tombstone: Bool, sameVersion: Bool = false) throws -> WriteResult {
        guard !closed else { throw CXLTierError.invalidItem("the writer of partition \(memory.geometry.id) is closed") }
        guard key.count >= 1, key.count <= PoolFormat.Item.maxKeyLength else {
            throw CXLTierError.invalidItem("key length \(key.count) outside 1...\(PoolFormat.Item.maxKeyLength)")
        }
        var kind: PoolFormat.Item.Kind = tombstone ? .tombstone : []
        if flags != 0 { kind.insert(.hasFlags) }
        if exptime != 0 { kind.insert(.hasExptime) }
        let opt = (flags != 0 ? 4 : 0) + (exptime != 0 ? 4 : 0)
        let length = PoolFormat.Item.headerSize + opt + key.count + value.count
        let size = PoolFormat.alignUp(length, PoolFormat.line)
        guard value.count <= PoolFormat.Item.maxValueLength, length <= memory.geometry.maxRecordSize else {
            throw CXLTierError.invalidItem("record of \(length) bytes exceeds this partition's limit of \(memory.geometry.maxRecordSize)")
        }
        if let version, version > PoolFormat.Item.maxVersion || version == 0 {
            throw CXLTierError.invalidItem("version \(version) outside 1...\(PoolFormat.Item.maxVersion)")
        }

        let h = key.withUnsafeBytes { KeyHash($0, buckets: memory.geometry.bucketCount) }
        // Start both bucket misses now; reserving log space overlaps them.
        cxltier_prefetch(memory.bucketAddress(h.bucket1))
        cxltier_prefetch(memory.bucketAddress(h.bucket2))
        let pos = try reserve(size)
        return key.withUnsafeBytes { keyBytes in
            let existing = find(keyBytes, h)
            let newVersion: UInt64
            if let version {
                if let existing, sameVersion ? version < existing.version : version <= existing.version {
                    return .stale(current: existing.version)
                }
                newVersion = version
            } else {
                newVersion = max(lastVersion, existing?.version ?? 0) + 1
            }
            // The record.
            let dst = memory.log + memory.phys(pos)
            dst.setU32(4, UInt32(key.count) | UInt32(value.count) << 8)
            dst.setU64(8, newVersion | UInt64(kind.rawValue | PoolFormat.Item.Kind.marker) << 56)
            var at = PoolFormat.Item.headerSize
            if flags != 0 { dst.setU32(at, flags); at += 4 }
            if exptime != 0 { dst.setU32(at, exptime); at += 4 }
            (dst + at).copyMemory(from: keyBytes.baseAddress!, byteCount: key.count)
            at += key.count
            value.withUnsafeBytes { if $0.count > 0 { (dst + at).copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
            at += value.count
            if size > at { (dst + at).initializeMemory(as: UInt8.self, repeating: 0, count: size - at) }
            dst.setU32(0, RecordHeader.checksum(dst, length: length, pos: pos, nonce: memory.geometry.nonce))
            memory.writeBack(dst, count: size)
            memory.storeFence()

            // Publish in the index.
            let newSlot = PartitionMemory.slotValue(tag: h.tag, pos: pos)
            if let existing {
                cxltier_store_release(existing.slot, newSlot)
                memory.writeBack(existing.slot, count: 8)
                if !existing.tombstone { bump(H.statItems, -1); bump(H.statBytes, -Int64(existing.payload)) }
                // Mark the replaced record dead (invert its crc) so no rebuild resurrects it.
                let old = memory.log + memory.phys(existing.pos)
                old.setU32(0, ~old.u32(0))
                memory.writeBack(old, count: 4)
            } else {
                let slot = freeSlot(h)
                cxltier_store_release(slot, newSlot)
                memory.writeBack(slot, count: 8)
            }
            if !tombstone { bump(H.statItems, 1); bump(H.statBytes, Int64(key.count + value.count)) }
            bump(tombstone ? H.statDeletes : H.statPuts, 1)
            lastVersion = max(lastVersion, newVersion)
            cxltier_store_relaxed(memory.header(H.lastVersion), lastVersion)
            tail = pos + size
            memory.storeFence()
            cxltier_store_release(memory.header(H.tail), UInt64(tail))
            memory.writeBack(memory.base + H.head, count: 64)
            return .stored(version: newVersion)
        }
    }

    /// The log position for a record of `size` bytes, after reclaiming room and padding to the
    /// log's end when the record would not fit before it.
    private func reserve(_ size: Int) throws -> Int {
        let logSize = memory.geometry.logSize
        var pos = tail
        let phys = memory.phys(pos)
        if phys + size > logSize {
            let pad = logSize - phys
            makeRoom(until: pos + pad)
            let dst = memory.log + phys
            dst.setU32(4, UInt32(pad / PoolFormat.line) << 8)
            dst.setU64(8, UInt64(PoolFormat.Item.Kind.pad.rawValue | PoolFormat.Item.Kind.marker) << 56)
            dst.setU32(0, RecordHeader.checksum(dst, length: PoolFormat.Item.headerSize, pos: pos, nonce: memory.geometry.nonce))
            memory.writeBack(dst, count: PoolFormat.Item.headerSize)
            memory.storeFence()
            pos += pad
            tail = pos
            cxltier_store_release(memory.header(H.tail), UInt64(tail))
        }
        makeRoom(until: pos + size)
        return pos
    }

    /// Reclaims the oldest records (FIFO) until the log can hold everything up to `end`.
    private func makeRoom(until end: Int) {
        let logSize = memory.geometry.logSize
        guard end - head > logSize else { return }
        while end - head > logSize { reclaimOldest() }
        memory.storeFence()
        cxltier_store_release(memory.header(H.head), UInt64(head))
        memory.writeBack(memory.base + H.head, count: 8)
    }

    private func reclaimOldest() {
        let logSize = memory.geometry.logSize
        let phys = memory.phys(head)
        let p = memory.log + phys
        guard phys + PoolFormat.Item.headerSize <= logSize,
              let header = RecordHeader(at: p, phys: phys, logSize: logSize),
              header.checksumState(p, pos: head, nonce: memory.geometry.nonce) != .damaged else {
            // Damaged or never written: skip one line; slots pointing here fail validation anyway.
            head += PoolFormat.line
            return
        }
        if !header.isPad && header.checksumMatches(p, pos: head, nonce: memory.geometry.nonce) {
            let key = UnsafeRawBufferPointer(start: p + header.keyOffset, count: header.keyLength)
            let h = KeyHash(key, buckets: memory.geometry.bucketCount)
            let target = PartitionMemory.slotValue(tag: h.tag, pos: head)
            outer: for choice in 0..<2 {
            let bucket = choice == 0 ? h.bucket1 : h.bucket2
                for i in 0..<PoolFormat.slotsPerBucket where cxltier_load_relaxed(memory.slot(bucket, i)) == target {
                    // Clear before the space is reused: readers re-check the slot after copying.
                    cxltier_store_release(memory.slot(bucket, i), 0)
                    memory.writeBack(memory.slot(bucket, i), count: 8)
                    if !header.isTombstone {
                        bump(H.statItems, -1)
                        bump(H.statBytes, -Int64(header.keyLength + header.valueLength))
                        let exptime = header.exptime(p)
                        bump(exptime != 0 && exptime <= memory.clock() ? H.statExpired : H.statReclaimed, 1)
                    }
                    break outer
                }
            }
        }
        head += header.size
    }

    struct Existing {
        var slot: UnsafeMutablePointer<UInt64>
        var version: UInt64
        var tombstone: Bool
        var payload: Int
        var pos: Int
    }

    /// The slot holding `key` (validated like a reader would), if any.
    private func find(_ key: UnsafeRawBufferPointer, _ h: KeyHash) -> Existing? {
        Self.find(key, h, memory: memory, head: head)
    }

    static func find(_ key: UnsafeRawBufferPointer, _ h: KeyHash, memory: PartitionMemory, head: Int) -> Existing? {
        let logSize = memory.geometry.logSize
        cxltier_prefetch(memory.bucketAddress(h.bucket2))
        for choice in 0..<2 {
            let bucket = choice == 0 ? h.bucket1 : h.bucket2
            for i in 0..<PoolFormat.slotsPerBucket {
                let slot = memory.slot(bucket, i)
                let s = cxltier_load_relaxed(slot)
                guard s != 0, s >> 48 == h.tag else { continue }
                let pos = PartitionMemory.position(ofSlot: s)
                guard pos >= head else { continue }
                let phys = memory.phys(pos)
                guard phys + PoolFormat.Item.headerSize <= logSize else { continue }
                let p = memory.log + phys
                guard let header = RecordHeader(at: p, phys: phys, logSize: logSize), !header.isPad,
                      header.keyLength == key.count, memcmp(p + header.keyOffset, key.baseAddress!, key.count) == 0,
                      header.checksumMatches(p, pos: pos, nonce: memory.geometry.nonce) else { continue }
                return Existing(slot: slot, version: header.version, tombstone: header.isTombstone,
                                payload: header.keyLength + header.valueLength, pos: pos)
            }
        }
        return nil
    }

    /// An empty (or stale) slot in the less full of the key's buckets; when both are full, the
    /// slot of the oldest record, whose item is evicted from the index.
    private func freeSlot(_ h: KeyHash) -> UnsafeMutablePointer<UInt64> {
        Self.freeSlot(h, memory: memory, head: head) { [self] evicted in
            evictFromIndex(evicted)
        }
    }

    static func freeSlot(_ h: KeyHash, memory: PartitionMemory, head: Int,
                         evict: (UnsafeMutablePointer<UInt64>) -> Void) -> UnsafeMutablePointer<UInt64> {
        var oldest: UnsafeMutablePointer<UInt64>?
        var oldestPos = Int.max
        var best: UnsafeMutablePointer<UInt64>?
        var bestFree = -1
        for choice in 0..<2 {
            let bucket = choice == 0 ? h.bucket1 : h.bucket2
            var free = 0
            var firstFree: UnsafeMutablePointer<UInt64>?
            for i in 0..<PoolFormat.slotsPerBucket {
                let slot = memory.slot(bucket, i)
                let s = cxltier_load_relaxed(slot)
                let pos = s == 0 ? -1 : PartitionMemory.position(ofSlot: s)
                if s == 0 || pos < head {
                    free += 1
                    if firstFree == nil { firstFree = slot }
                } else if pos < oldestPos {
                    oldestPos = pos
                    oldest = slot
                }
            }
            if free > bestFree, let firstFree { best = firstFree; bestFree = free }
        }
        if let best { return best }
        evict(oldest!)
        return oldest!
    }

    private func evictFromIndex(_ slot: UnsafeMutablePointer<UInt64>) {
        let s = cxltier_load_relaxed(slot)
        let pos = PartitionMemory.position(ofSlot: s)
        let phys = memory.phys(pos)
        let p = memory.log + phys
        if let header = RecordHeader(at: p, phys: phys, logSize: memory.geometry.logSize), !header.isTombstone, !header.isPad {
            bump(H.statItems, -1)
            bump(H.statBytes, -Int64(header.keyLength + header.valueLength))
        }
        bump(H.statIndexEvictions, 1)
    }
}
