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
            memcached's events also keep L3 in this process's memory (with -t N, a CXLTier \
            partition of N index buckets; without, an unbounded map): every write goes \
            through, and a GET miss L3 can answer is promoted back into memcached \
            (--memcached-addr) with add semantics, never over a newer write. Its counters are \
            published every second to /run/cxl-bmc/IFACE.json (read by `cxl-bmc stats`), \
            printed with --stats-interval, and served with --metrics. On exit L1 is detached \
            first, then the uprobes, then L3 stops (docs/daemon.md).

            With --pool POOL --config nodes.conf this host joins a cluster: it writes its own \
            partition of the pool (its node's slice; make the pool with `cxl-bmc pool create \
            POOL --size SIZE --config nodes.conf`), serves it to peers on its node's ADDR:PORT \
            (authenticated with the config's psk_file), and writes each key through to its home \
            node(s) on the consistent-hash ring: in process, or sent to the peer. A lookup reads \
            the key's partitions directly when they are in this host's CXL domain, over the \
            network otherwise, and takes the newest version. A peer that stops answering is \
            marked down and its keys' writes go to the next node until it answers again. At \
            start, and at each SIGHUP (`cxl-bmc cluster reload IFACE`), which re-reads nodes.conf \
            and applies it live (an invalid file, a change to this node or to the key file, or a \
            removed node is refused and the running config kept; the log says why or what \
            changed), each key is sent to the nodes of its replica set that lack it. On exit, \
            writes still in flight to peers are waited for, then the peer port closes. \
            See docs/Peering.md.

            A pool outlives the daemon, and memcached may take writes while no daemon watches \
            it. On exit the daemon records memcached's write counters (in /run/cxl-bmc/l3-writes/); \
            on start it trusts the L3 it finds only if memcached is not running, has never been \
            written, or is the same process with the same counters, and otherwise empties L3 \
            (with --config, that is the CXL domain's L3) and says why.
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

    @Option(
        name: [.customShort("t"), .customLong("hash-table")],
        help: ArgumentHelp(
            "L3's index size in index buckets (8 items each). With --no-cxl: L3 becomes a CXLTier partition of exactly N buckets in this process's memory, bounded at 8·N items (about \(L3IndexSize.bytesPerBucket(bytesPerSlot: PoolFormat.defaultBytesPerSlot)) bytes per bucket; without -t, an unbounded map). With --pool: the pool's index is fixed when it is made (`cxl-bmc pool create --hash-table N`); a different N is refused.",
            valueName: "N"))
    var hashTable: Int?

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
        if let hashTable {
            guard l3Wanted else { throw ValidationError("--hash-table sizes L3's index: add --no-cxl or --pool PATH") }
            try L3IndexSize.validate(hashTable)
        }
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
            let signals = ShutdownSignals()
            // SIGHUP: reload nodes.conf (with --config); never the default action (exit).
            let reloads = ReloadSignal(expectsCluster: config != nil)
            let metrics = try metricsAddress.flatMap(Events.hostPort).map { host, metricsPort in
                try MetricsExporter(host: host, port: metricsPort)
            }
            if let metrics { print("metrics: http://\(metrics.address)/metrics") }
            // What can fail without touching the interface is done first: the config and the pool.
            let cluster = try config.map { path in try ClusterConfig.load(path: path) }
            // SIGHUP re-reads this path: made absolute now, whatever the working directory later.
            let absoluteConfigPath = config.map { URL(fileURLWithPath: $0).standardizedFileURL.path }
            if let replicate, let cluster, replicate > cluster.nodes.count {
                throw ValidationError("--replicate \(replicate): the cluster has \(cluster.nodes.count) nodes")
            }
            let openedPool = try pool.map { path in
                path.hasPrefix("/dev/dax") ? try Pool(region: DevDaxRegion(path: path)) : try Pool(path: path)
            }
            if let hashTable, let pool, let openedPool {
                try L3IndexSize.check(hashTable, against: openedPool, path: pool, recreate: recreateCommand(openedPool, path: pool))
            }
            let inMemoryPool = try hashTable.flatMap { noCXL ? try L3IndexSize.inMemoryPool(buckets: $0) : nil }
            let geometry = L1Geometry.forEntries(l1Entries)
            let cache = try L1Cache.attach(
                interface: interface, port: port, sets: geometry.sets, pinRoot: pins.pinRoot,
                tcAttach: tcAttach, xdpMode: xdpMode.request,
                unknownTTL: .nanoseconds(Int64(unknownTTL * 1e9)))
            report(cache)
            var probes: MemcachedProbes?
            var events: EventDrainService?
            var sync: L3Sync?
            var clusterNode: ClusterNode?
            var gapRecorder: WriteGapRecorder?
            if memcached.given {
                // The probes bump L1's write generations at the moment memcached applies a write.
                let attached: MemcachedProbes
                do {
                    attached = try memcached.attach(l1PinDirectory: cache.pinDirectory)
                } catch {
                    try? cache.detach(keepPins: keepPins)
                    throw error
                }
                probes = attached
                do {
                    if !wireWrites { try cache.setWritesTrackedByProbes(true) }
                    print("uprobes: \(attached.probeCount) on \(attached.targets.binary) (\(attached.scope)); L1 invalidated when memcached applies each write\(wireWrites ? ", and by ingress parsing" : "")")
                    fflush(nil)
                    if l3Wanted {
                        let (host, tcpPort) = memcachedAddress.flatMap(Events.hostPort) ?? ("127.0.0.1", port)
                        nonisolated(unsafe) let counterSource = attached
                        let store: any L3Store
                        let place: String
                        if let pool, let opened = openedPool {
                            if let cluster {
                                let node = try ClusterNode.start(config: cluster, pool: opened, replicas: replicate)
                                clusterNode = node
                                store = node.store
                                let paths = node.store.members.values.sorted { $0.node.id < $1.node.id }
                                    .map { "node\($0.node.id) \($0.path.rawValue)" }.joined(separator: ", ")
                                place = "pool \(pool), partition \(node.local.partition) of node\(cluster.localNodeID) (\(opened.partitions[node.local.partition].bucketCount) index buckets); cluster of \(cluster.nodes.count) nodes (\(paths)), \(node.store.replicas) cop\(node.store.replicas == 1 ? "y" : "ies") of each key; peers served on \(cluster.localNode.address)"
                            } else {
                                let partition = partition ?? 0
                                store = try CXLTierStore(pool: opened, partition: partition)
                                place = "pool \(pool), partition \(partition) (\(opened.partitions[partition].bucketCount) index buckets)"
                            }
                        } else if let inMemoryPool {
                            store = try CXLTierStore(pool: inMemoryPool, partition: 0)
                            let g = inMemoryPool.partitions[0]
                            place = "in memory (--no-cxl), a CXLTier partition of \(g.bucketCount) index buckets (\(g.bucketCount * PoolFormat.slotsPerBucket) items at most), log \(g.logSize) bytes"
                        } else {
                            store = InMemoryL3Store()
                            place = "in memory (--no-cxl)"
                        }
                        let sequences = try attached.writeSequences()
                        let l3 = L3Sync(store: store, memcachedHost: host, port: tcpPort,
                                        lostEvents: { try? counterSource.stats().lost },
                                        writeSequence: { sequences.current(slot: $0) })
                        sync = l3
                        print("L3: \(place); misses it can answer are promoted into memcached at \(host):\(tcpPort)")
                        if let pool {
                            // The pool outlived the last daemon: writes memcached took meanwhile are unknown.
                            let record = MemcachedWriteRecord.path(
                                pool: pool, partition: clusterNode?.local.partition ?? partition ?? 0)
                            let outcome = try l3.reconcile(previous: MemcachedWriteRecord.load(from: record), host: host, port: tcpPort)
                            unlink(record) // a daemon that dies without writing a new one leaves nothing to trust
                            gapRecorder = WriteGapRecorder(path: record, host: host, port: tcpPort)
                            print("L3: \(outcome)")
                        }
                        fflush(nil)
                    }
                    events = EventDrainService(probes: attached, reader: try attached.eventReader(), sync: sync, trace: trace,
                                               recorder: gapRecorder)
                } catch {
                    // Leave nothing attached behind a failed start.
                    sync?.stop()
                    clusterNode?.shutdown()
                    attached.detach()
                    try? cache.detach(keepPins: keepPins)
                    throw error
                }
            }
            let l1 = L1Service(cache: cache, keepPins: keepPins)
            let services = Daemon.services(
                cluster: clusterNode.map { ClusterService($0, configPath: absoluteConfigPath!, reloads: reloads) }, sync: sync.map { L3SyncService($0, recorder: gapRecorder) },
                events: events, l1: l1,
                counters: CountersService(cache: cache, probes: probes, sync: sync, cluster: clusterNode, metrics: metrics,
                                          statsInterval: statsInterval),
                metrics: metrics.map(MetricsServerService.init))
            try Daemon.run(services, signals: signals, l1: l1, logger: CLI.logger)
        }
    }

    /// The `pool create` command line that makes `pool` anew with this run's -t.
    private func recreateCommand(_ pool: Pool, path: String) -> String {
        let create = "cxl-bmc pool create \(path) --size \(pool.region.size)\(config.map { " --config \($0)" } ?? "") --hash-table \(hashTable ?? 0)"
        return path.hasPrefix("/dev/dax") ? "\(create) (pool create makes pool files; a devdax pool keeps the index it was laid out with)" : "rm \(path) && \(create)"
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
