import MemcacheClient
import Testing

@Suite struct CommandEncodingTests {
    private func text(_ command: MemcacheCommand) -> String { String(decoding: command.bytes, as: UTF8.self) }

    @Test func storageCommands() {
        #expect(text(.store(.set, key: "k", value: Array("v\r\n".utf8), flags: 7, exptime: 60)) == "set k 7 60 3\r\nv\r\n\r\n")
        #expect(text(.store(.prepend, key: "k", value: [], noreply: true)) == "prepend k 0 0 0 noreply\r\n\r\n")
        #expect(text(.cas(key: "k", value: Array("ab".utf8), cas: 99)) == "cas k 0 0 2 99\r\nab\r\n")
        #expect(MemcacheCommand.store(.add, key: "k", value: [], noreply: true).expectsReply == false)
    }

    @Test func retrievalAndOtherCommands() {
        #expect(text(.get(["a", "b"])) == "get a b\r\n")
        #expect(text(.gets(["a"])) == "gets a\r\n")
        #expect(text(.gat(exptime: 10, keys: ["a", "b"])) == "gat 10 a b\r\n")
        #expect(text(.gats(exptime: 0, keys: ["a"])) == "gats 0 a\r\n")
        #expect(text(.delete("a", noreply: true)) == "delete a noreply\r\n")
        #expect(text(.incr("n", by: 5)) == "incr n 5\r\n")
        #expect(text(.decr("n", by: 1, noreply: true)) == "decr n 1 noreply\r\n")
        #expect(text(.touch("a", exptime: 30)) == "touch a 30\r\n")
        #expect(text(.flushAll()) == "flush_all\r\n")
        #expect(text(.flushAll(delay: 5, noreply: true)) == "flush_all 5 noreply\r\n")
    }

    @Test func metaCommands() {
        #expect(text(.metaGet("k", flags: ["v", "c", "t"])) == "mg k v c t\r\n")
        #expect(text(.metaSet("k", value: Array("xy".utf8), flags: ["T60", "F3"])) == "ms k 2 T60 F3\r\nxy\r\n")
        #expect(text(.metaDelete("k", flags: ["q"])) == "md k q\r\n")
        #expect(MemcacheCommand.metaDelete("k", flags: ["q"]).expectsReply == false)
        #expect(text(.metaArithmetic("n", flags: ["MD", "D3"])) == "ma n MD D3\r\n")
        #expect(text(.metaNoop) == "mn\r\n")
    }
}

@Suite struct UDPFramingTests {
    @Test func headerIsBigEndian() {
        let header = MemcacheUDPHeader(requestID: 0x1234, sequence: 2, total: 3)
        #expect(header.bytes == [0x12, 0x34, 0x00, 0x02, 0x00, 0x03, 0x00, 0x00])
        #expect(MemcacheUDPHeader(header.bytes) == header)
        #expect(MemcacheUDPHeader([0, 1, 2]) == nil)
    }

    @Test func requestDatagramIsHeaderThenCommand() {
        let datagram = MemcacheUDPRequest.get(requestID: 0xBEEF, keys: ["k1", "k2"])
        #expect(datagram == [0xBE, 0xEF, 0, 0, 0, 1, 0, 0] + Array("get k1 k2\r\n".utf8))
        #expect(MemcacheUDPRequest.get(requestID: 1, keys: ["a"], withCAS: true).dropFirst(8).elementsEqual("gets a\r\n".utf8))
    }

    private func datagram(_ id: UInt16, _ seq: UInt16, _ total: UInt16, _ text: String) -> [UInt8] {
        MemcacheUDPHeader(requestID: id, sequence: seq, total: total).bytes + Array(text.utf8)
    }

    @Test func outOfOrderDatagramsOfOneMessage() throws {
        var assembler = UDPReplyAssembler()
        #expect(try assembler.add(datagram(7, 2, 3, "\r\nEND\r\n")) == nil)
        #expect(try assembler.add(datagram(7, 0, 3, "VALUE k 0 6\r\nabc")) == nil)
        let response = try #require(try assembler.add(datagram(7, 1, 3, "def")))
        #expect(response.requestID == 7)
        #expect(response.datagrams.count == 3)
        #expect(try response.reply.get() == .values([MemcacheValue(key: "k", data: Array("abcdef".utf8))]))
        #expect(assembler.pendingCount == 0)
    }

    /// memcached 1.6 sends each item of a multi-key GET as its own message, numbered from 0.
    @Test func oneMessagePerItemAsMemcachedSendsThem() throws {
        var assembler = UDPReplyAssembler()
        #expect(try assembler.add(datagram(9, 0, 1, "VALUE a 0 1\r\nx\r\n")) == nil)
        #expect(try assembler.add(datagram(9, 0, 2, "VALUE b 0 3\r\ny")) == nil)
        #expect(try assembler.add(datagram(9, 1, 2, "yy\r\n")) == nil)
        let response = try #require(try assembler.add(datagram(9, 0, 1, "VALUE c 0 1\r\nz\r\nEND\r\n")))
        #expect(try response.reply.get().values.map(\.key) == ["a", "b", "c"])
        #expect(response.datagrams.count == 4)
    }

    @Test func interleavedRequestsAreKeptApart() throws {
        var assembler = UDPReplyAssembler()
        #expect(try assembler.add(datagram(1, 0, 2, "VALUE a 0 1\r\n")) == nil)
        let second = try #require(try assembler.add(datagram(2, 0, 1, "END\r\n")))
        #expect(second.requestID == 2)
        let first = try #require(try assembler.add(datagram(1, 1, 2, "1\r\nEND\r\n")))
        #expect(try first.reply.get().values == [MemcacheValue(key: "a", data: Array("1".utf8))])
    }

    @Test func lostDatagramIsDetectedWhenTheNextMessageStarts() throws {
        var assembler = UDPReplyAssembler()
        #expect(try assembler.add(datagram(3, 0, 2, "VALUE a 0 1\r\n")) == nil)
        #expect(throws: MemcacheError.self) { try assembler.add(datagram(3, 0, 1, "END\r\n")) }
        #expect(assembler.pendingCount == 0)
    }

    @Test func discardForgetsPartialReplies() throws {
        var assembler = UDPReplyAssembler()
        _ = try assembler.add(datagram(4, 0, 2, "VALUE a 0 1\r\n"))
        assembler.discard(requestID: 4)
        #expect(assembler.pendingCount == 0)
    }

    @Test func badHeadersThrow() {
        var assembler = UDPReplyAssembler()
        #expect(throws: MemcacheError.self) { try assembler.add([1, 2, 3]) }
        #expect(throws: MemcacheError.self) { try assembler.add(datagram(5, 3, 3, "x")) }
        #expect(throws: MemcacheError.self) { try assembler.add(datagram(5, 0, 0, "x")) }
    }
}

@Suite struct BinaryProtocolTests {
    @Test func setRequestLayout() {
        let bytes = MemcacheBinary.set(key: "ab", value: [0xFF], flags: 0x0102_0304, exptime: 60, opaque: 9)
        #expect(bytes == [
            0x80, 0x01, 0x00, 0x02, 0x08, 0x00, 0x00, 0x00,  // magic, opcode, key len, extras len, type, vbucket
            0x00, 0x00, 0x00, 0x0B,  // body: 8 extras + 2 key + 1 value
            0x00, 0x00, 0x00, 0x09,  // opaque
            0, 0, 0, 0, 0, 0, 0, 0,  // cas
            0x01, 0x02, 0x03, 0x04, 0x00, 0x00, 0x00, 0x3C,  // flags, exptime
            0x61, 0x62, 0xFF,
        ])
    }

    @Test func deleteRequestAndResponse() throws {
        #expect(MemcacheBinary.delete(key: "k") == [0x80, 0x04, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1] + [UInt8](repeating: 0, count: 12) + [0x6B])
        let response: [UInt8] = [0x81, 0x04, 0, 0, 0, 0, 0x00, 0x01, 0, 0, 0, 9, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 5]
            + Array("Not found".utf8)
        #expect(try MemcacheBinary.parseResponse(Array(response.dropLast())) == nil)
        let (parsed, end) = try #require(try MemcacheBinary.parseResponse(response))
        #expect(end == response.count)
        #expect(parsed.status == MemcacheBinary.Status.keyNotFound.rawValue)
        #expect(parsed.opaque == 7)
        #expect(parsed.cas == 5)
        #expect(parsed.value == Array("Not found".utf8))
    }
}

@Suite struct CheckableValueTests {
    @Test func patternDependsOnKeyAndSize() {
        #expect(CheckableValue.pattern(forKey: "k1", size: 7) == Array("k1|k1|k".utf8))
        #expect(CheckableValue.pattern(forKey: "k1", size: 0) == [])
        #expect(CheckableValue.pattern(forKey: "k1", size: 30) != CheckableValue.pattern(forKey: "k2", size: 30))
    }

    @Test func versionedValuesRoundTrip() {
        let value = CheckableValue.versioned(key: "hot3", version: 123, size: 40)
        #expect(value.count == 40)
        #expect(String(decoding: value, as: UTF8.self).hasPrefix("key=hot3 v=000000000123 ...."))
        #expect(CheckableValue.version(in: value, key: "hot3", size: 40) == 123)
        #expect(CheckableValue.version(in: value, key: "hot4", size: 40) == nil)
        #expect(CheckableValue.version(in: Array(value.dropLast()), key: "hot3", size: 40) == nil)
        var flipped = value
        flipped[39] = UInt8(ascii: "x")
        #expect(CheckableValue.version(in: flipped, key: "hot3", size: 40) == nil)
        // A size below the header grows the value to fit it.
        let small = CheckableValue.versioned(key: "k", version: 1, size: 1)
        #expect(CheckableValue.version(in: small, key: "k", size: 1) == 1)
    }
}
