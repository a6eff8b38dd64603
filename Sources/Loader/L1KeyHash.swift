/// The key hash every probe and L1 program computes (bpf/include/mcache_hash.bpf.h): 64-bit
/// FNV-1a, folded to a set or slot index. One Swift copy, so the daemon finds the set or write-
/// sequence slot the BPF side bumped.
public enum L1KeyHash {
    /// FNV-1a of `key`, folded to 32 bits and masked (`mask` = a power of two − 1), as `set_index`.
    public static func index(of key: some Sequence<UInt8>, mask: UInt32) -> UInt32 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in key { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return (UInt32(truncatingIfNeeded: h) ^ UInt32(truncatingIfNeeded: h >> 32)) & mask
    }
}
