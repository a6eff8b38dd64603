import CXLBMCABI

/// The L1 counters (`mcache_stats`, per-CPU), summed over CPUs.
public struct L1Stats: Sendable {
    /// One named counter of the ABI header's `L1_STAT_*` list.
    public struct Counter: Sendable {
        /// Its index in `struct l1_stats.counter` (`L1_STAT_*`).
        public let index: Int
        /// A stable machine name, e.g. "get_seen" (JSON keys).
        public let key: String
        /// What it counts, for people.
        public let label: String
        public let value: UInt64
    }

    public let counters: [Counter]

    /// The value of the counter called `key`, if there is one.
    public subscript(key: String) -> UInt64? {
        counters.first { $0.key == key }?.value
    }

    /// Every `L1_STAT_*` index of cxl_bmc_abi.h, with its name. A test checks
    /// this list against the header.
    public static let names: [(index: Int32, key: String, label: String)] = [
        (L1_STAT_GET_SEEN, "get_seen", "UDP GETs seen"),
        (L1_STAT_HIT, "hit", "L1 hits (answered with XDP_TX)"),
        (L1_STAT_MISS, "miss", "misses (passed to memcached)"),
        (L1_STAT_FILL, "fill", "fills"),
        (L1_STAT_FILL_REFUSED, "fill_refused", "fills refused as unsafe (write since GET)"),
        (L1_STAT_FILL_NO_TICKET, "fill_no_ticket", "replies with no ticket"),
        (L1_STAT_FILL_NO_TTL, "fill_no_ttl", "not cached: TTL unknown"),
        (L1_STAT_FILL_SKIPPED, "fill_skipped", "replies not cacheable"),
        (L1_STAT_INVALIDATE, "invalidate", "invalidations (writes seen)"),
        (L1_STAT_FLUSH, "flush", "flush_all seen"),
        (L1_STAT_RELEASE, "release", "in-flight writes released"),
        (L1_STAT_PASS_NOT_MC, "pass_not_memcached", "passed: not memcached"),
        (L1_STAT_PASS_MALFORMED, "pass_malformed", "passed: malformed or truncated"),
        (L1_STAT_PASS_TOO_BIG, "pass_too_big", "passed: answer too big for a datagram"),
        (L1_STAT_PASS_NOT_GET, "pass_not_get", "passed: not a GET"),
        (L1_STAT_PASS_TOO_MANY_KEYS, "pass_too_many_keys", "passed: too many keys"),
        (L1_STAT_DESYNC, "desync", "TCP stream position lost"),
        (L1_STAT_HIT_RACE, "hit_race", "hits lost to a concurrent write"),
        (L1_STAT_TCP_SEGMENTS, "tcp_segments", "TCP segments parsed for writes"),
        (L1_STAT_RETRANSMIT, "retransmit", "TCP retransmissions (fills blocked briefly)"),
        (L1_STAT_GLOBAL_BLOCK, "global_block", "unattributable writes (all fills blocked briefly)"),
        (L1_STAT_FILL_BUSY, "fill_busy", "fills skipped: no way free in the set"),
        (L1_STAT_PASS_NO_LEASE, "pass_no_lease", "passed: uprobes in charge but the daemon is gone (lease expired)"),
        (L1_STAT_PASS_BAD_CHECKSUM, "pass_bad_checksum", "passed: IPv4 or UDP checksum wrong (the kernel drops it)"),
    ]

    /// Sums per-CPU `struct l1_stats` values.
    public init(perCPU values: [l1_stats]) {
        var sums = [UInt64](repeating: 0, count: Int(L1_STAT_COUNT))
        for value in values {
            withUnsafeBytes(of: value.counter) { raw in
                for (i, counter) in raw.bindMemory(to: UInt64.self).enumerated() {
                    sums[i] &+= counter
                }
            }
        }
        counters = Self.names.map {
            Counter(index: Int($0.index), key: $0.key, label: $0.label, value: sums[Int($0.index)])
        }
    }

    /// Reads and sums `map` (an `mcache_stats` map).
    public init(map: BPFMap) throws {
        let values = try map.lookupPerCPU(UInt32(0), as: l1_stats.self) ?? []
        self.init(perCPU: values)
    }
}
