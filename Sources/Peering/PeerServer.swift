import Logging
import NIOCore
import NIOPosix
import Synchronization

/// Serves this host's partition to peers: the PSK handshake, then `mg`/`ms`/`md`/`mn` against a
/// ``LocalStore``.
///
/// Robustness: lines, keys and values are size-limited; anything that cannot be framed (garbage,
/// a line too long, a bad data block, an unknown command, a command before authentication) gets
/// one `CLIENT_ERROR <reason>` line and the connection is closed. A well-framed command with an
/// unsupported flag gets `CLIENT_ERROR` and the connection stays, as with memcached. A peer that
/// does not finish the handshake in `handshakeTimeout`, or stays silent for `idleTimeout`, is
/// disconnected; connections beyond `maxConnections` get `SERVER_ERROR` and are closed.
public final class PeerServer: Sendable {
    public struct Configuration: Sendable {
        public var localNodeID: NodeID
        /// nil: no handshake (any client may send commands at once — tests and trusted setups only).
        public var psk: PreSharedKey?
        /// Node ids allowed to authenticate; nil allows any id.
        public var allowedPeers: Set<NodeID>?
        public var maxConnections = 256
        public var maxLineLength = 2048
        public var maxValueSize = 1 << 20
        public var handshakeTimeout = TimeAmount.seconds(2)
        public var idleTimeout = TimeAmount.seconds(60)

        public init(localNodeID: NodeID, psk: PreSharedKey?, allowedPeers: Set<NodeID>? = nil) {
            self.localNodeID = localNodeID
            self.psk = psk
            self.allowedPeers = allowedPeers
        }
    }

    /// Counters, for status and tests.
    public struct Statistics: Equatable, Sendable {
        public var connectionsAccepted = 0
        public var connectionsOpen = 0
        public var connectionsRefused = 0
        public var authenticated = 0
        public var authenticationFailures = 0
        public var protocolErrors = 0
        public var timeouts = 0
        public var commands = 0
    }

    let configuration: Configuration
    /// `configuration.allowedPeers`, replaceable while serving (a live reload of nodes.conf).
    private let allowed: Mutex<Set<NodeID>?>
    let store: any LocalStore
    let stats = Mutex(Statistics())
    /// Open connections, closed by ``close()``.
    let connections = Mutex<[ObjectIdentifier: any Channel]>([:])
    let logger: Logger
    private let channel: any Channel

    /// The bound address (useful with port 0).
    public var localAddress: SocketAddress? { channel.localAddress }
    public var port: Int? { channel.localAddress?.port }
    public var statistics: Statistics { stats.withLock { $0 } }

    private init(configuration: Configuration, store: any LocalStore, logger: Logger, channel: any Channel) {
        self.configuration = configuration
        allowed = Mutex(configuration.allowedPeers)
        self.store = store
        self.logger = logger
        self.channel = channel
    }

    /// Node ids allowed to authenticate from now on (nil: any); connections already
    /// authenticated stay.
    public var allowedPeers: Set<NodeID>? {
        get { allowed.withLock { $0 } }
        set { allowed.withLock { $0 = newValue } }
    }

    /// Binds `host:port` (port 0 picks a free one) and starts serving.
    public static func start(host: String, port: Int, store: any LocalStore, configuration: Configuration,
                             group: any EventLoopGroup,
                             logger: Logger = Logger(label: "cxl-bmc.peer-server")) async throws -> PeerServer {
        let box = ServerBox()
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { child in
                child.eventLoop.makeCompletedFuture {
                    guard let server = box.server else { throw ChannelError.ioOnClosedChannel }
                    let id = ObjectIdentifier(child)
                    server.connections.withLock { $0[id] = child }
                    child.closeFuture.whenComplete { _ in server.connections.withLock { $0[id] = nil } }
                    try child.pipeline.syncOperations.addHandlers([
                        IdleStateHandler(readTimeout: configuration.idleTimeout),
                        ByteToMessageHandler(MetaRequestDecoder(maxLineLength: configuration.maxLineLength,
                                                                maxValueSize: configuration.maxValueSize)),
                        PeerServerHandler(server: server),
                    ])
                }
            }
            .bind(host: host, port: port).get()
        let server = PeerServer(configuration: configuration, store: store, logger: logger, channel: channel)
        box.server = server
        return server
    }

    /// Stops accepting and closes every open connection.
    public func close() async throws {
        try await channel.close()
        let open = connections.withLock { $0.values }
        for child in open { try? await child.close() }
    }
}

/// Lets the child initializer reach the server created after `bind`.
private final class ServerBox: @unchecked Sendable {
    private let lock = Mutex<PeerServer?>(nil)
    var server: PeerServer? {
        get { lock.withLock { $0 } }
        set { lock.withLock { $0 = newValue } }
    }
}

/// One peer connection: handshake state, then commands.
final class PeerServerHandler: ChannelInboundHandler {
    typealias InboundIn = MetaRequestFrame
    typealias OutboundOut = ByteBuffer

    private enum State {
        case awaitingAuth(serverNonce: [UInt8])
        case ready
        case closing
    }

    private let server: PeerServer
    private var state = State.ready
    private var counted = false
    private var handshakeTimer: Scheduled<Void>?
    private var peerDescription = "?"
    /// Replies to the commands of the current read, written as one buffer at read-complete (or
    /// when it passes 64 KiB), and how many commands they answer.
    private var pending: ByteBuffer?
    private var pendingCommands = 0

    init(server: PeerServer) { self.server = server }

    func channelActive(context: ChannelHandlerContext) {
        peerDescription = context.remoteAddress?.description ?? "?"
        let config = server.configuration
        let admitted = server.stats.withLock { stats -> Bool in
            stats.connectionsAccepted += 1
            guard stats.connectionsOpen < config.maxConnections else {
                stats.connectionsRefused += 1
                return false
            }
            stats.connectionsOpen += 1
            return true
        }
        guard admitted else {
            state = .closing
            reject(context: context, line: "SERVER_ERROR too many connections")
            return
        }
        counted = true
        if config.psk != nil {
            let nonce = Handshake.makeNonce()
            state = .awaitingAuth(serverNonce: nonce)
            send(context: context, "AU \(config.localNodeID) \(Hex.encode(nonce))", flush: true)
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            handshakeTimer = context.eventLoop.scheduleTask(in: config.handshakeTimeout) {
                let (handler, context) = bound.value
                guard case .awaitingAuth = handler.state else { return }
                handler.server.stats.withLock { $0.timeouts += 1 }
                handler.reject(context: context, line: "CLIENT_ERROR handshake timeout")
            }
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        handshakeTimer?.cancel()
        if counted {
            counted = false
            server.stats.withLock { $0.connectionsOpen -= 1 }
        }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch state {
        case .closing:
            return
        case .awaitingAuth(let serverNonce):
            guard case .auth(let tokens) = frame else {
                server.stats.withLock { $0.authenticationFailures += 1 }
                reject(context: context, line: "CLIENT_ERROR authentication required")
                return
            }
            authenticate(context: context, tokens: tokens, serverNonce: serverNonce)
        case .ready:
            switch frame {
            case .auth:
                server.stats.withLock { $0.protocolErrors += 1 }
                reject(context: context, line: "CLIENT_ERROR unexpected AU")
            case .command(let request):
                pendingCommands += 1
                execute(request, context: context)
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        writePending(context: context)
        context.flush()
    }

    private func writePending(context: ChannelHandlerContext) {
        if pendingCommands > 0 {
            let count = pendingCommands
            pendingCommands = 0
            server.stats.withLock { $0.commands += count }
        }
        if let buffer = pending, buffer.readableBytes > 0 {
            pending = nil
            context.write(wrapOutboundOut(buffer), promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let framing = error as? MetaFramingError {
            server.stats.withLock { $0.protocolErrors += 1 }
            reject(context: context, line: "CLIENT_ERROR \(framing.reason)")
        } else {
            context.close(promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read {
            server.stats.withLock { $0.timeouts += 1 }
            reject(context: context, line: "CLIENT_ERROR idle timeout")
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func authenticate(context: ChannelHandlerContext, tokens: [String], serverNonce: [UInt8]) {
        let config = server.configuration
        guard let psk = config.psk else { return }
        guard tokens.count == 3, let client = Int(tokens[0]), client >= 0, let clientNonce = Hex.decode(tokens[1]),
              clientNonce.count == Handshake.nonceLength, let tag = Hex.decode(tokens[2]) else {
            server.stats.withLock { $0.authenticationFailures += 1 }
            reject(context: context, line: "CLIENT_ERROR malformed AU")
            return
        }
        let allowed = server.allowedPeers.map { $0.contains(client) } ?? true
        guard allowed, Handshake.verifyClient(tag, psk: psk, serverNonce: serverNonce, clientNonce: clientNonce,
                                              client: client, server: config.localNodeID) else {
            server.stats.withLock { $0.authenticationFailures += 1 }
            server.logger.warning("peer \(peerDescription) (claims node \(client)) failed authentication")
            reject(context: context, line: "CLIENT_ERROR authentication failed")
            return
        }
        handshakeTimer?.cancel()
        state = .ready
        server.stats.withLock { $0.authenticated += 1 }
        let serverTag = Handshake.serverTag(psk: psk, serverNonce: serverNonce, clientNonce: clientNonce,
                                            client: client, server: config.localNodeID)
        send(context: context, "OK \(Hex.encode(serverTag))", flush: true)
    }

    private func execute(_ request: MetaRequest, context: ChannelHandlerContext) {
        var out = pending ?? context.channel.allocator.buffer(capacity: 4096)
        pending = nil
        let mark = out.writerIndex
        do {
            try respond(to: request, into: &out)
        } catch {
            out.moveWriterIndex(to: mark)
            out.writeString("CLIENT_ERROR \(error.reason)\r\n")
        }
        pending = out
        if out.readableBytes >= 65536 { writePending(context: context) }
    }

    /// Flags copied back as memcached does: `O`, `k` (and `b` with a base64 key).
    private func echoed(_ request: MetaRequest) -> [String] {
        var flags: [String] = []
        if let opaque = request.token("O") { flags.append("O" + opaque) }
        if request.has("k") {
            flags.append("k" + request.keyToken)
            if request.has("b") { flags.append("b") }
        }
        return flags
    }

    private func respond(to request: MetaRequest, into out: inout ByteBuffer) throws(MetaFramingError) {
        let store = server.store
        switch request.command {
        case .mn:
            out.writeStaticString("MN\r\n")
        case .mg:
            try allowOnly("bcfkOqstTv", request)
            let touch = try request.token("T").map { t throws(MetaFramingError) in try integer(t, "T") }
            let item: StoredItem
            switch store.lookup(request.key, touchTTL: touch) {
            case .item(let found): item = found
            case .deleted(let version):
                // A miss that knows the deletion's version says it with `c` (when asked for the CAS).
                if !request.has("q") { line(["EN"] + (request.has("c") ? ["c\(version)"] : []) + echoed(request), into: &out) }
                return
            case .absent:
                if !request.has("q") { line(["EN"] + echoed(request), into: &out) }
                return
            }
            var flags: [String] = []
            for flag in request.flags {
                switch flag.letter {
                case UInt8(ascii: "f"): flags.append("f\(item.flags)")
                case UInt8(ascii: "c"): flags.append("c\(item.cas)")
                case UInt8(ascii: "s"): flags.append("s\(item.value.count)")
                case UInt8(ascii: "t"): flags.append(item.expiresAt == 0 ? "t-1" : "t\(max(0, item.expiresAt - currentUnixTime()))")
                default: break
                }
            }
            flags += echoed(request)
            if request.has("v") {
                line(["VA", String(item.value.count)] + flags, into: &out)
                out.writeBytes(item.value)
                out.writeStaticString("\r\n")
            } else {
                line(["HD"] + flags, into: &out)
            }
        case .ms:
            try allowOnly("bcCEFkOqTM", request)
            let ttl = try request.token("T").map { t throws(MetaFramingError) in try integer(t, "T") } ?? 0
            var flags: UInt32 = 0
            if let t = request.token("F") {
                guard let f = UInt32(t) else { throw MetaFramingError("bad F flag") }
                flags = f
            }
            let cas = try request.token("C").map { t throws(MetaFramingError) in
                guard let c = UInt64(t) else { throw MetaFramingError("bad C flag") }
                return c
            }
            var mode = StoreMode.set
            if let m = request.token("M") {
                guard m.count == 1, let parsed = StoreMode(rawValue: Character(m.uppercased())) else {
                    throw MetaFramingError("bad M flag")
                }
                mode = parsed
            }
            let outcome: StoreOutcome
            if let version = try versionFlag(request) {
                // A peer writing through: ordered by version, never conditional.
                guard mode == .set, cas == nil else { throw MetaFramingError("E cannot be combined with M or C") }
                outcome = store.storeVersioned(request.key, value: request.value ?? [], flags: flags, ttl: ttl,
                                               version: version)
            } else {
                outcome = store.store(request.key, value: request.value ?? [], flags: flags, ttl: ttl, mode: mode,
                                      compareCAS: cas)
            }
            switch outcome {
            case .stored(let newCAS):
                if !request.has("q") {
                    line(["HD"] + (request.has("c") ? ["c\(newCAS)"] : []) + echoed(request), into: &out)
                }
            case .notStored: line(["NS"] + echoed(request), into: &out)
            case .exists: line(["EX"] + echoed(request), into: &out)
            case .notFound: line(["NF"] + echoed(request), into: &out)
            }
        case .md:
            try allowOnly("bCEkOq", request)
            let cas = try request.token("C").map { t throws(MetaFramingError) in
                guard let c = UInt64(t) else { throw MetaFramingError("bad C flag") }
                return c
            }
            let outcome: DeleteOutcome
            if let version = try versionFlag(request) {
                guard cas == nil else { throw MetaFramingError("E cannot be combined with C") }
                outcome = store.deleteVersioned(request.key, version: version)
            } else {
                outcome = store.delete(request.key, compareCAS: cas)
            }
            switch outcome {
            case .deleted: if !request.has("q") { line(["HD"] + echoed(request), into: &out) }
            case .notFound: if !request.has("q") { line(["NF"] + echoed(request), into: &out) }
            case .exists: line(["EX"] + echoed(request), into: &out)
            }
        }
    }

    private func allowOnly(_ letters: String, _ request: MetaRequest) throws(MetaFramingError) {
        for flag in request.flags where !letters.utf8.contains(flag.letter) {
            throw MetaFramingError("invalid flag '\(flag.character)' for \(request.command)")
        }
        if let opaque = request.token("O"), opaque.utf8.count > 32 {
            throw MetaFramingError("opaque token longer than 32 bytes")
        }
    }

    /// `E<version>`: the write's version (memcached's explicit-CAS flag), 1 ... 2^56-1.
    private func versionFlag(_ request: MetaRequest) throws(MetaFramingError) -> UInt64? {
        guard let token = request.token("E") else { return nil }
        guard let version = UInt64(token), version > 0, version < 1 << 56 else { throw MetaFramingError("bad E flag") }
        return version
    }

    private func integer(_ token: String, _ flag: String) throws(MetaFramingError) -> Int {
        guard let n = Int(token) else { throw MetaFramingError("bad \(flag) flag") }
        return n
    }

    private func line(_ parts: [String], into out: inout ByteBuffer) {
        MetaEncoder.line(parts, into: &out)
    }

    private func send(context: ChannelHandlerContext, _ text: String, flush: Bool) {
        var buffer = context.channel.allocator.buffer(capacity: text.utf8.count + 2)
        buffer.writeString(text)
        buffer.writeStaticString("\r\n")
        if flush {
            context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        } else {
            context.write(wrapOutboundOut(buffer), promise: nil)
        }
    }

    /// One error line, then close: the stream can no longer be trusted.
    private func reject(context: ChannelHandlerContext, line: String) {
        writePending(context: context)
        handshakeTimer?.cancel()
        state = .closing
        var buffer = context.channel.allocator.buffer(capacity: line.utf8.count + 2)
        buffer.writeString(line)
        buffer.writeStaticString("\r\n")
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in bound.value.close(promise: nil) }
    }
}
