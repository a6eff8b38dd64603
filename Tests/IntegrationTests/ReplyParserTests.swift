import MemcacheClient
import Testing

@Suite struct ReplyParserTests {
    private func parse(_ text: String) throws -> MemcacheReply {
        try MemcacheReplyParser.parseComplete(Array(text.utf8))
    }

    @Test func valueWhoseDataHoldsLineEndsIsTakenByLength() throws {
        let reply = try parse("VALUE k 5 10\r\nab\r\nEND\r\nc\r\nEND\r\n")
        #expect(reply == .values([MemcacheValue(key: "k", flags: 5, data: Array("ab\r\nEND\r\nc".utf8))]))
    }

    @Test func multipleValuesWithCAS() throws {
        let reply = try parse("VALUE a 0 1 17\r\nx\r\nVALUE b 4294967295 0 18\r\n\r\nEND\r\n")
        #expect(reply.values == [
            MemcacheValue(key: "a", flags: 0, cas: 17, data: Array("x".utf8)),
            MemcacheValue(key: "b", flags: .max, cas: 18, data: []),
        ])
    }

    @Test func binaryDataRoundTrips() throws {
        let data: [UInt8] = Array(0...255)
        let bytes = Array("VALUE bin 0 256\r\n".utf8) + data + Array("\r\nEND\r\n".utf8)
        #expect(try MemcacheReplyParser.parseComplete(bytes).values.first?.data == data)
    }

    @Test func missIsAnEmptyValueList() throws {
        #expect(try parse("END\r\n") == .values([]))
    }

    @Test(arguments: [
        ("STORED\r\n", MemcacheReply.stored), ("NOT_STORED\r\n", .notStored), ("EXISTS\r\n", .exists),
        ("NOT_FOUND\r\n", .notFound), ("DELETED\r\n", .deleted), ("TOUCHED\r\n", .touched), ("OK\r\n", .ok),
        ("ERROR\r\n", .error), ("CLIENT_ERROR bad data chunk\r\n", .clientError("bad data chunk")),
        ("SERVER_ERROR out of memory storing object\r\n", .serverError("out of memory storing object")),
        ("42\r\n", .number(42)), ("VERSION 1.6.18\r\n", .version("1.6.18")),
        ("HD c5 f0\r\n", .meta(MetaReply(code: "HD", flags: ["c5", "f0"]))), ("EN\r\n", .meta(MetaReply(code: "EN"))),
        ("NF\r\n", .meta(MetaReply(code: "NF"))), ("MN\r\n", .meta(MetaReply(code: "MN"))),
    ])
    func oneLineReplies(text: String, expected: MemcacheReply) throws {
        #expect(try parse(text) == expected)
    }

    @Test func metaValue() throws {
        #expect(try parse("VA 4 f3 kfoo\r\na\r\nb\r\n")
            == .meta(MetaReply(code: "VA", flags: ["f3", "kfoo"], value: Array("a\r\nb".utf8))))
    }

    @Test func stats() throws {
        let reply = try parse("STAT pid 12\r\nSTAT version 1.6.18\r\nSTAT rusage_user 0.1 x\r\nEND\r\n")
        #expect(reply == .stats(["pid": "12", "version": "1.6.18", "rusage_user": "0.1 x"]))
    }

    @Test func everyPrefixOfAReplyIsIncomplete() throws {
        let bytes = Array("VALUE k 0 4 9\r\n\r\n\r\n\r\nVALUE j 1 0\r\n\r\nEND\r\n".utf8)
        for length in 0..<bytes.count {
            #expect(try MemcacheReplyParser.parse(Array(bytes.prefix(length))) == nil, "prefix of \(length) bytes")
        }
        #expect(try MemcacheReplyParser.parse(bytes)?.end == bytes.count)
    }

    @Test func repliesAreParsedOneAfterAnother() throws {
        let bytes = Array("STORED\r\nVALUE k 0 1\r\nx\r\nEND\r\nDELETED\r\n".utf8)
        var index = 0
        var replies: [MemcacheReply] = []
        while let (reply, end) = try MemcacheReplyParser.parse(bytes, from: index) {
            replies.append(reply)
            index = end
        }
        #expect(replies == [.stored, .values([MemcacheValue(key: "k", data: [UInt8(ascii: "x")])]), .deleted])
        #expect(index == bytes.count)
    }

    @Test(arguments: [
        "VALUE k 0 3\r\nabcd\r\nEND\r\n",     // data longer than declared
        "VALUE k 0\r\nab\r\nEND\r\n",          // no length
        "VALUE k x 2\r\nab\r\nEND\r\n",        // bad flags
        "VALUE k 0 2\r\nab\r\nSTORED\r\n",     // not END after the values
        "WHAT\r\n",
        "STORED\rX",
    ])
    func malformed(text: String) {
        #expect(throws: MemcacheError.self) { try MemcacheReplyParser.parse(Array(text.utf8)) }
    }

    @Test func trailingBytesAreRejectedByParseComplete() {
        #expect(throws: MemcacheError.self) { try parse("END\r\nEND\r\n") }
        #expect(throws: MemcacheError.self) { try parse("VALUE k 0 1\r\nx\r\n") }
    }

    @Test func endlessLineIsMalformedNotIncomplete() {
        let garbage = [UInt8](repeating: UInt8(ascii: "a"), count: 5000)
        #expect(throws: MemcacheError.self) { try MemcacheReplyParser.parse(garbage) }
    }
}
