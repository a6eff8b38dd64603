#if canImport(Glibc)
import Glibc
#endif

/// Errors from the memcached clients and the reply parser.
public enum MemcacheError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `host` is not an address `getaddrinfo` could resolve.
    case badAddress(String)
    /// A system call failed; `errno` is the C `errno`.
    case system(operation: String, errno: Int32)
    /// No complete reply arrived in time.
    case timeout
    /// The server closed the connection before a complete reply.
    case connectionClosed
    /// The bytes are not a well-formed memcached reply; `detail` says where.
    case malformedReply(String)

    public var description: String {
        switch self {
        case .badAddress(let host): "cannot resolve address '\(host)'"
        case .system(let op, let code): "\(op): \(String(cString: strerror(code))) (errno \(code))"
        case .timeout: "timed out waiting for a reply"
        case .connectionClosed: "connection closed by the server"
        case .malformedReply(let detail): "malformed reply: \(detail)"
        }
    }
}
