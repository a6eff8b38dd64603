#if canImport(Glibc)
import Glibc
#endif

/// A failure of a BPF operation: what was being done, the errno, and for a
/// program that the kernel refused, the verifier's log.
///
/// Match on ``kind`` for the failures callers handle differently (missing
/// privileges, no bpffs, an unknown interface, a verifier rejection, pinned
/// maps of another geometry); ``description`` is one line fit for a user.
public struct BPFError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable, Equatable {
        /// The process lacks root / CAP_BPF and CAP_NET_ADMIN.
        case notPrivileged
        /// /sys/fs/bpf is not a bpffs and could not be mounted.
        case bpffsUnavailable
        /// No network interface has this name.
        case unknownInterface(String)
        /// The kernel's verifier refused a program; see ``BPFError/verifierLog``.
        case verifierRejected(program: String)
        /// Maps pinned by an earlier run have another size or layout.
        case geometryMismatch
        /// The object, map, program or pin asked for does not exist.
        case notFound
        /// A key or value does not have the map's key or value size.
        case sizeMismatch
        /// Any other failure of a system call or of libbpf/libxdp.
        case system
    }

    public let kind: Kind
    /// What was being done, e.g. "load object xdp_mcache".
    public let operation: String
    /// The errno of the failing call, 0 if none applies.
    public let errno: Int32
    /// More context for the user (which map, what to do about it).
    public let detail: String?
    /// The verifier log of a rejected program (libbpf's retry at log level 1).
    public let verifierLog: String?
    /// The warnings libbpf/libxdp printed while the operation ran.
    public let libraryMessages: [String]

    public init(
        _ kind: Kind, operation: String, errno: Int32 = 0, detail: String? = nil,
        verifierLog: String? = nil, libraryMessages: [String] = []
    ) {
        self.kind = kind
        self.operation = operation
        self.errno = errno
        self.detail = detail
        self.verifierLog = verifierLog
        self.libraryMessages = libraryMessages
    }

    /// `strerror(errno)`, or an empty string if errno is 0.
    public var strerror: String {
        errno == 0 ? "" : String(cString: Glibc.strerror(errno))
    }

    public var description: String {
        var text: String
        switch kind {
        case .notPrivileged:
            text = "cxl-bmc needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON): \(operation)"
        case .bpffsUnavailable:
            text = "no BPF filesystem: \(operation)"
        case .unknownInterface(let name):
            text = "no network interface named '\(name)'"
        case .verifierRejected(let program):
            text = "the kernel's verifier rejected program '\(program)' (\(operation))"
        case .geometryMismatch, .notFound, .sizeMismatch, .system:
            text = operation
        }
        if errno != 0, !isUnknownInterface {
            text += ": \(strerror) (errno \(errno))"
        }
        if let detail {
            text += "; \(detail)"
        }
        return text
    }

    private var isUnknownInterface: Bool {
        if case .unknownInterface = kind { return true }
        return false
    }

    /// The last `lines` lines of the verifier log, if there is one.
    public func verifierLogTail(lines: Int = 30) -> String? {
        guard let verifierLog else { return nil }
        let all = verifierLog.split(separator: "\n", omittingEmptySubsequences: false)
        return all.suffix(lines).joined(separator: "\n")
    }
}

extension BPFError {
    /// An error for a failed call that reported `code` (a positive or negative
    /// errno). EPERM/EACCES from a process without the capabilities becomes
    /// ``Kind/notPrivileged``; with them, EPERM keeps its own meaning (for
    /// instance kernel lockdown).
    static func system(
        _ operation: String, errno code: Int32, detail: String? = nil,
        libraryMessages: [String] = []
    ) -> BPFError {
        let code = abs(code)
        if (code == EPERM || code == EACCES) && !Privileges.current.sufficient {
            return BPFError(
                .notPrivileged, operation: operation, errno: code, detail: detail,
                libraryMessages: libraryMessages)
        }
        return BPFError(
            .system, operation: operation, errno: code, detail: detail,
            libraryMessages: libraryMessages)
    }

    /// An error from the thread's errno after a failed call.
    static func lastErrno(_ operation: String, detail: String? = nil) -> BPFError {
        system(operation, errno: Glibc.errno, detail: detail)
    }
}

extension BPFError {
    /// Returns `fd` from a libbpf call that opens one (`bpf_obj_get`, `…_get_fd_by_id`), or throws
    /// with its errno: `.notFound` for ENOENT, `.system` otherwise.
    static func checkFD(_ fd: Int32, _ operation: String) throws -> Int32 {
        guard fd < 0 else { return fd }
        let code = Glibc.errno
        if code == ENOENT {
            throw BPFError(.notFound, operation: operation, errno: code)
        }
        throw BPFError.system(operation, errno: code)
    }
}
