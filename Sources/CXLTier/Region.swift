import CCXLTierShim
import CDaxctl
import CNuma

#if canImport(Glibc)
import Glibc
#endif

/// A span of byte-addressable memory that holds a pool: emulated (a shared file), a devdax
/// device, a CPU-less NUMA node, or ordinary anonymous memory (`--no-cxl`).
///
/// The mapping stays valid for the region's lifetime and is unmapped in `deinit`.
public protocol Region: AnyObject, Sendable {
    /// Start of the mapping.
    var base: UnsafeMutableRawPointer { get }
    /// Bytes mapped.
    var size: Int { get }
    /// What backs the region, for `inspect` and logs ("shm /dev/shm/pool", "devdax /dev/dax0.0", …).
    var description: String { get }
    /// Whether other processes can map the same memory (readers in other processes need this).
    var isShared: Bool { get }
}

/// Maps `size` bytes of `fd` shared, read-write.
private func mapShared(fd: Int32, size: Int, what: String) throws -> UnsafeMutableRawPointer {
    let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
    guard let p, p != MAP_FAILED else { throw CXLTierError.errno("mmap", what) }
    return p
}

/// What file system holds a pool file: its magic and block size (statfs). On hugetlbfs the
/// block size is the huge page size every mapping and file size must be a multiple of.
struct PoolFileSystem {
    static let hugetlbfsMagic = 0x9584_58f6

    var isHugetlbfs: Bool
    /// The page size the file's memory comes in: the huge page on hugetlbfs, else the base page.
    var pageSize: Int

    init(fd: Int32, path: String) throws {
        var type: Int64 = 0, blockSize: Int64 = 0
        guard cxltier_fs_info(fd, &type, &blockSize) == 0 else { throw CXLTierError.errno("statfs", path) }
        isHugetlbfs = type == Int64(Self.hugetlbfsMagic)
        pageSize = isHugetlbfs ? Int(blockSize) : Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}

/// The emulated pool: a file in /dev/shm (tmpfs) or on hugetlbfs, mapped `MAP_SHARED` by any
/// number of processes. MAP_SYNC is refused on tmpfs, so it is plain MAP_SHARED.
///
/// On hugetlbfs (`/dev/hugepages`, or any `mount -t hugetlbfs`) the pool sits on 2 MiB (or
/// 1 GiB) pages: one TLB entry covers 512 times the memory of a 4 KiB page, so the random
/// loads of a get over a large pool miss the TLB far less often. hugetlbfs accepts only sizes
/// that are multiples of its page, so a pool created there is rounded **up** to one (`size`
/// is the rounded size; the pool header records it), and the kernel aligns the mapping to the
/// huge page. The pages must be reserved beforehand (`/proc/sys/vm/nr_hugepages`); without
/// enough of them the mapping fails with ENOMEM (reported as such, the file removed).
///
/// On tmpfs the mapping is advised `MADV_HUGEPAGE`: the kernel backs it with transparent huge
/// pages when `/sys/kernel/mm/transparent_hugepage/shmem_enabled` is `advise` (or `always`,
/// `within_size`), and ignores the advice when it is `never`. Nothing here changes that setting.
public final class ShmRegion: Region, @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let size: Int
    public let path: String
    /// Whether the file is on hugetlbfs.
    public let isHugetlbfs: Bool
    /// The page size backing the file: the huge page size on hugetlbfs, else 4096.
    public let pageSize: Int
    public var description: String { isHugetlbfs ? "hugetlbfs (\(pageSize >> 10) KiB pages) \(path)" : "shm \(path)" }
    public var isShared: Bool { true }

    /// The size a pool of `size` bytes gets in a file system with pages of `pageSize`.
    public static func roundedSize(_ size: Int, pageSize: Int) -> Int {
        (size + pageSize - 1) / pageSize * pageSize
    }

    /// Creates the file (mode 0600; it must not exist) with `size` bytes — rounded up to a
    /// multiple of the huge page on hugetlbfs — zero-filled, and maps it.
    public init(creating path: String, size: Int) throws {
        guard size > 0 else { throw CXLTierError.geometry("size must be positive") }
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw CXLTierError.errno("create", path) }
        defer { close(fd) }
        let mapped: Int
        do {
            let fs = try PoolFileSystem(fd: fd, path: path)
            mapped = fs.isHugetlbfs ? Self.roundedSize(size, pageSize: fs.pageSize) : size
            guard ftruncate(fd, off_t(mapped)) == 0 else { throw CXLTierError.errno("ftruncate", path) }
            self.base = try mapShared(fd: fd, size: mapped, what: path)
            self.isHugetlbfs = fs.isHugetlbfs
            self.pageSize = fs.pageSize
        } catch {
            unlink(path)
            throw error
        }
        self.size = mapped
        self.path = path
        adviseHugePages()
    }

    /// Maps an existing pool file, all of it.
    public init(opening path: String) throws {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw CXLTierError.errno("open", path) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw CXLTierError.errno("stat", path) }
        guard st.st_size > 0 else { throw CXLTierError.geometry("\(path) is empty") }
        let fs = try PoolFileSystem(fd: fd, path: path)
        self.size = Int(st.st_size)
        self.base = try mapShared(fd: fd, size: size, what: path)
        self.path = path
        self.isHugetlbfs = fs.isHugetlbfs
        self.pageSize = fs.pageSize
        adviseHugePages()
    }

    /// MADV_HUGEPAGE on tmpfs (a hint the kernel may refuse; hugetlbfs needs none).
    private func adviseHugePages() {
        if !isHugetlbfs { _ = madvise(base, size, 14 /* MADV_HUGEPAGE */) }
    }

    deinit { munmap(base, size) }
}

/// Ordinary anonymous memory (`--no-cxl`): shared with children forked after creation only.
public final class AnonymousRegion: Region, @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let size: Int
    public var description: String { "anonymous memory (no CXL)" }
    public var isShared: Bool { false }

    public init(size: Int) throws {
        guard size > 0 else { throw CXLTierError.geometry("size must be positive") }
        let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        guard let p, p != MAP_FAILED else { throw CXLTierError.errno("mmap", "anonymous \(size) bytes") }
        self.base = p
        self.size = size
    }

    deinit { munmap(base, size) }
}

/// A devdax character device (`/dev/daxX.Y`), found with libdaxctl, mapped shared; its size
/// and mapping are multiples of the device alignment (2 MiB).
public final class DevDaxRegion: Region, @unchecked Sendable {
    /// The devdax mapping alignment.
    public static let alignment = 2 << 20

    public let base: UnsafeMutableRawPointer
    public let size: Int
    public let path: String
    public var description: String { "devdax \(path)" }
    public var isShared: Bool { true }

    /// A devdax device libdaxctl reports.
    public struct Device: Sendable, Equatable {
        public var path: String
        public var size: Int
        public var alignment: Int
        public var enabled: Bool
    }

    /// Every devdax device libdaxctl finds (none on machines without one).
    public static func devices() throws -> [Device] {
        var ctx: OpaquePointer?
        let rc = daxctl_new(&ctx)
        guard rc == 0, let ctx else { throw CXLTierError.system(operation: "daxctl_new", target: "libdaxctl", errno: -rc) }
        defer { daxctl_unref(ctx) }
        var found: [Device] = []
        var region = daxctl_region_get_first(ctx)
        while let r = region {
            var dev = daxctl_dev_get_first(r)
            while let d = dev {
                if let name = daxctl_dev_get_devname(d) {
                    found.append(Device(
                        path: "/dev/" + String(cString: name), size: Int(daxctl_dev_get_size(d)),
                        alignment: Int(daxctl_region_get_align(r)), enabled: daxctl_dev_is_enabled(d) != 0))
                }
                dev = daxctl_dev_get_next(d)
            }
            region = daxctl_region_get_next(r)
        }
        return found
    }

    /// Maps the devdax device at `path`, or the first enabled one libdaxctl finds when nil.
    public init(path: String? = nil) throws {
        let devices = try Self.devices()
        let device: Device
        if let path {
            guard let d = devices.first(where: { $0.path == path }) else {
                throw CXLTierError.noDevDax("\(path) is not among the \(devices.count) devdax device(s) libdaxctl reports")
            }
            device = d
        } else {
            guard let d = devices.first(where: { $0.enabled }) else {
                throw CXLTierError.noDevDax("libdaxctl reports \(devices.count) device(s), none enabled (is a region configured with `daxctl`/`ndctl create-namespace -m devdax`?)")
            }
            device = d
        }
        let align = max(device.alignment, Self.alignment)
        let size = device.size / align * align
        guard size > 0 else { throw CXLTierError.geometry("\(device.path) is smaller than its \(align)-byte alignment") }
        let fd = open(device.path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw CXLTierError.errno("open", device.path) }
        defer { close(fd) }
        self.base = try mapShared(fd: fd, size: size, what: device.path)
        self.size = size
        self.path = device.path
    }

    deinit { munmap(base, size) }
}

/// Memory of a CPU-less NUMA node (how CXL type-3 memory appears when onlined as system RAM),
/// bound with libnuma before the first touch. Single host; shared with forked children only.
public final class NumaRegion: Region, @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let size: Int
    public let node: Int
    public var description: String { "NUMA node \(node)" }
    public var isShared: Bool { false }

    /// Checks that `node` exists, has memory and no CPUs; the reason it cannot be used otherwise.
    public static func validate(node: Int) throws {
        guard numa_available() >= 0 else { throw CXLTierError.numa("NUMA is not available on this machine (numa_available() < 0)") }
        let maxNode = Int(numa_max_node())
        guard node >= 0, node <= maxNode, numa_node_size64(Int32(node), nil) >= 0 else {
            throw CXLTierError.numa("NUMA node \(node) does not exist (nodes 0...\(maxNode))")
        }
        guard let cpus = numa_allocate_cpumask() else { throw CXLTierError.numa("numa_allocate_cpumask failed") }
        defer { numa_bitmask_free(cpus) }
        guard numa_node_to_cpus(Int32(node), cpus) == 0 else { throw CXLTierError.errno("numa_node_to_cpus", "node \(node)") }
        let count = numa_bitmask_weight(cpus)
        guard count == 0 else {
            throw CXLTierError.numa("NUMA node \(node) has CPUs (\(count)); CXL memory appears as a CPU-less node")
        }
    }

    /// Maps `size` bytes and binds them to `node` before any page is touched.
    public init(node: Int, size: Int) throws {
        try Self.validate(node: node)
        guard size > 0 else { throw CXLTierError.geometry("size must be positive") }
        let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        guard let p, p != MAP_FAILED else { throw CXLTierError.errno("mmap", "NUMA node \(node)") }
        numa_tonode_memory(p, size, Int32(node))
        self.base = p
        self.size = size
        self.node = node
    }

    deinit { munmap(base, size) }
}
