import Foundation
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

    @Test func unknownInterfaceIsNamed() throws {
        try Privilege.require()
        let r = try runProcess(try Paths.product("cxl-bmc"), ["attach", "nosuch0"])
        Self.expectOneClearLine(r, mentioning: "nosuch0")
    }
}
