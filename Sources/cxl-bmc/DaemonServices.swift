import AsyncAlgorithms
import Dispatch
import Foundation
import L3Cluster
import L3Sync
import Loader
import Logging
import MemcachedProbes
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// How `attach` runs once everything is attached: its long-running parts are Services in one
/// ServiceGroup (swift-service-lifecycle). The group starts them in the order given and, on
/// SIGINT/SIGTERM, shuts them down one at a time in the reverse order, each waited for before the
/// next. ``services(cluster:sync:events:l1:counters:metrics:)`` fixes that order, which is the
/// detach order: the counters stop, the status file goes and L1 detaches (while L1 serves, the
/// uprobes must keep invalidating it), then the uprobes, then L3's write-through, then the cluster
/// (writes still in flight to peers are waited for, then the peer port closes).
enum Daemon {
    static let connectionIdleSeconds: Double = 10
    /// Ticks (seconds) in a row without our XDP program before concluding it was detached.
    static let missingTicksBeforeExit = 3

    /// The group's services, in start order (the reverse of the shutdown order).
    static func services(cluster: ClusterService?, sync: L3SyncService?, events: EventDrainService?, l1: L1Service,
                         counters: CountersService, metrics: MetricsServerService?) -> [ServiceGroupConfiguration.ServiceConfiguration] {
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let cluster { services.append(.init(service: cluster, serviceName: "cluster")) }
        if let sync { services.append(.init(service: sync, serviceName: "L3 write-through")) }
        if let events { services.append(.init(service: events, serviceName: "memcached events")) }
        // L1 ends by itself when someone else detached it: the rest then stops in order.
        services.append(.init(service: l1, successTerminationBehavior: .gracefullyShutdownGroup, serviceName: "L1"))
        services.append(.init(service: counters, serviceName: "counters"))
        if let metrics { services.append(.init(service: metrics, serviceName: "metrics server")) }
        return services
    }

    /// Runs the services until SIGINT/SIGTERM (or until L1 is detached from outside); rethrows a
    /// failed L1 detach once everything else has stopped, as the daemon did before.
    static func run(_ services: [ServiceGroupConfiguration.ServiceConfiguration], signals: ShutdownSignals,
                    l1: L1Service, logger: Logger) throws {
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(services: services, logger: logger))
        signals.deliver(to: group)
        let outcome = Mutex<Result<Void, any Error>>(.success(()))
        let done = DispatchSemaphore(value: 0)
        // The attach ran on the main thread; it now only waits, the services run on Swift's pool.
        Task {
            do { try await group.run() } catch { outcome.withLock { $0 = .failure(error) } }
            done.signal()
        }
        done.wait()
        try outcome.withLock { $0 }.get()
        if let failure = l1.detachFailure { throw failure }
    }
}

/// SIGINT and SIGTERM, trapped from attach's first line. ServiceGroup traps signals only once it
/// runs, and a signal during the attach must neither kill us half-way nor be lost: it is
/// remembered and handed to the group, which then starts the services and shuts them down in order
/// at once (`triggerGracefulShutdown` before `run` is kept). The group itself traps none, so each
/// signal has one handler.
final class ShutdownSignals: @unchecked Sendable {
    private static let trapped = [SIGINT, SIGTERM]
    // Set once in init; kept so the sources live as long as the daemon.
    private let sources: [DispatchSourceSignal]
    private struct State {
        var group: ServiceGroup?
        var caught: Int32?
    }
    private let state = Mutex(State())
    private let logger = Logger(label: "cxl-bmc")

    /// Returns once both signals are trapped. Until then they keep their default action (we
    /// die, with nothing attached yet); they are not set to SIG_IGN first, as that would drop a
    /// signal that arrives before libdispatch's asynchronous registration installs its handler.
    init() {
        // A closed stdout (`| head`) must not kill us before we detach.
        signal(SIGPIPE, SIG_IGN)
        let queue = DispatchQueue(label: "cxl-bmc.signals")
        sources = Self.trapped.map { DispatchSource.makeSignalSource(signal: $0, queue: queue) }
        let registered = DispatchSemaphore(value: 0)
        for (source, signalNumber) in zip(sources, Self.trapped) {
            source.setEventHandler { [self] in caught(signalNumber) }
            source.setRegistrationHandler { registered.signal() }
            source.resume()
        }
        for _ in sources { registered.wait() }
    }

    private func caught(_ signalNumber: Int32) {
        let group: ServiceGroup? = state.withLock { s in
            if s.caught == nil { s.caught = signalNumber }
            return s.group
        }
        guard let group else {
            logger.info("signal \(signalNumber): will detach as soon as the attach finishes")
            return
        }
        logger.info("signal \(signalNumber): shutting down")
        Task { await group.triggerGracefulShutdown() }
    }

    /// From now on a signal shuts `group` down; one caught during the attach does it now.
    func deliver(to group: ServiceGroup) {
        let pending = state.withLock { s in
            s.group = group
            return s.caught
        }
        if let pending {
            logger.info("signal \(pending) (during the attach): shutting down")
            Task { await group.triggerGracefulShutdown() }
        }
    }
}

/// Runs blocking `body` on a thread of its own, not on one of Swift concurrency's few (2 here),
/// and resumes when it returns.
func onThread<T: Sendable>(named name: String, _ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        let thread = Thread { continuation.resume(returning: body()) }
        thread.name = name
        thread.start()
    }
}

/// L1 on the interface: every second it refreshes the wall-clock offset L1 uses for absolute
/// expiry times and drops idle connection-tracking entries. It ends by itself, touching nothing,
/// when someone else detached L1 (`cxl-bmc detach IFACE`). On graceful shutdown it removes the
/// status file and detaches L1 (a failure is kept in ``detachFailure``, so the uprobes and L3 still
/// stop in order).
final class L1Service: Service, @unchecked Sendable {
    // `cache` is used by this service's task alone (and read by CountersService, stopped first).
    private let cache: L1Cache
    private let keepPins: Bool
    private let logger = Logger(label: "cxl-bmc")
    private let failure = Mutex<(any Error)?>(nil)
    var detachFailure: (any Error)? { failure.withLock { $0 } }

    init(cache: L1Cache, keepPins: Bool) {
        self.cache = cache
        self.keepPins = keepPins
    }

    func run() async {
        var missingTicks = 0
        for await _ in AsyncTimerSequence(interval: .seconds(1), clock: .continuous).cancelOnGracefulShutdown() {
            if detachedElsewhere(missingTicks: &missingTicks) { return }
            do {
                try cache.refreshClock()
                try cache.sweepConnections(idleFor: .seconds(Daemon.connectionIdleSeconds))
            } catch {
                logger.warning("periodic maintenance failed: \(error)")
            }
        }
        logger.info("detaching from \(cache.interface.name)\(keepPins ? ", keeping the pins" : "")")
        DaemonStatus.remove(interface: cache.interface.name)
        do {
            try cache.detach(keepPins: keepPins)
            print("detached L1 from \(cache.interface.name)\(keepPins ? " (pins kept in \(cache.pinDirectory))" : "")")
            fflush(nil)
        } catch {
            failure.withLock { $0 = error }
        }
    }

    /// Someone else detached L1 only if queries that succeed stop showing our program several
    /// ticks in a row: a failed query says nothing, and a single empty answer has been seen while
    /// the program was attached (a link dump racing interface changes).
    private func detachedElsewhere(missingTicks: inout Int) -> Bool {
        do {
            if try cache.isAttached() {
                missingTicks = 0
                return false
            }
            missingTicks += 1
            guard missingTicks >= Daemon.missingTicksBeforeExit else { return false }
            let now = (try? XDPAttachment.kernelProgramIDs(of: cache.interface)) ?? []
            logger.notice(
                "L1 (XDP program id \(cache.xdp.programID)) was detached from \(cache.interface.name) by someone else (attached now: \(now.isEmpty ? "none" : now.map(String.init).joined(separator: ", "))); exiting without touching it")
            return true
        } catch {
            logger.warning("could not query the XDP programs of \(cache.interface.name): \(error)")
            return false
        }
    }
}

/// One sample of every counter a second: published to /run/cxl-bmc/IFACE.json (with the
/// uprobes), to the Prometheus registry (with --metrics), and printed every --stats-interval
/// seconds.
final class CountersService: Service, @unchecked Sendable {
    private let cache: L1Cache
    private let probes: MemcachedProbes?
    private let sync: L3Sync?
    private let cluster: ClusterNode?
    private let metrics: MetricsExporter?
    private let statsInterval: Int
    private let logger = Logger(label: "cxl-bmc")

    init(cache: L1Cache, probes: MemcachedProbes?, sync: L3Sync?, cluster: ClusterNode?, metrics: MetricsExporter?,
         statsInterval: Int) {
        self.cache = cache
        self.probes = probes
        self.sync = sync
        self.cluster = cluster
        self.metrics = metrics
        self.statsInterval = statsInterval
    }

    func run() async {
        var seconds = 0
        for await _ in AsyncTimerSequence(interval: .seconds(1), clock: .continuous).cancelOnGracefulShutdown() {
            seconds += 1
            let l1 = try? cache.stats()
            let probeStats = probes.flatMap { try? $0.stats() }
            let l3 = sync?.snapshot
            let status = DaemonStatus(pid: getpid(), interface: cache.interface.name, probes: probeStats, sync: l3,
                                      cluster: cluster.map { ($0.store.snapshot, $0.store.downNodes) })
            if statsInterval > 0 && seconds % statsInterval == 0 { printStats(after: seconds, l1: l1, status: status) }
            metrics?.update(l1: l1, probes: probeStats, l3: l3, cluster: cluster?.store.snapshot)
            if probes != nil {
                do { try status.write() } catch { logger.warning("could not publish the daemon's status: \(error)") }
            }
        }
    }

    /// The `--stats-interval` block: what each tier did since start (events and L3 as
    /// `cxl-bmc stats` prints them from the status file).
    private func printStats(after seconds: Int, l1: L1Stats?, status: DaemonStatus) {
        var lines = ["--- cxl-bmc \(cache.interface.name) after \(seconds) s"]
        if let l1 {
            let gets = l1["get_seen"] ?? 0, hits = l1["hit"] ?? 0
            let ratio = gets > 0 ? String(format: "%.3f", Double(hits) / Double(gets)) : "-"
            lines.append("  L1: \(gets) UDP GETs, \(hits) hits (ratio \(ratio)), \(l1["fill"] ?? 0) fills, \(l1["fill_refused"] ?? 0) refused")
        }
        lines += status.lines
        print(lines.joined(separator: "\n"))
        fflush(nil)
    }
}

/// `--metrics`: the HTTP responder, bound during the attach (so a busy port fails before L1 is
/// touched), serving from the group's start until it is shut down (first of all).
final class MetricsServerService: Service, Sendable {
    let exporter: MetricsExporter

    init(_ exporter: MetricsExporter) { self.exporter = exporter }

    func run() async {
        let exporter = exporter
        await withTaskCancellationOrGracefulShutdownHandler {
            await onThread(named: "cxl-bmc.metrics") { exporter.serve() }
        } onCancelOrGracefulShutdown: {
            exporter.stopServing()
        }
        exporter.closeListener()
    }
}

/// memcached's events, drained on a thread of their own (printed with --trace) so the ring
/// buffer does not fill, each fed to L3's write-through; losses are logged as they happen. On
/// graceful shutdown memcached's write counters are taken (for the next daemon on the pool), the
/// uprobes detach, and the thread applies what is left in the ring before it stops, so L3 has
/// seen every write memcached made while it was watched.
final class EventDrainService: Service, @unchecked Sendable {
    // The reader and the probes' stats map are used by the drain thread alone until it stops;
    // the probes detach after it has.
    private let probes: MemcachedProbes
    private let reader: MemcachedEventReader
    private let sync: L3Sync?
    private let trace: Bool
    private let recorder: WriteGapRecorder?
    private let logger = Logger(label: "cxl-bmc")

    init(probes: MemcachedProbes, reader: MemcachedEventReader, sync: L3Sync?, trace: Bool, recorder: WriteGapRecorder?) {
        self.probes = probes
        self.reader = reader
        self.sync = sync
        self.trace = trace
        self.recorder = recorder
    }

    func run() async {
        let stop = StopFlag()
        await withTaskCancellationOrGracefulShutdownHandler {
            await onThread(named: "cxl-bmc.events") { [self] in drain(until: stop) }
        } onCancelOrGracefulShutdown: { [self] in
            recorder?.takeWhileProbesWatch()
            probes.detach()
            stop.set()
        }
        probes.detach()
        print("detached the uprobes from \(probes.targets.binary)")
        fflush(nil)
    }

    private func drain(until stop: StopFlag) {
        var lostSeen: UInt64 = 0
        var nextLossCheck = ContinuousClock.now
        while !stop.isSet {
            _ = try? reader.poll(timeoutMs: 20) { event in
                if trace { print(event.summary) }
                sync?.apply(event)
            }
            if trace { fflush(nil) }
            guard ContinuousClock.now >= nextLossCheck else { continue }
            nextLossCheck = .now + .seconds(1)
            if let lost = try? probes.stats().lost, lost > lostSeen {
                sync?.checkLostEvents()
                logger.warning("\(lost - lostSeen) memcached events lost (ring buffer full); \(lost) in all")
                lostSeen = lost
            }
        }
        // The probes are detached: apply what is still in the ring.
        while let n = try? reader.poll(timeoutMs: 0, { event in sync?.apply(event) }), n > 0 {}
    }
}

/// What memcached had written when the probes stopped (``MemcachedWriteRecord``): taken while they
/// still watch (a write after it changes the counters, and the next daemon on this pool resyncs
/// L3), saved once L3 has applied every event and the fetches they queued. After an L3 failure
/// nothing is saved, so the next daemon does not trust L3.
final class WriteGapRecorder: Sendable {
    let path: String
    let host: String
    let port: UInt16
    private let taken = Mutex<MemcachedWriteRecord?>(nil)
    private let logger = Logger(label: "cxl-bmc")

    init(path: String, host: String, port: UInt16) {
        self.path = path
        self.host = host
        self.port = port
    }

    func takeWhileProbesWatch() {
        let record = try? MemcachedWriteRecord.read(host: host, port: port)
        taken.withLock { $0 = record }
    }

    func save(after sync: L3Sync) {
        guard let record = taken.withLock({ $0 }), sync.drain(timeout: .seconds(5)), sync.snapshot.failures == 0 else { return }
        do {
            try record.save(to: path)
        } catch {
            logger.warning("could not record memcached's write counters (the next attach will resync L3): \(error)")
        }
    }
}

/// L3's write-through and promotions (L3Sync runs its own worker thread); stopped after the
/// uprobes, its counters printed.
final class L3SyncService: Service, Sendable {
    let sync: L3Sync
    let recorder: WriteGapRecorder?

    init(_ sync: L3Sync, recorder: WriteGapRecorder?) {
        self.sync = sync
        self.recorder = recorder
    }

    func run() async {
        try? await gracefulShutdown()
        let sync = sync, recorder = recorder
        await onThread(named: "cxl-bmc.l3-stop") { recorder?.save(after: sync) }
        sync.stop()
        let c = sync.snapshot
        print("L3: \(c.stores) stores, \(c.deletes) deletes, \(c.misses) misses, \(c.l3Hits) answered by L3, \(c.promoted) promoted (\(c.promotionsUndone) undone, \(c.promotionsDeferred) deferred), \(c.dropped) dropped, \(c.failures) failures")
        fflush(nil)
    }
}

/// This host in the cluster (--config): its peer server and heartbeats run from
/// `ClusterNode.start` (during the attach); the last to stop.
final class ClusterService: Service, Sendable {
    let node: ClusterNode
    let configPath: String
    let reloads: ReloadSignal

    init(_ node: ClusterNode, configPath: String, reloads: ReloadSignal) {
        self.node = node
        self.configPath = configPath
        self.reloads = reloads
    }

    func run() async {
        let node = node, path = configPath
        let logger = Logger(label: "cxl-bmc")
        // SIGHUP (`cxl-bmc cluster reload IFACE`): re-read nodes.conf and apply it live.
        reloads.handle {
            logger.notice("SIGHUP: reloading \(path)")
            do {
                let report = try node.reload(path: path)
                if report.isEmpty { logger.notice("nodes.conf reload: nothing changed") }
            } catch {
                logger.error("nodes.conf reload refused: \(error); still running with the previous config (\(node.config.nodes.count) nodes)")
            }
        }
        try? await gracefulShutdown()
        reloads.handle(nil)
        // Writes still in flight to peers are waited for, then the peer port closes.
        await onThread(named: "cxl-bmc.cluster-shutdown") { node.shutdown() }
        let c = node.store.snapshot
        print("cluster: \(c.localHits) local, \(c.directHits) direct, \(c.remoteHits) remote hits; \(c.peerWrites) writes to peers, \(c.failoverWrites) failed over, \(c.peerErrors) peer errors; peer port closed")
        fflush(nil)
    }
}

/// SIGHUP, trapped from attach's first line (its default action would kill the daemon). With a
/// cluster config it reloads nodes.conf (``ClusterService``); one caught during the attach is
/// applied once the cluster runs. Without `--config` it is logged and ignored. Handlers run one
/// at a time on one queue.
final class ReloadSignal: @unchecked Sendable {
    private let source: DispatchSourceSignal
    private let queue = DispatchQueue(label: "cxl-bmc.reload")
    private let state = Mutex<(handler: (@Sendable () -> Void)?, pending: Bool)>((nil, false))
    private let expectsCluster: Bool
    private let logger = Logger(label: "cxl-bmc")

    init(expectsCluster: Bool) {
        self.expectsCluster = expectsCluster
        source = DispatchSource.makeSignalSource(signal: SIGHUP, queue: queue)
        let registered = DispatchSemaphore(value: 0)
        source.setRegistrationHandler { registered.signal() }
        source.setEventHandler { [self] in caught() }
        source.resume()
        registered.wait()
    }

    private func caught() {
        let handler = state.withLock { s -> (@Sendable () -> Void)? in
            if s.handler == nil { s.pending = true }
            return s.handler
        }
        if let handler { return handler() }
        logger.notice(expectsCluster ? "SIGHUP: will reload nodes.conf once the cluster runs"
                                     : "SIGHUP ignored: this daemon runs without --config, there is no nodes.conf to reload")
    }

    /// Runs `handler` at each SIGHUP from now on (and now, on the signal queue, for one caught
    /// before); nil stops that.
    func handle(_ handler: (@Sendable () -> Void)?) {
        let pending = state.withLock { s -> Bool in
            s.handler = handler
            defer { s.pending = false }
            return s.pending && handler != nil && expectsCluster
        }
        if pending, let handler { queue.async(execute: handler) }
    }
}

/// A one-way stop flag shared with a thread.
final class StopFlag: Sendable {
    private let value = Atomic<Bool>(false)
    var isSet: Bool { value.load(ordering: .acquiring) }
    func set() { value.store(true, ordering: .releasing) }
}
