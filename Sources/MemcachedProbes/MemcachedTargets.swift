import Foundation
import ProbeTargets

/// Where the probes go in one memcached binary: its functions' file offsets
/// and addresses, the instructions that store a flush time, and the globals
/// the probes read (memcached's clock and settings).
public struct MemcachedTargets: Sendable {
    public let binary: String
    public let buildID: String?
    /// Every function of ``MemcachedTargets/probedFunctions`` and ``callerRanges``.
    public let functions: [String: ProbeTarget]
    public let flushSites: [FlushSite]
    public let currentTime: UInt64
    public let processStarted: UInt64
    public let settings: UInt64

    /// An instruction storing `settings.oldest_live` from a register.
    public struct FlushSite: Sendable, Equatable {
        public let fileOffset: UInt64
        public let address: UInt64
        /// x86-64 register number (0 rax … 15 r15) holding the new value.
        public let register: UInt8
        /// The function it was found in.
        public let function: String
    }

    /// Functions carrying a probe.
    public static let probedFunctions = [
        "do_store_item", "do_item_unlink", "do_item_unlink_nolock",
        "item_get", "limited_get_locked", "item_touch", "do_add_delta",
    ]
    /// Functions whose address ranges tell callers of the unlink functions apart.
    public static let callerRanges = ["do_item_replace", "do_item_get", "lru_pull_tail"]
    /// Where memcached 1.6 inlines (or keeps) its flush_all handlers: the
    /// first two for the text protocol, the rest for the binary one.
    public static let flushHosts = [
        "process_flush_all_command", "process_command_ascii.part.0", "process_command_ascii",
        "process_bin_flush", "dispatch_bin_command", "try_read_command_binary", "complete_nread_binary",
    ]
    /// memcached 1.6 `struct settings`: offset of `rel_time_t oldest_live`.
    public static let oldestLiveOffset: UInt64 = 0x24

    /// Resolves everything or throws a message that says what is missing and
    /// what to install (``ProbeTargetError``) or why the flush probe cannot
    /// be placed (``MemcachedProbeError``).
    public static func resolve(
        binary: String, debugRoot: String = "/usr/lib/debug", tables: [OffsetTable] = OffsetTable.shipped
    ) throws -> MemcachedTargets {
        let image = try ELFImage(contentsOf: binary)
        let required = probedFunctions + callerRanges
        var functions = try ProbeTargetResolver.resolve(
            binary: binary, functions: required, debugRoot: debugRoot, tables: tables)
        for name in callerRanges where functions[name]?.size == nil {
            throw MemcachedProbeError.unknownSize(function: name, binary: binary)
        }
        let data = try ProbeTargetResolver.resolveData(
            binary: binary, names: ["current_time", "process_started", "settings"], debugRoot: debugRoot, tables: tables)
        guard let currentTime = data["current_time"], let processStarted = data["process_started"],
              let settings = data["settings"] else {
            let missing = ["current_time", "process_started", "settings"].filter { data[$0] == nil }
            throw MemcachedProbeError.globalsNotFound(binary: binary, missing: missing)
        }
        var hosts: [ProbeTarget] = []
        for name in flushHosts {
            guard let target = try? ProbeTargetResolver.resolve(
                binary: binary, functions: [name], debugRoot: debugRoot, tables: tables)[name],
                target.size != nil else { continue }
            hosts.append(target)
            functions[name] = target
        }
        let sites = try findFlushSites(in: image, hosts: hosts, oldestLive: settings.address + oldestLiveOffset)
        guard !sites.isEmpty else {
            throw MemcachedProbeError.noFlushSites(binary: binary, searched: hosts.map(\.function))
        }
        return MemcachedTargets(
            binary: binary, buildID: try image.buildID(), functions: functions, flushSites: sites,
            currentTime: currentTime.address, processStarted: processStarted.address, settings: settings.address)
    }

    /// Finds `mov r32, disp32(%rip)` stores (opcode 0x89, optional REX without
    /// W, ModRM mod=00 rm=101) whose target is `oldestLive`, inside the host
    /// functions only (main's option parsing also writes it, at start-up).
    /// A 6- or 7-byte pattern whose displacement lands exactly on the field is
    /// the instruction: a false match inside another one would need those 4
    /// displacement bytes to coincide too.
    static func findFlushSites(in image: ELFImage, hosts: [ProbeTarget], oldestLive: UInt64) throws -> [FlushSite] {
        var sites: [FlushSite] = []
        var seen = Set<UInt64>()
        for host in hosts {
            guard let size = host.size, size > 0 else { continue }
            let bytes = try image.bytes(atFileOffset: host.fileOffset, count: Int(size))
            var i = 0
            while i + 6 <= bytes.count {
                var at = i
                var rex: UInt8 = 0
                if bytes[at] & 0xf0 == 0x40 {
                    rex = bytes[at]
                    at += 1
                }
                guard at + 6 <= bytes.count, bytes[at] == 0x89, rex & 0x08 == 0, bytes[at + 1] & 0xc7 == 0x05 else {
                    i += 1
                    continue
                }
                let disp = Int32(bitPattern: UInt32(bytes[at + 2]) | UInt32(bytes[at + 3]) << 8
                    | UInt32(bytes[at + 4]) << 16 | UInt32(bytes[at + 5]) << 24)
                let length = UInt64(at + 6 - i)
                let address = host.address + UInt64(i)
                let target = UInt64(bitPattern: Int64(bitPattern: address + length) + Int64(disp))
                if target == oldestLive, seen.insert(address).inserted {
                    let register = (bytes[at + 1] >> 3) & 7 | (rex & 0x04 != 0 ? 8 : 0)
                    sites.append(FlushSite(fileOffset: host.fileOffset + UInt64(i), address: address,
                                           register: register, function: host.function))
                }
                i += 1
            }
        }
        return sites.sorted { $0.address < $1.address }
    }
}

public enum MemcachedProbeError: Error, CustomStringConvertible, Equatable, Sendable {
    case unknownSize(function: String, binary: String)
    case globalsNotFound(binary: String, missing: [String])
    case noFlushSites(binary: String, searched: [String])
    case l1NotAttached(pinDirectory: String)
    case notRunning(pid: Int32)
    case notThatBinary(pid: Int32, binary: String, runs: String)

    public var description: String {
        switch self {
        case let .unknownSize(function, binary):
            return "\(binary): the size of \(function) is unknown (its symbol or table entry has none); cxl-bmc needs it to tell its callers apart"
        case let .globalsNotFound(binary, missing):
            return "\(binary): cannot find memcached's globals \(missing.joined(separator: ", ")) (in its symbols, debug file or offset table); add them to the offset table as `name 0xADDR kind=data`"
        case let .noFlushSites(binary, searched):
            return "\(binary): found no store to settings.oldest_live in \(searched.isEmpty ? "any flush handler (none resolved)" : searched.joined(separator: ", ")); flush_all could not be traced, so cxl-bmc refuses to attach"
        case let .l1NotAttached(pinDirectory):
            return "L1 is not attached there: no pinned maps in \(pinDirectory) (run `cxl-bmc attach IFACE` first, or leave out --l1)"
        case let .notRunning(pid):
            return "no process \(pid)"
        case let .notThatBinary(pid, binary, runs):
            return "process \(pid) runs \(runs), not \(binary)"
        }
    }
}
