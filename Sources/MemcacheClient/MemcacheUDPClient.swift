#if canImport(Glibc)
import Glibc
#endif

/// A memcached client over UDP (IPv4 or IPv6), the path the XDP cache answers.
///
/// ``get(_:withCAS:)`` sends one request and waits for its reply. A load generator keeps many
/// requests in flight instead with ``send(requestID:command:)``, ``receiveDatagram(until:)``
/// and a ``UDPReplyAssembler``. Not thread-safe: use one client per thread.
public final class MemcacheUDPClient {
    /// The server this client's socket is connected to.
    public let server: SocketAddress
    /// How long ``get(_:withCAS:)`` and ``request(_:)`` wait for a complete reply.
    public var timeout: Duration

    private let socket: Socket
    private var nextRequestID = UInt16.random(in: .min ... .max)
    private var assembler = UDPReplyAssembler()

    /// Opens a UDP socket connected to `host`:`port`, so only that server's datagrams arrive.
    public init(host: String, port: UInt16 = 11211, timeout: Duration = .seconds(1)) throws {
        server = try SocketAddress(host: host, port: port)
        self.timeout = timeout
        socket = try Socket(connectingTo: server, type: SOCK_DGRAM, timeout: timeout)
        // Room for many replies in flight; the kernel caps it at net.core.rmem_max.
        socket.setOption(SOL_SOCKET, SO_RCVBUF, 4 << 20)
    }

    /// Sends `get` (or `gets`) for `keys` and waits for the whole reply, however many datagrams.
    /// - Throws: ``MemcacheError/timeout`` if it is not complete within ``timeout``.
    public func get(_ keys: [String], withCAS: Bool = false) throws -> MemcacheUDPResponse {
        try request(withCAS ? .gets(keys) : .get(keys))
    }

    /// Sends any single-datagram command and waits for its reply.
    /// Datagrams of earlier requests that arrive late are dropped.
    public func request(_ command: MemcacheCommand) throws -> MemcacheUDPResponse {
        let id = nextRequestID
        nextRequestID &+= 1
        try send(requestID: id, command: command)
        let deadline = ContinuousClock.now + timeout
        defer { assembler = UDPReplyAssembler() }
        while let datagram = try receiveDatagram(until: deadline) {
            guard MemcacheUDPHeader(datagram)?.requestID == id else { continue }
            if let response = try assembler.add(datagram) { return response }
        }
        throw MemcacheError.timeout
    }

    /// Sends `command` in one datagram with the given request id, without waiting.
    public func send(requestID: UInt16, command: MemcacheCommand) throws {
        try sendDatagram(MemcacheUDPRequest.datagram(requestID: requestID, command: command))
    }

    /// Sends `datagram` as is; it must start with a frame header.
    public func sendDatagram(_ datagram: [UInt8]) throws {
        try socket.sendAll(datagram)
    }

    /// Sends a datagram (frame header included) straight from `bytes`: for load generators that
    /// must not allocate per request.
    public func sendDatagram(_ bytes: UnsafeRawBufferPointer) throws {
        try socket.send(bytes)
    }

    /// Receives one datagram into `buffer`, waiting until `deadline`: its length, or nil if none
    /// arrived. Allocates nothing.
    public func receiveDatagram(into buffer: UnsafeMutableRawBufferPointer,
                                until deadline: ContinuousClock.Instant) throws -> Int? {
        try socket.receive(into: buffer, deadline: deadline)
    }

    /// Receives one datagram, waiting until `deadline`; nil if none arrived.
    public func receiveDatagram(until deadline: ContinuousClock.Instant) throws -> [UInt8]? {
        try socket.receive(deadline: deadline)
    }
}
