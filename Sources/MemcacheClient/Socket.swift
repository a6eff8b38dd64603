#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 or IPv6 socket address.
public struct SocketAddress: @unchecked Sendable, CustomStringConvertible {
    var storage = sockaddr_storage()
    var length: socklen_t = 0

    /// Resolves `host` (an IPv4 or IPv6 address, optionally in brackets, or a host name) and `port`.
    public init(host: String, port: UInt16) throws {
        let bare = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_flags = AI_NUMERICSERV
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(bare, String(port), &hints, &result) == 0, let info = result else {
            throw MemcacheError.badAddress(host)
        }
        defer { freeaddrinfo(result) }
        length = info.pointee.ai_addrlen
        withUnsafeMutableBytes(of: &storage) { dst in
            dst.copyMemory(from: UnsafeRawBufferPointer(start: info.pointee.ai_addr, count: Int(length)))
        }
    }

    /// `AF_INET` or `AF_INET6`.
    public var family: Int32 { Int32(storage.ss_family) }

    /// The numeric address and port, e.g. `10.0.0.1:11211` or `[fd00::1]:11211`.
    public var description: String {
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        var serv = [CChar](repeating: 0, count: Int(NI_MAXSERV))
        let rc = withSockaddr { getnameinfo($0, length, &host, socklen_t(host.count), &serv, socklen_t(serv.count),
                                            NI_NUMERICHOST | NI_NUMERICSERV) }
        guard rc == 0 else { return "<unprintable address>" }
        let h = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let s = String(decoding: serv.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return family == AF_INET6 ? "[\(h)]:\(s)" : "\(h):\(s)"
    }

    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>) -> R) -> R {
        withUnsafeBytes(of: storage) { body($0.baseAddress!.assumingMemoryBound(to: sockaddr.self)) }
    }
}

/// A connected socket that closes itself. Sends and receives retry `EINTR`.
final class Socket {
    let fd: Int32
    /// Reused by every receive: allocating (and zeroing) a buffer per datagram costs more than the copy out.
    private var buffer = [UInt8](repeating: 0, count: 65536)

    init(connectingTo address: SocketAddress, type: __socket_type, timeout: Duration) throws {
        fd = Glibc.socket(address.family, Int32(type.rawValue | SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw MemcacheError.system(operation: "socket", errno: errno) }
        // Linux bounds a blocking connect by the send timeout.
        var tv = timeval(tv_sec: Int(timeout.components.seconds),
                         tv_usec: Int(timeout.components.attoseconds / 1_000_000_000_000))
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        // Not retried on EINTR: the connect goes on in the background then, and a retry fails.
        guard address.withSockaddr({ Glibc.connect(fd, $0, address.length) }) == 0 else {
            let code = errno
            Glibc.close(fd)
            throw MemcacheError.system(operation: "connect to \(address)", errno: code)
        }
    }

    deinit { Glibc.close(fd) }

    func setOption(_ level: Int32, _ name: Int32, _ value: Int32) {
        var v = value
        _ = setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Sends all of `bytes` (a stream socket may take them in pieces).
    func sendAll(_ bytes: some Collection<UInt8>) throws {
        try Array(bytes).withUnsafeBytes { buf in
            var offset = 0
            while offset < buf.count {
                let n = retryingEINTR { Glibc.send(fd, buf.baseAddress! + offset, buf.count - offset, Int32(MSG_NOSIGNAL)) }
                guard n >= 0 else { throw MemcacheError.system(operation: "send", errno: errno) }
                offset += n
            }
        }
    }

    /// Sends one datagram from `bytes` without copying it.
    func send(_ bytes: UnsafeRawBufferPointer) throws {
        let n = retryingEINTR { Glibc.send(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL)) }
        guard n >= 0 else { throw MemcacheError.system(operation: "send", errno: errno) }
    }

    /// Receives one datagram into `into`, waiting until `deadline`: its length (truncated to the
    /// buffer), or nil if nothing arrived by then. Allocates nothing.
    func receive(into: UnsafeMutableRawBufferPointer, deadline: ContinuousClock.Instant) throws -> Int? {
        while true {
            let n = Glibc.recv(fd, into.baseAddress, into.count, Int32(MSG_DONTWAIT))
            if n >= 0 { return n }
            guard errno == EAGAIN || errno == EINTR else { throw MemcacheError.system(operation: "recv", errno: errno) }
            let remaining = ContinuousClock.now.duration(to: deadline)
            if remaining <= .zero { return nil }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ms = remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000
            guard Glibc.poll(&pfd, 1, Int32(clamping: max(ms, 1))) >= 0 || errno == EINTR else {
                throw MemcacheError.system(operation: "poll", errno: errno)
            }
        }
    }

    /// Receives one datagram, or what a stream socket has (up to 64 KiB), waiting until `deadline`;
    /// nil if nothing arrived by then. An empty array means the peer closed a stream socket.
    func receive(deadline: ContinuousClock.Instant) throws -> [UInt8]? {
        while true {
            // Try first: under load data is usually waiting, and this saves a poll per datagram.
            let n = buffer.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n >= 0 { return Array(buffer[..<n]) }
            guard errno == EAGAIN || errno == EINTR else { throw MemcacheError.system(operation: "recv", errno: errno) }
            let remaining = ContinuousClock.now.duration(to: deadline)
            if remaining <= .zero { return nil }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ms = remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000
            guard Glibc.poll(&pfd, 1, Int32(clamping: max(ms, 1))) >= 0 || errno == EINTR else {
                throw MemcacheError.system(operation: "poll", errno: errno)
            }
        }
    }
}

/// Runs a system call until it fails with something other than `EINTR`.
func retryingEINTR<T: FixedWidthInteger>(_ call: () -> T) -> T {
    while true {
        let rc = call()
        if rc >= 0 || errno != EINTR { return rc }
    }
}
