import CXLBMCABI
import Foundation
import L1TestSupport
import Loader
import Testing

/// GET answering through BPF_PROG_TEST_RUN: what XDP answers, byte for byte,
/// and what it must pass on untouched.
@Suite(.enabled(if: Privilege.canRun, "needs root (BPF)"), .serialized)
struct GetFixtureTests {
    /// The reply memcached itself would send: same request id, datagram 0 of 1.
    static func expectedReply(id: UInt16, _ text: String) -> [UInt8] {
        Packet.frameHeader(id: id) + Array(text.utf8)
    }

    /// Checks a frame XDP sent back: addresses and ports swapped, lengths and
    /// checksums right, payload byte-exact.
    static func expectAnswer(_ run: BPFTestRun, to request: Packet, payload: [UInt8]) {
        #expect(run.action == XDP_TX_ACTION)
        let out = FrameView(bytes: run.packet)
        let inp = FrameView(bytes: request.bytes)
        #expect(out.payload == payload, "payload: \(String(decoding: out.payload.dropFirst(8), as: UTF8.self))")
        let macsSwapped = out.dstMAC == inp.srcMAC && out.srcMAC == inp.dstMAC
        let portsSwapped = out.udpPorts.0 == inp.udpPorts.1 && out.udpPorts.1 == inp.udpPorts.0
        let ipChecksum = out.ipChecksumValid, udpChecksum = out.udpChecksumValid
        let lengths = out.udpLengthValid && out.ipLengthValid
        #expect(macsSwapped, "MAC addresses swapped")
        #expect(portsSwapped, "UDP ports swapped")
        #expect(ipChecksum, "IPv4 header checksum")
        #expect(udpChecksum, "UDP checksum")
        #expect(lengths, "IP and UDP lengths")
    }

    @Test func hitIsAnsweredByteExact() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        try l1.prime(&peers, key: "foo", value: "bar", flags: 42)
        let request = peers.request(id: 7, "get foo\r\n")
        let run = try l1.ingress(request)
        Self.expectAnswer(run, to: request, payload: Self.expectedReply(id: 7, "VALUE foo 42 3\r\nbar\r\nEND\r\n"))
        #expect(try l1.stat(L1_STAT_HIT) == 1)
        #expect(try l1.stat(L1_STAT_FILL) == 1)
    }

    @Test func missPassesUntouchedAndTakesATicket() throws {
        let l1 = try L1Harness()
        let request = Peers().request(id: 3, "get nothere\r\n")
        let run = try l1.ingress(request)
        #expect(run.action == XDP_PASS_ACTION)
        #expect(run.packet == request.bytes)
        #expect(try l1.stat(L1_STAT_MISS) == 1)
        #expect(try l1.xdpObject.map(named: "mcache_tickets").keys().count == 1)
    }

    @Test func multiKeyAllHitAnswersInRequestOrder() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        try l1.prime(&peers, key: "a", value: "1", id: 1)
        try l1.prime(&peers, key: "bb", value: "22", flags: 5, id: 2)
        let request = peers.request(id: 9, "get bb a  bb\r\n")
        Self.expectAnswer(try l1.ingress(request), to: request, payload: Self.expectedReply(
            id: 9, "VALUE bb 5 2\r\n22\r\nVALUE a 0 1\r\n1\r\nVALUE bb 5 2\r\n22\r\nEND\r\n"))
    }

    @Test func multiKeyPartialHitPassesWholeRequest() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        try l1.prime(&peers, key: "a", value: "1")
        let request = peers.request(id: 4, "get a missing\r\n")
        let run = try l1.ingress(request)
        #expect(run.action == XDP_PASS_ACTION)
        #expect(run.packet == request.bytes)
        // memcached's reply (only "a") fills nothing new but is still accepted.
        try l1.egress(peers.reply(id: 4, "VALUE a 0 1\r\n1\r\nEND\r\n"))
        #expect(try l1.ingress(peers.request(id: 5, "get a\r\n")).action == XDP_TX_ACTION)
    }

    @Test func multiKeyFillFromOneReply() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        for key in ["x", "y"] { try l1.store(&peers, key: key, value: "v\(key)") }
        #expect(try l1.ingress(peers.request(id: 1, "get x y\r\n")).action == XDP_PASS_ACTION)
        try l1.egress(peers.reply(id: 1, "VALUE x 0 2\r\nvx\r\nVALUE y 0 2\r\nvy\r\nEND\r\n"))
        #expect(try l1.stat(L1_STAT_FILL) == 2)
        let request = peers.request(id: 2, "get y x\r\n")
        Self.expectAnswer(try l1.ingress(request), to: request, payload: Self.expectedReply(
            id: 2, "VALUE y 0 2\r\nvy\r\nVALUE x 0 2\r\nvx\r\nEND\r\n"))
    }

    /// memcached 1.6 answers a multi-get with one message per item, END on the last.
    @Test func multiKeyFillFromOneMessagePerItem() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        for key in ["x", "y"] { try l1.store(&peers, key: key, value: "v\(key)") }
        try l1.ingress(peers.request(id: 1, "get x y\r\n"))
        try l1.egress(peers.reply(id: 1, "VALUE x 0 2\r\nvx\r\n"))
        try l1.egress(peers.reply(id: 1, "VALUE y 0 2\r\nvy\r\nEND\r\n"))
        #expect(try l1.stat(L1_STAT_FILL) == 2)
        // The ticket is gone with the END: a late copy fills nothing.
        try l1.egress(peers.reply(id: 1, "VALUE x 0 2\r\nvx\r\nEND\r\n"))
        #expect(try l1.stat(L1_STAT_FILL_NO_TICKET) == 1)
        #expect(try l1.ingress(peers.request(id: 2, "get y x\r\n")).action == XDP_TX_ACTION)
    }

    @Test func getsNeedsACasAndGetsOmitsIt() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        try l1.prime(&peers, key: "k", value: "v")
        // Filled from a plain get: no CAS known, so gets must pass.
        #expect(try l1.ingress(peers.request(id: 2, "gets k\r\n")).action == XDP_PASS_ACTION)
        try l1.egress(peers.reply(id: 2, "VALUE k 0 1 77\r\nv\r\nEND\r\n"))
        let gets = peers.request(id: 3, "gets k\r\n")
        Self.expectAnswer(try l1.ingress(gets), to: gets, payload: Self.expectedReply(id: 3, "VALUE k 0 1 77\r\nv\r\nEND\r\n"))
        let get = peers.request(id: 4, "get k\r\n")
        Self.expectAnswer(try l1.ingress(get), to: get, payload: Self.expectedReply(id: 4, "VALUE k 0 1\r\nv\r\nEND\r\n"))
    }

    @Test func largestSingleDatagramValueIsServed() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        // 1400 - 8 (frame) - 5 (END) - "VALUE big 0 1369\r\n" (18) - 2 = 1367
        let value = String(repeating: "v", count: 1367)
        try l1.prime(&peers, key: "big", value: value)
        let request = peers.request(id: 8, "get big\r\n")
        let run = try l1.ingress(request)
        Self.expectAnswer(run, to: request, payload: Self.expectedReply(id: 8, "VALUE big 0 1367\r\n\(value)\r\nEND\r\n"))
        #expect(run.packet.count == 14 + 20 + 8 + 1400)
    }

    @Test func replyTooLargeForOneDatagramPasses() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        let value = String(repeating: "w", count: 700)
        try l1.prime(&peers, key: "p", value: value, id: 1)
        try l1.prime(&peers, key: "q", value: value, id: 2)
        let request = peers.request(id: 3, "get p q\r\n")
        let run = try l1.ingress(request)
        #expect(run.action == XDP_PASS_ACTION)
        #expect(run.packet == request.bytes)
        #expect(try l1.stat(L1_STAT_PASS_TOO_BIG) == 1)
    }

    @Test func multiDatagramReplyIsNotCached() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        try l1.store(&peers, key: "m", value: "z")
        try l1.ingress(peers.request(id: 1, "get m\r\n"))
        try l1.egress(peers.reply(id: 1, "VALUE m 0 1\r\nz\r\nEND\r\n", seq: 0, total: 2))
        #expect(try l1.stat(L1_STAT_FILL) == 0)
        #expect(try l1.ingress(peers.request(id: 2, "get m\r\n")).action == XDP_PASS_ACTION)
    }

    @Test func ipv6HitHasValidChecksums() throws {
        let l1 = try L1Harness()
        var peers = Peers(ipv6: true)
        try l1.prime(&peers, key: "six", value: "v6", flags: 6)
        let request = peers.request(id: 66, "get six\r\n")
        Self.expectAnswer(try l1.ingress(request), to: request, payload: Self.expectedReply(id: 66, "VALUE six 6 2\r\nv6\r\nEND\r\n"))
    }

    @Test func vlanTaggedHitKeepsItsTag() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        try l1.prime(&peers, key: "t", value: "tag")
        let request = Packet().eth(vlan: 100).ipv4(src: "10.0.0.2", dst: "10.0.0.1")
            .udp(sport: peers.clientPort, dport: L1Harness.port).memcachedUDP(id: 5, "get t\r\n")
        let run = try l1.ingress(request)
        #expect(run.action == XDP_TX_ACTION)
        #expect(Array(run.packet[12..<16]) == [0x81, 0x00, 0x00, 100])
        #expect(Array(run.packet[(18 + 20 + 8)...]) == Self.expectedReply(id: 5, "VALUE t 0 3\r\ntag\r\nEND\r\n"))
    }

    @Test func expiredEntryIsAMiss() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        // exptime 2 s: L1 keeps it one second less than memcached might.
        try l1.prime(&peers, key: "ttl", value: "soon", exptime: 2)
        #expect(try l1.ingress(peers.request(id: 2, "get ttl\r\n")).action == XDP_TX_ACTION)
        Thread.sleep(forTimeInterval: 1.1)
        #expect(try l1.ingress(peers.request(id: 3, "get ttl\r\n")).action == XDP_PASS_ACTION)
    }

    @Test func alreadyExpiredAndUnknownTTLAreNotCached() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        try l1.prime(&peers, key: "gone", value: "x", exptime: -1)
        #expect(try l1.ingress(peers.request(id: 2, "get gone\r\n")).action == XDP_PASS_ACTION)
        // Never written while attached: TTL unknown, not cached by default.
        try l1.ingress(peers.request(id: 3, "get old\r\n"))
        try l1.egress(peers.reply(id: 3, "VALUE old 0 1\r\no\r\nEND\r\n"))
        #expect(try l1.stat(L1_STAT_FILL_NO_TTL) == 2)
        #expect(try l1.ingress(peers.request(id: 4, "get old\r\n")).action == XDP_PASS_ACTION)
    }

    @Test func unknownTTLIsCachedWhenConfigured() throws {
        let l1 = try L1Harness(unknownTTL: 5_000_000_000)
        let peers = Peers()
        try l1.ingress(peers.request(id: 3, "get old\r\n"))
        try l1.egress(peers.reply(id: 3, "VALUE old 0 1\r\no\r\nEND\r\n"))
        #expect(try l1.ingress(peers.request(id: 4, "get old\r\n")).action == XDP_TX_ACTION)
    }

    @Test func replyWithoutTicketDoesNotFill() throws {
        let l1 = try L1Harness(unknownTTL: 5_000_000_000)
        let peers = Peers()
        try l1.egress(peers.reply(id: 77, "VALUE forged 0 1\r\nf\r\nEND\r\n"))
        #expect(try l1.stat(L1_STAT_FILL) == 0)
        #expect(try l1.stat(L1_STAT_FILL_NO_TICKET) == 1)
        #expect(try l1.ingress(peers.request(id: 78, "get forged\r\n")).action == XDP_PASS_ACTION)
    }

    static func datagram(_ text: String, total: UInt16 = 1) -> [UInt8] {
        let header: [UInt8] = Packet.frameHeader(id: 1, total: total)
        return header + Array(text.utf8)
    }

    static let malformed: [(String, [UInt8])] = {
        let longKey = String(repeating: "k", count: 251)
        let manyKeys = [String](repeating: "a", count: 17).joined(separator: " ")
        var list: [(String, [UInt8])] = []
        list.append(("frame header says 2 datagrams", datagram("get a\r\n", total: 2)))
        list.append(("shorter than a frame header", [0, 1, 0, 0]))
        list.append(("no CRLF", datagram("get a")))
        list.append(("LF only", datagram("get a\n")))
        list.append(("no key", datagram("get \r\n")))
        list.append(("key too long", datagram("get \(longKey)\r\n")))
        list.append(("control byte in key", datagram("get a\u{1}b\r\n")))
        list.append(("two commands", datagram("get a\r\nget a\r\n")))
        list.append(("17 keys", datagram("get \(manyKeys)\r\n")))
        list.append(("getx", datagram("getx a\r\n")))
        return list
    }()

    @Test(arguments: malformed)
    func malformedRequestsPassUntouched(_ name: String, _ payload: [UInt8]) throws {
        let l1 = try L1Harness()
        var peers = Peers()
        try l1.prime(&peers, key: "a", value: "1")
        let request = Packet().eth().ipv4(src: "10.0.0.2", dst: "10.0.0.1").udp(sport: 40000, dport: L1Harness.port).payload(payload)
        let run = try l1.ingress(request)
        #expect(run.action == XDP_PASS_ACTION, "\(name)")
        #expect(run.packet == request.bytes, "\(name)")
    }

    @Test func truncatedAndForeignFramesPassUntouched() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        try l1.prime(&peers, key: "a", value: "1")
        let good = peers.request(id: 1, "get a\r\n").bytes
        var frames: [[UInt8]] = []
        frames.append(Array(good.prefix(14)))              // Ethernet only
        frames.append(Array(good.prefix(30)))              // IP header cut
        frames.append(Array(good.prefix(40)))              // UDP header cut
        frames.append(Array(good.prefix(good.count - 3)))  // IP total length longer than the frame
        var longUDP = peers.request(id: 1, "get a\r\n")
        longUDP.udpLengthOverride = 200
        frames.append(longUDP.bytes)
        frames.append(Packet().eth().ipv4(src: "10.0.0.2", dst: "10.0.0.1").udp(sport: 40000, dport: 53).memcachedUDP(id: 1, "get a\r\n").bytes)
        frames.append(Array(repeating: 0xff, count: 60))    // not IP at all
        for frame in frames {
            let run = try l1.xdp.testRun(packet: frame)
            #expect(run.action == XDP_PASS_ACTION)
            #expect(run.packet == frame)
        }
        // And the entry is still served afterwards.
        #expect(try l1.ingress(peers.request(id: 2, "get a\r\n")).action == XDP_TX_ACTION)
    }
}
