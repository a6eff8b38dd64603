import Foundation
@testable import NetnsTestSupport
import Testing

/// The testable claims of docs/threat-model.md.
@Suite(.serialized, .enabled(if: Privilege.shouldRun, "needs root for BPF and network namespaces"))
struct ThreatModelTests {
    init() throws { try Privilege.require() }

    private static func mode(_ path: String) -> mode_t? {
        var st = stat()
        return lstat(path, &st) == 0 ? st.st_mode & 0o7777 : nil
    }

    @Test func poolFileIsCreatedOwnerOnly() throws {
        let pool = try PoolFile(size: "4M")
        #expect(Self.mode(pool.path) == 0o600)
        var st = stat()
        #expect(stat(pool.path, &st) == 0 && st.st_uid == getuid())
        // An existing file is never taken over (O_EXCL): no symlink or pre-created file games in /dev/shm.
        let again = try runProcess(try Paths.product("cxl-bmc"), ["pool", "create", pool.path, "--size", "4M"])
        #expect(again.status == 1 && again.stderr.contains("error:"), "\(again)")
        let link = "/dev/shm/cxl-bmc-fault-link-\(getpid())"
        #expect(symlink("/tmp/cxl-bmc-fault-target-\(getpid())", link) == 0)
        defer { unlink(link) }
        let viaLink = try runProcess(try Paths.product("cxl-bmc"), ["pool", "create", link, "--size", "4M"])
        #expect(viaLink.status == 1, "\(viaLink)")
        #expect(!FileManager.default.fileExists(atPath: "/tmp/cxl-bmc-fault-target-\(getpid())"), "followed a symlink")
    }

    @Test func pinsAndStatusFileAreRootOnly() throws {
        let root = "/tmp/cxl-bmc-fault-bpffs-\(getpid())-modes"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        #expect(try runProcess("/bin/mount", ["-t", "bpf", "bpf", root]).status == 0)
        defer {
            _ = try? runProcess("/bin/umount", ["-l", root])
            rmdir(root)
        }
        try Testbed.with { tb in
            try tb.startMemcached(["-t", "1"])
            let pinRoot = "\(root)/cxl-bmc"
            let daemon = try AttachDaemon(tb, ["--pin-root", pinRoot] + AttachDaemon.fullOptions(tb, pool: nil))
            let dir = "\(pinRoot)/\(tb.serverIF)"
            #expect(Self.mode(pinRoot) == 0o700)
            #expect(Self.mode(dir) == 0o700)
            let entries = try FileManager.default.contentsOfDirectory(atPath: dir)
            #expect(entries.count >= 3, "\(entries)")
            for entry in entries {
                let m = Self.mode("\(dir)/\(entry)")
                #expect(m == 0o600 || m == 0o700, "\(entry): \(String(m ?? 0, radix: 8))")
            }
            for _ in 0..<100 where !FileManager.default.fileExists(atPath: "/run/cxl-bmc/\(tb.serverIF).json") { usleep(100_000) }
            #expect(Self.mode("/run/cxl-bmc") == 0o700)
            #expect(Self.mode("/run/cxl-bmc/\(tb.serverIF).json") == 0o600)
            #expect(daemon.terminate() == 0)
        }
    }

    /// Without CAP_BPF/CAP_NET_ADMIN every BPF command stops at once with one clear line; nothing
    /// is loaded or attached. Run as `nobody` through setpriv.
    @Test(arguments: [["attach", "lo"], ["detach", "lo"], ["stats"], ["status"], ["events", "--memcached", "/usr/bin/memcached"]])
    func unprivilegedUserGetsAClearError(_ command: [String]) throws {
        let binary = try Paths.product("cxl-bmc")
        // nobody must be able to reach the binary; a build folder under /root may not be.
        let copy = "/tmp/cxl-bmc-fault-\(getpid())-nobody"
        if !FileManager.default.fileExists(atPath: copy) {
            try FileManager.default.copyItem(atPath: binary, toPath: copy)
            chmod(copy, 0o755)
        }
        let r = try runProcess("/usr/bin/setpriv",
                               ["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all", copy] + command,
                               timeout: .seconds(30))
        #expect(r.status == 1, "\(r)")
        let text = r.stderr
        #expect(text.contains("CAP_BPF") && text.contains("CAP_NET_ADMIN"), "names what is missing: \(r)")
        #expect(text.split(separator: "\n").count <= 3, "a short message, not a trace: \(r)")
        #expect(!text.contains("libbpf:"), "stopped before any BPF call: \(r)")
    }
}
