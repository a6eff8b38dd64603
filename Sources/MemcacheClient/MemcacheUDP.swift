/// The 8-byte frame header that starts every memcached UDP datagram, all fields big-endian.
public struct MemcacheUDPHeader: Equatable, Sendable {
    public static let size = 8

    /// Chosen by the client, echoed in every datagram of the reply.
    public var requestID: UInt16
    /// This datagram's index within the message, from 0.
    public var sequence: UInt16
    /// How many datagrams the message has. Requests must fit in one.
    public var total: UInt16
    /// Must be 0.
    public var reserved: UInt16

    public init(requestID: UInt16, sequence: UInt16 = 0, total: UInt16 = 1, reserved: UInt16 = 0) {
        self.requestID = requestID
        self.sequence = sequence
        self.total = total
        self.reserved = reserved
    }

    /// Reads the header at the start of `datagram`; nil if it is shorter than 8 bytes.
    public init?(_ datagram: some Collection<UInt8>) {
        guard datagram.count >= Self.size else { return nil }
        let b = Array(datagram.prefix(Self.size))
        func be16(_ i: Int) -> UInt16 { UInt16(b[i]) << 8 | UInt16(b[i + 1]) }
        self.init(requestID: be16(0), sequence: be16(2), total: be16(4), reserved: be16(6))
    }

    /// The header on the wire.
    public var bytes: [UInt8] {
        [requestID, sequence, total, reserved].flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] }
    }
}

/// Builders for request datagrams, shared by the client and by BPF packet fixtures.
public enum MemcacheUDPRequest {
    /// One datagram carrying `command`: the frame header (seq 0 of 1) followed by the command bytes.
    public static func datagram(requestID: UInt16, command: MemcacheCommand) -> [UInt8] {
        MemcacheUDPHeader(requestID: requestID).bytes + command.bytes
    }

    /// The datagram of `get <keys>` (or `gets` when `withCAS`).
    public static func get(requestID: UInt16, keys: [String], withCAS: Bool = false) -> [UInt8] {
        datagram(requestID: requestID, command: withCAS ? .gets(keys) : .get(keys))
    }
}

/// A complete UDP reply: its datagrams, their payloads joined in order, and the parse.
public struct MemcacheUDPResponse: Sendable {
    public var requestID: UInt16
    /// The datagrams, header included, message by message and by sequence within each.
    public var datagrams: [[UInt8]]
    /// The reply bytes without frame headers.
    public var payload: [UInt8]
    /// `payload` parsed, or the parse error.
    public var reply: Result<MemcacheReply, MemcacheError>
}

/// Reassembles UDP replies from datagrams that may be interleaved with other requests' replies.
///
/// A reply is one or more *messages*, each numbered by the frame header's sequence and total.
/// memcached 1.6 sends every item of a multi-key GET as a message of its own (sequence restarting
/// at 0, same request id), `END` riding on the last; so messages are joined in arrival order until
/// the bytes parse as a complete reply. Within a message, datagrams may arrive in any order.
public struct UDPReplyAssembler: Sendable {
    private struct Partial {
        /// Complete messages so far, in order.
        var datagrams: [[UInt8]] = []
        var payload: [UInt8] = []
        /// The message being received: its total and the datagrams by sequence.
        var total: UInt16 = 0
        var parts: [UInt16: [UInt8]] = [:]
    }

    private var partials: [UInt16: Partial] = [:]

    public init() {}

    /// Requests with some, but not all, of their reply received.
    public var pendingCount: Int { partials.count }

    /// Adds one received datagram.
    /// - Returns: the response once its reply is complete, otherwise nil.
    /// - Throws: ``MemcacheError/malformedReply(_:)`` for a datagram without a valid frame header, or
    ///   one that contradicts the message in progress (a lost datagram); that request is dropped.
    public mutating func add(_ datagram: [UInt8]) throws(MemcacheError) -> MemcacheUDPResponse? {
        guard let header = MemcacheUDPHeader(datagram) else {
            throw .malformedReply("datagram of \(datagram.count) bytes has no frame header")
        }
        let id = header.requestID
        // memcached 1.6 answers a multi-key GET whose every key misses with an empty datagram
        // ("0 of 0", header only) before the one carrying END: nothing to assemble.
        if header.total == 0 && header.sequence == 0 && datagram.count == MemcacheUDPHeader.size { return nil }
        guard header.total > 0, header.sequence < header.total else {
            partials[id] = nil
            throw .malformedReply("request \(id): datagram \(header.sequence) of \(header.total)")
        }
        var partial = partials[id] ?? Partial()
        if partial.parts.isEmpty {
            partial.total = header.total
        } else if partial.total != header.total || partial.parts[header.sequence] != nil {
            partials[id] = nil
            throw .malformedReply("request \(id): datagram \(header.sequence) of \(header.total) "
                + "before message of \(partial.total) was complete")
        }
        partial.parts[header.sequence] = datagram
        guard partial.parts.count == Int(partial.total) else {
            partials[id] = partial
            return nil
        }

        for sequence in 0..<partial.total {
            let part = partial.parts[sequence]!
            partial.datagrams.append(part)
            partial.payload += part.dropFirst(MemcacheUDPHeader.size)
        }
        partial.parts = [:]
        let reply: Result<MemcacheReply, MemcacheError>
        do {
            guard let (parsed, end) = try MemcacheReplyParser.parse(partial.payload) else {
                partials[id] = partial
                return nil
            }
            reply = end == partial.payload.count
                ? .success(parsed) : .failure(.malformedReply("\(partial.payload.count - end) bytes after the reply"))
        } catch {
            reply = .failure(error)
        }
        partials[id] = nil
        return MemcacheUDPResponse(requestID: id, datagrams: partial.datagrams, payload: partial.payload, reply: reply)
    }

    /// Forgets the datagrams of a request that timed out.
    public mutating func discard(requestID: UInt16) {
        partials[requestID] = nil
    }
}
