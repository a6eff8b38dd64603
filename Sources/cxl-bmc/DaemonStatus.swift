import Foundation
import L3Cluster
import L3Sync
import MemcachedProbes

#if canImport(Glibc)
import Glibc
#endif

/// What a running `attach` knows beyond L1's pinned counters — memcached's
/// events and L3 — published once a second as a small JSON file, so that
/// `cxl-bmc stats` in another terminal prints the same. Written atomically
/// (temporary file + rename), mode 0600, in a root-only directory; removed
/// on exit. A file whose daemon is gone is ignored.
struct DaemonStatus: Codable, Equatable {
    var pid: Int32
    var interface: String
    var updatedUnix: Int64
    var events: [String: UInt64]
    var l3: [String: UInt64]?
    /// With --config: lookups by access path, writes to peers, failovers, CXL bytes.
    var cluster: [String: UInt64]?
    var downNodes: [Int]?

    static let directory = "/run/cxl-bmc"

    static func path(interface: String) -> String { "\(directory)/\(interface).json" }

    init(pid: Int32, interface: String, probes: MemcachedProbeStats?, sync: L3Sync.Counters?,
         cluster: (counters: ClusterL3Store.Counters, down: Set<Int>)? = nil) {
        self.pid = pid
        self.interface = interface
        updatedUnix = Int64(Date().timeIntervalSince1970)
        var events: [String: UInt64] = [:]
        if let p = probes {
            events["emitted"] = p.emitted
            events["lost"] = p.lost
            events["filtered"] = p.filtered
            events["l1_bumps"] = p.l1Bumps
            for kind in MemcachedEvent.Kind.allCases { events[kind.description] = p.emitted(kind) }
        }
        self.events = events
        l3 = sync.map { c in
            [
                "stores": c.stores, "deletes": c.deletes, "touches": c.touches, "deltas": c.deltas,
                "flushes": c.flushes, "evictions_kept": c.evictionsKept, "misses": c.misses, "l3_hits": c.l3Hits,
                "promoted": c.promoted, "promotions_raced": c.promotionsRaced, "fetched": c.fetched,
                "dropped": c.dropped, "failures": c.failures, "resyncs": c.resyncs, "promotion_echoes": c.promotionEchoes,
                "promotions_merged": c.promotionsMerged, "promotions_undone": c.promotionsUndone,
                "promotions_deferred": c.promotionsDeferred, "deletes_of_absent_keys": c.deletesOfAbsentKeys,
                "promotion_avg_us": c.promoted > 0 ? c.promotionNsTotal / c.promoted / 1000 : 0,
                "promotion_p99_us": c.promotionLatencyPercentileUs(0.99) ?? 0,
                "lookups": c.lookups, "lookup_avg_ns": c.lookups > 0 ? c.lookupNsTotal / c.lookups : 0,
                "lookup_p99_ns": c.lookupLatencyPercentileNs(0.99) ?? 0,
            ]
        }
        if let (c, down) = cluster {
            self.cluster = [
                "lookups": c.lookups, "local_hits": c.localHits, "direct_hits": c.directHits,
                "remote_hits": c.remoteHits, "misses": c.misses, "local_writes": c.localWrites,
                "peer_writes": c.peerWrites, "peer_writes_stale": c.peerWritesStale,
                "failover_writes": c.failoverWrites, "writes_kept_locally": c.writesKeptLocally,
                "peer_errors": c.peerErrors, "cxl_bytes_read": c.cxlBytesRead, "cxl_bytes_written": c.cxlBytesWritten,
                "lookup_avg_ns": c.lookups > 0 ? c.lookupNsTotal / c.lookups : 0,
                "lookup_p99_ns": c.lookupLatency(percentile: 0.99),
                "handoff_moved": c.handOffMoved, "handoff_applied": c.handOffApplied,
                "handoff_already_newer": c.handOffAlreadyNewer, "handoff_failed": c.handOffFailed,
            ]
            downNodes = down.sorted()
        }
    }

    func write() throws {
        try FileManager.default.createDirectory(
            atPath: Self.directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let target = Self.path(interface: interface)
        let temporary = target + ".tmp"
        let data = try JSONEncoder().encode(self)
        guard FileManager.default.createFile(atPath: temporary, contents: data, attributes: [.posixPermissions: 0o600])
        else { throw CLIError("cannot write \(temporary)") }
        guard rename(temporary, target) == 0 else { throw CLIError("cannot rename \(temporary): \(String(cString: strerror(errno)))") }
    }

    static func remove(interface: String) {
        try? FileManager.default.removeItem(atPath: path(interface: interface))
    }

    /// The status a live daemon published for `interface`, if any.
    static func read(interface: String) -> DaemonStatus? {
        guard let data = FileManager.default.contents(atPath: path(interface: interface)),
              let status = try? JSONDecoder().decode(DaemonStatus.self, from: data),
              kill(status.pid, 0) == 0 else { return nil }
        return status
    }

    /// The same lines `attach --stats-interval` prints for events and L3.
    var lines: [String] {
        var out: [String] = []
        if !events.isEmpty {
            let kinds = MemcachedEvent.Kind.allCases.map { "\(events[$0.description] ?? 0) \($0)" }.joined(separator: ", ")
            out.append("  memcached events: \(kinds); \(events["emitted"] ?? 0) emitted, \(events["lost"] ?? 0) lost")
        }
        if let l3 {
            out.append("  L3: \(l3["stores"] ?? 0) written through, \(l3["l3_hits"] ?? 0) misses answered, \(l3["promoted"] ?? 0) promoted (avg \(l3["promotion_avg_us"] ?? 0) µs, p99 ≤ \(l3["promotion_p99_us"] ?? 0) µs), \(l3["promotions_raced"] ?? 0) raced, \(l3["promotions_undone"] ?? 0) undone, \(l3["dropped"] ?? 0) dropped, \(l3["failures"] ?? 0) failures, \(l3["resyncs"] ?? 0) resyncs; L3 lookups avg \(l3["lookup_avg_ns"] ?? 0) ns, p99 ≤ \(l3["lookup_p99_ns"] ?? 0) ns")
        }
        if let c = cluster {
            out.append("  L3 lookups: \(c["local_hits"] ?? 0) local, \(c["direct_hits"] ?? 0) direct, \(c["remote_hits"] ?? 0) remote hits, \(c["misses"] ?? 0) misses (avg \(c["lookup_avg_ns"] ?? 0) ns, p99 < \(c["lookup_p99_ns"] ?? 0) ns); CXL \(c["cxl_bytes_read"] ?? 0) B read, \(c["cxl_bytes_written"] ?? 0) B written")
            let down = (downNodes ?? []).map { "node\($0)" }.joined(separator: ", ")
            out.append("  peers: \(c["peer_writes"] ?? 0) writes acknowledged, \(c["failover_writes"] ?? 0) failed over, \(c["peer_errors"] ?? 0) errors; down: \(down.isEmpty ? "none" : down)")
            if let moved = c["handoff_moved"], moved > 0 {
                out.append("  membership hand-off: \(moved) keys now placed elsewhere, \(c["handoff_applied"] ?? 0) applied there, \(c["handoff_already_newer"] ?? 0) already newer, \(c["handoff_failed"] ?? 0) not delivered")
            }
        }
        return out
    }
}
