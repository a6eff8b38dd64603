import L1Model

/// The packet families the fuzzer draws from.
public enum Family: String, CaseIterable, Codable, Sendable {
    case get            // well-formed GETs: cached, uncached and mixed keys, get and gets
    case mutated        // a GET with 1..4 bytes changed, inserted or removed
    case truncated      // a GET cut short, at every layer
    case lengths        // IP/UDP length fields that lie; Ethernet padding
    case ipv4Options
    case ipv6Extensions
    case vlan           // 0, 1 or 2 tags (802.1Q and 802.1ad)
    case manyKeys       // 0..40 keys
    case controlBytes   // keys with control bytes, DEL, tabs, or bytes >= 0x80
    case binary         // binary-protocol frames over UDP
    case tcp            // TCP segments to memcached's port
    case otherPort      // GETs to other ports, UDP and TCP
    case write          // well-formed text writes over UDP to cached keys
    case reply          // memcached's replies (through TC as well)
    case junk           // not IP, not UDP/TCP, random bytes
    case badChecksum    // a cached GET with a broken IPv4 or UDP checksum

    /// Relative frequency.
    var weight: Int {
        switch self {
        case .get: 24
        case .mutated: 18
        case .truncated: 6
        case .lengths: 5
        case .ipv4Options: 4
        case .ipv6Extensions: 4
        case .vlan: 5
        case .manyKeys: 5
        case .controlBytes: 5
        case .binary: 4
        case .tcp: 1
        case .otherPort: 3
        case .write: 2
        case .reply: 5
        case .junk: 3
        case .badChecksum: 2
        }
    }
}

/// Builds the fuzzer's packets from a seed and the items L1 is primed with.
public struct Generator {
    public var rng: SplitMix64
    public let items: [L1Model.Item]
    private let table: [Family]

    public init(seed: UInt64, items: [L1Model.Item]) {
        rng = SplitMix64(seed: seed)
        self.items = items
        table = Family.allCases.flatMap { Array(repeating: $0, count: $0.weight) }
    }

    /// The items L1 is primed with: keys of every shape memcached allows and
    /// values of every size class, each key in its own L1 set (so no fill
    /// evicts another), half of them with a CAS.
    public static func universe(seed: UInt64, sets: UInt32) -> [L1Model.Item] {
        var rng = SplitMix64(seed: seed ^ 0x5eed)
        var out: [L1Model.Item] = []
        var used = Set<UInt32>()
        let keyChars = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_:-.!#$%&*+/<=>?@[]^`{|}~".utf8)
        func add(_ key: [UInt8], valueLength: Int, binary: Bool) {
            let set = L1Fuzz.setIndex(key, sets: sets)
            guard !used.contains(set), !out.contains(where: { $0.key == key }) else { return }
            used.insert(set)
            let value: [UInt8] = binary ? rng.bytes(valueLength) : (0..<valueLength).map { _ in rng.pick(keyChars + [32]) }
            let flags: UInt32 = rng.pick([0, 1, 42, 65535, UInt32.max])
            let cas: UInt64? = rng.chance(50) ? UInt64(rng.range(1...1_000_000)) : nil
            out.append(.init(key: key, flags: flags, value: value, cas: cas))
        }
        func key(_ n: Int) -> [UInt8] { (0..<n).map { _ in rng.pick(keyChars) } }
        var attempts = 0
        while out.count < 14, attempts < 1000 {
            attempts += 1
            add(key(rng.range(1...24)), valueLength: rng.range(0...120), binary: rng.chance(30))
        }
        add(key(250), valueLength: rng.range(1...60), binary: false)
        add(Array("caf\u{e9}-\u{1f600}".utf8), valueLength: 5, binary: true) // bytes >= 0x80: memcached allows them
        while out.count < 20, attempts < 2000 {
            attempts += 1
            add(key(rng.range(1...8)), valueLength: rng.range(250...600), binary: rng.chance(50))
        }
        while out.count < 22, attempts < 3000 {
            attempts += 1
            add(key(rng.range(1...8)), valueLength: rng.range(700...1300), binary: rng.chance(50))
        }
        return out
    }

    // MARK: - Building blocks

    mutating func baseSpec() -> FrameSpec {
        var s = FrameSpec()
        s.ipv6 = rng.chance(40)
        if s.ipv6 {
            s.src = [0xfd, 0] + [UInt8](repeating: 0, count: 13) + [2]
            s.dst = [0xfd, 0] + [UInt8](repeating: 0, count: 13) + [1]
            s.flowLabel = rng.chance(30) ? UInt32(rng.below(1 << 20)) : 0
        } else {
            s.tos = rng.chance(20) ? rng.byte() : 0
            s.ipID = UInt16(truncatingIfNeeded: rng.next())
            s.dontFragment = rng.chance(50)
        }
        s.ttl = rng.pick([64, 1, 255, 128])
        // Never the priming stream's port, nor the reply family's client port.
        s.sport = UInt16(rng.range(1024...49_999))
        if rng.chance(1) { s.sport = 0 }
        return s
    }

    mutating func frameHeader(id: UInt16? = nil) -> [UInt8] {
        let id = id ?? UInt16(truncatingIfNeeded: rng.next())
        return [UInt8(id >> 8), UInt8(id & 0xff), 0, 0, 0, 1, 0, 0]
    }

    mutating func cachedKey() -> [UInt8] { rng.pick(items).key }

    mutating func uncachedKey() -> [UInt8] {
        (0..<rng.range(1...30)).map { _ in UInt8(rng.range(0x21...0x7e)) }
    }

    /// `get|gets <keys>\r\n` with memcached-legal spacing.
    mutating func getText(keys: [[UInt8]], gets: Bool? = nil) -> [UInt8] {
        var t = Array(((gets ?? rng.chance(30)) ? "gets" : "get").utf8)
        for k in keys { t += [UInt8](repeating: 32, count: rng.chance(85) ? 1 : rng.range(2...3)) + k }
        if rng.chance(5) { t += [32] }
        return t + [13, 10]
    }

    mutating func keysForGet(count: Int? = nil, cachedPercent: Int = 85) -> [[UInt8]] {
        let n = count ?? (rng.chance(60) ? 1 : rng.range(2...16))
        return (0..<n).map { _ in rng.chance(cachedPercent) ? cachedKey() : uncachedKey() }
    }

    mutating func getFrame(_ spec: FrameSpec? = nil, keys: [[UInt8]]? = nil) -> [UInt8] {
        var s = spec ?? baseSpec()
        s.payload = frameHeader() + getText(keys: keys ?? keysForGet())
        return s.bytes
    }

    // MARK: - Families

    public mutating func next() -> (Family, [UInt8]) {
        let family = rng.pick(table)
        return (family, make(family))
    }

    public mutating func make(_ family: Family) -> [UInt8] {
        switch family {
        case .get:
            var s = baseSpec()
            if rng.chance(25) { s.vlans = [(0x8100, UInt16(rng.below(4096)))] }
            return getFrame(s, keys: keysForGet(cachedPercent: rng.chance(70) ? 100 : 60))
        case .mutated:
            var f = getFrame(keys: keysForGet(cachedPercent: 100))
            for _ in 0..<rng.range(1...4) {
                let at = rng.below(f.count)
                switch rng.below(10) {
                case 0: f.insert(rng.byte(), at: at)
                case 1: if f.count > 15 { f.remove(at: at) }
                case 2, 3: f[at] = rng.pick([0, 0xff, 32, 13, 10, 0x7f, 0x80, 0x09, UInt8(ascii: "g"), UInt8(ascii: "s")])
                case 4: f[at] ^= UInt8(1) << UInt8(rng.below(8))
                default:
                    // Most mutations land in the request itself.
                    let payloadStart = max(0, f.count - 40)
                    f[rng.range(payloadStart...(f.count - 1))] = rng.byte()
                }
            }
            return rng.chance(60) ? FrameSpec.fixChecksums(f) : f
        case .truncated:
            var s = baseSpec()
            if rng.chance(50) {
                s.payload = frameHeader() + getText(keys: keysForGet(cachedPercent: 100))
                let f = s.bytes
                return Array(f.prefix(rng.range(14...(f.count - 1))))
            }
            // Cut the request text but keep the lengths right: a shorter datagram.
            let text = getText(keys: keysForGet(cachedPercent: 100))
            s.payload = Array((frameHeader() + text).prefix(rng.range(0...(8 + text.count - 1))))
            return s.bytes
        case .lengths:
            var f = getFrame(keys: keysForGet(cachedPercent: 100))
            guard let l = L1Model.layers(f) else { return f }
            switch rng.below(4) {
            case 0: // Ethernet padding after the datagram: still a valid request.
                f += [UInt8](repeating: rng.chance(50) ? 0 : rng.byte(), count: rng.range(1...40))
                return f
            case 1:
                let o = l.ipv6 ? l.l3Offset + 4 : l.l3Offset + 2
                let v = rng.chance(50) ? UInt16(rng.below(65536)) : UInt16(truncatingIfNeeded: Int(L1Model.be16(f, o)) + rng.range(-9...9))
                f[o] = UInt8(v >> 8); f[o + 1] = UInt8(v & 0xff)
            default:
                let o = l.l4Offset + 4
                let v = rng.chance(50) ? UInt16(rng.below(65536)) : UInt16(truncatingIfNeeded: Int(L1Model.be16(f, o)) + rng.range(-9...9))
                f[o] = UInt8(v >> 8); f[o + 1] = UInt8(v & 0xff)
            }
            return rng.chance(70) ? FrameSpec.fixChecksums(f) : f
        case .ipv4Options:
            var s = baseSpec()
            s.ipv6 = false
            s.src = [10, 0, 0, 2]; s.dst = [10, 0, 0, 1]
            let words = rng.range(1...10)
            s.ipv4Options = rng.chance(50) ? [UInt8](repeating: 1, count: words * 4) : rng.bytes(words * 4)
            return getFrame(s, keys: keysForGet(cachedPercent: 100))
        case .ipv6Extensions:
            var s = baseSpec()
            s.ipv6 = true
            s.src = [0xfd, 0] + [UInt8](repeating: 0, count: 13) + [2]
            s.dst = [0xfd, 0] + [UInt8](repeating: 0, count: 13) + [1]
            // Mostly chains L1 walks (it passes the GET); a fragment, ESP or a
            // chain too long to walk makes it empty itself.
            let walkable = rng.chance(85)
            s.extensions = (0..<(walkable ? rng.range(1...3) : rng.range(1...5))).map { _ in
                IPv6Extension(type: walkable ? rng.pick([0, 43, 60, 51]) : rng.pick([0, 43, 60, 51, 44, 50]),
                              units: UInt8(rng.range(0...(walkable ? 1 : 3))))
            }
            return getFrame(s, keys: keysForGet(cachedPercent: 100))
        case .vlan:
            var s = baseSpec()
            let tags = rng.chance(15) ? 2 : rng.range(0...1) // stacked tags make L1 empty itself
            s.vlans = (0..<tags).map { _ in (rng.pick([0x8100, 0x88a8]), UInt16(rng.below(65536))) }
            return getFrame(s, keys: keysForGet(cachedPercent: 100))
        case .manyKeys:
            let n = rng.chance(10) ? 0 : rng.range(1...40)
            var s = baseSpec()
            s.payload = frameHeader() + getText(keys: (0..<n).map { _ in cachedKey() })
            if n == 0, rng.chance(50) { s.payload = frameHeader() + Array("get\r\n".utf8) }
            return s.bytes
        case .controlBytes:
            var keys = keysForGet(cachedPercent: 100)
            let k = rng.below(keys.count)
            let bad: UInt8 = rng.chance(80) ? rng.pick(Array(0...31) + [0x7f]) : UInt8(rng.range(0x80...0xff))
            keys[k].insert(bad, at: rng.below(keys[k].count + 1))
            return getFrame(keys: keys)
        case .binary:
            var s = baseSpec()
            if rng.chance(20) { s.dport = UInt16(rng.range(1...65535)) }
            let key = rng.chance(70) ? cachedKey() : uncachedKey()
            let opcode: UInt8 = rng.pick([0x00, 0x09, 0x0c, 0x0d, 0x01, 0x04, 0x0a, 0x1d, rng.byte()])
            let extras: [UInt8] = opcode == 0x01 ? [0, 0, 0, 0, 0, 0, 0, 0] : []
            let value: [UInt8] = opcode == 0x01 ? rng.bytes(rng.range(0...20)) : []
            let body = extras + key + value
            var frame: [UInt8] = [0x80, opcode] + FrameSpec.be16(UInt16(key.count)) + [UInt8(extras.count), 0, 0, 0]
            frame += FrameSpec.be32(UInt32(body.count)) + rng.bytes(4) + [UInt8](repeating: 0, count: 8) + body
            s.payload = frameHeader() + frame
            if rng.chance(20) { s.payload = Array(s.payload.prefix(rng.range(0...s.payload.count))) }
            return s.bytes
        case .tcp:
            var s = baseSpec()
            s.tcp = true
            s.seq = UInt32(truncatingIfNeeded: rng.next())
            s.tcpFlags = rng.pick([0x18, 0x10, 0x02, 0x04, 0x01, 0x11, rng.byte()])
            s.payload = rng.chance(50) ? getText(keys: keysForGet()) :
                Array("set \(String(decoding: cachedKey(), as: UTF8.self)) 0 0 1\r\nx\r\n".utf8)
            if s.tcpFlags & 0x02 != 0, rng.chance(50) { s.payload = [] }
            return s.bytes
        case .otherPort:
            var s = baseSpec()
            repeat { s.dport = UInt16(truncatingIfNeeded: rng.next()) } while s.dport == L1Model.port
            s.tcp = rng.chance(30)
            s.payload = (s.tcp ? [] : frameHeader()) + getText(keys: keysForGet(cachedPercent: 100))
            return s.bytes
        case .write:
            var s = baseSpec()
            let key = String(decoding: cachedKey(), as: UTF8.self)
            let noreply = rng.chance(20) ? " noreply" : ""
            let v = rng.bytes(rng.range(0...10)).map { $0 % 26 + 97 }
            let text: String = switch rng.below(6) {
            case 0: "set \(key) 0 0 \(v.count)\(noreply)\r\n\(String(decoding: v, as: UTF8.self))\r\n"
            case 1: "delete \(key)\(noreply)\r\n"
            case 2: "touch \(key) 100\(noreply)\r\n"
            case 3: "append \(key) 0 0 \(v.count)\(noreply)\r\n\(String(decoding: v, as: UTF8.self))\r\n"
            case 4: "incr \(key) 1\(noreply)\r\n"
            default: "gat 100 \(key)\r\n"
            }
            s.payload = frameHeader() + Array(text.utf8)
            return s.bytes
        case .reply:
            var s = baseSpec()
            s.sport = L1Model.port
            s.dport = 41000
            if s.ipv6 { s.dst = [0xfd, 0] + [UInt8](repeating: 0, count: 13) + [0x77] } else { s.dst = [10, 0, 0, 77] }
            let blocks = (0..<rng.range(0...3)).flatMap { _ in rng.pick(items).block(withCAS: rng.chance(50)) }
            s.payload = frameHeader() + blocks + Array("END\r\n".utf8)
            var f = s.bytes
            if rng.chance(40) { f[rng.below(f.count)] = rng.byte() }
            return f
        case .junk:
            switch rng.below(4) {
            case 0: return rng.bytes(rng.range(14...200))
            case 1: // ARP-sized frame
                return [UInt8](repeating: 0xff, count: 6) + [2, 0, 0, 0, 0, 2, 0x08, 0x06] + rng.bytes(28)
            case 2: // IPv4 ICMP
                var s = baseSpec()
                s.ipv6 = false
                s.src = [10, 0, 0, 2]; s.dst = [10, 0, 0, 1]
                var f = getFrame(s, keys: [cachedKey()])
                if let l = L1Model.layers(f), !l.ipv6 { f[l.l3Offset + 9] = 1 }
                return FrameSpec.fixChecksums(f)
            default: // a GET behind an unknown ethertype
                var f = getFrame(keys: [cachedKey()])
                f[12] = 0x88; f[13] = 0xb5
                return f
            }
        case .badChecksum:
            var s = baseSpec()
            var f = getFrame(s, keys: keysForGet(count: rng.range(1...3), cachedPercent: 100))
            guard let l = L1Model.layers(f) else { return f }
            if !l.ipv6, rng.chance(40) {
                f[l.l3Offset + 10] ^= UInt8(rng.range(1...255))
            } else if l.ipv6, rng.chance(30) {
                s.zeroUDPChecksum = true
                s.payload = Array(f[l.payloadOffset...])
                return s.bytes
            } else {
                f[l.l4Offset + 6 + rng.below(2)] ^= UInt8(rng.range(1...255))
            }
            return f
        }
    }
}
