import CCXLTierShim

#if canImport(Glibc)
import Glibc
#endif

/// One piece of damage `pool check` found: where (pool offset, partition) and what.
public struct Damage: Sendable, Equatable, CustomStringConvertible {
    public var partition: Int?
    public var poolOffset: Int
    public var message: String

    public var description: String {
        let at = "offset 0x\(String(poolOffset, radix: 16))"
        return partition.map { "partition \($0), \(at): \(message)" } ?? "\(at): \(message)"
    }
}

/// What `pool check` / `pool inspect` report for one partition.
public struct PartitionReport: Sendable, Equatable {
    public var geometry: PartitionGeometry
    public var stats: PartitionStats
    /// Records in the log window that validate, and of them, items reachable from the index
    /// (live, not expired), tombstones reachable, and expired items reachable.
    public var validRecords: Int
    public var liveItems: Int
    public var tombstones: Int
    public var expiredItems: Int
    /// Log bytes in the window that hold no valid record (checksum failures), and index slots in use.
    public var damagedBytes: Int
    public var checksumFailures: Int
    public var slotsUsed: Int
    /// Live items (valid, not dead, not tombstones, expired ones included) and their key+value
    /// bytes found by walking the whole log window: what the writer's `items` and `bytes`
    /// statistics must equal.
    public var scannedItems: Int = 0
    public var scannedBytes: Int = 0
    public var writerPID: UInt64
    public var cleanShutdown: Bool
}

/// The result of checking a pool.
public struct CheckReport: Sendable {
    public var poolSize: Int
    public var formatVersion: UInt32
    public var partitions: [PartitionReport]
    public var damage: [Damage]
    public var isClean: Bool { damage.isEmpty }
}

/// `pool check` and `pool inspect`: read-only validation of everything in a pool, and repair.
public enum PoolCheck {
    typealias H = PoolFormat.PartitionHeader

    /// Validates the pool header, the table, every partition header, every record in each log
    /// window and every index slot. Never trusts a length or offset it has not bounds-checked.
    public static func check(_ region: any Region, clock: UInt32 = UInt32(truncatingIfNeeded: time(nil))) -> CheckReport {
        let base = region.base
        var damage: [Damage] = []
        let version = region.size >= 64 ? base.u32(PoolFormat.PoolHeader.formatVersion) : 0
        let pool: Pool
        do {
            pool = try Pool(region: region)
        } catch let error as CXLTierError {
            damage.append(Damage(partition: nil, poolOffset: 0, message: error.description))
            // The partitions are self-describing: check those whose headers still validate.
            let found = findPartitionHeaders(region)
            var reports: [PartitionReport] = []
            for g in found {
                let (report, d) = checkPartition(region, g, clock: clock)
                reports.append(report)
                damage += d
            }
            return CheckReport(poolSize: region.size, formatVersion: version, partitions: reports, damage: damage)
        } catch {
            damage.append(Damage(partition: nil, poolOffset: 0, message: "\(error)"))
            return CheckReport(poolSize: region.size, formatVersion: version, partitions: [], damage: damage)
        }
        var reports: [PartitionReport] = []
        for g in pool.partitions {
            let (report, d) = checkPartition(region, g, clock: clock)
            reports.append(report)
            damage += d
        }
        return CheckReport(poolSize: region.size, formatVersion: version, partitions: reports, damage: damage)
    }

    /// Partition headers anywhere in the pool (4 KiB steps) whose magic, checksum and layout agree.
    static func findPartitionHeaders(_ region: any Region) -> [PartitionGeometry] {
        var found: [PartitionGeometry] = []
        var offset = PoolFormat.pageSize
        while offset + PoolFormat.pageSize <= region.size {
            let p = region.base + offset
            if p.u64(H.magic) == PoolFormat.partitionMagic,
               p.u32(H.checksum) == CRC32C.checksum(UnsafeRawBufferPointer(start: p, count: 60)),
               p.u64(H.partitionOffset) == UInt64(offset), p.u64(H.poolSize) == UInt64(region.size),
               p.u64(H.partitionSize) <= UInt64(region.size - offset),
               let g = try? PartitionGeometry.layout(id: Int(p.u32(H.partitionID)), ownerNode: Int(p.u32(H.ownerNode)), offset: offset,
                                                     size: Int(p.u64(H.partitionSize)), bytesPerSlot: max(64, Int(p.u16(H.bytesPerSlot)))),
               g.bucketCount == Int(p.u32(H.bucketCount)), g.logOffset == Int(p.u64(H.logOffset)) {
                var g = g
                g.nonce = p.u64(H.nonce)
                found.append(g)
                offset += max(PoolFormat.pageSize, g.size / PoolFormat.pageSize * PoolFormat.pageSize)
            } else {
                offset += PoolFormat.pageSize
            }
        }
        return found
    }

    static func checkPartition(_ region: any Region, _ g: PartitionGeometry, clock: UInt32) -> (PartitionReport, [Damage]) {
        let m = PartitionMemory(region: region, geometry: g, flush: CoherentFlush(), clock: { clock })
        var damage: [Damage] = []
        func report(_ poolOffset: Int, _ message: String) { damage.append(Damage(partition: g.id, poolOffset: poolOffset, message: message)) }
        let line = PoolFormat.line
        let logSize = g.logSize
        let head = Int(truncatingIfNeeded: m.loadHeader(H.head))
        let tail = Int(truncatingIfNeeded: m.loadHeader(H.tail))
        var valid = 0, damagedBytes = 0, failures = 0, scannedItems = 0, scannedBytes = 0
        if m.loadHeader(H.nonce) != g.nonce {
            report(g.offset + H.nonce, "the partition's copy of the pool nonce differs from the pool header's")
        }
        var windowOK = true
        if head < 0 || tail < head || tail - head > logSize || head % line != 0 || tail % line != 0 {
            report(g.offset + H.head, "log head \(head) / tail \(tail) out of range (log of \(logSize) bytes)")
            windowOK = false
        }
        // Log lines the index reaches (one bit per line), to find live records it does not.
        var indexed = [UInt64](repeating: 0, count: windowOK ? (logSize / line + 63) / 64 : 0)
        var live = 0, tombstones = 0, expired = 0, used = 0
        for bucket in 0..<g.bucketCount {
            for i in 0..<PoolFormat.slotsPerBucket {
                let s = cxltier_load_acquire(m.slot(bucket, i))
                guard s != 0 else { continue }
                used += 1
                let where_ = g.offset + g.indexOffset + bucket * line + i * 8
                let pos = PartitionMemory.position(ofSlot: s)
                guard windowOK else { continue }
                guard pos >= head, pos - head < logSize else {
                    report(where_, "index bucket \(bucket) slot \(i) points at log position \(pos), outside the log window [\(head), \(tail))")
                    continue
                }
                let phys = m.phys(pos)
                let p = m.log + phys
                guard phys + PoolFormat.Item.headerSize <= logSize, let h = RecordHeader(at: p, phys: phys, logSize: logSize), !h.isPad,
                      h.checksumMatches(p, pos: pos, nonce: m.geometry.nonce) else {
                    report(where_, "index bucket \(bucket) slot \(i) points at log position \(pos), which holds no valid item")
                    continue
                }
                let key = UnsafeRawBufferPointer(start: p + h.keyOffset, count: h.keyLength)
                let kh = KeyHash(key, buckets: g.bucketCount)
                guard kh.tag == s >> 48, kh.bucket1 == bucket || kh.bucket2 == bucket else {
                    report(where_, "index bucket \(bucket) slot \(i): tag or bucket does not match the key it points at")
                    continue
                }
                indexed[(phys / line) >> 6] |= 1 << UInt64((phys / line) & 63)
                if h.isTombstone {
                    tombstones += 1
                } else if case let e = h.exptime(p), e != 0, e <= clock {
                    expired += 1
                } else {
                    live += 1
                }
            }
        }
        if windowOK {
            var pos = head
            var runStart: Int?
            func closeRun(at end: Int) {
                if let start = runStart {
                    report(g.offset + g.logOffset + m.phys(start),
                           "log position \(start): \(end - start) bytes with no valid record (checksum mismatch or torn write)")
                    damagedBytes += end - start
                    failures += 1
                    runStart = nil
                }
            }
            while pos < tail {
                let phys = m.phys(pos)
                let p = m.log + phys
                if phys + PoolFormat.Item.headerSize <= logSize, let h = RecordHeader(at: p, phys: phys, logSize: logSize),
                   pos + h.size <= tail || h.isPad && pos + h.size - head <= logSize, h.checksumState(p, pos: pos, nonce: m.geometry.nonce) != .damaged {
                    closeRun(at: pos)
                    if !h.isPad && h.checksumMatches(p, pos: pos, nonce: m.geometry.nonce) {
                        valid += 1
                        if !h.isTombstone { scannedItems += 1; scannedBytes += h.keyLength + h.valueLength }
                        if indexed[(phys / line) >> 6] & (1 << UInt64((phys / line) & 63)) == 0 {
                            // A live record must be either indexed or marked dead (replaced,
                            // displaced from a full bucket pair); else a rebuild would revive it.
                            report(g.offset + g.logOffset + phys, "log position \(pos): live record the index does not reach")
                        }
                    }
                    pos += h.size
                } else {
                    if runStart == nil { runStart = pos }
                    pos += line
                    if m.phys(pos) == 0 { closeRun(at: pos) }
                }
            }
            closeRun(at: min(pos, tail))
        }
        let r = PartitionReport(geometry: g, stats: m.stats(), validRecords: valid, liveItems: live, tombstones: tombstones,
                                expiredItems: expired, damagedBytes: damagedBytes, checksumFailures: failures, slotsUsed: used,
                                scannedItems: scannedItems, scannedBytes: scannedBytes,
                                writerPID: m.loadHeader(H.writerPID), cleanShutdown: m.loadHeader(H.cleanShutdown) == 1)
        return (r, damage)
    }

    /// Repairs what `check` finds: rewrites a damaged pool header or partition header from the
    /// copies the format keeps, turns damaged log bytes into pad records, and rebuilds every
    /// index (as a writer would on attach; refused while a live writer holds a partition).
    /// Returns the check of the repaired pool.
    public static func repair(_ region: any Region) throws -> CheckReport {
        let pool: Pool
        if let opened = try? Pool(region: region) {
            pool = opened
        } else {
            try repairPoolHeader(region)
            pool = try Pool(region: region)
        }
        for g in pool.partitions {
            let m = PartitionMemory(region: region, geometry: g, flush: CoherentFlush(), clock: { 0 })
            m.base.setU64(H.nonce, g.nonce)
            padDamagedRuns(m)
            let writer = try PartitionWriter(memory: m)
            writer.close()
        }
        return check(region)
    }

    /// Rebuilds the pool header and table from the partition headers (or, when the table is
    /// intact, partition headers from the table).
    static func repairPoolHeader(_ region: any Region) throws {
        typealias PH = PoolFormat.PoolHeader
        typealias TE = PoolFormat.TableEntry
        let base = region.base
        let count = Int(base.u32(PH.partitionCount))
        let bytesPerSlot = Int(base.u32(PH.bytesPerSlot))
        // First: a good table with damaged partition headers → rewrite those headers.
        if base.u64(PH.magic) == PoolFormat.poolMagic, count >= 1, count <= PoolFormat.maxPartitions,
           base.u32(PH.checksum) == Pool.poolChecksum(base, count: count), bytesPerSlot >= 64, bytesPerSlot <= Int(UInt16.max) {
            for i in 0..<count {
                let e = base + 64 + 64 * i
                let g = try PartitionGeometry.layout(id: i, ownerNode: Int(e.u32(TE.ownerNode)), offset: Int(e.u64(TE.offset)),
                                                     size: Int(e.u64(TE.size)), bytesPerSlot: bytesPerSlot)
                guard g.offset + g.size <= region.size else { throw CXLTierError.corrupt("partition table entry \(i) out of range") }
                Pool.writePartitionHeader(base + g.offset, g, poolSize: region.size, partitionCount: count, bytesPerSlot: bytesPerSlot)
                (base + g.offset).setU64(H.nonce, base.u64(PH.nonce))
            }
            return
        }
        let found = findPartitionHeaders(region).sorted { $0.id < $1.id }
        guard let first = found.first,
              found.map(\.id) == Array(0..<found.count),
              Int((region.base + first.offset).u16(H.partitionCount)) == found.count else {
            throw CXLTierError.corrupt("pool header damaged and the partition headers do not describe a complete pool; cannot repair")
        }
        let slotBytes = Int((region.base + first.offset).u16(H.bytesPerSlot))
        base.initializeMemory(as: UInt8.self, repeating: 0, count: PoolFormat.pageSize)
        base.setU64(PH.magic, PoolFormat.poolMagic)
        base.setU32(PH.formatVersion, PoolFormat.version)
        base.setU32(PH.headerSize, UInt32(PoolFormat.pageSize))
        base.setU64(PH.poolSize, UInt64(region.size))
        base.setU32(PH.partitionCount, UInt32(found.count))
        base.setU32(PH.tableOffset, 64)
        base.setU32(PH.tableEntrySize, 64)
        base.setU32(PH.bytesPerSlot, UInt32(slotBytes))
        base.setU64(PH.nonce, first.nonce)
        for g in found {
            let e = base + 64 + 64 * g.id
            e.setU32(TE.partitionID, UInt32(g.id))
            e.setU32(TE.ownerNode, UInt32(g.ownerNode))
            e.setU64(TE.epoch, 1)
            e.setU64(TE.offset, UInt64(g.offset))
            e.setU64(TE.size, UInt64(g.size))
        }
        base.setU32(PH.checksum, Pool.poolChecksum(base, count: found.count))
    }

    /// Turns every run of log bytes in [head, tail) that holds no valid record into pad records,
    /// so the log walks cleanly again. Leaves an out-of-range window to recovery.
    static func padDamagedRuns(_ m: PartitionMemory) {
        let g = m.geometry
        let line = PoolFormat.line
        let head = Int(truncatingIfNeeded: m.loadHeader(H.head))
        let tail = Int(truncatingIfNeeded: m.loadHeader(H.tail))
        guard head >= 0, tail >= head, tail - head <= g.logSize, head % line == 0, tail % line == 0 else { return }
        var pos = head
        var runStart: Int?
        func pad(until end: Int) {
            guard var start = runStart else { return }
            runStart = nil
            while start < end {
                let lines = min((end - start) / line, (1 << 24) - 1)
                let p = m.log + m.phys(start)
                p.initializeMemory(as: UInt8.self, repeating: 0, count: PoolFormat.Item.headerSize)
                p.setU32(4, UInt32(lines) << 8)
                p.setU64(8, UInt64(PoolFormat.Item.Kind.pad.rawValue | PoolFormat.Item.Kind.marker) << 56)
                p.setU32(0, RecordHeader.checksum(p, length: PoolFormat.Item.headerSize, pos: start, nonce: m.geometry.nonce))
                start += lines * line
            }
        }
        while pos < tail {
            let phys = m.phys(pos)
            let p = m.log + phys
            if phys + PoolFormat.Item.headerSize <= g.logSize, let h = RecordHeader(at: p, phys: phys, logSize: g.logSize),
               pos + h.size <= tail || h.isPad, h.checksumState(p, pos: pos, nonce: m.geometry.nonce) != .damaged {
                pad(until: pos)
                pos += h.size
            } else {
                if runStart == nil { runStart = pos }
                pos += line
                if m.phys(pos) == 0 { pad(until: pos) }
            }
        }
        pad(until: min(pos, tail))
    }
}
