import CLibBPF
import CLoaderShim
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// A clsact hook: ingress or egress.
public enum TCDirection: String, Sendable {
    case ingress, egress

    var attachPoint: Int32 {
        Int32(bitPattern: (self == .ingress ? BPF_TC_INGRESS : BPF_TC_EGRESS).rawValue)
    }
}

/// A filter found on a clsact hook.
public struct TCFilter: Sendable, Hashable {
    public let handle: UInt32
    public let priority: UInt32
    /// The classifier: "bpf" for BPF filters.
    public let kind: String
    /// The BPF program's id (0 for other classifiers).
    public let programID: UInt32
    /// A BPF filter's name as tc shows it (e.g. "tc_egress:[42]" for `object-pinned`).
    public let name: String

    public var isBPF: Bool { kind == "bpf" }
}

/// A TC (sched_cls) program attached as a direct-action filter on a clsact
/// hook (`bpf_tc_attach`; libbpf 1.1 has no tcx).
///
/// The clsact qdisc is created if it is missing (``createdQdisc``) and left
/// alone if it was there. Like XDP, the filter lives in the kernel until
/// ``detach(removingQdiscIfCreated:)``; dropping the object does not detach it.
public final class TCAttachment {
    public let interface: NetworkInterface
    public let direction: TCDirection
    public let handle: UInt32
    public let priority: UInt32
    public let programID: UInt32
    /// Whether this attachment created the clsact qdisc.
    public let createdQdisc: Bool
    public private(set) var isAttached = true

    static let logger = Logger(label: "cxl-bmc.loader")

    private init(
        interface: NetworkInterface, direction: TCDirection, handle: UInt32, priority: UInt32,
        programID: UInt32, createdQdisc: Bool
    ) {
        self.interface = interface
        self.direction = direction
        self.handle = handle
        self.priority = priority
        self.programID = programID
        self.createdQdisc = createdQdisc
    }

    /// Creates the clsact qdisc if needed; true if this call created it.
    @discardableResult
    public static func ensureQdisc(on interface: NetworkInterface, direction: TCDirection = .egress) throws -> Bool {
        let (result, messages) = LibraryLog.capture {
            cxlbmc_tc_hook_create(interface.index, direction.attachPoint)
        }
        switch result {
        case 0: return true
        case -EEXIST: return false
        default:
            throw BPFError.system(
                "create clsact qdisc on \(interface.name)", errno: result, detail: messages.last,
                libraryMessages: messages)
        }
    }

    /// Attaches `program` as a direct-action filter. `handle`/`priority` 0 let
    /// the kernel choose; with `replace`, an existing filter with the same
    /// handle and priority is replaced.
    public static func attach(
        _ program: BPFProgram, to interface: NetworkInterface, direction: TCDirection = .egress,
        handle: UInt32 = 0, priority: UInt32 = 0, replace: Bool = false
    ) throws -> TCAttachment {
        let created = try ensureQdisc(on: interface, direction: direction)
        var handle = handle
        var priority = priority
        var programID: UInt32 = 0
        let (result, messages) = LibraryLog.capture {
            cxlbmc_tc_attach(
                interface.index, direction.attachPoint, program.fd, replace ? 1 : 0, &handle, &priority,
                &programID)
        }
        if result != 0 {
            if created {
                _ = cxlbmc_tc_hook_destroy(interface.index)
            }
            throw BPFError.system(
                "attach TC program '\(program.name)' to \(interface.name) \(direction)", errno: result,
                detail: messages.last, libraryMessages: messages)
        }
        logger.debug(
            "attached TC program \(program.name) (id \(programID)) to \(interface) \(direction), handle \(handle) priority \(priority)"
        )
        return TCAttachment(
            interface: interface, direction: direction, handle: handle, priority: priority,
            programID: programID, createdQdisc: created)
    }

    /// Detaches the filter (`bpf_tc_detach`); removes the clsact qdisc too if
    /// this attachment created it and no other filter is left on it.
    public func detach(removingQdiscIfCreated: Bool = true) throws {
        guard isAttached else { return }
        try TCAttachment.detach(
            TCFilter(handle: handle, priority: priority, kind: "bpf", programID: programID, name: ""),
            from: interface, direction: direction)
        isAttached = false
        if removingQdiscIfCreated && createdQdisc {
            try TCAttachment.removeQdiscIfEmpty(on: interface)
        }
    }

    /// Detaches a filter found by ``filters(on:direction:)``.
    public static func detach(_ filter: TCFilter, from interface: NetworkInterface, direction: TCDirection = .egress)
        throws
    {
        let (result, messages) = LibraryLog.capture {
            cxlbmc_tc_detach(interface.index, direction.attachPoint, filter.handle, filter.priority)
        }
        if result != 0 && result != -ENOENT {
            throw BPFError.system(
                "detach TC filter handle \(filter.handle) priority \(filter.priority) from \(interface.name) \(direction)",
                errno: result, detail: messages.last, libraryMessages: messages)
        }
    }

    /// The filters on a clsact hook; empty if there is no clsact qdisc.
    public static func filters(on interface: NetworkInterface, direction: TCDirection = .egress) throws -> [TCFilter] {
        var capacity = 16
        while true {
            var raw = [cxlbmc_tc_filter](repeating: cxlbmc_tc_filter(), count: capacity)
            let count = cxlbmc_tc_list(interface.index, direction.attachPoint, &raw, Int32(capacity))
            if count < 0 {
                throw BPFError.system("list TC filters on \(interface.name) \(direction)", errno: count)
            }
            if Int(count) <= capacity {
                return raw.prefix(Int(count)).map {
                    TCFilter(
                        handle: $0.handle, priority: $0.priority, kind: string(fromCCharTuple: $0.kind),
                        programID: $0.prog_id, name: string(fromCCharTuple: $0.name))
                }
            }
            capacity = Int(count)
        }
    }

    /// Removes the clsact qdisc if neither of its hooks has a filter left;
    /// true if it did.
    @discardableResult
    public static func removeQdiscIfEmpty(on interface: NetworkInterface) throws -> Bool {
        guard try filters(on: interface, direction: .ingress).isEmpty,
            try filters(on: interface, direction: .egress).isEmpty
        else { return false }
        let result = cxlbmc_tc_hook_destroy(interface.index)
        if result != 0 && result != -ENOENT && result != -EINVAL {
            throw BPFError.system("remove clsact qdisc from \(interface.name)", errno: result)
        }
        return result == 0
    }
}
