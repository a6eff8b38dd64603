import CCXLTierShim

#if canImport(Glibc)
import Glibc
#endif

/// An item as stored: what a get returns.
public struct TierItem: Sendable, Equatable {
    public var value: [UInt8]
    /// memcached's client flags.
    public var flags: UInt32
    /// Absolute unix seconds after which the item is a miss; 0 = never.
    public var exptime: UInt32
    /// The put's version (CAS); larger is newer.
    public var version: UInt64

    public init(value: [UInt8], flags: UInt32 = 0, exptime: UInt32 = 0, version: UInt64) {
        self.value = value
        self.flags = flags
        self.exptime = exptime
        self.version = version
    }
}

/// A partition's statistics, as its writer keeps them in the partition header.
public struct PartitionStats: Sendable, Equatable {
    public var items: UInt64
    public var bytes: UInt64
    public var puts: UInt64
    public var deletes: UInt64
    public var reclaimed: UInt64
    public var expired: UInt64
    public var checksumFailures: UInt64
    public var indexEvictions: UInt64
    /// Records the CLOCK hand re-appended because they had been read since its last pass.
    public var secondChances: UInt64 = 0
    /// Log bytes in use (tail − head) and the log's size.
    public var logUsed: UInt64
    public var logSize: UInt64
    public var epoch: UInt64
}

/// The geometry of one partition, validated once and then kept in local memory so that later
/// changes to the pool cannot move a bounds check.
public struct PartitionGeometry: Sendable, Equatable {
    public var id: Int
    public var ownerNode: Int
    /// Pool offset and bytes of the partition, header included.
    public var offset: Int
    public var size: Int
    public var bucketCount: Int
    /// Partition offset of the reference map (one bit per 64-byte log line, CLOCK's reference
    /// bits) and its bytes.
    public var refMapOffset: Int = 0
    public var refMapSize: Int = 0
    /// Partition offset of the log and its bytes (a multiple of 64).
    public var logOffset: Int
    public var logSize: Int
    /// The pool's random nonce, mixed into every record's crc.
    public var nonce: UInt64 = 0

    public var indexOffset: Int { PoolFormat.pageSize }
    /// Largest record the log accepts (a quarter of the log, so reclaim always makes room).
    public var maxRecordSize: Int { min(logSize / 4, PoolFormat.Item.maxValueLength + 512) }

    /// The layout `pool create` gives a partition of `size` bytes at pool `offset`.
    public static func layout(id: Int, ownerNode: Int, offset: Int, size: Int, bytesPerSlot: Int) throws -> PartitionGeometry {
        let minimum = 64 << 10
        guard size >= minimum else { throw CXLTierError.geometry("partition \(id) has \(size) bytes; at least \(minimum) needed") }
        let perBucket = bytesPerSlot * PoolFormat.slotsPerBucket + PoolFormat.line
        let buckets = max(1, (size - PoolFormat.pageSize) / perBucket)
        guard buckets <= Int(UInt32.max) else { throw CXLTierError.geometry("partition \(id) too large") }
        let refMapOffset = PoolFormat.alignUp(PoolFormat.pageSize + buckets * PoolFormat.line, PoolFormat.pageSize)
        // One bit per line of whatever follows (an upper bound on the log's lines), in whole u64 words.
        let refMapSize = PoolFormat.alignUp((size - refMapOffset) / PoolFormat.line, 512) / 8
        let logOffset = PoolFormat.alignUp(refMapOffset + refMapSize, PoolFormat.pageSize)
        let logSize = (size - logOffset) / PoolFormat.line * PoolFormat.line
        guard logSize >= 16 * PoolFormat.line else { throw CXLTierError.geometry("partition \(id) of \(size) bytes leaves no room for a log") }
        return PartitionGeometry(id: id, ownerNode: ownerNode, offset: offset, size: size, bucketCount: buckets,
                                 refMapOffset: refMapOffset, refMapSize: refMapSize, logOffset: logOffset, logSize: logSize)
    }
}

/// The hash of a key: two candidate buckets and a 16-bit tag.
struct KeyHash {
    var bucket1: Int
    var bucket2: Int
    var tag: UInt64

    @inline(__always) static func fmix(_ x: UInt64) -> UInt64 {
        var k = x
        k ^= k >> 33
        k &*= 0xFF51_AFD7_ED55_8CCD
        k ^= k >> 33
        k &*= 0xC4CE_B9FE_1A85_EC53
        k ^= k >> 33
        return k
    }

    @inline(__always) init(_ key: UnsafeRawBufferPointer, buckets: Int) {
        let crc = UInt64(cxltier_crc32c(0xFFFF_FFFF, key.baseAddress, key.count))
        let h = Self.fmix(crc | UInt64(key.count) << 32)
        let n = UInt64(buckets)
        bucket1 = Int(((h & 0xFFFF_FFFF) &* n) >> 32)
        var b2 = Int(((h >> 32) &* n) >> 32)
        if b2 == bucket1 && buckets > 1 { b2 = (b2 + 1) % buckets }
        bucket2 = b2
        tag = Self.fmix(h) >> 48
    }
}

enum RecordState { case live, dead, damaged }

/// A record decoded from the log. Offsets are into the buffer it was read from.
struct RecordHeader {
    var keyLength: Int
    var valueLength: Int
    var version: UInt64
    var kind: PoolFormat.Item.Kind
    /// Bytes before alignment, and the aligned size the record takes in the log.
    var length: Int
    var size: Int
    var padLines: Int

    var isPad: Bool { kind.contains(.pad) }
    var isTombstone: Bool { kind.contains(.tombstone) }
    var optionalBytes: Int { (kind.contains(.hasFlags) ? 4 : 0) + (kind.contains(.hasExptime) ? 4 : 0) }
    var keyOffset: Int { PoolFormat.Item.headerSize + optionalBytes }

    /// Decodes the 16-byte header at `p` (physical log offset `phys`); nil when it cannot be a
    /// record or would run past the log's end.
    @inline(__always) init?(at p: UnsafeRawPointer, phys: Int, logSize: Int) {
        let lengths = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        let meta = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        let kindByte = UInt8(truncatingIfNeeded: meta >> 56)
        guard kindByte & 0xF0 == PoolFormat.Item.Kind.marker else { return nil }
        kind = PoolFormat.Item.Kind(rawValue: kindByte & 0x0F)
        version = meta & PoolFormat.Item.maxVersion
        if kind.contains(.pad) {
            guard kind == .pad, lengths & 0xFF == 0 else { return nil }
            padLines = Int(lengths >> 8)
            keyLength = 0
            valueLength = 0
            length = PoolFormat.Item.headerSize
            size = padLines * PoolFormat.line
            guard padLines > 0, phys + size <= logSize else { return nil }
            return
        }
        padLines = 0
        keyLength = Int(lengths & 0xFF)
        valueLength = Int(lengths >> 8)
        guard keyLength > 0, keyLength <= PoolFormat.Item.maxKeyLength else { return nil }
        guard !kind.contains(.tombstone) || valueLength == 0 else { return nil }
        let opt = (kind.contains(.hasFlags) ? 4 : 0) + (kind.contains(.hasExptime) ? 4 : 0)
        length = PoolFormat.Item.headerSize + opt + keyLength + valueLength
        size = PoolFormat.alignUp(length, PoolFormat.line)
        guard phys + size <= logSize else { return nil }
    }

    /// crc32c of a record of `length` bytes at `p` written at log position `pos` in a pool
    /// whose nonce is `nonce` (so a record left by an earlier pool in the same memory never
    /// validates either).
    @inline(__always) static func checksum(_ p: UnsafeRawPointer, length: Int, pos: Int, nonce: UInt64) -> UInt32 {
        var seed = (UInt64(pos).littleEndian, nonce.littleEndian)
        let c = withUnsafeBytes(of: &seed) { cxltier_crc32c(0xFFFF_FFFF, $0.baseAddress, 16) }
        return cxltier_crc32c(c, p + 4, length - 4)
    }

    @inline(__always) func checksumMatches(_ p: UnsafeRawPointer, pos: Int, nonce: UInt64) -> Bool {
        UInt32(littleEndian: p.loadUnaligned(as: UInt32.self)) == Self.checksum(p, length: length, pos: pos, nonce: nonce)
    }

    /// A live record's crc, or a superseded ("dead") one's: the writer inverts the crc of the
    /// record a put replaces, so a rebuild never brings an overwritten or deleted value back
    /// even if the newer record is later damaged. Either way the bytes are a whole record.
    @inline(__always) func checksumState(_ p: UnsafeRawPointer, pos: Int, nonce: UInt64) -> RecordState {
        let stored = UInt32(littleEndian: p.loadUnaligned(as: UInt32.self))
        let computed = Self.checksum(p, length: length, pos: pos, nonce: nonce)
        return stored == computed ? .live : stored == ~computed ? .dead : .damaged
    }

    @inline(__always) func flags(_ p: UnsafeRawPointer) -> UInt32 {
        kind.contains(.hasFlags) ? UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 16, as: UInt32.self)) : 0
    }

    @inline(__always) func exptime(_ p: UnsafeRawPointer) -> UInt32 {
        guard kind.contains(.hasExptime) else { return 0 }
        let at = 16 + (kind.contains(.hasFlags) ? 4 : 0)
        return UInt32(littleEndian: p.loadUnaligned(fromByteOffset: at, as: UInt32.self))
    }
}

/// Where one partition lives in a mapped pool, and the index/log arithmetic readers and the
/// writer share. Holds the region so the mapping outlives every user.
final class PartitionMemory: @unchecked Sendable {
    let region: any Region
    let geometry: PartitionGeometry
    /// The partition header.
    let base: UnsafeMutableRawPointer
    let index: UnsafeMutableRawPointer
    let refMap: UnsafeMutableRawPointer
    let log: UnsafeMutableRawPointer
    let flush: any FlushPolicy
    let clock: @Sendable () -> UInt32

    init(region: any Region, geometry: PartitionGeometry, flush: any FlushPolicy, clock: @escaping @Sendable () -> UInt32) {
        self.region = region
        self.geometry = geometry
        self.base = region.base + geometry.offset
        self.index = base + geometry.indexOffset
        self.refMap = base + geometry.refMapOffset
        self.log = base + geometry.logOffset
        self.flush = flush
        self.logSize = geometry.logSize
        self.inverseLogSize = 1 / Double(geometry.logSize)
        self.coherent = flush is CoherentFlush
        self.clock = clock
    }

    /// True for ``CoherentFlush``: the hot paths then skip the policy calls altogether.
    let coherent: Bool
    /// The log's bytes, and their reciprocal for ``phys(_:)``.
    let logSize: Int
    let inverseLogSize: Double

    @inline(__always) func writeBack(_ address: UnsafeRawPointer, count: Int) {
        if !coherent { flush.writeBack(address, count: count) }
    }

    @inline(__always) func storeFence() {
        if !coherent { flush.storeFence() }
    }

    @inline(__always) func invalidate(_ address: UnsafeRawPointer, count: Int) {
        if !coherent { flush.invalidate(address, count: count) }
    }

    @inline(__always) func slot(_ bucket: Int, _ i: Int) -> UnsafeMutablePointer<UInt64> {
        (index + bucket * PoolFormat.line + i * 8).assumingMemoryBound(to: UInt64.self)
    }

    @inline(__always) func bucketAddress(_ bucket: Int) -> UnsafeMutableRawPointer { index + bucket * PoolFormat.line }

    /// Slot value: tag in the top 16 bits, log position / 64 + 1 in the low 48 (0 = empty).
    @inline(__always) static func slotValue(tag: UInt64, pos: Int) -> UInt64 { tag << 48 | (UInt64(pos / PoolFormat.line) + 1) }
    /// The log position a slot points at; -1 for a value no writer stores (garbage in the pool).
    @inline(__always) static func position(ofSlot s: UInt64) -> Int {
        let line = s & 0xFFFF_FFFF_FFFF
        return line == 0 ? -1 : Int(line - 1) * PoolFormat.line
    }

    /// The physical log offset of position `pos` (≥ 0): `pos % logSize`, without the 64-bit
    /// division (40–90 cycles, several per get and put): a reciprocal estimate of the lap,
    /// then corrected (off by at most one lap for any position a slot can name, < 2^54; the
    /// loops make it exact for every `pos` ≥ 0).
    @inline(__always) func phys(_ pos: Int) -> Int {
        var r = pos &- Int(Double(pos) * inverseLogSize) &* logSize
        while r < 0 { r &+= logSize }
        while r >= logSize { r &-= logSize }
        return r
    }

    /// CLOCK's reference bit for the record at log position `pos`: the word and the bit's mask.
    /// The map is a hint: the writer never trusts it for anything but whom to keep longer.
    @inline(__always) func referenceBit(_ pos: Int) -> (word: UnsafeMutablePointer<UInt64>, mask: UInt64) {
        let line = phys(pos) / PoolFormat.line
        return ((refMap + (line >> 6) * 8).assumingMemoryBound(to: UInt64.self), 1 << UInt64(line & 63))
    }

    /// Sets the reference bit (a read, so the line is only dirtied once per hand pass).
    @inline(__always) func markReferenced(_ pos: Int) {
        let (word, mask) = referenceBit(pos)
        if cxltier_load_relaxed(word) & mask == 0 { _ = cxltier_fetch_or(word, mask) }
    }

    @inline(__always) func isReferenced(_ pos: Int) -> Bool {
        let (word, mask) = referenceBit(pos)
        return cxltier_load_relaxed(word) & mask != 0
    }

    @inline(__always) func clearReference(_ pos: Int) {
        let (word, mask) = referenceBit(pos)
        if cxltier_load_relaxed(word) & mask != 0 { _ = cxltier_fetch_and(word, ~mask) }
    }
    @inline(__always) func header(_ field: Int) -> UnsafeMutablePointer<UInt64> { base.word(field) }
    @inline(__always) func loadHeader(_ field: Int) -> UInt64 { cxltier_load_acquire(header(field)) }

    func stats() -> PartitionStats {
        typealias H = PoolFormat.PartitionHeader
        flush.invalidate(base + 64, count: 256 - 64)
        let head = loadHeader(H.head), tail = loadHeader(H.tail)
        return PartitionStats(
            items: loadHeader(H.statItems), bytes: loadHeader(H.statBytes), puts: loadHeader(H.statPuts),
            deletes: loadHeader(H.statDeletes), reclaimed: loadHeader(H.statReclaimed), expired: loadHeader(H.statExpired),
            checksumFailures: loadHeader(H.statChecksumFailures), indexEvictions: loadHeader(H.statIndexEvictions),
            secondChances: loadHeader(H.statSecondChances),
            logUsed: tail &- head, logSize: UInt64(geometry.logSize), epoch: loadHeader(H.epoch))
    }
}
