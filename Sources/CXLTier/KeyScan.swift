import CCXLTierShim
#if canImport(Glibc)
import Glibc
#endif

// Additive API for Peering's membership change (L3Cluster's hand-off): which keys a partition
// holds. Read-only and validated like every lookup; nothing else in CXLTier depends on it.

extension PartitionReader {
    /// The keys of ``forEachIndexedKey(_:)``, collected (small partitions, tests).
    public func indexedKeys() -> [[UInt8]] {
        var keys: [[UInt8]] = []
        forEachIndexedKey { keys.append($0) }
        return keys
    }

    /// Calls `body` with the key of every record the partition's index points at — live items,
    /// tombstones and expired items alike — each copied out and accepted only when its checksum,
    /// its slot (re-read after the copy) and its index tag and bucket agree. Not a snapshot: keys
    /// written during the scan may be missed; a key comes once per index slot (normally once).
    /// Use ``versioned(_:)`` for what a key holds now.
    public func forEachIndexedKey(_ body: ([UInt8]) throws -> Void) rethrows {
        let m = memory
        let logSize = m.geometry.logSize
        for bucket in 0..<m.geometry.bucketCount {
            m.invalidate(m.bucketAddress(bucket), count: PoolFormat.line)
            for i in 0..<PoolFormat.slotsPerBucket {
                let slot = m.slot(bucket, i)
                let s = cxltier_load_acquire(slot)
                guard s != 0 else { continue }
                let pos = PartitionMemory.position(ofSlot: s)
                guard pos >= 0 else { continue }
                let phys = m.phys(pos)
                guard phys + PoolFormat.Item.headerSize <= logSize else { continue }
                let src = UnsafeRawPointer(m.log + phys)
                m.invalidate(src, count: PoolFormat.Item.headerSize)
                var head = (UInt64(0), UInt64(0))
                withUnsafeMutableBytes(of: &head) { cxltier_copy_volatile($0.baseAddress, src, 16) }
                let header = withUnsafeBytes(of: &head) { RecordHeader(at: $0.baseAddress!, phys: phys, logSize: logSize) }
                guard let header, !header.isPad, header.length <= m.geometry.maxRecordSize else { continue }
                let length = header.length
                m.invalidate(src, count: length)
                let key = withUnsafeTemporaryAllocation(byteCount: length, alignment: 16) { buffer -> [UInt8]? in
                    let copy = UnsafeRawPointer(buffer.baseAddress!)
                    cxltier_copy_volatile(buffer.baseAddress, src, length)
                    cxltier_fence_acquire()
                    guard cxltier_load_acquire(slot) == s,
                          copy.loadUnaligned(fromByteOffset: 4, as: UInt32.self) == UInt32(truncatingIfNeeded: head.0 >> 32),
                          copy.loadUnaligned(fromByteOffset: 8, as: UInt64.self) == head.1,
                          header.checksumMatches(copy, pos: pos, nonce: m.geometry.nonce) else { return nil }
                    let key = UnsafeRawBufferPointer(start: copy + header.keyOffset, count: header.keyLength)
                    let h = KeyHash(key, buckets: m.geometry.bucketCount)
                    guard h.tag == s >> 48, h.bucket1 == bucket || h.bucket2 == bucket else { return nil }
                    return [UInt8](key)
                }
                if let key { try body(key) }
            }
        }
    }
}
