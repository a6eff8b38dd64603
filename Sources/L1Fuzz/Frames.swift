import L1Model

/// A deterministic PRNG (SplitMix64): the same seed gives the same packets on every machine.
public struct SplitMix64 {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
    /// Uniform in 0..<n (n > 0).
    public mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    public mutating func range(_ r: ClosedRange<Int>) -> Int { r.lowerBound + below(r.count) }
    public mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
    public mutating func byte() -> UInt8 { UInt8(truncatingIfNeeded: next()) }
    public mutating func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in byte() } }
    public mutating func pick<T>(_ a: [T]) -> T { a[below(a.count)] }
}

/// An IPv6 extension header to put before L4.
public struct IPv6Extension {
    public var type: UInt8 // 0 hop-by-hop, 43 routing, 60 destination, 51 AH, 44 fragment, 50 ESP
    public var units: UInt8 // the header's length field
    public init(type: UInt8, units: UInt8) { self.type = type; self.units = units }
    var length: Int { type == 51 ? (Int(units) + 2) * 4 : type == 44 ? 8 : (Int(units) + 1) * 8 }
}

/// A frame with every layer under the fuzzer's control; lengths and
/// checksums are right when built, and broken afterwards on purpose.
public struct FrameSpec {
    public var srcMAC: [UInt8] = [0x02, 0, 0, 0, 0, 0x02]
    public var dstMAC: [UInt8] = [0x02, 0, 0, 0, 0, 0x01]
    public var vlans: [(tpid: UInt16, tci: UInt16)] = []
    public var ipv6 = false
    public var src: [UInt8] = [10, 0, 0, 2]
    public var dst: [UInt8] = [10, 0, 0, 1]
    public var tos: UInt8 = 0
    public var ipID: UInt16 = 1
    public var dontFragment = false
    public var ttl: UInt8 = 64
    public var ipv4Options: [UInt8] = []
    public var extensions: [IPv6Extension] = []
    public var flowLabel: UInt32 = 0
    public var tcp = false
    public var tcpFlags: UInt8 = 0x18
    public var seq: UInt32 = 1
    public var sport: UInt16 = 40000
    public var dport: UInt16 = L1Model.port
    public var payload: [UInt8] = []
    public var zeroUDPChecksum = false

    public init() {}

    static func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xff)] }
    static func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8((v >> 16) & 0xff), UInt8((v >> 8) & 0xff), UInt8(v & 0xff)] }

    public var bytes: [UInt8] {
        let proto: UInt8 = tcp ? 6 : 17
        var l4: [UInt8]
        if tcp {
            l4 = Self.be16(sport) + Self.be16(dport) + Self.be32(seq) + Self.be32(1) + [0x50, tcpFlags, 0xff, 0xff, 0, 0, 0, 0] + payload
        } else {
            l4 = Self.be16(sport) + Self.be16(dport) + Self.be16(UInt16(truncatingIfNeeded: 8 + payload.count)) + [0, 0] + payload
        }
        var frame = dstMAC + srcMAC
        for v in vlans { frame += Self.be16(v.tpid) + Self.be16(v.tci) }
        if ipv6 {
            var ext: [UInt8] = []
            for (i, e) in extensions.enumerated() {
                let next = i + 1 < extensions.count ? extensions[i + 1].type : proto
                var h = [next, e.type == 44 ? 0 : e.units] + [UInt8](repeating: 0, count: e.length - 2)
                if e.type == 0 || e.type == 60, h.count >= 8 { h[2] = 1; h[3] = UInt8(e.length - 4) } // PadN
                ext += h
            }
            let first = extensions.first?.type ?? proto
            frame += [0x86, 0xdd] + Self.be32(0x6000_0000 | (flowLabel & 0xfffff))
            frame += Self.be16(UInt16(truncatingIfNeeded: ext.count + l4.count)) + [first, ttl] + src + dst + ext
        } else {
            let ihl = 5 + ipv4Options.count / 4
            frame += [0x08, 0x00]
            var ip: [UInt8] = [0x40 | UInt8(ihl), tos] + Self.be16(UInt16(truncatingIfNeeded: ihl * 4 + l4.count)) + Self.be16(ipID)
            ip += Self.be16(dontFragment ? 0x4000 : 0) + [ttl, proto, 0, 0] + src + dst + ipv4Options.prefix((ihl - 5) * 4)
            frame += ip
        }
        frame += l4
        return FrameSpec.fixChecksums(frame, zeroUDP: zeroUDPChecksum)
    }

    /// Recomputes the IPv4 header, UDP and TCP checksums of a frame wherever
    /// its lengths can be read.
    public static func fixChecksums(_ input: [UInt8], zeroUDP: Bool = false) -> [UInt8] {
        var f = input
        guard let l = L1Model.layers(f) else { return f }
        let ip = l.l3Offset
        func put16(_ o: Int, _ v: UInt16) { f[o] = UInt8(v >> 8); f[o + 1] = UInt8(v & 0xff) }
        if !l.ipv6, f.count >= ip + 20, f[ip] >> 4 == 4 {
            let ihl = Int(f[ip] & 15) * 4
            if ihl >= 20, f.count >= ip + ihl {
                put16(ip + 10, 0)
                put16(ip + 10, ~L1Model.onesComplement(Array(f[ip..<(ip + ihl)])))
            }
        }
        guard l.l4Offset > 0 else { return f }
        let o = l.l4Offset
        if l.proto == 17, l.payloadOffset > 0 {
            let ulen = l.payloadOffset - o + l.payloadLength
            put16(o + 6, 0)
            if !zeroUDP {
                let sum = ~L1Model.onesComplement(L1Model.pseudoHeader(f, l, length: ulen, proto: 17) + Array(f[o..<(o + ulen)]))
                put16(o + 6, sum == 0 ? 0xffff : sum)
            }
        } else if l.proto == 6, l.payloadOffset > 0 {
            let len = l.payloadOffset - o + l.payloadLength
            put16(o + 16, 0)
            put16(o + 16, ~L1Model.onesComplement(L1Model.pseudoHeader(f, l, length: len, proto: 6) + Array(f[o..<(o + len)])))
        }
        return f
    }
}
