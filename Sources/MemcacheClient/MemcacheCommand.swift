/// A memcached text-protocol command, encoded. Keys are not checked: memcached's own limits
/// (at most 250 bytes, no spaces or control characters) are the caller's to keep, so that tests
/// can send bad keys on purpose.
public struct MemcacheCommand: Sendable, Equatable {
    /// The bytes to send, ending in `\r\n`.
    public var bytes: [UInt8]
    /// False when the server may send nothing back: `noreply`, or a quiet (`q`) meta command.
    public var expectsReply: Bool

    public init(bytes: [UInt8], expectsReply: Bool) {
        self.bytes = bytes
        self.expectsReply = expectsReply
    }

    /// The storage commands that share one syntax.
    public enum StoreVerb: String, Sendable, CaseIterable {
        case set, add, replace, append, prepend
    }

    /// `<verb> <key> <flags> <exptime> <bytes> [noreply]` and the data block.
    public static func store(_ verb: StoreVerb, key: String, value: [UInt8], flags: UInt32 = 0,
                             exptime: Int = 0, noreply: Bool = false) -> Self {
        withData("\(verb.rawValue) \(key) \(flags) \(exptime) \(value.count)", value, noreply: noreply)
    }

    /// `cas <key> <flags> <exptime> <bytes> <cas unique> [noreply]` and the data block.
    public static func cas(key: String, value: [UInt8], cas: UInt64, flags: UInt32 = 0,
                           exptime: Int = 0, noreply: Bool = false) -> Self {
        withData("cas \(key) \(flags) \(exptime) \(value.count) \(cas)", value, noreply: noreply)
    }

    /// `get <key>*`.
    public static func get(_ keys: [String]) -> Self { line("get " + keys.joined(separator: " ")) }

    /// `gets <key>*`: like `get`, with each item's cas unique.
    public static func gets(_ keys: [String]) -> Self { line("gets " + keys.joined(separator: " ")) }

    /// `gat <exptime> <key>*`: get and touch.
    public static func gat(exptime: Int, keys: [String]) -> Self {
        line("gat \(exptime) " + keys.joined(separator: " "))
    }

    /// `gats <exptime> <key>*`: get and touch, with cas uniques.
    public static func gats(exptime: Int, keys: [String]) -> Self {
        line("gats \(exptime) " + keys.joined(separator: " "))
    }

    /// `delete <key> [noreply]`.
    public static func delete(_ key: String, noreply: Bool = false) -> Self {
        line("delete \(key)", noreply: noreply)
    }

    /// `incr <key> <delta> [noreply]`.
    public static func incr(_ key: String, by delta: UInt64, noreply: Bool = false) -> Self {
        line("incr \(key) \(delta)", noreply: noreply)
    }

    /// `decr <key> <delta> [noreply]`.
    public static func decr(_ key: String, by delta: UInt64, noreply: Bool = false) -> Self {
        line("decr \(key) \(delta)", noreply: noreply)
    }

    /// `touch <key> <exptime> [noreply]`.
    public static func touch(_ key: String, exptime: Int, noreply: Bool = false) -> Self {
        line("touch \(key) \(exptime)", noreply: noreply)
    }

    /// `flush_all [delay] [noreply]`.
    public static func flushAll(delay: Int? = nil, noreply: Bool = false) -> Self {
        line(delay.map { "flush_all \($0)" } ?? "flush_all", noreply: noreply)
    }

    /// `mg <key> <flag>*`. With the `q` flag a miss sends nothing; follow with ``metaNoop``.
    public static func metaGet(_ key: String, flags: [String] = []) -> Self { meta("mg \(key)", flags) }

    /// `ms <key> <datalen> <flag>*` and the data block.
    public static func metaSet(_ key: String, value: [UInt8], flags: [String] = []) -> Self {
        var command = meta("ms \(key) \(value.count)", flags)
        command.bytes += value + crlf
        return command
    }

    /// `md <key> <flag>*`.
    public static func metaDelete(_ key: String, flags: [String] = []) -> Self { meta("md \(key)", flags) }

    /// `ma <key> <flag>*`: arithmetic (`MI` increment, `MD` decrement, `D<delta>`).
    public static func metaArithmetic(_ key: String, flags: [String] = []) -> Self { meta("ma \(key)", flags) }

    /// `mn`: answered `MN` after every reply before it, which ends a pipeline of quiet meta commands.
    public static let metaNoop = line("mn")

    /// `version`.
    public static let version = line("version")

    /// `stats [group]`.
    public static func stats(_ group: String? = nil) -> Self { line(group.map { "stats \($0)" } ?? "stats") }

    private static func line(_ text: String, noreply: Bool = false) -> Self {
        Self(bytes: Array((noreply ? text + " noreply" : text).utf8) + crlf, expectsReply: !noreply)
    }

    private static func withData(_ header: String, _ data: [UInt8], noreply: Bool) -> Self {
        var command = line(header, noreply: noreply)
        command.bytes += data + crlf
        return command
    }

    /// Quiet meta commands (`q` flag) leave out the common reply; a caller reads the rest after `mn`.
    private static func meta(_ head: String, _ flags: [String]) -> Self {
        Self(bytes: Array(([head] + flags).joined(separator: " ").utf8) + crlf, expectsReply: !flags.contains("q"))
    }

    private static let crlf: [UInt8] = [0x0D, 0x0A]
}
