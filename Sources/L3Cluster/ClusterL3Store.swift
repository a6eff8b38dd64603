import CXLTier
import Dispatch
import Foundation
import L3Sync
import Logging
import NIOCore
import Peering
import Synchronization

/// How this host reaches one node's partition.
public enum AccessPath: String, Sendable, Codable, CaseIterable {
    /// This host's own partition: CXLTier directly.
    case local
    /// A peer's partition in the shared pool this host maps (same CXL domain): read directly,
    /// validated as CXLTier's readers do; written through the peer (one writer per partition).
    case direct
    /// A peer in another CXL domain: the meta protocol over TCP.
    case network
}

/// L3 as one global tier over every node's partition (PGAS): the `L3Store` the daemon's
/// write-through and promotion use when it runs with a cluster config.
///
/// Placement: a key's home is its first node on the consistent-hash ring; with replication r,
/// the first r distinct nodes. **Writes** go to the key's first r live nodes among its first
/// r + 1 (so a dead owner's writes land on the next node), and to this host's own partition when
/// none of them is live. **Reads** ask every node of the key's first r + 1 plus this host (the
/// places a write can land) and return the newest version, deletions included — so no read
/// returns a value older than an acknowledged write, even across a failure and a rejoin. A dead
/// peer's partition in this host's domain is still read directly; a dead peer across the network
/// is skipped until its heartbeat answers again.
///
/// Writes to peers are sent asynchronously, pipelined on one connection per peer (so a write and
/// a later delete of a key arrive in order; versions order them anyway), as many in flight as the
/// peer's client queues less a reserve: beyond that the caller waits (back-pressure), never drops.
public final class ClusterL3Store: L3Store, @unchecked Sendable {
    public struct Counters: Sendable, Equatable, Codable {
        public var lookups: UInt64 = 0
        /// Lookups answered, by the path of the partition holding the newest version.
        public var localHits: UInt64 = 0
        public var directHits: UInt64 = 0
        public var remoteHits: UInt64 = 0
        public var misses: UInt64 = 0
        public var localWrites: UInt64 = 0
        /// Writes and deletes acknowledged by a peer.
        public var peerWrites: UInt64 = 0
        /// Writes a peer refused because it held a newer version (not an error).
        public var peerWritesStale: UInt64 = 0
        /// Writes that went to another node because the key's node was down.
        public var failoverWrites: UInt64 = 0
        /// Writes that reached none of the key's nodes and were kept in this host's partition only.
        public var writesKeptLocally: UInt64 = 0
        public var peerErrors: UInt64 = 0
        /// Bytes read from and written to CXL memory (this host's and its domain's partitions).
        public var cxlBytesRead: UInt64 = 0
        public var cxlBytesWritten: UInt64 = 0
        /// Lookup latency: total and a log2 histogram (bucket i: < 2^i ns).
        /// Membership change: keys this host's partition held that the ring now places on other
        /// nodes (sent there at start), how many those nodes applied, how many they refused
        /// because they held a newer (or the same) version, and how many could not be sent.
        public var handOffMoved: UInt64 = 0
        public var handOffApplied: UInt64 = 0
        public var handOffAlreadyNewer: UInt64 = 0
        public var handOffFailed: UInt64 = 0
        public var lookupNsTotal: UInt64 = 0
        public var lookupNsHistogram: [UInt64] = Array(repeating: 0, count: 40)

        /// The lookup latency below which `fraction` of lookups fell (bucket upper bound), ns.
        public func lookupLatency(percentile fraction: Double) -> UInt64 {
            let total = lookupNsHistogram.reduce(0, +)
            guard total > 0 else { return 0 }
            var seen: UInt64 = 0
            for (bucket, count) in lookupNsHistogram.enumerated() {
                seen += count
                if Double(seen) >= fraction * Double(total) { return 1 << UInt64(bucket) }
            }
            return 1 << 39
        }
    }

    /// One node as this host reaches it.
    public struct Member: Sendable {
        public let node: NodeConfig
        public let path: AccessPath
        /// Its partition in the shared pool (local and direct paths).
        public let partition: Int?
        let reader: PartitionReader?
        let client: PeerClient?
        /// Bounds this peer's writes in flight: a burst waits here (back-pressure) rather than in
        /// the peer's queue, where every request's timeout runs and a heartbeat would wait behind it.
        let writeSlots: DispatchSemaphore?

        init(node: NodeConfig, path: AccessPath, partition: Int?, reader: PartitionReader?, client: PeerClient?) {
            self.node = node
            self.path = path
            self.partition = partition
            self.reader = reader
            self.client = client
            writeSlots = client.map { DispatchSemaphore(value: max(1, min(Member.maxWritesInFlight, $0.configuration.maxInFlight / 2))) }
        }

        static let maxWritesInFlight = 128
    }

    /// Where keys live: the config, its ring, the replication factor and how this host reaches
    /// each node. Replaced as a whole by a live reload (``apply(config:clients:replicas:)``); each
    /// read, write and hand-off works on one topology from start to end.
    public struct Topology: Sendable {
        public let config: ClusterConfig
        public let ring: HashRing
        public let replicas: Int
        public let members: [NodeID: Member]
        /// The partitions of this host's domain, whose flush_all marks every read applies.
        let domainPartitions: [Int]

        /// The nodes a write of `key` can land on, in ring order: its first r + 1.
        func candidates(_ key: [UInt8]) -> [NodeID] {
            ring.owners(of: key, replicas: min(config.nodes.count, replicas + 1))
        }
    }

    private let state: Mutex<Topology>
    public var topology: Topology { state.withLock { $0 } }
    public var config: ClusterConfig { topology.config }
    public var ring: HashRing { topology.ring }
    public var replicas: Int { topology.replicas }
    public var members: [NodeID: Member] { topology.members }
    public let local: CXLTierStore
    let pool: Pool
    private let counters = Mutex(Counters())
    private let down = Mutex<Set<NodeID>>([])
    let logger: Logger
    let heartbeatStop = Atomic<Bool>(false)
    /// Heartbeat rounds completed: until the first, every peer is presumed up.
    let heartbeatRounds = Atomic<Int>(0)

    /// `pool`: the shared pool holding this host's partition (and its domain's); `clients`: one
    /// per peer (every node but this one).
    public init(config: ClusterConfig, pool: Pool, local: CXLTierStore, clients: [NodeID: PeerClient],
                replicas: Int? = nil,
                logger: Logger = Logger(label: "cxl-bmc.cluster")) throws(ClusterSetupError) {
        self.local = local
        self.pool = pool
        self.logger = logger
        state = Mutex(try Self.topology(config: config, pool: pool, local: local, clients: clients, replicas: replicas))
    }

    static func topology(config: ClusterConfig, pool: Pool, local: CXLTierStore, clients: [NodeID: PeerClient],
                         replicas: Int?) throws(ClusterSetupError) -> Topology {
        let me = config.localNode
        var members: [NodeID: Member] = [:]
        var domainPartitions: [Int] = []
        for node in config.nodes {
            let partition = pool.partitions.first { $0.ownerNode == node.id }?.id
            if node.id == me.id {
                guard partition == local.partition else {
                    throw .localPartition(node: node.id, found: partition, using: local.partition)
                }
                members[node.id] = Member(node: node, path: .local, partition: partition, reader: nil, client: nil)
                domainPartitions.append(local.partition)
                continue
            }
            guard let client = clients[node.id] else { throw .noClient(node: node.id) }
            if node.domain == me.domain, let partition {
                let reader: PartitionReader
                do { reader = try pool.reader(partition: partition) } catch {
                    throw .unreadablePartition(node: node.id, partition: partition, reason: "\(error)")
                }
                members[node.id] = Member(node: node, path: .direct, partition: partition, reader: reader, client: client)
                domainPartitions.append(partition)
            } else {
                if node.domain == me.domain { throw .noPartition(node: node.id) }
                members[node.id] = Member(node: node, path: .network, partition: nil, reader: nil, client: client)
            }
        }
        return Topology(config: config, ring: HashRing(config: config),
                        replicas: max(1, min(replicas ?? config.replicas, config.nodes.count)),
                        members: members, domainPartitions: domainPartitions)
    }

    /// Live reload: from now on, reads and writes use `config`'s ring and nodes. `clients` holds
    /// one client per peer of the new config (the caller reuses the existing ones). This host's
    /// node must be the same (its partition). Returns the topology replaced. Writes already in
    /// flight finish under the old one (versions order them); run ``handOff(waitForNodes:concurrency:)``
    /// next to send keys whose placement changed.
    @discardableResult
    public func apply(config: ClusterConfig, clients: [NodeID: PeerClient], replicas: Int? = nil) throws(ClusterSetupError) -> Topology {
        let new = try Self.topology(config: config, pool: pool, local: local, clients: clients, replicas: replicas)
        let old = state.withLock { current in
            defer { current = new }
            return current
        }
        // Nodes no longer configured are forgotten; new ones are presumed up until a heartbeat says otherwise.
        let kept = Set(new.members.keys)
        down.withLock { $0.formIntersection(kept) }
        return old
    }

    public var snapshot: Counters { counters.withLock { $0 } }

    /// Nodes currently believed down (a failed request or heartbeat; up again at the next answer).
    public var downNodes: Set<NodeID> { down.withLock { $0 } }

    func isUp(_ id: NodeID) -> Bool { !down.withLock { $0.contains(id) } }

    private func mark(_ id: NodeID, up: Bool) {
        let changed = down.withLock { set -> Bool in
            up ? set.remove(id) != nil : set.insert(id).inserted
        }
        if changed { logger.notice("node \(id) is \(up ? "up again" : "down"): \(up ? "its keys are written to it again" : "its keys' writes go to the next node")") }
    }

    /// The path that would serve `key` from its home node now (for status and tests).
    public func homePath(of key: [UInt8]) -> AccessPath? {
        let topology = topology
        return topology.ring.owner(of: key).flatMap { topology.members[$0]?.path }
    }

    // MARK: Heartbeats

    /// Sends `mn` to every peer every `interval`; a peer that fails is marked down (its writes
    /// fail over), one that answers is up again.
    /// Each round pings the peers of the topology current then (a reload's new peers included).
    public func startHeartbeats(interval: TimeInterval = 0.25) {
        Thread.detachNewThread { [self] in
            while !heartbeatStop.load(ordering: .acquiring) {
                let peers = topology.members.values.filter { $0.client != nil }.sorted { $0.node.id < $1.node.id }
                for member in peers {
                    let ok = (try? blocking { try await member.client!.noop() }.get()) != nil
                    mark(member.node.id, up: ok)
                }
                heartbeatRounds.add(1, ordering: .releasing)
                Thread.sleep(forTimeInterval: interval)
            }
        }
    }

    /// Stops the heartbeats and waits for writes in flight (up to `timeout`).
    public func stop(timeout: Duration = .seconds(5)) {
        heartbeatStop.store(true, ordering: .releasing)
        _ = drain(timeout: timeout)
    }

    private let inFlight = Atomic<Int>(0)

    /// Waits until every write sent so far is answered (tests, shutdown).
    public func drain(timeout: Duration = .seconds(10)) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if inFlight.load(ordering: .acquiring) == 0 { return true }
            usleep(2_000)
        }
        return false
    }

    // MARK: Reads

    public func get(key: [UInt8]) throws -> L3Item? {
        let started = ContinuousClock.now
        var best: (version: UInt64, item: L3Item?, path: AccessPath)?
        func offer(_ version: UInt64, _ item: L3Item?, _ path: AccessPath) {
            if best == nil || version > best!.version { best = (version, item, path) }
        }
        var asked = Set<NodeID>()
        let topology = topology
        for id in topology.candidates(key) + [topology.config.localNodeID] where asked.insert(id).inserted {
            guard let member = topology.members[id] else { continue }
            switch member.path {
            case .local, .direct:
                let answer = member.path == .local ? local.versioned(key) : member.reader!.versioned(key)
                switch answer {
                case .item(let found):
                    count { $0.cxlBytesRead += UInt64(found.value.count + key.count) }
                    offer(found.version, L3Item(value: found.value, flags: found.flags,
                                                exptimeUnix: Int64(found.exptime), version: found.version), member.path)
                case .gone(let version): offer(version, nil, member.path)
                case .absent: break
                }
            case .network:
                guard isUp(id), let client = member.client else { continue }
                switch blocking({ try await client.lookup(key) }) {
                case .success(.item(let found)):
                    let expires = found.ttl.map { Int64(currentUnixTime() + $0) } ?? 0
                    offer(found.cas, L3Item(value: found.value, flags: found.flags, exptimeUnix: expires,
                                            version: found.cas), .network)
                // A tombstone's version (`EN c<version>`) outvotes older copies, as a direct read's does.
                case .success(.deleted(let version)): offer(version, nil, .network)
                case .success(.absent): break
                case .failure(let error):
                    count { $0.peerErrors += 1 }
                    logger.debug("read of a key from node \(id) failed: \(error)")
                    if Self.meansDown(error) { mark(id, up: false) }
                }
            }
        }
        let now = Int64(currentUnixTime())
        var result: L3Item?
        if let best, let item = best.item, !item.isExpired(now: now),
           try !hiddenByFlush(item, now: now, partitions: topology.domainPartitions) {
            result = item
        }
        let elapsed = (ContinuousClock.now - started).components
        let took = UInt64(elapsed.seconds * 1_000_000_000 + elapsed.attoseconds / 1_000_000_000)
        count { c in
            c.lookups += 1
            c.lookupNsTotal += took
            c.lookupNsHistogram[min(39, 64 - took.leadingZeroBitCount)] += 1
            switch result == nil ? nil : best?.path {
            case .local: c.localHits += 1
            case .direct: c.directHits += 1
            case .network: c.remoteHits += 1
            case nil: c.misses += 1
            }
        }
        return result
    }

    /// flush_all is cluster-wide within a CXL domain: an item is hidden if any partition's mark
    /// in this host's domain hides it (each host writes its own partition's mark).
    private func hiddenByFlush(_ item: L3Item, now: Int64, partitions: [Int]) throws -> Bool {
        for partition in partitions where try CXLTierStore.flushMark(pool: pool, partition: partition).hides(item, now: now) {
            return true
        }
        return false
    }

    // MARK: Writes

    private enum Write: Sendable {
        case put(L3Item)
        case delete(version: UInt64)
        case touch(exptimeUnix: Int64, version: UInt64)
    }

    public func put(key: [UInt8], item: L3Item) throws { try write(key, .put(item)) }

    public func delete(key: [UInt8], version: UInt64) throws { try write(key, .delete(version: version)) }

    public func touch(key: [UInt8], exptimeUnix: Int64, version: UInt64) throws {
        try write(key, .touch(exptimeUnix: exptimeUnix, version: version))
    }

    public func flush(versionsBefore: UInt64, effectiveUnix: Int64) throws {
        try local.flush(versionsBefore: versionsBefore, effectiveUnix: effectiveUnix)
    }

    /// Sends `operation` to the key's first r live nodes among its candidates; when fewer are
    /// live, the rest goes to this host's partition (which every read of this host asks).
    private func write(_ key: [UInt8], _ operation: Write) throws {
        let topology = topology
        let me = topology.config.localNodeID, replicas = topology.replicas
        let nodes = topology.candidates(key)
        var targets = Array(nodes.filter(isUp).prefix(replicas))
        let failover = targets != Array(nodes.prefix(replicas))
        if targets.count < replicas && !targets.contains(me) {
            targets.append(me)
            count { $0.writesKeptLocally += 1 }
        }
        if failover { count { $0.failoverWrites += 1 } }
        for id in targets {
            if id == me {
                try applyLocally(key, operation)
            } else {
                send(key, operation, to: id, fallbacks: nodes.filter { !targets.contains($0) }, topology: topology)
            }
        }
    }

    private func applyLocally(_ key: [UInt8], _ operation: Write) throws {
        switch operation {
        case .put(let item):
            try local.put(key: key, item: item)
            count { $0.localWrites += 1; $0.cxlBytesWritten += UInt64(item.value.count + key.count) }
        case .delete(let version):
            try local.delete(key: key, version: version)
            count { $0.localWrites += 1 }
        case .touch(let exptime, let version):
            try local.touch(key: key, exptimeUnix: exptime, version: version)
            count { $0.localWrites += 1 }
        }
    }

    /// Sends one write to a peer without waiting for it; if the peer fails, marks it down and
    /// sends the write to the next of `fallbacks` (this host's partition last).
    private func send(_ key: [UInt8], _ operation: Write, to id: NodeID, fallbacks: [NodeID], topology: Topology) {
        guard let member = topology.members[id], let client = member.client, let slots = member.writeSlots else { return }
        slots.wait()
        inFlight.add(1, ordering: .acquiringAndReleasing)
        Task { [self] in
            defer {
                inFlight.subtract(1, ordering: .acquiringAndReleasing)
                slots.signal()
            }
            do {
                let stale: Bool
                switch operation {
                case .put(let item):
                    // T: absolute unix time (memcached reads T over 30 days as absolute), 0 never.
                    let outcome = try await client.set(key, value: item.value, flags: item.flags,
                                                       ttl: Int(item.exptimeUnix), version: item.version)
                    stale = outcome == .notStored
                case .delete(let version):
                    _ = try await client.delete(key, version: version)
                    stale = false
                case .touch(let exptime, _):
                    _ = try await client.touch(key, ttl: Int(exptime))
                    stale = false
                }
                count { stale ? ($0.peerWritesStale += 1) : ($0.peerWrites += 1) }
            } catch {
                count { $0.peerErrors += 1 }
                logger.debug("write of a key to node \(id) failed: \(error)")
                if Self.meansDown(error) { mark(id, up: false) }
                let next = fallbacks.first(where: isUp) ?? topology.config.localNodeID
                count { $0.failoverWrites += 1 }
                if next == topology.config.localNodeID || topology.members[next]?.client == nil {
                    do { try applyLocally(key, operation) } catch {
                        logger.error("a write could not be kept anywhere: \(error)")
                    }
                } else {
                    send(key, operation, to: next, fallbacks: fallbacks.filter { $0 != next }, topology: topology)
                }
            }
        }
    }

    /// Whether a failed request says the peer is unreachable (rather than that this one request
    /// could not be sent, e.g. a value over the peer's limit).
    static func meansDown(_ error: any Error) -> Bool {
        switch error as? PeerError {
        case .connectFailed, .unavailable, .timedOut, .connectionClosed, .authenticationFailed, .protocolViolation,
             .peerError, .shutDown: true
        case .badKey, .invalidKey, .valueTooLarge, .queueFull, nil: false
        }
    }

    func count(_ update: (inout Counters) -> Void) {
        counters.withLock { (c: inout Counters) -> Void in update(&c) }
    }
}

/// Why a cluster config and a pool do not fit together.
public enum ClusterSetupError: Error, CustomStringConvertible {
    case localPartition(node: NodeID, found: Int?, using: Int)
    case noClient(node: NodeID)
    case noPartition(node: NodeID)
    case unreadablePartition(node: NodeID, partition: Int, reason: String)

    public var description: String {
        switch self {
        case .localPartition(let node, let found, let using):
            return found == nil
                ? "the pool has no partition owned by node \(node) (this host): create it with `cxl-bmc pool create PATH --config nodes.conf`"
                : "node \(node)'s partition is \(found!), but this host writes partition \(using)"
        case .noClient(let node): return "no connection configured for node \(node)"
        case .noPartition(let node):
            return "node \(node) is in this host's CXL domain but the pool has no partition it owns: create the pool with the same nodes.conf"
        case .unreadablePartition(let node, let partition, let reason):
            return "node \(node)'s partition \(partition) cannot be read: \(reason)"
        }
    }
}

/// Runs `body` on Swift's concurrency pool and waits for it on this (non-async) thread: the
/// event consumer and the promotion worker are plain threads. Peer requests carry their own
/// timeouts, so this returns.
func blocking<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) -> Result<T, any Error> {
    let result = Mutex<Result<T, any Error>?>(nil)
    let done = DispatchSemaphore(value: 0)
    Task {
        let outcome: Result<T, any Error>
        do { outcome = .success(try await body()) } catch { outcome = .failure(error) }
        result.withLock { $0 = outcome }
        done.signal()
    }
    done.wait()
    return result.withLock { $0! }
}
