import NIOCore

// memcached's meta protocol (1.6), the subset peers speak: `mg`, `ms`, `md`, `mn`.
//
//   mg <key> <flags>*\r\n                    → VA <size> <flags>*\r\n<data>\r\n | HD <flags>*\r\n | EN\r\n
//   ms <key> <datalen> <flags>*\r\n<data>\r\n → HD | NS | EX | NF  (+ flags)
//   md <key> <flags>*\r\n                    → HD | NF | EX        (+ flags)
//   mn\r\n                                   → MN\r\n
//
// Flags are one letter, optionally followed by a token: v f t c k s b q O(opaque) T(ttl)
// F(client flags) C(compare CAS) M(mode). Keys are 1–250 bytes without spaces or control bytes;
// any other key travels base64-encoded with the `b` flag (so binary keys are at most 186 bytes).

/// One meta flag: its letter and the token glued to it (`O123` → `O`, `"123"`).
public struct MetaFlag: Equatable, Sendable {
    public var letter: UInt8
    public var token: String

    public init(_ letter: Character, _ token: String = "") {
        self.letter = letter.asciiValue!
        self.token = token
    }

    init(letter: UInt8, token: String) {
        self.letter = letter
        self.token = token
    }

    public var character: Character { Character(Unicode.Scalar(letter)) }
}

/// A reply line (and the data block of `VA`) as a peer sends it.
public struct MetaResponse: Equatable, Sendable {
    /// `VA`, `HD`, `EN`, `NS`, `EX`, `NF`, `MN`, the handshake's `AU`/`OK`, or one of the error
    /// lines `ERROR`, `CLIENT_ERROR`, `SERVER_ERROR`.
    public var code: String
    /// The tokens after the code (for `VA` the size is dropped: it is `value.count`).
    public var tokens: [String]
    public var value: [UInt8]?

    public init(code: String, tokens: [String] = [], value: [UInt8]? = nil) {
        self.code = code
        self.tokens = tokens
        self.value = value
    }

    public var isError: Bool { code == "ERROR" || code == "CLIENT_ERROR" || code == "SERVER_ERROR" }

    /// The line as sent, for messages.
    public var line: String { ([code] + tokens).joined(separator: " ") }

    /// The token of flag `letter` (`c` → the CAS digits), if the reply carries it.
    public func flag(_ letter: Unicode.Scalar) -> String? {
        let byte = UInt8(ascii: letter)
        return tokens.first { $0.utf8.first == byte }.map { String(decoding: $0.utf8.dropFirst(), as: UTF8.self) }
    }
}

/// Which write `ms` performs (`M` flag).
public enum StoreMode: Character, Sendable {
    case set = "S", add = "E", replace = "R", append = "A", prepend = "P"
}

public enum MetaLimits {
    /// memcached's KEY_MAX_LENGTH.
    public static let maxKeyLength = 250
    /// Longest binary key that fits 250 bytes once base64-encoded (186 bytes → 248 characters).
    public static let maxBinaryKeyLength = 186
}

/// How a key goes on the wire: as is when it is printable ASCII without spaces, else base64 with `b`.
struct WireKey {
    let token: String
    let isBase64: Bool

    init(_ key: [UInt8]) throws(PeerError) {
        guard !key.isEmpty else { throw .invalidKey("empty key") }
        if key.count <= MetaLimits.maxKeyLength, key.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) {
            token = String(decoding: key, as: UTF8.self)
            isBase64 = false
        } else {
            guard key.count <= MetaLimits.maxBinaryKeyLength else {
                throw .invalidKey("\(key.count) bytes with spaces, control or non-ASCII bytes "
                    + "(at most \(MetaLimits.maxBinaryKeyLength) such bytes fit base64-encoded in 250)")
            }
            token = Base64.encode(key)
            isBase64 = true
        }
    }
}

/// Thrown by the decoders when the stream cannot be framed; the connection must be closed.
public struct MetaFramingError: Error, Equatable, CustomStringConvertible {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// Client side: bytes → ``MetaResponse``.
struct MetaResponseDecoder: ByteToMessageDecoder {
    typealias InboundOut = MetaResponse
    let maxLineLength: Int
    let maxValueSize: Int

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let response = try Self.parse(&buffer, maxLineLength: maxLineLength, maxValueSize: maxValueSize) else {
            return .needMoreData
        }
        context.fireChannelRead(wrapInboundOut(response))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer,
                             seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }

    /// One response, or nil when more bytes are needed (the buffer is then left as it was).
    static func parse(_ buffer: inout ByteBuffer, maxLineLength: Int, maxValueSize: Int) throws -> MetaResponse? {
        guard let (line, lineLength) = try peekLine(buffer, maxLineLength: maxLineLength) else { return nil }
        let words = splitWords(line)
        guard let first = words.first else { throw MetaFramingError("empty reply line") }
        let code = String(decoding: first, as: UTF8.self)
        if code == "CLIENT_ERROR" || code == "SERVER_ERROR" {
            buffer.moveReaderIndex(forwardBy: lineLength)
            let rest = String(decoding: line[first.endIndex...], as: UTF8.self).trimmingSpaces
            return MetaResponse(code: code, tokens: rest.isEmpty ? [] : [rest])
        }
        var tokens = words.dropFirst().map { String(decoding: $0, as: UTF8.self) }
        guard code == "VA" else {
            buffer.moveReaderIndex(forwardBy: lineLength)
            return MetaResponse(code: code, tokens: tokens)
        }
        guard words.count >= 2, let size = parseDecimal(words[1]) else {
            throw MetaFramingError("VA without a valid size: '\(String(decoding: line, as: UTF8.self))'")
        }
        guard size <= maxValueSize else {
            throw MetaFramingError("VA of \(size) bytes exceeds the limit of \(maxValueSize)")
        }
        guard buffer.readableBytes >= lineLength + size + 2 else { return nil }
        let dataStart = buffer.readerIndex + lineLength
        guard buffer.getInteger(at: dataStart + size, as: UInt16.self) == 0x0d0a else {
            throw MetaFramingError("VA data block not terminated by \\r\\n")
        }
        let value = buffer.getBytes(at: dataStart, length: size)!
        buffer.moveReaderIndex(forwardBy: lineLength + size + 2)
        tokens.removeFirst()
        return MetaResponse(code: code, tokens: tokens, value: value)
    }
}

/// The line at the reader index without its `\r\n` and the bytes it spans with it; nil if
/// incomplete. Lines must end in `\r\n`, hold printable ASCII, and fit `maxLineLength`.
func peekLine(_ buffer: ByteBuffer, maxLineLength: Int) throws -> ([UInt8], Int)? {
    try buffer.withUnsafeReadableBytes { bytes throws(MetaFramingError) -> ([UInt8], Int)? in
        guard let newline = bytes.firstIndex(of: 0x0a) else {
            if bytes.count > maxLineLength { throw MetaFramingError("line longer than \(maxLineLength) bytes") }
            return nil
        }
        if newline > maxLineLength { throw MetaFramingError("line longer than \(maxLineLength) bytes") }
        guard newline > 0, bytes[newline - 1] == 0x0d else { throw MetaFramingError("line not terminated by \\r\\n") }
        let line = UnsafeRawBufferPointer(rebasing: bytes[..<(newline - 1)])
        guard line.allSatisfy({ $0 >= 0x20 && $0 < 0x7f }) else {
            throw MetaFramingError("control or non-ASCII bytes in a command line")
        }
        return (Array(line), newline + 1)
    }
}

/// The space-separated words of a line (bytes, not Strings: Swift's String indexing is far too
/// slow for a per-command path).
func splitWords(_ line: [UInt8]) -> [ArraySlice<UInt8>] {
    line.split(separator: 0x20, omittingEmptySubsequences: true)
}

/// A non-negative decimal of at most 18 digits.
func parseDecimal(_ digits: ArraySlice<UInt8>) -> Int? {
    guard !digits.isEmpty, digits.count <= 18 else { return nil }
    var value = 0
    for d in digits {
        guard d >= 0x30 && d <= 0x39 else { return nil }
        value = value * 10 + Int(d - 0x30)
    }
    return value
}

/// What a peer sends the server: the handshake answer or a command.
enum MetaRequestFrame: Equatable {
    case auth([String])
    case command(MetaRequest)
}

/// A decoded `mg`/`ms`/`md`/`mn` (server side).
struct MetaRequest: Equatable {
    enum Command: String { case mg, ms, md, mn }
    var command: Command
    /// The key as sent (base64 when `b` is set) and decoded.
    var keyToken: String
    var key: [UInt8]
    var flags: [MetaFlag]
    var value: [UInt8]?

    func has(_ letter: Unicode.Scalar) -> Bool { flags.contains { $0.letter == UInt8(ascii: letter) } }
    func token(_ letter: Unicode.Scalar) -> String? { flags.first { $0.letter == UInt8(ascii: letter) }?.token }
}

/// Server side: bytes → ``MetaRequestFrame``. Anything it cannot frame is a ``MetaFramingError``.
struct MetaRequestDecoder: ByteToMessageDecoder {
    typealias InboundOut = MetaRequestFrame
    let maxLineLength: Int
    let maxValueSize: Int

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try Self.parse(&buffer, maxLineLength: maxLineLength, maxValueSize: maxValueSize) else {
            return .needMoreData
        }
        context.fireChannelRead(wrapInboundOut(frame))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer,
                             seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }

    static func parse(_ buffer: inout ByteBuffer, maxLineLength: Int, maxValueSize: Int) throws -> MetaRequestFrame? {
        guard let (line, lineLength) = try peekLine(buffer, maxLineLength: maxLineLength) else { return nil }
        let words = splitWords(line)
        guard let first = words.first else { throw MetaFramingError("empty command line") }
        if first.elementsEqual("AU".utf8) {
            buffer.moveReaderIndex(forwardBy: lineLength)
            return .auth(words.dropFirst().map { String(decoding: $0, as: UTF8.self) })
        }
        let command: MetaRequest.Command
        switch (first.count, first.first, first.last) {
        case (2, UInt8(ascii: "m"), UInt8(ascii: "g")): command = .mg
        case (2, UInt8(ascii: "m"), UInt8(ascii: "s")): command = .ms
        case (2, UInt8(ascii: "m"), UInt8(ascii: "d")): command = .md
        case (2, UInt8(ascii: "m"), UInt8(ascii: "n")): command = .mn
        default: throw MetaFramingError("unknown command '\(String(decoding: first.prefix(16), as: UTF8.self))'")
        }
        if command == .mn {
            guard words.count == 1 else { throw MetaFramingError("mn takes no arguments") }
            buffer.moveReaderIndex(forwardBy: lineLength)
            return .command(MetaRequest(command: .mn, keyToken: "", key: [], flags: []))
        }
        guard words.count >= 2 else { throw MetaFramingError("\(command) without a key") }
        let keyBytes = words[1]
        var rest = words.dropFirst(2)
        var size: Int?
        if command == .ms {
            guard let token = rest.first, let n = parseDecimal(token) else {
                throw MetaFramingError("ms without a valid data length")
            }
            guard n <= maxValueSize else { throw MetaFramingError("value of \(n) bytes exceeds the limit of \(maxValueSize)") }
            size = n
            rest = rest.dropFirst()
        }
        let flags = rest.map { MetaFlag(letter: $0.first!, token: String(decoding: $0.dropFirst(), as: UTF8.self)) }
        guard keyBytes.count <= MetaLimits.maxKeyLength else {
            throw MetaFramingError(flags.contains { $0.letter == UInt8(ascii: "b") } ? "key is not valid base64"
                                   : "key longer than \(MetaLimits.maxKeyLength) bytes")
        }
        let keyToken = String(decoding: keyBytes, as: UTF8.self)
        let key: [UInt8]
        if flags.contains(where: { $0.letter == UInt8(ascii: "b") }) {
            guard let decoded = Base64.decode(keyToken), !decoded.isEmpty else {
                throw MetaFramingError("key is not valid base64")
            }
            key = decoded
        } else {
            key = Array(keyBytes)
        }
        var value: [UInt8]?
        if let size {
            guard buffer.readableBytes >= lineLength + size + 2 else { return nil }
            let dataStart = buffer.readerIndex + lineLength
            guard buffer.getInteger(at: dataStart + size, as: UInt16.self) == 0x0d0a else {
                throw MetaFramingError("data block not terminated by \\r\\n")
            }
            value = buffer.getBytes(at: dataStart, length: size)
            buffer.moveReaderIndex(forwardBy: lineLength + size + 2)
        } else {
            buffer.moveReaderIndex(forwardBy: lineLength)
        }
        return .command(MetaRequest(command: command, keyToken: keyToken, key: key, flags: flags, value: value))
    }
}

/// Encodes requests into a buffer (client side).
enum MetaEncoder {
    static func line(_ parts: [String], into buffer: inout ByteBuffer) {
        for (index, part) in parts.enumerated() {
            if index > 0 { buffer.writeInteger(UInt8(ascii: " ")) }
            buffer.writeString(part)
        }
        buffer.writeStaticString("\r\n")
    }

    static func get(_ key: WireKey, opaque: String, quiet: Bool, into buffer: inout ByteBuffer) {
        var parts = ["mg", key.token, "v", "f", "c", "t", "O" + opaque]
        if quiet { parts.append("q") }
        if key.isBase64 { parts.append("b") }
        line(parts, into: &buffer)
    }

    static func set(_ key: WireKey, value: [UInt8], flags: UInt32, ttl: Int, mode: StoreMode, compareCAS: UInt64?,
                    version: UInt64? = nil, opaque: String, into buffer: inout ByteBuffer) {
        var parts = ["ms", key.token, String(value.count), "T\(ttl)", "F\(flags)", "c", "O" + opaque]
        if mode != .set { parts.append("M\(mode.rawValue)") }
        if let compareCAS { parts.append("C\(compareCAS)") }
        if let version { parts.append("E\(version)") }
        if key.isBase64 { parts.append("b") }
        line(parts, into: &buffer)
        buffer.writeBytes(value)
        buffer.writeStaticString("\r\n")
    }

    static func delete(_ key: WireKey, compareCAS: UInt64?, version: UInt64? = nil, opaque: String,
                       into buffer: inout ByteBuffer) {
        var parts = ["md", key.token, "O" + opaque]
        if let compareCAS { parts.append("C\(compareCAS)") }
        if let version { parts.append("E\(version)") }
        if key.isBase64 { parts.append("b") }
        line(parts, into: &buffer)
    }

    /// `mg <key> T<ttl>`: updates the expiry, returns no value.
    static func touch(_ key: WireKey, ttl: Int, opaque: String, into buffer: inout ByteBuffer) {
        var parts = ["mg", key.token, "T\(ttl)", "O" + opaque]
        if key.isBase64 { parts.append("b") }
        line(parts, into: &buffer)
    }

    static func noop(into buffer: inout ByteBuffer) { buffer.writeStaticString("mn\r\n") }
}

/// RFC 4648 base64 with padding (what memcached's `b` flag uses).
enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i + 3 <= bytes.count {
            let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
            for shift in [18, 12, 6, 0] { out.append(alphabet[Int(n >> UInt32(shift) & 63)]) }
            i += 3
        }
        let left = bytes.count - i
        if left > 0 {
            let n = UInt32(bytes[i]) << 16 | (left == 2 ? UInt32(bytes[i + 1]) << 8 : 0)
            out.append(alphabet[Int(n >> 18 & 63)])
            out.append(alphabet[Int(n >> 12 & 63)])
            out.append(left == 2 ? alphabet[Int(n >> 6 & 63)] : UInt8(ascii: "="))
            out.append(UInt8(ascii: "="))
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func decode(_ text: String) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count % 4 == 0 else { return nil }
        var out: [UInt8] = []
        var i = 0
        while i < chars.count {
            var n: UInt32 = 0
            var padding = 0
            for j in 0..<4 {
                let c = chars[i + j]
                let v: UInt32
                switch c {
                case UInt8(ascii: "A")...UInt8(ascii: "Z"): v = UInt32(c - UInt8(ascii: "A"))
                case UInt8(ascii: "a")...UInt8(ascii: "z"): v = UInt32(c - UInt8(ascii: "a") + 26)
                case UInt8(ascii: "0")...UInt8(ascii: "9"): v = UInt32(c - UInt8(ascii: "0") + 52)
                case UInt8(ascii: "+"): v = 62
                case UInt8(ascii: "/"): v = 63
                case UInt8(ascii: "=") where i + 4 == chars.count && j >= 2: v = 0; padding += 1
                default: return nil
                }
                if padding > 0 && c != UInt8(ascii: "=") { return nil }
                n = n << 6 | v
            }
            out.append(UInt8(n >> 16 & 0xff))
            if padding < 2 { out.append(UInt8(n >> 8 & 0xff)) }
            if padding < 1 { out.append(UInt8(n & 0xff)) }
            i += 4
        }
        return out
    }
}

enum Hex {
    static func encode(_ bytes: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func decode(_ text: String) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count % 2 == 0 else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
            default: nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count / 2)
        var i = 0
        while i < chars.count {
            guard let hi = nibble(chars[i]), let lo = nibble(chars[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }
}
