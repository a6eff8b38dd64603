import NIOCore
import Testing
@testable import Peering

extension PeeringTests {
    @Suite("Meta protocol codec")
    struct MetaProtocolTests {
        @Test("base64 matches RFC 4648 vectors and round-trips")
        func base64() {
            let vectors = ["": "", "f": "Zg==", "fo": "Zm8=", "foo": "Zm9v", "foob": "Zm9vYg==", "fooba": "Zm9vYmE=",
                           "foobar": "Zm9vYmFy"]
            for (plain, encoded) in vectors {
                #expect(Base64.encode(bytes(plain)) == encoded)
                #expect(Base64.decode(encoded) == bytes(plain))
            }
            let all = (0..<256).map { UInt8($0) }
            #expect(Base64.decode(Base64.encode(all)) == all)
            for bad in ["Zg=", "Z===", "Zm9v!", "=Zm9", "Zg=a"] { #expect(Base64.decode(bad) == nil, "\(bad)") }
        }

        @Test("keys: printable ASCII as is, anything else base64 with b, limits enforced")
        func wireKeys() throws {
            let plain = try WireKey(bytes("user:42"))
            #expect(plain.token == "user:42" && !plain.isBase64)
            let spaced = try WireKey(bytes("a b"))
            #expect(spaced.token == "YSBi" && spaced.isBase64)
            #expect(try WireKey([UInt8](repeating: 0x61, count: 250)).isBase64 == false)
            #expect(throws: PeerError.self) { try WireKey([]) }
            #expect(throws: PeerError.self) { try WireKey([UInt8](repeating: 0x61, count: 251)) }
            #expect(try WireKey([UInt8](repeating: 0, count: 186)).token.count == 248)
            #expect(throws: PeerError.self) { try WireKey([UInt8](repeating: 0, count: 187)) }
        }

        @Test("requests encode as memcached 1.6 expects")
        func encoding() throws {
            var buffer = ByteBuffer()
            MetaEncoder.get(try WireKey(bytes("k")), opaque: "7", quiet: true, into: &buffer)
            MetaEncoder.set(try WireKey([0xff]), value: bytes("ab"), flags: 5, ttl: 60, mode: .append, compareCAS: 9,
                            opaque: "8", into: &buffer)
            MetaEncoder.delete(try WireKey(bytes("k")), compareCAS: nil, opaque: "9", into: &buffer)
            MetaEncoder.noop(into: &buffer)
            #expect(String(buffer: buffer) == "mg k v f c t O7 q\r\nms /w== 2 T60 F5 c O8 MA C9 b\r\nab\r\nmd k O9\r\nmn\r\n")
        }

        @Test("responses decode across arbitrary splits")
        func responseSplits() throws {
            let wire = bytes("VA 5 f3 c9 O1\r\na\r\nbc\r\nEN\r\nHD c10 O2\r\nCLIENT_ERROR bad command line format\r\nMN\r\n")
            for split in 1..<wire.count {
                var buffer = ByteBuffer(bytes: wire[..<split])
                var out: [MetaResponse] = []
                while let r = try MetaResponseDecoder.parse(&buffer, maxLineLength: 100, maxValueSize: 100) { out.append(r) }
                buffer.writeBytes(wire[split...])
                while let r = try MetaResponseDecoder.parse(&buffer, maxLineLength: 100, maxValueSize: 100) { out.append(r) }
                #expect(out == [
                    MetaResponse(code: "VA", tokens: ["f3", "c9", "O1"], value: bytes("a\r\nbc")),
                    MetaResponse(code: "EN"),
                    MetaResponse(code: "HD", tokens: ["c10", "O2"]),
                    MetaResponse(code: "CLIENT_ERROR", tokens: ["bad command line format"]),
                    MetaResponse(code: "MN"),
                ], "split at \(split)")
                #expect(buffer.readableBytes == 0)
            }
            #expect(MetaResponse(code: "VA", tokens: ["f3", "c9"]).flag("c") == "9")
        }

        @Test("malformed responses are framing errors")
        func badResponses() {
            for (wire, reason) in [("VA x\r\n", "VA without a valid size: 'VA x'"), ("VA 2\r\nabcd\r\n", "VA data block not terminated by \\r\\n"),
                                   ("VA 1000\r\n", "VA of 1000 bytes exceeds the limit of 100"), ("HD\n", "line not terminated by \\r\\n")] {
                var buffer = ByteBuffer(string: wire)
                #expect(throws: MetaFramingError(reason)) {
                    _ = try MetaResponseDecoder.parse(&buffer, maxLineLength: 100, maxValueSize: 100)
                }
            }
        }

        @Test("requests decode: keys, base64 keys, flags, data blocks")
        func requests() throws {
            var buffer = ByteBuffer(string: "ms YSBi 3 T5 F1 b\r\nx\r\n\r\nmg k v O1\r\nmn\r\nAU 0 aa bb\r\n")
            let first = try MetaRequestDecoder.parse(&buffer, maxLineLength: 100, maxValueSize: 100)
            #expect(first == .command(MetaRequest(command: .ms, keyToken: "YSBi", key: bytes("a b"),
                                                  flags: [MetaFlag("T", "5"), MetaFlag("F", "1"), MetaFlag("b")],
                                                  value: bytes("x\r\n"))))
            let second = try MetaRequestDecoder.parse(&buffer, maxLineLength: 100, maxValueSize: 100)
            #expect(second == .command(MetaRequest(command: .mg, keyToken: "k", key: bytes("k"),
                                                   flags: [MetaFlag("v"), MetaFlag("O", "1")])))
            #expect(try MetaRequestDecoder.parse(&buffer, maxLineLength: 100, maxValueSize: 100)
                == .command(MetaRequest(command: .mn, keyToken: "", key: [], flags: [])))
            #expect(try MetaRequestDecoder.parse(&buffer, maxLineLength: 100, maxValueSize: 100) == .auth(["0", "aa", "bb"]))
            #expect(try MetaRequestDecoder.parse(&buffer, maxLineLength: 100, maxValueSize: 100) == nil)
            // An incomplete data block waits for more bytes, consuming nothing.
            var partial = ByteBuffer(string: "ms k 10\r\nabc")
            #expect(try MetaRequestDecoder.parse(&partial, maxLineLength: 100, maxValueSize: 100) == nil)
            #expect(partial.readableBytes == 12)
            var long = ByteBuffer(string: "mg " + String(repeating: "a", count: 251) + " v\r\n")
            #expect(throws: MetaFramingError("key longer than 250 bytes")) {
                _ = try MetaRequestDecoder.parse(&long, maxLineLength: 1000, maxValueSize: 100)
            }
        }

        @Test("handshake tags bind both nonces and both node ids")
        func handshakeTags() throws {
            let ns = Handshake.makeNonce(), nc = Handshake.makeNonce()
            #expect(ns.count == 32 && ns != nc)
            let tag = Handshake.clientTag(psk: testPSK, serverNonce: ns, clientNonce: nc, client: 0, server: 1)
            #expect(tag.count == 32)
            #expect(Handshake.verifyClient(tag, psk: testPSK, serverNonce: ns, clientNonce: nc, client: 0, server: 1))
            #expect(!Handshake.verifyClient(tag, psk: testPSK, serverNonce: nc, clientNonce: nc, client: 0, server: 1))
            #expect(!Handshake.verifyClient(tag, psk: testPSK, serverNonce: ns, clientNonce: ns, client: 0, server: 1))
            #expect(!Handshake.verifyClient(tag, psk: testPSK, serverNonce: ns, clientNonce: nc, client: 1, server: 0))
            #expect(!Handshake.verifyServer(tag, psk: testPSK, serverNonce: ns, clientNonce: nc, client: 0, server: 1))
            let other = try PreSharedKey("some-other-key-0123456789")
            #expect(!Handshake.verifyClient(tag, psk: other, serverNonce: ns, clientNonce: nc, client: 0, server: 1))
            #expect(!Handshake.verifyClient(Array(tag.dropLast()), psk: testPSK, serverNonce: ns, clientNonce: nc,
                                            client: 0, server: 1))
        }
    }
}
