import CXLBMCABI
import Foundation
import ProbeTargets

/// Where the probes go in one memcached binary: its functions' file offsets
/// and addresses, the instructions that store a flush time, and the globals
/// the probes read (memcached's clock and settings).
public struct MemcachedTargets: Sendable {
    public let binary: String
    public let buildID: String?
    /// Every function resolved: the probed ones and the hosts searched for sites.
    public let functions: [String: ProbeTarget]
    /// Instructions storing `settings.oldest_live` (flush_all).
    public let flushSites: [Site]
    /// Calls linking a stored item inside do_store_item.
    public let storeSites: [Site]
    /// Calls unlinking an item in the delete paths.
    public let deleteSites: [Site]
    /// Calls unlinking an item inside lru_pull_tail (evictions).
    public let evictSites: [Site]
    /// Calls to item_get by which a set whose allocation failed drops the old value
    /// (`it = item_get(…); if (it) item_unlink(it);`): a NULL there is a delete of a key memcached
    /// does not hold, not a GET miss, so L3 must forget the key rather than promote it.
    public let failedStoreLookups: [Site]
    /// The register do_store_item keeps its `comm` argument in, from its prologue to every link
    /// call, when its code is a build known to do so (``knownStoreBodies``): the store probe reads
    /// the command there and do_store_item's entry carries no probe (one trap per SET, not two).
    /// nil: the entry probe passes the command to the link probe (benchmarks set it to nil to
    /// measure that path).
    public var storeCommandRegister: UInt8?
    public let currentTime: UInt64
    public let processStarted: UInt64
    public let settings: UInt64

    /// One instruction probed inside a function: a call, or a store of the flush time.
    public struct Site: Sendable, Equatable {
        public let fileOffset: UInt64
        public let address: UInt64
        /// x86-64 register number (0 rax … 7 rdi, 8 r8 … 15 r15) holding the item (for a
        /// call: the argument) or the new value (a flush store).
        public let register: UInt8
        /// The function it was found in.
        public let function: String
        /// What it calls (nil for a flush store).
        public let callee: String?
    }

    /// do_store_item bodies known to keep `comm` (its second argument) in one callee-saved register
    /// from the prologue's `mov %esi, REG` to every call linking the item: (size, FNV-1a 64 of its
    /// bytes, register). Only the exact bytes count (they include the calls' displacements): the
    /// register of another build is never guessed, that build keeps the entry probe.
    /// Debian's 1.6.18-1+deb12u1 (and its rebuild with symbols, the same code at the same
    /// addresses): `mov %esi,%r13d` at +0x16, r13 otherwise only compared, pushed and popped
    /// (UprobeEventTests checks that against objdump).
    public static let knownStoreBodies: [(size: UInt64, fnv1a: UInt64, register: UInt8)] = [
        (1601, 0x71ce_49d0_e82a_9716, 13),
    ]

    /// FNV-1a 64 of a byte string.
    static func fnv1a64(_ bytes: [UInt8]) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
        return h
    }

    /// ``knownStoreBodies``' register for this do_store_item, if its bytes are one of them.
    static func storeCommandRegister(in image: ELFImage, doStoreItem: ProbeTarget) throws -> UInt8? {
        guard let size = doStoreItem.size,
              let known = knownStoreBodies.first(where: { $0.size == size }) else { return nil }
        let bytes = try image.bytes(atFileOffset: doStoreItem.fileOffset, count: Int(size))
        return fnv1a64(bytes) == known.fnv1a ? known.register : nil
    }

    /// Functions whose entry (and return) carry a probe.
    public static let probedFunctions = [
        "do_store_item", "item_get", "limited_get_locked", "item_touch", "do_add_delta", "item_get_locked",
    ]
    static let rdi: UInt8 = 7, rsi: UInt8 = 6
    /// Calls inside do_store_item that link the item it stores, and where the item is.
    public static let storeCallees: [(name: String, register: UInt8)] = [
        ("do_item_link", rdi), ("item_replace", rsi), ("do_item_replace", rsi),
    ]
    /// Delete paths: memcached 1.6.18 inlines them into the first functions
    /// here; other builds may keep them apart (all are searched).
    public static let deleteHosts = [
        "process_command_ascii.part.0", "process_command_ascii", "process_delete_command",
        "process_mdelete_command", "process_mset_command", "process_update_command",
        "try_read_command_binary", "complete_nread_binary", "process_bin_delete", "process_bin_update",
        "dispatch_bin_command",
    ]
    public static let deleteCallees: [(name: String, register: UInt8)] = [("do_item_unlink", rdi), ("item_unlink", rdi)]
    /// Where memcached 1.6 inlines (or keeps) its flush_all handlers: the
    /// first three for the text protocol, the rest for the binary one.
    public static let flushHosts = [
        "process_flush_all_command", "process_command_ascii.part.0", "process_command_ascii",
        "process_bin_flush", "dispatch_bin_command", "try_read_command_binary", "complete_nread_binary",
    ]
    /// memcached 1.6 `struct settings`: offset of `rel_time_t oldest_live` (the ABI header's,
    /// which the flush and eviction probes read too).
    public static let oldestLiveOffset = UInt64(MC_SETTINGS_OLDEST_LIVE)

    /// Resolves everything or throws a message that says what is missing and
    /// what to install (``ProbeTargetError``) or why a probe cannot be placed
    /// (``MemcachedProbeError``).
    public static func resolve(
        binary: String, debugRoot: String = "/usr/lib/debug", tables: [OffsetTable] = OffsetTable.shipped
    ) throws -> MemcachedTargets {
        let image = try ELFImage(contentsOf: binary)
        let required = probedFunctions + ["lru_pull_tail", "do_item_link", "do_item_unlink", "do_item_unlink_nolock"]
        var functions = try ProbeTargetResolver.resolve(
            binary: binary, functions: required, debugRoot: debugRoot, tables: tables)
        /// Functions that may be absent (inlined, or not in a table).
        func optional(_ names: [String]) -> [ProbeTarget] {
            names.compactMap { name in
                if let known = functions[name] { return known }
                guard let target = try? ProbeTargetResolver.resolve(
                    binary: binary, functions: [name], debugRoot: debugRoot, tables: tables)[name] else { return nil }
                functions[name] = target
                return target
            }
        }
        let data = try ProbeTargetResolver.resolveData(
            binary: binary, names: ["current_time", "process_started", "settings"], debugRoot: debugRoot, tables: tables)
        guard let currentTime = data["current_time"], let processStarted = data["process_started"],
              let settings = data["settings"] else {
            let missing = ["current_time", "process_started", "settings"].filter { data[$0] == nil }
            throw MemcachedProbeError.globalsNotFound(binary: binary, missing: missing)
        }
        func callees(_ list: [(name: String, register: UInt8)]) -> [(ProbeTarget, UInt8)] {
            list.compactMap { entry in optional([entry.name]).first.map { ($0, entry.register) } }
        }
        func sized(_ hosts: [ProbeTarget], _ what: String) throws -> [ProbeTarget] {
            for host in hosts where host.size == nil {
                throw MemcachedProbeError.unknownSize(function: host.function, binary: binary)
            }
            return hosts
        }

        let storeSites = try findCallSites(in: image, hosts: sized(optional(["do_store_item"]), "store"),
                                           callees: callees(storeCallees))
        guard storeSites.contains(where: { $0.callee == "do_item_link" }),
              storeSites.contains(where: { $0.callee != "do_item_link" }) else {
            throw MemcachedProbeError.sitesNotFound(
                binary: binary, what: "the calls linking a stored item (do_item_link, item_replace) in do_store_item",
                searched: ["do_store_item"])
        }
        let storeCommandRegister = try functions["do_store_item"].flatMap {
            try Self.storeCommandRegister(in: image, doStoreItem: $0)
        }
        let deleteHostTargets = try sized(optional(deleteHosts), "delete")
        let deleteSites = try findCallSites(in: image, hosts: deleteHostTargets, callees: callees(deleteCallees))
        guard !deleteSites.isEmpty else {
            throw MemcachedProbeError.sitesNotFound(
                binary: binary, what: "a call to do_item_unlink or item_unlink in the delete handlers",
                searched: deleteHostTargets.map(\.function))
        }
        let evictSites = try findCallSites(in: image, hosts: sized(optional(["lru_pull_tail"]), "evict"),
                                           callees: callees([("do_item_unlink_nolock", rdi)]))
        guard !evictSites.isEmpty else {
            throw MemcachedProbeError.sitesNotFound(
                binary: binary, what: "a call to do_item_unlink_nolock in lru_pull_tail", searched: ["lru_pull_tail"])
        }
        let unlinkTargets = callees(deleteCallees).map(\.0)
        let failedStoreLookups = try findCallSites(in: image, hosts: deleteHostTargets, callees: callees([("item_get", rdi)]))
            .filter { try callFollows($0, in: image, within: 32, to: unlinkTargets) }
        let flushHostTargets = try sized(optional(flushHosts), "flush")
        let flushSites = try findFlushSites(in: image, hosts: flushHostTargets, oldestLive: settings.address + oldestLiveOffset)
        guard !flushSites.isEmpty else {
            throw MemcachedProbeError.sitesNotFound(
                binary: binary, what: "a store to settings.oldest_live (flush_all)",
                searched: flushHostTargets.map(\.function))
        }
        return MemcachedTargets(
            binary: binary, buildID: try image.buildID(), functions: functions, flushSites: flushSites,
            storeSites: storeSites, deleteSites: deleteSites, evictSites: evictSites,
            failedStoreLookups: Array(failedStoreLookups.prefix(Int(MC_FAILED_STORE_LOOKUPS))),
            storeCommandRegister: storeCommandRegister,
            currentTime: currentTime.address, processStarted: processStarted.address, settings: settings.address)
    }

    /// The address a 32-bit little-endian displacement at `bytes[at]` points to,
    /// relative to `next` (the address of the following instruction).
    static func ripRelative(_ bytes: [UInt8], displacementAt at: Int, next: UInt64) -> UInt64 {
        let disp = Int32(bitPattern: UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8
            | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24)
        return UInt64(bitPattern: Int64(bitPattern: next) + Int64(disp))
    }

    /// Finds `call rel32` (0xE8) instructions inside the host functions whose
    /// target is one of the callees. A 5-byte pattern whose displacement
    /// lands exactly on a callee's first byte is the call: a false match
    /// inside another instruction would need all 4 displacement bytes to
    /// coincide. The kernel emulates a probed call (no single-step).
    static func findCallSites(in image: ELFImage, hosts: [ProbeTarget], callees: [(ProbeTarget, UInt8)]) throws -> [Site] {
        var sites: [Site] = []
        var seen = Set<UInt64>()
        for host in hosts {
            guard let size = host.size, size >= 5 else { continue }
            let bytes = try image.bytes(atFileOffset: host.fileOffset, count: Int(size))
            for i in 0...(bytes.count - 5) where bytes[i] == 0xe8 {
                let address = host.address + UInt64(i)
                let target = ripRelative(bytes, displacementAt: i + 1, next: address + 5)
                guard let (callee, register) = callees.first(where: { $0.0.address == target }),
                      seen.insert(address).inserted else { continue }
                sites.append(Site(fileOffset: host.fileOffset + UInt64(i), address: address, register: register,
                                  function: host.function, callee: callee.function))
            }
        }
        return sites.sorted { $0.address < $1.address }
    }

    /// A `call rel32` to one of `targets` starts within `within` bytes after the call at `site`.
    static func callFollows(_ site: Site, in image: ELFImage, within: Int, to targets: [ProbeTarget]) throws -> Bool {
        let bytes = try image.bytes(atFileOffset: site.fileOffset + 5, count: within + 5)
        for i in 0..<within where bytes[i] == 0xe8 {
            let target = ripRelative(bytes, displacementAt: i + 1, next: site.address + 5 + UInt64(i) + 5)
            if targets.contains(where: { $0.address == target }) { return true }
        }
        return false
    }

    /// Finds `mov r32, disp32(%rip)` stores (opcode 0x89, optional REX without
    /// W, ModRM mod=00 rm=101) whose target is `oldestLive`, inside the host
    /// functions only (main's option parsing also writes it, at start-up).
    /// A 6- or 7-byte pattern whose displacement lands exactly on the field is
    /// the instruction: a false match inside another one would need those 4
    /// displacement bytes to coincide too.
    static func findFlushSites(in image: ELFImage, hosts: [ProbeTarget], oldestLive: UInt64) throws -> [Site] {
        var sites: [Site] = []
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
                let address = host.address + UInt64(i)
                let target = ripRelative(bytes, displacementAt: at + 2, next: address + UInt64(at + 6 - i))
                if target == oldestLive, seen.insert(address).inserted {
                    let register = (bytes[at + 1] >> 3) & 7 | (rex & 0x04 != 0 ? 8 : 0)
                    sites.append(Site(fileOffset: host.fileOffset + UInt64(i), address: address,
                                      register: register, function: host.function, callee: nil))
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
    case sitesNotFound(binary: String, what: String, searched: [String])
    case l1NotAttached(pinDirectory: String)
    case notRunning(pid: Int32)
    case notThatBinary(pid: Int32, binary: String, runs: String)

    public var description: String {
        switch self {
        case let .unknownSize(function, binary):
            return "\(binary): the size of \(function) is unknown (its symbol or table entry has none); cxl-bmc needs it to tell its callers apart"
        case let .globalsNotFound(binary, missing):
            return "\(binary): cannot find memcached's globals \(missing.joined(separator: ", ")) (in its symbols, debug file or offset table); add them to the offset table as `name 0xADDR kind=data`"
        case let .sitesNotFound(binary, what, searched):
            return "\(binary): found no \(what) in \(searched.isEmpty ? "any function (none resolved)" : searched.joined(separator: ", ")); without it some writes would go unseen, so cxl-bmc refuses to attach"
        case let .l1NotAttached(pinDirectory):
            return "L1 is not attached there: no pinned maps in \(pinDirectory) (run `cxl-bmc attach IFACE` first, or leave out --l1)"
        case let .notRunning(pid):
            return "no process \(pid)"
        case let .notThatBinary(pid, binary, runs):
            return "process \(pid) runs \(runs), not \(binary)"
        }
    }
}
