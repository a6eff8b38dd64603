import CCXLTierShim

/// What a writer's recovery found when it attached.
public struct RecoveryReport: Sendable, Equatable {
    /// The log window kept: [head, tail).
    public var head: Int
    public var tail: Int
    public var lastVersion: UInt64
    /// Valid records indexed, and records past the stored tail that were complete (a put that
    /// finished writing but not its tail update).
    public var records: Int
    public var recordsPastTail: Int
    /// 64-byte lines skipped because they held no valid record (torn or damaged).
    public var damagedLines: Int
    /// Whether the stored head/tail were out of range and had to be reset (everything lost).
    public var resetLog: Bool
    /// Whether the previous writer had detached cleanly.
    public var wasClean: Bool
}

enum Recovery {
    typealias H = PoolFormat.PartitionHeader

    /// Rebuilds the index from the log: clears it, walks the log from head, and indexes the
    /// newest valid record of every key. Torn records (the last put of a killed writer) and
    /// damaged lines fail their checksum and are skipped; the walk continues past the stored
    /// tail while records validate, so a put that completed before its tail update is kept.
    static func rebuild(_ m: PartitionMemory, wasClean: Bool) -> RecoveryReport {
        let g = m.geometry
        let logSize = g.logSize
        var head = Int(truncatingIfNeeded: m.loadHeader(H.head))
        var tail = Int(truncatingIfNeeded: m.loadHeader(H.tail))
        var lastVersion = m.loadHeader(H.lastVersion) & PoolFormat.Item.maxVersion
        var resetLog = false
        let line = PoolFormat.line
        if head < 0 || tail < head || tail - head > logSize || head % line != 0 || tail % line != 0 || tail > 1 << 53 {
            // The window itself is damaged: start an empty log after everything that could exist.
            resetLog = true
            let start = min(max(0, tail, head), 1 << 52)
            let aligned = PoolFormat.alignUp(start, logSize) + logSize
            head = aligned
            tail = aligned
        }
        m.index.initializeMemory(as: UInt8.self, repeating: 0, count: g.bucketCount * PoolFormat.line)
        m.writeBack(m.index, count: g.bucketCount * PoolFormat.line)
        m.storeFence()

        var items: Int64 = 0, bytes: Int64 = 0, evictions: UInt64 = 0
        var records = 0, pastTail = 0, damaged = 0
        var pos = head
        var end = head
        while pos - head < logSize {
            let phys = m.phys(pos)
            let p = m.log + phys
            guard phys + PoolFormat.Item.headerSize <= logSize,
                  let header = RecordHeader(at: p, phys: phys, logSize: logSize),
                  pos + header.size - head <= logSize,
                  case let state = header.checksumState(p, pos: pos, nonce: m.geometry.nonce), state != .damaged else {
                if pos < tail {
                    damaged += 1
                    pos += line
                    continue
                }
                break
            }
            if pos >= tail { pastTail += 1 }
            if !header.isPad && state == .live {
                records += 1
                lastVersion = max(lastVersion, header.version)
                let key = UnsafeRawBufferPointer(start: p + header.keyOffset, count: header.keyLength)
                let h = KeyHash(key, buckets: g.bucketCount)
                let newSlot = PartitionMemory.slotValue(tag: h.tag, pos: pos)
                let payload = Int64(header.keyLength + header.valueLength)
                if let existing = PartitionWriter.find(key, h, memory: m, head: head) {
                    // Two live records for a key (a writer killed between publishing and marking
                    // the old one dead): keep the newer, mark the other dead.
                    if header.version >= existing.version {
                        cxltier_store_release(existing.slot, newSlot)
                        if !existing.tombstone { items -= 1; bytes -= Int64(existing.payload) }
                        if !header.isTombstone { items += 1; bytes += payload }
                        let old = m.log + m.phys(existing.pos)
                        old.setU32(0, ~old.u32(0))
                    } else {
                        p.setU32(0, ~p.u32(0))
                    }
                } else {
                    let (slot, displaced) = PartitionWriter.freeSlot(h, memory: m, head: head)
                    cxltier_store_release(slot, newSlot)
                    if let displaced {
                        // Both buckets full: the oldest entry loses its slot and is marked dead.
                        if let payload = PartitionWriter.markDisplacedDead(displaced, memory: m) {
                            items -= 1
                            bytes -= Int64(payload)
                        }
                        evictions += 1
                    }
                    if !header.isTombstone { items += 1; bytes += payload }
                }
            }
            pos += header.size
            end = pos
        }
        let newTail = max(end, min(tail, head + logSize))
        m.writeBack(m.index, count: g.bucketCount * PoolFormat.line)
        cxltier_store_relaxed(m.header(H.statItems), UInt64(max(0, items)))
        cxltier_store_relaxed(m.header(H.statBytes), UInt64(max(0, bytes)))
        cxltier_store_relaxed(m.header(H.statIndexEvictions), m.loadHeader(H.statIndexEvictions) &+ evictions)
        cxltier_store_relaxed(m.header(H.lastVersion), lastVersion)
        cxltier_store_relaxed(m.header(H.head), UInt64(head))
        m.storeFence()
        cxltier_store_release(m.header(H.tail), UInt64(newTail))
        m.writeBack(m.base + 64, count: 256 - 64)
        m.storeFence()
        return RecoveryReport(head: head, tail: newTail, lastVersion: lastVersion, records: records, recordsPastTail: pastTail,
                              damagedLines: damaged, resetLog: resetLog, wasClean: wasClean)
    }
}
