import Testing
@testable import Peering

/// "key:<i>" as bytes, without building a String per key (1 M keys in a debug build).
func forEachKey(_ count: Int, _ body: ([UInt8]) -> Void) {
    var key = Array("key:".utf8)
    let prefix = key.count
    var digits = [UInt8](repeating: 0, count: 20)
    for i in 0..<count {
        key.removeSubrange(prefix...)
        var n = i
        var d = 0
        repeat {
            digits[d] = UInt8(ascii: "0") + UInt8(n % 10)
            n /= 10
            d += 1
        } while n > 0
        for j in stride(from: d - 1, through: 0, by: -1) { key.append(digits[j]) }
        body(key)
    }
}

extension PeeringTests {
    @Suite("HashRing")
    struct HashRingTests {
        @Test("the hash is fixed: the same values in every process")
        func stableHash() {
            // Golden values (FNV-1a 64 + fmix64, computed independently): a change of hash would
            // re-place every key of a running cluster.
            #expect(StableHash.hash64([]) == 0xefd0_1f60_ba99_2926)
            #expect(StableHash.hash64(Array("0-0".utf8)) == 0x658e_2f86_d6c3_d812)
            let a = StableHash.hash64(Array("key:1".utf8))
            #expect(a == StableHash.hash64(Array("key:1".utf8)))
            #expect(a != StableHash.hash64(Array("key:2".utf8)))
            #expect(StableHash.hash64(Array("foo".utf8)) == 0xaf85_ea55_6958_1d4c)
        }

        @Test("balance: 1 M keys over 3 nodes weighted 1:2:3 land within ±10 % of their weights")
        func weightedBalance() {
            let ring = HashRing(members: [.init(id: 0, weight: 1), .init(id: 1, weight: 2), .init(id: 2, weight: 3)])
            var counts = [0, 0, 0]
            let total = 1_000_000
            forEachKey(total) { counts[ring.owner(of: $0)!] += 1 }
            for (node, weight) in [1.0, 2.0, 3.0].enumerated() {
                let expected = Double(total) * weight / 6
                let deviation = abs(Double(counts[node]) - expected) / expected
                #expect(deviation < 0.10, "node \(node): \(counts[node]) keys, expected \(Int(expected))")
            }
            let shares = ring.shares()
            #expect(abs(shares.values.reduce(0, +) - 1) < 1e-9)
            for (node, weight) in [1.0, 2.0, 3.0].enumerated() {
                #expect(abs(shares[node]! - weight / 6) / (weight / 6) < 0.10)
                #expect(abs(shares[node]! - Double(counts[node]) / Double(total)) < 0.01)
            }
        }

        @Test("adding a 4th node moves about 1/4 of the keys, all of them to the new node")
        func addingANode() {
            let three = HashRing(members: (0..<3).map { .init(id: $0, weight: 1) })
            let four = HashRing(members: (0..<4).map { .init(id: $0, weight: 1) })
            var moved = 0
            var movedElsewhere = 0
            let total = 1_000_000
            forEachKey(total) { key in
                let before = three.owner(of: key)!
                let after = four.owner(of: key)!
                if before != after {
                    moved += 1
                    if after != 3 { movedElsewhere += 1 }
                }
            }
            let fraction = Double(moved) / Double(total)
            #expect(fraction > 0.225 && fraction < 0.275, "moved \(fraction)")
            #expect(movedElsewhere == 0)
        }

        @Test("removing a node moves only its keys")
        func removingANode() {
            let four = HashRing(members: (0..<4).map { .init(id: $0, weight: 1) })
            let withoutTwo = HashRing(members: [0, 1, 3].map { .init(id: $0, weight: 1) })
            var wrong = 0
            forEachKey(100_000) { key in
                let before = four.owner(of: key)!
                if before != 2 && withoutTwo.owner(of: key) != before { wrong += 1 }
            }
            #expect(wrong == 0)
        }

        @Test("replicas are distinct, start at the owner, and the second replica is the failover target")
        func replicas() {
            let ring = HashRing(members: (0..<5).map { .init(id: $0, weight: Double($0 + 1)) })
            let withoutOwner = { (owner: Int) in
                HashRing(members: (0..<5).filter { $0 != owner }.map { .init(id: $0, weight: Double($0 + 1)) })
            }
            var secondCounts = [Int: Int]()
            forEachKey(10_000) { key in
                let owners = ring.owners(of: key, replicas: 3)
                #expect(owners.count == 3)
                #expect(Set(owners).count == 3)
                #expect(owners.first == ring.owner(of: key))
                secondCounts[owners[1], default: 0] += 1
            }
            #expect(secondCounts.count == 5)
            // Asking for more replicas than nodes gives every node once.
            #expect(Set(ring.owners(of: Array("k".utf8), replicas: 9)) == Set(0..<5))
            #expect(ring.owners(of: Array("k".utf8), replicas: 0).isEmpty)
            // When the owner leaves, its keys go to what was their second replica.
            var mismatches = 0
            for owner in 0..<5 {
                let smaller = withoutOwner(owner)
                forEachKey(2_000) { key in
                    let owners = ring.owners(of: key, replicas: 2)
                    if owners[0] == owner && smaller.owner(of: key) != owners[1] { mismatches += 1 }
                }
            }
            #expect(mismatches == 0)
        }

        @Test("a ring from a config uses its weights and vnodes")
        func fromConfig() throws {
            let config = try ClusterConfig.parse("""
                local_node_id=0
                num_nodes=2
                node0=127.0.0.1:7000:0:1G
                node1=127.0.0.1:7001:1G:3G
                node1.weight=3
                vnodes=512
                """)
            let ring = HashRing(config: config)
            #expect(ring.virtualNodesPerWeight == 512)
            let shares = ring.shares()
            #expect(abs(shares[1]! - 0.75) < 0.05)
            #expect(HashRing(members: [.init(id: 7, weight: 1)]).shares() == [7: 1])
        }
    }
}
