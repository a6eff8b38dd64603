import Foundation
@testable import NetnsTestSupport
import Testing

/// What a user sees when cxl-bmc cannot work: one clear line on stderr and a non-zero exit,
/// never a crash trace. Needs root (to become someone else); failed, not skipped, in CI.
@Suite(.serialized, .enabled(if: Privilege.shouldRun, "needs root to drop privileges"))
struct CLIErrorTests {
    static func expectOneClearLine(_ r: ProcessResult, mentioning text: String) {
        let lines = r.stderr.split(separator: "\n")
        #expect(r.status != 0, "\(r)")
        #expect(r.stderr.contains(text), "\(r)")
        #expect(!r.stderr.contains("Fatal error") && !r.stderr.contains("Stack dump"), "\(r)")
        #expect(lines.count <= 2, "\(r)")
    }

    @Test func withoutRootEveryCommandSaysSo() throws {
        try Privilege.require()
        let cxlbmc = try Paths.product("cxl-bmc")
        for args in [["attach", "lo"], ["detach", "lo"], ["status"], ["stats"], ["events", "--memcached", "/usr/bin/memcached"]] {
            let r = try runProcess("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", cxlbmc] + args)
            Self.expectOneClearLine(r, mentioning: "needs root")
        }
    }

    @Test func withoutBPFFilesystemAttachSaysSo() throws {
        try Privilege.require()
        let cxlbmc = try Paths.product("cxl-bmc")
        // A private mount namespace without /sys/fs/bpf, and no CAP_SYS_ADMIN to mount one.
        let script = """
            umount /sys/fs/bpf 2>/dev/null; umount /sys/fs/bpf 2>/dev/null
            exec setpriv --bounding-set=-sys_admin --inh-caps=-sys_admin "$0" attach lo
            """
        let r = try runProcess("/usr/bin/unshare", ["--mount", "--propagation", "private", "/bin/sh", "-c", script, cxlbmc])
        Self.expectOneClearLine(r, mentioning: "BPF filesystem")
    }

    /// A stripped binary with no symbols, debug file or table: the build-id and the fix are named.
    @Test func strippedBinaryWithoutTableNamesBuildIDAndFix() throws {
        try Privilege.require()
        let r = try runProcess(try Paths.product("cxl-bmc"), ["events", "--memcached", "/bin/true"])
        Self.expectOneClearLine(r, mentioning: "build-id")
        #expect(r.stderr.contains("dbgsym") && r.stderr.contains("offset table"), "\(r)")
    }

    @Test func eventsForAMissingProcessSaysSo() throws {
        try Privilege.require()
        let r = try runProcess(try Paths.product("cxl-bmc"), ["events", "--pid", "999999"])
        Self.expectOneClearLine(r, mentioning: "no process 999999")
        let both = try runProcess(try Paths.product("cxl-bmc"), ["events", "--pid", "1", "--memcached", "/usr/bin/memcached"])
        #expect(both.status != 0 && both.stderr.contains("not both"), "\(both)")
    }

    /// --config problems: a bad line is named with its number; a pool that has no partition for
    /// this node is refused in one line, and nothing is left attached to the interface.
    @Test func clusterConfigErrorsAreClearAndLeaveNothingAttached() throws {
        try Privilege.require()
        let cxlbmc = try Paths.product("cxl-bmc")
        let directory = NSTemporaryDirectory() + "cxl-bmc-cli-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let pool = "\(directory)/plain.pool"
        #expect(try runProcess(cxlbmc, ["pool", "create", pool, "--size", "16M"]).status == 0)
        let bad = "\(directory)/bad.conf"
        FileManager.default.createFile(atPath: bad, contents: Data("local_node_id=0\nnum_nodes=1\nnode0=10.0.0.1:oops:0:0x1000000\n".utf8))
        try Testbed.with { tb in
            let attach = ["/usr/bin/nsenter", "--net=/run/netns/\(tb.serverNS)", cxlbmc, "attach", tb.serverIF,
                          "--memcached", "/usr/bin/memcached", "--pool", pool, "--config"]
            let r = try runProcess(attach[0], Array(attach.dropFirst()) + [bad])
            Self.expectOneClearLine(r, mentioning: "bad.conf:3")
            // Node 1's partition is not in a pool made without the config.
            let other = "\(directory)/node1.conf"
            FileManager.default.createFile(atPath: other, contents: Data(
                "local_node_id=1\nnum_nodes=2\nnode0=127.0.0.1:1:0:0x800000\nnode1=127.0.0.1:2:0x800000:0x800000\n".utf8))
            let missing = try runProcess(attach[0], Array(attach.dropFirst()) + [other])
            #expect(missing.status != 0 && missing.stderr.contains("no partition owned by node 1"), "\(missing)")
            #expect(!missing.stderr.contains("Fatal error"), "\(missing)")
            #expect(try !L1EndToEndTests.xdpAttached(tb), "XDP left behind a failed start")
            #expect(!FileManager.default.fileExists(atPath: "/sys/fs/bpf/cxl-bmc/\(tb.serverIF)"), "pins left behind a failed start")
        }
    }

    /// The index buckets `pool inspect` shows for partition 0.
    static func buckets(_ pool: String) throws -> Int? {
        let r = try runProcess(try Paths.product("cxl-bmc"), ["pool", "inspect", pool])
        guard r.status == 0, let words = r.stdout.split(separator: "\n").first(where: { $0.contains("partition 0:") })?
            .split(separator: " "), let at = words.firstIndex(of: "buckets,") else { return nil }
        return Int(words[at - 1])
    }

    /// `pool create -t N` lays out at least N index buckets, within 1 % (the division rounds), and
    /// a different N a different index; bad values are one clear line and create no file.
    @Test func hashTableSetsThePoolIndexSize() throws {
        try Privilege.require()
        let cxlbmc = try Paths.product("cxl-bmc")
        let base = "/dev/shm/cxl-bmc-cli-t-\(getpid())"
        defer { for suffix in ["a", "b", "c", "bad"] { unlink(base + suffix) } }
        #expect(try runProcess(cxlbmc, ["pool", "create", base + "a", "--size", "16M"]).status == 0)
        #expect(try runProcess(cxlbmc, ["pool", "create", base + "b", "--size", "16M", "-t", "4096"]).status == 0)
        #expect(try runProcess(cxlbmc, ["pool", "create", base + "c", "--size", "16M", "--hash-table", "20000"]).status == 0)
        let byDefault = try #require(try Self.buckets(base + "a")), small = try #require(try Self.buckets(base + "b"))
        let large = try #require(try Self.buckets(base + "c"))
        #expect(small >= 4096 && small <= 4096 + 41, "-t 4096 gave \(small)")
        #expect(large >= 20000 && large <= 20000 + 200, "-t 20000 gave \(large)")
        #expect(byDefault != small && byDefault != large, "default \(byDefault)")

        for (args, text) in [(["-t", "0"], "between 1 and"), (["--hash-table=-3"], "between 1 and"),
                             (["--size", "1M", "-t", "100000"], "holds at most 1806 index buckets"),
                             (["-t", "10", "--bytes-per-slot", "100"], "both set the index size")] {
            let size = args.contains("--size") ? [] : ["--size", "16M"]
            let r = try runProcess(cxlbmc, ["pool", "create", base + "bad"] + size + args)
            #expect(r.status != 0 && r.stderr.contains(text) && !r.stderr.contains("Fatal error"), "\(args): \(r)")
            #expect(!FileManager.default.fileExists(atPath: base + "bad"), "\(args) left a pool file")
        }
        let noL3 = try runProcess(cxlbmc, ["attach", "lo", "-t", "5"])
        #expect(noL3.status != 0 && noL3.stderr.contains("--hash-table sizes L3's index: add --no-cxl or --pool"), "\(noL3)")
    }

    /// attach --pool with a -t other than the pool's index is refused before anything is attached,
    /// with the pool's bucket count and the command that recreates it; the pool's own -t is taken.
    @Test func hashTableMismatchWithAPoolIsRefusedAndLeavesNothingAttached() throws {
        try Privilege.require()
        let cxlbmc = try Paths.product("cxl-bmc")
        let pool = "/dev/shm/cxl-bmc-cli-tm-\(getpid())"
        defer { unlink(pool) }
        #expect(try runProcess(cxlbmc, ["pool", "create", pool, "--size", "16M", "-t", "2048"]).status == 0)
        let buckets = try #require(try Self.buckets(pool))
        try Testbed.with { tb in
            let attach = ["--net=/run/netns/\(tb.serverNS)", cxlbmc, "attach", tb.serverIF, "--memcached", "/usr/bin/memcached",
                          "--pool", pool]
            let r = try runProcess("/usr/bin/nsenter", attach + ["-t", "8192"])
            Self.expectOneClearLine(r, mentioning: "pool \(pool) has \(buckets) index buckets in partition 0")
            #expect(r.stderr.contains("cxl-bmc pool create \(pool) --size 16777216 --hash-table 8192"), "\(r)")
            #expect(try !L1EndToEndTests.xdpAttached(tb), "XDP left behind a refused -t")
            #expect(!FileManager.default.fileExists(atPath: "/sys/fs/bpf/cxl-bmc/\(tb.serverIF)"), "pins left behind a refused -t")
            // An in-memory L3 larger than the machine is refused the same way.
            let huge = try runProcess("/usr/bin/nsenter", Array(attach.dropLast(2)) + ["--no-cxl", "-t", "4000000000"])
            Self.expectOneClearLine(huge, mentioning: "an in-memory L3 of 4000000000 index buckets needs 3840000008192 bytes")
            #expect(huge.stderr.contains("this machine has"), "\(huge)")
            #expect(try !L1EndToEndTests.xdpAttached(tb), "XDP left behind a refused --no-cxl -t")

            let log = OutputFile()
            let same = try ChildProcess("/usr/bin/nsenter", attach + ["-t", "2048"], stdout: log.path, stderr: log.path)
            defer { if !same.hasExited { same.signal(SIGKILL) } }
            let deadline = ContinuousClock.now + .seconds(20)
            while !log.contents().contains("L3: pool"), !same.hasExited, ContinuousClock.now < deadline { usleep(50_000) }
            #expect(log.contents().contains("L3: pool \(pool), partition 0 (\(buckets) index buckets)"), "\(log.contents())")
            same.signal(SIGTERM)
            #expect(same.wait(timeout: .seconds(20)) == 0, "\(log.contents())")
            #expect(try !L1EndToEndTests.xdpAttached(tb))
        }
    }

    @Test func unknownInterfaceIsNamed() throws {
        try Privilege.require()
        let r = try runProcess(try Paths.product("cxl-bmc"), ["attach", "nosuch0"])
        Self.expectOneClearLine(r, mentioning: "nosuch0")
    }
}
