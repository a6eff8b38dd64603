import Foundation
@testable import NetnsTestSupport
import Peering
import Testing

/// Three or four hosts, each a test bed (a server namespace with Debian's memcached and
/// `cxl-bmc attach --pool … --config nodes.conf`, and a client namespace on veth), the hosts'
/// server namespaces on one bridged network (`testbed.sh lan`). The hosts of the `default` CXL
/// domain map one pool in /dev/shm; a host of domain `rackB` maps a second pool and is reached
/// over the network. Needs root; failed (not skipped) in CI.
@Suite(.serialized, .enabled(if: Privilege.shouldRun, "needs root for BPF and network namespaces"))
struct ClusterNetnsTests {
    /// The cluster under test: hosts by node id, their daemons (restartable), the ring.
    final class Cluster {
        let testbeds: [Testbed]
        let directory: String
        let pools: [String: String]
        let domains: [String]
        let ring: HashRing
        private(set) var daemons: [ChildProcess?]
        private(set) var logs: [OutputFile]

        init(testbeds: [Testbed], domains: [String], directory: String, pools: [String: String], ring: HashRing) {
            self.testbeds = testbeds
            self.domains = domains
            self.directory = directory
            self.pools = pools
            self.ring = ring
            daemons = Array(repeating: nil, count: testbeds.count)
            logs = testbeds.map { _ in OutputFile() }
        }

        /// Starts node `id`'s daemon (with `nodeID.conf`, or `nodeID-SUFFIX.conf`) and waits until
        /// it serves its peer port.
        func start(_ id: Int, config suffix: String? = nil) throws {
            let tb = testbeds[id]
            let log = OutputFile()
            logs[id] = log
            let attach = try L1EndToEndTests.startAttach(tb, [
                "--tc-attach", "--memcached", "/usr/bin/memcached", "--pool", pools[domains[id]]!,
                "--config", "\(directory)/node\(id)\(suffix.map { "-" + $0 } ?? "").conf",
                "--memcached-addr", "\(tb.serverIP4):11211",
            ], log: log)
            daemons[id] = attach
            let deadline = ContinuousClock.now + .seconds(20)
            while !log.contents().contains("peers served on"), ContinuousClock.now < deadline {
                if attach.hasExited { throw HarnessError("node \(id): cxl-bmc attach exited: \(log.contents())") }
                usleep(50_000)
            }
            guard log.contents().contains("peers served on") else { throw HarnessError("node \(id): no cluster: \(log.contents())") }
        }

        /// kill -9: no shutdown, XDP and the pins stay; the partition stays in the pool.
        func kill9(_ id: Int) {
            daemons[id]?.signal(SIGKILL)
            _ = daemons[id]?.wait(timeout: .seconds(10))
            daemons[id] = nil
        }

        /// SIGTERM; the exit status.
        func terminate(_ id: Int) -> Int32? {
            guard let daemon = daemons[id] else { return nil }
            daemon.signal(SIGTERM)
            let status = daemon.wait(timeout: .seconds(20))
            if status == nil { daemon.signal(SIGKILL); _ = daemon.wait(timeout: .seconds(5)) }
            daemons[id] = nil
            return status
        }

        /// Until every running daemon sees every other up (a node started before its peers first
        /// sees them down, and its clients back off before retrying).
        func waitUntilAllUp(timeout: Duration = .seconds(15)) throws {
            let deadline = ContinuousClock.now + timeout
            var down: [Int: [Int]] = [:]
            repeat {
                down = [:]
                for id in testbeds.indices where daemons[id] != nil {
                    let nodes = try ClusterNetnsTests.downNodes(testbeds[id])
                    if nodes != [] { down[id] = nodes ?? [-1] }
                }
                if down.isEmpty { return }
                usleep(200_000)
            } while ContinuousClock.now < deadline
            throw HarnessError("peers still down after \(timeout) (node: down nodes, -1 = no status yet): \(down)")
        }

        /// Every node's cluster counters (published by the daemon once a second).
        func counters(_ id: Int, _ object: String = "cluster") throws -> [String: Int] {
            try ClusterNetnsTests.counters(testbeds[id], object)
        }

        /// Sets `values` (key → (flags, value)) through node `id`'s memcached in one TCP request:
        /// noreply sets, then one acknowledged set, so all were applied when it answers.
        func set(via id: Int, _ values: [(key: String, flags: UInt32, value: String)]) throws {
            var text = ""
            for (index, item) in values.enumerated() {
                let noreply = index == values.count - 1 ? "" : " noreply"
                text += "set \(item.key) \(item.flags) 0 \(item.value.utf8.count)\(noreply)\r\n\(item.value)\r\n"
            }
            let tb = testbeds[id]
            let reply = try tb.mcLoad(["raw", "--server", tb.serverIP4, "--timeout-ms", "5000", text])
            guard reply.status == 0, reply.stdout.uppercased().contains("STORED") else { throw HarnessError("sets through node \(id): \(reply)") }
        }

        /// GETs `keys` through node `id`'s memcached until every one hits (a miss makes the daemon
        /// promote the key from L3) or `timeout` passes; what the last round returned.
        func getAll(via id: Int, _ keys: [String], timeout: Duration = .seconds(15)) throws -> [String: McLoad.Get.Item] {
            let tb = testbeds[id]
            var found: [String: McLoad.Get.Item] = [:]
            let deadline = ContinuousClock.now + timeout
            repeat {
                let missing = keys.filter { found[$0] == nil }
                for chunk in stride(from: 0, to: missing.count, by: 40).map({ Array(missing[$0..<min(missing.count, $0 + 40)]) }) {
                    let got = try tb.mcLoad(["get", "--server", tb.serverIP4, "--json"] + chunk).json(McLoad.Get.self)
                    for hit in got.hits { found[hit.key] = hit }
                }
                if found.count == keys.count { break }
                usleep(150_000)
            } while ContinuousClock.now < deadline
            return found
        }

        /// The node that owns `key`.
        func home(_ key: String) -> Int { ring.owner(of: Array(key.utf8))! }
    }

    /// `cxl-bmc stats IFACE --json`: the daemon's counters of `object` (`cluster`: paths, peers;
    /// `l3`: the write-through and promotions).
    static func counters(_ tb: Testbed, _ object: String = "cluster") throws -> [String: Int] {
        let result = try runProcess(try Paths.product("cxl-bmc"), ["stats", tb.serverIF, "--json"])
        guard result.status == 0, let data = result.stdout.data(using: .utf8),
              let all = try JSONSerialization.jsonObject(with: data) as? [String: [String: Any]],
              let counters = all[tb.serverIF]?[object] as? [String: Int]
        else { throw HarnessError("no \(object) counters: \(result)") }
        return counters
    }

    /// The nodes a daemon believes down; nil before it published its status.
    static func downNodes(_ tb: Testbed) throws -> [Int]? {
        let result = try runProcess(try Paths.product("cxl-bmc"), ["stats", tb.serverIF, "--json"])
        guard result.status == 0, let data = result.stdout.data(using: .utf8),
              let all = try? JSONSerialization.jsonObject(with: data) as? [String: [String: Any]]
        else { return nil }
        return all[tb.serverIF]?["down_nodes"] as? [Int]
    }

    /// Node i in `domains[i]`, 16 MiB slices (each domain's pool made by `pool create --config`
    /// with a config of one of its nodes), a PSK, and Debian's memcached and a daemon on every host.
    /// Afterwards SIGTERM must stop every daemon cleanly and leave the pools clean.
    /// With `running`, only the first `running` nodes are in `nodeID.conf` and started (the pools
    /// are laid out for all); `nodeID-all.conf` names every node.
    static func withCluster(domains: [String], running: Int? = nil, _ body: (Cluster) throws -> Void) throws {
        try Privilege.require()
        try Testbed.withMany(domains.count) { testbeds in
            let addresses = try Testbed.lan(testbeds)
            let directory = NSTemporaryDirectory() + "cxl-bmc-netns-cluster-\(testbeds[0].name)"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let key = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
            FileManager.default.createFile(atPath: "\(directory)/peer.key", contents: Data(key.utf8),
                                           attributes: [.posixPermissions: 0o600])
            let slice = 16 << 20
            // Each domain's slices tile its own pool from offset 0 (other domains reuse the offsets).
            var nodeLines: [String] = []
            for (id, address) in addresses.enumerated() {
                let base = domains[..<id].filter { $0 == domains[id] }.count * slice
                nodeLines.append("node\(id)=\(address):11311:\(base):\(slice)")
                nodeLines.append("node\(id).domain=\(domains[id])")
            }
            let started = running ?? domains.count
            for id in domains.indices {
                for (name, count) in [("node\(id)-all", domains.count), ("node\(id)", started)] where id < count {
                    let text = (["local_node_id=\(id)", "num_nodes=\(count)", "psk_file=peer.key"] + nodeLines.prefix(2 * count))
                        .joined(separator: "\n") + "\n"
                    FileManager.default.createFile(atPath: "\(directory)/\(name).conf", contents: Data(text.utf8))
                }
            }
            var pools: [String: String] = [:]
            defer { for path in pools.values { unlink(path) } }
            for domain in Set(domains).sorted() {
                let path = "/dev/shm/cxl-bmc-netns-\(testbeds[0].name)-\(domain).pool"
                pools[domain] = path
                // A config of one of the domain's nodes lays out that domain's slices only.
                let member = domains.firstIndex(of: domain)!
                let create = try runProcess(try Paths.product("cxl-bmc"), [
                    "pool", "create", path, "--size", String(domains.filter { $0 == domain }.count * slice),
                    "--config", "\(directory)/node\(member)-all.conf",
                ])
                guard create.status == 0 else { throw HarnessError("pool create: \(create)") }
            }
            let config = try ClusterConfig.load(path: "\(directory)/node0-all.conf")
            let cluster = Cluster(testbeds: testbeds, domains: domains, directory: directory, pools: pools,
                                  ring: HashRing(config: config))
            defer { for id in domains.indices { cluster.kill9(id) } }
            for tb in testbeds { try tb.startMemcached(["-t", "1"]) }
            for id in 0..<started { try cluster.start(id) }
            try cluster.waitUntilAllUp()

            try body(cluster)

            for id in domains.indices where cluster.daemons[id] != nil {
                let log = cluster.logs[id]
                let status = cluster.terminate(id)
                #expect(status == 0, "node \(id): exit status after SIGTERM: \(String(describing: status)); log: \(log.contents())")
                #expect(log.contents().contains("peer port closed"), "node \(id): \(log.contents())")
                #expect(try !L1EndToEndTests.xdpAttached(testbeds[id]), "XDP left on node \(id)")
            }
            for (domain, path) in pools {
                let check = try runProcess(try Paths.product("cxl-bmc"), ["pool", "check", path])
                #expect(check.status == 0, "pool of \(domain) is clean after the daemons: \(check)")
            }
        }
    }

    /// Printable values of 1…300 bytes (no spaces: `mc-load get` prints them as they are).
    static func randomValue(_ key: String) -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:;!?#%&*+=/<>[]{}|~")
        return key + "=" + String((0..<Int.random(in: 1...300)).map { _ in alphabet.randomElement()! })
    }

    static func expectExact(_ got: [String: McLoad.Get.Item], _ want: [(key: String, flags: UInt32, value: String)],
                            _ context: String) {
        for item in want {
            guard let hit = got[item.key] else {
                Issue.record("\(context): \(item.key) was not served")
                continue
            }
            #expect(hit.value == item.value && hit.bytes == item.value.utf8.count, "\(context): \(item.key) \(hit.bytes) bytes, want \(item.value.utf8.count)")
        }
    }

    @Test("three hosts of one CXL domain and one of another: puts through any host are read byte-exact through every host; direct reads inside the domain, the network across")
    func putsThroughAnyHostAreReadThroughEveryHost() throws {
        try Self.withCluster(domains: ["default", "default", "default", "rackB"]) { cluster in
            let hosts = cluster.testbeds.indices
            // Keys written through each host; each host later reads the others' (its memcached lacks them).
            var written: [[(key: String, flags: UInt32, value: String)]] = hosts.map { _ in [] }
            for i in 0..<96 {
                let key = "pk\(i)"
                written[i % hosts.count].append((key, UInt32.random(in: 0...UInt32.max), Self.randomValue(key)))
            }
            // Every host owns keys, and every host's keys are written through another host too.
            for id in hosts { #expect(written.joined().contains { cluster.home($0.key) == id }, "node \(id) owns a key") }
            for id in hosts { try cluster.set(via: id, written[id]) }
            usleep(1_000_000) // written through to each key's home partition

            for reader in hosts {
                let wanted = hosts.filter { $0 != reader }.flatMap { written[$0] }
                let got = try cluster.getAll(via: reader, wanted.map(\.key))
                Self.expectExact(got, wanted, "read through node \(reader)")
            }
            usleep(1_200_000) // the daemons publish their counters once a second
            let rackB = hosts.last!
            for reader in hosts {
                let c = try cluster.counters(reader)
                let read = hosts.filter { $0 != reader }.flatMap { written[$0] }.map { cluster.home($0.key) }
                let byPath = (local: read.filter { $0 == reader }.count,
                              direct: read.filter { $0 != reader && cluster.domains[$0] == cluster.domains[reader] }.count,
                              network: read.filter { cluster.domains[$0] != cluster.domains[reader] }.count)
                // Repeated GETs before a promotion lands can look a key up twice: at least, never a wrong path.
                #expect(c["local_hits"]! >= byPath.local && c["direct_hits"]! >= byPath.direct
                        && c["remote_hits"]! >= byPath.network, "node \(reader): \(c), expected at least \(byPath)")
                if reader == rackB {
                    #expect(c["direct_hits"] == 0 && c["remote_hits"]! > 0, "rackB reads the default domain over the network: \(c)")
                } else {
                    #expect(c["direct_hits"]! > 0 && c["remote_hits"]! > 0, "direct inside the domain, network to rackB: \(c)")
                }
            }
        }
    }

    typealias Write = (key: String, flags: UInt32, value: String)

    static func writes(_ prefix: String, _ count: Int) -> [Write] {
        (0..<count).map { i in ("\(prefix)\(i)", UInt32.random(in: 0...UInt32.max), randomValue("\(prefix)\(i)")) }
    }

    @Test("one host's daemon killed mid-load: its keys stay readable by direct reads, writes fail over with no error to callers, and after its restart no read is stale")
    func killOneHostsDaemonMidLoad() throws {
        try Self.withCluster(domains: ["default", "default", "default"]) { cluster in
            let (a, b, c) = (0, 1, 2)
            let tbA = cluster.testbeds[a]
            // Written through A before the failure; C's and B's memcached never hold them.
            let before = Self.writes("fk", 90)
            try cluster.set(via: a, before)
            usleep(1_000_000)
            let homedOnB = before.filter { cluster.home($0.key) == b }
            #expect(homedOnB.count >= 15, "node 1 owns a third of the keys: \(homedOnB.count)")

            // The load: the stale checker writing through A (TCP, rising versions) and reading back
            // (UDP, L1 in front of memcached) while B's daemon dies.
            let out = OutputFile()
            let load = try ChildProcess(
                "/usr/bin/nsenter",
                ["--net=/run/netns/\(tbA.clientNS)", try Paths.product("mc-load"), "stale-check", "--server", tbA.serverIP4,
                 "--duration", "6", "--keys", "48", "--readers", "2", "--write-interval-us", "300", "--json"],
                stdout: out.path, stderr: out.path)
            usleep(1_500_000)
            #expect(!load.hasExited, "the load must still run when the daemon dies: \(out.contents())")
            cluster.kill9(b)

            // B's partition stays in the shared pool: C reads B's keys directly, byte-exact.
            let during = try cluster.getAll(via: c, before.map(\.key))
            Self.expectExact(during, before, "through C while B's daemon is dead")
            // Writes through A while B is dead: new keys, and new values for the old ones.
            let fresh = Self.writes("gk", 90)
            let overwritten: [Write] = before.map { ($0.key, $0.flags &+ 1, Self.randomValue($0.key)) }
            try cluster.set(via: a, fresh + overwritten)

            #expect(load.wait(timeout: .seconds(60)) == 0, "\(out.contents())")
            let loadRun = ProcessResult(command: ["mc-load", "stale-check"], status: 0, stdout: out.contents(), stderr: "")
            let checked = try loadRun.json(McLoad.StaleCheck.self)
            #expect(checked.stale == 0 && checked.corrupt == 0 && checked.writes > 1000 && checked.reads > 1000, "\(out.contents())")
            usleep(1_500_000) // written through, counters published

            let countersA = try cluster.counters(a)
            let movedWrites = (fresh + overwritten).filter { cluster.home($0.key) == b }.count
            #expect(countersA["failover_writes"]! >= movedWrites, "A's writes of B's keys went to the next node: \(countersA)")
            #expect(countersA["writes_kept_locally"] == 0, "\(countersA)")
            #expect(try Self.downNodes(tbA) == [b])
            // No write was lost or refused on its way to L3: the write-through reports no failure.
            let l3A = try cluster.counters(a, "l3")
            #expect(l3A["failures"] == 0 && l3A["dropped"] == 0, "A's write-through: \(l3A)")
            let countersC = try cluster.counters(c)
            #expect(countersC["direct_hits"]! >= homedOnB.count, "B's keys read from B's partition: \(countersC)")
            // And what was written meanwhile is read through C (B's keys from the node they failed over to).
            Self.expectExact(try cluster.getAll(via: c, fresh.map(\.key)), fresh, "new keys through C while B is dead")

            // B restarts on the same pool: its partition still holds the older values of its keys.
            try cluster.start(b)
            try cluster.waitUntilAllUp()
            #expect(cluster.logs[b].contents().contains("reused"), "\(cluster.logs[b].contents())")
            // Through B (whose memcached holds none of them): every key's newest value, never the older one in B's partition.
            Self.expectExact(try cluster.getAll(via: b, overwritten.map(\.key)), overwritten, "overwritten keys through B after its restart")
            Self.expectExact(try cluster.getAll(via: b, fresh.map(\.key)), fresh, "new keys through B after its restart")
            // The checker's hot keys: B promotes exactly what A's memcached acknowledged last.
            let hot = (0..<48).map { "stale:\($0)" }
            let latest = try cluster.getAll(via: a, hot)
            #expect(latest.count == hot.count)
            let throughB = try cluster.getAll(via: b, hot)
            for key in hot {
                #expect(throughB[key]?.value == latest[key]?.value, "\(key) through B after the restart: not the newest write")
            }
            usleep(1_200_000)
            let countersB = try cluster.counters(b)
            let bHomedOverwritten = overwritten.filter { cluster.home($0.key) == b }.count
            #expect(countersB["direct_hits"]! >= bHomedOverwritten,
                    "B's own keys answered from the node holding the newer write: \(countersB)")

            // The restarted host's whole stack under load: no stale read.
            let tbB = cluster.testbeds[b]
            let afterRun = try tbB.mcLoad(["stale-check", "--server", tbB.serverIP4, "--duration", "2", "--readers", "2",
                                           "--write-interval-us", "300", "--json"], timeout: .seconds(30))
            let after = try afterRun.json(McLoad.StaleCheck.self)
            #expect(after.stale == 0 && after.corrupt == 0 && after.hits > 100, "\(afterRun)")
        }
    }

    @Test("a 4th host joins 3: every daemon restarted with the new nodes.conf, only the keys the new ring places on it move, and it serves them from its own partition")
    func aFourthHostJoins() throws {
        try Self.withCluster(domains: ["default", "default", "default", "default"], running: 3) { cluster in
            // The ring of the config the cluster runs now (3 nodes); `cluster.ring` is the 4-node one.
            let ring3 = HashRing(config: try ClusterConfig.load(path: "\(cluster.directory)/node0.conf"))
            let written = Self.writes("jk", 360)
            for id in 0..<3 { try cluster.set(via: id, Array(written[(id * 120)..<((id + 1) * 120)])) }
            usleep(1_500_000)
            for id in 0..<3 { #expect(try cluster.counters(id)["failover_writes"] == 0) }
            let moving = written.filter { cluster.home($0.key) == 3 }
            #expect(written.allSatisfy { cluster.home($0.key) == 3 || cluster.home($0.key) == ring3.owner(of: Array($0.key.utf8)) },
                    "a new node takes keys only to itself")

            // The new host first, then each old one restarted with the four-node config.
            try cluster.start(3, config: "all")
            for id in 0..<3 {
                #expect(cluster.terminate(id) == 0)
                try cluster.start(id, config: "all")
            }
            try cluster.waitUntilAllUp()
            // Each old host hands off in the background; wait for all of it to be answered.
            var handedOff: [[String: Int]] = []
            let deadline = ContinuousClock.now + .seconds(30)
            repeat {
                usleep(500_000)
                handedOff = try (0..<3).map { try cluster.counters($0) }
            } while ContinuousClock.now < deadline && handedOff.contains {
                ($0["handoff_applied"] ?? 0) + ($0["handoff_already_newer"] ?? 0) + ($0["handoff_failed"] ?? 0) < ($0["handoff_moved"] ?? 0)
            } || handedOff.map { $0["handoff_moved"] ?? 0 }.reduce(0, +) < moving.count
            let moved = handedOff.map { $0["handoff_moved"]! }.reduce(0, +)
            let fraction = Double(moved) / Double(written.count)
            print("a 4th host joins 3: \(moved) of \(written.count) keys handed off (\(String(format: "%.3f", fraction)))")
            #expect(moved == moving.count, "exactly the keys the new ring places on node 3: \(handedOff)")
            #expect((0.15...0.35).contains(fraction), "≈ 1/4 of the keys move: \(fraction)")
            #expect(handedOff.map { $0["handoff_applied"]! }.reduce(0, +) == moving.count, "\(handedOff)")
            #expect(handedOff.allSatisfy { $0["handoff_failed"] == 0 }, "\(handedOff)")
            #expect(try cluster.counters(3)["handoff_moved"] == 0)

            // The new host's memcached holds nothing: every key is promoted from L3, byte-exact, and
            // the ones now homed on it from its own partition.
            Self.expectExact(try cluster.getAll(via: 3, written.map(\.key)), written, "through the new host")
            usleep(1_200_000)
            let c = try cluster.counters(3)
            #expect(c["local_hits"]! >= moving.count, "moved keys served from node 3's own partition: \(c)")
        }
    }

    @Test("a 4th host joins 3 by live reload: the running daemons re-read nodes.conf on `cxl-bmc cluster reload` (SIGHUP), refuse a bad file and keep running, then move only the keys the new ring places on the new host; reads byte-exact everywhere, none stale")
    func aFourthHostJoinsByLiveReload() throws {
        try Self.withCluster(domains: ["default", "default", "default", "default"], running: 3) { cluster in
            let written = Self.writes("lr", 360)
            for id in 0..<3 { try cluster.set(via: id, Array(written[(id * 120)..<((id + 1) * 120)])) }
            usleep(1_500_000)
            let moving = written.filter { cluster.home($0.key) == 3 }
            let pids = (0..<3).map { cluster.daemons[$0]!.pid }
            func reload(_ id: Int) throws -> ProcessResult {
                try runProcess(try Paths.product("cxl-bmc"), ["cluster", "reload", cluster.testbeds[id].serverIF])
            }
            func waitForLog(_ id: Int, _ text: String, after offset: Int) -> Bool {
                let deadline = ContinuousClock.now + .seconds(10)
                while ContinuousClock.now < deadline {
                    if cluster.logs[id].contents().dropFirst(offset).contains(text) { return true }
                    usleep(100_000)
                }
                return false
            }
            let file = { (id: Int) in "\(cluster.directory)/node\(id).conf" }
            let good = try (0..<3).map { try String(contentsOfFile: "\(cluster.directory)/node\($0)-all.conf", encoding: .utf8) }

            // A broken file: refused with its line, the daemon keeps running on the three-node config.
            let before0 = cluster.logs[0].contents().count
            try (good[0] + "node3.weight=-1\n").write(toFile: file(0), atomically: true, encoding: .utf8)
            let refused = try reload(0)
            #expect(refused.status == 0 && refused.stdout.contains("sent SIGHUP"), "\(refused)")
            #expect(waitForLog(0, "nodes.conf reload refused: \(file(0)):\(good[0].split(separator: "\n").count + 1):", after: before0),
                    "\(cluster.logs[0].contents().dropFirst(before0))")
            #expect(cluster.daemons[0]?.hasExited == false)
            Self.expectExact(try cluster.getAll(via: 0, written.prefix(40).map(\.key)), Array(written.prefix(40)), "through node 0 after the refused reload")

            // The new host starts with the four-node config; each running daemon gets it by reload.
            try cluster.start(3, config: "all")
            for id in 0..<3 {
                let offset = cluster.logs[id].contents().count
                try good[id].write(toFile: file(id), atomically: true, encoding: .utf8)
                let sent = try reload(id)
                #expect(sent.status == 0, "\(sent)")
                #expect(waitForLog(id, "nodes.conf reloaded (\(file(id))): added node3 (", after: offset),
                        "node \(id): \(cluster.logs[id].contents().dropFirst(offset))")
            }
            for line in cluster.logs[0].contents().split(separator: "\n") where line.contains("nodes.conf reload") { print("node 0: \(line)") }
            #expect((0..<3).allSatisfy { cluster.daemons[$0]?.pid == pids[$0] && cluster.daemons[$0]?.hasExited == false },
                    "no daemon restarted")
            try cluster.waitUntilAllUp()
            var handedOff: [[String: Int]] = []
            let deadline = ContinuousClock.now + .seconds(30)
            repeat {
                usleep(500_000)
                handedOff = try (0..<3).map { try cluster.counters($0) }
            } while ContinuousClock.now < deadline && handedOff.contains {
                ($0["handoff_applied"] ?? 0) + ($0["handoff_already_newer"] ?? 0) + ($0["handoff_failed"] ?? 0) < ($0["handoff_moved"] ?? 0)
            } || handedOff.map { $0["handoff_moved"] ?? 0 }.reduce(0, +) < moving.count
            let moved = handedOff.map { $0["handoff_moved"]! }.reduce(0, +)
            let fraction = Double(moved) / Double(written.count)
            print("a 4th host joins 3 by live reload: \(moved) of \(written.count) keys handed off (\(String(format: "%.3f", fraction)))")
            #expect(moved == moving.count, "exactly the keys the new ring places on node 3: \(handedOff)")
            #expect((0.15...0.35).contains(fraction), "≈ 1/4 of the keys move: \(fraction)")
            #expect(handedOff.map { $0["handoff_applied"]! }.reduce(0, +) == moving.count, "\(handedOff)")
            #expect(handedOff.allSatisfy { $0["handoff_failed"] == 0 }, "\(handedOff)")
            for id in 0..<3 where handedOff[id]["handoff_moved"]! > 0 {
                #expect(cluster.logs[id].contents().contains("membership hand-off: scanned"), "node \(id)'s log says what moved")
            }

            // New values of some moved keys written through host 1 under the new ring; host 3's
            // memcached holds nothing, so every key it returns was promoted from L3: each must be
            // the newest write, byte-exact. Host 2 never held the rewritten keys: it reads them newest too.
            let rewritten = moving.filter { key in written[0..<240].contains { $0.key == key.key } }.prefix(20)
                .map { (key: $0.key, flags: $0.flags &+ 1, value: Self.randomValue($0.key + "v2")) }
            #expect(rewritten.count >= 5)
            try cluster.set(via: 1, Array(rewritten))
            usleep(1_000_000)
            var newest = Dictionary(uniqueKeysWithValues: written.map { ($0.key, $0) })
            for item in rewritten { newest[item.key] = item }
            let expected = written.map { newest[$0.key]! }
            Self.expectExact(try cluster.getAll(via: 3, written.map(\.key)), expected, "through the new host")
            Self.expectExact(try cluster.getAll(via: 2, rewritten.map(\.key)), Array(rewritten), "rewritten keys through host 2")
            usleep(1_200_000)
            let c = try cluster.counters(3)
            #expect(c["local_hits"]! >= moving.count, "moved keys served from node 3's own partition: \(c)")
        }
    }

    /// Until `condition` holds for the nodes `tb`'s daemon believes down.
    static func waitForDownNodes(_ tb: Testbed, timeout: Duration = .seconds(15), _ condition: ([Int]) -> Bool) throws {
        let deadline = ContinuousClock.now + timeout
        var last: [Int]?
        repeat {
            last = try downNodes(tb)
            if let last, condition(last) { return }
            usleep(200_000)
        } while ContinuousClock.now < deadline
        throw HarnessError("down nodes of \(tb.name) after \(timeout): \(String(describing: last))")
    }

    @Test("the link between two hosts cut mid-transfer: writes to the far host's keys fail over with no error to callers, its keys are missed (never wrong) while it is out of reach, and once the link is back every read is the newest write")
    func linkCutMidTransfer() throws {
        // Two CXL domains: everything between the hosts goes over the network.
        try Self.withCluster(domains: ["default", "rackB"]) { cluster in
            let (a, b) = (0, 1)
            let (tbA, tbB) = (cluster.testbeds[a], cluster.testbeds[b])
            let keys = (0..<600).map { "lk\($0)" }.filter { cluster.home($0) == b }.prefix(60).map { $0 }
            #expect(keys.count == 60, "node 1 owns about half the keys")
            let onlyAtB = (0..<600).map { "lb\($0)" }.filter { cluster.home($0) == b }.prefix(20).map { $0 }
            // v1 of `keys`, and `onlyAtB`, written through B: B's memcached and partition hold them.
            let v1 = keys.map { (key: $0, flags: UInt32(1), value: Self.randomValue($0)) }
            let atB = onlyAtB.map { (key: $0, flags: UInt32(3), value: Self.randomValue($0)) }
            try cluster.set(via: b, v1 + atB)
            usleep(1_000_000)

            // B's port on the hosts' bridge goes down while A writes v2 through to B, their home.
            func link(_ state: String) throws {
                let r = try runProcess("/sbin/ip", ["-n", "\(tbA.name)-lan", "link", "set", "\(tbB.name)-l", state])
                guard r.status == 0 else { throw HarnessError("ip link set \(state): \(r)") }
            }
            let v2 = keys.map { (key: $0, flags: UInt32(2), value: Self.randomValue($0)) }
            try cluster.set(via: a, Array(v2[..<30]))
            try link("down")
            var linkDown = true
            defer { if linkDown { try? link("up") } }
            try cluster.set(via: a, Array(v2[30...])) // memcached answers at once; the write-through cannot reach B
            try Self.waitForDownNodes(tbA) { $0 == [b] }
            usleep(2_500_000) // the peer request timeout (1 s) and the failovers after it
            let during = try cluster.counters(a)
            #expect(during["failover_writes"]! > 0 && during["peer_errors"]! > 0, "writes for B's keys failed over: \(during)")
            #expect(try cluster.counters(a, "l3")["failures"] == 0, "no write-through failure: every write found a home")

            // While B is out of reach, A's misses of B's keys are misses, never a wrong value.
            let cut = try cluster.getAll(via: a, onlyAtB, timeout: .seconds(2))
            Self.expectExact(cut, atB.filter { cut[$0.key] != nil }, "read through node 0 while the link is down")

            try link("up")
            linkDown = false
            try Self.waitForDownNodes(tbA) { $0.isEmpty }
            try Self.waitForDownNodes(tbB) { $0.isEmpty }
            // A reaches B's partition again: the keys only B held are promoted, byte-exact.
            Self.expectExact(try cluster.getAll(via: a, onlyAtB), atB, "read through node 0 after the link came back")
            // B's memcached restarts empty: each key read through B is v2 — from B's partition for
            // the writes made before the cut, from A's (a network read) for the ones failed over —
            // never the older v1 B's partition still holds for those.
            kill(tbB.memcachedPIDs.last!, SIGKILL)
            usleep(300_000)
            _ = try tbB.startMemcached(["-t", "1"])
            Self.expectExact(try cluster.getAll(via: b, keys), v2, "read through node 1 after its memcached restarted")
            usleep(1_200_000) // the daemons publish their counters once a second
            let after = try cluster.counters(b)
            #expect(after["remote_hits"]! >= 30, "the failed-over writes were read from node 0 over the network: \(after)")
        }
    }
}
