import CLibBPF

#if canImport(Glibc)
import Glibc
#endif

/// A BPF map type (`enum bpf_map_type`).
public struct BPFMapType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let hash = BPFMapType(rawValue: BPF_MAP_TYPE_HASH.rawValue)
    public static let array = BPFMapType(rawValue: BPF_MAP_TYPE_ARRAY.rawValue)
    public static let perCPUHash = BPFMapType(rawValue: BPF_MAP_TYPE_PERCPU_HASH.rawValue)
    public static let perCPUArray = BPFMapType(rawValue: BPF_MAP_TYPE_PERCPU_ARRAY.rawValue)
    public static let lruHash = BPFMapType(rawValue: BPF_MAP_TYPE_LRU_HASH.rawValue)
    public static let lruPerCPUHash = BPFMapType(rawValue: BPF_MAP_TYPE_LRU_PERCPU_HASH.rawValue)
    public static let ringBuffer = BPFMapType(rawValue: BPF_MAP_TYPE_RINGBUF.rawValue)

    /// Per-CPU maps hold one value per possible CPU.
    public var isPerCPU: Bool {
        [.perCPUHash, .perCPUArray, .lruPerCPUHash].contains(self)
            || rawValue == BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE.rawValue
    }

    /// libbpf's name for the type ("hash", "percpu_array", ...).
    public var description: String {
        libbpf_bpf_map_type_str(bpf_map_type(rawValue)).map { String(cString: $0) } ?? "type \(rawValue)"
    }
}

/// Flags of ``BPFMap/update(key:value:flags:)`` (`BPF_ANY`, `BPF_NOEXIST`, ...).
public struct BPFUpdateFlags: OptionSet, Sendable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// Create or replace (`BPF_ANY`).
    public static let any: BPFUpdateFlags = []
    /// Only create (`BPF_NOEXIST`).
    public static let noExist = BPFUpdateFlags(rawValue: UInt64(BPF_NOEXIST))
    /// Only replace (`BPF_EXIST`).
    public static let exist = BPFUpdateFlags(rawValue: UInt64(BPF_EXIST))
    /// Take the value's `bpf_spin_lock` while copying (`BPF_F_LOCK`).
    public static let lock = BPFUpdateFlags(rawValue: UInt64(BPF_F_LOCK))
}

/// A BPF map: a loaded object's map, or one opened from a pin.
///
/// Keys and values are bytes of exactly the map's key and value size, or ABI
/// structs through the generic helpers. A per-CPU map holds one value per
/// possible CPU: use ``lookupPerCPU(key:)``.
///
/// The corresponding C API is `bpf_map_lookup_elem` and friends in `bpf/bpf.h`.
public final class BPFMap {
    public let fd: Int32
    public let name: String
    public let type: BPFMapType
    public let keySize: Int
    public let valueSize: Int
    public let maxEntries: UInt32
    public let flags: UInt32
    /// The kernel's id of the map (stable while it exists, shown by bpftool).
    public let id: UInt32

    /// Keeps the owning object, and so `fd`, open.
    private let owner: AnyObject?
    private let ownsFD: Bool

    init(fd: Int32, name: String?, owner: AnyObject?, ownsFD: Bool) throws {
        var info = bpf_map_info()
        var length = UInt32(MemoryLayout<bpf_map_info>.size)
        if bpf_obj_get_info_by_fd(fd, &info, &length) != 0 {
            let code = errno
            if ownsFD { close(fd) }
            throw BPFError.system("read info of map \(name ?? "fd \(fd)")", errno: code)
        }
        self.fd = fd
        self.name = name ?? string(fromCCharTuple: info.name)
        self.type = BPFMapType(rawValue: info.type)
        self.keySize = Int(info.key_size)
        self.valueSize = Int(info.value_size)
        self.maxEntries = info.max_entries
        self.flags = info.map_flags
        self.id = info.id
        self.owner = owner
        self.ownsFD = ownsFD
    }

    deinit {
        if ownsFD { close(fd) }
    }

    /// Opens a pinned map (`bpf_obj_get`).
    public static func openPinned(_ path: String) throws -> BPFMap {
        let fd = try BPFError.checkFD(bpf_obj_get(path), "open pinned map \(path)")
        return try BPFMap(fd: fd, name: nil, owner: nil, ownsFD: true)
    }

    /// Pins the map at `path` on a bpffs (`bpf_obj_pin`); the path must not exist.
    public func pin(_ path: String) throws {
        if bpf_obj_pin(fd, path) != 0 {
            throw BPFError.lastErrno("pin map '\(name)' at \(path)")
        }
    }

    /// Bytes each CPU's value takes in a per-CPU lookup (value size rounded up to 8).
    public var perCPUValueStride: Int { (valueSize + 7) & ~7 }

    // MARK: Bytes

    /// The value at `key`, or nil if there is none (`bpf_map_lookup_elem`).
    public func lookup(key: [UInt8]) throws -> [UInt8]? {
        try checkKey(key.count, "look up")
        guard !type.isPerCPU else {
            throw BPFError(
                .sizeMismatch, operation: "look up in per-CPU map '\(name)'",
                detail: "use lookupPerCPU(key:)")
        }
        var value = [UInt8](repeating: 0, count: valueSize)
        let result = key.withUnsafeBytes { k in
            value.withUnsafeMutableBytes { v in bpf_map_lookup_elem(fd, k.baseAddress, v.baseAddress) }
        }
        return try found(result, "look up in map '\(name)'") ? value : nil
    }

    /// One value per possible CPU at `key`, or nil if there is none.
    public func lookupPerCPU(key: [UInt8]) throws -> [[UInt8]]? {
        try checkKey(key.count, "look up")
        let cpus = try BPFMap.possibleCPUs()
        let stride = type.isPerCPU ? perCPUValueStride : valueSize
        var values = [UInt8](repeating: 0, count: type.isPerCPU ? stride * cpus : valueSize)
        let result = key.withUnsafeBytes { k in
            values.withUnsafeMutableBytes { v in bpf_map_lookup_elem(fd, k.baseAddress, v.baseAddress) }
        }
        guard try found(result, "look up in map '\(name)'") else { return nil }
        guard type.isPerCPU else { return [values] }
        return (0..<cpus).map { cpu in Array(values[cpu * stride..<cpu * stride + valueSize]) }
    }

    /// Creates or replaces the value at `key` (`bpf_map_update_elem`).
    public func update(key: [UInt8], value: [UInt8], flags: BPFUpdateFlags = .any) throws {
        try checkKey(key.count, "update")
        guard !type.isPerCPU else {
            throw BPFError(
                .sizeMismatch, operation: "update per-CPU map '\(name)'",
                detail: "use updatePerCPU(key:values:)")
        }
        try checkValue(value.count)
        let result = key.withUnsafeBytes { k in
            value.withUnsafeBytes { v in bpf_map_update_elem(fd, k.baseAddress, v.baseAddress, flags.rawValue) }
        }
        if result != 0 {
            throw BPFError.system("update map '\(name)'", errno: result)
        }
    }

    /// Sets every CPU's value at `key` of a per-CPU map; `values` has one value
    /// per possible CPU.
    public func updatePerCPU(key: [UInt8], values: [[UInt8]], flags: BPFUpdateFlags = .any) throws {
        try checkKey(key.count, "update")
        let cpus = try BPFMap.possibleCPUs()
        guard values.count == cpus else {
            throw BPFError(
                .sizeMismatch, operation: "update per-CPU map '\(name)'",
                detail: "\(values.count) values for \(cpus) possible CPUs")
        }
        var buffer = [UInt8](repeating: 0, count: perCPUValueStride * cpus)
        for (cpu, value) in values.enumerated() {
            try checkValue(value.count)
            buffer.replaceSubrange(cpu * perCPUValueStride..<cpu * perCPUValueStride + valueSize, with: value)
        }
        let result = key.withUnsafeBytes { k in
            buffer.withUnsafeBytes { v in bpf_map_update_elem(fd, k.baseAddress, v.baseAddress, flags.rawValue) }
        }
        if result != 0 {
            throw BPFError.system("update map '\(name)'", errno: result)
        }
    }

    /// Deletes `key`; false if it was not there (`bpf_map_delete_elem`).
    /// Array maps cannot delete (EINVAL).
    @discardableResult
    public func delete(key: [UInt8]) throws -> Bool {
        try checkKey(key.count, "delete from")
        let result = key.withUnsafeBytes { k in bpf_map_delete_elem(fd, k.baseAddress) }
        return try found(result, "delete from map '\(name)'")
    }

    /// Calls `body` with every key, in the map's order (`bpf_map_get_next_key`).
    /// Deleting the current key inside `body` is fine.
    public func forEachKey(_ body: ([UInt8]) throws -> Void) throws {
        var current: [UInt8]? = nil
        var next = [UInt8](repeating: 0, count: keySize)
        while true {
            let result = next.withUnsafeMutableBytes { n in
                if let current {
                    return current.withUnsafeBytes { c in bpf_map_get_next_key(fd, c.baseAddress, n.baseAddress) }
                }
                return bpf_map_get_next_key(fd, nil, n.baseAddress)
            }
            guard try found(result, "iterate map '\(name)'") else { return }
            try body(next)
            current = next
        }
    }

    /// Every key of the map.
    public func keys() throws -> [[UInt8]] {
        var keys: [[UInt8]] = []
        try forEachKey { keys.append($0) }
        return keys
    }

    // MARK: ABI structs

    /// The value at `key` as the ABI struct `V` (e.g. `l1_config`), or nil.
    public func lookup<K, V>(_ key: K, as: V.Type) throws -> V? {
        try checkValueType(V.self)
        guard let bytes = try lookup(key: Self.bytes(of: key)) else { return nil }
        return Self.load(V.self, from: bytes)
    }

    /// Each possible CPU's value at `key` as `V`, or nil.
    public func lookupPerCPU<K, V>(_ key: K, as: V.Type) throws -> [V]? {
        try checkValueType(V.self)
        return try lookupPerCPU(key: Self.bytes(of: key))?.map { Self.load(V.self, from: $0) }
    }

    /// Creates or replaces the value at `key` with the ABI struct `value`.
    public func update<K, V>(_ key: K, _ value: V, flags: BPFUpdateFlags = .any) throws {
        try checkValueType(V.self)
        var bytes = Self.bytes(of: value)
        bytes += [UInt8](repeating: 0, count: max(0, valueSize - bytes.count))
        try update(key: Self.bytes(of: key), value: Array(bytes.prefix(valueSize)), flags: flags)
    }

    /// Deletes `key`; false if it was not there.
    @discardableResult
    public func delete<K>(_ key: K) throws -> Bool {
        try delete(key: Self.bytes(of: key))
    }

    /// Every key as `K`.
    public func keys<K>(as: K.Type) throws -> [K] {
        try keys().map { Self.load(K.self, from: $0) }
    }

    static func bytes<T>(of value: T) -> [UInt8] {
        withUnsafeBytes(of: value) { Array($0) }
    }

    static func load<T>(_ type: T.Type, from bytes: [UInt8]) -> T {
        // C's sizeof counts trailing padding that Swift's size does not.
        var padded = bytes
        if padded.count < MemoryLayout<T>.stride {
            padded += [UInt8](repeating: 0, count: MemoryLayout<T>.stride - padded.count)
        }
        return padded.withUnsafeBytes { $0.loadUnaligned(as: T.self) }
    }

    // MARK: Checks

    /// The number of possible CPUs (`libbpf_num_possible_cpus`).
    public static func possibleCPUs() throws -> Int {
        let cpus = libbpf_num_possible_cpus()
        guard cpus > 0 else {
            throw BPFError.system("count possible CPUs", errno: cpus)
        }
        return Int(cpus)
    }

    /// true for success, false for ENOENT, throws for anything else.
    private func found(_ result: Int32, _ operation: String) throws -> Bool {
        if result == 0 { return true }
        let code = result < 0 ? -result : errno
        if code == ENOENT { return false }
        throw BPFError.system(operation, errno: code)
    }

    private func checkKey(_ count: Int, _ verb: String) throws {
        guard count == keySize else {
            throw BPFError(
                .sizeMismatch, operation: "\(verb) map '\(name)'",
                detail: "key of \(count) bytes, the map's keys have \(keySize)")
        }
    }

    private func checkValue(_ count: Int) throws {
        guard count == valueSize else {
            throw BPFError(
                .sizeMismatch, operation: "write map '\(name)'",
                detail: "value of \(count) bytes, the map's values have \(valueSize)")
        }
    }

    private func checkValueType<V>(_: V.Type) throws {
        guard MemoryLayout<V>.size <= valueSize, valueSize <= MemoryLayout<V>.stride else {
            throw BPFError(
                .sizeMismatch, operation: "use map '\(name)' as \(V.self)",
                detail: "\(V.self) has \(MemoryLayout<V>.size) bytes, the map's values have \(valueSize)")
        }
    }
}
