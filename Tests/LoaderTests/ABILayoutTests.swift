import CXLBMCABI
import Testing

/// The Swift view of every ABI struct must match the C header byte for byte:
/// the loader writes these structs straight into BPF maps. The sizes mirror
/// the header's _Static_asserts; a change to the ABI must change both.
@Suite struct ABILayoutTests {
    @Test func wayAndSet() {
        #expect(MemoryLayout<l1_way>.size == 32)
        #expect(MemoryLayout<l1_way>.offset(of: \.key_hash) == 0)
        #expect(MemoryLayout<l1_way>.offset(of: \.expires_ns) == 8)
        #expect(MemoryLayout<l1_way>.offset(of: \.epoch) == 16)
        #expect(MemoryLayout<l1_way>.offset(of: \.seq) == 20)
        #expect(MemoryLayout<l1_way>.offset(of: \.block_len) == 24)
        #expect(MemoryLayout<l1_way>.offset(of: \.hdr_len) == 26)
        #expect(MemoryLayout<l1_way>.offset(of: \.cas_len) == 28)
        #expect(MemoryLayout<l1_way>.offset(of: \.state) == 30)
        #expect(MemoryLayout<l1_way>.offset(of: \.referenced) == 31)

        #expect(MemoryLayout<l1_set>.size == 64 + Int(L1_WAYS) * 32)
        #expect(MemoryLayout<l1_set>.offset(of: \.tag) == 32)
        #expect(MemoryLayout<l1_set>.offset(of: \.lock) == 0)
        #expect(MemoryLayout<l1_set>.offset(of: \.gen) == 4)
        #expect(MemoryLayout<l1_set>.offset(of: \.blocked_until_ns) == 16)
        #expect(MemoryLayout<l1_set>.offset(of: \.ways) == 64)
        #expect(Int(L1_SMALL_WAYS + L1_MEDIUM_WAYS + L1_LARGE_WAYS) == Int(L1_WAYS))
    }

    @Test func blocks() {
        #expect(MemoryLayout<l1_block_small>.size == Int(L1_SMALL_BLOCK))
        #expect(MemoryLayout<l1_block_medium>.size == Int(L1_MEDIUM_BLOCK))
        // 1400 - 8 (frame header) - 5 ("END\r\n") + 1 (even size).
        #expect(MemoryLayout<l1_block_large>.size == Int(MC_UDP_MAX_PAYLOAD - MC_UDP_HDR_LEN - 5 + 1))
    }

    @Test func tickets() {
        #expect(MemoryLayout<l1_ticket_key>.size == 20)
        #expect(MemoryLayout<l1_ticket_key>.offset(of: \.port) == 16)
        #expect(MemoryLayout<l1_ticket_key>.offset(of: \.req_id) == 18)
        #expect(MemoryLayout<l1_ticket>.size == 16 + Int(MC_MAX_GET_KEYS) * 12)
        #expect(MemoryLayout<l1_ticket>.offset(of: \.nkeys) == 12)
        #expect(MemoryLayout<l1_ticket>.offset(of: \.key_hash) == 16)
        #expect(MemoryLayout<l1_ticket>.offset(of: \.gen) == 16 + Int(MC_MAX_GET_KEYS) * 8)
        #expect(MemoryLayout<l1_ttl>.size == 8)
    }

    @Test func connections() {
        #expect(MemoryLayout<l1_conn_key>.size == 20)
        #expect(MemoryLayout<l1_conn_key>.offset(of: \.port) == 16)
        #expect(MemoryLayout<l1_conn_key>.offset(of: \.proto) == 18)
        #expect(MemoryLayout<l1_conn>.size == 392)
        #expect(MemoryLayout<l1_conn>.offset(of: \.flags) == 4)
        #expect(MemoryLayout<l1_conn>.offset(of: \.pending_set) == 24)
        #expect(MemoryLayout<l1_conn>.offset(of: \.last_ns) == 56)
        #expect(MemoryLayout<l1_conn>.offset(of: \.partial) == 392 - Int(L1_PARTIAL_MAX))
    }

    @Test func configStateStats() {
        #expect(MemoryLayout<l1_config>.size == 56)
        #expect(MemoryLayout<l1_config>.offset(of: \.port) == 0)
        #expect(MemoryLayout<l1_config>.offset(of: \.flags) == 4)
        #expect(MemoryLayout<l1_config>.offset(of: \.set_mask) == 8)
        #expect(MemoryLayout<l1_config>.offset(of: \.unknown_ttl_ns) == 16)
        #expect(MemoryLayout<l1_config>.offset(of: \.hold_ns) == 24)
        #expect(MemoryLayout<l1_config>.offset(of: \.noreply_hold_ns) == 32)
        #expect(MemoryLayout<l1_config>.offset(of: \.realtime_offset_ns) == 48)
        #expect(MemoryLayout<l1_state>.size == 16)
        #expect(MemoryLayout<l1_state>.offset(of: \.blocked_until_ns) == 8)
        #expect(MemoryLayout<l1_stats>.size == 8 * Int(L1_STAT_COUNT))
    }
}
