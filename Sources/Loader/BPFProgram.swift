import CLibBPF
import CLoaderShim

#if canImport(Glibc)
import Glibc
#endif

/// A BPF program type (`enum bpf_prog_type`).
public struct BPFProgramType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let xdp = BPFProgramType(rawValue: BPF_PROG_TYPE_XDP.rawValue)
    public static let schedCls = BPFProgramType(rawValue: BPF_PROG_TYPE_SCHED_CLS.rawValue)
    public static let kprobe = BPFProgramType(rawValue: BPF_PROG_TYPE_KPROBE.rawValue)

    /// libbpf's name for the type ("xdp", "sched_cls", ...).
    public var description: String {
        libbpf_bpf_prog_type_str(bpf_prog_type(rawValue)).map { String(cString: $0) } ?? "type \(rawValue)"
    }
}

/// What one `BPF_PROG_TEST_RUN` returned.
public struct BPFTestRun: Sendable {
    /// The program's return value: an `XDP_*` action or a `TC_ACT_*` verdict.
    public var action: UInt32
    /// The packet as the program left it.
    public var packet: [UInt8]
    /// Average run time per repetition, in nanoseconds.
    public var durationNs: UInt32
}

/// A loaded BPF program: a loaded object's program, or one opened from a pin
/// or by id.
public final class BPFProgram {
    public let fd: Int32
    /// The C function name (the kernel keeps only its first 15 characters).
    public let name: String
    public let type: BPFProgramType
    /// The kernel's id of the program.
    public let id: UInt32

    private let owner: AnyObject?
    private let ownsFD: Bool

    init(fd: Int32, name: String?, owner: AnyObject?, ownsFD: Bool) throws {
        let info: ProgramInfo
        do {
            info = try ProgramInfo(fd: fd)
        } catch {
            if ownsFD { close(fd) }
            throw error
        }
        self.fd = fd
        self.name = name ?? info.name
        self.type = info.type
        self.id = info.id
        self.owner = owner
        self.ownsFD = ownsFD
    }

    deinit {
        if ownsFD { close(fd) }
    }

    /// Opens a pinned program (`bpf_obj_get`).
    public static func openPinned(_ path: String) throws -> BPFProgram {
        let fd = try BPFError.checkFD(bpf_obj_get(path), "open pinned program \(path)")
        return try BPFProgram(fd: fd, name: nil, owner: nil, ownsFD: true)
    }

    /// Opens a loaded program by its kernel id (`bpf_prog_get_fd_by_id`).
    public static func open(id: UInt32) throws -> BPFProgram {
        let fd = try BPFError.checkFD(bpf_prog_get_fd_by_id(id), "open program id \(id)")
        return try BPFProgram(fd: fd, name: nil, owner: nil, ownsFD: true)
    }

    /// The kernel ids of the maps the program uses.
    public func mapIDs() throws -> [UInt32] {
        try ProgramInfo(fd: fd, withMaps: true).mapIDs
    }

    /// Pins the program at `path` on a bpffs (`bpf_obj_pin`); the path must not exist.
    public func pin(_ path: String) throws {
        if bpf_obj_pin(fd, path) != 0 {
            throw BPFError.lastErrno("pin program '\(name)' at \(path)")
        }
    }

    /// Runs the program on `packet` in the kernel (`bpf_prog_test_run_opts`),
    /// `repeat` times. For XDP and TC (sched_cls) programs `packet` is an
    /// Ethernet frame; no context is passed. `outputCapacity` bounds the
    /// returned packet (a larger one fails with ENOSPC).
    public func testRun(packet: [UInt8], repeat count: UInt32 = 1, outputCapacity: Int = 4096) throws -> BPFTestRun {
        var output = [UInt8](repeating: 0, count: outputCapacity)
        var outputSize = UInt32(outputCapacity)
        var action: UInt32 = 0
        var duration: UInt32 = 0
        let result = packet.withUnsafeBytes { input in
            output.withUnsafeMutableBytes { out in
                cxlbmc_prog_test_run(
                    fd, input.baseAddress, UInt32(input.count), out.baseAddress, &outputSize,
                    Int32(clamping: count), &action, &duration)
            }
        }
        if result != 0 {
            throw BPFError.system(
                "test run program '\(name)' on a \(packet.count)-byte packet", errno: result,
                detail: result == -ENOSPC ? "the output packet is larger than \(outputCapacity) bytes" : nil)
        }
        return BPFTestRun(
            action: action, packet: Array(output.prefix(Int(outputSize))), durationNs: duration)
    }
}

/// `struct bpf_prog_info`, the parts the loader uses.
struct ProgramInfo {
    var id: UInt32 = 0
    var type = BPFProgramType(rawValue: 0)
    var name = ""
    var mapIDs: [UInt32] = []

    init(fd: Int32, withMaps: Bool = false) throws {
        var id: UInt32 = 0
        var type: UInt32 = 0
        var name = [CChar](repeating: 0, count: 16)
        var ids = [UInt32](repeating: 0, count: withMaps ? 64 : 0)
        var count = UInt32(ids.count)
        var result = ids.withUnsafeMutableBufferPointer { buffer in
            cxlbmc_prog_info(fd, &id, &type, &name, withMaps ? buffer.baseAddress : nil, &count)
        }
        if withMaps && Int(count) > ids.count {
            ids = [UInt32](repeating: 0, count: Int(count))
            result = ids.withUnsafeMutableBufferPointer { buffer in
                cxlbmc_prog_info(fd, &id, &type, &name, buffer.baseAddress, &count)
            }
        }
        if result != 0 {
            throw BPFError.system("read info of program fd \(fd)", errno: result)
        }
        self.id = id
        self.type = BPFProgramType(rawValue: type)
        self.name = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        self.mapIDs = withMaps ? Array(ids.prefix(Int(count))) : []
    }
}
