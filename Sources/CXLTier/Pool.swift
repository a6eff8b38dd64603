import CCXLTierShim

#if canImport(Glibc)
import Glibc
#endif

/// Where one partition goes when a pool is laid out: a slice of the pool owned by a node.
public struct SliceSpec: Sendable, Equatable {
    public var ownerNode: Int
    /// Pool offset and bytes of the slice. A slice starting at 0 also holds the pool header page.
    public var base: Int
    public var size: Int

    public init(ownerNode: Int, base: Int, size: Int) {
        self.ownerNode = ownerNode
        self.base = base
        self.size = size
    }
}

/// A pool mapped in this process: its validated geometry, and the way to its partitions'
/// readers and writers and to PGAS operations on its words.
public final class Pool: @unchecked Sendable {
    typealias PH = PoolFormat.PoolHeader
    typealias TE = PoolFormat.TableEntry
    typealias H = PoolFormat.PartitionHeader

    public let region: any Region
    /// Partition geometry, validated at open and copied out of the pool.
    public let partitions: [PartitionGeometry]
    public let createdAt: UInt64
    public let bytesPerSlot: Int
    let flush: any FlushPolicy

    /// Lays out a new pool in `region` (which must be zero-filled or disposable): one partition
    /// per slice, or a single partition owned by node 0 over the whole region when `slices` is
    /// empty.
    public static func create(in region: any Region, slices: [SliceSpec] = [], bytesPerSlot: Int = PoolFormat.defaultBytesPerSlot,
                              flush: any FlushPolicy = CoherentFlush()) throws -> Pool {
        let specs = slices.isEmpty ? [SliceSpec(ownerNode: 0, base: 0, size: region.size)] : slices
        guard specs.count <= PoolFormat.maxPartitions else {
            throw CXLTierError.geometry("\(specs.count) slices; a pool holds at most \(PoolFormat.maxPartitions) partitions")
        }
        guard bytesPerSlot >= PoolFormat.line, bytesPerSlot <= Int(UInt16.max) else {
            throw CXLTierError.geometry("bytesPerSlot must be in 64...65535")
        }
        let headerPage = 0..<PoolFormat.pageSize
        var geometries: [PartitionGeometry] = []
        for (i, s) in specs.enumerated() {
            guard s.base >= 0, s.size > 0, s.base + s.size <= region.size else {
                throw CXLTierError.geometry("slice of node \(s.ownerNode) [\(s.base), +\(s.size)) is outside the pool of \(region.size) bytes")
            }
            guard s.base % PoolFormat.pageSize == 0 else {
                throw CXLTierError.geometry("slice of node \(s.ownerNode) starts at \(s.base), not a multiple of \(PoolFormat.pageSize)")
            }
            for other in specs[..<i] where s.base < other.base + other.size && other.base < s.base + s.size {
                throw CXLTierError.geometry("slices of nodes \(other.ownerNode) and \(s.ownerNode) overlap")
            }
            // The pool header page lives inside whichever slice covers offset 0.
            let start = headerPage.overlaps(s.base..<(s.base + s.size)) ? PoolFormat.pageSize : s.base
            geometries.append(try PartitionGeometry.layout(id: i, ownerNode: s.ownerNode, offset: start,
                                                           size: s.base + s.size - start, bytesPerSlot: bytesPerSlot))
        }
        let base = region.base
        base.initializeMemory(as: UInt8.self, repeating: 0, count: PoolFormat.pageSize)
        let now = UInt64(time(nil))
        let nonce = UInt64.random(in: 1...UInt64.max)
        base.setU64(PH.magic, PoolFormat.poolMagic)
        base.setU32(PH.formatVersion, PoolFormat.version)
        base.setU32(PH.headerSize, UInt32(PoolFormat.pageSize))
        base.setU64(PH.poolSize, UInt64(region.size))
        base.setU32(PH.partitionCount, UInt32(geometries.count))
        base.setU32(PH.tableOffset, 64)
        base.setU64(PH.createdAt, now)
        base.setU32(PH.tableEntrySize, 64)
        base.setU32(PH.bytesPerSlot, UInt32(bytesPerSlot))
        base.setU64(PH.nonce, nonce)
        for g in geometries {
            let e = base + 64 + 64 * g.id
            e.setU32(TE.partitionID, UInt32(g.id))
            e.setU32(TE.ownerNode, UInt32(g.ownerNode))
            e.setU64(TE.epoch, 1)
            e.setU64(TE.offset, UInt64(g.offset))
            e.setU64(TE.size, UInt64(g.size))
            let p = base + g.offset
            p.initializeMemory(as: UInt8.self, repeating: 0, count: g.logOffset)
            writePartitionHeader(p, g, poolSize: region.size, partitionCount: geometries.count, bytesPerSlot: bytesPerSlot)
            p.setU64(H.nonce, nonce)
            flush.writeBack(p, count: g.logOffset)
        }
        base.setU32(PH.checksum, poolChecksum(base, count: geometries.count))
        flush.writeBack(base, count: PoolFormat.pageSize)
        flush.storeFence()
        return try Pool(region: region, flush: flush)
    }

    static func writePartitionHeader(_ p: UnsafeMutableRawPointer, _ g: PartitionGeometry, poolSize: Int, partitionCount: Int, bytesPerSlot: Int) {
        p.setU64(H.magic, PoolFormat.partitionMagic)
        p.setU32(H.formatVersion, PoolFormat.version)
        p.setU32(H.partitionID, UInt32(g.id))
        p.setU32(H.ownerNode, UInt32(g.ownerNode))
        p.setU32(H.bucketCount, UInt32(g.bucketCount))
        p.setU64(H.partitionOffset, UInt64(g.offset))
        p.setU64(H.partitionSize, UInt64(g.size))
        p.setU64(H.poolSize, UInt64(poolSize))
        p.setU64(H.logOffset, UInt64(g.logOffset))
        p.setU16(H.partitionCount, UInt16(partitionCount))
        p.setU16(H.bytesPerSlot, UInt16(bytesPerSlot))
        p.setU32(H.checksum, CRC32C.checksum(UnsafeRawBufferPointer(start: p, count: 60)))
    }

    static func poolChecksum(_ base: UnsafeMutableRawPointer, count: Int) -> UInt32 {
        let c = CRC32C.checksum(UnsafeRawBufferPointer(start: base, count: 60))
        return CRC32C.checksum(UnsafeRawBufferPointer(start: base + 64, count: 64 * count), seed: c)
    }

    /// Opens the pool in `region`, validating the header, the partition table and every
    /// partition header; refuses pools from a newer format version.
    public init(region: any Region, flush: any FlushPolicy = CoherentFlush()) throws {
        self.region = region
        self.flush = flush
        let base = region.base
        guard region.size >= PoolFormat.pageSize else { throw CXLTierError.corrupt("\(region.description) is smaller than a pool header") }
        flush.invalidate(base, count: PoolFormat.pageSize)
        guard base.u64(PH.magic) == PoolFormat.poolMagic else {
            throw CXLTierError.corrupt("\(region.description): no pool header at offset 0 (bad magic)")
        }
        let version = base.u32(PH.formatVersion)
        guard version <= PoolFormat.version else { throw CXLTierError.newerFormat(found: version, supported: PoolFormat.version) }
        guard version >= 1 else { throw CXLTierError.corrupt("\(region.description): pool header: format version 0") }
        guard version == PoolFormat.version else { throw CXLTierError.olderFormat(found: version, supported: PoolFormat.version) }
        let count = Int(base.u32(PH.partitionCount))
        guard count >= 1, count <= PoolFormat.maxPartitions, base.u32(PH.tableOffset) == 64, base.u32(PH.tableEntrySize) == 64 else {
            throw CXLTierError.corrupt("\(region.description): pool header: partition count \(count) or table geometry out of range")
        }
        guard base.u32(PH.checksum) == Self.poolChecksum(base, count: count) else {
            throw CXLTierError.corrupt("\(region.description): pool header at offset 0: checksum mismatch (run `cxl-bmc pool check --repair`)")
        }
        guard base.u64(PH.poolSize) == UInt64(region.size) else {
            throw CXLTierError.corrupt("\(region.description): pool header says \(base.u64(PH.poolSize)) bytes, the region has \(region.size) (truncated? `cxl-bmc pool check` shows the damage)")
        }
        createdAt = base.u64(PH.createdAt)
        bytesPerSlot = Int(base.u32(PH.bytesPerSlot))
        guard bytesPerSlot >= PoolFormat.line, bytesPerSlot <= Int(UInt16.max) else {
            throw CXLTierError.corrupt("\(region.description): pool header: bytes per slot \(bytesPerSlot) out of range")
        }
        var geometries: [PartitionGeometry] = []
        for i in 0..<count {
            let e = base + 64 + 64 * i
            let offset = e.u64(TE.offset), size = e.u64(TE.size)
            guard e.u32(TE.partitionID) == UInt32(i), offset >= UInt64(PoolFormat.pageSize), offset % UInt64(PoolFormat.pageSize) == 0,
                  size <= UInt64(region.size), offset <= UInt64(region.size) - size else {
                throw CXLTierError.corrupt("\(region.description): partition table entry \(i) at offset \(64 + 64 * i): out of range")
            }
            var g = try Self.validatePartition(base, index: i, offset: Int(offset), size: Int(size), ownerNode: Int(e.u32(TE.ownerNode)),
                                               poolSize: region.size, count: count, bytesPerSlot: bytesPerSlot, flush: flush)
            g.nonce = base.u64(PH.nonce)
            geometries.append(g)
        }
        partitions = geometries
    }

    /// Checks partition `index`'s header against the table entry and recomputes its layout.
    static func validatePartition(_ base: UnsafeMutableRawPointer, index i: Int, offset: Int, size: Int, ownerNode: Int,
                                  poolSize: Int, count: Int, bytesPerSlot: Int, flush: any FlushPolicy) throws -> PartitionGeometry {
        let p = base + offset
        flush.invalidate(p, count: 64)
        let at = "partition \(i) header at offset 0x\(String(offset, radix: 16))"
        guard p.u64(H.magic) == PoolFormat.partitionMagic else { throw CXLTierError.corrupt("\(at): bad magic") }
        guard p.u32(H.checksum) == CRC32C.checksum(UnsafeRawBufferPointer(start: p, count: 60)) else {
            throw CXLTierError.corrupt("\(at): checksum mismatch")
        }
        let version = p.u32(H.formatVersion)
        guard version <= PoolFormat.version else { throw CXLTierError.newerFormat(found: version, supported: PoolFormat.version) }
        guard version == PoolFormat.version else { throw CXLTierError.corrupt("\(at): format version \(version) disagrees with the pool header's \(PoolFormat.version)") }
        let g = try PartitionGeometry.layout(id: i, ownerNode: ownerNode, offset: offset, size: size, bytesPerSlot: bytesPerSlot)
        guard p.u32(H.partitionID) == UInt32(i), p.u32(H.ownerNode) == UInt32(ownerNode), p.u64(H.partitionOffset) == UInt64(offset),
              p.u64(H.partitionSize) == UInt64(size), p.u64(H.poolSize) == UInt64(poolSize), Int(p.u16(H.partitionCount)) == count, Int(p.u16(H.bytesPerSlot)) == bytesPerSlot,
              Int(p.u32(H.bucketCount)) == g.bucketCount, Int(p.u64(H.logOffset)) == g.logOffset else {
            throw CXLTierError.corrupt("\(at): disagrees with the partition table")
        }
        return g
    }

    /// Creates a pool file (mode 0600) and lays it out.
    public static func create(path: String, size: Int, slices: [SliceSpec] = [], bytesPerSlot: Int = PoolFormat.defaultBytesPerSlot) throws -> Pool {
        let region = try ShmRegion(creating: path, size: size)
        do {
            return try create(in: region, slices: slices, bytesPerSlot: bytesPerSlot)
        } catch {
            unlink(path)
            throw error
        }
    }

    /// Opens an existing pool file.
    public convenience init(path: String, flush: any FlushPolicy = CoherentFlush()) throws {
        try self.init(region: ShmRegion(opening: path), flush: flush)
    }

    private func geometry(_ partition: Int) throws -> PartitionGeometry {
        guard partitions.indices.contains(partition) else { throw CXLTierError.noSuchPartition(partition) }
        return partitions[partition]
    }

    /// Attaches as the one writer of `partition`: takes the lease (refused while another live
    /// process holds it), bumps the epoch and rebuilds the index from the log.
    public func writer(partition: Int, flush: (any FlushPolicy)? = nil,
                       clock: @escaping @Sendable () -> UInt32 = { UInt32(truncatingIfNeeded: time(nil)) },
                       reclaimPolicy: ReclaimPolicy = .clock) throws -> PartitionWriter {
        try PartitionWriter(memory: PartitionMemory(region: region, geometry: geometry(partition), flush: flush ?? self.flush, clock: clock),
                            reclaimPolicy: reclaimPolicy)
    }

    /// A lock-free reader of `partition` (any process, any number of them).
    public func reader(partition: Int, flush: (any FlushPolicy)? = nil,
                       clock: @escaping @Sendable () -> UInt32 = { UInt32(truncatingIfNeeded: time(nil)) }) throws -> PartitionReader {
        PartitionReader(memory: PartitionMemory(region: region, geometry: try geometry(partition), flush: flush ?? self.flush, clock: clock))
    }

    /// Statistics of `partition` as its writer keeps them.
    public func stats(partition: Int) throws -> PartitionStats {
        PartitionMemory(region: region, geometry: try geometry(partition), flush: flush, clock: { 0 }).stats()
    }

    // MARK: - PGAS primitives

    /// The address of `count` bytes at `pointer`, after bounds-checking against the partition.
    private func address(_ pointer: GlobalPointer, count: Int, alignment: Int = 1) throws -> UnsafeMutableRawPointer {
        let g = try geometry(pointer.partition)
        guard count >= 0, pointer.offset <= UInt64(g.size), UInt64(count) <= UInt64(g.size) - pointer.offset else {
            throw CXLTierError.badPointer("\(pointer) + \(count) bytes is outside partition \(g.id) (\(g.size) bytes)")
        }
        guard pointer.offset % UInt64(alignment) == 0 else {
            throw CXLTierError.badPointer("\(pointer) is not \(alignment)-byte aligned")
        }
        return region.base + g.offset + Int(pointer.offset)
    }

    /// Copies `count` bytes out of the pool (invalidating first on non-coherent memory).
    public func load(_ pointer: GlobalPointer, count: Int) throws -> [UInt8] {
        let p = try address(pointer, count: count)
        flush.invalidate(p, count: count)
        return [UInt8](UnsafeRawBufferPointer(start: p, count: count))
    }

    /// Stores bytes into the pool and writes them back.
    public func store(_ bytes: [UInt8], at pointer: GlobalPointer) throws {
        let p = try address(pointer, count: bytes.count)
        bytes.withUnsafeBytes { if $0.count > 0 { p.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
        flush.writeBack(p, count: bytes.count)
        flush.storeFence()
    }

    /// Atomic 64-bit load (acquire) of an 8-byte-aligned pool word.
    public func loadWord(_ pointer: GlobalPointer) throws -> UInt64 {
        let p = try address(pointer, count: 8, alignment: 8)
        flush.invalidate(p, count: 8)
        return cxltier_load_acquire(p.assumingMemoryBound(to: UInt64.self))
    }

    /// Atomic 64-bit store (release) to an 8-byte-aligned pool word.
    public func storeWord(_ value: UInt64, at pointer: GlobalPointer) throws {
        let p = try address(pointer, count: 8, alignment: 8)
        cxltier_store_release(p.assumingMemoryBound(to: UInt64.self), value)
        flush.writeBack(p, count: 8)
        flush.storeFence()
    }

    /// Atomic fetch-and-add on an 8-byte-aligned pool word; returns the previous value.
    public func fetchAdd(_ pointer: GlobalPointer, _ delta: UInt64) throws -> UInt64 {
        let p = try address(pointer, count: 8, alignment: 8)
        let old = cxltier_fetch_add(p.assumingMemoryBound(to: UInt64.self), delta)
        flush.writeBack(p, count: 8)
        flush.storeFence()
        return old
    }

    /// Atomic compare-and-swap on an 8-byte-aligned pool word: the value found, and whether it
    /// was `expected` (and so replaced by `desired`).
    public func compareExchange(_ pointer: GlobalPointer, expected: UInt64, desired: UInt64) throws -> (exchanged: Bool, original: UInt64) {
        let p = try address(pointer, count: 8, alignment: 8)
        var found = expected
        let ok = cxltier_compare_exchange(p.assumingMemoryBound(to: UInt64.self), &found, desired) != 0
        flush.writeBack(p, count: 8)
        flush.storeFence()
        return (ok, found)
    }

    /// A full memory fence (plus the policy's store fence).
    public func fence() {
        flush.storeFence()
        cxltier_fence_seq_cst()
    }

    /// Reads and validates the record at `pointer` (from ``PartitionReader/locate(_:)``) as
    /// `key`'s item; nil on any mismatch, so a stale pointer is only ever a miss.
    public func getItem(at pointer: GlobalPointer, key: [UInt8]) throws -> TierItem? {
        let g = try geometry(pointer.partition)
        let off = Int(truncatingIfNeeded: pointer.offset) - g.logOffset
        guard off >= 0, off < g.logSize, off % PoolFormat.line == 0 else { return nil }
        let r = try reader(partition: pointer.partition)
        // The record's log position is not stored in the pointer; any lap works for the slot
        // search, so look the key up and accept only if it is at this offset.
        guard case let .hit(item, pos) = key.withUnsafeBytes({ r.lookup($0) }), r.memory.phys(pos) == off else { return nil }
        r.referenced(pos)
        return item
    }
}
