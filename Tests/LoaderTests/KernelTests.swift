import CXLBMCABI
import Loader
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Objects loaded into the running kernel: maps, per-CPU reads, test runs,
/// map sharing, pins and the verifier's refusals. Needs root.
@Suite(.serialized, .enabled(if: Privileged.shouldRun))
struct KernelTests {
    init() throws {
        try Privileged.require()
    }

    /// Both objects, sharing maps through reuseMaps, nothing pinned.
    private func loadPrivate() throws -> (xdp: BPFObject, tc: BPFObject) {
        let xdp = try BPFObject(embedded: L1Names.xdpObject)
        try xdp.setMaxEntries(map: L1Names.setsMap, 64)
        try xdp.load()
        let tc = try BPFObject(embedded: L1Names.tcObject)
        try tc.reuseMaps(from: xdp)
        try tc.load()
        return (xdp, tc)
    }

    @Test func embeddedObjectsLoadWithoutPins() throws {
        let pinnedBefore = BPFFS.exists("\(BPFFS.mountPoint)/\(L1Names.configMap)")
        let (xdp, tc) = try loadPrivate()
        let xdpProgram = try xdp.program(named: L1Names.xdpProgram)
        let tcProgram = try tc.program(named: L1Names.tcProgram)
        #expect(xdpProgram.type == .xdp)
        #expect(tcProgram.type == .schedCls)
        #expect(xdpProgram.id != 0 && tcProgram.id != 0)
        #expect(try xdp.pinPath(ofMap: L1Names.configMap) == nil)
        if !pinnedBefore {
            #expect(!BPFFS.exists("\(BPFFS.mountPoint)/\(L1Names.configMap)"), "a private load must pin nothing")
        }
        #expect(try xdp.map(named: L1Names.setsMap).maxEntries == 64)
    }

    @Test func reuseMapsSharesTheSameKernelMaps() throws {
        let (xdp, tc) = try loadPrivate()
        for name in L1Names.sharedMaps {
            #expect(try xdp.map(named: name).id == tc.map(named: name).id, "\(name) is not shared")
        }
        try xdp.map(named: L1Names.ttlMap).update(UInt64(42), l1_ttl(expires_ns: 99))
        #expect(try tc.map(named: L1Names.ttlMap).lookup(UInt64(42), as: l1_ttl.self)?.expires_ns == 99)
    }

    @Test func hashMapRoundTrip() throws {
        let (xdp, _) = try loadPrivate()
        let ttl = try xdp.map(named: L1Names.ttlMap)
        #expect(ttl.type == .lruHash)
        #expect(ttl.keySize == 8 && ttl.valueSize == MemoryLayout<l1_ttl>.size)

        #expect(try ttl.lookup(UInt64(7), as: l1_ttl.self) == nil)
        try ttl.update(UInt64(7), l1_ttl(expires_ns: 1234))
        try ttl.update(UInt64(8), l1_ttl(expires_ns: 5678), flags: .noExist)
        #expect(try ttl.lookup(UInt64(7), as: l1_ttl.self)?.expires_ns == 1234)
        #expect(Set(try ttl.keys(as: UInt64.self)) == [7, 8])

        let duplicate = #expect(throws: BPFError.self) {
            try ttl.update(UInt64(8), l1_ttl(expires_ns: 1), flags: .noExist)
        }
        #expect(duplicate?.errno == EEXIST)

        #expect(try ttl.delete(UInt64(7)))
        #expect(try !ttl.delete(UInt64(7)))
        #expect(try ttl.lookup(UInt64(7), as: l1_ttl.self) == nil)
        #expect(try ttl.keys(as: UInt64.self) == [8])

        let wrongKey = #expect(throws: BPFError.self) { try ttl.lookup(key: [1, 2, 3]) }
        #expect(wrongKey?.kind == .sizeMismatch)
    }

    @Test func configArrayRoundTrip() throws {
        let (xdp, tc) = try loadPrivate()
        let config = try xdp.map(named: L1Names.configMap)
        #expect(config.type == .array)
        #expect(config.maxEntries == 1)
        var written = l1_config()
        written.port = UInt16(11211).bigEndian
        written.flags = UInt32(L1_CFG_ENABLED)
        written.set_mask = 63
        written.hold_ns = 50_000_000
        written.realtime_offset_ns = -5
        try config.update(UInt32(0), written)
        let read = try #require(try tc.map(named: L1Names.configMap).lookup(UInt32(0), as: l1_config.self))
        #expect(UInt16(bigEndian: read.port) == 11211)
        #expect(read.flags == UInt32(L1_CFG_ENABLED))
        #expect(read.set_mask == 63)
        #expect(read.hold_ns == 50_000_000)
        #expect(read.realtime_offset_ns == -5)

        let outOfRange = #expect(throws: BPFError.self) { try config.update(UInt32(1), written) }
        #expect(outOfRange?.errno == E2BIG)
        let arrayDelete = #expect(throws: BPFError.self) { try config.delete(UInt32(0)) }
        #expect(arrayDelete?.errno == EINVAL)
    }

    @Test func perCPUStats() throws {
        let (xdp, _) = try loadPrivate()
        let stats = try xdp.map(named: L1Names.statsMap)
        #expect(stats.type == .perCPUArray)
        let cpus = try BPFMap.possibleCPUs()
        let values = try #require(try stats.lookupPerCPU(UInt32(0), as: l1_stats.self))
        #expect(values.count == cpus)

        let key = withUnsafeBytes(of: UInt32(0), Array.init)
        let perCPU = (0..<cpus).map { cpu -> [UInt8] in
            var value = l1_stats()
            withUnsafeMutableBytes(of: &value.counter) { raw in
                let counters = raw.bindMemory(to: UInt64.self)
                counters[Int(L1_STAT_GET_SEEN)] = UInt64(cpu + 1)
                counters[Int(L1_STAT_HIT)] = 10
            }
            return withUnsafeBytes(of: value, Array.init)
        }
        try stats.updatePerCPU(key: key, values: perCPU)
        let summed = try L1Stats(map: stats)
        #expect(summed["get_seen"] == UInt64(cpus * (cpus + 1) / 2))
        #expect(summed["hit"] == UInt64(10 * cpus))

        let plain = #expect(throws: BPFError.self) { try stats.lookup(key: key) }
        #expect(plain?.kind == .sizeMismatch)
    }

    @Test func testRunReturnsAnAction() throws {
        let (xdp, tc) = try loadPrivate()
        let packet = TestPacket.memcachedGet("foo")
        let run = try xdp.program(named: L1Names.xdpProgram).testRun(packet: packet, repeat: 4)
        #expect(run.action <= 4, "not an XDP action: \(run.action)")
        #expect(!run.packet.isEmpty)
        let egress = try tc.program(named: L1Names.tcProgram).testRun(packet: packet)
        #expect(!egress.packet.isEmpty)
    }

    @Test func testRunIsExact() throws {
        let object = try BPFObject(
            bytes: MiniELF.object(section: "xdp", program: "xdp_tx_all", code: MiniELF.returning(3)),
            options: .init(name: "mini"))
        try object.load()
        let packet = TestPacket.memcachedGet("k")
        let run = try object.program(named: "xdp_tx_all").testRun(packet: packet)
        #expect(run.action == 3)
        #expect(run.packet == packet)
        let tooSmall = #expect(throws: BPFError.self) {
            try object.program(named: "xdp_tx_all").testRun(packet: packet, outputCapacity: 8)
        }
        #expect(tooSmall?.errno == ENOSPC)
    }

    @Test func verifierRejectionCarriesTheLog() throws {
        let object = try BPFObject(
            bytes: MiniELF.object(section: "xdp", program: "bad_prog", code: MiniELF.uninitializedReturn),
            options: .init(name: "bad"))
        let error = #expect(throws: BPFError.self) { try object.load() }
        #expect(error?.kind == .verifierRejected(program: "bad_prog"))
        #expect(error?.verifierLog?.contains("R0 !read_ok") == true, "\(error?.verifierLog ?? "no log")")
        #expect(error?.description.contains("verifier rejected program 'bad_prog'") == true)
    }

    @Test func pinsAreReusedAcrossLoads() throws {
        let root = Unique.pinRoot()
        try BPFFS.createDirectory(root)
        defer { try? BPFFS.removeDirectory(root) }

        do {
            let first = try BPFObject(embedded: L1Names.xdpObject, pinRoot: root)
            try first.setMaxEntries(map: L1Names.setsMap, 64)
            try first.load()
            #expect(try first.pinPath(ofMap: L1Names.ttlMap) == "\(root)/\(L1Names.ttlMap)")
            try first.map(named: L1Names.ttlMap).update(UInt64(1), l1_ttl(expires_ns: 77))
        }
        #expect(BPFFS.exists("\(root)/\(L1Names.ttlMap)"))

        let second = try BPFObject(embedded: L1Names.tcObject, pinRoot: root)
        try second.setMaxEntries(map: L1Names.setsMap, 64)
        try second.load()
        #expect(try second.map(named: L1Names.ttlMap).lookup(UInt64(1), as: l1_ttl.self)?.expires_ns == 77)

        let pinned = try BPFMap.openPinned("\(root)/\(L1Names.ttlMap)")
        #expect(pinned.id == (try second.map(named: L1Names.ttlMap).id))
        #expect(pinned.name == L1Names.ttlMap)

        let other = try BPFObject(embedded: L1Names.xdpObject, pinRoot: root)
        try other.setMaxEntries(map: L1Names.setsMap, 128)
        let mismatch = #expect(throws: BPFError.self) { try other.load() }
        #expect(mismatch?.kind == .geometryMismatch)
    }

    @Test func programPinRoundTrip() throws {
        let root = Unique.pinRoot()
        try BPFFS.createDirectory(root)
        defer { try? BPFFS.removeDirectory(root) }
        let (_, tc) = try loadPrivate()
        let program = try tc.program(named: L1Names.tcProgram)
        try program.pin("\(root)/prog")
        let reopened = try BPFProgram.openPinned("\(root)/prog")
        #expect(reopened.id == program.id)
        #expect(reopened.name == L1Names.tcProgram)
        let missing = #expect(throws: BPFError.self) { try BPFProgram.openPinned("\(root)/missing") }
        #expect(missing?.kind == .notFound)
    }
}
