/// One item of a `get`/`gets`/`gat`/`gats` reply.
public struct MemcacheValue: Equatable, Sendable {
    public var key: String
    public var flags: UInt32
    /// Present in replies to `gets` and `gats`.
    public var cas: UInt64?
    public var data: [UInt8]

    public init(key: String, flags: UInt32 = 0, cas: UInt64? = nil, data: [UInt8]) {
        self.key = key
        self.flags = flags
        self.cas = cas
        self.data = data
    }
}

/// A reply to a meta command: `HD`, `VA`, `EN`, `NF`, `NS`, `EX` or `MN`, with its return flags.
public struct MetaReply: Equatable, Sendable {
    /// The two-letter return code.
    public var code: String
    /// Return flags as sent, e.g. `["c123", "f0", "kfoo"]`.
    public var flags: [String]
    /// The data of a `VA` reply.
    public var value: [UInt8]?

    public init(code: String, flags: [String] = [], value: [UInt8]? = nil) {
        self.code = code
        self.flags = flags
        self.value = value
    }
}

/// A parsed memcached text-protocol reply.
public enum MemcacheReply: Equatable, Sendable {
    /// `VALUE …` items up to `END`; empty for a miss.
    case values([MemcacheValue])
    case stored
    case notStored
    case exists
    case notFound
    case deleted
    case touched
    case ok
    /// The new value after `incr`/`decr`.
    case number(UInt64)
    case version(String)
    /// `STAT name value` lines up to `END`.
    case stats([String: String])
    case meta(MetaReply)
    /// `ERROR`: an unknown command.
    case error
    case clientError(String)
    case serverError(String)

    /// The items of a `.values` reply, or none.
    public var values: [MemcacheValue] {
        if case .values(let v) = self { v } else { [] }
    }
}

/// Parses memcached text-protocol replies byte-exactly: data blocks are taken by their declared
/// length, so they may hold any bytes, `\r\n` included.
public enum MemcacheReplyParser {
    /// Header lines longer than this without `\r\n` are garbage, not a reply still arriving.
    static let maxLineLength = 4096

    /// Parses one reply at the start of `bytes[start...]`.
    /// - Returns: the reply and the index just past it, or nil if the reply is not complete yet.
    /// - Throws: ``MemcacheError/malformedReply(_:)`` if the bytes cannot become a valid reply.
    public static func parse(_ bytes: [UInt8], from start: Int = 0) throws(MemcacheError) -> (reply: MemcacheReply, end: Int)? {
        guard let (line, next) = try readLine(bytes, from: start) else { return nil }
        let words = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        let rest = line.drop { $0 != " " }.dropFirst()

        switch words[0] {
        case "VALUE", "END": return try parseValues(bytes, firstLine: words, from: next)
        case "STAT": return try parseStats(bytes, from: start)
        case "STORED": return (.stored, next)
        case "NOT_STORED": return (.notStored, next)
        case "EXISTS": return (.exists, next)
        case "NOT_FOUND": return (.notFound, next)
        case "DELETED": return (.deleted, next)
        case "TOUCHED": return (.touched, next)
        case "OK": return (.ok, next)
        case "ERROR": return (.error, next)
        case "CLIENT_ERROR": return (.clientError(String(rest)), next)
        case "SERVER_ERROR": return (.serverError(String(rest)), next)
        case "VERSION": return (.version(String(rest)), next)
        case "HD", "EN", "NF", "NS", "EX", "MN":
            return (.meta(MetaReply(code: words[0], flags: Array(words.dropFirst()))), next)
        case "VA":
            guard words.count >= 2, let size = Int(words[1]), size >= 0 else { throw malformed("bad VA line '\(line)'") }
            guard let (data, end) = try readData(bytes, from: next, count: size) else { return nil }
            return (.meta(MetaReply(code: "VA", flags: Array(words.dropFirst(2)), value: data)), end)
        default:
            if words.count == 1, let n = UInt64(words[0]) { return (.number(n), next) }
            throw malformed("unexpected line '\(line)'")
        }
    }

    /// Parses `bytes` as exactly one complete reply, as a reassembled UDP reply must be.
    public static func parseComplete(_ bytes: [UInt8]) throws(MemcacheError) -> MemcacheReply {
        guard let (reply, end) = try parse(bytes) else { throw malformed("incomplete reply (\(bytes.count) bytes)") }
        guard end == bytes.count else { throw malformed("\(bytes.count - end) bytes after the reply") }
        return reply
    }

    private static func parseValues(_ bytes: [UInt8], firstLine: [String], from start: Int) throws(MemcacheError)
        -> (reply: MemcacheReply, end: Int)?
    {
        var items: [MemcacheValue] = []
        var words = firstLine
        var index = start
        while words != ["END"] {
            // VALUE <key> <flags> <bytes> [<cas unique>]
            guard words[0] == "VALUE", words.count == 4 || words.count == 5,
                  let flags = UInt32(words[2]), let size = Int(words[3]), size >= 0
            else { throw malformed("bad VALUE line '\(words.joined(separator: " "))'") }
            var cas: UInt64?
            if words.count == 5 {
                guard let c = UInt64(words[4]) else { throw malformed("bad cas '\(words[4])'") }
                cas = c
            }
            guard let (data, afterData) = try readData(bytes, from: index, count: size) else { return nil }
            items.append(MemcacheValue(key: words[1], flags: flags, cas: cas, data: data))
            guard let (line, next) = try readLine(bytes, from: afterData) else { return nil }
            words = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
            index = next
        }
        return (.values(items), index)
    }

    private static func parseStats(_ bytes: [UInt8], from start: Int) throws(MemcacheError) -> (reply: MemcacheReply, end: Int)? {
        var stats: [String: String] = [:]
        var index = start
        while true {
            guard let (line, next) = try readLine(bytes, from: index) else { return nil }
            index = next
            if line == "END" { return (.stats(stats), index) }
            let words = line.split(separator: " ", maxSplits: 2)
            guard words.count == 3, words[0] == "STAT" else { throw malformed("bad STAT line '\(line)'") }
            stats[String(words[1])] = String(words[2])
        }
    }

    /// The line at `start` without its `\r\n`, and the index after it; nil if incomplete.
    private static func readLine(_ bytes: [UInt8], from start: Int) throws(MemcacheError) -> (String, Int)? {
        var i = start
        while i + 1 < bytes.count {
            if bytes[i] == UInt8(ascii: "\r") {
                guard bytes[i + 1] == UInt8(ascii: "\n") else { throw malformed("bare \\r at offset \(i)") }
                return (String(decoding: bytes[start..<i], as: UTF8.self), i + 2)
            }
            if i - start >= maxLineLength { throw malformed("no line end within \(maxLineLength) bytes") }
            i += 1
        }
        if bytes.count - start > maxLineLength { throw malformed("no line end within \(maxLineLength) bytes") }
        return nil
    }

    /// `count` data bytes at `start` followed by `\r\n`, and the index after them; nil if incomplete.
    private static func readData(_ bytes: [UInt8], from start: Int, count: Int) throws(MemcacheError) -> ([UInt8], Int)? {
        let end = start + count
        guard end + 2 <= bytes.count else { return nil }
        guard bytes[end] == UInt8(ascii: "\r"), bytes[end + 1] == UInt8(ascii: "\n") else {
            throw malformed("data block of \(count) bytes at offset \(start) is not followed by \\r\\n")
        }
        return (Array(bytes[start..<end]), end + 2)
    }

    private static func malformed(_ detail: String) -> MemcacheError { .malformedReply(detail) }
}
