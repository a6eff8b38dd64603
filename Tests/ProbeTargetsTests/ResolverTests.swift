import Foundation
import Testing
@testable import ProbeTargets

@Suite("ProbeTargetResolver")
struct ResolverTests {
    @Test("stripped Debian memcached resolves through the shipped table, every prologue checked",
          .enabled(if: memcachedAvailable))
    func debianMemcachedViaTable() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeDirectory(dir) }
        let targets = try ProbeTargetResolver.resolve(binary: debianMemcachedPath, functions: memcachedFunctions,
                                                      debugRoot: dir)
        #expect(Set(targets.keys) == Set(memcachedFunctions))
        let table = try #require(OffsetTable.shipped.first { $0.buildID == debianMemcachedBuildID })
        let image = try ELFImage(contentsOf: debianMemcachedPath)
        for function in memcachedFunctions {
            let target = try #require(targets[function])
            let entry = try #require(table.entries[function])
            #expect(target.source == .offsetTable("memcached-1.6.18-deb12u1.offsets"))
            #expect(target.fileOffset == entry.fileOffset)
            #expect(try image.bytes(atFileOffset: target.fileOffset, count: entry.prologue.count) == entry.prologue)
        }
        #expect(targets["do_store_item"]?.fileOffset == 0xe400)
        #expect(targets["try_read_command_binary"]?.fileOffset == 0x26d00)
    }

    @Test("every entry of the shipped table matches the installed binary", .enabled(if: memcachedAvailable))
    func wholeShippedTable() throws {
        let table = try #require(OffsetTable.shipped.first { $0.buildID == debianMemcachedBuildID })
        let functions = table.entries.values.filter { !$0.isData }.map(\.function)
        let targets = try ProbeTargetResolver.resolve(binary: debianMemcachedPath, functions: functions,
                                                      debugRoot: "/nonexistent", tables: [table])
        #expect(targets.count == 39)
        for (name, target) in targets {
            #expect(target.address == target.fileOffset, "\(name): .text has offset == vaddr in this build")
            #expect(target.size == table.entries[name]?.size)
        }
        let data = try ProbeTargetResolver.resolveData(
            binary: debianMemcachedPath, names: ["current_time", "process_started", "settings", "nope"],
            debugRoot: "/nonexistent", tables: [table])
        #expect(data["current_time"]?.address == 0x3f820 && data["process_started"]?.address == 0x3f890)
        #expect(data["settings"]?.address == 0x3f8a0 && data["nope"] == nil)
    }

    @Test("one flipped prologue byte is refused with a message naming function, offset and bytes",
          .enabled(if: memcachedAvailable))
    func flippedPrologue() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeDirectory(dir) }
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: debianMemcachedPath)))
        bytes[0xe400 + 3] ^= 0xff
        let copy = dir + "/memcached"
        try Data(bytes).write(to: URL(fileURLWithPath: copy))
        let error = expectProbeError {
            _ = try ProbeTargetResolver.resolve(binary: copy, functions: memcachedFunctions, debugRoot: dir)
        }
        let expected: [UInt8] = [0x41, 0x57, 0x48, 0x8d, 0x47, 0x30, 0x49, 0x89, 0xd7, 0x45, 0x31, 0xc0]
        var found = expected
        found[3] ^= 0xff
        #expect(error == .prologueMismatch(function: "do_store_item", offset: 0xe400, expected: expected, found: found,
                                           table: "memcached-1.6.18-deb12u1.offsets"))
        let message = error?.description ?? ""
        #expect(message.contains("do_store_item"))
        #expect(message.contains("0xe400"))
        #expect(message.contains("expected prologue 4157488d47304989d74531c0"))
        #expect(message.contains("found 415748724730"))
    }

    @Test("a binary with symbols resolves from them, offsets as nm/readelf compute", .enabled(if: toolchainAvailable),
          arguments: [["-no-pie"], ["-pie", "-fpie"]])
    func ownSymbols(flags: [String]) throws {
        let dir = try makeTemporaryDirectory()
        defer { removeDirectory(dir) }
        let binary = try buildSample(in: dir, name: "sample", flags: flags)
        let expected = try expectedOffsets(of: binary, functions: sampleFunctions)
        let targets = try ProbeTargetResolver.resolve(binary: binary, functions: sampleFunctions, debugRoot: dir, tables: [])
        for function in sampleFunctions {
            #expect(targets[function]?.location == ProbeTarget(function: function, fileOffset: try #require(expected[function]),
                                                     source: .symbols).location)
        }
    }

    @Test("a stripped binary resolves through its debug file found by build-id", .enabled(if: toolchainAvailable))
    func debugFileByBuildID() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeDirectory(dir) }
        let full = try buildSample(in: dir, name: "sample", flags: ["-no-pie"])
        let expected = try expectedOffsets(of: full, functions: sampleFunctions)
        let stripped = dir + "/sample.stripped"
        try run("/usr/bin/strip", ["-o", stripped, full])
        #expect(try ELFImage(contentsOf: stripped).functionSymbols(in: .symtab).isEmpty)
        let id = try #require(try ELFImage(contentsOf: stripped).buildID())
        let root = dir + "/debug"
        let debugDir = "\(root)/.build-id/\(id.prefix(2))"
        try FileManager.default.createDirectory(atPath: debugDir, withIntermediateDirectories: true)
        let debugFile = "\(debugDir)/\(id.dropFirst(2)).debug"
        try run("/usr/bin/objcopy", ["--only-keep-debug", full, debugFile])

        let targets = try ProbeTargetResolver.resolve(binary: stripped, functions: sampleFunctions, debugRoot: root, tables: [])
        for function in sampleFunctions {
            #expect(targets[function]?.location == ProbeTarget(function: function, fileOffset: try #require(expected[function]),
                                                     source: .debugFile(debugFile)).location)
        }
    }

    @Test("a stripped binary resolves through .gnu_debuglink; a link with the wrong CRC is ignored",
          .enabled(if: toolchainAvailable))
    func debugFileByDebugLink() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeDirectory(dir) }
        let full = try buildSample(in: dir, name: "sample", flags: ["-pie", "-fpie"])
        let expected = try expectedOffsets(of: full, functions: sampleFunctions)
        let debugFile = dir + "/sample.debug"
        try run("/usr/bin/objcopy", ["--only-keep-debug", full, debugFile])
        let bin = dir + "/bin"
        try FileManager.default.createDirectory(atPath: bin + "/.debug", withIntermediateDirectories: true)
        let stripped = bin + "/sample"
        try run("/usr/bin/strip", ["-o", stripped, full])
        try run("/usr/bin/objcopy", ["--add-gnu-debuglink=\(debugFile)", stripped])
        try FileManager.default.moveItem(atPath: debugFile, toPath: bin + "/.debug/sample.debug")

        let targets = try ProbeTargetResolver.resolve(binary: stripped, functions: sampleFunctions,
                                                      debugRoot: dir + "/empty", tables: [])
        #expect(targets["item_touch"]?.location == ProbeTarget(function: "item_touch", fileOffset: try #require(expected["item_touch"]),
                                                     source: .debugFile(bin + "/.debug/sample.debug")).location)

        // Same name, other contents: the CRC no longer matches, so it must not be used.
        try FileManager.default.removeItem(atPath: bin + "/.debug/sample.debug")
        try FileManager.default.copyItem(atPath: full, toPath: bin + "/.debug/sample.debug")
        let error = expectProbeError {
            _ = try ProbeTargetResolver.resolve(binary: stripped, functions: sampleFunctions, debugRoot: dir + "/empty", tables: [])
        }
        #expect(error?.description.contains("CRC does not match") == true)
    }

    @Test("unknown build-id without symbols names the build-id, the missing functions and the fix",
          .enabled(if: toolchainAvailable))
    func unknownBuildID() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeDirectory(dir) }
        let full = try buildSample(in: dir, name: "sample", flags: [])
        let stripped = dir + "/sample.stripped"
        try run("/usr/bin/strip", ["-o", stripped, full])
        let id = try #require(try ELFImage(contentsOf: stripped).buildID())
        let error = expectProbeError {
            _ = try ProbeTargetResolver.resolve(binary: stripped, functions: ["item_touch", "do_store_item"],
                                                debugRoot: dir + "/none")
        }
        guard case let .functionsNotFound(binary, buildID, missing, _) = error else {
            Issue.record("expected functionsNotFound, got \(String(describing: error))")
            return
        }
        #expect(binary == stripped)
        #expect(buildID == id)
        #expect(missing == ["item_touch", "do_store_item"])
        let message = error?.description ?? ""
        #expect(message.contains(id))
        #expect(message.contains("item_touch, do_store_item"))
        #expect(message.contains("dbgsym"))
        #expect(message.contains("offset table"))
    }

    @Test("a table for another build-id is not used", .enabled(if: toolchainAvailable))
    func tableForOtherBuild() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeDirectory(dir) }
        let stripped = dir + "/sample.stripped"
        try run("/usr/bin/strip", ["-o", stripped, try buildSample(in: dir, name: "sample", flags: [])])
        let error = expectProbeError {
            _ = try ProbeTargetResolver.resolve(binary: stripped, functions: ["do_store_item"], debugRoot: dir,
                                                tables: OffsetTable.shipped)
        }
        #expect(error?.description.contains("no offset table for this build-id") == true)
    }

    @Test("a table offset outside executable code is refused", .enabled(if: memcachedAvailable))
    func offsetOutsideText() throws {
        let table = try OffsetTable(name: "bad.offsets", text: """
            # build-id \(debianMemcachedBuildID)
            do_store_item 0x100 size=10 prologue=00
            """)
        let error = expectProbeError {
            _ = try ProbeTargetResolver.resolve(binary: debianMemcachedPath, functions: ["do_store_item"],
                                                debugRoot: "/nonexistent", tables: [table])
        }
        #expect(error == .offsetNotExecutable(function: "do_store_item", offset: 0x100, table: "bad.offsets"))
    }

    @Test("a missing binary and a non-ELF binary give typed errors")
    func badBinaryPaths() throws {
        #expect(throws: ProbeTargetError.self) {
            try ProbeTargetResolver.resolve(binary: "/nonexistent/memcached", functions: ["x"])
        }
        let dir = try makeTemporaryDirectory()
        defer { removeDirectory(dir) }
        try "#!/bin/sh\n".write(toFile: dir + "/script", atomically: true, encoding: .utf8)
        #expect(throws: ProbeTargetError.self) {
            try ProbeTargetResolver.resolve(binary: dir + "/script", functions: ["x"])
        }
    }
}
