import CXLBMCABI
import Foundation
import L1TestSupport
import Loader
import Testing

/// A binary-protocol request: 24-byte header, extras, key, value.
func binaryRequest(opcode: UInt8, key: String, extras: [UInt8] = [], value: [UInt8] = []) -> [UInt8] {
    let k = Array(key.utf8)
    var h: [UInt8] = [0x80, opcode] + Packet.be16(UInt16(k.count)) + [UInt8(extras.count), 0, 0, 0]
    h += Packet.be32(UInt32(extras.count + k.count + value.count)) + [0, 0, 0, 0] + [UInt8](repeating: 0, count: 8)
    return h + extras + k + value
}

/// Every write memcached accepts must drop the key from L1, whatever the
/// protocol, however the bytes are split into segments.
@Suite(.enabled(if: Privilege.canRun, "needs root (BPF)"), .serialized)
struct WriteFixtureTests {
    static let textWrites: [(String, [String])] = [
        ("set", ["set k 0 0 1\r\nx\r\n"]),
        ("add", ["add k 0 0 1\r\nx\r\n"]),
        ("replace", ["replace k 0 0 1\r\nx\r\n"]),
        ("append", ["append k 0 0 1\r\nx\r\n"]),
        ("prepend", ["prepend k 0 0 1\r\nx\r\n"]),
        ("cas", ["cas k 0 0 1 99\r\nx\r\n"]),
        ("incr", ["incr k 1\r\n"]),
        ("decr", ["decr k 1\r\n"]),
        ("delete", ["delete k\r\n"]),
        ("delete noreply", ["delete k noreply\r\n"]),
        ("set noreply", ["set k 0 0 1 noreply\r\nx\r\n"]),
        ("touch", ["touch k 10\r\n"]),
        ("gat", ["gat 10 k\r\n"]),
        ("gats, second key", ["gats 10 other k\r\n"]),
        ("ms", ["ms k 1 T10\r\nx\r\n"]),
        ("ms append mode", ["ms k 1 MA\r\nx\r\n"]),
        ("ms quiet", ["ms k 1 q\r\nx\r\n"]),
        ("md", ["md k\r\n"]),
        ("md quiet", ["md k q\r\n"]),
        ("ma", ["ma k\r\n"]),
        ("mg with T", ["mg k T30 v\r\n"]),
        ("mg with N", ["mg k N30 v\r\n"]),
        ("extra spaces", ["delete   k\r\n"]),
        ("pipelined after reads", ["get a\r\nmn\r\ngets a b\r\ndelete k\r\n"]),
        ("after another write's value", ["set other 0 0 3\r\nabc\r\ndelete k\r\n"]),
        ("command split", ["de", "lete k\r\n"]),
        ("split inside the key", ["delete ", "k\r\n"]),
        ("split before CRLF", ["delete k", "\r\n"]),
        ("value split across segments", ["set k 0 0 5\r\nab", "cde\r\n"]),
        ("next command after a split value", ["set other 0 0 5\r\nab", "cde\r\ndelete k\r\n"]),
    ]

    @Test(arguments: textWrites)
    func textWriteInvalidates(_ name: String, _ segments: [String]) throws {
        let l1 = try L1Harness()
        var peers = Peers()
        try l1.prime(&peers, key: "k", value: "v")
        #expect(try l1.ingress(peers.request(id: 2, "get k\r\n")).action == XDP_TX_ACTION)
        for segment in segments {
            #expect(try l1.ingress(peers.send(segment)).action == XDP_PASS_ACTION)
        }
        #expect(try l1.ingress(peers.request(id: 3, "get k\r\n")).action == XDP_PASS_ACTION, "\(name)")
        #expect(try l1.stat(L1_STAT_DESYNC) == 0, "\(name)")
    }

    static let binaryWrites: [(String, [UInt8])] = [
        ("set", binaryRequest(opcode: 0x01, key: "k", extras: [0, 0, 0, 0, 0, 0, 0, 0], value: [0x78])),
        ("setq", binaryRequest(opcode: 0x11, key: "k", extras: [0, 0, 0, 0, 0, 0, 0, 0], value: [0x78])),
        ("add", binaryRequest(opcode: 0x02, key: "k", extras: [0, 0, 0, 0, 0, 0, 0, 0], value: [0x78])),
        ("delete", binaryRequest(opcode: 0x04, key: "k")),
        ("increment", binaryRequest(opcode: 0x05, key: "k", extras: [UInt8](repeating: 0, count: 20))),
        ("append", binaryRequest(opcode: 0x0e, key: "k", value: [0x78])),
        ("touch", binaryRequest(opcode: 0x1c, key: "k", extras: [0, 0, 0, 10])),
        ("gat", binaryRequest(opcode: 0x1d, key: "k", extras: [0, 0, 0, 10])),
        ("after a get", binaryRequest(opcode: 0x00, key: "a") + binaryRequest(opcode: 0x04, key: "k")),
    ]

    @Test(arguments: binaryWrites)
    func binaryWriteInvalidates(_ name: String, _ bytes: [UInt8]) throws {
        let l1 = try L1Harness()
        var text = Peers()
        try l1.prime(&text, key: "k", value: "v")
        var binary = Peers(tcpPort: 50001)
        try l1.ingress(binary.syn())
        try l1.ingress(binary.send(bytes))
        #expect(try l1.ingress(text.request(id: 3, "get k\r\n")).action == XDP_PASS_ACTION, "\(name)")
    }

    @Test func binaryHeaderSplitAcrossSegments() throws {
        let l1 = try L1Harness()
        var text = Peers()
        try l1.prime(&text, key: "k", value: "v")
        var binary = Peers(tcpPort: 50001)
        try l1.ingress(binary.syn())
        let request = binaryRequest(opcode: 0x04, key: "k")
        try l1.ingress(binary.send(Array(request.prefix(10))))
        #expect(try l1.ingress(text.request(id: 3, "get k\r\n")).action == XDP_TX_ACTION)
        try l1.ingress(binary.send(Array(request.dropFirst(10))))
        #expect(try l1.ingress(text.request(id: 4, "get k\r\n")).action == XDP_PASS_ACTION)
    }

    @Test func valueBytesThatLookLikeACommandAreNotCommands() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        try l1.prime(&peers, key: "k", value: "v")
        // The 12 value bytes are "delete k\r\nxx": data, not a command.
        try l1.ingress(peers.send("set other 0 0 12\r\ndelete k\r\nxx\r\n"))
        #expect(try l1.ingress(peers.request(id: 3, "get k\r\n")).action == XDP_TX_ACTION)
    }

    @Test func writeOverUDPInvalidates() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        try l1.prime(&peers, key: "k", value: "v")
        try l1.ingress(peers.request(id: 9, "set k 0 0 1\r\nx\r\n"))
        #expect(try l1.ingress(peers.request(id: 10, "get k\r\n")).action == XDP_PASS_ACTION)
    }

    @Test func flushAllBumpsTheEpoch() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        try l1.prime(&peers, key: "a", value: "1", id: 1)
        try l1.prime(&peers, key: "b", value: "2", id: 2)
        let before = try l1.state().epoch
        try l1.ingress(peers.send("flush_all\r\n"))
        #expect(try l1.state().epoch == before + 1)
        #expect(try l1.ingress(peers.request(id: 3, "get a\r\n")).action == XDP_PASS_ACTION)
        #expect(try l1.ingress(peers.request(id: 4, "get b\r\n")).action == XDP_PASS_ACTION)
        #expect(try l1.stat(L1_STAT_FLUSH) == 1)
    }
}

/// The fill protocol: a reply may fill L1 only if nothing was written to the
/// key since its GET entered.
@Suite(.enabled(if: Privilege.canRun, "needs root (BPF)"), .serialized)
struct FillProtocolTests {
    @Test func writeBetweenGetAndReplyRefusesTheFill() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        try l1.store(&peers, key: "k", value: "old")
        try l1.ingress(peers.request(id: 1, "get k\r\n"))           // ticket taken
        try l1.ingress(peers.send("set k 0 0 3\r\nnew\r\n"))          // a write enters
        try l1.egress(peers.reply(id: 1, "VALUE k 0 3\r\nold\r\nEND\r\n")) // the old value leaves
        #expect(try l1.stat(L1_STAT_FILL) == 0)
        #expect(try l1.stat(L1_STAT_FILL_REFUSED) == 1)
        #expect(try l1.ingress(peers.request(id: 2, "get k\r\n")).action == XDP_PASS_ACTION)
    }

    @Test func writeInFlightRefusesFillsUntilItsReply() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        try l1.ingress(peers.syn())
        try l1.ingress(peers.send("set k 0 0 3\r\nnew\r\n"))  // no STORED yet
        try l1.ingress(peers.request(id: 1, "get k\r\n"))
        try l1.egress(peers.reply(id: 1, "VALUE k 0 3\r\nold\r\nEND\r\n"))
        #expect(try l1.stat(L1_STAT_FILL) == 0)
        try l1.egress(peers.answer("STORED\r\n"))
        try l1.ingress(peers.request(id: 2, "get k\r\n"))
        try l1.egress(peers.reply(id: 2, "VALUE k 0 3\r\nnew\r\nEND\r\n"))
        #expect(try l1.stat(L1_STAT_FILL) == 1)
    }

    @Test func valueStillArrivingIsNotReleasedByAnEarlierReply() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        try l1.ingress(peers.syn())
        try l1.ingress(peers.send("get a\r\nset k 0 0 6\r\nne"))   // value incomplete
        try l1.egress(peers.answer("END\r\n"))                     // reply to "get a" only
        try l1.ingress(peers.request(id: 1, "get k\r\n"))
        try l1.egress(peers.reply(id: 1, "VALUE k 0 3\r\nold\r\nEND\r\n"))
        #expect(try l1.stat(L1_STAT_FILL) == 0)
        try l1.ingress(peers.send("wval\r\n"))
        try l1.egress(peers.answer("STORED\r\n"))
        #expect(try l1.stat(L1_STAT_RELEASE) == 1)
    }

    @Test func holdAfterReleaseRefusesFills() throws {
        let l1 = try L1Harness(hold: 2_000_000_000)
        var peers = Peers()
        try l1.prime(&peers, key: "k", value: "v")
        #expect(try l1.stat(L1_STAT_FILL) == 0)
        #expect(try l1.stat(L1_STAT_FILL_REFUSED) == 1)
    }

    @Test func noreplyWriteRefusesFillsForTheHold() throws {
        let l1 = try L1Harness(noreplyHold: 2_000_000_000)
        var peers = Peers()
        try l1.ingress(peers.syn())
        try l1.ingress(peers.send("set k 0 0 1 noreply\r\nx\r\n"))
        try l1.ingress(peers.request(id: 1, "get k\r\n"))
        try l1.egress(peers.reply(id: 1, "VALUE k 0 1\r\nx\r\nEND\r\n"))
        #expect(try l1.stat(L1_STAT_FILL) == 0)
    }

    @Test func retransmissionBlocksAllFillsButKeepsTheStream() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        try l1.prime(&peers, key: "k", value: "v", id: 1)
        let seq = peers.clientSeq
        try l1.ingress(peers.send("delete zz\r\n"))
        peers.clientSeq = seq
        try l1.ingress(peers.send("delete zz\r\n"))               // same bytes again
        #expect(try l1.stat(L1_STAT_RETRANSMIT) == 1)
        #expect(try l1.stat(L1_STAT_DESYNC) == 0)
        try l1.ingress(peers.request(id: 2, "get q\r\n"))
        try l1.egress(peers.reply(id: 2, "VALUE q 0 1\r\nq\r\nEND\r\n"))
        #expect(try l1.stat(L1_STAT_FILL) == 1)                    // only the primed one
        try l1.ingress(peers.send("delete k\r\n"))                 // still followed
        #expect(try l1.ingress(peers.request(id: 3, "get k\r\n")).action == XDP_PASS_ACTION)
    }

    @Test func lostStreamPositionInvalidatesEverything() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        try l1.prime(&peers, key: "k", value: "v")
        peers.clientSeq &+= 100                                    // a gap: bytes we never saw
        try l1.ingress(peers.send("whatever\r\n"))
        #expect(try l1.stat(L1_STAT_DESYNC) == 1)
        #expect(try l1.ingress(peers.request(id: 3, "get k\r\n")).action == XDP_PASS_ACTION)
    }

    @Test func streamOpenedBeforeAttachInvalidatesEverything() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        try l1.prime(&peers, key: "k", value: "v")
        var old = Peers(tcpPort: 50002)                            // no SYN seen
        try l1.ingress(old.send("set k 0 0 1\r\nx\r\n"))
        #expect(try l1.ingress(peers.request(id: 3, "get k\r\n")).action == XDP_PASS_ACTION)
    }

    @Test func ipFragmentInvalidatesEverything() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        try l1.prime(&peers, key: "k", value: "v")
        var fragment = peers.request(id: 9, "set k 0 0 1\r\nx\r\n")
        fragment.ipv4FragmentOffset = 0x2000                       // more fragments
        #expect(try l1.ingress(fragment).action == XDP_PASS_ACTION)
        #expect(try l1.ingress(peers.request(id: 3, "get k\r\n")).action == XDP_PASS_ACTION)
    }

    @Test func ipv4OptionsGetPassesButItsWritesAreTracked() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        try l1.prime(&peers, key: "k", value: "v", id: 1)
        try l1.prime(&peers, key: "other", value: "o", id: 2)
        var get = peers.request(id: 3, "get k\r\n")
        get.ipv4Options = [1, 1, 1, 0]                              // NOP NOP NOP EOL
        let run = try l1.ingress(get)
        #expect(run.action == XDP_PASS_ACTION)
        #expect(run.packet == get.bytes)
        var set = peers.request(id: 4, "set k 0 0 1\r\nx\r\n")
        set.ipv4Options = [1, 1, 1, 0]
        try l1.ingress(set)
        #expect(try l1.ingress(peers.request(id: 5, "get k\r\n")).action == XDP_PASS_ACTION)
        #expect(try l1.ingress(peers.request(id: 6, "get other\r\n")).action == XDP_TX_ACTION)
    }

    @Test func ipv6HopByHopWriteInvalidatesOnlyItsKey() throws {
        let l1 = try L1Harness()
        var peers = Peers(ipv6: true)
        try l1.prime(&peers, key: "k", value: "v", id: 1)
        try l1.prime(&peers, key: "other", value: "o", id: 2)
        var set = peers.request(id: 3, "set k 0 0 1\r\nx\r\n")
        set.ipv6HopByHop = true
        try l1.ingress(set)
        #expect(try l1.ingress(peers.request(id: 4, "get k\r\n")).action == XDP_PASS_ACTION)
        #expect(try l1.ingress(peers.request(id: 5, "get other\r\n")).action == XDP_TX_ACTION)
        #expect(try l1.stat(L1_STAT_GLOBAL_BLOCK) == 0)
    }

    @Test func base64MetaKeyInvalidatesEverything() throws {
        let l1 = try L1Harness()
        var peers = Peers()
        try l1.prime(&peers, key: "k", value: "v")
        try l1.ingress(peers.send("md aw== b\r\n"))
        #expect(try l1.ingress(peers.request(id: 3, "get k\r\n")).action == XDP_PASS_ACTION)
    }
}
