import CLoaderShim
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// The BPF filesystem, where maps and programs are pinned so they outlive the
/// process: `/sys/fs/bpf`, with cxl-bmc's pins under `/sys/fs/bpf/cxl-bmc/<iface>/`.
public enum BPFFS {
    /// Where the kernel's bpffs is normally mounted.
    public static let mountPoint = "/sys/fs/bpf"
    /// The default root of cxl-bmc's pin directories.
    public static let defaultPinRoot = "/sys/fs/bpf/cxl-bmc"
    /// `BPF_FS_MAGIC` from linux/magic.h.
    static let magic: UInt = 0xcafe_4a11

    static let logger = Logger(label: "cxl-bmc.loader")

    /// Whether `path` is on a bpffs.
    public static func isBPFFS(_ path: String) -> Bool {
        var fsMagic: UInt = 0
        return cxlbmc_fs_magic(path, &fsMagic) == 0 && fsMagic == magic
    }

    /// Makes sure ``mountPoint`` is a bpffs, mounting one if it is not
    /// (`mount -t bpf bpf /sys/fs/bpf -o mode=0700`).
    public static func ensureMounted() throws {
        if isBPFFS(mountPoint) { return }
        var info = stat()
        if stat(mountPoint, &info) != 0 {
            throw BPFError(
                .bpffsUnavailable, operation: "\(mountPoint) does not exist", errno: errno,
                detail: "mount a bpffs there: mount -t bpf bpf \(mountPoint)")
        }
        let result = cxlbmc_mount_bpffs(mountPoint)
        if result != 0 {
            let code = -result
            throw BPFError(
                code == EPERM && !Privileges.current.sufficient ? .notPrivileged : .bpffsUnavailable,
                operation: "\(mountPoint) is not a bpffs and mounting one failed", errno: code,
                detail: "mount it yourself: mount -t bpf bpf \(mountPoint)")
        }
        logger.info("mounted a bpffs at \(mountPoint)")
    }

    /// The pin directory of `interface` under `root`.
    public static func pinDirectory(for interface: String, root: String = defaultPinRoot) -> String {
        "\(root)/\(interface)"
    }

    /// Creates `path` and any missing parents with mode 0700. The path must be
    /// on a bpffs (pins can only live there).
    public static func createDirectory(_ path: String) throws {
        var prefix = ""
        for component in path.split(separator: "/") {
            prefix += "/\(component)"
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST {
                throw BPFError.lastErrno("create pin directory \(prefix)")
            }
        }
        guard isBPFFS(path) else {
            throw BPFError(
                .bpffsUnavailable, operation: "\(path) is not on a bpffs",
                detail: "pins need a BPF filesystem (mount -t bpf bpf \(mountPoint))")
        }
    }

    /// Whether anything exists at `path`.
    public static func exists(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0
    }

    /// Removes a pin (or any file); no error if it is already gone.
    public static func unpin(_ path: String) throws {
        if unlink(path) != 0 && errno != ENOENT {
            throw BPFError.lastErrno("remove pin \(path)")
        }
    }

    /// The names in directory `path` (without "." and ".."); empty if it is missing.
    public static func entries(of path: String) -> [(name: String, isDirectory: Bool)] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var result: [(String, Bool)] = []
        while let entry = readdir(dir) {
            let name = string(fromCCharTuple: entry.pointee.d_name)
            if name == "." || name == ".." { continue }
            result.append((name, entry.pointee.d_type == UInt8(DT_DIR)))
        }
        return result.sorted { $0.0 < $1.0 }
    }

    /// Removes `path` with every pin and directory in it. Unpinning drops the
    /// pin's reference only: a map or program still used stays alive.
    public static func removeDirectory(_ path: String) throws {
        for entry in entries(of: path) {
            let child = "\(path)/\(entry.name)"
            if entry.isDirectory {
                try removeDirectory(child)
            } else {
                try unpin(child)
            }
        }
        if rmdir(path) != 0 && errno != ENOENT {
            throw BPFError.lastErrno("remove pin directory \(path)")
        }
    }
}
