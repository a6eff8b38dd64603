import Foundation
import Testing
@testable import CXLTier

/// Huge pages reserved and a hugetlbfs mounted in a temporary directory for one test; the mount
/// is removed and `/proc/sys/vm/nr_hugepages` restored to its previous value when it goes away.
final class HugeTLBMount {
    static let nrHugepages = "/proc/sys/vm/nr_hugepages"
    /// Root is needed to reserve pages and mount; CI runs as root and must not skip.
    static var available: Bool { getuid() == 0 || ProcessInfo.processInfo.environment["CI"] == "true" }

    let dir: String
    let previous: Int
    private var mounted = false

    /// Free 2 MiB pages in the system (HugePages_Free of /proc/meminfo).
    static func freePages() -> Int {
        let text = (try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8)) ?? ""
        for line in text.split(separator: "\n") where line.hasPrefix("HugePages_Free:") {
            return Int(line.split(separator: " ").last ?? "") ?? 0
        }
        return 0
    }

    static func readPages() throws -> Int {
        guard let s = try? String(contentsOfFile: nrHugepages, encoding: .utf8),
              let n = Int(s.trimmingCharacters(in: .whitespacesAndNewlines)) else { throw TestFailure("cannot read \(nrHugepages)") }
        return n
    }

    static func writePages(_ n: Int) -> Bool {
        let fd = open(nrHugepages, O_WRONLY | O_TRUNC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let s = Array("\(n)\n".utf8)
        return s.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == s.count
    }

    /// Reserves `pages` more huge pages than are free now and mounts a hugetlbfs of 2 MiB pages.
    init(pages: Int) throws {
        previous = try Self.readPages()
        dir = NSTemporaryDirectory() + "cxl-tier-hugetlbfs-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        guard Self.writePages(previous + pages) else {
            throw TestFailure("cannot write \(Self.nrHugepages) (errno \(errno)); root is needed")
        }
        do {
            guard Self.freePages() >= pages else {
                throw TestFailure("asked for \(pages) more huge pages, only \(Self.freePages()) are free (memory too fragmented?)")
            }
            guard mkdir(dir, 0o700) == 0 else { throw TestFailure("mkdir \(dir): errno \(errno)") }
            guard mount("none", dir, "hugetlbfs", 0, "pagesize=2M,mode=0700") == 0 else {
                let e = errno
                rmdir(dir)
                throw TestFailure("mount -t hugetlbfs \(dir): errno \(e)")
            }
            mounted = true
        } catch {
            _ = Self.writePages(previous)
            throw error
        }
    }

    deinit {
        if mounted { umount2(dir, Int32(MNT_DETACH)) }
        rmdir(dir)
        _ = Self.writePages(previous)
    }
}

@Suite("HugePages", .serialized, .enabled(if: HugeTLBMount.available, "needs root (reserves huge pages, mounts hugetlbfs); CI=true never skips"))
struct HugePageTests {
    @Test("a pool on hugetlbfs: size rounded up to 2 MiB, 2 MiB-aligned mapping, backed by huge pages, reopened")
    func poolOnHugetlbfs() throws {
        let mount = try HugeTLBMount(pages: 8)
        let path = mount.dir + "/pool"
        defer { unlink(path) }
        let freeBefore = HugeTLBMount.freePages()
        // Not a multiple of 2 MiB: ftruncate would refuse it, so the region rounds up.
        let pool = try Pool.create(path: path, size: (5 << 20) + 12_288)
        let region = try #require(pool.region as? ShmRegion)
        #expect(region.isHugetlbfs)
        #expect(region.pageSize == 2 << 20)
        #expect(region.size == 6 << 20)
        #expect(Int(bitPattern: region.base) % (2 << 20) == 0, "hugetlbfs mappings are huge-page aligned")
        #expect(region.description.hasPrefix("hugetlbfs (2048 KiB pages)"))
        var st = stat()
        #expect(stat(path, &st) == 0 && st.st_size == 6 << 20)

        let writer = try pool.writer(partition: 0)
        for i in 0..<5000 { _ = try writer.put(bytes("key\(i)"), bytes("value-\(i)-" + String(repeating: "x", count: i % 300))) }
        for i in stride(from: 0, to: 5000, by: 7) {
            #expect(writer.get(bytes("key\(i)"))?.value == bytes("value-\(i)-" + String(repeating: "x", count: i % 300)))
        }
        // Every byte read once: the whole pool is on huge pages now, 3 of them.
        #expect(PoolCheck.check(pool.region).isClean)
        #expect(freeBefore - HugeTLBMount.freePages() == 3, "the pool must be backed by 3 huge pages (free before \(freeBefore), now \(HugeTLBMount.freePages()))")
        writer.close()

        let reopened = try Pool(path: path)
        let r2 = try #require(reopened.region as? ShmRegion)
        #expect(r2.isHugetlbfs && r2.size == 6 << 20)
        let reader = try reopened.reader(partition: 0)
        #expect(reader.get(bytes("key4999"))?.value == bytes("value-4999-" + String(repeating: "x", count: 4999 % 300)))
        let w2 = try reopened.writer(partition: 0)
        #expect(w2.lastRecovery.records > 0)
        #expect(w2.get(bytes("key42"))?.value == bytes("value-42-" + String(repeating: "x", count: 42)))
        w2.close()
    }

    @Test("cxl-bmc pool create on hugetlbfs rounds the size up and says so; inspect and check read the pool")
    func cliOnHugetlbfs() throws {
        let mount = try HugeTLBMount(pages: 4)
        let path = mount.dir + "/pool"
        defer { unlink(path) }
        let cli = try Products.path("cxl-bmc")
        let create = try Child(cli, ["pool", "create", path, "--size", "3M"])
        #expect(try create.wait() == 0, "\(create.stderrText)")
        #expect(create.stdoutText.contains("created \(path): 4194304 bytes (rounded up to the huge page size of its hugetlbfs)"), "\(create.stdoutText)")
        let inspect = try Child(cli, ["pool", "inspect", path])
        #expect(try inspect.wait() == 0, "\(inspect.stderrText)")
        #expect(inspect.stdoutText.contains("\(path): 4194304 bytes"), "\(inspect.stdoutText)")
        let check = try Child(cli, ["pool", "check", path])
        #expect(try check.wait() == 0, "\(check.stdoutText) \(check.stderrText)")
    }

    @Test("hugetlbfs without enough free huge pages: the create fails with ENOMEM and leaves no file")
    func notEnoughPages() throws {
        let mount = try HugeTLBMount(pages: 2)
        let path = mount.dir + "/too-big"
        let free = HugeTLBMount.freePages()
        #expect(throws: CXLTierError.self) { try Pool.create(path: path, size: (free + 1) * (2 << 20)) }
        #expect(access(path, F_OK) != 0, "a failed create removes its file")
        // What does fit still works.
        let pool = try Pool.create(path: path, size: 2 << 20)
        defer { unlink(path) }
        #expect(pool.region.size == 2 << 20)
    }

    @Test("a writer and a reader process on a hugetlbfs pool that wraps and reclaims: 0 wrong values")
    func processesOnHugetlbfs() throws {
        let tool = try Products.path("cxl-tier-tool")
        let mount = try HugeTLBMount(pages: 4)
        let path = mount.dir + "/pool"
        defer { unlink(path) }
        _ = try Pool.create(path: path, size: 4 << 20)
        let writer = try Child(tool, ["write", path, "--keys", "3000", "--seconds", "3", "--value-size", "600", "--delete-every", "17"])
        usleep(200_000)
        let reader = try Child(tool, ["read", path, "--keys", "3000", "--seconds", "2"])
        #expect(try reader.wait() == 0, "\(reader.stderrText)")
        let result = try reader.json()
        #expect(result["wrong"] == 0 && result["regressions"] == 0, "\(result)")
        #expect(result["hits"]! > 1000, "\(result)")
        #expect(try writer.wait() == 0, "\(writer.stderrText)")
        let pool = try Pool(path: path)
        #expect(try pool.stats(partition: 0).reclaimed > 0, "the run must exercise reclaim")
        #expect(PoolCheck.check(pool.region).isClean)
    }
}

@Suite("HugePageRounding")
struct HugePageRoundingTests {
    @Test("the size rounding hugetlbfs needs (ftruncate refuses other sizes)")
    func rounding() {
        #expect(ShmRegion.roundedSize(1, pageSize: 2 << 20) == 2 << 20)
        #expect(ShmRegion.roundedSize(2 << 20, pageSize: 2 << 20) == 2 << 20)
        #expect(ShmRegion.roundedSize((2 << 20) + 1, pageSize: 2 << 20) == 4 << 20)
    }
}
