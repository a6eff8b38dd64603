import CXLBMCABI
import Foundation
import Loader

/// Both L1 programs loaded into the kernel with private, shared maps (no
/// pins, nothing attached), configured like `cxl-bmc attach` does, so packet
/// fixtures run through BPF_PROG_TEST_RUN against the real code.
/// Both L1 programs in the kernel, unattached, configured like `attach`
/// does: packets go through BPF_PROG_TEST_RUN.
public final class L1Harness {
    public let programs: L1Programs
    public var xdpObject: BPFObject { programs.xdpObject }
    public var xdp: BPFProgram { programs.xdp }
    public var tc: BPFProgram { programs.tc }
    public static let port: UInt16 = 11211

    /// - Parameters: holds in nanoseconds; tests that are not about the hold
    ///   windows set them to 0 so a fill may follow a release at once.
    public init(sets: UInt32 = 64, unknownTTL: UInt64 = 0, hold: UInt64 = 0, noreplyHold: UInt64 = 0,
         inflightMax: UInt64 = 1_000_000_000) throws {
        let settings = L1Settings(port: L1Harness.port, unknownTTLNs: unknownTTL, holdNs: hold,
                                  noreplyHoldNs: noreplyHold, inflightMaxNs: inflightMax)
        programs = try L1Programs(geometry: try L1Geometry(sets: sets), settings: settings)
    }

    /// Runs a client->memcached frame through the XDP program.
    @discardableResult
    public func ingress(_ packet: Packet) throws -> BPFTestRun { try xdp.testRun(packet: packet.bytes) }
    /// Runs a memcached->client frame through the TC egress program.
    @discardableResult
    public func egress(_ packet: Packet) throws -> BPFTestRun { try tc.testRun(packet: packet.bytes) }

    /// Per-CPU counters summed, by their `L1_STAT_*` index.
    public func stat(_ index: Int32) throws -> UInt64 {
        let values = try xdpObject.map(named: L1Names.statsMap).lookupPerCPU(UInt32(0), as: l1_stats.self) ?? []
        return values.reduce(0) { sum, s in
            withUnsafeBytes(of: s.counter) { sum + $0.load(fromByteOffset: Int(index) * 8, as: UInt64.self) }
        }
    }

    public func state() throws -> l1_state {
        try xdpObject.map(named: L1Names.stateMap).lookup(UInt32(0), as: l1_state.self) ?? l1_state()
    }
}

/// The two ends of the conversation, with a TCP stream whose sequence
/// numbers the fixtures need not track by hand.
public struct Peers {
    public var ipv6 = false
    public var clientPort: UInt16 = 40000
    public var tcpPort: UInt16 = 50000
    public var clientSeq: UInt32 = 1000
    public var serverSeq: UInt32 = 9000

    public init(ipv6: Bool = false, clientPort: UInt16 = 40000, tcpPort: UInt16 = 50000) {
        self.ipv6 = ipv6
        self.clientPort = clientPort
        self.tcpPort = tcpPort
    }

    private var base: Packet {
        ipv6 ? Packet().eth().ipv6(src: "fd00::2", dst: "fd00::1") : Packet().eth().ipv4(src: "10.0.0.2", dst: "10.0.0.1")
    }
    private var reverse: Packet {
        let p = Packet().eth(src: [0x02, 0, 0, 0, 0, 0x01], dst: [0x02, 0, 0, 0, 0, 0x02])
        return ipv6 ? p.ipv6(src: "fd00::1", dst: "fd00::2") : p.ipv4(src: "10.0.0.1", dst: "10.0.0.2")
    }

    /// A UDP request datagram to memcached.
    public func request(id: UInt16, _ text: String) -> Packet {
        base.udp(sport: clientPort, dport: L1Harness.port).memcachedUDP(id: id, text)
    }
    /// memcached's UDP reply.
    public func reply(id: UInt16, _ text: String, seq: UInt16 = 0, total: UInt16 = 1) -> Packet {
        reverse.udp(sport: L1Harness.port, dport: clientPort).memcachedUDP(id: id, text, seq: seq, total: total)
    }
    public func syn() -> Packet { base.tcp(sport: tcpPort, dport: L1Harness.port, seq: clientSeq - 1, flags: TCPFlags.syn) }
    /// The next segment of the client's TCP stream.
    public mutating func send(_ bytes: [UInt8]) -> Packet {
        defer { clientSeq &+= UInt32(bytes.count) }
        return base.tcp(sport: tcpPort, dport: L1Harness.port, seq: clientSeq).payload(bytes)
    }
    public mutating func send(_ text: String) -> Packet { send(Array(text.utf8)) }
    /// memcached's answer on the TCP stream.
    public mutating func answer(_ text: String, flags: UInt8 = TCPFlags.psh | TCPFlags.ack) -> Packet {
        defer { serverSeq &+= UInt32(text.utf8.count) }
        return reverse.tcp(sport: L1Harness.port, dport: tcpPort, seq: serverSeq, flags: flags).payload(text)
    }
}

public let XDP_PASS_ACTION: UInt32 = 2
public let XDP_TX_ACTION: UInt32 = 3
public let TC_OK_ACTION: UInt32 = 0

extension L1Harness {
    /// Writes `key` over TCP (set), lets memcached's STORED release it, then
    /// fills L1 through a UDP GET miss and memcached's reply. After this a
    /// GET for `key` is an L1 hit.
    /// Writes `key` over the TCP stream (opened with a SYN first) and lets memcached's STORED
    /// pass egress: the write is seen, applied and released.
    public func store(_ peers: inout Peers, key: String, value: String, flags: UInt32 = 0, exptime: Int = 0) throws {
        if peers.clientSeq == 1000 { try ingress(peers.syn()) }
        try ingress(peers.send("set \(key) \(flags) \(exptime) \(value.utf8.count)\r\n\(value)\r\n"))
        try egress(peers.answer("STORED\r\n"))
    }

    public func prime(_ peers: inout Peers, key: String, value: String, flags: UInt32 = 0, exptime: Int = 0,
               id: UInt16 = 1, gets cas: UInt64? = nil) throws {
        try store(&peers, key: key, value: value, flags: flags, exptime: exptime)
        let verb = cas == nil ? "get" : "gets"
        try ingress(peers.request(id: id, "\(verb) \(key)\r\n"))
        let casText = cas.map { " \($0)" } ?? ""
        try egress(peers.reply(id: id, "VALUE \(key) \(flags) \(value.utf8.count)\(casText)\r\n\(value)\r\nEND\r\n"))
    }
}
