import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// A connection to one peer's meta-protocol server: connects on demand, authenticates (unless the
/// peer is a plain memcached, `psk == nil`), pipelines requests, batches multi-gets.
///
/// - Requests are written as soon as they are submitted and matched to replies in order; every
///   request carries an opaque token (`O`) that the reply must echo, so a desynchronised stream is
///   detected and dropped instead of answering the wrong caller.
/// - A multi-get is one unit: `mg … q` per key (misses are silent) closed by `mn`; replies up to
///   `MN` belong to it.
/// - Each request has a deadline (`requestTimeout`). When a written request times out the
///   connection is torn down — later replies could no longer be matched — and every request on it
///   fails with the timeout. Requests queued or in flight are bounded by `maxInFlight`.
/// - A failed connect or handshake fails the waiting requests at once (callers may go to a replica)
///   and starts an exponential backoff with jitter (`initialBackoff` doubling up to `maxBackoff`,
///   each delay drawn from [½, 1] of it); requests during the backoff fail with
///   ``PeerError/unavailable(peer:retryInMilliseconds:)``. The next request after it reconnects.
///
/// All mutable state is confined to one event loop (`eventLoop`); the public methods hop onto it.
public final class PeerClient: @unchecked Sendable {
    public struct Configuration: Sendable {
        public var localNodeID: NodeID
        public var peerNodeID: NodeID
        /// nil: the peer takes commands without a handshake (e.g. a plain memcached).
        public var psk: PreSharedKey?
        public var connectTimeout = TimeAmount.milliseconds(500)
        public var handshakeTimeout = TimeAmount.milliseconds(500)
        public var requestTimeout = TimeAmount.seconds(1)
        /// Requests (a multi-get batch counts once) queued or awaiting replies.
        public var maxInFlight = 1024
        public var maxValueSize = 1 << 20
        /// Keys per `mn`-terminated batch; larger multi-gets are split into several pipelined batches.
        public var maxBatchKeys = 100
        public var initialBackoff = TimeAmount.milliseconds(20)
        public var maxBackoff = TimeAmount.seconds(5)

        public init(localNodeID: NodeID, peerNodeID: NodeID, psk: PreSharedKey?) {
            self.localNodeID = localNodeID
            self.peerNodeID = peerNodeID
            self.psk = psk
        }
    }

    /// A value as a peer returned it.
    public struct Item: Equatable, Sendable {
        public var value: [UInt8]
        public var flags: UInt32
        public var cas: UInt64
        /// Seconds left before it expires; nil when it never does.
        public var ttl: Int?

        public init(value: [UInt8], flags: UInt32, cas: UInt64, ttl: Int?) {
            self.value = value
            self.flags = flags
            self.cas = cas
            self.ttl = ttl
        }
    }

    public let address: PeerAddress
    public let configuration: Configuration
    public let eventLoop: any EventLoop
    private let name: String

    // Loop-confined state.
    private enum Phase {
        case idle
        case connecting
        case awaitingHello
        case awaitingOK(serverNonce: [UInt8], clientNonce: [UInt8])
        case ready
        case backoff(until: NIODeadline)
    }

    private var phase = Phase.idle
    private var channel: (any Channel)?
    private var generation = 0
    private var failures = 0
    private var nextID: UInt64 = 0
    private var waiting = CircularBuffer<Unit>()
    private var inFlight = CircularBuffer<Unit>()
    private var handshakeTimer: Scheduled<Void>?
    private var readyWaiters: [EventLoopPromise<Void>] = []
    private var isShutDown = false

    public init(address: PeerAddress, configuration: Configuration, eventLoop: any EventLoop) {
        self.address = address
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.name = "node\(configuration.peerNodeID) (\(address))"
    }

    // MARK: Public API

    /// Connects and authenticates now (otherwise the first request does).
    public func connect() async throws(PeerError) {
        try await wait(eventLoop.flatSubmit { self.ensureReady() })
    }

    /// What a peer answered to `mg`.
    public enum Lookup: Equatable, Sendable {
        case item(Item)
        /// `EN c<version>`: the peer's newest state for the key is a deletion at `version`
        /// (cxl-bmc peers; a plain memcached never sends it).
        case deleted(version: UInt64)
        /// `EN`: nothing held, as far as the peer says.
        case absent
    }

    /// `mg <key> v f c t`: the item, or nil on a miss.
    public func get(_ key: [UInt8]) async throws(PeerError) -> Item? {
        if case .item(let item) = try await lookup(key) { return item }
        return nil
    }

    /// `mg <key> v f c t`: the item, or the version of its deletion when the peer reports one.
    public func lookup(_ key: [UInt8]) async throws(PeerError) -> Lookup {
        let wire = try WireKey(key)
        let responses = try await wait(submit(batch: false) { buffer, id in
            MetaEncoder.get(wire, opaque: String(id), quiet: false, into: &buffer)
        })
        let response = responses[0]
        switch response.code {
        case "VA": return .item(try item(from: response))
        case "EN":
            if let version = response.flag("c").flatMap({ UInt64($0) }), version > 0 { return .deleted(version: version) }
            return .absent
        default: throw unexpected(response, for: "mg")
        }
    }

    /// Gets many keys in `mn`-terminated batches of quiet `mg`s (misses cost no reply).
    /// Returns one entry per key, in order (nil for a miss).
    public func getMany(_ keys: [[UInt8]]) async throws(PeerError) -> [Item?] {
        var wires: [WireKey] = []
        wires.reserveCapacity(keys.count)
        for key in keys { wires.append(try WireKey(key)) }
        let chunkSize = max(1, configuration.maxBatchKeys)
        var futures: [(Int, Int, EventLoopFuture<[MetaResponse]>)] = []
        var start = 0
        while start < wires.count {
            let end = min(wires.count, start + chunkSize)
            let chunk = Array(wires[start..<end])
            futures.append((start, end, submit(batch: true) { buffer, _ in
                for (index, wire) in chunk.enumerated() {
                    MetaEncoder.get(wire, opaque: String(index), quiet: true, into: &buffer)
                }
                MetaEncoder.noop(into: &buffer)
            }))
            start = end
        }
        var result = [Item?](repeating: nil, count: keys.count)
        for (start, end, future) in futures {
            let responses = try await wait(future)
            for response in responses {
                guard response.code == "VA" else { throw unexpected(response, for: "mg (batched)") }
                guard let opaque = response.flag("O"), let index = Int(opaque), index >= 0, start + index < end else {
                    throw .protocolViolation(peer: name, reason: "batched reply without a valid opaque: '\(response.line)'")
                }
                result[start + index] = try item(from: response)
            }
        }
        return result
    }

    /// `ms <key> <len> T F c [M] [C] [E]`. With `version` (a cxl-bmc peer writing through), a peer
    /// holding a newer write or delete of the key answers `.notStored`.
    public func set(_ key: [UInt8], value: [UInt8], flags: UInt32 = 0, ttl: Int = 0, mode: StoreMode = .set,
                    compareCAS: UInt64? = nil, version: UInt64? = nil) async throws(PeerError) -> StoreOutcome {
        let wire = try WireKey(key)
        guard value.count <= configuration.maxValueSize else {
            throw .valueTooLarge(size: value.count, limit: configuration.maxValueSize)
        }
        let response = try await wait(submit(batch: false) { buffer, id in
            MetaEncoder.set(wire, value: value, flags: flags, ttl: ttl, mode: mode, compareCAS: compareCAS,
                            version: version, opaque: String(id), into: &buffer)
        })[0]
        switch response.code {
        case "HD": return .stored(cas: response.flag("c").flatMap { UInt64($0) } ?? 0)
        case "NS": return .notStored
        case "EX": return .exists
        case "NF": return .notFound
        default: throw unexpected(response, for: "ms")
        }
    }

    /// `md <key> [C] [E]`. With `version`, the peer remembers the delete so that an older write
    /// cannot bring the key back.
    public func delete(_ key: [UInt8], compareCAS: UInt64? = nil, version: UInt64? = nil) async throws(PeerError) -> DeleteOutcome {
        let wire = try WireKey(key)
        let response = try await wait(submit(batch: false) { buffer, id in
            MetaEncoder.delete(wire, compareCAS: compareCAS, version: version, opaque: String(id), into: &buffer)
        })[0]
        switch response.code {
        case "HD": return .deleted
        case "NF": return .notFound
        case "EX": return .exists
        default: throw unexpected(response, for: "md")
        }
    }

    /// `mg <key> T<ttl>`: sets the key's expiry; false when the peer does not hold it.
    public func touch(_ key: [UInt8], ttl: Int) async throws(PeerError) -> Bool {
        let wire = try WireKey(key)
        let response = try await wait(submit(batch: false) { buffer, id in
            MetaEncoder.touch(wire, ttl: ttl, opaque: String(id), into: &buffer)
        })[0]
        switch response.code {
        case "HD": return true
        case "EN": return false
        default: throw unexpected(response, for: "mg T")
        }
    }

    /// `mn`: a round trip that touches no item.
    public func noop() async throws(PeerError) {
        let response = try await wait(submit(batch: false) { buffer, _ in MetaEncoder.noop(into: &buffer) })[0]
        guard response.code == "MN" else { throw unexpected(response, for: "mn") }
    }

    /// Fails everything pending and closes the connection; later calls fail with `.shutDown`.
    public func shutdown() async {
        try? await eventLoop.submit {
            self.isShutDown = true
            self.teardown(.shutDown)
        }.get()
    }

    // MARK: Replies

    private func item(from response: MetaResponse) throws(PeerError) -> Item {
        guard let value = response.value else { throw unexpected(response, for: "mg") }
        let flags = response.flag("f").flatMap { UInt32($0) } ?? 0
        let cas = response.flag("c").flatMap { UInt64($0) } ?? 0
        let ttl = response.flag("t").flatMap { Int($0) }
        return Item(value: value, flags: flags, cas: cas, ttl: ttl == -1 ? nil : ttl)
    }

    private func unexpected(_ response: MetaResponse, for command: String) -> PeerError {
        response.isError ? .peerError(peer: name, line: response.line)
            : .protocolViolation(peer: name, reason: "unexpected reply '\(response.line)' to \(command)")
    }

    private func wait<T: Sendable>(_ future: EventLoopFuture<T>) async throws(PeerError) -> T {
        do {
            return try await future.get()
        } catch let error as PeerError {
            throw error
        } catch {
            throw .protocolViolation(peer: name, reason: "\(error)")
        }
    }

    // MARK: Requests (on the loop)

    /// One request (or multi-get batch); touched only on the client's event loop.
    private final class Unit: @unchecked Sendable {
        let id: UInt64
        let buffer: ByteBuffer
        let isBatch: Bool
        let promise: EventLoopPromise<[MetaResponse]>
        var collected: [MetaResponse] = []
        var timer: Scheduled<Void>?
        var sent = false
        var done = false

        init(id: UInt64, buffer: ByteBuffer, isBatch: Bool, promise: EventLoopPromise<[MetaResponse]>) {
            self.id = id
            self.buffer = buffer
            self.isBatch = isBatch
            self.promise = promise
        }

        func finish(_ result: Result<[MetaResponse], PeerError>) {
            guard !done else { return }
            done = true
            timer?.cancel()
            switch result {
            case .success(let responses): promise.succeed(responses)
            case .failure(let error): promise.fail(error)
            }
        }
    }

    private func submit(batch: Bool,
                        encode: @escaping @Sendable (inout ByteBuffer, UInt64) -> Void) -> EventLoopFuture<[MetaResponse]> {
        eventLoop.flatSubmit {
            self.enqueue(batch: batch, encode: encode)
        }
    }

    private func enqueue(batch: Bool, encode: (inout ByteBuffer, UInt64) -> Void) -> EventLoopFuture<[MetaResponse]> {
        eventLoop.preconditionInEventLoop()
        if isShutDown { return eventLoop.makeFailedFuture(PeerError.shutDown) }
        if waiting.count + inFlight.count >= configuration.maxInFlight {
            return eventLoop.makeFailedFuture(PeerError.queueFull(peer: name, limit: configuration.maxInFlight))
        }
        if case .backoff(let until) = phase {
            let now = NIODeadline.now()
            if now < until {
                let ms = Int((until - now).nanoseconds / 1_000_000)
                return eventLoop.makeFailedFuture(PeerError.unavailable(peer: name, retryInMilliseconds: ms))
            }
            phase = .idle
        }
        nextID &+= 1
        var buffer = ByteBufferAllocator().buffer(capacity: 128)
        encode(&buffer, nextID)
        let unit = Unit(id: nextID, buffer: buffer, isBatch: batch, promise: eventLoop.makePromise())
        let timeout = configuration.requestTimeout
        unit.timer = eventLoop.scheduleTask(in: timeout) { [self] in
            self.requestTimedOut(unit)
        }
        if case .ready = phase, let channel {
            send(unit, on: channel)
        } else {
            waiting.append(unit)
            if case .idle = phase { startConnect() }
        }
        return unit.promise.futureResult
    }

    private func send(_ unit: Unit, on channel: any Channel) {
        unit.sent = true
        inFlight.append(unit)
        channel.writeAndFlush(unit.buffer, promise: nil)
    }

    private func requestTimedOut(_ unit: Unit) {
        guard !unit.done else { return }
        let error = PeerError.timedOut(peer: name, what: unit.isBatch ? "multi-get" : "request",
                                       milliseconds: Int(configuration.requestTimeout.nanoseconds / 1_000_000))
        if unit.sent {
            // The reply may still come; the stream can no longer be matched: drop the connection.
            dropConnection(error)
        } else {
            if let index = waiting.firstIndex(where: { $0 === unit }) { waiting.remove(at: index) }
            unit.finish(.failure(error))
        }
    }

    /// Succeeds once the connection is ready (for ``connect()``).
    private func ensureReady() -> EventLoopFuture<Void> {
        if isShutDown { return eventLoop.makeFailedFuture(PeerError.shutDown) }
        switch phase {
        case .ready: return eventLoop.makeSucceededVoidFuture()
        case .backoff(let until) where NIODeadline.now() < until:
            let ms = Int((until - NIODeadline.now()).nanoseconds / 1_000_000)
            return eventLoop.makeFailedFuture(PeerError.unavailable(peer: name, retryInMilliseconds: ms))
        case .backoff, .idle:
            phase = .idle
            startConnect()
        default: break
        }
        let promise = eventLoop.makePromise(of: Void.self)
        readyWaiters.append(promise)
        return promise.futureResult
    }

    // MARK: Connection (on the loop)

    private func startConnect() {
        phase = .connecting
        generation += 1
        let generation = generation
        let decoder = MetaResponseDecoder(maxLineLength: 4096, maxValueSize: configuration.maxValueSize)
        let connectTimeout = configuration.connectTimeout
        ClientBootstrap(group: eventLoop)
            .connectTimeout(connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers([
                        ByteToMessageHandler(decoder),
                        PeerClientHandler(client: self, generation: generation),
                    ])
                }
            }
            .connect(host: address.host, port: address.port)
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    if generation != self.generation || self.isShutDown { channel.close(promise: nil) }
                case .failure(let error):
                    guard generation == self.generation else { return }
                    let reason = describeConnectError(error)
                    if case ChannelError.connectTimeout = error {
                        self.connectFailed(.timedOut(peer: self.name, what: "connect",
                                                     milliseconds: Int(connectTimeout.nanoseconds / 1_000_000)))
                    } else {
                        self.connectFailed(.connectFailed(peer: self.name, reason: reason))
                    }
                }
            }
    }

    fileprivate func channelActive(_ channel: any Channel, generation: Int) {
        guard generation == self.generation, !isShutDown else {
            channel.close(promise: nil)
            return
        }
        self.channel = channel
        guard configuration.psk != nil else {
            becomeReady()
            return
        }
        phase = .awaitingHello
        let ms = Int(configuration.handshakeTimeout.nanoseconds / 1_000_000)
        handshakeTimer = eventLoop.scheduleTask(in: configuration.handshakeTimeout) { [self] in
            guard generation == self.generation else { return }
            switch phase {
            case .awaitingHello, .awaitingOK:
                connectFailed(.timedOut(peer: name, what: "handshake", milliseconds: ms))
            default: break
            }
        }
    }

    fileprivate func received(_ response: MetaResponse, generation: Int) {
        guard generation == self.generation, let channel else { return }
        switch phase {
        case .awaitingHello:
            guard let psk = configuration.psk else { return }
            guard response.code == "AU", response.tokens.count == 2, let server = Int(response.tokens[0]),
                  let serverNonce = Hex.decode(response.tokens[1]), serverNonce.count == Handshake.nonceLength else {
                connectFailed(.authenticationFailed(peer: name, reason: "expected the AU challenge, got '\(response.line)'"))
                return
            }
            guard server == configuration.peerNodeID else {
                connectFailed(.authenticationFailed(peer: name, reason: "peer says it is node \(server)"))
                return
            }
            let clientNonce = Handshake.makeNonce()
            let tag = Handshake.clientTag(psk: psk, serverNonce: serverNonce, clientNonce: clientNonce,
                                          client: configuration.localNodeID, server: server)
            phase = .awaitingOK(serverNonce: serverNonce, clientNonce: clientNonce)
            var buffer = channel.allocator.buffer(capacity: 200)
            MetaEncoder.line(["AU", String(configuration.localNodeID), Hex.encode(clientNonce), Hex.encode(tag)],
                             into: &buffer)
            channel.writeAndFlush(buffer, promise: nil)
        case .awaitingOK(let serverNonce, let clientNonce):
            guard let psk = configuration.psk else { return }
            guard response.code == "OK", response.tokens.count == 1, let tag = Hex.decode(response.tokens[0]),
                  Handshake.verifyServer(tag, psk: psk, serverNonce: serverNonce, clientNonce: clientNonce,
                                         client: configuration.localNodeID, server: configuration.peerNodeID) else {
                let reason = response.code == "OK" ? "the server's proof is wrong (different key?)"
                    : "server replied '\(response.line)'"
                connectFailed(.authenticationFailed(peer: name, reason: reason))
                return
            }
            becomeReady()
        case .ready:
            guard let unit = inFlight.first else {
                dropConnection(.protocolViolation(peer: name, reason: "unsolicited reply '\(response.line)'"))
                return
            }
            if unit.isBatch {
                if response.code == "MN" {
                    inFlight.removeFirst()
                    unit.finish(.success(unit.collected))
                } else if response.isError {
                    // memcached answers a malformed line with an error and goes on; ours closes.
                    inFlight.removeFirst()
                    unit.finish(.failure(.peerError(peer: name, line: response.line)))
                    dropConnection(.peerError(peer: name, line: response.line))
                } else {
                    unit.collected.append(response)
                }
            } else {
                if !response.isError, let opaque = response.flag("O"), opaque != String(unit.id) {
                    dropConnection(.protocolViolation(peer: name, reason: "reply for opaque \(opaque), expected \(unit.id)"))
                    return
                }
                inFlight.removeFirst()
                unit.finish(.success([response]))
            }
        default:
            return
        }
    }

    fileprivate func channelClosed(generation: Int) {
        guard generation == self.generation else { return }
        switch phase {
        case .awaitingHello, .awaitingOK, .connecting:
            connectFailed(.connectionClosed(peer: name))
        case .ready:
            dropConnection(.connectionClosed(peer: name))
        default: break
        }
    }

    fileprivate func channelError(_ error: any Error, generation: Int) {
        guard generation == self.generation else { return }
        let peerError = (error as? MetaFramingError).map { PeerError.protocolViolation(peer: name, reason: $0.reason) }
            ?? .connectionClosed(peer: name)
        switch phase {
        case .ready: dropConnection(peerError)
        default: connectFailed(peerError)
        }
    }

    private func becomeReady() {
        handshakeTimer?.cancel()
        phase = .ready
        failures = 0
        for promise in readyWaiters { promise.succeed() }
        readyWaiters.removeAll()
        guard let channel else { return }
        while let unit = waiting.popFirst() {
            if !unit.done { send(unit, on: channel) }
        }
    }

    /// Connect or handshake failed: fail the waiting requests now and back off.
    private func connectFailed(_ error: PeerError) {
        detachChannel()
        failures += 1
        let exponent = min(failures - 1, 20)
        let ceiling = min(configuration.maxBackoff.nanoseconds, configuration.initialBackoff.nanoseconds << exponent)
        let delay = Int64(Double(ceiling) * Double.random(in: 0.5...1.0))
        phase = .backoff(until: .now() + .nanoseconds(delay))
        failAll(error)
    }

    /// A ready connection broke (closed, timed out, desynchronised): fail what it carried.
    private func dropConnection(_ error: PeerError) {
        detachChannel()
        phase = .idle
        while let unit = inFlight.popFirst() { unit.finish(.failure(error)) }
        if !waiting.isEmpty { startConnect() }
    }

    private func teardown(_ error: PeerError) {
        detachChannel()
        phase = .idle
        failAll(error)
    }

    /// Forgets the connection before closing it, so that its close (delivered synchronously)
    /// is recognised as stale and does not fail requests a second time with another error.
    private func detachChannel() {
        handshakeTimer?.cancel()
        generation += 1
        let old = channel
        channel = nil
        old?.close(promise: nil)
    }

    private func failAll(_ error: PeerError) {
        while let unit = inFlight.popFirst() { unit.finish(.failure(error)) }
        while let unit = waiting.popFirst() { unit.finish(.failure(error)) }
        for promise in readyWaiters { promise.fail(error) }
        readyWaiters.removeAll()
    }
}

/// "Connection refused" rather than NIO's nested description.
func describeConnectError(_ error: any Error) -> String {
    if let connection = error as? NIOConnectionError {
        if let first = connection.connectionErrors.first { return describeConnectError(first.error) }
        if connection.dnsAError != nil || connection.dnsAAAAError != nil {
            return "cannot resolve \(connection.host)"
        }
    }
    if let io = error as? IOError { return String(cString: strerror(io.errnoCode)) }
    return "\(error)"
}

/// Forwards one connection's events to its ``PeerClient`` (same event loop).
private final class PeerClientHandler: ChannelInboundHandler {
    typealias InboundIn = MetaResponse
    let client: PeerClient
    let generation: Int

    init(client: PeerClient, generation: Int) {
        self.client = client
        self.generation = generation
    }

    func channelActive(context: ChannelHandlerContext) {
        client.channelActive(context.channel, generation: generation)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        client.received(unwrapInboundIn(data), generation: generation)
    }

    func channelInactive(context: ChannelHandlerContext) {
        client.channelClosed(generation: generation)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        client.channelError(error, generation: generation)
        context.close(promise: nil)
    }
}
