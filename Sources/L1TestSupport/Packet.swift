/// Builds Ethernet frames for BPF_PROG_TEST_RUN fixtures, katran-style:
/// `Packet().eth().ipv4(src:dst:).udp(sport:dport:).payload(bytes)`.
/// Lengths and checksums are computed when the frame is built, unless a
/// fixture overrides them on purpose (to test malformed input).
public struct Packet {
    public init() {}

    public enum L3 { case ipv4(src: [UInt8], dst: [UInt8]), ipv6(src: [UInt8], dst: [UInt8]) }
    public enum L4 {
        case udp(sport: UInt16, dport: UInt16)
        case tcp(sport: UInt16, dport: UInt16, seq: UInt32, flags: UInt8)
    }

    public var srcMAC: [UInt8] = [0x02, 0, 0, 0, 0, 0x02]
    public var dstMAC: [UInt8] = [0x02, 0, 0, 0, 0, 0x01]
    public var vlan: UInt16?
    public var l3: L3?
    public var l4: L4?
    public var body: [UInt8] = []
    /// Overrides for malformed fixtures.
    public var udpLengthOverride: UInt16?
    public var ipv4Options: [UInt8] = []
    public var ipv4FragmentOffset: UInt16 = 0
    /// An IPv6 hop-by-hop options header (8 bytes of padding) before L4.
    public var ipv6HopByHop = false

    public func eth(src: [UInt8]? = nil, dst: [UInt8]? = nil, vlan: UInt16? = nil) -> Packet {
        var p = self
        if let src { p.srcMAC = src }
        if let dst { p.dstMAC = dst }
        p.vlan = vlan
        return p
    }
    public func ipv4(src: String, dst: String) -> Packet {
        var p = self
        p.l3 = .ipv4(src: Packet.v4(src), dst: Packet.v4(dst))
        return p
    }
    public func ipv6(src: String, dst: String) -> Packet {
        var p = self
        p.l3 = .ipv6(src: Packet.v6(src), dst: Packet.v6(dst))
        return p
    }
    public func udp(sport: UInt16, dport: UInt16) -> Packet {
        var p = self
        p.l4 = .udp(sport: sport, dport: dport)
        return p
    }
    public func tcp(sport: UInt16, dport: UInt16, seq: UInt32, flags: UInt8 = TCPFlags.psh | TCPFlags.ack) -> Packet {
        var p = self
        p.l4 = .tcp(sport: sport, dport: dport, seq: seq, flags: flags)
        return p
    }
    public func payload(_ bytes: [UInt8]) -> Packet {
        var p = self
        p.body = bytes
        return p
    }
    public func payload(_ text: String) -> Packet { payload(Array(text.utf8)) }
    /// A memcached UDP request or reply: 8-byte frame header, then `text`.
    public func memcachedUDP(id: UInt16, _ text: String, seq: UInt16 = 0, total: UInt16 = 1) -> Packet {
        payload(Packet.frameHeader(id: id, seq: seq, total: total) + Array(text.utf8))
    }

    public static func frameHeader(id: UInt16, seq: UInt16 = 0, total: UInt16 = 1) -> [UInt8] {
        be16(id) + be16(seq) + be16(total) + [0, 0]
    }

    public var bytes: [UInt8] {
        var l4bytes: [UInt8] = []
        var proto: UInt8 = 0
        let (src, dst): ([UInt8], [UInt8]) = {
            switch l3 {
            case .ipv4(let s, let d), .ipv6(let s, let d): return (s, d)
            case nil: return ([], [])
            }
        }()
        switch l4 {
        case .udp(let sport, let dport):
            proto = 17
            let len = UInt16(8 + body.count)
            var udp = Packet.be16(sport) + Packet.be16(dport) + Packet.be16(udpLengthOverride ?? len) + [0, 0] + body
            let sum = Packet.checksum(pseudoHeader(src: src, dst: dst, proto: 17, length: Int(len)) + udp)
            let ck = sum == 0 ? 0xffff : sum
            udp[6] = UInt8(ck >> 8)
            udp[7] = UInt8(ck & 0xff)
            l4bytes = udp
        case .tcp(let sport, let dport, let seq, let flags):
            proto = 6
            var tcp = Packet.be16(sport) + Packet.be16(dport) + Packet.be32(seq) + Packet.be32(1)
            tcp += [5 << 4, flags] + Packet.be16(65535) + [0, 0, 0, 0] + body
            let sum = Packet.checksum(pseudoHeader(src: src, dst: dst, proto: 6, length: tcp.count) + tcp)
            tcp[16] = UInt8(sum >> 8)
            tcp[17] = UInt8(sum & 0xff)
            l4bytes = tcp
        case nil:
            l4bytes = body
        }
        var frame = dstMAC + srcMAC
        if let vlan { frame += [0x81, 0x00] + Packet.be16(vlan) }
        switch l3 {
        case .ipv4(let s, let d):
            frame += [0x08, 0x00]
            let ihl = UInt8(5 + ipv4Options.count / 4)
            var ip: [UInt8] = [0x40 | ihl, 0] + Packet.be16(UInt16(Int(ihl) * 4 + l4bytes.count)) + [0, 1]
            ip += Packet.be16(ipv4FragmentOffset) + [64, proto, 0, 0] + s + d + ipv4Options
            let ck = Packet.checksum(ip)
            ip[10] = UInt8(ck >> 8)
            ip[11] = UInt8(ck & 0xff)
            frame += ip
        case .ipv6(let s, let d):
            frame += [0x86, 0xdd]
            let hopByHop: [UInt8] = ipv6HopByHop ? [proto, 0, 1, 4, 0, 0, 0, 0] : []
            let next = ipv6HopByHop ? 0 : proto
            frame += [0x60, 0, 0, 0] + Packet.be16(UInt16(hopByHop.count + l4bytes.count)) + [next, 64] + s + d + hopByHop
        case nil:
            break
        }
        return frame + l4bytes
    }

    private func pseudoHeader(src: [UInt8], dst: [UInt8], proto: UInt8, length: Int) -> [UInt8] {
        if src.count == 16 { return src + dst + Packet.be32(UInt32(length)) + [0, 0, 0, proto] }
        return src + dst + [0, proto] + Packet.be16(UInt16(length))
    }

    public static func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xff)] }
    public static func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8((v >> 16) & 0xff), UInt8((v >> 8) & 0xff), UInt8(v & 0xff)] }

    /// The Internet checksum (RFC 1071) of `data`.
    public static func checksum(_ data: [UInt8]) -> UInt16 {
        var sum: UInt32 = 0
        var i = 0
        while i + 1 < data.count {
            sum += UInt32(data[i]) << 8 | UInt32(data[i + 1])
            i += 2
        }
        if i < data.count { sum += UInt32(data[i]) << 8 }
        while sum >> 16 != 0 { sum = (sum & 0xffff) + (sum >> 16) }
        return ~UInt16(sum)
    }

    public static func v4(_ s: String) -> [UInt8] { s.split(separator: ".").map { UInt8($0)! } }
    public static func v6(_ s: String) -> [UInt8] {
        // Only the forms the fixtures use: "fd00::1", "fd00::2".
        let halves = s.components(separatedBy: "::")
        func groups(_ part: String) -> [UInt16] { part.isEmpty ? [] : part.split(separator: ":").map { UInt16($0, radix: 16)! } }
        let head = groups(halves[0]), tail = halves.count > 1 ? groups(halves[1]) : []
        let all = head + Array(repeating: 0, count: 8 - head.count - tail.count) + tail
        return all.flatMap { be16($0) }
    }
}

public enum TCPFlags {
    public static let fin: UInt8 = 0x01, syn: UInt8 = 0x02, rst: UInt8 = 0x04, psh: UInt8 = 0x08, ack: UInt8 = 0x10
}

/// Where a frame's parts start, for checking replies.
public struct FrameView {
    public let bytes: [UInt8]
    public init(bytes: [UInt8]) { self.bytes = bytes }
    public var isIPv6: Bool { bytes[12] == 0x86 && bytes[13] == 0xdd }
    public var l3: Int { 14 }
    public var l4: Int { isIPv6 ? 54 : 34 }
    public var payload: [UInt8] { Array(bytes[(l4 + 8)...]) }
    public var srcMAC: [UInt8] { Array(bytes[6..<12]) }
    public var dstMAC: [UInt8] { Array(bytes[0..<6]) }
    public var udpPorts: (UInt16, UInt16) {
        (UInt16(bytes[l4]) << 8 | UInt16(bytes[l4 + 1]), UInt16(bytes[l4 + 2]) << 8 | UInt16(bytes[l4 + 3]))
    }
    public var ipChecksumValid: Bool { isIPv6 || Packet.checksum(Array(bytes[14..<34])) == 0 }
    public var udpChecksumValid: Bool {
        let udp = Array(bytes[l4...])
        let pseudo: [UInt8] = isIPv6
            ? Array(bytes[22..<54]) + Packet.be32(UInt32(udp.count)) + [0, 0, 0, 17]
            : Array(bytes[26..<34]) + [0, 17] + Packet.be16(UInt16(udp.count))
        return Packet.checksum(pseudo + udp) == 0
    }
    public var udpLengthValid: Bool { Int(UInt16(bytes[l4 + 4]) << 8 | UInt16(bytes[l4 + 5])) == bytes.count - l4 }
    public var ipLengthValid: Bool {
        if isIPv6 { return Int(UInt16(bytes[18]) << 8 | UInt16(bytes[19])) == bytes.count - 54 }
        return Int(UInt16(bytes[16]) << 8 | UInt16(bytes[17])) == bytes.count - 14
    }
}
