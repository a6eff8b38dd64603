#if canImport(Glibc)
import Glibc
#endif

/// The capabilities cxl-bmc needs, read from the effective set of this process.
public struct Privileges: Sendable {
    /// CAP_NET_ADMIN: attach XDP and TC programs.
    public let netAdmin: Bool
    /// CAP_BPF (or CAP_SYS_ADMIN, which implies it): load programs, create maps.
    public let bpf: Bool
    /// CAP_PERFMON (or CAP_SYS_ADMIN): pointer arithmetic in the verifier, uprobes.
    public let perfmon: Bool

    /// Enough to load, pin and attach everything.
    public var sufficient: Bool { netAdmin && bpf && perfmon }

    /// The effective capabilities of this process (`CapEff` in /proc/self/status).
    public static var current: Privileges {
        let effective = effectiveCapabilities() ?? (geteuid() == 0 ? ~0 : 0)
        func has(_ bit: UInt64) -> Bool { effective & (1 << bit) != 0 }
        let sysAdmin = has(21)
        return Privileges(netAdmin: has(12), bpf: has(39) || sysAdmin, perfmon: has(38) || sysAdmin)
    }

    /// Throws ``BPFError/Kind/notPrivileged`` unless the process has what
    /// cxl-bmc needs.
    public static func check(for operation: String) throws {
        let privileges = current
        guard privileges.sufficient else {
            var missing: [String] = []
            if !privileges.bpf { missing.append("CAP_BPF") }
            if !privileges.netAdmin { missing.append("CAP_NET_ADMIN") }
            if !privileges.perfmon { missing.append("CAP_PERFMON") }
            throw BPFError(
                .notPrivileged, operation: operation,
                detail: "missing \(missing.joined(separator: ", "))")
        }
    }

    private static func effectiveCapabilities() -> UInt64? {
        guard let file = fopen("/proc/self/status", "r") else { return nil }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 512)
        while fgets(&line, Int32(line.count), file) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if text.hasPrefix("CapEff:") {
                let hex = text.dropFirst("CapEff:".count).trimmedWhitespace()
                return UInt64(hex, radix: 16)
            }
        }
        return nil
    }
}

extension StringProtocol {
    /// Drops leading and trailing blanks and newlines.
    func trimmedWhitespace() -> Substring {
        let text = Substring(self)
        guard let first = text.firstIndex(where: { !$0.isWhitespace }),
            let last = text.lastIndex(where: { !$0.isWhitespace })
        else { return "" }
        return text[first...last]
    }
}
