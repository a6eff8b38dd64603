import CXLTier
import Foundation

/// L3 in a CXLTier partition this host owns (its writer). The flush_all mark
/// lives in the partition's PGAS user words 0 and 1, so it survives a daemon
/// restart and is seen by hosts that read the partition directly.
public final class CXLTierStore: L3Store, @unchecked Sendable {
    public let pool: Pool
    public let partition: Int
    private let writer: PartitionWriter
    private let clock: @Sendable () -> Int64
    private var flushVersionWord: GlobalPointer { .userWord(partition: partition, 0) }
    private var flushEffectiveWord: GlobalPointer { .userWord(partition: partition, 1) }
    /// Serializes read-modify-write sequences of peers (``withExclusiveAccess(_:)``).
    private let exclusive = NSLock()

    public init(pool: Pool, partition: Int, clock: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970) }) throws {
        self.pool = pool
        self.partition = partition
        self.writer = try pool.writer(partition: partition)
        self.clock = clock
    }

    public func close() { writer.close() }

    /// Runs `body` with every other exclusive section of this store excluded: a peer's
    /// add/append/CAS (read, decide, write) must not interleave with another.
    public func withExclusiveAccess<T>(_ body: () throws -> T) rethrows -> T {
        exclusive.lock()
        defer { exclusive.unlock() }
        return try body()
    }

    private func exptime(_ unix: Int64) -> UInt32 {
        unix <= 0 ? 0 : UInt32(clamping: unix)
    }

    public func put(key: [UInt8], item: L3Item) throws {
        // `.stale`: a newer write (or delete) is already there: nothing to do.
        try putIfNewer(key: key, item: item)
    }

    /// The put; false when the partition already holds a newer write or delete of the key.
    @discardableResult
    public func putIfNewer(key: [UInt8], item: L3Item) throws -> Bool {
        let result = try writer.put(key, item.value, flags: item.flags, exptime: exptime(item.exptimeUnix),
                                    version: item.version)
        if case .stored = result { return true }
        return false
    }

    public func delete(key: [UInt8], version: UInt64) throws {
        try deleteIfNewer(key: key, version: version)
    }

    /// The delete (a tombstone); false when the partition already holds a newer write of the key.
    @discardableResult
    public func deleteIfNewer(key: [UInt8], version: UInt64) throws -> Bool {
        if case .stored = try writer.delete(key, version: version) { return true }
        return false
    }

    public func touch(key: [UInt8], exptimeUnix: Int64, version: UInt64) throws {
        _ = try writer.touch(key, exptime: exptime(exptimeUnix))
    }

    /// What this partition holds for `key`, tombstones included (flush marks not applied).
    public func versioned(_ key: [UInt8]) -> VersionedLookup {
        writer.partitionReader.versioned(key)
    }

    public func get(key: [UInt8]) throws -> L3Item? {
        guard let found = writer.get(key) else { return nil }
        let item = L3Item(value: found.value, flags: found.flags, exptimeUnix: Int64(found.exptime), version: found.version)
        return try flushMark().hides(item, now: clock()) ? nil : item
    }

    public func flush(versionsBefore: UInt64, effectiveUnix: Int64) throws {
        // Effective time first, version last: a reader seeing the new version sees its time.
        try pool.storeWord(UInt64(max(0, effectiveUnix)), at: flushEffectiveWord)
        pool.fence()
        try pool.storeWord(versionsBefore, at: flushVersionWord)
    }

    func flushMark() throws -> L3FlushMark {
        try Self.flushMark(pool: pool, partition: partition)
    }

    /// The flush_all mark `partition`'s owner keeps (any host mapping the pool may read it).
    public static func flushMark(pool: Pool, partition: Int) throws -> L3FlushMark {
        L3FlushMark(versionsBefore: try pool.loadWord(.userWord(partition: partition, 0)),
                    effectiveUnix: Int64(try pool.loadWord(.userWord(partition: partition, 1))))
    }
}
