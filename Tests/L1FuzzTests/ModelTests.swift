import L1Fuzz
import L1Model
import L1TestSupport
import Testing

/// The model on its own (no BPF): what it calls a GET, and the reply frames it builds.
struct ModelTests {
    static let item = L1Model.Item(key: Array("foo".utf8), flags: 42, value: Array("bar".utf8), cas: 7)

    static func request(_ text: String, ipv6: Bool = false, vlan: Bool = false) -> [UInt8] {
        var s = FrameSpec()
        if ipv6 {
            s.ipv6 = true
            s.src = Packet.v6("fd00::2")
            s.dst = Packet.v6("fd00::1")
        }
        if vlan { s.vlans = [(0x8100, 100)] }
        s.payload = Packet.frameHeader(id: 9) + Array(text.utf8)
        return s.bytes
    }

    @Test(arguments: [
        ("get foo\r\n", ["foo"]), ("gets  foo bar \r\n", ["foo", "bar"]), ("get a  b\r\n", ["a", "b"]),
    ])
    func getsItAccepts(_ text: String, _ keys: [String]) {
        let parsed = L1Model.parseGet(ArraySlice(Array(text.utf8)))
        #expect(parsed?.keys == keys.map { Array($0.utf8) })
    }

    @Test(arguments: [
        "get foo\n", "get \r\n", "get\r\n", "GET foo\r\n", "getx foo\r\n", "get fo\u{1}o\r\n", "get foo\r\nget foo\r\n",
        "get fo\u{7f}\r\n", "get \(String(repeating: "k", count: 251))\r\n", "get " + Array(repeating: "a", count: 17).joined(separator: " ") + "\r\n",
    ])
    func requestsItRefuses(_ text: String) {
        #expect(L1Model.parseGet(ArraySlice(Array(text.utf8))) == nil)
    }

    @Test(arguments: [(false, false), (true, false), (false, true), (true, true)])
    func replyFrameIsAValidSwappedDatagram(_ ipv6: Bool, _ vlan: Bool) throws {
        var model = L1Model()
        model.reset(to: [Self.item])
        let frame = Self.request("gets foo\r\n", ipv6: ipv6, vlan: vlan)
        let p = model.predict(frame)
        let answer = try #require(p.answer)
        #expect(p.mustAnswer && p.unseenReason == nil)
        // FrameView reads untagged frames: drop the tag to check lengths and checksums.
        let untagged = vlan ? Array(answer[0..<12] + answer[16...]) : answer
        let view = FrameView(bytes: untagged)
        #expect(view.ipChecksumValid && view.udpChecksumValid && view.udpLengthValid && view.ipLengthValid)
        #expect(view.payload == Packet.frameHeader(id: 9) + Array("VALUE foo 42 3 7\r\nbar\r\nEND\r\n".utf8))
        #expect(view.dstMAC == Array(frame[6..<12]) && view.srcMAC == Array(frame[0..<6]))
    }

    @Test func uncertainKeysMayHitOrPassAndWrittenKeysMustPass() {
        var model = L1Model()
        model.reset(to: [Self.item])
        var write = FrameSpec()
        write.payload = Packet.frameHeader(id: 1) + Array("delete foo\r\n".utf8)
        let w = model.predict(write.bytes)
        #expect(w.effect == .mayChange(written: [Array("foo".utf8)], flush: false))
        model.observe(w, answered: false)
        #expect(model.predict(Self.request("get foo\r\n")).answer == nil)
    }

    @Test func corruptChecksumIsAnswerMemcachedNeverSees() {
        var model = L1Model()
        model.reset(to: [Self.item])
        var ipBroken = Self.request("get foo\r\n")
        ipBroken[24] ^= 1 // IPv4 header checksum
        var udpBroken = Self.request("get foo\r\n")
        udpBroken[40] ^= 1 // UDP checksum
        for frame in [ipBroken, udpBroken] {
            let p = model.predict(frame)
            #expect(p.answer != nil && p.unseenReason != nil)
        }
        #expect(model.predict(Self.request("get foo\r\n")).unseenReason == nil)
    }
}
