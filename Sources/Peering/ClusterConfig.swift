#if canImport(Glibc)
import Glibc
#endif

/// A node's number in `nodes.conf` (`node0`, `node1`, …).
public typealias NodeID = Int

/// Where a peer listens: an IPv4/IPv6 literal or a host name, and a TCP port.
public struct PeerAddress: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// One `nodeN=ADDR:PORT:CXL_BASE:CXL_SIZE` line plus its optional `nodeN.*` keys.
public struct NodeConfig: Hashable, Sendable {
    public var id: NodeID
    public var address: PeerAddress
    /// The node's slice of its domain's CXL pool: `[cxlBase, cxlBase + cxlSize)`.
    public var cxlBase: UInt64
    public var cxlSize: UInt64
    /// Nodes in different domains never map each other's slices (default `default`).
    public var domain: String
    /// Relative share of the key space (default 1). Set it proportional to the slice size.
    public var weight: Double
    /// Whether this peer speaks the PSK handshake (`nodeN.auth=psk`, the default) or is a plain
    /// meta-protocol server such as memcached (`nodeN.auth=none`).
    public var authenticates: Bool
    /// The config line that defined the node (for messages).
    public var line: Int

    public var sliceEnd: UInt64 { cxlBase &+ cxlSize }

    public init(id: NodeID, address: PeerAddress, cxlBase: UInt64, cxlSize: UInt64,
                domain: String = ClusterConfig.defaultDomain, weight: Double = 1, authenticates: Bool = true,
                line: Int = 0) {
        self.id = id
        self.address = address
        self.cxlBase = cxlBase
        self.cxlSize = cxlSize
        self.domain = domain
        self.weight = weight
        self.authenticates = authenticates
        self.line = line
    }
}

/// A parsed and validated `nodes.conf`.
///
/// ```
/// # the seed format
/// local_node_id=0
/// num_nodes=2
/// node0=10.0.0.1:11311:0x0:0x40000000
/// node1=10.0.0.2:11311:0x40000000:0x40000000
/// # optional
/// node1.domain=rackB
/// node1.weight=2
/// node1.auth=none
/// psk_file=/etc/cxl-bmc/peer.key
/// replicas=2
/// vnodes=1024
/// pool_size=0x80000000
/// ```
/// See docs/Peering.md for every key.
public struct ClusterConfig: Sendable {
    public static let defaultDomain = "default"
    public static let defaultVirtualNodes = 1024

    /// Where the config came from (a path, or a label for in-memory text).
    public var source: String
    public var localNodeID: NodeID
    /// Sorted by id.
    public var nodes: [NodeConfig]
    /// `psk_file=PATH`, resolved against the config file's directory.
    public var pskFile: String?
    /// `replicas=N` (default 1): how many distinct nodes hold each key.
    public var replicas: Int
    /// `vnodes=N` (default 1024): ring points per unit of weight.
    public var virtualNodesPerWeight: Int
    /// `pool_size=SIZE`: when set, every slice must lie inside `[0, pool_size)`.
    public var poolSize: UInt64?

    public var localNode: NodeConfig { nodes.first { $0.id == localNodeID }! }

    public func node(_ id: NodeID) -> NodeConfig? { nodes.first { $0.id == id } }

    /// Nodes whose slices this node maps: same CXL domain, itself included.
    public var sameDomainNodes: [NodeConfig] { nodes.filter { $0.domain == localNode.domain } }

    /// Reads and validates `path`.
    public static func load(path: String) throws(ClusterConfigError) -> ClusterConfig {
        guard let text = readWholeFile(path) else {
            throw ClusterConfigError(file: path, line: nil, problem: .unreadable(errnoDescription()))
        }
        let directory = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
        return try parse(text, source: path, baseDirectory: directory)
    }

    /// Parses and validates config text; `source` names it in errors, `baseDirectory` resolves a
    /// relative `psk_file`.
    public static func parse(_ text: String, source: String = "nodes.conf",
                             baseDirectory: String = ".") throws(ClusterConfigError) -> ClusterConfig {
        var parser = Parser(source: source)
        return try parser.run(text, baseDirectory: baseDirectory)
    }
}

/// A config error: where (file and line, when one line is to blame) and what.
public struct ClusterConfigError: Error, Equatable, CustomStringConvertible {
    public enum Problem: Equatable, Sendable {
        case unreadable(String)
        case syntax(String)
        case unknownKey(String)
        case duplicateKey(String, firstLine: Int)
        case duplicateNode(NodeID, firstLine: Int)
        case missingKey(String)
        case missingNode(NodeID)
        case nodeOutOfRange(NodeID, numNodes: Int)
        case numNodesMismatch(declared: Int, defined: Int)
        case badAddress(String)
        case badPort(String)
        case badNumber(key: String, value: String)
        case badWeight(String)
        case emptySlice(NodeID)
        case overlappingSlices(NodeID, NodeID, otherLine: Int, domain: String)
        case sliceOutsidePool(NodeID, poolSize: UInt64)
        case localNodeNotListed(NodeID)
        case optionForUnknownNode(NodeID)
        case badReplicas(Int, numNodes: Int)
        case duplicateAddress(String, otherLine: Int)
        case psk(String)
    }

    public var file: String
    public var line: Int?
    public var problem: Problem

    public init(file: String, line: Int?, problem: Problem) {
        self.file = file
        self.line = line
        self.problem = problem
    }

    public var description: String {
        let place = line.map { "\(file):\($0)" } ?? file
        return "\(place): \(message)"
    }

    public var message: String {
        switch problem {
        case .unreadable(let why): "cannot read the config: \(why)"
        case .syntax(let what): what
        case .unknownKey(let key): "unknown key '\(key)' (see docs/Peering.md for the keys)"
        case .duplicateKey(let key, let first): "'\(key)' is set twice (first on line \(first))"
        case .duplicateNode(let id, let first): "node \(id) is defined twice (first on line \(first))"
        case .missingKey(let key): "missing required key '\(key)'"
        case .missingNode(let id): "num_nodes says node\(id) exists but no 'node\(id)=' line defines it"
        case .nodeOutOfRange(let id, let n): "node id \(id) is out of range: num_nodes=\(n) allows node0…node\(n - 1)"
        case .numNodesMismatch(let declared, let defined):
            "num_nodes=\(declared) but \(defined) node\(defined == 1 ? " is" : "s are") defined"
        case .badAddress(let what): "bad address: \(what)"
        case .badPort(let what): "bad port: \(what) (expected 1…65535)"
        case .badNumber(let key, let value): "'\(key)': '\(value)' is not a valid number"
        case .badWeight(let value): "weight must be a positive number, got '\(value)'"
        case .emptySlice(let id): "node\(id): CXL_SIZE must be > 0 (the node's slice of the pool holds its tier)"
        case .overlappingSlices(let a, let b, let other, let domain):
            "node\(a)'s CXL slice overlaps node\(b)'s (line \(other)) in domain '\(domain)'"
        case .sliceOutsidePool(let id, let size): "node\(id)'s CXL slice ends beyond pool_size=\(size)"
        case .localNodeNotListed(let id): "local_node_id=\(id) is not one of the listed nodes"
        case .optionForUnknownNode(let id): "option for node\(id), which no 'node\(id)=' line defines"
        case .badReplicas(let r, let n): "replicas=\(r) must be between 1 and num_nodes=\(n)"
        case .duplicateAddress(let address, let other): "address \(address) is also used by the node on line \(other)"
        case .psk(let what): what
        }
    }
}

extension ClusterConfig {
    /// Line-oriented `key=value` parser; collects keys, then validates the whole.
    fileprivate struct Parser {
        let source: String
        var seen: [String: Int] = [:]
        var localNodeID: (NodeID, Int)?
        var numNodes: (Int, Int)?
        var nodes: [NodeID: NodeConfig] = [:]
        var options: [(id: NodeID, option: String, value: String, line: Int)] = []
        var pskFile: (String, Int)?
        var replicas: (Int, Int)?
        var vnodes: (Int, Int)?
        var poolSize: (UInt64, Int)?

        init(source: String) { self.source = source }

        func fail(_ line: Int?, _ problem: ClusterConfigError.Problem) -> ClusterConfigError {
            ClusterConfigError(file: source, line: line, problem: problem)
        }

        mutating func run(_ text: String, baseDirectory: String) throws(ClusterConfigError) -> ClusterConfig {
            var number = 0
            for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
                number += 1
                var line = Substring(rawLine)
                if let hash = line.firstIndex(of: "#") { line = line[..<hash] }
                let trimmed = line.trimmingSpaces
                if trimmed.isEmpty { continue }
                guard let equals = trimmed.firstIndex(of: "=") else {
                    throw fail(number, .syntax("expected 'key=value', got '\(trimmed)'"))
                }
                let key = trimmed[..<equals].trimmingSpaces
                let value = trimmed[trimmed.index(after: equals)...].trimmingSpaces
                if key.isEmpty { throw fail(number, .syntax("missing key before '='")) }
                if value.isEmpty { throw fail(number, .syntax("missing value for '\(key)'")) }
                if let first = seen[key] { throw fail(number, .duplicateKey(key, firstLine: first)) }
                seen[key] = number
                try assign(key: key, value: value, line: number)
            }
            return try validate(baseDirectory: baseDirectory)
        }

        mutating func assign(key: String, value: String, line: Int) throws(ClusterConfigError) {
            switch key {
            case "local_node_id": localNodeID = (try integer(key, value, line), line)
            case "num_nodes": numNodes = (try integer(key, value, line), line)
            case "psk_file": pskFile = (value, line)
            case "replicas": replicas = (try integer(key, value, line), line)
            case "vnodes":
                let n = try integer(key, value, line)
                guard (1...65536).contains(n) else { throw fail(line, .badNumber(key: key, value: value)) }
                vnodes = (n, line)
            case "pool_size":
                guard let size = parseSize(value), size > 0 else { throw fail(line, .badNumber(key: key, value: value)) }
                poolSize = (size, line)
            default:
                guard key.hasPrefix("node"), let (id, option) = Self.splitNodeKey(key) else {
                    throw fail(line, .unknownKey(key))
                }
                if let option {
                    guard ["domain", "weight", "auth"].contains(option) else { throw fail(line, .unknownKey(key)) }
                    options.append((id, option, value, line))
                } else {
                    if let other = nodes[id] { throw fail(line, .duplicateNode(id, firstLine: other.line)) }
                    nodes[id] = try parseNode(id: id, value: value, line: line)
                }
            }
        }

        /// `node12` → (12, nil); `node12.weight` → (12, "weight"); anything else → nil.
        static func splitNodeKey(_ key: String) -> (NodeID, String?)? {
            let rest = key.dropFirst(4)
            let digits = rest.prefix { $0.isASCII && $0.isNumber }
            guard !digits.isEmpty, digits.count <= 6, let id = Int(digits) else { return nil }
            let after = rest.dropFirst(digits.count)
            if after.isEmpty { return (id, nil) }
            guard after.first == ".", after.count > 1 else { return nil }
            return (id, String(after.dropFirst()))
        }

        func integer(_ key: String, _ value: String, _ line: Int) throws(ClusterConfigError) -> Int {
            guard let n = Int(value), n >= 0 else { throw fail(line, .badNumber(key: key, value: value)) }
            return n
        }

        /// `ADDR:PORT:CXL_BASE:CXL_SIZE`; ADDR is an IPv4 literal, a host name, or `[IPv6]`.
        func parseNode(id: NodeID, value: String, line: Int) throws(ClusterConfigError) -> NodeConfig {
            var host: String
            var rest: Substring
            if value.hasPrefix("[") {
                guard let close = value.firstIndex(of: "]") else {
                    throw fail(line, .badAddress("'\(value)': '[' without ']' around an IPv6 address"))
                }
                host = String(value[value.index(after: value.startIndex)..<close])
                rest = value[value.index(after: close)...]
                guard rest.first == ":" else {
                    throw fail(line, .syntax("node\(id): expected ADDR:PORT:CXL_BASE:CXL_SIZE, got '\(value)'"))
                }
                rest = rest.dropFirst()
                guard isIPv6(host) else { throw fail(line, .badAddress("'\(host)' is not an IPv6 address")) }
            } else {
                let parts = value.split(separator: ":", omittingEmptySubsequences: false)
                guard parts.count == 4 else {
                    throw fail(line, .syntax(
                        "node\(id): expected ADDR:PORT:CXL_BASE:CXL_SIZE (IPv6 in brackets), got '\(value)'"))
                }
                host = String(parts[0])
                rest = value[parts[1].startIndex...]
                guard isIPv4(host) || isHostName(host) else {
                    throw fail(line, .badAddress("'\(host)' is neither an IPv4 address nor a host name"))
                }
            }
            let fields = rest.split(separator: ":", omittingEmptySubsequences: false)
            guard fields.count == 3 else {
                throw fail(line, .syntax("node\(id): expected ADDR:PORT:CXL_BASE:CXL_SIZE, got '\(value)'"))
            }
            guard let port = Int(fields[0]), (1...65535).contains(port) else {
                throw fail(line, .badPort("'\(fields[0])'"))
            }
            guard let base = parseSize(String(fields[1])) else {
                throw fail(line, .badNumber(key: "node\(id) CXL_BASE", value: String(fields[1])))
            }
            guard let size = parseSize(String(fields[2])) else {
                throw fail(line, .badNumber(key: "node\(id) CXL_SIZE", value: String(fields[2])))
            }
            guard size > 0 else { throw fail(line, .emptySlice(id)) }
            guard base <= UInt64.max - size else {
                throw fail(line, .badNumber(key: "node\(id) CXL_BASE+CXL_SIZE", value: "overflows 64 bits"))
            }
            return NodeConfig(id: id, address: PeerAddress(host: host, port: port), cxlBase: base, cxlSize: size,
                              line: line)
        }

        mutating func validate(baseDirectory: String) throws(ClusterConfigError) -> ClusterConfig {
            guard let (declared, numLine) = numNodes else { throw fail(nil, .missingKey("num_nodes")) }
            guard let (local, localLine) = localNodeID else { throw fail(nil, .missingKey("local_node_id")) }
            guard declared > 0 else { throw fail(numLine, .badNumber(key: "num_nodes", value: "0")) }
            for node in nodes.values.sorted(by: { $0.line < $1.line }) where node.id >= declared {
                throw fail(node.line, .nodeOutOfRange(node.id, numNodes: declared))
            }
            if nodes.count != declared {
                if nodes.count < declared, let missing = (0..<declared).first(where: { nodes[$0] == nil }),
                   nodes.count > 0 {
                    throw fail(numLine, .missingNode(missing))
                }
                throw fail(numLine, .numNodesMismatch(declared: declared, defined: nodes.count))
            }
            guard nodes[local] != nil else { throw fail(localLine, .localNodeNotListed(local)) }

            for (id, option, value, line) in options {
                guard var node = nodes[id] else { throw fail(line, .optionForUnknownNode(id)) }
                switch option {
                case "domain":
                    guard value.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }) else {
                        throw fail(line, .syntax("node\(id).domain: '\(value)' may hold only letters, digits, '-', '_', '.'"))
                    }
                    node.domain = value
                case "weight":
                    guard let w = Double(value), w.isFinite, w > 0 else { throw fail(line, .badWeight(value)) }
                    node.weight = w
                case "auth":
                    switch value {
                    case "psk": node.authenticates = true
                    case "none": node.authenticates = false
                    default: throw fail(line, .syntax("node\(id).auth must be 'psk' or 'none', got '\(value)'"))
                    }
                default: break
                }
                nodes[id] = node
            }

            let sorted = nodes.values.sorted { $0.id < $1.id }
            var addresses: [PeerAddress: Int] = [:]
            for node in sorted.sorted(by: { $0.line < $1.line }) {
                if let other = addresses[node.address] {
                    throw fail(node.line, .duplicateAddress(node.address.description, otherLine: other))
                }
                addresses[node.address] = node.line
            }
            // Slices of one domain share that domain's pool: they must not overlap. Report on the later line.
            for (i, a) in sorted.enumerated() {
                if let (pool, _) = poolSize, a.sliceEnd > pool { throw fail(a.line, .sliceOutsidePool(a.id, poolSize: pool)) }
                for b in sorted[(i + 1)...] where a.domain == b.domain {
                    if a.cxlBase < b.sliceEnd && b.cxlBase < a.sliceEnd {
                        let (later, earlier) = a.line > b.line ? (a, b) : (b, a)
                        throw fail(later.line, .overlappingSlices(later.id, earlier.id, otherLine: earlier.line,
                                                                  domain: a.domain))
                    }
                }
            }
            let r = replicas?.0 ?? 1
            if r < 1 || r > declared { throw fail(replicas?.1, .badReplicas(r, numNodes: declared)) }

            var psk: String?
            if let (path, _) = pskFile {
                psk = path.hasPrefix("/") ? path : baseDirectory + "/" + path
            }
            return ClusterConfig(
                source: source, localNodeID: local, nodes: sorted, pskFile: psk, replicas: r,
                virtualNodesPerWeight: vnodes?.0 ?? ClusterConfig.defaultVirtualNodes, poolSize: poolSize?.0)
        }
    }
}

/// `4096`, `0x1000`, `64K`, `512M`, `2G`, `1T` (binary units).
func parseSize(_ text: String) -> UInt64? {
    var digits = Substring(text)
    var shift: UInt64 = 0
    if let last = digits.last, !digits.hasPrefix("0x"), !digits.hasPrefix("0X") {
        switch last {
        case "K", "k": shift = 10
        case "M", "m": shift = 20
        case "G", "g": shift = 30
        case "T", "t": shift = 40
        default: break
        }
        if shift > 0 { digits = digits.dropLast() }
    }
    let value: UInt64?
    if digits.hasPrefix("0x") || digits.hasPrefix("0X") {
        value = UInt64(digits.dropFirst(2), radix: 16)
    } else {
        value = digits.allSatisfy({ $0.isASCII && $0.isNumber }) ? UInt64(digits) : nil
    }
    guard let value else { return nil }
    let (scaled, overflow) = value.multipliedReportingOverflow(by: 1 << shift)
    return overflow ? nil : scaled
}

func isIPv4(_ text: String) -> Bool {
    var address = in_addr()
    return inet_pton(AF_INET, text, &address) == 1
}

func isIPv6(_ text: String) -> Bool {
    var address = in6_addr()
    return inet_pton(AF_INET6, text, &address) == 1
}

/// RFC 1123 host names; a dotted all-digit string that is not a valid IPv4 address is rejected.
func isHostName(_ text: String) -> Bool {
    guard !text.isEmpty, text.utf8.count <= 253 else { return false }
    let labels = text.split(separator: ".", omittingEmptySubsequences: false)
    if labels.allSatisfy({ $0.allSatisfy { $0.isNumber } }) { return false }
    return labels.allSatisfy { label in
        !label.isEmpty && label.count <= 63 && label.first != "-" && label.last != "-"
            && label.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }
    }
}

extension StringProtocol {
    var trimmingSpaces: String {
        String(drop(while: { $0 == " " || $0 == "\t" || $0 == "\r" }).reversed()
            .drop(while: { $0 == " " || $0 == "\t" || $0 == "\r" }).reversed())
    }
}

func readWholeFile(_ path: String) -> String? {
    guard let bytes = readFileBytes(path) else { return nil }
    return String(decoding: bytes, as: UTF8.self)
}

func readFileBytes(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var result: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 { if errno == EINTR { continue }; return nil }
        if n == 0 { return result }
        result += chunk[0..<n]
    }
}

func errnoDescription() -> String { String(cString: strerror(errno)) }
