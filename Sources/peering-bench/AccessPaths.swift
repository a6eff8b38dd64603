import CXLTier
import Foundation
import L3Cluster
import L3Sync
import Peering

/// The cluster tier's lookup cost by access path: two nodes in this process, one pool in
/// /dev/shm; the keys homed on node 1 are looked up through node 0, once with both nodes in one
/// CXL domain (node 1's partition read directly) and once in two domains (over loopback TCP).
/// Each lookup is the daemon's real one (`ClusterL3Store.get`: the key's nodes and this host's
/// partition, newest version wins).
enum AccessPathBench {
    struct Figures {
        var p50: Double
        var p99: Double
        var mean: Double
    }

    static func measure(sameDomain: Bool, lookups: Int, valueSize: Int) throws -> Figures {
        let tag = "\(getpid())-\(sameDomain ? "direct" : "network")"
        let directory = NSTemporaryDirectory() + "peering-bench-\(tag)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        FileManager.default.createFile(atPath: directory + "/psk.key",
                                       contents: Data("peering-bench-key-0123456789abcdef".utf8),
                                       attributes: [.posixPermissions: 0o600])
        let slice = 32 << 20
        let ports = [Int.random(in: 30000...39999), Int.random(in: 40000...49999)]
        var poolPaths: [String] = []
        defer { poolPaths.forEach { unlink($0) } }
        var pools: [Pool] = []
        if sameDomain {
            let path = "/dev/shm/peering-bench-\(tag).pool"
            poolPaths.append(path)
            _ = try Pool.create(path: path, size: 2 * slice,
                                slices: [SliceSpec(ownerNode: 0, base: 0, size: slice), SliceSpec(ownerNode: 1, base: slice, size: slice)])
            pools = [try Pool(path: path), try Pool(path: path)]
        } else {
            for id in 0..<2 {
                let path = "/dev/shm/peering-bench-\(tag)-\(id).pool"
                poolPaths.append(path)
                _ = try Pool.create(path: path, size: slice, slices: [SliceSpec(ownerNode: id, base: 0, size: slice)])
                pools.append(try Pool(path: path))
            }
        }
        let nodes = try (0..<2).map { id -> ClusterNode in
            var lines = ["local_node_id=\(id)", "num_nodes=2", "psk_file=psk.key"]
            for n in 0..<2 {
                lines.append("node\(n)=127.0.0.1:\(ports[n]):\(sameDomain ? n * slice : 0):\(slice)")
                if !sameDomain { lines.append("node\(n).domain=d\(n)") }
            }
            let config = try ClusterConfig.parse(lines.joined(separator: "\n") + "\n", source: "bench", baseDirectory: directory)
            return try ClusterNode.start(config: config, pool: pools[id])
        }
        defer { nodes.forEach { $0.shutdown() } }
        Thread.sleep(forTimeInterval: 0.6) // heartbeats: both up
        let store = nodes[0].store
        let value = [UInt8](repeating: 0x61, count: valueSize)
        var keys: [[UInt8]] = []
        var i = 0
        while keys.count < 1000 {
            let key = Array("bench:\(i)".utf8)
            if store.ring.owner(of: key) == 1 { keys.append(key) }
            i += 1
        }
        for (n, key) in keys.enumerated() {
            try nodes[1].store.put(key: key, item: L3Item(value: value, flags: 0, exptimeUnix: 0, version: 1000 + UInt64(n)))
        }
        var samples: [Double] = []
        samples.reserveCapacity(lookups)
        for n in 0..<lookups {
            let start = ContinuousClock.now
            guard try store.get(key: keys[n % keys.count]) != nil else { throw CocoaError(.fileReadNoSuchFile) }
            let took = ContinuousClock.now - start
            samples.append(Double(took.components.seconds) + Double(took.components.attoseconds) / 1e18)
        }
        samples.sort()
        return Figures(p50: samples[samples.count / 2], p99: samples[samples.count * 99 / 100],
                       mean: samples.reduce(0, +) / Double(samples.count))
    }

    static func report(lookups: Int, valueSize: Int) {
        print("\n## Cluster lookups by access path\n")
        print("`ClusterL3Store.get` on node 0 of two, for \(lookups) lookups of keys homed on node 1 "
            + "(\(valueSize)-byte values; each lookup also reads node 0's own partition). Direct: node 1's partition "
            + "is in the pool node 0 maps. Network: node 1 is in another CXL domain, reached over loopback TCP.\n")
        print("| path | p50 | p99 | mean |")
        print("|---|---|---|---|")
        var results: [String: Figures] = [:]
        for (name, same) in [("direct read (same CXL domain)", true), ("network (other domain, loopback TCP)", false)] {
            do {
                let f = try measure(sameDomain: same, lookups: lookups, valueSize: valueSize)
                results[name] = f
                print(String(format: "| %@ | %.1f µs | %.1f µs | %.1f µs |", name, f.p50 * 1e6, f.p99 * 1e6, f.mean * 1e6))
            } catch {
                print("| \(name) | not measured: \(error) | | |")
            }
        }
        if let d = results["direct read (same CXL domain)"], let n = results["network (other domain, loopback TCP)"] {
            print(String(format: "\nnetwork ÷ direct: **%.0f×** at p50, %.0f× at p99.", n.p50 / d.p50, n.p99 / d.p99))
        }
    }
}
