/// A location in a pool that means the same in every process and host: a partition and a byte
/// offset from that partition's start. Raw addresses never go into shared memory; this does,
/// packed into 64 bits (partition in the top 16 bits, offset in the low 48).
public struct GlobalPointer: Hashable, Sendable, CustomStringConvertible {
    public var partition: Int
    public var offset: UInt64

    public init(partition: Int, offset: UInt64) {
        self.partition = partition
        self.offset = offset
    }

    /// The packed form stored in pool words.
    public var packed: UInt64 { UInt64(partition) << 48 | (offset & 0xFFFF_FFFF_FFFF) }

    public init(packed: UInt64) {
        self.partition = Int(packed >> 48)
        self.offset = packed & 0xFFFF_FFFF_FFFF
    }

    /// The `index`th PGAS user word (u64) of `partition`'s header: free for Peering's counters.
    public static func userWord(partition: Int, _ index: Int) -> GlobalPointer {
        GlobalPointer(partition: partition, offset: UInt64(PoolFormat.PartitionHeader.userWords + 8 * index))
    }

    public var description: String { "(\(partition), 0x\(String(offset, radix: 16)))" }
}
