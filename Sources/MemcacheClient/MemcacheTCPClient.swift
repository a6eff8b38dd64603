#if canImport(Glibc)
import Glibc
#endif

/// A memcached client over TCP speaking the text protocol (classic and meta commands), with raw
/// sends for tests that split commands across segments and a minimal binary protocol.
///
/// `TCP_NODELAY` is set, so each send leaves as its own segment. Not thread-safe.
public final class MemcacheTCPClient {
    /// The server this client is connected to.
    public let server: SocketAddress
    /// How long a read waits for a complete reply.
    public var timeout: Duration

    private let socket: Socket
    /// Bytes received but not yet consumed by a reply.
    private var pending: [UInt8] = []

    /// Connects to `host`:`port`.
    public init(host: String, port: UInt16 = 11211, timeout: Duration = .seconds(2)) throws {
        server = try SocketAddress(host: host, port: port)
        self.timeout = timeout
        socket = try Socket(connectingTo: server, type: SOCK_STREAM, timeout: timeout)
        socket.setOption(Int32(IPPROTO_TCP), TCP_NODELAY, 1)
    }

    /// Sends `command` and reads its reply.
    /// - Precondition: `command.expectsReply`; send `noreply` commands with ``send(_:)``.
    public func request(_ command: MemcacheCommand) throws -> MemcacheReply {
        precondition(command.expectsReply, "a noreply command gets no reply; use send(_:)")
        try send(command)
        return try readReply()
    }

    /// Sends `command` without reading anything.
    public func send(_ command: MemcacheCommand) throws {
        try socket.sendAll(command.bytes)
    }

    /// Sends arbitrary bytes.
    public func sendRaw(_ bytes: [UInt8]) throws {
        try socket.sendAll(bytes)
    }

    /// Sends `bytes` in pieces, cut before each offset in `cuts`, pausing between pieces so that each
    /// arrives in its own TCP segment: a command split across segments.
    public func sendSplit(_ bytes: [UInt8], at cuts: [Int], pause: Duration = .milliseconds(20)) throws {
        var start = 0
        for cut in cuts.sorted() + [bytes.count] where cut > start && cut <= bytes.count {
            if start > 0 { sleep(for: pause) }
            try socket.sendAll(bytes[start..<cut])
            start = cut
        }
    }

    /// Reads the next text-protocol reply.
    public func readReply() throws -> MemcacheReply {
        try read { bytes throws(MemcacheError) in try MemcacheReplyParser.parse(bytes) }
    }

    /// Reads the next binary-protocol response.
    public func readBinaryResponse() throws -> MemcacheBinary.Response {
        try read { bytes throws(MemcacheError) in try MemcacheBinary.parseResponse(bytes) }
    }

    /// Stores `value` under `key` with `set`; returns `.stored` on success.
    @discardableResult
    public func set(_ key: String, _ value: [UInt8], flags: UInt32 = 0, exptime: Int = 0) throws -> MemcacheReply {
        try request(.store(.set, key: key, value: value, flags: flags, exptime: exptime))
    }

    /// The items found for `keys`, in the server's order; missing keys are left out.
    public func get(_ keys: [String]) throws -> [MemcacheValue] {
        try expectValues(request(.get(keys)))
    }

    /// The item for `key`, or nil on a miss.
    public func get(_ key: String) throws -> MemcacheValue? {
        try get([key]).first
    }

    /// Like ``get(_:)-([String])``, with cas uniques.
    public func gets(_ keys: [String]) throws -> [MemcacheValue] {
        try expectValues(request(.gets(keys)))
    }

    /// Deletes `key`; returns `.deleted` or `.notFound`.
    @discardableResult
    public func delete(_ key: String) throws -> MemcacheReply {
        try request(.delete(key))
    }

    /// `flush_all`; returns `.ok`.
    @discardableResult
    public func flushAll() throws -> MemcacheReply {
        try request(.flushAll())
    }

    /// memcached's general statistics.
    public func stats() throws -> [String: String] {
        guard case .stats(let stats) = try request(.stats()) else {
            throw MemcacheError.malformedReply("stats did not answer STAT lines")
        }
        return stats
    }

    /// Binary-protocol set; see ``MemcacheBinary`` for the one-protocol-per-connection rule.
    public func binarySet(_ key: String, _ value: [UInt8], flags: UInt32 = 0, exptime: UInt32 = 0) throws
        -> MemcacheBinary.Response
    {
        try socket.sendAll(MemcacheBinary.set(key: key, value: value, flags: flags, exptime: exptime))
        return try readBinaryResponse()
    }

    /// Sends one binary-protocol request (see ``MemcacheBinary``) and reads its response.
    public func binary(_ request: [UInt8]) throws -> MemcacheBinary.Response {
        try socket.sendAll(request)
        return try readBinaryResponse()
    }

    /// Binary-protocol delete.
    public func binaryDelete(_ key: String) throws -> MemcacheBinary.Response {
        try socket.sendAll(MemcacheBinary.delete(key: key))
        return try readBinaryResponse()
    }

    private func expectValues(_ reply: MemcacheReply) throws -> [MemcacheValue] {
        guard case .values(let values) = reply else {
            throw MemcacheError.malformedReply("expected VALUE/END, got \(reply)")
        }
        return values
    }

    /// Receives until `parse` finds a complete message at the start of the pending bytes.
    private func read<T>(_ parse: ([UInt8]) throws(MemcacheError) -> (T, Int)?) throws -> T {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let (message, end) = try parse(pending) {
                pending.removeFirst(end)
                return message
            }
            guard let chunk = try socket.receive(deadline: deadline) else { throw MemcacheError.timeout }
            guard !chunk.isEmpty else { throw MemcacheError.connectionClosed }
            pending += chunk
        }
    }

    private func sleep(for duration: Duration) {
        var request = timespec(tv_sec: Int(duration.components.seconds),
                               tv_nsec: Int(duration.components.attoseconds / 1_000_000_000))
        var remaining = timespec()
        while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
    }
}
