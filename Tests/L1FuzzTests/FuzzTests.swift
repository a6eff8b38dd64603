import CXLBMCABI
import Foundation
import L1Fuzz
import L1Model
import L1TestSupport
import Loader
import Testing

/// L1's XDP and TC programs against the model through BPF_PROG_TEST_RUN:
/// a fixed-seed fuzz pass, each family on its own, and checks that the
/// checker itself notices a wrong reply or a missed hit.
@Suite(.enabled(if: Privilege.canRun, "needs root (BPF)"), .serialized)
struct FuzzTests {
    /// Sized to run in well under a minute in a debug build on 2 cores (see docs/reliability.md).
    static let ciPackets = Int(ProcessInfo.processInfo.environment["L1FUZZ_PACKETS"] ?? "") ?? 60_000

    static func describe(_ r: L1Fuzz.Report) -> String {
        let unexpected = r.examples.filter { !$0.known }.map { "\($0.kind) [\($0.family)] \($0.detail.prefix(300)) frame \($0.frameHex)" }
        return "\(r.divergencesByKind) \(unexpected.joined(separator: "\n"))"
    }

    @Test func fixedSeedPass() throws {
        let fuzz = try L1Fuzz(seed: 20261121)
        try fuzz.run(packets: Self.ciPackets)
        let r = fuzz.report
        #expect(r.packets == Self.ciPackets)
        #expect(r.unexpectedDivergences == 0, "\(Self.describe(r))")
        // The fuzzer must really hit: at least 10 % of well-formed GETs answered byte-exact.
        #expect(r.wellFormedGets > Self.ciPackets / 4)
        #expect(r.hitFraction >= 0.10, "hits \(r.hits) of \(r.wellFormedGets)")
        #expect(r.tcRuns > Self.ciPackets / 10)
        #expect(Set(r.perFamily.keys) == Set(Family.allCases.map(\.rawValue)))
    }

    /// Each family alone, with what it must show besides agreeing with the model.
    @Test(arguments: Family.allCases)
    func family(_ family: Family) throws {
        let fuzz = try L1Fuzz(seed: 99)
        let n = 400
        for _ in 0..<n {
            try fuzz.check(fuzz.makeFrame(family), family: family, tc: true)
            if fuzz.model.knownCount * 2 < fuzz.generator.items.count { try fuzz.prime() }
        }
        let r = fuzz.report
        #expect(r.unexpectedDivergences == 0, "\(Self.describe(r))")
        switch family {
        case .get, .vlan, .manyKeys, .lengths, .mutated:
            #expect(r.hits > 0, "some requests of this family are answerable")
        case .ipv4Options, .ipv6Extensions, .controlBytes, .binary, .tcp, .otherPort, .write, .reply, .junk:
            #expect(r.hits == 0 && r.knownDivergences == 0, "nothing of this family may be answered")
            #expect(r.passes == n)
        case .truncated:
            #expect(r.passes > n / 2)
        case .badChecksum:
            // Corrupt requests: L1 either passes them or (known divergence) answers them exactly.
            #expect(r.hits == 0)
            #expect(Set(r.divergencesByKind.keys).isSubset(of: ["answersCorruptChecksum", "answersSourcePort0"]))
        }
    }

    /// The checker must notice a reply that differs from memcached's.
    @Test func checkerCatchesAWrongValue() throws {
        let fuzz = try L1Fuzz(seed: 5)
        let item = fuzz.generator.items[0]
        var wrong = item
        wrong.value = Array("not what L1 holds".utf8)
        fuzz.model.add(wrong)
        var s = FrameSpec()
        s.payload = Packet.frameHeader(id: 3) + Array("get ".utf8) + item.key + [13, 10]
        let d = try fuzz.check(s.bytes, family: .get, tc: false)
        #expect(d?.kind == "wrongReply")
    }

    /// ... and a hit L1 should have answered but passed.
    @Test func checkerCatchesAMissedHit() throws {
        let fuzz = try L1Fuzz(seed: 5)
        fuzz.model.add(L1Model.Item(key: Array("never-primed".utf8), flags: 0, value: [1], cas: nil))
        var s = FrameSpec()
        s.payload = Packet.frameHeader(id: 3) + Array("get never-primed\r\n".utf8)
        let d = try fuzz.check(s.bytes, family: .get, tc: false)
        #expect(d?.kind == "missedHit")
    }

    /// A write memcached applies: the key must pass from then on, even though L1 held it.
    @Test func writtenKeyIsNeverServedAgain() throws {
        let fuzz = try L1Fuzz(seed: 6)
        let key = fuzz.generator.items[1].key
        var get = FrameSpec()
        get.payload = Packet.frameHeader(id: 4) + Array("get ".utf8) + key + [13, 10]
        #expect(try fuzz.check(get.bytes, family: .get, tc: false) == nil)
        #expect(fuzz.report.hits == 1)
        var write = FrameSpec()
        write.payload = Packet.frameHeader(id: 5) + Array("delete ".utf8) + key + [13, 10]
        #expect(try fuzz.check(write.bytes, family: .write, tc: false) == nil)
        #expect(fuzz.model.presence(of: key) == nil)
        #expect(try fuzz.check(get.bytes, family: .get, tc: false) == nil)
        #expect(fuzz.report.hits == 1)
        #expect(try fuzz.harness.xdp.testRun(packet: get.bytes).action == XDP_PASS_ACTION)
    }

    /// The same seed gives the same packets.
    @Test func generatorIsDeterministic() throws {
        let items = Generator.universe(seed: 3, sets: L1Fuzz.sets)
        var a = Generator(seed: 3, items: items), b = Generator(seed: 3, items: items)
        for _ in 0..<500 { #expect(a.next().1 == b.next().1) }
        #expect(items == Generator.universe(seed: 3, sets: L1Fuzz.sets))
        #expect(Set(items.map { L1Fuzz.setIndex($0.key, sets: L1Fuzz.sets) }).count == items.count)
    }
}

/// L1 answers only what memcached would see: a GET whose IPv4 header or UDP checksum is wrong is
/// dropped by the kernel, so L1 passes it (it used to answer it, the fuzzer's one known
/// divergence); a UDP checksum a local sender left for offload (the pseudo-header sum, as on veth)
/// is delivered unchecked by the kernel, so L1 answers it. The model agrees with each verdict.
@Suite(.enabled(if: Privilege.canRun, "needs root (BPF)"), .serialized)
struct ChecksumTests {
    /// `get foo` for a primed `foo`, as memcached's client would send it.
    static func request(ipv6: Bool = false) -> [UInt8] {
        let ip = ipv6 ? Packet().eth().ipv6(src: "fd00::2", dst: "fd00::1") : Packet().eth().ipv4(src: "10.0.0.2", dst: "10.0.0.1")
        return ip.udp(sport: 40000, dport: L1Harness.port).memcachedUDP(id: 7, "get foo\r\n").bytes
    }

    /// The IPv4 request with its UDP checksum as a sender leaves it for offload.
    static func offloaded() -> [UInt8] {
        var f = request()
        let ulen = f.count - 34
        let pseudo = Array(f[26..<34]) + [0, 17, UInt8(ulen >> 8), UInt8(ulen & 0xff)]
        let partial = L1Model.onesComplement(pseudo)
        f[40] = UInt8(partial >> 8)
        f[41] = UInt8(partial & 0xff)
        return f
    }

    @Test func wrongChecksumsArePassedAndAnOffloadedOneIsAnswered() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        try l1.prime(&peers, key: "foo", value: "bar")
        var model = L1Model()
        model.reset(to: [L1Model.Item(key: Array("foo".utf8), flags: 0, value: Array("bar".utf8), cas: nil)])
        for ipv6 in [false, true] {
            let good = Self.request(ipv6: ipv6)
            #expect(try l1.xdp.testRun(packet: good).action == XDP_TX_ACTION && model.predict(good).unseenReason == nil)
        }
        var udp = Self.request()
        udp[41] ^= 0x01
        var ip = Self.request()
        ip[25] ^= 0x01
        var udp6 = Self.request(ipv6: true)
        udp6[61] ^= 0x01 // IPv6 has no header checksum; its UDP checksum is mandatory
        let before = try l1.stat(L1_STAT_PASS_BAD_CHECKSUM)
        for (what, frame) in [("UDP checksum", udp), ("IPv4 header checksum", ip), ("IPv6 UDP checksum", udp6)] {
            let run = try l1.xdp.testRun(packet: frame)
            #expect(run.action == XDP_PASS_ACTION && run.packet == frame, "\(what) wrong: passed untouched")
            #expect(model.predict(frame).unseenReason != nil, "\(what): the model says memcached never sees it")
        }
        #expect(try l1.stat(L1_STAT_PASS_BAD_CHECKSUM) == before + 3)
        let offloaded = Self.offloaded()
        let p = model.predict(offloaded)
        let run = try l1.xdp.testRun(packet: offloaded)
        #expect(p.unseenReason == nil && run.action == XDP_TX_ACTION && run.packet == p.answer,
                "an offloaded checksum is answered, byte-exact as the model says")
    }
}

/// Found while fuzzing (docs/reliability.md): `mcache_conns` kept an entry for every UDP client
/// port that ever wrote, so after 16 384 of them every new writer emptied L1. Egress now drops a
/// UDP peer's entry once its writes are settled.
@Suite(.enabled(if: Privilege.canRun, "needs root (BPF)"), .serialized)
struct ConnsExhaustionTests {
    @Test func manyUDPWritersDoNotEmptyL1ForGood() throws {
        let l1 = try L1Harness(hold: 0, noreplyHold: 0, inflightMax: 0)
        var peers = Peers()
        try l1.prime(&peers, key: "foo", value: "bar") // its TCP stream now has an entry
        for i in 0..<16_500 {
            let writer = Peers(clientPort: UInt16(1024 + i))
            try l1.ingress(writer.request(id: 1, "delete other\(i % 10)\r\n"))
            try l1.egress(writer.reply(id: 1, "NOT_FOUND\r\n"))
        }
        try l1.prime(&peers, key: "foo", value: "bar")
        #expect(try l1.ingress(peers.request(id: 2, "get foo\r\n")).action == XDP_TX_ACTION)
        // One more write, of another key, from a new client port.
        try l1.ingress(Peers(clientPort: 30000).request(id: 1, "delete bar\r\n"))
        let afterUDP = try l1.ingress(peers.request(id: 3, "get foo\r\n")).action
        // A new TCP connection writing another key.
        try l1.prime(&peers, key: "foo", value: "bar")
        var other = Peers(clientPort: 40001, tcpPort: 50001)
        try l1.ingress(other.syn())
        try l1.ingress(other.send("set zzz 0 0 1\r\nz\r\n"))
        let afterTCP = try l1.ingress(peers.request(id: 4, "get foo\r\n")).action
        #expect(afterUDP == XDP_TX_ACTION, "a UDP write from a new port must not empty L1")
        #expect(afterTCP == XDP_TX_ACTION, "a new TCP stream must not empty L1")
    }
}
