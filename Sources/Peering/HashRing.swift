/// Consistent hashing with virtual nodes and weights (Ketama-style).
///
/// Every node puts `max(1, round(vnodes × weight))` points on a 64-bit ring; a point's position is
/// ``StableHash/hash64(_:)`` of `"<node id>-<point index>"`, so it depends only on that node — adding
/// or removing a node never moves another node's points, and only keys landing on the changed
/// node's arcs move. A key belongs to the first point at or after its hash (wrapping around);
/// its replicas are the next *distinct* nodes met walking on. The hash is fixed (not Swift's
/// per-process seeded `Hasher`), so every process and host computes the same placement.
public struct HashRing: Sendable {
    public struct Member: Hashable, Sendable {
        public var id: NodeID
        public var weight: Double
        public init(id: NodeID, weight: Double) {
            self.id = id
            self.weight = weight
        }
    }

    public let members: [Member]
    public let virtualNodesPerWeight: Int
    /// Sorted by position (ties broken by node id, deterministically).
    private let positions: [UInt64]
    private let owners: [NodeID]

    /// - Precondition: member ids are distinct, weights positive.
    public init(members: [Member], virtualNodesPerWeight: Int = ClusterConfig.defaultVirtualNodes) {
        precondition(Set(members.map(\.id)).count == members.count, "duplicate node ids")
        precondition(members.allSatisfy { $0.weight > 0 && $0.weight.isFinite }, "weights must be positive")
        self.members = members.sorted { $0.id < $1.id }
        self.virtualNodesPerWeight = virtualNodesPerWeight
        var points: [(UInt64, NodeID)] = []
        for member in self.members {
            let count = max(1, Int((Double(virtualNodesPerWeight) * member.weight).rounded()))
            points.reserveCapacity(points.count + count)
            for index in 0..<count {
                points.append((StableHash.hash64(Array("\(member.id)-\(index)".utf8)), member.id))
            }
        }
        points.sort { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }
        positions = points.map(\.0)
        owners = points.map(\.1)
    }

    /// The ring of a cluster config: its nodes, weights and `vnodes`.
    public init(config: ClusterConfig) {
        self.init(members: config.nodes.map { Member(id: $0.id, weight: $0.weight) },
                  virtualNodesPerWeight: config.virtualNodesPerWeight)
    }

    public var isEmpty: Bool { positions.isEmpty }

    /// The node that owns `key` (its first replica).
    public func owner<Key: Collection>(of key: Key) -> NodeID? where Key.Element == UInt8 {
        guard !positions.isEmpty else { return nil }
        return owners[firstPoint(atOrAfter: StableHash.hash64(key))]
    }

    /// Up to `replicas` distinct nodes for `key`: the owner, then the next distinct nodes clockwise.
    /// Fewer when the ring has fewer nodes.
    public func owners<Key: Collection>(of key: Key, replicas: Int) -> [NodeID] where Key.Element == UInt8 {
        guard !positions.isEmpty, replicas > 0 else { return [] }
        let wanted = min(replicas, members.count)
        var result: [NodeID] = []
        result.reserveCapacity(wanted)
        var index = firstPoint(atOrAfter: StableHash.hash64(key))
        for _ in 0..<positions.count {
            let node = owners[index]
            if !result.contains(node) {
                result.append(node)
                if result.count == wanted { break }
            }
            index = index + 1 == positions.count ? 0 : index + 1
        }
        return result
    }

    /// Each node's exact fraction of the hash space (its arcs' total length), summing to 1.
    public func shares() -> [NodeID: Double] {
        var shares: [NodeID: Double] = [:]
        for member in members { shares[member.id] = 0 }
        guard let last = positions.last else { return shares }
        var previous = last
        for (position, owner) in zip(positions, owners) {
            let arc = position &- previous  // wraps for the first point: the arc across zero
            shares[owner, default: 0] += Double(arc) / 18446744073709551616.0
            previous = position
        }
        if positions.count == 1 || Set(owners).count == 1 { shares[owners[0]] = 1 }
        return shares
    }

    /// Index of the first point at or after `hash`, wrapping to 0.
    private func firstPoint(atOrAfter hash: UInt64) -> Int {
        var low = 0
        var high = positions.count
        while low < high {
            let mid = (low + high) / 2
            if positions[mid] < hash { low = mid + 1 } else { high = mid }
        }
        return low == positions.count ? 0 : low
    }
}

/// A fixed 64-bit hash: FNV-1a over the bytes, then MurmurHash3's fmix64 finalizer so that keys
/// differing in one byte land far apart. Identical in every process, on every host.
public enum StableHash {
    public static func hash64<Bytes: Sequence>(_ bytes: Bytes) -> UInt64 where Bytes.Element == UInt8 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes {
            h ^= UInt64(byte)
            h &*= 0x0000_0100_0000_01b3
        }
        h ^= h >> 33
        h &*= 0xff51_afd7_ed55_8ccd
        h ^= h >> 33
        h &*= 0xc4ce_b9fe_1a85_ec53
        h ^= h >> 33
        return h
    }
}
