import Foundation
import L3Cluster
import L3Sync
import Loader
import MemcachedProbes
import Prometheus
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// `attach --metrics ADDR:PORT`: every counter of L1, of memcached's events
/// and of L3 as Prometheus counters (swift-prometheus), served as text at
/// `GET /metrics` by a small blocking HTTP responder (``serve()``, run on its
/// own thread by MetricsServerService).
final class MetricsExporter: @unchecked Sendable {
    private let registry = PrometheusCollectorRegistry()
    /// name → (counter, value already added): the sources are running totals.
    private var counters: [String: (Counter, UInt64)] = [:]
    private var gauges: [String: Gauge] = [:]
    private let lock = NSLock()
    private let listener: Int32
    let address: String

    /// Binds `host:port` (IPv4 or IPv6 literal) or throws.
    init(host: String, port: UInt16) throws {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_NUMERICHOST | AI_PASSIVE
        var info: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &info) == 0, let first = info else {
            throw CLIError("--metrics: \(host) is not an IP address")
        }
        defer { freeaddrinfo(info) }
        let fd = socket(first.pointee.ai_family, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw CLIError("--metrics: socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        guard bind(fd, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0, listen(fd, 16) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw CLIError("--metrics: cannot listen on \(host):\(port): \(reason)")
        }
        listener = fd
        address = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    private let stopped = Atomic<Bool>(false)

    /// Makes ``serve()`` return (a shut-down listening socket fails `accept`).
    func stopServing() {
        stopped.store(true, ordering: .releasing)
        shutdown(listener, Int32(SHUT_RDWR))
    }

    /// After ``serve()`` returned.
    func closeListener() { close(listener) }

    /// Brings every counter up to the sources' running totals.
    func update(l1: L1Stats?, probes: MemcachedProbeStats?, l3: L3Sync.Counters?, cluster: ClusterL3Store.Counters? = nil) {
        lock.lock()
        defer { lock.unlock() }
        for c in l1?.counters ?? [] { add("cxlbmc_l1_\(c.key)_total", c.value, help: "L1: \(c.label)") }
        if let p = probes {
            for kind in MemcachedEvent.Kind.allCases {
                add("cxlbmc_memcached_\(kind)_events_total", p.emitted(kind), help: "memcached \(kind) events")
            }
            add("cxlbmc_events_lost_total", p.lost, help: "memcached events lost (ring buffer full)")
            add("cxlbmc_events_filtered_total", p.filtered, help: "probe hits in other processes, ignored")
        }
        if let c = l3 {
            add("cxlbmc_l3_stores_total", c.stores, help: "stores written through to L3")
            add("cxlbmc_l3_deletes_total", c.deletes, help: "deletes applied to L3")
            add("cxlbmc_l3_misses_total", c.misses, help: "memcached misses looked up in L3")
            add("cxlbmc_l3_hits_total", c.l3Hits, help: "memcached misses L3 could answer")
            add("cxlbmc_l3_promoted_total", c.promoted, help: "items promoted back into memcached")
            add("cxlbmc_l3_promotions_raced_total", c.promotionsRaced, help: "promotions refused: a newer write won")
            add("cxlbmc_l3_promotion_microseconds_total", c.promotionNsTotal / 1000, help: "sum of promotion latencies, µs")
            add("cxlbmc_l3_promotions_undone_total", c.promotionsUndone, help: "promotions undone: a delete or flush reached memcached between L3's read and the add")
            add("cxlbmc_l3_promotions_deferred_total", c.promotionsDeferred, help: "promotions skipped: L3 had not applied the key's latest writes in time")
            add("cxlbmc_l3_deletes_of_absent_keys_total", c.deletesOfAbsentKeys, help: "deletes of keys memcached did not hold, applied to L3")
            add("cxlbmc_l3_promotion_lookups_total", c.lookups, help: "L3 lookups made for promotions")
            add("cxlbmc_l3_promotion_lookup_nanoseconds_total", c.lookupNsTotal, help: "sum of those lookups' latencies, ns")
            if let p99 = c.lookupLatencyPercentileNs(0.99) {
                set("cxlbmc_l3_promotion_lookup_p99_nanoseconds", Double(p99), help: "p99 L3 lookup latency for promotions (upper bound of its log2 bucket), ns")
            }
            if let p99 = c.promotionLatencyPercentileUs(0.99) {
                set("cxlbmc_l3_promotion_p99_microseconds", Double(p99), help: "p99 promotion latency (upper bound of its log2 bucket), µs")
            }
            add("cxlbmc_l3_dropped_total", c.dropped, help: "L3 jobs dropped: queue full")
            add("cxlbmc_l3_failures_total", c.failures, help: "L3 or memcached errors")
            add("cxlbmc_l3_resyncs_total", c.resyncs, help: "times L3 was emptied after lost events")
        }
        if let c = cluster {
            add("cxlbmc_l3_lookups_total", c.lookups, help: "L3 lookups over the cluster")
            add("cxlbmc_l3_local_hits_total", c.localHits, help: "L3 lookups answered from this host's partition")
            add("cxlbmc_l3_direct_hits_total", c.directHits, help: "L3 lookups answered by a direct read of a peer's partition")
            add("cxlbmc_l3_remote_hits_total", c.remoteHits, help: "L3 lookups answered by a peer over the network")
            add("cxlbmc_l3_lookup_nanoseconds_total", c.lookupNsTotal, help: "sum of L3 lookup latencies, ns")
            set("cxlbmc_l3_lookup_p99_nanoseconds", Double(c.lookupLatency(percentile: 0.99)), help: "p99 L3 lookup latency, ns")
            add("cxlbmc_l3_peer_writes_total", c.peerWrites, help: "writes acknowledged by a peer")
            add("cxlbmc_l3_failover_writes_total", c.failoverWrites, help: "writes sent to another node because the key's node was down")
            add("cxlbmc_l3_peer_errors_total", c.peerErrors, help: "failed requests to peers")
            add("cxlbmc_l3_handoff_moved_total", c.handOffMoved, help: "keys this host's partition held that the ring now places on other nodes (membership change)")
            add("cxlbmc_l3_handoff_applied_total", c.handOffApplied, help: "handed-off keys the receiving node applied")
            add("cxlbmc_l3_handoff_failed_total", c.handOffFailed, help: "handed-off keys that could not be delivered")
            add("cxlbmc_cxl_bytes_read_total", c.cxlBytesRead, help: "bytes read from CXL memory by lookups")
            add("cxlbmc_cxl_bytes_written_total", c.cxlBytesWritten, help: "bytes written to this host's CXL partition")
        }
    }

    private func set(_ name: String, _ value: Double, help: String) {
        let gauge = gauges[name] ?? registry.makeGauge(name: name, help: help)
        gauges[name] = gauge
        gauge.set(value)
    }

    private func add(_ name: String, _ total: UInt64, help: String) {
        let (counter, seen) = counters[name] ?? (registry.makeCounter(name: name, help: help), 0)
        if total > seen { counter.increment(by: Int64(total - seen)) }
        counters[name] = (counter, max(seen, total))
    }

    /// Answers requests one at a time until ``stopServing()``.
    func serve() {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if stopped.load(ordering: .acquiring) { return }
                // EINTR, an aborted connection, or out of descriptors for a moment: keep serving.
                if errno != EINTR { usleep(10_000) }
                continue
            }
            var timeout = timeval(tv_sec: 2, tv_usec: 0)
            setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var request = [UInt8](repeating: 0, count: 2048)
            let n = read(client, &request, request.count)
            let line = n > 0 ? String(decoding: request[0..<n].prefix { $0 != 13 && $0 != 10 }, as: UTF8.self) : ""
            let response: [UInt8]
            if line.hasPrefix("GET /metrics ") || line == "GET /metrics" {
                lock.lock()
                let body = registry.emitToBuffer()
                lock.unlock()
                response = Array("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n".utf8) + body
            } else {
                let body = Array("cxl-bmc serves GET /metrics only\n".utf8)
                response = Array("HTTP/1.1 404 Not Found\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n".utf8) + body
            }
            _ = response.withUnsafeBytes { write(client, $0.baseAddress, $0.count) }
            close(client)
        }
    }
}
