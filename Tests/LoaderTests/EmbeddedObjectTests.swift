import BPFObjects
import CXLBMCABI
import Foundation
import Loader
import Testing

/// What the build embedded, checked without the kernel (libbpf only parses).
@Suite struct EmbeddedObjectTests {
    @Test func bothObjectsAreEmbedded() {
        #expect(EmbeddedBPF.names.contains(L1Names.xdpObject))
        #expect(EmbeddedBPF.names.contains(L1Names.tcObject))
        #expect(EmbeddedBPF.object(named: "no_such_object") == nil)
    }

    @Test(arguments: [L1Names.xdpObject, L1Names.tcObject])
    func objectsAreStrippedBPFWithBTF(name: String) throws {
        let elf = try #require(EmbeddedBPF.object(named: name))
        #expect(Array(elf.prefix(4)) == [0x7f, 0x45, 0x4c, 0x46])
        #expect(elf[18] == 247 && elf[19] == 0, "e_machine must be EM_BPF")
        let sections = MiniELF.sectionNames(elf)
        #expect(sections.contains(".BTF"))
        #expect(sections.contains(".BTF.ext"))
        #expect(!sections.contains { $0.hasPrefix(".debug_") }, "DWARF must be stripped: \(sections)")
    }

    @Test func programsAreInTheirObjects() throws {
        let xdp = try BPFObject(embedded: L1Names.xdpObject)
        let tc = try BPFObject(embedded: L1Names.tcObject)
        #expect(xdp.programNames.contains(L1Names.xdpProgram))
        #expect(tc.programNames.contains(L1Names.tcProgram))
    }

    @Test func everyMapNameExistsInBothObjects() throws {
        let xdp = try BPFObject(embedded: L1Names.xdpObject)
        let tc = try BPFObject(embedded: L1Names.tcObject)
        for map in L1Names.sharedMaps {
            #expect(xdp.mapNames.contains(map), "\(map) missing from \(L1Names.xdpObject)")
            #expect(tc.mapNames.contains(map), "\(map) missing from \(L1Names.tcObject)")
            #expect(try xdp.definition(ofMap: map) == tc.definition(ofMap: map), "\(map) declared differently")
        }
    }

    /// L1Names lists every `#define L1_MAP_*` of the header.
    @Test func mapNamesCoverTheHeader() throws {
        let defined = try headerDefines(prefix: "L1_MAP_").map { $0.value.trimmingCharacters(in: ["\""]) }
        #expect(Set(defined) == Set(L1Names.sharedMaps))
    }

    /// Every `#define L1_STAT_*` of the header (but the count) has a name in
    /// L1Stats, at the same index.
    @Test func statNamesCoverTheHeader() throws {
        let defined = try headerDefines(prefix: "L1_STAT_").filter { $0.name != "L1_STAT_COUNT" }.compactMap {
            Int32($0.value)
        }
        #expect(!defined.isEmpty)
        #expect(L1Stats.names.map(\.index).sorted() == defined.sorted())
        #expect(Set(L1Stats.names.map(\.key)).count == L1Stats.names.count)
        #expect(L1Stats.names.allSatisfy { $0.index < L1_STAT_COUNT })
    }

    @Test func statsSumOverCPUs() {
        var one = l1_stats()
        var two = l1_stats()
        withUnsafeMutableBytes(of: &one.counter) { $0.bindMemory(to: UInt64.self)[Int(L1_STAT_HIT)] = 3 }
        withUnsafeMutableBytes(of: &two.counter) { $0.bindMemory(to: UInt64.self)[Int(L1_STAT_HIT)] = 4 }
        let stats = L1Stats(perCPU: [one, two])
        #expect(stats["hit"] == 7)
        #expect(stats["miss"] == 0)
    }
}

/// `#define NAME VALUE` lines of bpf/include/cxl_bmc_abi.h whose name starts with `prefix`.
func headerDefines(prefix: String) throws -> [(name: String, value: String)] {
    let header = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("bpf/include/cxl_bmc_abi.h")
    let text = try String(contentsOf: header, encoding: .utf8)
    return text.split(separator: "\n").compactMap { line in
        let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
        guard parts.count >= 3, parts[0] == "#define", parts[1].hasPrefix(prefix) else { return nil }
        return (String(parts[1]), String(parts[2]))
    }
}
