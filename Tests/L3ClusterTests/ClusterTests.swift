import CXLTier
import Foundation
import L3Sync
import NIOCore
import NIOPosix
import Peering
import Testing
@testable import L3Cluster

/// Several cluster nodes in this process, each with its own peer port on loopback and its own
/// partition of a shared pool in /dev/shm (one CXL domain), or of a second pool (another domain).
/// The same code the daemon runs with --config; no memcached, no root needed.
@Suite("L3Cluster: access paths, replication, failover", .serialized)
struct ClusterTests {
    static let sliceSize = 8 << 20

    /// A cluster of `domains.count` nodes: node i in domain `domains[i]`; nodes of one domain share a pool.
    final class Cluster {
        let directory: String
        let domains: [String]
        let ports: [Int]
        var pools: [String: String] = [:]
        var nodes: [ClusterNode?]
        let configs: [ClusterConfig]

        init(domains: [String], replicas: Int = 1) throws {
            self.domains = domains
            directory = NSTemporaryDirectory() + "l3cluster-\(getpid())-\(UUID().uuidString.prefix(8))"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            ports = try domains.map { _ in try freePort() }
            let key = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
            FileManager.default.createFile(atPath: directory + "/psk.key", contents: Data(key.utf8),
                                           attributes: [.posixPermissions: 0o600])
            // Slices: within each domain's pool, the domain's nodes in order from offset 0.
            var offsets: [String: Int] = [:]
            var lines: [String] = []
            var slices: [String: [SliceSpec]] = [:]
            for (id, domain) in domains.enumerated() {
                let base = offsets[domain, default: 0]
                offsets[domain] = base + Self.sliceSizeFor
                lines.append("node\(id)=127.0.0.1:\(ports[id]):\(base):\(Self.sliceSizeFor)")
                lines.append("node\(id).domain=\(domain)")
                slices[domain, default: []].append(SliceSpec(ownerNode: id, base: base, size: Self.sliceSizeFor))
            }
            for (domain, specs) in slices {
                let path = "/dev/shm/l3cluster-\(getpid())-\(UUID().uuidString.prefix(8))-\(domain).pool"
                _ = try Pool.create(path: path, size: offsets[domain]!, slices: specs)
                pools[domain] = path
            }
            let base = directory
            configs = try domains.indices.map { id in
                let text = (["local_node_id=\(id)", "num_nodes=\(domains.count)", "psk_file=psk.key",
                             "replicas=\(replicas)"] + lines).joined(separator: "\n") + "\n"
                return try ClusterConfig.parse(text, source: "node\(id).conf", baseDirectory: base)
            }
            nodes = Array(repeating: nil, count: domains.count)
            for id in domains.indices { try start(id) }
            waitUntilAllUp()
        }

        /// Until every node's heartbeats have reached every other (a node started before its
        /// peers first sees them down).
        func waitUntilAllUp() {
            let deadline = ContinuousClock.now + .seconds(5)
            while ContinuousClock.now < deadline, nodes.contains(where: { !($0?.store.downNodes.isEmpty ?? true) }) {
                Thread.sleep(forTimeInterval: 0.05)
            }
            #expect(nodes.allSatisfy { $0?.store.downNodes.isEmpty ?? true }, "peers still down after 5 s")
        }

        static let sliceSizeFor = ClusterTests.sliceSize

        func start(_ id: Int) throws {
            let pool = try Pool(path: pools[domains[id]]!)
            nodes[id] = try ClusterNode.start(config: configs[id], pool: pool)
        }

        func stop(_ id: Int) {
            nodes[id]?.shutdown()
            nodes[id] = nil
        }

        func store(_ id: Int) -> ClusterL3Store { nodes[id]!.store }

        /// Every node's writes answered.
        func drain() { for node in nodes.compactMap({ $0 }) { #expect(node.store.drain(timeout: .seconds(10))) } }

        deinit {
            for id in nodes.indices { stop(id) }
            for path in pools.values { try? FileManager.default.removeItem(atPath: path) }
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    static func item(_ key: String, version: UInt64, flags: UInt32 = 7, exptime: Int64 = 0) -> L3Item {
        L3Item(value: Array("value of \(key) at \(version) ".utf8) + (0..<UInt8(version % 200)).map { $0 },
               flags: flags, exptimeUnix: exptime, version: version)
    }

    static func key(_ i: Int) -> [UInt8] { Array("key:\(i)".utf8) }

    @Test("puts through any node are read byte-exact through every node; inside one CXL domain by direct reads")
    func oneDomain() throws {
        let cluster = try Cluster(domains: ["default", "default", "default"])
        for i in 0..<300 {
            try cluster.store(i % 3).put(key: Self.key(i), item: Self.item("key:\(i)", version: 1000 + UInt64(i)))
        }
        cluster.drain()
        for reader in 0..<3 {
            for i in 0..<300 {
                let got = try cluster.store(reader).get(key: Self.key(i))
                #expect(got == Self.item("key:\(i)", version: 1000 + UInt64(i)), "node \(reader), key:\(i)")
            }
            let c = cluster.store(reader).snapshot
            #expect(c.localHits > 50 && c.directHits > 150, "node \(reader): \(c)")
            #expect(c.remoteHits == 0 && c.misses == 0, "node \(reader): \(c)")
            #expect(c.failoverWrites == 0 && c.peerErrors == 0 && c.peerWrites > 50, "all nodes up: \(c)")
        }
        // Paths are decided per key: every home other than this host is a direct read here.
        let store = cluster.store(0)
        for i in 0..<50 {
            let home = store.ring.owner(of: Self.key(i))!
            #expect(store.homePath(of: Self.key(i)) == (home == 0 ? .local : .direct))
        }
    }

    @Test("across CXL domains the network path serves, byte-exact")
    func twoDomains() throws {
        let cluster = try Cluster(domains: ["default", "default", "rackB"])
        for i in 0..<200 {
            try cluster.store(0).put(key: Self.key(i), item: Self.item("key:\(i)", version: 5000 + UInt64(i), exptime: 4_000_000_000))
        }
        cluster.drain()
        for reader in [1, 2] {
            for i in 0..<200 {
                let got = try cluster.store(reader).get(key: Self.key(i))
                #expect(got?.value == Self.item("key:\(i)", version: 5000 + UInt64(i)).value)
                #expect(got?.version == 5000 + UInt64(i))
                #expect(got?.flags == 7)
                // TTL crosses the network as seconds left: within a second of the absolute time.
                #expect(got.map { abs($0.exptimeUnix - 4_000_000_000) <= 1 } == true)
            }
        }
        let b = cluster.store(2).snapshot
        #expect(b.remoteHits > 0 && b.directHits == 0, "rackB node: \(b)")
        let one = cluster.store(1).snapshot
        #expect(one.remoteHits > 0 && one.directHits > 0, "node 1: \(one)")
        #expect(cluster.store(0).members[2]?.path == .network)
        #expect(cluster.store(2).members[0]?.path == .network)
    }

    @Test("a dead owner's keys stay readable by direct reads, writes fail over, and after it rejoins no read is older than an acknowledged write")
    func failover() throws {
        let cluster = try Cluster(domains: ["default", "default", "default"])
        let keys = (0..<300).map(Self.key)
        for (i, key) in keys.enumerated() {
            try cluster.store(0).put(key: key, item: Self.item("key:\(i)", version: 100 + UInt64(i)))
        }
        cluster.drain()
        let ring = cluster.store(0).ring
        let homedOn1 = keys.indices.filter { ring.owner(of: keys[$0]) == 1 }
        #expect(homedOn1.count > 50)

        cluster.stop(1)
        // Still readable: node 1's partition is in the shared pool.
        for i in homedOn1 {
            #expect(try cluster.store(2).get(key: keys[i])?.version == 100 + UInt64(i))
        }
        #expect(cluster.store(2).snapshot.directHits >= UInt64(homedOn1.count))
        // New writes and deletes of node 1's keys, through node 0: acknowledged by another node.
        var latest: [Int: UInt64?] = [:]
        for i in homedOn1 {
            if i % 4 == 0 {
                try cluster.store(0).delete(key: keys[i], version: 10_000 + UInt64(i))
                latest[i] = .some(nil)
            } else {
                try cluster.store(0).put(key: keys[i], item: Self.item("key:\(i)", version: 10_000 + UInt64(i)))
                latest[i] = 10_000 + UInt64(i)
            }
        }
        cluster.drain()
        #expect(cluster.store(0).snapshot.failoverWrites >= UInt64(homedOn1.count))
        #expect(cluster.store(0).downNodes.contains(1))
        for reader in [0, 2] {
            for i in homedOn1 {
                #expect(try cluster.store(reader).get(key: keys[i])?.version == latest[i]!, "node \(reader), key:\(i)")
            }
        }

        // Rejoin: its partition still holds the old versions; reads must not return them.
        try cluster.start(1)
        cluster.waitUntilAllUp()
        for reader in 0..<3 {
            for i in homedOn1 {
                #expect(try cluster.store(reader).get(key: keys[i])?.version == latest[i]!, "after rejoin: node \(reader), key:\(i)")
            }
        }
        // And writes go to node 1 again; a delayed older write changes nothing.
        let probe = homedOn1[1]
        try cluster.store(2).put(key: keys[probe], item: Self.item("k", version: 50_000))
        try cluster.store(2).put(key: keys[probe], item: Self.item("k", version: 40_000))
        cluster.drain()
        #expect(cluster.store(2).snapshot.peerWritesStale >= 1)
        #expect(try cluster.store(0).get(key: keys[probe])?.version == 50_000)
    }

    @Test("replication: r copies on distinct nodes; with r = 2 every key survives one partition's loss of it")
    func replication() throws {
        let cluster = try Cluster(domains: ["default", "default", "default"], replicas: 2)
        let keys = (0..<100).map(Self.key)
        for (i, key) in keys.enumerated() {
            try cluster.store(i % 3).put(key: key, item: Self.item("key:\(i)", version: 700 + UInt64(i)))
        }
        cluster.drain()
        // Read each partition on its own: every key is in exactly its two owners' partitions.
        let pool = try Pool(path: cluster.pools["default"]!)
        let readers = try (0..<3).map { id in try pool.reader(partition: pool.partitions.first { $0.ownerNode == id }!.id) }
        for (i, key) in keys.enumerated() {
            let owners = Set(cluster.store(0).ring.owners(of: key, replicas: 2))
            for id in 0..<3 {
                let held = readers[id].get(key)
                #expect((held != nil) == owners.contains(id), "key:\(i) on node \(id)")
            }
        }
    }

    @Test("flush_all on one host hides older items in every partition of the domain")
    func flushIsDomainWide() throws {
        let cluster = try Cluster(domains: ["default", "default"])
        for i in 0..<40 { try cluster.store(i % 2).put(key: Self.key(i), item: Self.item("key:\(i)", version: 100 + UInt64(i))) }
        cluster.drain()
        try cluster.store(0).flush(versionsBefore: 120, effectiveUnix: 0)
        for reader in 0..<2 {
            for i in 0..<40 {
                let got = try cluster.store(reader).get(key: Self.key(i))
                #expect((got == nil) == (100 + i < 120), "node \(reader) key:\(i)")
            }
        }
    }

    @Test("over the network a deletion's version outvotes an older copy on another node (EN c<version>)")
    func networkTombstoneOutvotesOlderCopy() async throws {
        // Three domains: every peer of every node is reached over the network.
        let cluster = try Cluster(domains: ["a", "b", "c"])
        let config = cluster.configs[0]
        let psk = try PreSharedKey.load(path: config.pskFile!)
        let ring = cluster.store(0).ring
        // A key whose two candidates (owner, next) are nodes 0 and 1: node 2 only reads it remotely.
        let key = try #require((0..<10_000).lazy.map(Self.key).first { Set(ring.owners(of: $0, replicas: 2)) == [0, 1] })
        let candidates = ring.owners(of: key, replicas: 2)
        func client(_ id: Int) -> PeerClient {
            PeerClient(address: config.node(id)!.address, configuration: .init(localNodeID: 2, peerNodeID: id, psk: psk),
                       eventLoop: NIOSingletons.posixEventLoopGroup.next())
        }
        let (holder, deleter) = (client(candidates[0]), client(candidates[1]))
        defer { Task { await holder.shutdown(); await deleter.shutdown() } }
        // The owner holds a put at version 100; the next node (where a failed-over delete lands) deleted it at 200.
        #expect(try await holder.set(key, value: Array("old".utf8), version: 100) == .stored(cas: 100))
        #expect(try await deleter.delete(key, version: 200) == .deleted)
        #expect(try await deleter.lookup(key) == .deleted(version: 200))
        let reader = cluster.store(2)
        #expect(reader.members[candidates[0]]?.path == .network && reader.members[candidates[1]]?.path == .network)
        #expect(try reader.get(key: key) == nil, "deleted at 200 must hide the copy written at 100")
        // A newer put wins over the deletion again.
        #expect(try await holder.set(key, value: Array("new".utf8), version: 300) == .stored(cas: 300))
        #expect(try reader.get(key: key)?.value == Array("new".utf8))
        #expect(try reader.get(key: key)?.version == 300)
    }

    @Test("membership change: a 4th node joins 3 — only the keys the ring now places on it move (≈ 1/4), with their versions, never over a newer write")
    func membershipChangeMovesOnlyTheKeysThatMove() throws {
        let directory = NSTemporaryDirectory() + "l3cluster-join-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let key = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        FileManager.default.createFile(atPath: directory + "/psk.key", contents: Data(key.utf8),
                                       attributes: [.posixPermissions: 0o600])
        let ports = try (0..<4).map { _ in try freePort() }
        // The pool is laid out for four nodes; the first three run with a three-node config.
        let path = "/dev/shm/l3cluster-join-\(getpid())-\(UUID().uuidString.prefix(8)).pool"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let pool = try Pool.create(path: path, size: 4 * Self.sliceSize,
                                   slices: (0..<4).map { SliceSpec(ownerNode: $0, base: $0 * Self.sliceSize, size: Self.sliceSize) })
        func config(_ id: Int, nodes: Int) throws -> ClusterConfig {
            let lines = ["local_node_id=\(id)", "num_nodes=\(nodes)", "psk_file=psk.key"]
                + (0..<nodes).map { "node\($0)=127.0.0.1:\(ports[$0]):\($0 * Self.sliceSize):\(Self.sliceSize)" }
            return try ClusterConfig.parse(lines.joined(separator: "\n") + "\n", source: "node\(id).conf", baseDirectory: directory)
        }
        var nodes: [ClusterNode?] = Array(repeating: nil, count: 4)
        defer { for node in nodes { node?.shutdown() } }
        /// Until every running node has completed a heartbeat round since now and sees every peer up
        /// (before its first round a node presumes its peers up; writes then could fail over).
        func waitUntilAllUp() {
            let rounds = nodes.map { $0?.store.heartbeatRounds.load(ordering: .acquiring) ?? 0 }
            let deadline = ContinuousClock.now + .seconds(10)
            while ContinuousClock.now < deadline, nodes.indices.contains(where: { id in
                guard let store = nodes[id]?.store else { return false }
                return store.heartbeatRounds.load(ordering: .acquiring) <= rounds[id] || !store.downNodes.isEmpty
            }) { usleep(50_000) }
        }

        // Three nodes; 3000 keys, each written through its home node (local writes: no peer
        // timeout on a busy machine can fail a write over, so every key is in its home partition).
        for id in 0..<3 { nodes[id] = try ClusterNode.start(config: try config(id, nodes: 3), pool: try Pool(path: path)) }
        waitUntilAllUp()
        let keys = (0..<3000).map(Self.key)
        var latest = keys.indices.map { 1000 + UInt64($0) }
        let ring3 = nodes[0]!.store.ring
        for (i, key) in keys.enumerated() {
            try nodes[ring3.owner(of: key)!]!.store.put(key: key, item: Self.item("key:\(i)", version: latest[i]))
        }
        for node in nodes { #expect(node?.store.drain() ?? true) }
        for node in nodes.compactMap({ $0 }) {
            let c = node.store.snapshot
            #expect(c.failoverWrites == 0 && c.writesKeptLocally == 0 && c.peerWrites == 0, "\(c)")
        }
        #expect(nodes[0]!.waitForHandOff()?.moved == 0, "nothing moves while the membership is unchanged")
        for id in 0..<3 { nodes[id]!.shutdown(); nodes[id] = nil }

        // The 4th node starts with the four-node config; a write under the new ring reaches it
        // before the others hand their keys off (so theirs are older).
        let ring4 = HashRing(config: try config(3, nodes: 4))
        let moving = keys.indices.filter { ring4.owner(of: keys[$0]) == 3 }
        nodes[3] = try ClusterNode.start(config: try config(3, nodes: 4), pool: try Pool(path: path))
        let rewritten = Array(moving.prefix(25))
        for i in rewritten {
            latest[i] = 50_000 + UInt64(i)
            try nodes[3]!.store.put(key: keys[i], item: Self.item("key:\(i)", version: latest[i]))
        }
        // The three others restart with the new config: each hands off what it no longer owns.
        for id in 0..<3 { nodes[id] = try ClusterNode.start(config: try config(id, nodes: 4), pool: try Pool(path: path)) }
        let reports = try (0..<3).map { id in try #require(nodes[id]!.waitForHandOff(timeout: .seconds(60))) }
        #expect(nodes[3]!.waitForHandOff()?.moved == 0, "the new node holds only its own keys")
        let moved = reports.map(\.moved).reduce(0, +)
        let fraction = Double(moved) / Double(keys.count)
        print("membership change 3 → 4 nodes: \(moved) of \(keys.count) keys moved (\(String(format: "%.3f", fraction))); \(reports)")
        #expect((0.2...0.3).contains(fraction), "≈ 1/4 of the keys move: \(fraction)")
        #expect(moved == moving.count, "exactly the keys the new ring places on node 3: \(reports)")
        #expect(reports.map(\.applied).reduce(0, +) == moving.count - rewritten.count, "\(reports)")
        #expect(reports.map(\.alreadyNewer).reduce(0, +) == rewritten.count, "newer writes are kept: \(reports)")
        #expect(reports.allSatisfy { $0.failed == 0 }, "\(reports)")

        // Node 3's partition holds exactly the moved keys, each at its newest version.
        let partition3 = try pool.reader(partition: pool.partitions.first { $0.ownerNode == 3 }!.id)
        for (i, key) in keys.enumerated() {
            let held = partition3.get(key)
            #expect((held != nil) == moving.contains(i), "key:\(i) on node 3")
            if let held { #expect(held.version == latest[i] && held.value == Self.item("key:\(i)", version: latest[i]).value, "key:\(i)") }
        }
        // Every node reads every key at its newest version.
        waitUntilAllUp()
        for id in 0..<4 {
            for i in stride(from: 0, to: keys.count, by: 7) {
                #expect(try nodes[id]!.store.get(key: keys[i])?.version == latest[i], "node \(id), key:\(i)")
            }
        }
        // A second restart with the same config moves the same keys again, and changes nothing.
        nodes[0]!.shutdown()
        nodes[0] = try ClusterNode.start(config: try config(0, nodes: 4), pool: try Pool(path: path))
        let again = try #require(nodes[0]!.waitForHandOff(timeout: .seconds(60)))
        #expect(again.moved == reports[0].moved && again.applied == 0 && again.failed == 0, "\(again)")
    }

    @Test("r = 2: after a 4th node joins, every key is on each of its two new replicas, also when the replica it displaced is down; a former replica's older copy is never read")
    func membershipChangeFillsEveryNewReplica() throws {
        let directory = NSTemporaryDirectory() + "l3cluster-rjoin-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let secret = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        FileManager.default.createFile(atPath: directory + "/psk.key", contents: Data(secret.utf8),
                                       attributes: [.posixPermissions: 0o600])
        let ports = try (0..<4).map { _ in try freePort() }
        let path = "/dev/shm/l3cluster-rjoin-\(getpid())-\(UUID().uuidString.prefix(8)).pool"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let pool = try Pool.create(path: path, size: 4 * Self.sliceSize,
                                   slices: (0..<4).map { SliceSpec(ownerNode: $0, base: $0 * Self.sliceSize, size: Self.sliceSize) })
        func config(_ id: Int, nodes: Int) throws -> ClusterConfig {
            let lines = ["local_node_id=\(id)", "num_nodes=\(nodes)", "psk_file=psk.key", "replicas=2"]
                + (0..<nodes).map { "node\($0)=127.0.0.1:\(ports[$0]):\($0 * Self.sliceSize):\(Self.sliceSize)" }
            return try ClusterConfig.parse(lines.joined(separator: "\n") + "\n", source: "node\(id).conf", baseDirectory: directory)
        }
        var nodes: [ClusterNode?] = Array(repeating: nil, count: 4)
        defer { for node in nodes { node?.shutdown() } }
        let partitions = try (0..<4).map { id in try pool.reader(partition: pool.partitions.first { $0.ownerNode == id }!.id) }
        func start(_ id: Int, nodes count: Int) throws {
            nodes[id] = try ClusterNode.start(config: try config(id, nodes: count), pool: try Pool(path: path),
                                              handOffWait: .seconds(3))
        }

        // Three nodes, r = 2; 1,500 keys, each in the partitions of both its replicas (written
        // there directly: no peer timeout on a busy machine can move a copy elsewhere).
        for id in 0..<3 { try start(id, nodes: 3) }
        let keys = (0..<1500).map(Self.key)
        var latest = keys.indices.map { 1000 + UInt64($0) }
        let ring3 = HashRing(config: try config(0, nodes: 3)), ring4 = HashRing(config: try config(0, nodes: 4))
        for (i, key) in keys.enumerated() {
            for id in ring3.owners(of: key, replicas: 2) {
                try nodes[id]!.local.put(key: key, item: Self.item("key:\(i)", version: latest[i]))
            }
        }
        for id in 0..<3 { nodes[id]!.shutdown(); nodes[id] = nil }

        // Node 3 joins; 0 and 2 restart with the four-node config while node 1 stays down. Keys
        // whose new replicas are {0 or 2, 3} and whose displaced replica is node 1 can reach node 3
        // only from the replica that stays.
        let entering = keys.indices.filter { i in
            let old = Set(ring3.owners(of: keys[i], replicas: 2)), new = ring4.owners(of: keys[i], replicas: 2)
            return new.contains(3) && old.contains(1) && !new.contains(1)
        }
        #expect(entering.count > 50, "the ring gives the case enough keys: \(entering.count)")
        try start(3, nodes: 4)
        for id in [0, 2] { try start(id, nodes: 4) }
        let reports = try [0, 2].map { id in try #require(nodes[id]!.waitForHandOff(timeout: .seconds(60))) }
        print("r = 2 join with node 1 down: \(reports)")
        /// The keys some node of their new replica set (`among`) lacks at their newest version.
        func missing(among running: Set<Int>) -> [String] {
            keys.indices.flatMap { i in
                ring4.owners(of: keys[i], replicas: 2).filter(running.contains).compactMap { id -> String? in
                    partitions[id].get(keys[i])?.version == latest[i] ? nil : "key:\(i) on node \(id)"
                }
            }
        }
        let lacking = missing(among: [0, 2, 3])
        #expect(lacking.count == 0, "\(lacking.count) copies missing, e.g. \(lacking.prefix(5))")
        #expect(reports.allSatisfy { $0.checked > 0 && $0.applied > 0 }, "\(reports)")

        // Node 1 comes back with the new config: now every key is on both of its replicas.
        try start(1, nodes: 4)
        let report1 = try #require(nodes[1]!.waitForHandOff(timeout: .seconds(60)))
        #expect(report1.failed == 0, "\(report1)")
        let lackingAll = missing(among: [0, 1, 2, 3])
        #expect(lackingAll.count == 0, "\(lackingAll.count) copies missing, e.g. \(lackingAll.prefix(5))")

        // A node that stopped being a key's replica keeps its copy (left to log reclaim), but a
        // newer write goes to the new replicas, and every read — its own included — returns that.
        let dropped = keys.indices.compactMap { i -> (Int, Int)? in
            let new = ring4.owners(of: keys[i], replicas: 2)
            return ring3.owners(of: keys[i], replicas: 2).first { !new.contains($0) }.map { (i, $0) }
        }
        #expect(dropped.count > 100, "\(dropped.count)")
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline, nodes.contains(where: { !$0!.store.downNodes.isEmpty }) { usleep(50_000) }
        for (i, _) in dropped {
            latest[i] = 90_000 + UInt64(i)
            try nodes[3]!.store.put(key: keys[i], item: Self.item("key:\(i)", version: latest[i]))
        }
        #expect(nodes[3]!.store.drain())
        for (i, former) in dropped {
            #expect(partitions[former].get(keys[i])?.version == 1000 + UInt64(i), "key:\(i): node \(former)'s old copy is kept")
            let read = try nodes[former]!.store.get(key: keys[i])
            #expect(read?.version == latest[i] && read?.value == Self.item("key:\(i)", version: latest[i]).value,
                    "key:\(i) read through its former replica node \(former)")
        }
        // A hand-off repeated now sends nothing: every copy is up to date.
        nodes[0]!.shutdown()
        try start(0, nodes: 4)
        let again = try #require(nodes[0]!.waitForHandOff(timeout: .seconds(60)))
        #expect(again.applied == 0 && again.failed == 0 && again.upToDate > 0, "\(again)")
    }

    @Test("live reload: three running nodes apply a four-node config (4th node in another CXL domain) — keys move ≈ 1/4 to it, reads stay byte-exact; a bad or unappliable config is refused and changes nothing")
    func liveReloadAddsANode() throws {
        let directory = NSTemporaryDirectory() + "l3cluster-reload-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let secret = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        FileManager.default.createFile(atPath: directory + "/psk.key", contents: Data(secret.utf8),
                                       attributes: [.posixPermissions: 0o600])
        let ports = try (0..<4).map { _ in try freePort() }
        let tag = "\(getpid())-\(UUID().uuidString.prefix(8))"
        let pathA = "/dev/shm/l3cluster-reload-\(tag)-A.pool", pathB = "/dev/shm/l3cluster-reload-\(tag)-B.pool"
        defer { for path in [pathA, pathB] { try? FileManager.default.removeItem(atPath: path) } }
        let poolA = try Pool.create(path: pathA, size: 3 * Self.sliceSize,
                                    slices: (0..<3).map { SliceSpec(ownerNode: $0, base: $0 * Self.sliceSize, size: Self.sliceSize) })
        let poolB = try Pool.create(path: pathB, size: Self.sliceSize, slices: [SliceSpec(ownerNode: 3, base: 0, size: Self.sliceSize)])
        func text(_ id: Int, nodes: Int, slice0: Int = 0, replicas: Int = 1) -> String {
            var lines = ["local_node_id=\(id)", "num_nodes=\(nodes)", "psk_file=psk.key", "replicas=\(replicas)"]
            for n in 0..<min(nodes, 3) { lines.append("node\(n)=127.0.0.1:\(ports[n]):\(n == 0 ? slice0 : n * Self.sliceSize):\(Self.sliceSize)") }
            if nodes == 4 { lines += ["node3=127.0.0.1:\(ports[3]):0:\(Self.sliceSize)", "node3.domain=rackB"] }
            return lines.joined(separator: "\n") + "\n"
        }
        func write(_ text: String, _ name: String) -> String {
            _ = FileManager.default.createFile(atPath: directory + "/" + name, contents: Data(text.utf8))
            return directory + "/" + name
        }
        var nodes: [ClusterNode?] = Array(repeating: nil, count: 4)
        defer { for node in nodes { node?.shutdown() } }
        for id in 0..<3 {
            nodes[id] = try ClusterNode.start(config: try ClusterConfig.load(path: write(text(id, nodes: 3), "node\(id).conf")),
                                              pool: try Pool(path: pathA), handOffWait: .seconds(5))
        }
        let keys = (0..<2000).map(Self.key)
        var latest = keys.indices.map { 1000 + UInt64($0) }
        let ring3 = nodes[0]!.store.ring
        for (i, key) in keys.enumerated() {
            try nodes[ring3.owner(of: key)!]!.store.put(key: key, item: Self.item("key:\(i)", version: latest[i]))
        }
        nodes[3] = try ClusterNode.start(config: try ClusterConfig.load(path: write(text(3, nodes: 4), "node3.conf")),
                                         pool: try Pool(path: pathB), handOffWait: .seconds(5))

        // Refused, and nothing changes: a config that does not validate, and one that moves this node's slice.
        let bad = write(text(0, nodes: 4).replacingOccurrences(of: "num_nodes=4", with: "num_nodes=4\nreplicas=9"), "bad.conf")
        #expect {
            _ = try nodes[0]!.reload(path: bad)
        } throws: { error in
            guard case .invalid(let message) = error as? ClusterNode.ReloadError else { return false }
            return message.hasPrefix(bad + ":") && message.contains("replicas")
        }
        #expect {
            _ = try nodes[0]!.reload(config: try ClusterConfig.parse(text(0, nodes: 4, slice0: 3 * Self.sliceSize),
                                                                     source: "moved.conf", baseDirectory: directory))
        } throws: { error in
            guard case .needsRestart(let what) = error as? ClusterNode.ReloadError else { return false }
            return what.contains("slice")
        }
        // Removing a node is refused too (its partition would no longer be read).
        let withoutNode2 = text(0, nodes: 3).replacingOccurrences(of: "num_nodes=3", with: "num_nodes=2")
            .split(separator: "\n").filter { !$0.hasPrefix("node2=") }.joined(separator: "\n") + "\n"
        #expect {
            _ = try nodes[0]!.reload(config: try ClusterConfig.parse(withoutNode2, source: "two.conf", baseDirectory: directory))
        } throws: { error in
            guard case .unsupported(let what) = error as? ClusterNode.ReloadError else { return false }
            return what.hasPrefix("removing node2 (127.0.0.1:\(ports[2]))")
        }
        #expect(nodes[0]!.config.nodes.count == 3 && nodes[0]!.store.ring.members.count == 3)
        #expect(try nodes[0]!.store.get(key: keys[0])?.version == latest[0])

        // The three apply the four-node config live (the files they run with, rewritten).
        let ring4 = HashRing(config: try ClusterConfig.parse(text(0, nodes: 4), baseDirectory: directory))
        let moving = keys.indices.filter { ring4.owner(of: keys[$0]) == 3 }
        for id in 0..<3 {
            let report = try nodes[id]!.reload(path: write(text(id, nodes: 4), "node\(id).conf"))
            #expect(report.added.map(\.id) == [3] && report.removed.isEmpty && report.changed.isEmpty, "\(report)")
            #expect("\(report)".contains("added node3 (127.0.0.1:\(ports[3]), domain rackB, weight 1)"), "\(report)")
        }
        let reports = try (0..<3).map { id in try #require(nodes[id]!.waitForHandOff(timeout: .seconds(60))) }
        let moved = reports.map(\.moved).reduce(0, +)
        print("live reload 3 → 4 nodes: \(moved) of \(keys.count) keys moved; \(reports)")
        #expect(moved == moving.count, "exactly the keys the new ring places on node 3: \(reports)")
        #expect((0.2...0.3).contains(Double(moved) / Double(keys.count)), "\(moved)")
        #expect(reports.map(\.applied).reduce(0, +) == moving.count && reports.allSatisfy { $0.failed == 0 }, "\(reports)")
        // Node 3's partition (another domain: reached only over the network) holds exactly the moved keys.
        let partition3 = try poolB.reader(partition: 0)
        for (i, key) in keys.enumerated() {
            let held = partition3.get(key)
            #expect((held != nil) == moving.contains(i), "key:\(i) on node 3")
            if let held { #expect(held.version == latest[i] && held.value == Self.item("key:\(i)", version: latest[i]).value) }
        }
        // Every node reads every key byte-exact (node 3 over the network, the others read node 3 so too).
        for id in 0..<4 {
            for i in stride(from: id, to: keys.count, by: 5) {
                let read = try nodes[id]!.store.get(key: keys[i])
                #expect(read?.version == latest[i] && read?.value == Self.item("key:\(i)", version: latest[i]).value,
                        "node \(id), key:\(i)")
            }
        }
        // A write under the new ring reaches node 3 through the client the reload made.
        for i in moving.prefix(20) {
            latest[i] = 80_000 + UInt64(i)
            try nodes[0]!.store.put(key: keys[i], item: Self.item("key:\(i)", version: latest[i]))
        }
        #expect(nodes[0]!.store.drain())
        for i in moving.prefix(20) {
            #expect(partition3.get(keys[i])?.version == latest[i], "key:\(i)")
            #expect(try nodes[1]!.store.get(key: keys[i])?.version == latest[i], "key:\(i) through node 1")
        }
        #expect(nodes[0]!.store.snapshot.failoverWrites == 0)
        // Reloading the same file again changes nothing and hands nothing off.
        let same = try nodes[1]!.reload(path: directory + "/node1.conf")
        #expect(same.isEmpty, "\(same)")

        // replicas=1 → 2 by reload: no node is displaced, so every second replica is filled by the
        // check step of the key's first (the one holding it), across domains too.
        for id in 0..<4 {
            let report = try nodes[id]!.reload(path: write(text(id, nodes: 4, replicas: 2), "node\(id).conf"))
            #expect(report.settings == ["replicas 1 → 2"] && report.added.isEmpty, "\(report)")
        }
        let second = try (0..<4).map { id in try #require(nodes[id]!.waitForHandOff(timeout: .seconds(60))) }
        print("live reload replicas 1 → 2: \(second)")
        #expect(second.allSatisfy { $0.failed == 0 }, "\(second)")
        let readers = try (0..<3).map { id in try poolA.reader(partition: poolA.partitions.first { $0.ownerNode == id }!.id) } + [partition3]
        var lacking: [String] = []
        for (i, key) in keys.enumerated() {
            for id in ring4.owners(of: key, replicas: 2) where readers[id].get(key)?.version != latest[i] {
                lacking.append("key:\(i) on node \(id)")
            }
        }
        #expect(lacking.count == 0, "\(lacking.count) replicas lack their key, e.g. \(lacking.prefix(5))")
    }

    @Test("a partition's index lists every key it holds once — live, deleted and expired — and nothing else")
    func indexedKeys() throws {
        let path = "/dev/shm/l3cluster-keys-\(getpid())-\(UUID().uuidString.prefix(8)).pool"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let pool = try Pool.create(path: path, size: Self.sliceSize, slices: [SliceSpec(ownerNode: 0, base: 0, size: Self.sliceSize)])
        let writer = try pool.writer(partition: 0)
        defer { writer.close() }
        for i in 0..<500 { _ = try writer.put(Self.key(i), Array("v\(i)".utf8), version: UInt64(10 + i)) }
        for i in stride(from: 0, to: 500, by: 5) { _ = try writer.delete(Self.key(i), version: 10_000 + UInt64(i)) }
        for i in 0..<50 { _ = try writer.put(Self.key(i), Array("again".utf8), version: 20_000 + UInt64(i)) } // overwrites
        _ = try writer.put(Array("expired".utf8), Array("x".utf8), exptime: 1, version: 30_000)
        let listed = try pool.reader(partition: 0).indexedKeys()
        #expect(listed.count == 501, "one entry per key")
        #expect(Set(listed) == Set((0..<500).map(Self.key) + [Array("expired".utf8)]))
    }

    @Test("versioned peer writes: an older E<version> is refused, a delete is remembered")
    func versionedPeerWrites() async throws {
        let cluster = try Cluster(domains: ["default", "rackB"])
        let config = cluster.configs[0]
        let peer = config.node(1)!
        let psk = try PreSharedKey.load(path: config.pskFile!)
        let client = PeerClient(address: peer.address,
                                configuration: .init(localNodeID: 0, peerNodeID: 1, psk: psk),
                                eventLoop: NIOSingletons.posixEventLoopGroup.next())
        defer { Task { await client.shutdown() } }
        let key = Array("versioned".utf8)
        #expect(try await client.set(key, value: Array("new".utf8), version: 2000) == .stored(cas: 2000))
        #expect(try await client.set(key, value: Array("old".utf8), version: 1000) == .notStored)
        #expect(try await client.get(key)?.value == Array("new".utf8))
        #expect(try await client.delete(key, version: 3000) == .deleted)
        #expect(try await client.set(key, value: Array("late".utf8), version: 2500) == .notStored)
        #expect(try await client.get(key) == nil)
        // A plain meta client (no E) still gets memcached's semantics.
        #expect(try await client.set(Array("plain".utf8), value: Array("a".utf8), mode: StoreMode.add) != StoreOutcome.notStored)
        #expect(try await client.set(Array("plain".utf8), value: Array("b".utf8), mode: StoreMode.add) == StoreOutcome.notStored)
    }
}

/// A TCP port nobody listens on right now (bind to 0, read it back, close).
func freePort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard bound else { throw CocoaError(.fileWriteUnknown) }
    return Int(UInt16(bigEndian: address.sin_port))
}
