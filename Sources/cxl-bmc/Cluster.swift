import ArgumentParser
import Foundation
import NIOPosix
import Peering
import Synchronization

struct Cluster: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The peering cluster: nodes.conf, placement, reachability, live reload.",
        subcommands: [ClusterStatus.self, ClusterReload.self]
    )
}

struct ClusterReload: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reload",
        abstract: "Make the daemon attached to IFACE re-read its nodes.conf and apply it live (SIGHUP).",
        discussion: """
            Finds the daemon by its status file (/run/cxl-bmc/IFACE.json) and sends it SIGHUP,             as `kill -HUP PID` would. The daemon re-reads the --config file it was started with:             an invalid file is refused with its FILE:LINE error, and a change that cannot be             applied live (this node's id, address, slice or domain, or the key file) is refused;             either way it keeps running on the config it had. Otherwise it applies the new ring,             connects to new peers and hands off the keys whose replicas changed. The outcome is             in the daemon's log (`nodes.conf reloaded: added node3 …` or `nodes.conf reload refused: …`).             With --config PATH the file is validated here first and nothing is sent when it is invalid.
            """
    )

    @Argument(help: "The interface the daemon is attached to.")
    var interface: String

    @Option(name: .long, help: ArgumentHelp("Validate this config before signalling (the daemon's own --config file).", valueName: "PATH"))
    var config: String?

    func run() throws {
        try CLI.run {
            if let config { _ = try ClusterConfig.load(path: config) }
            guard let status = DaemonStatus.read(interface: interface) else {
                throw ValidationError("no cxl-bmc daemon is attached to \(interface) (no live \(DaemonStatus.path(interface: interface)))")
            }
            guard status.cluster != nil else {
                throw ValidationError("the daemon on \(interface) (pid \(status.pid)) runs without --config: there is no nodes.conf to reload")
            }
            guard kill(status.pid, SIGHUP) == 0 else {
                throw ValidationError("cannot signal pid \(status.pid): \(String(cString: strerror(errno)))")
            }
            print("sent SIGHUP to the daemon on \(interface) (pid \(status.pid)): it re-reads its nodes.conf; see its log for the outcome")
        }
    }
}

struct ClusterStatus: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Validate nodes.conf, show nodes, slices, key shares, and whether each peer answers.",
        discussion: """
            Every node is contacted (TCP connect, the PSK handshake unless the node has auth=none, \
            then one `mn` round trip) with a short timeout. Exit status 1 when the config is invalid \
            or the key file unusable; unreachable peers are reported, not an error. \
            See docs/Peering.md for the config format.
            """
    )

    @Option(name: .long, help: ArgumentHelp("The cluster config.", valueName: "PATH"))
    var config: String = "/etc/cxl-bmc/nodes.conf"

    @Option(name: [.customShort("r"), .long], help: "Replication factor to show shares for (default: the config's replicas).")
    var replicas: Int?

    @Option(name: .long, help: ArgumentHelp("Reachability timeout per peer.", valueName: "MS"))
    var timeoutMs: Int = 500

    @Flag(name: .long, help: "Print JSON.")
    var json = false

    func run() throws {
        try CLI.run {
            let cluster = try ClusterConfig.load(path: config)
            let r = replicas ?? cluster.replicas
            guard (1...cluster.nodes.count).contains(r) else {
                throw ValidationError("--replicas must be between 1 and \(cluster.nodes.count)")
            }
            let psk = try cluster.pskFile.map { path throws(PeerError) in try PreSharedKey.load(path: path) }
            let report = ClusterReport.make(cluster: cluster, replicas: r, psk: psk, timeoutMs: timeoutMs)
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try encoder.encode(report), as: UTF8.self))
            } else {
                print(report.text)
            }
        }
    }
}

struct ClusterReport: Codable {
    struct Node: Codable {
        var id: Int
        var address: String
        var local: Bool
        var domain: String
        var weight: Double
        var cxlBase: UInt64
        var cxlSize: UInt64
        var auth: String
        /// Fraction of keys it owns (its ring arcs).
        var keyShare: Double
        /// Fraction of keys it holds a copy of, among `replicas` (sampled).
        var replicaShare: Double
        var reachable: Bool?
        var reachability: String
        var roundTripMs: Double?
    }

    var config: String
    var localNodeID: Int
    var replicas: Int
    var virtualNodesPerWeight: Int
    var pskFile: String?
    var nodes: [Node]

    static func make(cluster: ClusterConfig, replicas: Int, psk: PreSharedKey?, timeoutMs: Int) -> ClusterReport {
        let ring = HashRing(config: cluster)
        let shares = ring.shares()
        // Replica shares by sampling: the union of r arcs has no closed form worth the code.
        let samples = 100_000
        var held = [NodeID: Int]()
        for i in 0..<samples {
            for node in ring.owners(of: Array("sample:\(i)".utf8), replicas: replicas) { held[node, default: 0] += 1 }
        }
        let probes = probeAll(cluster: cluster, psk: psk, timeoutMs: timeoutMs)
        let nodes = cluster.nodes.map { node in
            let probe = probes[node.id]!
            return Node(
                id: node.id, address: node.address.description, local: node.id == cluster.localNodeID,
                domain: node.domain, weight: node.weight, cxlBase: node.cxlBase, cxlSize: node.cxlSize,
                auth: node.authenticates ? "psk" : "none", keyShare: shares[node.id] ?? 0,
                replicaShare: Double(held[node.id] ?? 0) / Double(samples),
                reachable: probe.reachable, reachability: probe.text, roundTripMs: probe.roundTripMs)
        }
        return ClusterReport(config: cluster.source, localNodeID: cluster.localNodeID, replicas: replicas,
                             virtualNodesPerWeight: cluster.virtualNodesPerWeight, pskFile: cluster.pskFile,
                             nodes: nodes)
    }

    struct Probe: Sendable {
        var reachable: Bool?
        var text: String
        var roundTripMs: Double?
    }

    /// Connect, handshake and one `mn` to every node, all at once.
    static func probeAll(cluster: ClusterConfig, psk: PreSharedKey?, timeoutMs: Int) -> [NodeID: Probe] {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let results = Mutex<[NodeID: Probe]>([:])
        let done = DispatchSemaphore(value: 0)
        let local = cluster.localNodeID
        let nodes = cluster.nodes
        Task {
            await withTaskGroup(of: (NodeID, Probe).self) { tasks in
                for node in nodes {
                    tasks.addTask {
                        if node.authenticates && psk == nil {
                            return (node.id, Probe(reachable: nil, text: "not checked: no psk_file in the config"))
                        }
                        var configuration = PeerClient.Configuration(
                            localNodeID: local, peerNodeID: node.id, psk: node.authenticates ? psk : nil)
                        configuration.connectTimeout = .milliseconds(Int64(timeoutMs))
                        configuration.handshakeTimeout = .milliseconds(Int64(timeoutMs))
                        configuration.requestTimeout = .milliseconds(Int64(timeoutMs))
                        let client = PeerClient(address: node.address, configuration: configuration,
                                                eventLoop: group.next())
                        defer { Task { await client.shutdown() } }
                        do {
                            try await client.connect()
                            let start = ContinuousClock.now
                            try await client.noop()
                            let elapsed = ContinuousClock.now - start
                            let ms = Double(elapsed.components.attoseconds) / 1e15 + Double(elapsed.components.seconds) * 1e3
                            let how = node.authenticates ? "authenticated" : "no auth"
                            return (node.id, Probe(reachable: true, text: "ok (\(how))", roundTripMs: ms))
                        } catch {
                            return (node.id, Probe(reachable: false, text: (error as? PeerError)?.message ?? "\(error)"))
                        }
                    }
                }
                for await (id, probe) in tasks { results.withLock { $0[id] = probe } }
            }
            done.signal()
        }
        done.wait()
        return results.withLock { $0 }
    }

    var text: String {
        var lines = ["cluster config \(config): \(nodes.count) node\(nodes.count == 1 ? "" : "s"), "
            + "this is node\(localNodeID), replicas=\(replicas), vnodes=\(virtualNodesPerWeight) per unit of weight",
            "pre-shared key: \(pskFile ?? "none (psk_file not set)")", ""]
        let header = ["node", "address", "domain", "weight", "CXL slice", "keys", replicas > 1 ? "copies" : nil,
                      "reachability"].compactMap { $0 }
        var rows = [header]
        for node in nodes {
            let slice = String(format: "0x%llx+0x%llx", node.cxlBase, node.cxlSize)
            var row = ["node\(node.id)\(node.local ? "*" : "")", node.address, node.domain,
                       String(format: "%g", node.weight), slice, String(format: "%.1f%%", node.keyShare * 100)]
            if replicas > 1 { row.append(String(format: "%.1f%%", node.replicaShare * 100)) }
            var reach = node.reachability
            if let ms = node.roundTripMs { reach += String(format: ", mn round trip %.2f ms", ms) }
            row.append(reach)
            rows.append(row)
        }
        let widths = header.indices.map { column in rows.map { $0[column].count }.max()! }
        for row in rows {
            lines.append(row.enumerated().map { column, cell in
                column == row.count - 1 ? cell : cell.padding(toLength: widths[column], withPad: " ", startingAt: 0)
            }.joined(separator: "  "))
        }
        lines.append("")
        lines.append("* this node. keys: share of keys each node owns (ring arcs)"
            + (replicas > 1 ? "; copies: share of keys it holds one of \(replicas) copies of." : "."))
        return lines.joined(separator: "\n")
    }
}
