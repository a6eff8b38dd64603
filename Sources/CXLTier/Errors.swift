#if canImport(Glibc)
import Glibc
#endif

/// Everything CXLTier can refuse or fail at. Each case says what and where.
public enum CXLTierError: Error, Equatable, CustomStringConvertible {
    /// A system call failed: the operation, the path or object, and errno.
    case system(operation: String, target: String, errno: Int32)
    /// No devdax device was found (or the named one does not exist).
    case noDevDax(String)
    /// The NUMA node cannot hold the tier: it has CPUs, does not exist, or libnuma is unavailable.
    case numa(String)
    /// The region is too small or misaligned for the requested layout.
    case geometry(String)
    /// The pool was written by a newer format version than this build understands.
    case newerFormat(found: UInt32, supported: UInt32)
    /// The pool was written by an older format version whose layout this build no longer reads.
    case olderFormat(found: UInt32, supported: UInt32)
    /// The bytes found are not a CXLTier pool or partition (bad magic or checksum), with where.
    case corrupt(String)
    /// The partition already has a live writer (one writer per partition).
    case partitionOwned(partition: Int, pid: Int32)
    /// No such partition.
    case noSuchPartition(Int)
    /// Key or value outside what the format can hold.
    case invalidItem(String)
    /// A global pointer or pool-word access outside the partition or misaligned.
    case badPointer(String)
    /// nodes.conf could not be parsed; `line` is 1-based.
    case config(line: Int, message: String)

    public var description: String {
        switch self {
        case let .system(operation, target, errno):
            "\(operation) \(target): \(String(cString: strerror(errno))) (errno \(errno))"
        case let .noDevDax(message): "no devdax device found: \(message)"
        case let .numa(message): message
        case let .geometry(message): "pool geometry: \(message)"
        case let .newerFormat(found, supported):
            "pool format version \(found) is newer than this build supports (\(supported)); upgrade cxl-bmc to open it"
        case let .olderFormat(found, supported):
            "pool format version \(found) is older than this build's (\(supported)) and laid out differently; recreate the pool with `cxl-bmc pool create` (it is a cache: the daemon refills it)"
        case let .corrupt(message): "corrupt pool: \(message)"
        case let .partitionOwned(partition, pid):
            "partition \(partition) already has a writer (pid \(pid)); one writer per partition"
        case let .noSuchPartition(index): "no partition \(index) in this pool"
        case let .invalidItem(message): "invalid item: \(message)"
        case let .badPointer(message): "bad global pointer: \(message)"
        case let .config(line, message): "nodes.conf line \(line): \(message)"
        }
    }
}

extension CXLTierError {
    static func errno(_ operation: String, _ target: String) -> CXLTierError {
        .system(operation: operation, target: target, errno: Glibc.errno)
    }
}
