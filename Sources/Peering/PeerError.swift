/// Everything that can go wrong talking to a peer, or serving one.
public enum PeerError: Error, Equatable, CustomStringConvertible {
    /// The pre-shared key (file) is unusable.
    case badKey(String)
    /// A key the meta protocol cannot carry (empty, over 250 bytes after encoding).
    case invalidKey(String)
    /// A value over the configured limit.
    case valueTooLarge(size: Int, limit: Int)
    /// No connection could be made (refused, unreachable, …).
    case connectFailed(peer: String, reason: String)
    /// The last connection attempts failed; the next one is allowed in `retryInMilliseconds`.
    case unavailable(peer: String, retryInMilliseconds: Int)
    /// The peer did not answer in time (connect, handshake, or a request).
    case timedOut(peer: String, what: String, milliseconds: Int)
    /// The connection closed with the request unanswered.
    case connectionClosed(peer: String)
    /// The handshake failed: wrong key, wrong node, or not a cxl-bmc peer.
    case authenticationFailed(peer: String, reason: String)
    /// The peer sent something the protocol does not allow (the connection is dropped).
    case protocolViolation(peer: String, reason: String)
    /// The peer answered `CLIENT_ERROR`, `SERVER_ERROR` or `ERROR`.
    case peerError(peer: String, line: String)
    /// Too many requests in flight to this peer.
    case queueFull(peer: String, limit: Int)
    /// The client was shut down.
    case shutDown

    public var message: String {
        switch self {
        case .badKey(let why): why
        case .invalidKey(let why): "invalid key: \(why)"
        case .valueTooLarge(let size, let limit): "value of \(size) bytes exceeds the limit of \(limit)"
        case .connectFailed(let peer, let reason): "\(peer): cannot connect: \(reason)"
        case .unavailable(let peer, let ms): "\(peer): unavailable after failed connects (next attempt in \(ms) ms)"
        case .timedOut(let peer, let what, let ms): "\(peer): \(what) timed out after \(ms) ms"
        case .connectionClosed(let peer): "\(peer): connection closed before the reply"
        case .authenticationFailed(let peer, let reason): "\(peer): authentication failed: \(reason)"
        case .protocolViolation(let peer, let reason): "\(peer): protocol violation: \(reason)"
        case .peerError(let peer, let line): "\(peer): peer replied '\(line)'"
        case .queueFull(let peer, let limit): "\(peer): \(limit) requests already in flight"
        case .shutDown: "the peer client is shut down"
        }
    }

    public var description: String { message }
}
