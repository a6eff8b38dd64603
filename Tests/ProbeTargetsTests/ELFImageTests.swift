import Foundation
import Testing
@testable import ProbeTargets

@Suite("ELFImage")
struct ELFImageTests {
    @Test("Debian's memcached is stripped, has the expected build-id and a debug link",
          .enabled(if: memcachedAvailable))
    func debianMemcached() throws {
        let image = try ELFImage(contentsOf: debianMemcachedPath)
        #expect(image.section(named: ".symtab") == nil)
        #expect(try image.functionSymbols(in: .symtab).isEmpty)
        #expect(try image.buildID() == debianMemcachedBuildID)
        #expect(try image.debugLink()?.fileName == "\(debianMemcachedBuildID.dropFirst(2)).debug")
        // .dynsym exists but only imports functions (libevent, libc): nothing to probe by name.
        #expect(image.section(named: ".dynsym") != nil)
        #expect(try image.functionSymbols(in: .dynsym).isEmpty)
        // .text sits in the R E PT_LOAD at offset 0x5000 == vaddr 0x5000.
        #expect(image.fileOffset(forVirtualAddress: 0xe400) == 0xe400)
        #expect(image.loadSegment(containing: 0xe400)?.isExecutable == true)
    }

    @Test("function symbols and file offsets agree with nm and readelf", .enabled(if: toolchainAvailable),
          arguments: [["-no-pie"], ["-pie", "-fpie"]])
    func symbolsMatchBinutils(flags: [String]) throws {
        let dir = try makeTemporaryDirectory()
        defer { removeDirectory(dir) }
        let binary = try buildSample(in: dir, name: "sample", flags: flags)
        let image = try ELFImage(contentsOf: binary)
        let expected = try expectedOffsets(of: binary, functions: sampleFunctions)
        #expect(expected.count == sampleFunctions.count)
        let symbols = try image.functionSymbols(in: .symtab)
        for name in sampleFunctions {
            let symbol = try #require(symbols.first { $0.name == name })
            #expect(symbol.size > 0)
            #expect(image.fileOffset(forVirtualAddress: symbol.value) == expected[name])
        }
        if flags.contains("-no-pie") {
            // Non-PIE: .text is mapped at 0x400000+, so offset and address really differ.
            let store = try #require(symbols.first { $0.name == "do_store_item" })
            #expect(image.fileOffset(forVirtualAddress: store.value) != store.value)
        }
        let id = try #require(try image.buildID())
        #expect(try run("/usr/bin/readelf", ["-n", binary]).contains(id))
    }

    @Test("random bytes give typed errors")
    func garbage() {
        var generator = SplitMix64(seed: 0x5eed)
        for length in [0, 1, 4, 63, 64, 65, 200, 4096] {
            let noise = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            #expect(throws: ProbeTargetError.self) { try ELFImage(bytes: noise) }
        }
        #expect(throws: ProbeTargetError.unsupportedELF(reason: "EI_CLASS 1, only ELF64 is supported")) {
            try ELFImage(bytes: [0x7f, 0x45, 0x4c, 0x46, 1, 1] + [UInt8](repeating: 0, count: 58))
        }
    }

    @Test("hostile header values do not overflow or trap")
    func hostileHeaders() {
        var header = [UInt8](repeating: 0, count: 64)
        header[0...5] = [0x7f, 0x45, 0x4c, 0x46, 2, 1]
        func put(_ value: UInt64, at offset: Int, width: Int) {
            for i in 0..<width { header[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
        }
        put(UInt64.max - 10, at: 0x28, width: 8) // e_shoff near 2^64
        put(64, at: 0x3a, width: 2)
        put(0xffff, at: 0x3c, width: 2)
        #expect(throws: ProbeTargetError.self) { try ELFImage(bytes: header) }
        put(64, at: 0x28, width: 8) // extended numbering: reads section header 0 past the end
        put(0, at: 0x3c, width: 2)
        #expect(throws: ProbeTargetError.self) { try ELFImage(bytes: header) }
        put(0, at: 0x28, width: 8)
        put(UInt64.max, at: 0x20, width: 8) // e_phoff
        put(56, at: 0x36, width: 2)
        put(3, at: 0x38, width: 2)
        #expect(throws: ProbeTargetError.self) { try ELFImage(bytes: header) }
    }

    @Test("a real ELF cut at any length, or with corrupted bytes, never traps", .enabled(if: toolchainAvailable))
    func truncatedAndCorrupted() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeDirectory(dir) }
        let whole = [UInt8](try Data(contentsOf: URL(fileURLWithPath: try buildSample(in: dir, name: "sample", flags: []))))
        var cuts = Array(stride(from: 0, to: whole.count, by: 97)) + [1, 63, 64, 65, whole.count - 1]
        cuts = cuts.filter { $0 < whole.count }
        for cut in cuts {
            // Section headers live at the end of the file, so any cut must be caught at init.
            #expect(throws: ProbeTargetError.self, "cut at \(cut)") { try ELFImage(bytes: Array(whole[..<cut])) }
        }
        var generator = SplitMix64(seed: 42)
        for _ in 0..<1500 {
            var mutated = whole
            for _ in 0..<Int.random(in: 1...8, using: &generator) {
                // Bias towards the ELF header and the section/program header tables.
                let region = Int.random(in: 0...2, using: &generator)
                let index = region == 0 ? Int.random(in: 0..<64, using: &generator)
                    : region == 1 ? Int.random(in: max(0, whole.count - 2048)..<whole.count, using: &generator)
                    : Int.random(in: 0..<whole.count, using: &generator)
                mutated[index] = UInt8.random(in: 0...255, using: &generator)
            }
            exerciseAll(mutated)
        }
    }

    /// Calls every accessor; only ProbeTargetError may come out.
    private func exerciseAll(_ bytes: [UInt8]) {
        do {
            let image = try ELFImage(bytes: bytes)
            _ = try? image.buildID()
            _ = try? image.debugLink()
            for table in [ELFImage.SymbolTable.symtab, .dynsym] {
                for symbol in (try? image.functionSymbols(in: table)) ?? [] {
                    if let offset = image.fileOffset(forVirtualAddress: symbol.value) {
                        _ = try? image.bytes(atFileOffset: offset, count: 16)
                    }
                }
            }
            for section in image.sections { _ = try? image.contents(of: section) }
        } catch is ProbeTargetError {
        } catch {
            Issue.record("untyped error \(error)")
        }
    }
}

/// A small seeded generator so the fuzz cases are reproducible.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
