import Foundation
import MemcacheClient

/// What memcached had written when the daemon stopped watching it: its
/// process and its write counters (`stats`). When a daemon attaches to a pool
/// that outlived it, the writes memcached took while nobody watched are
/// unknown — one could be a delete of a key L3 still holds. Comparing
/// memcached's counters now with the ones recorded when the last daemon
/// stopped tells whether there was any: if there might have been, L3 cannot be
/// trusted over memcached and is resynced (emptied, as after lost events).
public struct MemcachedWriteRecord: Codable, Equatable, Sendable {
    public var pid: Int
    /// memcached's start (unix seconds: `time - uptime`, ±1 s).
    public var startedUnix: Int64
    /// The counters of every kind of write (sets, deletes — hits and misses —, incr/decr, touch, cas, flush).
    public var writes: [String: UInt64]

    /// memcached's `stats` names for every write it applies or refuses.
    public static let writeCounters = [
        "cmd_set", "cmd_touch", "cmd_flush", "delete_hits", "delete_misses", "incr_hits", "incr_misses",
        "decr_hits", "decr_misses", "cas_hits", "cas_misses", "cas_badval", "touch_hits", "touch_misses",
    ]

    /// Reads memcached's counters; nil when it is not running there (nothing to miss).
    public static func read(host: String, port: UInt16) throws -> MemcachedWriteRecord? {
        let client: MemcacheTCPClient
        do {
            client = try MemcacheTCPClient(host: host, port: port, timeout: .seconds(2))
        } catch {
            return nil // not listening: no memcached took writes
        }
        let stats = try client.stats()
        guard let pid = stats["pid"].flatMap(Int.init), let time = stats["time"].flatMap(Int64.init),
              let uptime = stats["uptime"].flatMap(Int64.init) else {
            throw MemcacheError.malformedReply("stats without pid, time and uptime")
        }
        var writes: [String: UInt64] = [:]
        for name in writeCounters { writes[name] = stats[name].flatMap(UInt64.init) ?? 0 }
        return MemcachedWriteRecord(pid: pid, startedUnix: time - uptime, writes: writes)
    }

    /// memcached has taken no write since it started.
    public var neverWritten: Bool { writes.values.allSatisfy { $0 == 0 } }

    /// The same memcached process, with no write since `earlier`.
    public func unchanged(since earlier: MemcachedWriteRecord) -> Bool {
        pid == earlier.pid && abs(startedUnix - earlier.startedUnix) <= 1 && writes == earlier.writes
    }

    /// Where the record for one pool partition lives (root-only, like the daemon's status files).
    public static func path(pool: String, partition: Int, directory: String = "/run/cxl-bmc") -> String {
        let name = pool.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "." ? $0 : "_" }
        return "\(directory)/l3-writes/\(String(name))-p\(partition).json"
    }

    public func save(to path: String) throws {
        let data = try JSONEncoder().encode(self)
        let directory = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(
            atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        try data.write(to: URL(fileURLWithPath: path), options: .atomic)
        chmod(path, 0o600)
    }

    /// The record at `path`, nil if there is none or it does not decode (then nothing is trusted).
    public static func load(from path: String) -> MemcachedWriteRecord? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return try? JSONDecoder().decode(MemcachedWriteRecord.self, from: data)
    }
}

extension L3Sync {
    /// Why L3 was or was not resynced at attach.
    public enum GapOutcome: Equatable, Sendable, CustomStringConvertible {
        /// memcached is not running: it will only take writes the probes see.
        case memcachedNotRunning
        /// memcached has taken no write since it started.
        case memcachedNeverWritten
        /// The same memcached, with no write since the last daemon stopped.
        case noWritesSinceLastDaemon
        /// memcached took writes nobody watched (or no record says otherwise): L3 was emptied.
        case resynced(reason: String)

        public var description: String {
            switch self {
            case .memcachedNotRunning: "memcached not running yet: L3 kept"
            case .memcachedNeverWritten: "memcached has taken no write yet: L3 kept"
            case .noWritesSinceLastDaemon: "no write reached memcached since the last daemon stopped: L3 kept"
            case .resynced(let reason): "L3 emptied (\(reason)): it could hold values memcached has since deleted or replaced"
            }
        }
    }

    /// Called once the probes are attached (every later write is seen): decides whether the L3
    /// this daemon found (a pool that outlived the previous daemon) can be trusted. `previous` is
    /// what the last daemon recorded when it stopped watching.
    public func reconcile(previous: MemcachedWriteRecord?, host: String, port: UInt16) throws -> GapOutcome {
        guard let now = try MemcachedWriteRecord.read(host: host, port: port) else { return .memcachedNotRunning }
        if now.neverWritten { return .memcachedNeverWritten }
        if let previous, now.unchanged(since: previous) { return .noWritesSinceLastDaemon }
        let reason: String
        if let previous {
            reason = previous.pid == now.pid ? "memcached took writes while no daemon watched it"
                                             : "memcached restarted and took writes while no daemon watched it"
        } else {
            reason = "memcached has taken writes and no record says which the previous daemon saw"
        }
        try store.flush(versionsBefore: L3VersionClock.wallClockMicros(), effectiveUnix: 0)
        count { $0.resyncs += 1 }
        return .resynced(reason: reason)
    }
}
