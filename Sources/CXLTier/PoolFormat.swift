import CCXLTierShim

/// The on-pool format, byte by byte. All integers are little-endian; every offset is relative
/// to the start of the pool or of a partition, never a raw address. docs/CXLTier.md has the
/// same tables with the reasoning.
///
/// ```
/// pool:      [pool header page 4 KiB][partition 0][partition 1]...
///            (the header page sits inside the first slice; partition 0 starts after it)
/// partition: [partition header 4 KiB][index: bucketCount × 64 B][reference map][log, to the partition's end]
/// ```
public enum PoolFormat {
    /// The format this build writes. Pools with a larger version are refused; so are pools of
    /// version 1, whose partitions have no reference map (the log starts right after the index).
    public static let version: UInt32 = 2
    /// "CXLTPOOL" as little-endian bytes.
    public static let poolMagic: UInt64 = 0x4C4F_4F50_544C_5843
    /// "CXLTPART" as little-endian bytes.
    public static let partitionMagic: UInt64 = 0x5452_4150_544C_5843
    /// Size of the pool header page and of each partition header.
    public static let pageSize = 4096
    /// Cache line: items, buckets and header lines are aligned to it.
    public static let line = 64
    /// Partitions one pool header page can describe.
    public static let maxPartitions = (pageSize - 64) / 64
    /// Index slots per bucket (one cache line of 8-byte slots).
    public static let slotsPerBucket = 8
    /// Log bytes provisioned per index slot at create time (the expected item footprint).
    public static let defaultBytesPerSlot = 112

    /// Pool header, at pool offset 0. Written once by `pool create`.
    public enum PoolHeader {
        /// u64: ``PoolFormat/poolMagic``.
        public static let magic = 0
        /// u32: format version that wrote the pool.
        public static let formatVersion = 8
        /// u32: bytes of the header page (4096).
        public static let headerSize = 12
        /// u64: bytes of the whole pool.
        public static let poolSize = 16
        /// u32: number of partitions in the table.
        public static let partitionCount = 24
        /// u32: offset of the partition table (64).
        public static let tableOffset = 28
        /// u64: unix seconds at creation.
        public static let createdAt = 32
        /// u32: bytes per table entry (64).
        public static let tableEntrySize = 40
        /// u32: log bytes provisioned per index slot (sets the index size).
        public static let bytesPerSlot = 44
        /// u64: random at creation, mixed into every record's crc.
        public static let nonce = 48
        /// u32: crc32c of bytes 0..<60 and of the table entries.
        public static let checksum = 60
    }

    /// One partition table entry (64 B), at pool offset 64 + 64 × index.
    public enum TableEntry {
        /// u32: the partition's index (equals its table position).
        public static let partitionID = 0
        /// u32: the node that owns (is the one writer of) the partition.
        public static let ownerNode = 4
        /// u64: epoch at creation (the live epoch is in the partition header).
        public static let epoch = 8
        /// u64: pool offset of the partition header.
        public static let offset = 16
        /// u64: bytes of the partition, header included.
        public static let size = 24
    }

    /// Partition header, at the partition's offset. Line 0 is immutable and checksummed; the
    /// other lines are written only by the partition's writer (and the user words by PGAS
    /// atomics) and are range-checked rather than trusted.
    public enum PartitionHeader {
        /// u64: ``PoolFormat/partitionMagic``.
        public static let magic = 0
        /// u32: format version.
        public static let formatVersion = 8
        /// u32: the partition's index in the pool.
        public static let partitionID = 12
        /// u32: owner node (replicates the table entry).
        public static let ownerNode = 16
        /// u32: index buckets (64 B each), starting at partition offset 4096.
        public static let bucketCount = 20
        /// u64: pool offset of this partition (replicates the table entry).
        public static let partitionOffset = 24
        /// u64: bytes of this partition (replicates the table entry).
        public static let partitionSize = 32
        /// u64: bytes of the whole pool (replicates the pool header).
        public static let poolSize = 40
        /// u64: partition offset of the log (after the index, 4 KiB aligned).
        public static let logOffset = 48
        /// u16: partitions in the pool (replicates the pool header).
        public static let partitionCount = 56
        /// u16: log bytes per index slot (replicates the pool header).
        public static let bytesPerSlot = 58
        /// u32: crc32c of bytes 0..<60.
        public static let checksum = 60

        /// u64: bumped by every writer that attaches.
        public static let epoch = 64
        /// u64: pid of the attached writer, 0 when none.
        public static let writerPID = 72
        /// u64: 1 when the last writer detached cleanly.
        public static let cleanShutdown = 80
        /// u64: copy of the pool nonce (so a partition is self-describing).
        public static let nonce = 88

        /// u64: log position (monotonic byte count) of the oldest record.
        public static let head = 128
        /// u64: log position just after the newest completed record.
        public static let tail = 136
        /// u64: highest item version written.
        public static let lastVersion = 144
        /// u64 statistic: records the CLOCK hand gave a second chance (re-appended because a
        /// reader had referenced them since the hand's last pass).
        public static let statSecondChances = 152

        /// u64 statistics, written by the writer: live items, live key+value bytes, puts,
        /// deletes, records reclaimed (evicted) by the log, items found expired, checksum
        /// failures seen by the writer, and entries evicted because both index buckets were full.
        public static let statItems = 192
        public static let statBytes = 200
        public static let statPuts = 208
        public static let statDeletes = 216
        public static let statReclaimed = 224
        public static let statExpired = 232
        public static let statChecksumFailures = 240
        public static let statIndexEvictions = 248

        /// 32 u64 words free for PGAS users (Peering), lines 4 to 7.
        public static let userWords = 256
        public static let userWordCount = 32
    }

    /// An item (or tombstone, or pad) in the log, cache-line aligned, never wrapping the log end.
    ///
    /// ```
    /// 0  u32 crc32c   over [log position u64, pool nonce u64] ++ bytes 4..<16+opt+key+value
    /// 4  u32 lengths  key length (bits 0-7) | value length (bits 8-31); a pad: lines in bits 8-31
    /// 8  u64 meta     version (bits 0-55) | kind (bits 56-63)
    /// 16 [u32 client flags]  present when kind has hasFlags
    ///    [u32 exptime]       present when kind has hasExptime (unix seconds)
    ///    key, value, zero padding to 64 B
    /// ```
    /// Mixing the position into the crc means a record left over from an earlier lap of the log
    /// never validates at a new position.
    public enum Item {
        public static let headerSize = 16
        public static let maxKeyLength = 250
        public static let maxValueLength = (1 << 24) - 1
        public static let maxVersion: UInt64 = (1 << 56) - 1

        /// The kind byte: a fixed marker nibble (0xA0) plus flag bits.
        public struct Kind: OptionSet, Sendable {
            public let rawValue: UInt8
            public init(rawValue: UInt8) { self.rawValue = rawValue }
            public static let tombstone = Kind(rawValue: 1)
            public static let pad = Kind(rawValue: 2)
            public static let hasFlags = Kind(rawValue: 4)
            public static let hasExptime = Kind(rawValue: 8)
            public static let marker: UInt8 = 0xA0
        }
    }

    @inline(__always) static func alignUp(_ n: Int, _ a: Int) -> Int { (n + a - 1) / a * a }
}

/// Little-endian loads and stores into mapped memory at byte offsets (callers check bounds).
extension UnsafeMutableRawPointer {
    @inline(__always) func u32(_ offset: Int) -> UInt32 { UInt32(littleEndian: loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
    @inline(__always) func u64(_ offset: Int) -> UInt64 { UInt64(littleEndian: loadUnaligned(fromByteOffset: offset, as: UInt64.self)) }
    @inline(__always) func setU32(_ offset: Int, _ v: UInt32) { storeBytes(of: v.littleEndian, toByteOffset: offset, as: UInt32.self) }
    @inline(__always) func setU16(_ offset: Int, _ v: UInt16) { storeBytes(of: v.littleEndian, toByteOffset: offset, as: UInt16.self) }
    @inline(__always) func u16(_ offset: Int) -> UInt16 { UInt16(littleEndian: loadUnaligned(fromByteOffset: offset, as: UInt16.self)) }
    @inline(__always) func setU64(_ offset: Int, _ v: UInt64) { storeBytes(of: v.littleEndian, toByteOffset: offset, as: UInt64.self) }
    /// An aligned 64-bit word for atomics.
    @inline(__always) func word(_ offset: Int) -> UnsafeMutablePointer<UInt64> {
        (self + offset).assumingMemoryBound(to: UInt64.self)
    }
}

/// crc32c, hardware when available.
public enum CRC32C {
    public static func checksum(_ bytes: UnsafeRawBufferPointer, seed: UInt32 = 0) -> UInt32 {
        cxltier_crc32c(seed, bytes.baseAddress, bytes.count)
    }
    public static func checksum(_ bytes: [UInt8], seed: UInt32 = 0) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0, seed: seed) }
    }
    public static var isHardware: Bool { cxltier_crc32c_is_hardware() != 0 }
}
