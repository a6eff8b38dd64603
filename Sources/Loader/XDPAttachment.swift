import CLibBPF
import CLibXDP
import CLoaderShim
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// How an XDP program runs on an interface.
public enum XDPMode: String, Sendable, CustomStringConvertible {
    /// In the driver, before an skb exists (`XDP_MODE_NATIVE`).
    case native
    /// Generic XDP, after the skb is built; works everywhere, slower (`XDP_MODE_SKB`).
    case skb
    /// Offloaded to the NIC (`XDP_MODE_HW`); only reported, never requested.
    case hardware

    public var description: String { rawValue }

    var libxdp: xdp_attach_mode {
        switch self {
        case .native: XDP_MODE_NATIVE
        case .skb: XDP_MODE_SKB
        case .hardware: XDP_MODE_HW
        }
    }

    init?(libxdp mode: xdp_attach_mode) {
        switch mode {
        case XDP_MODE_NATIVE: self = .native
        case XDP_MODE_SKB: self = .skb
        case XDP_MODE_HW: self = .hardware
        default: return nil
        }
    }
}

/// The mode asked for: one mode, or native falling back to skb.
public enum XDPModeRequest: String, Sendable, CaseIterable {
    case auto, native, skb
}

/// What is attached to an interface's XDP hook.
public struct XDPStatus: Sendable {
    public struct Program: Sendable {
        public let id: UInt32
        public let name: String
        /// libxdp's run priority inside a dispatcher; nil when attached alone.
        public let priority: UInt32?
    }

    /// nil when nothing is attached.
    public let mode: XDPMode?
    /// The libxdp dispatcher's program id, when several programs can share the hook.
    public let dispatcherID: UInt32?
    /// The programs that run (the dispatcher's components, or the one program).
    public let programs: [Program]
}

/// An XDP program attached to an interface through libxdp.
///
/// libxdp puts the program behind its multi-program dispatcher when the kernel
/// allows, so other XDP programs can share the interface. Where the dispatcher
/// cannot load (kernel lockdown refuses its freplace programs), libxdp
/// attaches the program alone; ``usesDispatcher`` tells which happened.
///
/// The attachment lives in the kernel, not in this object: it stays after the
/// process exits until ``detach()`` (or `cxl-bmc detach`). Dropping the object
/// only frees libxdp's handle.
public final class XDPAttachment {
    public let interface: NetworkInterface
    /// The mode in use (after any fallback from native to skb).
    public let mode: XDPMode
    public let programID: UInt32
    public let usesDispatcher: Bool
    public private(set) var isAttached = true

    private let handle: OpaquePointer
    private let program: BPFProgram

    static let logger = Logger(label: "cxl-bmc.loader")

    private init(
        interface: NetworkInterface, mode: XDPMode, program: BPFProgram, handle: OpaquePointer,
        usesDispatcher: Bool
    ) {
        self.interface = interface
        self.mode = mode
        self.programID = program.id
        self.usesDispatcher = usesDispatcher
        self.handle = handle
        self.program = program
    }

    deinit {
        xdp_program__close(handle)
    }

    /// Attaches `program` (an XDP program) to `interface`
    /// (`xdp_program__attach`). With `.auto`, native mode is tried first and
    /// generic (skb) mode used, with a warning, if the driver refuses.
    public static func attach(
        _ program: BPFProgram, to interface: NetworkInterface, mode request: XDPModeRequest = .auto
    ) throws -> XDPAttachment {
        switch request {
        case .native: return try attach(program, to: interface, exactly: .native)
        case .skb: return try attach(program, to: interface, exactly: .skb)
        case .auto:
            do {
                return try attach(program, to: interface, exactly: .native)
            } catch let error as BPFError where error.errno == EOPNOTSUPP || error.errno == EINVAL {
                // Only a driver without native XDP is worth retrying in skb mode.
                logger.warning(
                    "native XDP on \(interface.name) failed (\(error.strerror)); falling back to skb (generic) mode")
                return try attach(program, to: interface, exactly: .skb)
            }
        }
    }

    private static func attach(_ program: BPFProgram, to interface: NetworkInterface, exactly mode: XDPMode) throws
        -> XDPAttachment
    {
        let handle = try open(program)
        let (result, messages) = LibraryLog.capture {
            xdp_program__attach(handle, interface.index, mode.libxdp, 0)
        }
        guard result == 0 else {
            xdp_program__close(handle)
            throw BPFError.system(
                "attach XDP program '\(program.name)' to \(interface.name) in \(mode) mode",
                errno: result, detail: messages.last, libraryMessages: messages)
        }
        let dispatcher = (try? status(of: interface))?.dispatcherID != nil
        logger.debug(
            "attached XDP program \(program.name) (id \(program.id)) to \(interface) in \(mode) mode\(dispatcher ? " behind libxdp's dispatcher" : "")"
        )
        return XDPAttachment(
            interface: interface, mode: mode, program: program, handle: handle, usesDispatcher: dispatcher)
    }

    /// Detaches the program (`xdp_program__detach`).
    public func detach() throws {
        guard isAttached else { return }
        let (result, messages) = LibraryLog.capture {
            xdp_program__detach(handle, interface.index, mode.libxdp, 0)
        }
        if result != 0 {
            throw BPFError.system(
                "detach XDP program '\(program.name)' from \(interface.name)", errno: result,
                detail: messages.last, libraryMessages: messages)
        }
        isAttached = false
    }

    /// Detaches the program with kernel id `programID` from `interface`,
    /// wherever it was attached from (another process, an earlier run).
    public static func detach(programID: UInt32, mode: XDPMode?, from interface: NetworkInterface) throws {
        LibraryLog.install()
        let handle = xdp_program__from_id(programID)
        let error = libxdp_get_error(UnsafeRawPointer(handle))
        guard error == 0, let handle else {
            throw BPFError.system("open XDP program id \(programID)", errno: Int32(error))
        }
        defer { xdp_program__close(handle) }
        let (result, messages) = LibraryLog.capture {
            xdp_program__detach(handle, interface.index, mode?.libxdp ?? XDP_MODE_UNSPEC, 0)
        }
        if result != 0 {
            throw BPFError.system(
                "detach XDP program id \(programID) from \(interface.name)", errno: result,
                detail: messages.last, libraryMessages: messages)
        }
    }

    /// What is attached to `interface`'s XDP hook: libxdp's view
    /// (`xdp_multiprog__get_from_ifindex`), or the kernel's (`bpf_xdp_query`)
    /// if libxdp cannot tell.
    public static func status(of interface: NetworkInterface) throws -> XDPStatus {
        LibraryLog.install()
        let (multiprog, _) = LibraryLog.capture { xdp_multiprog__get_from_ifindex(interface.index) }
        let error = libxdp_get_error(UnsafeRawPointer(multiprog))
        if error == 0, let multiprog {
            defer { xdp_multiprog__close(multiprog) }
            let mode = XDPMode(libxdp: xdp_multiprog__attach_mode(multiprog))
            if xdp_multiprog__is_legacy(multiprog) {
                guard let main = xdp_multiprog__main_prog(multiprog) else {
                    return XDPStatus(mode: nil, dispatcherID: nil, programs: [])
                }
                return XDPStatus(mode: mode, dispatcherID: nil, programs: [describe(main, priority: false)])
            }
            var programs: [XDPStatus.Program] = []
            var next = xdp_multiprog__next_prog(nil, multiprog)
            while let current = next {
                programs.append(describe(current, priority: true))
                next = xdp_multiprog__next_prog(current, multiprog)
            }
            let dispatcher = xdp_multiprog__main_prog(multiprog).map { xdp_program__id($0) }
            return XDPStatus(mode: mode, dispatcherID: dispatcher, programs: programs)
        }
        return try kernelStatus(of: interface)
    }

    private static func describe(_ program: OpaquePointer, priority: Bool) -> XDPStatus.Program {
        XDPStatus.Program(
            id: xdp_program__id(program),
            name: xdp_program__name(program).map { String(cString: $0) } ?? "?",
            priority: priority ? UInt32(xdp_program__run_prio(program)) : nil)
    }

    /// The ids of the XDP programs the kernel has attached to `interface`
    /// (`bpf_xdp_query`): exact and cheap, but behind libxdp's dispatcher it
    /// shows the dispatcher, not the programs it runs.
    public static func kernelProgramIDs(of interface: NetworkInterface) throws -> [UInt32] {
        try kernelStatus(of: interface).programs.map(\.id)
    }

    private static func kernelStatus(of interface: NetworkInterface) throws -> XDPStatus {
        var id: UInt32 = 0
        var attachMode: UInt8 = 0
        var drv: UInt32 = 0
        var skb: UInt32 = 0
        var hw: UInt32 = 0
        let result = cxlbmc_xdp_query(interface.index, &id, &attachMode, &drv, &skb, &hw)
        if result != 0 {
            throw BPFError.system("query XDP programs on \(interface.name)", errno: result)
        }
        var programs: [XDPStatus.Program] = []
        var mode: XDPMode?
        for (programID, programMode) in [(drv, XDPMode.native), (skb, .skb), (hw, .hardware)] where programID != 0 {
            let name = (try? BPFProgram.open(id: programID))?.name ?? "?"
            programs.append(XDPStatus.Program(id: programID, name: name, priority: nil))
            mode = mode ?? programMode
        }
        return XDPStatus(mode: mode, dispatcherID: nil, programs: programs)
    }

    private static func open(_ program: BPFProgram) throws -> OpaquePointer {
        let handle = xdp_program__from_fd(program.fd)
        let error = libxdp_get_error(UnsafeRawPointer(handle))
        guard error == 0, let handle else {
            throw BPFError.system("open XDP program '\(program.name)' with libxdp", errno: Int32(error))
        }
        return handle
    }
}
