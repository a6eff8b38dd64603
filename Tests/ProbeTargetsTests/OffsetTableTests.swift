import Foundation
import Testing
@testable import ProbeTargets

@Suite("OffsetTable")
struct OffsetTableTests {
    @Test("the shipped memcached table loads from the bundle")
    func shipped() throws {
        let tables = try OffsetTable.loadShipped()
        let table = try #require(tables.first { $0.name == "memcached-1.6.18-deb12u1.offsets" })
        #expect(table.buildID == debianMemcachedBuildID)
        #expect(table.entries.values.filter { !$0.isData }.count == 39)
        // The globals the probes read: link-time addresses, no prologue.
        #expect(table.entries["current_time"] == OffsetTable.Entry(
            function: "current_time", fileOffset: 0x3f820, size: 4, prologue: [], line: 45, isData: true))
        #expect(Set(table.entries.values.filter(\.isData).map(\.function)) == ["current_time", "process_started", "settings"])
        for function in memcachedFunctions { #expect(table.entries[function] != nil, "\(function)") }
        #expect(table.entries["do_store_item"] == OffsetTable.Entry(
            function: "do_store_item", fileOffset: 0xe400, size: 1601,
            prologue: [0x41, 0x57, 0x48, 0x8d, 0x47, 0x30, 0x49, 0x89, 0xd7, 0x45, 0x31, 0xc0], line: 10))
        // `size=12433` (no space) parses like `size=   15`.
        #expect(table.entries["process_command_ascii.part.0"]?.size == 12433)
        #expect(OffsetTable.shipped == tables)
    }

    @Test("parse errors carry the line number", arguments: [
        ("# build-id abcdef0123\nfoo 0x10 prologue=00\nbar 1234 prologue=00\n", 3, "offset `1234`"),
        ("# build-id abcdef0123\n\nfoo 0x10 size=x prologue=00\n", 3, "size `x`"),
        ("# build-id abcdef0123\nfoo 0x10 size=4 prologue=abc\n", 2, "even-length hex"),
        ("# build-id abcdef0123\nfoo 0x10 size=4\n", 2, "no prologue"),
        ("# build-id abcdef0123\nfoo 0x10 prologue=00\nfoo 0x20 prologue=00\n", 3, "already listed on line 2"),
        ("# build-id abcdef0123\nfoo 0x10 colour=red prologue=00\n", 2, "unknown key `colour`"),
        ("# build-id abcdef0123\nfoo\n", 2, "expected `name 0xOFFSET"),
        ("# build-id abcdef0123\n# build-id 0123456789\n", 2, "second build-id"),
        ("# a build-id zz\n", 1, "not followed by a hex build-id"),
        ("foo 0x10 prologue=00\n", 1, "no `# ... build-id <hex>` header"),
    ])
    func lineNumberedErrors(text: String, line: Int, fragment: String) {
        let error = expectProbeError { _ = try OffsetTable(name: "t.offsets", text: text) }
        guard case let .tableParse(table, errorLine, reason) = error else {
            Issue.record("expected tableParse, got \(String(describing: error))")
            return
        }
        #expect(table == "t.offsets")
        #expect(errorLine == line)
        #expect(reason.contains(fragment), "\(reason)")
        #expect(error?.description.hasPrefix("t.offsets:\(line): ") == true)
    }

    @Test("comments, blank lines, tabs and upper-case hex are accepted")
    func lenient() throws {
        let table = try OffsetTable(name: "t", text: "# x, build-id ABCDEF0123,\n\n\tfoo\t0X1f size= 3 prologue=C3\n"
                                        .replacingOccurrences(of: "0X1f", with: "0x1F"))
        #expect(table.buildID == "abcdef0123")
        #expect(table.entries["foo"] == OffsetTable.Entry(function: "foo", fileOffset: 0x1f, size: 3, prologue: [0xc3], line: 3))
    }
}
