import ArgumentParser
import Dispatch
import Foundation
import Loader
import Logging
import CXLTier
import L3Cluster
import L3Sync
import MemcachedProbes
import Peering
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

struct Attach: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Attach L1 to an interface and run in the foreground until SIGINT/SIGTERM.",
        discussion: """
            Loads the ingress (XDP) and egress (TC) programs, pins their shared maps and \
            the egress program under PIN-ROOT/IFACE/, attaches the ingress program, and \
            prints the two tc commands that attach the egress program (unless \
            --tc-attach does it). It then stays in the foreground: every second it \
            refreshes the wall-clock offset L1 uses for absolute expiry times and drops \
            connection-tracking entries idle for over \(Int(Daemon.connectionIdleSeconds)) s.

            On SIGINT or SIGTERM it detaches the ingress program and the filter it \
            attached itself, and, unless --keep-pins, every egress filter running \
            cxl-bmc's program on IFACE (hand-added ones too) and the pins.

            A restart reuses the pinned maps and re-pins tc_egress; it empties L1 (writes \
            made while no program watched may have made any entry stale) and starts \
            stream tracking afresh. A filter added with `tc filter ... object-pinned` holds \
            the program that was pinned when it was added: it keeps running that program, \
            which uses the same pinned maps, so it keeps filling the shared cache (as long \
            as the pins are kept); run the tc filter command again, or use --tc-attach, to \
            switch it to the newly loaded program. Maps pinned with another --l1-entries \
            are refused: run `cxl-bmc detach IFACE` first.

            If `cxl-bmc detach IFACE` is run meanwhile, this process notices and exits.

            With --memcached PATH (every process of that binary in this network namespace, \
            now and later) or --pid PID, it also puts uprobes on memcached (see `cxl-bmc \
            events --help`): they bump L1's generations when memcached applies each write, so \
            ingress stops parsing writes (--wire-writes keeps it too). With --no-cxl, \
            memcached's events also keep L3 in this process's memory: every write goes \
            through, and a GET miss L3 can answer is promoted back into memcached \
            (--memcached-addr) with add semantics, never over a newer write. Its counters are \
            published every second to /run/cxl-bmc/IFACE.json (read by `cxl-bmc stats`), \
            printed with --stats-interval, and served with --metrics. On exit L1 is detached \
            first, then the uprobes.

            With --pool POOL --config nodes.conf this host joins a cluster: it writes its own \
            partition of the pool (its node's slice; make the pool with `cxl-bmc pool create \
            POOL --size SIZE --config nodes.conf`), serves it to peers on its node's ADDR:PORT \
            (authenticated with the config's psk_file), and writes each key through to its home \
            node(s) on the consistent-hash ring: in process, or sent to the peer. A lookup reads \
            the key's partitions directly when they are in this host's CXL domain, over the \
            network otherwise, and takes the newest version. A peer that stops answering is \
            marked down and its keys' writes go to the next node until it answers again. On \
            exit, writes still in flight to peers are waited for, then the peer port closes. \
            See docs/Peering.md.
            """
    )

    @Argument(help: "The interface memcached's clients reach it through, e.g. eth0.")
    var interface: String

    @Option(help: "memcached's UDP port.")
    var port: UInt16 = 11211

    @Flag(help: "Attach the egress program to IFACE's clsact egress hook (creating the qdisc if needed).")
    var tcAttach = false

    @Option(name: [.customShort("s"), .customLong("l1-entries"), .customLong("cache-size")],
            help: "Items L1 holds, rounded up to a power-of-two number of 8-way sets.")
    var l1Entries = 32768

    @Option(
        name: .customLong("unknown-ttl"),
        help: ArgumentHelp(
            "Cache keys whose TTL L1 did not see written for at most this long (0: do not cache them).",
            valueName: "SEC"))
    var unknownTTL: Double = 0

    @Option(help: "XDP mode: native, skb (generic), or auto (native, falling back to skb).")
    var xdpMode: XDPModeArgument = .auto

    @Flag(help: "On exit, keep the pins (and hand-added egress filters): a restart reuses the maps, and a hand-added filter keeps filling them.")
    var keepPins = false

    @OptionGroup var memcached: MemcachedTargetOptions

    @Flag(help: "With --memcached/--pid: print memcached's events as they happen (as `cxl-bmc events` does).")
    var trace = false

    @Flag(help: "With --memcached/--pid: keep parsing writes at ingress too (by default the uprobes alone invalidate L1, exactly, and TCP traffic skips the parser).")
    var wireWrites = false

    @Flag(name: .customLong("no-cxl"), help: "With --memcached/--pid: keep L3 in this process's memory instead of a CXL pool (lost when cxl-bmc exits).")
    var noCXL = false

    @Option(name: .customLong("pool"), help: ArgumentHelp("With --memcached/--pid: keep L3 in this CXL pool (a file made by `cxl-bmc pool create`, e.g. in /dev/shm; or /dev/daxX.Y).", valueName: "PATH"))
    var pool: String?

    @Option(name: .customLong("partition"), help: "Without --config: the pool partition this host owns and writes (see `cxl-bmc pool inspect`; default 0).")
    var partition: Int?

    @Option(
        name: [.customShort("c"), .customLong("config")],
        help: ArgumentHelp("With --pool: join the cluster this nodes.conf describes (see docs/Peering.md). This host writes the partition of the config's local_node_id, serves it to peers on that node's ADDR:PORT, reads peers' partitions in its CXL domain directly and the others over the network.", valueName: "PATH"))
    var config: String?

    @Option(name: [.customShort("r"), .customLong("replicate")], help: "With --config: how many nodes hold each key (default: the config's replicas=, else 1).")
    var replicate: Int?

    @Option(
        name: .customLong("memcached-addr"),
        help: ArgumentHelp("memcached's TCP address, where L3 promotes items and fetches large values (default: 127.0.0.1 and --port).", valueName: "HOST:PORT"))
    var memcachedAddress: String?

    @Option(name: .customLong("stats-interval"), help: ArgumentHelp("Print a block of counters (L1, memcached's events, L3) every SEC seconds (0: never).", valueName: "SEC"))
    var statsInterval: Int = 0

    @Option(name: .customLong("metrics"), help: ArgumentHelp("Serve every counter in Prometheus text format at http://ADDR:PORT/metrics.", valueName: "ADDR:PORT"))
    var metricsAddress: String?

    @OptionGroup var pins: PinOptions

    var l3Wanted: Bool { noCXL || pool != nil }

    func validate() throws {
        if l3Wanted && !memcached.given {
            throw ValidationError("L3 (--no-cxl, --pool) works from memcached's events: add --memcached PATH or --pid PID")
        }
        if noCXL && pool != nil { throw ValidationError("--no-cxl and --pool exclude each other") }
        if let partition, partition < 0 { throw ValidationError("--partition must be 0 or more") }
        if config != nil && pool == nil { throw ValidationError("--config needs --pool: the cluster's partitions live in a CXL pool") }
        if config != nil && partition != nil {
            throw ValidationError("--partition and --config exclude each other: with a config, this host writes its node's partition")
        }
        if replicate != nil && config == nil { throw ValidationError("--replicate needs --config") }
        if let replicate, replicate < 1 { throw ValidationError("--replicate must be 1 or more") }
        if let metricsAddress, Events.hostPort(metricsAddress) == nil {
            throw ValidationError("--metrics wants ADDR:PORT, got \(metricsAddress)")
        }
        if let memcachedAddress, Events.hostPort(memcachedAddress) == nil {
            throw ValidationError("--memcached-addr wants HOST:PORT, got \(memcachedAddress)")
        }
        if (trace || wireWrites) && !memcached.given {
            throw ValidationError("\(trace ? "--trace" : "--wire-writes") needs --memcached PATH or --pid PID")
        }
        let maxEntries = Int(L1Geometry.maxSets) * 8
        guard l1Entries > 0, l1Entries <= maxEntries else {
            throw ValidationError("--l1-entries must be between 1 and \(maxEntries)")
        }
        guard port > 0 else { throw ValidationError("--port must be between 1 and 65535") }
        guard statsInterval >= 0 else { throw ValidationError("--stats-interval must be 0 (off) or a number of seconds") }
        guard unknownTTL >= 0, unknownTTL <= 315_360_000 else {
            throw ValidationError("--unknown-ttl must be between 0 and 315360000 seconds (10 years)")
        }
    }

    func run() throws {
        try CLI.run {
            // Take SIGINT/SIGTERM over before attaching, so a signal during the
            // attach detaches cleanly instead of killing us half-way.
            let daemon = Daemon(keepPins: keepPins, statsInterval: statsInterval)
            if let metricsAddress, let (host, metricsPort) = Events.hostPort(metricsAddress) {
                daemon.metrics = try MetricsExporter(host: host, port: metricsPort)
                print("metrics: http://\(daemon.metrics!.address)/metrics")
            }
            // What can fail without touching the interface is done first: the config and the pool.
            let cluster = try config.map { path in try ClusterConfig.load(path: path) }
            if let replicate, let cluster, replicate > cluster.nodes.count {
                throw ValidationError("--replicate \(replicate): the cluster has \(cluster.nodes.count) nodes")
            }
            let openedPool = try pool.map { path in
                path.hasPrefix("/dev/dax") ? try Pool(region: DevDaxRegion(path: path)) : try Pool(path: path)
            }
            let geometry = L1Geometry.forEntries(l1Entries)
            let cache = try L1Cache.attach(
                interface: interface, port: port, sets: geometry.sets, pinRoot: pins.pinRoot,
                tcAttach: tcAttach, xdpMode: xdpMode.request,
                unknownTTL: .nanoseconds(Int64(unknownTTL * 1e9)))
            report(cache)
            if memcached.given {
                // The probes bump L1's write generations at the moment memcached applies a write.
                let probes: MemcachedProbes
                do {
                    probes = try memcached.attach(l1PinDirectory: cache.pinDirectory)
                } catch {
                    try? cache.detach(keepPins: keepPins)
                    throw error
                }
                if !wireWrites { try cache.setWritesTrackedByProbes(true) }
                print("uprobes: \(probes.probeCount) on \(probes.targets.binary) (\(probes.scope)); L1 invalidated when memcached applies each write\(wireWrites ? ", and by ingress parsing" : "")")
                fflush(nil)
                var sync: L3Sync?
                do {
                    if l3Wanted {
                        let (host, tcpPort) = memcachedAddress.flatMap(Events.hostPort) ?? ("127.0.0.1", port)
                        nonisolated(unsafe) let counterSource = probes
                        let store: any L3Store
                        let place: String
                        if let pool, let opened = openedPool {
                            if let cluster {
                                let node = try ClusterNode.start(config: cluster, pool: opened, replicas: replicate)
                                daemon.cluster = node
                                store = node.store
                                let paths = node.store.members.values.sorted { $0.node.id < $1.node.id }
                                    .map { "node\($0.node.id) \($0.path.rawValue)" }.joined(separator: ", ")
                                place = "pool \(pool), partition \(node.local.partition) of node\(cluster.localNodeID); cluster of \(cluster.nodes.count) nodes (\(paths)), \(node.store.replicas) cop\(node.store.replicas == 1 ? "y" : "ies") of each key; peers served on \(cluster.localNode.address)"
                            } else {
                                let partition = partition ?? 0
                                store = try CXLTierStore(pool: opened, partition: partition)
                                place = "pool \(pool), partition \(partition)"
                            }
                        } else {
                            store = InMemoryL3Store()
                            place = "in memory (--no-cxl)"
                        }
                        let sequences = try probes.writeSequences()
                        let l3 = L3Sync(store: store, memcachedHost: host, port: tcpPort,
                                        lostEvents: { try? counterSource.stats().lost },
                                        writeSequence: { sequences.current(slot: $0) })
                        sync = l3
                        print("L3: \(place); misses it can answer are promoted into memcached at \(host):\(tcpPort)")
                        if let pool {
                            // The pool outlived the last daemon: writes memcached took meanwhile are unknown.
                            let record = MemcachedWriteRecord.path(
                                pool: pool, partition: daemon.cluster?.local.partition ?? partition ?? 0)
                            let outcome = try l3.reconcile(previous: MemcachedWriteRecord.load(from: record), host: host, port: tcpPort)
                            unlink(record) // a daemon that dies without writing a new one leaves nothing to trust
                            daemon.writeRecord = (record, host, tcpPort)
                            print("L3: \(outcome)")
                        }
                        fflush(nil)
                    }
                } catch {
                    // Leave nothing attached behind a failed start.
                    daemon.cluster?.shutdown()
                    probes.detach()
                    try? cache.detach(keepPins: keepPins)
                    throw error
                }
                try daemon.attachProbes(probes, trace: trace, sync: sync)
            }
            try daemon.run(cache)
        }
    }

    private func report(_ cache: L1Cache) {
        let how = cache.xdp.usesDispatcher ? " behind libxdp's dispatcher" : ""
        print("attached L1 to \(cache.interface): XDP program \(L1Names.xdpProgram) (id \(cache.xdp.programID)) in \(cache.xdp.mode) mode\(how)")
        let reused = cache.reusedPins ? " (reused from an earlier run)" : ""
        print("L1: \(cache.geometry), memcached UDP port \(port), pins in \(cache.pinDirectory)\(reused)")
        print("egress program \(L1Names.tcProgram) pinned at \(cache.tcPinPath)")
        if let tc = cache.tc {
            let created = tc.createdQdisc ? ", clsact qdisc created" : ""
            print("attached it to \(interface) egress (handle \(tc.handle), priority \(tc.priority)\(created))")
        } else {
            for filter in cache.earlierTCFilters {
                print("""
                    an egress filter added earlier runs cxl-bmc's previous program (id \(filter.programID)) on the same \
                    pinned maps; to switch it to this one: tc filter replace dev \(interface) egress pref \(filter.priority) \
                    handle 0x\(String(filter.handle, radix: 16)) bpf da object-pinned \(cache.tcPinPath)
                    """)
            }
            print("attach it with:")
            print("tc qdisc add dev \(interface) clsact")
            print("tc filter add dev \(interface) egress bpf da object-pinned \(cache.tcPinPath)")
        }
        fflush(nil)
    }
}

/// The foreground loop of `attach`. Signals and the timer are handled on one
/// serial queue; the main thread only waits. `cache` and the flags are
/// touched on that queue alone, hence `@unchecked Sendable`.
final class Daemon: @unchecked Sendable {
    static let connectionIdleSeconds: Double = 10
    /// Ticks (seconds) in a row without our XDP program before concluding it was detached.
    static let missingTicksBeforeExit = 3

    private let keepPins: Bool
    private let queue = DispatchQueue(label: "cxl-bmc.daemon")
    private let finished = DispatchSemaphore(value: 0)
    private var signalSources: [DispatchSourceSignal] = []
    private var cache: L1Cache?
    private var pendingSignal: Int32?
    private var result: Error?
    private var stopped = false
    private var missingTicks = 0
    private let logger = Logger(label: "cxl-bmc")
    private var probes: MemcachedProbes?
    private var sync: L3Sync?
    private var eventDrain: Thread?
    private let drainStop = StopFlag()
    /// Signalled by the event thread once it has applied everything left in the ring.
    private let drained = DispatchSemaphore(value: 0)
    /// Where to record memcached's write counters when the probes stop (pool-backed L3), and
    /// memcached's address: the next daemon on this pool trusts L3 only if they are unchanged.
    var writeRecord: (path: String, host: String, port: UInt16)?

    /// Starts handling SIGINT and SIGTERM (until ``run(_:)`` they are only noted).
    private let statsInterval: Int
    private var ticks = 0
    /// Set before ``run(_:)``.
    var metrics: MetricsExporter?
    /// This host in the cluster (with --config); shut down after the probes.
    var cluster: ClusterNode?

    init(keepPins: Bool, statsInterval: Int = 0) {
        self.keepPins = keepPins
        self.statsInterval = statsInterval
        // A closed stdout (`| head`) must not kill us before we detach.
        signal(SIGPIPE, SIG_IGN)
        for signalNumber in [SIGINT, SIGTERM] {
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: queue)
            source.setEventHandler { [self] in stop(signal: signalNumber) }
            source.resume()
            signalSources.append(source)
        }
    }

    /// Drains memcached's events on a thread of their own (printing them with
    /// `trace`), so the ring buffer does not fill; losses are logged as they happen.
    func attachProbes(_ probes: MemcachedProbes, trace: Bool, sync: L3Sync?) throws {
        let reader = try probes.eventReader()
        self.probes = probes
        self.sync = sync
        let stopFlag = drainStop
        let drained = drained
        let logger = logger
        // The reader and the probes' stats map are used by this thread alone
        // until it stops; detach happens after stopFlag is set.
        nonisolated(unsafe) let probesForThread = probes
        nonisolated(unsafe) let readerForThread = reader
        let thread = Thread {
            let probes = probesForThread
            let reader = readerForThread
            var lostSeen: UInt64 = 0
            var nextLossCheck = ContinuousClock.now
            while !stopFlag.isSet {
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
            // The probes are detached: apply what is still in the ring, so L3 has seen every write.
            while let n = try? reader.poll(timeoutMs: 0, { event in sync?.apply(event) }), n > 0 {}
            drained.signal()
        }
        thread.name = "cxl-bmc.events"
        thread.start()
        eventDrain = thread
    }

    /// Blocks until SIGINT/SIGTERM (then detaches `cache`) or until L1 is
    /// detached from outside; rethrows a detach failure.
    func run(_ cache: L1Cache) throws {
        let timer = DispatchSource.makeTimerSource(queue: queue)
        queue.sync {
            self.cache = cache
            if let signalNumber = pendingSignal {
                stop(signal: signalNumber)
            }
        }
        timer.schedule(deadline: .now() + 1, repeating: 1)
        timer.setEventHandler { [self] in tick() }
        timer.resume()

        finished.wait()
        timer.cancel()
        signalSources.forEach { $0.cancel() }
        if let result { throw result }
    }

    private func tick() {
        guard !stopped, let cache else { return }
        ticks += 1
        // One sample of every counter per tick, for the stats block, the metrics and the status file.
        let l1 = try? cache.stats()
        let probeStats = probes.flatMap { try? $0.stats() }
        let l3 = sync?.snapshot
        let status = DaemonStatus(pid: getpid(), interface: cache.interface.name, probes: probeStats, sync: l3,
                                  cluster: cluster.map { ($0.store.snapshot, $0.store.downNodes) })
        if statsInterval > 0 && ticks % statsInterval == 0 { printStats(cache, l1: l1, status: status) }
        metrics?.update(l1: l1, probes: probeStats, l3: l3, cluster: cluster?.store.snapshot)
        if probes != nil {
            do { try status.write() } catch { logger.warning("could not publish the daemon's status: \(error)") }
        }
        // Someone else detached L1 only if queries that succeed stop showing our program
        // several ticks in a row: a failed query says nothing, and a single empty answer has
        // been seen while the program was attached (a link dump racing interface changes).
        do {
            if try cache.isAttached() {
                missingTicks = 0
            } else {
                missingTicks += 1
                if missingTicks >= Self.missingTicksBeforeExit {
                    let now = (try? XDPAttachment.kernelProgramIDs(of: cache.interface)) ?? []
                    logger.notice(
                        "L1 (XDP program id \(cache.xdp.programID)) was detached from \(cache.interface.name) by someone else (attached now: \(now.isEmpty ? "none" : now.map(String.init).joined(separator: ", "))); exiting without touching it")
                    finish()
                    return
                }
            }
        } catch {
            logger.warning("could not query the XDP programs of \(cache.interface.name): \(error)")
        }
        do {
            try cache.refreshClock()
            try cache.sweepConnections(idleFor: .seconds(Self.connectionIdleSeconds))
        } catch {
            logger.warning("periodic maintenance failed: \(error)")
        }
    }

    /// The `--stats-interval` block: what each tier did since start (events and
    /// L3 as `cxl-bmc stats` prints them from the status file).
    private func printStats(_ cache: L1Cache, l1: L1Stats?, status: DaemonStatus) {
        var lines = ["--- cxl-bmc \(cache.interface.name) after \(ticks) s"]
        if let l1 {
            let gets = l1["get_seen"] ?? 0, hits = l1["hit"] ?? 0
            let ratio = gets > 0 ? String(format: "%.3f", Double(hits) / Double(gets)) : "-"
            lines.append("  L1: \(gets) UDP GETs, \(hits) hits (ratio \(ratio)), \(l1["fill"] ?? 0) fills, \(l1["fill_refused"] ?? 0) refused")
        }
        lines += status.lines
        print(lines.joined(separator: "\n"))
        fflush(nil)
    }

    private func stop(signal signalNumber: Int32) {
        guard !stopped else { return }
        guard let cache else {
            logger.info("signal \(signalNumber): will detach as soon as the attach finishes")
            pendingSignal = signalNumber
            return
        }
        logger.info("signal \(signalNumber): detaching from \(cache.interface.name)\(keepPins ? ", keeping the pins" : "")")
        DaemonStatus.remove(interface: cache.interface.name)
        // L1 goes first: while it serves, the probes must keep invalidating it.
        do {
            try cache.detach(keepPins: keepPins)
            print("detached L1 from \(cache.interface.name)\(keepPins ? " (pins kept in \(cache.pinDirectory))" : "")")
        } catch {
            result = error
        }
        // memcached's write counters while the probes still see every write: one that lands after
        // this read changes them, and the next daemon on this pool resyncs L3.
        let record = writeRecord.flatMap { try? MemcachedWriteRecord.read(host: $0.host, port: $0.port) }
        if let probes {
            probes.detach()
            drainStop.set()
            if drained.wait(timeout: .now() + 5) == .timedOut { logger.warning("memcached's last events were not all applied") }
            print("detached the uprobes from \(probes.targets.binary)")
        }
        if let sync {
            // Recorded once every event is applied to L3 and the fetches they queued are done; after
            // a failure nothing is recorded, so the next daemon on this pool does not trust L3.
            if let path = writeRecord?.path, let record, sync.drain(timeout: .seconds(5)), sync.snapshot.failures == 0 {
                do {
                    try record.save(to: path)
                } catch {
                    logger.warning("could not record memcached's write counters (the next attach will resync L3): \(error)")
                }
            }
            sync.stop()
            let c = sync.snapshot
            print("L3: \(c.stores) stores, \(c.deletes) deletes, \(c.misses) misses, \(c.l3Hits) answered by L3, \(c.promoted) promoted (\(c.promotionsUndone) undone, \(c.promotionsDeferred) deferred), \(c.dropped) dropped, \(c.failures) failures")
        }
        if let cluster {
            // Writes still in flight to peers are waited for, then the peer port closes.
            cluster.shutdown()
            let c = cluster.store.snapshot
            print("cluster: \(c.localHits) local, \(c.directHits) direct, \(c.remoteHits) remote hits; \(c.peerWrites) writes to peers, \(c.failoverWrites) failed over, \(c.peerErrors) peer errors; peer port closed")
        }
        finish()
    }

    private func finish() {
        stopped = true
        finished.signal()
    }
}

/// A one-way stop flag shared with the event-drain thread.
final class StopFlag: Sendable {
    private let value = Atomic<Bool>(false)
    var isSet: Bool { value.load(ordering: .acquiring) }
    func set() { value.store(true, ordering: .releasing) }
}
