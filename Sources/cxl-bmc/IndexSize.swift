import ArgumentParser
import CXLTier

#if canImport(Glibc)
import Glibc
#endif

/// `-t/--hash-table N`: L3's index size, in index buckets per partition (a bucket is one 64-byte
/// cache line of 8 slots, so N buckets index up to 8·N items). CXLTier derives a partition's
/// bucket count from its size and the pool's log bytes per slot (`PartitionGeometry.layout`), so
/// N is turned into the largest bytes-per-slot that gives every partition at least N buckets:
/// the smallest partition gets N or slightly more (the division rounds), larger ones more.
enum L3IndexSize {
    static let optionHelp = ArgumentHelp(
        "L3's index size: index buckets (8 items each) per partition, at least N (rounded up as the partition's size allows).",
        valueName: "N")
    static let maxBuckets = Int(UInt32.max)

    /// Bytes of one bucket's share of a partition at `bytesPerSlot`: its 64-byte index line and its log.
    static func bytesPerBucket(bytesPerSlot: Int) -> Int { bytesPerSlot * PoolFormat.slotsPerBucket + PoolFormat.line }

    static func validate(_ buckets: Int, option: String = "--hash-table") throws {
        guard buckets >= 1, buckets <= maxBuckets else {
            throw ValidationError("\(option) must be between 1 and \(maxBuckets) index buckets, got \(buckets)")
        }
    }

    /// The bytes per slot that gives each partition of `partitionSizes` at least `buckets` buckets,
    /// as few as possible; a clear error when even the smallest slot (64 bytes) gives too few.
    static func bytesPerSlot(buckets: Int, partitionSizes: [Int]) throws -> Int {
        guard let smallest = partitionSizes.min() else { throw CLIError("no partitions to size") }
        let minSlot = PoolFormat.line, maxSlot = Int(UInt16.max)
        let indexAndLog = smallest - PoolFormat.pageSize
        // floor(indexAndLog / bytesPerBucket) >= buckets  <=>  bytesPerBucket <= floor(indexAndLog / buckets)
        let slot = min(maxSlot, (indexAndLog / buckets - PoolFormat.line) / PoolFormat.slotsPerBucket)
        guard slot >= minSlot else {
            let most = try PartitionGeometry.layout(id: 0, ownerNode: 0, offset: 0, size: smallest, bytesPerSlot: minSlot).bucketCount
            throw CLIError("--hash-table \(buckets): a partition of \(smallest) bytes holds at most \(most) index buckets (\(bytesPerBucket(bytesPerSlot: minSlot)) bytes each, with the smallest log share); give a smaller -t or a larger pool")
        }
        return slot
    }

    /// The partition sizes `Pool.create` lays out for `slices` in a pool of `poolSize` bytes: the
    /// slice that covers offset 0 also holds the pool header page (as in Pool.create).
    static func partitionSizes(poolSize: Int, slices: [SliceSpec]) -> [Int] {
        let specs = slices.isEmpty ? [SliceSpec(ownerNode: 0, base: 0, size: poolSize)] : slices
        return specs.map { s in s.base < PoolFormat.pageSize ? s.base + s.size - PoolFormat.pageSize : s.size }
    }

    /// With an existing pool, -t must describe the index it already has: its geometry is fixed when
    /// it is made. `recreate` is the `pool create` command line that would make it with -t.
    static func check(_ buckets: Int, against pool: Pool, path: String, recreate: String) throws {
        let slot = try? bytesPerSlot(buckets: buckets, partitionSizes: pool.partitions.map(\.size))
        let wanted = pool.partitions.map { p in
            slot.flatMap { try? PartitionGeometry.layout(id: p.id, ownerNode: p.ownerNode, offset: p.offset, size: p.size, bytesPerSlot: $0).bucketCount }
        }
        guard wanted != pool.partitions.map(\.bucketCount) else { return }
        let has = pool.partitions.map { "\($0.bucketCount) index buckets in partition \($0.id)" }.joined(separator: ", ")
        let would = slot == nil ? "cannot be had in a pool of this size"
            : "would give " + wanted.enumerated().map { "\($1 ?? 0) in partition \($0)" }.joined(separator: ", ")
        throw CLIError("--hash-table \(buckets): pool \(path) has \(has), fixed when it was made (see `cxl-bmc pool inspect`); -t \(buckets) \(would). Leave out -t to use the pool as it is, or recreate it, losing its items: \(recreate)")
    }

    /// The single-partition pool `--no-cxl -t N` keeps in anonymous memory: exactly N buckets
    /// at the default log share per slot (64 KiB at least, CXLTier's smallest partition).
    static func inMemoryPool(buckets: Int) throws -> Pool {
        let perBucket = bytesPerBucket(bytesPerSlot: PoolFormat.defaultBytesPerSlot)
        let (product, overflow) = buckets.multipliedReportingOverflow(by: perBucket)
        let partition = max(64 << 10, PoolFormat.pageSize + product)
        let bytes = PoolFormat.pageSize + partition
        let physical = Int(sysconf(Int32(_SC_PHYS_PAGES))) * Int(sysconf(Int32(_SC_PAGESIZE)))
        guard !overflow, bytes <= physical else {
            throw CLIError("--hash-table \(buckets): an in-memory L3 of \(buckets) index buckets needs \(overflow ? "more than \(Int.max)" : String(bytes)) bytes (\(perBucket) per bucket: 8 slots × \(PoolFormat.defaultBytesPerSlot) log bytes + 64 index bytes), this machine has \(physical)")
        }
        let slot = try bytesPerSlot(buckets: buckets, partitionSizes: [partition])
        return try Pool.create(in: AnonymousRegion(size: bytes), bytesPerSlot: slot)
    }
}
