/// The part of nodes.conf that lays out a pool: which node owns which slice.
///
/// A deliberately small parser (Peering owns the full one): `local_node_id=N`, `num_nodes=N`,
/// `nodeN=ADDR:PORT:CXL_BASE:CXL_SIZE` (base and size decimal or 0x hex, sizes also with K/M/G),
/// `#` comments and blank lines. Other `key=value` lines are ignored so the file can grow.
public struct PoolLayoutConfig: Sendable, Equatable {
    public var localNodeID: Int?
    public var slices: [SliceSpec]

    public init(parsing text: String) throws {
        var local: Int?
        var declared: Int?
        var slices: [(line: Int, spec: SliceSpec)] = []
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let lineNumber = n + 1
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
            let trimmed = line.trimmingSpaces
            guard !trimmed.isEmpty else { continue }
            guard let eq = trimmed.firstIndex(of: "=") else {
                throw CXLTierError.config(line: lineNumber, message: "expected key=value, found '\(trimmed)'")
            }
            let key = String(trimmed[..<eq]).trimmingSpaces
            let value = String(trimmed[trimmed.index(after: eq)...]).trimmingSpaces
            switch key {
            case "local_node_id":
                guard let v = Int(value), v >= 0 else { throw CXLTierError.config(line: lineNumber, message: "local_node_id must be a node number, found '\(value)'") }
                local = v
            case "num_nodes":
                guard let v = Int(value), v >= 1 else { throw CXLTierError.config(line: lineNumber, message: "num_nodes must be positive, found '\(value)'") }
                declared = v
            case _ where key.hasPrefix("node"):
                guard let id = Int(key.dropFirst(4)), id >= 0 else {
                    throw CXLTierError.config(line: lineNumber, message: "expected nodeN=ADDR:PORT:CXL_BASE:CXL_SIZE, found key '\(key)'")
                }
                // ADDR may be an IPv6 address with colons: the last three fields are PORT, BASE, SIZE.
                let fields = value.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
                guard fields.count >= 4 else {
                    throw CXLTierError.config(line: lineNumber, message: "expected ADDR:PORT:CXL_BASE:CXL_SIZE, found '\(value)'")
                }
                guard let base = parseSize(fields[fields.count - 2]) else {
                    throw CXLTierError.config(line: lineNumber, message: "CXL_BASE '\(fields[fields.count - 2])' is not a number")
                }
                guard let size = parseSize(fields[fields.count - 1]), size > 0 else {
                    throw CXLTierError.config(line: lineNumber, message: "CXL_SIZE '\(fields[fields.count - 1])' is not a positive number")
                }
                if slices.contains(where: { $0.spec.ownerNode == id }) {
                    throw CXLTierError.config(line: lineNumber, message: "node\(id) is defined twice")
                }
                slices.append((lineNumber, SliceSpec(ownerNode: id, base: base, size: size)))
            default:
                continue
            }
        }
        if let declared, declared != slices.count {
            throw CXLTierError.config(line: slices.last?.line ?? 1, message: "num_nodes=\(declared) but \(slices.count) node line(s)")
        }
        guard !slices.isEmpty else { throw CXLTierError.config(line: 1, message: "no nodeN= lines: nothing to lay out") }
        self.localNodeID = local
        self.slices = slices.sorted { $0.spec.base < $1.spec.base }.map(\.spec)
    }
}

/// Parses "4096", "0x1000", "64K", "512M", "2G" (binary units); nil when malformed or overflowing.
public func parseSize(_ text: String) -> Int? {
    let t = text.trimmingSpaces
    if t.hasPrefix("0x") || t.hasPrefix("0X") { return Int(t.dropFirst(2), radix: 16) }
    guard let last = t.last else { return nil }
    let shifts: [Character: Int] = ["K": 10, "k": 10, "M": 20, "m": 20, "G": 30, "g": 30, "T": 40, "t": 40]
    if let shift = shifts[last] {
        guard let n = Int(t.dropLast()), n >= 0 else { return nil }
        let (r, overflow) = n.multipliedReportingOverflow(by: 1 << shift)
        return overflow ? nil : r
    }
    return Int(t)
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\r" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\r" { s = s.dropLast() }
        return String(s)
    }
}
