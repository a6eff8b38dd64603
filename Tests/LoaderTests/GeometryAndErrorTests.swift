import CXLBMCABI
import Loader
import Testing

@Suite struct GeometryAndErrorTests {
    @Test func entriesRoundUpToPowerOfTwoSets() {
        #expect(L1Geometry.forEntries(32768).sets == 4096)
        #expect(L1Geometry.forEntries(1000).sets == 128)
        #expect(L1Geometry.forEntries(1).sets == 1)
        #expect(L1Geometry.forEntries(32769).sets == 8192)
        let geometry = L1Geometry.forEntries(32768)
        #expect(geometry.entries == 32768)
        let sizes = Dictionary(uniqueKeysWithValues: geometry.maxEntries.map { ($0.map, $0.entries) })
        #expect(sizes[L1Names.setsMap] == 4096)
        #expect(sizes[L1Names.smallMap] == 4096 * UInt32(L1_SMALL_WAYS))
        #expect(sizes[L1Names.mediumMap] == 4096 * UInt32(L1_MEDIUM_WAYS))
        #expect(sizes[L1Names.largeMap] == 4096 * UInt32(L1_LARGE_WAYS))
    }

    @Test func setsMustBeAPowerOfTwo() {
        #expect(throws: BPFError.self) { try L1Geometry(sets: 3000) }
        #expect(throws: BPFError.self) { try L1Geometry(sets: 0) }
        #expect(throws: Never.self) { try L1Geometry(sets: 1024) }
    }

    @Test func unknownInterfaceIsTyped() {
        let error = #expect(throws: BPFError.self) { try NetworkInterface(name: "cbt-no-such0") }
        #expect(error?.kind == .unknownInterface("cbt-no-such0"))
        #expect(error?.description == "no network interface named 'cbt-no-such0'")
    }

    @Test func errorDescriptions() {
        let privileges = BPFError(.notPrivileged, operation: "load BPF object x", errno: 1)
        #expect(privileges.description.hasPrefix("cxl-bmc needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON)"))
        let verifier = BPFError(
            .verifierRejected(program: "p"), operation: "load BPF object x", errno: 13,
            verifierLog: (1...50).map { "line \($0)" }.joined(separator: "\n"))
        #expect(verifier.description.contains("verifier rejected program 'p'"))
        #expect(verifier.description.contains("Permission denied (errno 13)"))
        #expect(verifier.verifierLogTail(lines: 2) == "line 49\nline 50")
    }

    @Test func openingGarbageFails() {
        let error = #expect(throws: BPFError.self) { try BPFObject(bytes: [1, 2, 3, 4]) }
        #expect(error?.kind == .system)
        #expect(error?.errno != 0)
    }
}
