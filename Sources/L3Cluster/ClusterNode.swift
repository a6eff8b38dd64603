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
/// writes through and promotes from.
public final class ClusterNode: @unchecked Sendable {
    public let config: ClusterConfig
    public let store: ClusterL3Store
    public let server: PeerServer
    public let local: CXLTierStore
    private let group: MultiThreadedEventLoopGroup
    private let clients: [PeerClient]

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
                var configuration = PeerClient.Configuration(localNodeID: config.localNodeID, peerNodeID: node.id,
                                                             psk: node.authenticates ? psk : nil)
                configuration.connectTimeout = .milliseconds(300)
                // A request's timeout runs from when it is queued; writes are bounded by
                // ClusterL3Store's per-peer slots, so this is a dead peer's cost, not a burst's.
                configuration.requestTimeout = .seconds(1)
                configuration.maxBackoff = .milliseconds(500)
                clients[node.id] = PeerClient(address: node.address, configuration: configuration, eventLoop: group.next())
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
            let node = ClusterNode(config: config, store: store, server: server, local: local, group: group,
                                   clients: Array(clients.values))
            node.startHandOff(wait: handOffWait, logger: logger)
            return node
        } catch {
            local.close()
            try? group.syncShutdownGracefully()
            throw error
        }
    }

    private init(config: ClusterConfig, store: ClusterL3Store, server: PeerServer, local: CXLTierStore,
                 group: MultiThreadedEventLoopGroup, clients: [PeerClient]) {
        self.config = config
        self.store = store
        self.server = server
        self.local = local
        self.group = group
        self.clients = clients
    }

    private let handOffResult = Mutex<ClusterL3Store.HandOffReport?>(nil)
    private let handOffDone = DispatchSemaphore(value: 0)

    /// Membership change: in the background, sends the keys this host's partition holds that the
    /// config's ring places on other nodes to those that need them (``ClusterL3Store/handOff(waitForNodes:concurrency:)``).
    private func startHandOff(wait: Duration, logger: Logger) {
        Thread.detachNewThread { [self] in
            let report = store.handOff(waitForNodes: wait)
            if report.moved > 0 || report.applied > 0 || report.failed > 0 { logger.notice("membership hand-off: \(report)") }
            handOffResult.withLock { $0 = report }
            handOffDone.signal()
        }
    }

    /// The hand-off's report once it finished (nil if not within `timeout`).
    public func waitForHandOff(timeout: Duration = .seconds(60)) -> ClusterL3Store.HandOffReport? {
        if let done = handOffResult.withLock({ $0 }) { return done }
        let seconds = Double(timeout.components.seconds) + Double(timeout.components.attoseconds) / 1e18
        guard handOffDone.wait(timeout: .now() + seconds) == .success else { return nil }
        handOffDone.signal() // for later callers
        return handOffResult.withLock { $0 }
    }

    /// Waits for writes in flight, closes the peer port and the connections, releases the partition.
    public func shutdown() {
        store.stop()
        // The hand-off stops waiting for nodes once heartbeats stop; its sends have timeouts.
        _ = waitForHandOff(timeout: .seconds(10))
        let server = server, clients = clients
        _ = blocking {
            try? await server.close()
            for client in clients { await client.shutdown() }
        }
        local.close()
        try? group.syncShutdownGracefully()
    }
}
