import CXLTier
import Dispatch
import Foundation
import L3Sync
import Logging
import NIOCore
import NIOPosix
import Peering
import Synchronization

/// This host as a member of the cluster: its partition served to peers (``PeerServer`` on the
/// node's address from nodes.conf), a client per peer, and the ``ClusterL3Store`` the daemon
/// writes through and promotes from. ``reload(config:)`` applies a new nodes.conf live.
public final class ClusterNode: @unchecked Sendable {
    /// The config running now (the last one applied).
    public var config: ClusterConfig { store.config }
    public let store: ClusterL3Store
    public let server: PeerServer
    public let local: CXLTierStore
    private let group: MultiThreadedEventLoopGroup
    private let pool: Pool
    private let psk: PreSharedKey?
    /// `--replicate`: overrides every config's `replicas=` (a reload's too).
    private let replicasOverride: Int?
    private let handOffWait: Duration
    private let logger: Logger
    /// One client per peer of the running config, plus those of removed peers (shut down at the end).
    private let clients = Mutex<(current: [NodeID: PeerClient], retired: [PeerClient])>(([:], []))
    /// Reloads run one at a time.
    private let reloading = Mutex<Void>(())

    /// Opens this host's partition of `pool` (the one nodes.conf's local node owns), binds the
    /// peer port, and starts heartbeats. `replicas` overrides the config's. The hand-off waits up
    /// to `handOffWait` for the nodes it sends to.
    public static func start(config: ClusterConfig, pool: Pool, replicas: Int? = nil,
                             handOffWait: Duration = .seconds(30),
                             logger: Logger = Logger(label: "cxl-bmc.cluster")) throws -> ClusterNode {
        guard let partition = pool.partitions.first(where: { $0.ownerNode == config.localNodeID })?.id else {
            throw ClusterSetupError.localPartition(node: config.localNodeID, found: nil, using: -1)
        }
        let psk = try config.pskFile.map { path throws(PeerError) in try PreSharedKey.load(path: path) }
        if psk == nil {
            logger.warning("nodes.conf sets no psk_file: the peer port accepts commands from anyone who can reach it")
        }
        let local = try CXLTierStore(pool: pool, partition: partition)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do {
            var clients: [NodeID: PeerClient] = [:]
            for node in config.nodes where node.id != config.localNodeID {
                clients[node.id] = makeClient(node, config: config, psk: psk, group: group)
            }
            let store = try ClusterL3Store(config: config, pool: pool, local: local, clients: clients,
                                           replicas: replicas, logger: logger)
            let me = config.localNode
            let serverConfiguration = PeerServer.Configuration(
                localNodeID: me.id, psk: psk, allowedPeers: Set(config.nodes.map(\.id)))
            let peerStore = PartitionPeerStore(store: local)
            let server = try blocking {
                try await PeerServer.start(host: me.address.host, port: me.address.port, store: peerStore,
                                           configuration: serverConfiguration, group: group, logger: logger)
            }.get()
            store.startHeartbeats()
            let node = ClusterNode(store: store, server: server, local: local, group: group, pool: pool, psk: psk,
                                   replicas: replicas, handOffWait: handOffWait, logger: logger)
            node.clients.withLock { $0.current = clients }
            node.startHandOff()
            return node
        } catch {
            local.close()
            try? group.syncShutdownGracefully()
            throw error
        }
    }

    private static func makeClient(_ node: NodeConfig, config: ClusterConfig, psk: PreSharedKey?,
                                   group: MultiThreadedEventLoopGroup) -> PeerClient {
        var configuration = PeerClient.Configuration(localNodeID: config.localNodeID, peerNodeID: node.id,
                                                     psk: node.authenticates ? psk : nil)
        configuration.connectTimeout = .milliseconds(300)
        // A request's timeout runs from when it is queued; writes are bounded by
        // ClusterL3Store's per-peer slots, so this is a dead peer's cost, not a burst's.
        configuration.requestTimeout = .seconds(1)
        configuration.maxBackoff = .milliseconds(500)
        return PeerClient(address: node.address, configuration: configuration, eventLoop: group.next())
    }

    private init(store: ClusterL3Store, server: PeerServer, local: CXLTierStore, group: MultiThreadedEventLoopGroup,
                 pool: Pool, psk: PreSharedKey?, replicas: Int?, handOffWait: Duration, logger: Logger) {
        self.store = store
        self.server = server
        self.local = local
        self.group = group
        self.pool = pool
        self.psk = psk
        self.replicasOverride = replicas
        self.handOffWait = handOffWait
        self.logger = logger
    }

    /// The latest hand-off: its number (one per start or reload) and its report once finished.
    private let handOffState = Mutex<(started: Int, finished: Int, report: ClusterL3Store.HandOffReport?)>((0, 0, nil))

    /// Membership change: in the background, sends the keys this host's partition holds to the
    /// nodes of the current ring that need them (``ClusterL3Store/handOff(waitForNodes:concurrency:)``).
    private func startHandOff() {
        let number = handOffState.withLock { state -> Int in
            state.started += 1
            return state.started
        }
        Thread.detachNewThread { [self] in
            let report = store.handOff(waitForNodes: handOffWait)
            if report.moved > 0 || report.applied > 0 || report.failed > 0 { logger.notice("membership hand-off: \(report)") }
            handOffState.withLock { state in
                if number >= state.finished {
                    state.finished = number
                    state.report = report
                }
            }
        }
    }

    /// The report of the latest hand-off (the one of the start, or of the last reload) once it
    /// finished; nil if not within `timeout`.
    public func waitForHandOff(timeout: Duration = .seconds(60)) -> ClusterL3Store.HandOffReport? {
        let deadline = ContinuousClock.now + timeout
        while true {
            let state = handOffState.withLock { $0 }
            if state.finished == state.started { return state.report }
            if ContinuousClock.now >= deadline { return nil }
            usleep(20_000)
        }
    }

    // MARK: Live reload

    /// Why a new config was not applied (the node keeps running on the one it has).
    public enum ReloadError: Error, CustomStringConvertible {
        /// The file does not parse or validate: the `FILE:LINE: …` message.
        case invalid(String)
        /// A change that only a restart can apply.
        case needsRestart(String)
        /// The config does not fit the pool (e.g. a node of this domain without a partition).
        case setup(String)
        /// A change live reload does not make (removing a node).
        case unsupported(String)

        public var description: String {
            switch self {
            case .invalid(let message): message
            case .needsRestart(let what): "\(what): this cannot be applied live; restart the daemon with the new config"
            case .setup(let message): message
            case .unsupported(let what): what
            }
        }
    }

    /// What a reload changed.
    public struct ReloadReport: Sendable, CustomStringConvertible {
        public var added: [NodeConfig] = []
        public var removed: [NodeConfig] = []
        /// Nodes kept whose address, weight, domain, slice or auth changed: "node1: weight 1 → 2".
        public var changed: [String] = []
        /// Other settings: replicas, vnodes.
        public var settings: [String] = []
        public var isEmpty: Bool { added.isEmpty && removed.isEmpty && changed.isEmpty && settings.isEmpty }

        public var description: String {
            guard !isEmpty else { return "no change" }
            var parts: [String] = []
            if !added.isEmpty {
                parts.append("added " + added.map { "node\($0.id) (\($0.address), domain \($0.domain), weight \(ClusterNode.format($0.weight)))" }
                    .joined(separator: ", "))
            }
            if !removed.isEmpty { parts.append("removed " + removed.map { "node\($0.id) (\($0.address))" }.joined(separator: ", ")) }
            parts += changed + settings
            return parts.joined(separator: "; ")
        }
    }

    static func format(_ weight: Double) -> String {
        weight == weight.rounded() ? String(Int(weight)) : String(weight)
    }

    /// Loads `path` and applies it (``reload(config:)``); an invalid file is refused with its
    /// `FILE:LINE:` error.
    public func reload(path: String) throws(ReloadError) -> ReloadReport {
        let config: ClusterConfig
        do { config = try ClusterConfig.load(path: path) } catch { throw .invalid(error.description) }
        return try reload(config: config)
    }

    /// Applies a new nodes.conf while serving: the new ring and replication factor for every read
    /// and write from now on, clients for new peers (and for peers whose address or auth
    /// changed), the peer port's allowed ids, then the hand-off of the keys whose placement
    /// changed, in the background (``waitForHandOff(timeout:)``) — the code a start runs.
    /// Refused, with nothing changed: this node's id, address, slice or domain changed, or the
    /// key file did (the peer port is bound and its key fixed), a node was removed, or the config
    /// does not fit the pool.
    public func reload(config new: ClusterConfig) throws(ReloadError) -> ReloadReport {
        return try reloading.withLock { _ throws(ReloadError) -> ReloadReport in try applyReload(new) }
    }

    private func applyReload(_ new: ClusterConfig) throws(ReloadError) -> ReloadReport {
        let old = store.config
        guard new.localNodeID == old.localNodeID else {
            throw .needsRestart("local_node_id changed from \(old.localNodeID) to \(new.localNodeID)")
        }
        let was = old.localNode, now = new.localNode
        if now.address != was.address { throw .needsRestart("this node's address changed from \(was.address) to \(now.address)") }
        if now.cxlBase != was.cxlBase || now.cxlSize != was.cxlSize {
            throw .needsRestart("this node's slice changed from \(was.cxlBase)+\(was.cxlSize) to \(now.cxlBase)+\(now.cxlSize)")
        }
        if now.domain != was.domain { throw .needsRestart("this node's domain changed from \(was.domain) to \(now.domain)") }
        let newKey: PreSharedKey?
        do { newKey = try new.pskFile.map { path throws(PeerError) in try PreSharedKey.load(path: path) } } catch {
            throw .invalid("\(new.source): \(error)")
        }
        if newKey != psk { throw .needsRestart("the cluster key (psk_file) changed") }

        var report = ReloadReport()
        let oldNodes = Dictionary(uniqueKeysWithValues: old.nodes.map { ($0.id, $0) })
        let newNodes = Dictionary(uniqueKeysWithValues: new.nodes.map { ($0.id, $0) })
        report.added = new.nodes.filter { oldNodes[$0.id] == nil }
        report.removed = old.nodes.filter { newNodes[$0.id] == nil }
        if !report.removed.isEmpty {
            // Its partition would no longer be read, and an older copy of one of its keys on
            // another node (a former home) could be read in place of the newest write it holds.
            throw .unsupported("removing " + report.removed.map { "node\($0.id) (\($0.address))" }.joined(separator: ", ")
                + " is not supported by live reload: its keys' newest writes would no longer be read; "
                + "keep it in nodes.conf (a dead node is a failure the cluster handles)")
        }
        var reconnect: Set<NodeID> = []
        for node in new.nodes {
            guard let before = oldNodes[node.id] else { continue }
            var what: [String] = []
            if before.address != node.address { what.append("address \(before.address) → \(node.address)") }
            if before.authenticates != node.authenticates {
                what.append("auth \(before.authenticates ? "psk" : "none") → \(node.authenticates ? "psk" : "none")")
            }
            if !what.isEmpty { reconnect.insert(node.id) }
            if before.weight != node.weight { what.append("weight \(Self.format(before.weight)) → \(Self.format(node.weight))") }
            if before.domain != node.domain { what.append("domain \(before.domain) → \(node.domain)") }
            if before.cxlBase != node.cxlBase || before.cxlSize != node.cxlSize {
                what.append("slice \(before.cxlBase)+\(before.cxlSize) → \(node.cxlBase)+\(node.cxlSize)")
            }
            if !what.isEmpty { report.changed.append("node\(node.id): " + what.joined(separator: ", ")) }
        }
        let oldReplicas = store.replicas
        let newReplicas = max(1, min(replicasOverride ?? new.replicas, new.nodes.count))
        if newReplicas != oldReplicas { report.settings.append("replicas \(oldReplicas) → \(newReplicas)") }
        if new.virtualNodesPerWeight != old.virtualNodesPerWeight {
            report.settings.append("vnodes \(old.virtualNodesPerWeight) → \(new.virtualNodesPerWeight)")
        }

        // Clients: kept for unchanged peers, new for added or re-addressed ones.
        let current = clients.withLock { $0.current }
        var next: [NodeID: PeerClient] = [:]
        var created: [PeerClient] = []
        for node in new.nodes where node.id != new.localNodeID {
            if let client = current[node.id], !reconnect.contains(node.id) {
                next[node.id] = client
            } else {
                let client = Self.makeClient(node, config: new, psk: psk, group: group)
                next[node.id] = client
                created.append(client)
            }
        }
        do {
            try store.apply(config: new, clients: next, replicas: replicasOverride)
        } catch {
            let unused = created
            _ = blocking { for client in unused { await client.shutdown() } }
            throw .setup(error.description)
        }
        // Peers removed or replaced: shut down at the end (writes in flight on them finish or fail over).
        let retired = current.filter { next[$0.key] !== $0.value }.map(\.value)
        clients.withLock { state in
            state.current = next
            state.retired += retired
        }
        server.allowedPeers = Set(new.nodes.map(\.id))
        logger.notice("nodes.conf reloaded (\(new.source)): \(report); \(new.nodes.count) nodes, \(newReplicas) cop\(newReplicas == 1 ? "y" : "ies") of each key")
        if !report.isEmpty { startHandOff() }
        return report
    }

    /// Waits for writes in flight, closes the peer port and the connections, releases the partition.
    public func shutdown() {
        store.stop()
        // The hand-off stops waiting for nodes once heartbeats stop; its sends have timeouts.
        _ = waitForHandOff(timeout: .seconds(10))
        let server = server
        let all = clients.withLock { Array($0.current.values) + $0.retired }
        _ = blocking {
            try? await server.close()
            for client in all { await client.shutdown() }
        }
        local.close()
        try? group.syncShutdownGracefully()
    }
}
