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

/// How a full log chooses what to drop.
public enum ReclaimPolicy: Sendable, Equatable {
    /// Second chance: the hand (the log head) re-appends a live item that was read since the
    /// hand last passed it, clearing its reference bit; everything else is dropped.
    case clock
    /// The oldest records go, read or not.
    case fifo
}

/// The one writer of a partition (its owner). Appends records to the log, keeps the index
/// consistent, reclaims with CLOCK (or FIFO) over the log when it is full.
///
/// Publication order for a put: record bytes → write-back → store fence → index slot (atomic
/// store) → tail. A reader that sees the slot therefore sees the whole record; the tail lets
/// recovery know what was completed. Calls are serialized by a lock, so one instance can be
/// shared by threads of the owning process.
public final class PartitionWriter: @unchecked Sendable {
    typealias H = PoolFormat.PartitionHeader
    let memory: PartitionMemory
    let reader: PartitionReader
    public let reclaimPolicy: ReclaimPolicy
    private let lock = Mutex(())
    // Writer-local copies of the header's runtime words (the header is written, never read back).
    private var head = 0
    private var tail = 0
    private var lastVersion: UInt64 = 0
    private var closed = false
    /// Free log bytes CLOCK keeps after reclaiming, so a referenced record at the head can be
    /// copied to the tail without overlapping itself (a 64th of the log, at most 1 MiB).
    let clockSlack: Int

    init(memory: PartitionMemory, reclaimPolicy: ReclaimPolicy = .clock) throws {
        self.memory = memory
        self.reader = PartitionReader(memory: memory, marksReferences: true)
        self.reclaimPolicy = reclaimPolicy
        clockSlack = reclaimPolicy == .clock
            ? min(max(memory.geometry.logSize / 64, 4 * PoolFormat.line), 1 << 20) / PoolFormat.line * PoolFormat.line : 0
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

    /// The owner's read: the same validated path as any reader, and like any reader's hit it
    /// sets the record's CLOCK reference bit (the daemon's own L3 gets count towards recency);
    /// counts expired items found.
    public func get(_ key: [UInt8]) -> TierItem? {
        switch key.withUnsafeBytes({ reader.lookup($0) }) {
        case let .hit(item, pos):
            reader.referenced(pos)
            return item
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
                let (slot, displaced) = Self.freeSlot(h, memory: memory, head: head)
                cxltier_store_release(slot, newSlot)
                memory.writeBack(slot, count: 8)
                if let displaced { displacedFromIndex(displaced) }
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
        // Beyond what this record needs, CLOCK always keeps `clockSlack` bytes free, so a
        // referenced record the hand meets can be copied to the tail (from the very first lap
        // on). Re-appends are bounded per call (16 × the record, at least 64 KiB), after which
        // the hand drops whatever it meets (FIFO): a reader that marks everything cannot stall
        // the writer.
        if free < needed(size) + clockSlack {
            var budget = max(16 * size, 64 << 10)
            while free < needed(size) + clockSlack { reclaimAtHand(budget: &budget) }
            publishHead()
        }
        let phys = memory.phys(tail)
        if phys + size > memory.geometry.logSize { appendPad(logSize: memory.geometry.logSize, phys: phys) }
        populateAhead(memory.phys(tail))
        return tail
    }

    /// The log chunk ahead of which the writer last asked the kernel to populate pages.
    private var populatedChunk = -1
    private static let populateChunk = 2 << 20

    /// When the tail enters a new 2 MiB chunk of the log, populates the next one in one call
    /// (MADV_POPULATE_WRITE, Linux 5.14) instead of 512 page faults inside puts — the cost of
    /// a fresh pool's first lap. A hint: errors (devdax, older kernels) are ignored.
    private func populateAhead(_ phys: Int) {
        let chunk = phys / Self.populateChunk
        guard chunk != populatedChunk else { return }
        populatedChunk = chunk
        let start = (chunk + 1) * Self.populateChunk
        guard start < memory.geometry.logSize else { return }
        _ = madvise(memory.log + start, min(Self.populateChunk, memory.geometry.logSize - start), 23 /* MADV_POPULATE_WRITE */)
    }

    /// Log bytes not between head and tail.
    private var free: Int { memory.geometry.logSize - (tail - head) }

    /// Bytes a record of `size` takes at the tail: itself, plus the pad to the log's end when it
    /// would not fit before it.
    private func needed(_ size: Int) -> Int {
        let phys = memory.phys(tail)
        return phys + size > memory.geometry.logSize ? memory.geometry.logSize - phys + size : size
    }

    /// A pad record from the tail to the end of the log's lap.
    private func appendPad(logSize: Int, phys: Int) {
        let pad = logSize - phys
        let dst = memory.log + phys
        dst.setU32(4, UInt32(pad / PoolFormat.line) << 8)
        dst.setU64(8, UInt64(PoolFormat.Item.Kind.pad.rawValue | PoolFormat.Item.Kind.marker) << 56)
        dst.setU32(0, RecordHeader.checksum(dst, length: PoolFormat.Item.headerSize, pos: tail, nonce: memory.geometry.nonce))
        memory.writeBack(dst, count: PoolFormat.Item.headerSize)
        memory.storeFence()
        tail += pad
        cxltier_store_release(memory.header(H.tail), UInt64(tail))
    }

    private func publishHead() {
        memory.storeFence()
        cxltier_store_release(memory.header(H.head), UInt64(head))
        memory.writeBack(memory.base + H.head, count: 8)
    }

    /// The hand's step: drops (or, under CLOCK, re-appends) the record at the head and moves
    /// the head past it. A dropped item's slot is cleared before the head moves, so readers,
    /// which re-check the slot after copying, never accept bytes that are being reused.
    private func reclaimAtHand(budget: inout Int) {
        let logSize = memory.geometry.logSize
        let phys = memory.phys(head)
        let p = memory.log + phys
        guard phys + PoolFormat.Item.headerSize <= logSize,
              let header = RecordHeader(at: p, phys: phys, logSize: logSize),
              case let state = header.checksumState(p, pos: head, nonce: memory.geometry.nonce), state != .damaged else {
            // Damaged or never written: skip one line; slots pointing here fail validation anyway.
            head += PoolFormat.line
            return
        }
        if !header.isPad && state == .live, let slot = slot(pointingAt: head, p, header) {
            let exptime = header.isTombstone ? 0 : header.exptime(p)
            let expired = exptime != 0 && exptime <= memory.clock()
            if reclaimPolicy == .clock, !header.isTombstone, !expired, memory.isReferenced(head) {
                let cost = needed(header.size)
                // The copy must land in free space (never over itself), within the budget.
                if cost <= budget, cost <= free {
                    budget -= cost
                    reappend(p, header, slot: slot)
                    return
                }
            }
            // Clear before the space is reused: readers re-check the slot after copying.
            cxltier_store_release(slot, 0)
            memory.writeBack(slot, count: 8)
            if !header.isTombstone {
                bump(H.statItems, -1)
                bump(H.statBytes, -Int64(header.keyLength + header.valueLength))
                bump(expired ? H.statExpired : H.statReclaimed, 1)
            }
        }
        memory.clearReference(head)
        head += header.size
    }

    /// The index slot that points at the live record `header` at log position `pos`, if any.
    private func slot(pointingAt pos: Int, _ p: UnsafeMutableRawPointer, _ header: RecordHeader) -> UnsafeMutablePointer<UInt64>? {
        let key = UnsafeRawBufferPointer(start: p + header.keyOffset, count: header.keyLength)
        let h = KeyHash(key, buckets: memory.geometry.bucketCount)
        let target = PartitionMemory.slotValue(tag: h.tag, pos: pos)
        for choice in 0..<2 {
            let bucket = choice == 0 ? h.bucket1 : h.bucket2
            for i in 0..<PoolFormat.slotsPerBucket where cxltier_load_relaxed(memory.slot(bucket, i)) == target {
                return memory.slot(bucket, i)
            }
        }
        return nil
    }

    /// CLOCK's second chance: copies the referenced record at the head to the tail (same
    /// version, so recovery keeps either copy: ties go to the later one), moves its slot there,
    /// marks the old copy dead and moves the head past it. The caller checked that the copy
    /// fits in free space.
    private func reappend(_ p: UnsafeMutableRawPointer, _ header: RecordHeader, slot: UnsafeMutablePointer<UInt64>) {
        let logSize = memory.geometry.logSize
        // The copy may land on bytes the hand passed in this reclaim: publish the head first,
        // or a crash could leave a stored tail more than a log ahead of the stored head.
        publishHead()
        let tailPhys = memory.phys(tail)
        if tailPhys + header.size > logSize { appendPad(logSize: logSize, phys: tailPhys) }
        let pos = tail
        let dst = memory.log + memory.phys(pos)
        dst.copyMemory(from: p, byteCount: header.size)
        dst.setU32(0, RecordHeader.checksum(dst, length: header.length, pos: pos, nonce: memory.geometry.nonce))
        memory.clearReference(pos)
        memory.writeBack(dst, count: header.size)
        memory.storeFence()
        let tag = cxltier_load_relaxed(slot) >> 48
        cxltier_store_release(slot, PartitionMemory.slotValue(tag: tag, pos: pos))
        memory.writeBack(slot, count: 8)
        p.setU32(0, ~p.u32(0))
        memory.writeBack(p, count: 4)
        memory.clearReference(head)
        head += header.size
        tail = pos + header.size
        bump(H.statSecondChances, 1)
        memory.storeFence()
        cxltier_store_release(memory.header(H.tail), UInt64(tail))
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
    /// slot of the oldest record, whose item is displaced from the index: its log position is
    /// returned so that the caller, once the slot holds the new entry, marks the record dead.
    static func freeSlot(_ h: KeyHash, memory: PartitionMemory, head: Int) -> (slot: UnsafeMutablePointer<UInt64>, displaced: Int?) {
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
        if let best { return (best, nil) }
        return (oldest!, oldestPos)
    }

    /// The record at `pos` lost its index slot (both of its buckets were full): mark it dead, so
    /// no rebuild brings it back and the log's live count stays what the index reaches.
    private func displacedFromIndex(_ pos: Int) {
        if let payload = Self.markDisplacedDead(pos, memory: memory) {
            bump(H.statItems, -1)
            bump(H.statBytes, -Int64(payload))
        }
        bump(H.statIndexEvictions, 1)
    }

    /// Marks the live record at `pos` dead; its key+value bytes when it was a live item (not a
    /// tombstone), nil otherwise. Anything that does not validate is left alone.
    static func markDisplacedDead(_ pos: Int, memory: PartitionMemory) -> Int? {
        let logSize = memory.geometry.logSize
        let phys = memory.phys(pos)
        guard phys + PoolFormat.Item.headerSize <= logSize else { return nil }
        let p = memory.log + phys
        guard let header = RecordHeader(at: p, phys: phys, logSize: logSize), !header.isPad,
              header.checksumMatches(p, pos: pos, nonce: memory.geometry.nonce) else { return nil }
        p.setU32(0, ~p.u32(0))
        memory.writeBack(p, count: 4)
        return header.isTombstone ? nil : header.keyLength + header.valueLength
    }
}
