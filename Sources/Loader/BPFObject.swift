import BPFObjects
import CLibBPF
import CLoaderShim

#if canImport(Glibc)
import Glibc
#endif

/// A BPF ELF object opened with libbpf: its maps and programs, loaded into the
/// kernel by ``load()``. Closing it (when the last reference goes) closes
/// every map and program fd it holds; pins and attachments stay.
///
/// The corresponding C type is `struct bpf_object`.
public final class BPFObject {
    public struct Options: Sendable {
        /// libbpf's object name (defaults to "<address>-<size>" for bytes).
        public var name: String?
        /// Where maps declared `LIBBPF_PIN_BY_NAME` are pinned and reused from,
        /// as `<pinRoot>/<map name>`. nil: nothing is pinned, every map is
        /// private to this object (tests), whatever the ELF declares.
        public var pinRoot: String?
        /// Verifier log level for every load (0: a log only on failure). Logs
        /// of successful loads go to the trace log (CXL_BMC_DEBUG=2).
        public var kernelLogLevel: UInt32

        public init(name: String? = nil, pinRoot: String? = nil, kernelLogLevel: UInt32 = 0) {
            self.name = name
            self.pinRoot = pinRoot
            self.kernelLogLevel = kernelLogLevel
        }
    }

    let handle: OpaquePointer
    /// libbpf parses the ELF in place; keep the bytes for the object's lifetime.
    private let elf: UnsafeMutableRawBufferPointer
    public let name: String
    public let pinRoot: String?
    public private(set) var isLoaded = false

    /// Opens an object from ELF bytes (`bpf_object__open_mem`). Nothing is
    /// created in the kernel until ``load()``.
    public init(bytes: [UInt8], options: Options = Options()) throws {
        let displayName = options.name ?? "<\(bytes.count) bytes>"
        let elf = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 16)
        elf.copyBytes(from: bytes)
        let ((raw, code), messages) = LibraryLog.capture { () -> (OpaquePointer?, Int32) in
            let raw = withOptionalCString(options.name) { name in
                withOptionalCString(options.pinRoot) { pinRoot in
                    cxlbmc_object_open_mem(
                        elf.baseAddress, bytes.count, name, pinRoot, options.kernelLogLevel)
                }
            }
            return (raw, errno)
        }
        guard let raw else {
            elf.deallocate()
            throw BPFError.system(
                "open BPF object \(displayName)", errno: code, libraryMessages: messages)
        }
        self.handle = raw
        self.elf = elf
        self.name = options.name ?? String(cString: bpf_object__name(raw))
        self.pinRoot = options.pinRoot
        if options.pinRoot == nil {
            // Without a pin root libbpf would pin PIN_BY_NAME maps under
            // /sys/fs/bpf itself: clear every pin path to keep maps private.
            for map in rawMaps {
                bpf_map__set_pin_path(map, nil)
            }
        }
    }

    /// Opens one of the objects embedded at build time (see `EmbeddedBPF`).
    public convenience init(embedded objectName: String, pinRoot: String? = nil) throws {
        guard let bytes = EmbeddedBPF.object(named: objectName) else {
            throw BPFError(
                .notFound, operation: "open embedded BPF object '\(objectName)'",
                detail: "embedded objects: \(EmbeddedBPF.names.joined(separator: ", "))")
        }
        try self.init(bytes: bytes, options: Options(name: objectName, pinRoot: pinRoot))
    }

    deinit {
        bpf_object__close(handle)
        elf.deallocate()
    }

    var rawMaps: [OpaquePointer] {
        var maps: [OpaquePointer] = []
        var map = bpf_object__next_map(handle, nil)
        while let current = map {
            maps.append(current)
            map = bpf_object__next_map(handle, current)
        }
        return maps
    }

    var rawPrograms: [OpaquePointer] {
        var programs: [OpaquePointer] = []
        var program = bpf_object__next_program(handle, nil)
        while let current = program {
            programs.append(current)
            program = bpf_object__next_program(handle, current)
        }
        return programs
    }

    /// Names of the object's maps, including libbpf's internal ones (.rodata…).
    public var mapNames: [String] { rawMaps.map { String(cString: bpf_map__name($0)) } }

    /// Names of the object's programs (the C function names).
    public var programNames: [String] { rawPrograms.map { String(cString: bpf_program__name($0)) } }

    /// The pin path libbpf will use for `map` (nil if it is not pinned).
    public func pinPath(ofMap map: String) throws -> String? {
        let raw = try rawMap(map)
        return bpf_map__pin_path(raw).map { String(cString: $0) }
    }

    /// Sets a map's size before ``load()`` (`bpf_map__set_max_entries`).
    public func setMaxEntries(map: String, _ entries: UInt32) throws {
        let raw = try rawMap(map)
        let result = bpf_map__set_max_entries(raw, entries)
        if result != 0 {
            throw BPFError.system("set max entries of map '\(map)' to \(entries)", errno: result)
        }
    }

    /// Makes this object's maps use `other`'s maps of the same name
    /// (`bpf_map__reuse_fd`), so two objects share them without pins. Call it
    /// before ``load()``; `other` must be loaded. Returns the names shared.
    @discardableResult
    public func reuseMaps(from other: BPFObject) throws -> [String] {
        guard other.isLoaded else {
            throw BPFError(
                .system, operation: "reuse maps of '\(other.name)'", detail: "load it first")
        }
        var shared: [String] = []
        for raw in rawMaps {
            let name = String(cString: bpf_map__name(raw))
            // .rodata/.bss/.data are per object.
            guard !name.contains("."), let source = bpf_object__find_map_by_name(other.handle, name)
            else { continue }
            let result = bpf_map__reuse_fd(raw, bpf_map__fd(source))
            if result != 0 {
                throw BPFError.system(
                    "reuse map '\(name)' of '\(other.name)' in '\(self.name)'", errno: result)
            }
            shared.append(name)
        }
        return shared
    }

    /// Creates (or reuses pinned) maps and loads every program into the kernel
    /// (`bpf_object__load`). A program the verifier refuses throws
    /// ``BPFError/Kind/verifierRejected(program:)`` with the log.
    public func load() throws {
        let (result, messages) = LibraryLog.capture { bpf_object__load(handle) }
        guard result == 0 else {
            let operation = "load BPF object \(name)"
            if let (program, log) = LibraryLog.verifierLog(in: messages) {
                throw BPFError(
                    .verifierRejected(program: program), operation: operation, errno: abs(result),
                    verifierLog: log, libraryMessages: messages)
            }
            if let reuse = messages.last(where: { $0.contains("couldn't reuse pinned map") }) {
                throw BPFError(
                    .geometryMismatch, operation: operation, errno: abs(result),
                    detail: "a map pinned earlier has another size or layout (\(reuse))",
                    libraryMessages: messages)
            }
            throw BPFError.system(
                operation, errno: result, detail: messages.last, libraryMessages: messages)
        }
        isLoaded = true
    }

    /// A loaded program of this object, by its C function name.
    public func program(named name: String) throws -> BPFProgram {
        guard let raw = bpf_object__find_program_by_name(handle, name) else {
            throw BPFError(
                .notFound, operation: "find program '\(name)' in BPF object \(self.name)",
                detail: "programs: \(programNames.joined(separator: ", "))")
        }
        try requireLoaded("program '\(name)'")
        return try BPFProgram(
            fd: bpf_program__fd(raw), name: name, owner: self, ownsFD: false)
    }

    /// Attaches a loaded program as a uprobe (or uretprobe) at `fileOffset` of
    /// `binary`, in process `pid` (-1: every process running it, now and
    /// later). The returned link detaches when released.
    public func attachUprobe(
        program name: String, binary: String, fileOffset: UInt64, pid: Int32 = -1,
        returnProbe: Bool = false, cookie: UInt64 = 0
    ) throws -> BPFLink {
        guard let raw = bpf_object__find_program_by_name(handle, name) else {
            throw BPFError(.notFound, operation: "find program '\(name)' in BPF object \(self.name)")
        }
        try requireLoaded("program '\(name)'")
        let what = "attach \(returnProbe ? "uretprobe" : "uprobe") \(name) at \(binary)+0x\(String(fileOffset, radix: 16))"
            + (pid > 0 ? " (pid \(pid))" : "")
        let ((link, code), messages) = LibraryLog.capture { () -> (OpaquePointer?, Int32) in
            let link = cxlbmc_attach_uprobe(raw, pid, binary, Int(fileOffset), returnProbe ? 1 : 0, cookie)
            return (link, errno)
        }
        guard let link else {
            throw BPFError.system(what, errno: code, detail: messages.last, libraryMessages: messages)
        }
        return BPFLink(handle: link, owner: self, description: what)
    }

    /// A map of this object (created or reused by ``load()``), by name.
    public func map(named name: String) throws -> BPFMap {
        let raw = try rawMap(name)
        try requireLoaded("map '\(name)'")
        return try BPFMap(fd: bpf_map__fd(raw), name: name, owner: self, ownsFD: false)
    }

    private func rawMap(_ name: String) throws -> OpaquePointer {
        guard let raw = bpf_object__find_map_by_name(handle, name) else {
            throw BPFError(
                .notFound, operation: "find map '\(name)' in BPF object \(self.name)",
                detail: "maps: \(mapNames.joined(separator: ", "))")
        }
        return raw
    }

    private func requireLoaded(_ what: String) throws {
        guard isLoaded else {
            throw BPFError(
                .system, operation: "use \(what) of BPF object \(name)",
                detail: "the object is not loaded yet")
        }
    }
}

func withOptionalCString<R>(_ string: String?, _ body: (UnsafePointer<CChar>?) throws -> R) rethrows -> R {
    guard let string else { return try body(nil) }
    return try string.withCString { try body($0) }
}

/// A C `char[N]` tuple as a Swift string.
func string<T>(fromCCharTuple tuple: T) -> String {
    withUnsafeBytes(of: tuple) { raw in
        String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
    }
}

/// A map as an object declares it, before load (type, sizes, max entries).
public struct BPFMapDefinition: Sendable, Equatable {
    public let type: BPFMapType
    public let keySize: Int
    public let valueSize: Int
    public let maxEntries: UInt32
}

extension BPFObject {
    /// How the object declares `map` (with any ``setMaxEntries(map:_:)`` applied).
    public func definition(ofMap map: String) throws -> BPFMapDefinition {
        guard let raw = bpf_object__find_map_by_name(handle, map) else {
            throw BPFError(.notFound, operation: "find map '\(map)' in BPF object \(name)")
        }
        return BPFMapDefinition(
            type: BPFMapType(rawValue: bpf_map__type(raw).rawValue),
            keySize: Int(bpf_map__key_size(raw)),
            valueSize: Int(bpf_map__value_size(raw)),
            maxEntries: bpf_map__max_entries(raw))
    }
}

extension BPFMap {
    /// This map's type, sizes and max entries.
    public var definition: BPFMapDefinition {
        BPFMapDefinition(type: type, keySize: keySize, valueSize: valueSize, maxEntries: maxEntries)
    }
}

/// An attachment made through libbpf (`struct bpf_link`): detached and freed
/// when released or on ``detach()``.
public final class BPFLink {
    private var handle: OpaquePointer?
    /// Keeps the object (and its programs) alive while attached.
    private let owner: AnyObject
    public let description: String

    init(handle: OpaquePointer, owner: AnyObject, description: String) {
        self.handle = handle
        self.owner = owner
        self.description = description
    }

    public func detach() {
        if let handle { bpf_link__destroy(handle) }
        handle = nil
    }

    deinit { detach() }
}
