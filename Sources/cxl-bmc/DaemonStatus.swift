import Foundation
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

    static let directory = "/run/cxl-bmc"

    static func path(interface: String) -> String { "\(directory)/\(interface).json" }

    init(pid: Int32, interface: String, probes: MemcachedProbeStats?, sync: L3Sync.Counters?) {
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
                "dropped": c.dropped, "failures": c.failures, "resyncs": c.resyncs,
                "promotion_avg_us": c.promoted > 0 ? c.promotionNsTotal / c.promoted / 1000 : 0,
            ]
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
            out.append("  L3: \(l3["stores"] ?? 0) written through, \(l3["l3_hits"] ?? 0) misses answered, \(l3["promoted"] ?? 0) promoted (avg \(l3["promotion_avg_us"] ?? 0) µs), \(l3["promotions_raced"] ?? 0) raced, \(l3["dropped"] ?? 0) dropped, \(l3["failures"] ?? 0) failures, \(l3["resyncs"] ?? 0) resyncs")
        }
        return out
    }
}
