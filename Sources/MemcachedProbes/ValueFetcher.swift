import Foundation
import MemcacheClient

/// Completes events whose value did not fit (chunked or over
/// `MC_EVENT_VALUE_INLINE_MAX`) by asking memcached itself: `mg <key> v f t c`.
public final class MemcachedValueFetcher {
    public enum Outcome: Equatable, Sendable {
        /// The value the event describes (same CAS, or no CAS to compare).
        case fetched(MemcachedEvent)
        /// memcached holds a newer item now (another CAS): a later event reports it.
        case superseded(currentCAS: UInt64)
        /// The key is gone (deleted, evicted or expired since).
        case gone
    }

    private let client: MemcacheTCPClient

    public init(host: String, port: UInt16) throws {
        client = try MemcacheTCPClient(host: host, port: port, timeout: .seconds(5))
    }

    /// Uses an open connection (its owner's thread only).
    public init(client: MemcacheTCPClient) {
        self.client = client
    }

    /// A key as the meta protocol takes it: as is, or base64 (then pass the `b` flag).
    public static func metaKey(_ key: [UInt8]) -> (key: String, base64: Bool) {
        if key.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) { return (String(decoding: key, as: UTF8.self), false) }
        return (Data(key).base64EncodedString(), true)
    }

    public func fetch(_ event: MemcachedEvent) throws -> Outcome {
        let (key, encoded) = Self.metaKey(event.key)
        var request = ["v", "f", "t", "c"]
        if encoded { request.append("b") }
        let reply = try client.request(.metaGet(key, flags: request))
        guard case .meta(let meta) = reply, meta.code == "VA", let value = meta.value else { return .gone }
        let cas = meta.flags.first { $0.hasPrefix("c") }.flatMap { UInt64($0.dropFirst()) }
        let flags = meta.flags.first { $0.hasPrefix("f") }.flatMap { UInt32($0.dropFirst()) }
        if let want = event.cas, let cas, cas != want { return .superseded(currentCAS: cas) }
        return .fetched(event.with(value: value, clientFlags: flags, cas: cas))
    }
}
