import Foundation
import Testing
@testable import CXLTier

/// `cxl-bmc pool create | inspect | check [--repair]`, run as the user would.
@Suite("cxl-bmc pool", .serialized)
struct PoolCLITests {
    func run(_ arguments: [String]) throws -> (status: Int32, out: String, err: String) {
        let child = try Child(try Products.path("cxl-bmc"), arguments)
        let status = try child.wait()
        return (status, child.stdoutText, child.stderrText)
    }

    @Test("create with a nodes.conf, inspect, check clean; a flipped byte is reported with its offset; --repair fixes it")
    func createInspectCheckRepair() throws {
        let tmp = TempPool()
        let conf = NSTemporaryDirectory() + "cxl-tier-nodes-\(getpid())-\(UInt64.random(in: 0...UInt64.max)).conf"
        defer { unlink(conf) }
        try """
            local_node_id=0
            num_nodes=2
            node0=127.0.0.1:11211:0:4M
            node1=127.0.0.1:11212:0x400000:4M
            """.write(toFile: conf, atomically: true, encoding: .utf8)
        let created = try run(["pool", "create", tmp.path, "--size", "8M", "--config", conf])
        #expect(created.status == 0, "\(created.err)")
        #expect(created.out.contains("2 partition(s)"))
        var st = stat()
        #expect(stat(tmp.path, &st) == 0 && st.st_mode & 0o777 == 0o600)

        let pool = try tmp.open()
        let w = try pool.writer(partition: 1)
        for i in 0..<100 { _ = try w.put(bytes("key\(i)"), bytes("value\(i)")) }
        let gp = try #require(w.partitionReader.locate(bytes("key42")))
        w.close()

        let inspect = try run(["pool", "inspect", tmp.path])
        #expect(inspect.status == 0)
        #expect(inspect.out.contains("partition 1: node 1, offset 0x400000"))
        #expect(inspect.out.contains("items 100 live"))
        #expect(inspect.out.contains("second chances (CLOCK) 0"), "\(inspect.out)")
        #expect(inspect.out.contains("log walk: 100 live items"), "\(inspect.out)")
        #expect(inspect.out.contains("(as the writer counts)"), "\(inspect.out)")
        #expect(inspect.out.contains("checksum failures: 0"))
        #expect(try run(["pool", "check", tmp.path]).status == 0)

        let at = pool.partitions[1].offset + Int(gp.offset) + 18
        pool.region.base.storeBytes(of: pool.region.base.load(fromByteOffset: at, as: UInt8.self) ^ 0x40, toByteOffset: at, as: UInt8.self)
        let damaged = try run(["pool", "check", tmp.path])
        #expect(damaged.status == 2)
        #expect(damaged.out.contains("partition 1, offset 0x\(String(at - 18, radix: 16))"), "\(damaged.out)")
        #expect(try run(["pool", "inspect", tmp.path]).out.contains("checksum failures: 1 damaged run(s)"))
        let repaired = try run(["pool", "check", tmp.path, "--repair"])
        #expect(repaired.status == 3, "\(repaired.out) \(repaired.err)")
        #expect(repaired.out.contains("repaired (99 live items)"))
        #expect(try run(["pool", "check", tmp.path]).status == 0)
    }

    @Test("errors are one clear line: bad size, bad config line, existing file, not a pool")
    func errors() throws {
        let tmp = TempPool()
        let badSize = try run(["pool", "create", tmp.path, "--size", "12Q"])
        #expect(badSize.status != 0)
        #expect(badSize.err.contains("--size '12Q' is not a size"))
        let conf = NSTemporaryDirectory() + "cxl-tier-bad-\(getpid()).conf"
        defer { unlink(conf) }
        try "# nodes\nnode0=a:1:0:4M\nnode1=a:1:oops:4M\n".write(toFile: conf, atomically: true, encoding: .utf8)
        let badConf = try run(["pool", "create", tmp.path, "--size", "8M", "--config", conf])
        #expect(badConf.status != 0)
        #expect(badConf.err.contains("nodes.conf line 3: CXL_BASE 'oops' is not a number"), "\(badConf.err)")
        #expect(try run(["pool", "create", tmp.path, "--size", "1M"]).status == 0)
        let exists = try run(["pool", "create", tmp.path, "--size", "1M"])
        #expect(exists.status != 0 && exists.err.contains("File exists"))
        let notPool = NSTemporaryDirectory() + "cxl-tier-notpool-\(getpid())"
        defer { unlink(notPool) }
        try Data(count: 8192).write(to: URL(fileURLWithPath: notPool))
        let check = try run(["pool", "check", notPool])
        #expect(check.status == 2)
        #expect(check.out.contains("no pool header at offset 0"))
        let help = try run(["pool", "--help"])
        #expect(help.out.contains("create") && help.out.contains("inspect") && help.out.contains("check"))
    }
}
