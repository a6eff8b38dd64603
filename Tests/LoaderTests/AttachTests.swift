import CXLBMCABI
import Loader
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// XDP and TC attachment on a veth pair made for each test, and the L1 API
/// the CLI uses. Needs root.
@Suite(.serialized, .enabled(if: Privileged.shouldRun))
struct AttachTests {
    init() throws {
        try Privileged.require()
    }

    @Test(arguments: [XDPModeRequest.auto, .skb])
    func xdpAttachAndDetach(mode: XDPModeRequest) throws {
        let veth = try VethPair()
        let interface = try NetworkInterface(name: veth.name)
        let object = try BPFObject(embedded: L1Names.xdpObject)
        try object.load()
        let program = try object.program(named: L1Names.xdpProgram)

        let attachment = try XDPAttachment.attach(program, to: interface, mode: mode)
        #expect(attachment.programID == program.id)
        // veth supports native XDP, so auto must not fall back.
        #expect(attachment.mode == (mode == .skb ? .skb : .native))

        let status = try XDPAttachment.status(of: interface)
        #expect(status.programs.contains { $0.id == program.id && $0.name == L1Names.xdpProgram })
        #expect(status.mode == attachment.mode)
        #expect((status.dispatcherID != nil) == attachment.usesDispatcher)

        try attachment.detach()
        #expect(try XDPAttachment.status(of: interface).programs.isEmpty)
    }

    @Test func autoFallsBackToSKBWithoutNativeXDP() throws {
        let bridge = try Bridge()
        let interface = try NetworkInterface(name: bridge.name)
        let object = try BPFObject(embedded: L1Names.xdpObject)
        try object.load()
        let program = try object.program(named: L1Names.xdpProgram)

        let native = #expect(throws: BPFError.self) { try XDPAttachment.attach(program, to: interface, mode: .native) }
        #expect(native?.errno == EOPNOTSUPP)

        let attachment = try XDPAttachment.attach(program, to: interface, mode: .auto)
        #expect(attachment.mode == .skb)
        #expect(try XDPAttachment.status(of: interface).mode == .skb)
        try attachment.detach()
        #expect(try XDPAttachment.status(of: interface).programs.isEmpty)
    }

    @Test func xdpDetachByProgramID() throws {
        let veth = try VethPair()
        let interface = try NetworkInterface(name: veth.name)
        let object = try BPFObject(embedded: L1Names.xdpObject)
        try object.load()
        let program = try object.program(named: L1Names.xdpProgram)
        let attachment = try XDPAttachment.attach(program, to: interface)
        try XDPAttachment.detach(programID: program.id, mode: attachment.mode, from: interface)
        #expect(try XDPAttachment.status(of: interface).programs.isEmpty)
    }

    @Test func tcAttachAndDetach() throws {
        let veth = try VethPair()
        let interface = try NetworkInterface(name: veth.name)
        let object = try BPFObject(embedded: L1Names.tcObject)
        try object.load()
        let program = try object.program(named: L1Names.tcProgram)

        let attachment = try TCAttachment.attach(program, to: interface)
        #expect(attachment.createdQdisc)
        #expect(attachment.programID == program.id)
        let filters = try TCAttachment.filters(on: interface)
        #expect(filters.count == 1)
        #expect(filters.first?.programID == program.id)
        #expect(filters.first?.handle == attachment.handle)
        #expect(filters.first?.priority == attachment.priority)
        #expect(filters.first?.isBPF == true)

        try attachment.detach()
        #expect(try TCAttachment.filters(on: interface).isEmpty)
        // The qdisc this attachment created is gone: creating it again succeeds.
        #expect(try TCAttachment.ensureQdisc(on: interface))
    }

    @Test func tcLeavesAQdiscItDidNotCreate() throws {
        let veth = try VethPair()
        let interface = try NetworkInterface(name: veth.name)
        #expect(try TCAttachment.ensureQdisc(on: interface))
        let object = try BPFObject(embedded: L1Names.tcObject)
        try object.load()
        let attachment = try TCAttachment.attach(object.program(named: L1Names.tcProgram), to: interface)
        #expect(!attachment.createdQdisc)
        try attachment.detach()
        #expect(try !TCAttachment.ensureQdisc(on: interface), "the pre-existing clsact qdisc must stay")
    }

    @Test func l1AttachStatusStatsDetach() throws {
        let veth = try VethPair()
        let root = Unique.pinRoot()
        defer { try? BPFFS.removeDirectory(root) }

        let cache = try L1Cache.attach(interface: veth.name, port: 11311, sets: 64, pinRoot: root, tcAttach: true)
        #expect(!cache.reusedPins)
        #expect(cache.geometry.sets == 64)
        #expect(cache.tcPinPath == "\(root)/\(veth.name)/\(L1Names.tcPin)")
        #expect(BPFFS.exists(cache.tcPinPath))
        #expect(try cache.map(L1Names.smallMap).maxEntries == 64 * UInt32(L1_SMALL_WAYS))
        #expect(try cache.map(L1Names.largeMap).maxEntries == 64 * UInt32(L1_LARGE_WAYS))

        let config = try #require(try cache.map(L1Names.configMap).lookup(UInt32(0), as: l1_config.self))
        #expect(UInt16(bigEndian: config.port) == 11311)
        #expect(config.flags == UInt32(L1_CFG_ENABLED))
        #expect(config.set_mask == 63)
        #expect(config.hold_ns == 50_000_000)
        #expect(config.noreply_hold_ns == 1_000_000_000)
        #expect(config.unknown_ttl_ns == 0)
        // CLOCK_REALTIME - CLOCK_MONOTONIC: after 2020, well above zero.
        #expect(config.realtime_offset_ns > 1_577_836_800 * 1_000_000_000 - 100 * 365 * 86_400 * 1_000_000_000)

        let statuses = try L1Cache.status(pinRoot: root)
        #expect(statuses.count == 1)
        let status = try #require(statuses.first)
        #expect(status.interface == veth.name)
        #expect(status.xdpProgram?.id == cache.xdp.programID)
        #expect(status.tcFilters.map(\.programID) == [cache.tc?.programID])
        #expect(status.geometry?.sets == 64)
        #expect(status.port == 11311)
        #expect(status.tcPinned)

        let stats = try L1Cache.stats(interface: veth.name, pinRoot: root)
        #expect(stats.counters.count == L1Stats.names.count)
        #expect(try cache.isAttached())

        let report = try L1Cache.detach(interface: veth.name, pinRoot: root)
        #expect(report.xdpProgramIDs == [cache.xdp.programID])
        #expect(report.tcFilters.map(\.programID) == [cache.tc?.programID])
        #expect(report.removedQdisc)
        #expect(report.removedPins == "\(root)/\(veth.name)")
        #expect(!BPFFS.exists("\(root)/\(veth.name)"))
        #expect(try !cache.isAttached())
        #expect(try !L1Cache.detach(interface: veth.name, pinRoot: root).didAnything)
        let interface = try NetworkInterface(name: veth.name)
        #expect(try XDPAttachment.status(of: interface).programs.isEmpty)
        #expect(try TCAttachment.filters(on: interface).isEmpty)
        #expect(try TCAttachment.ensureQdisc(on: interface), "the clsact qdisc L1 created must be gone")
    }

    @Test func l1RestartReusesPinsAndRefusesOtherGeometry() throws {
        let veth = try VethPair()
        let root = Unique.pinRoot()
        defer {
            _ = try? L1Cache.detach(interface: veth.name, pinRoot: root)
            try? BPFFS.removeDirectory(root)
        }

        let first = try L1Cache.attach(interface: veth.name, sets: 32, pinRoot: root)
        try first.map(L1Names.ttlMap).update(UInt64(5), l1_ttl(expires_ns: 555))
        try first.detach(keepPins: true)
        #expect(BPFFS.exists("\(root)/\(veth.name)/\(L1Names.ttlMap)"))

        let mismatch = #expect(throws: BPFError.self) {
            try L1Cache.attach(interface: veth.name, sets: 64, pinRoot: root)
        }
        #expect(mismatch?.kind == .geometryMismatch)
        #expect(mismatch?.description.contains("cxl-bmc detach \(veth.name)") == true)
        #expect(BPFFS.exists("\(root)/\(veth.name)/\(L1Names.ttlMap)"), "a refused attach must keep the pins")

        let second = try L1Cache.attach(interface: veth.name, sets: 32, pinRoot: root)
        #expect(second.reusedPins)
        #expect(try second.map(L1Names.ttlMap).lookup(UInt64(5), as: l1_ttl.self)?.expires_ns == 555)
        try second.detach()
        #expect(!BPFFS.exists("\(root)/\(veth.name)"))
    }

    @Test func restartReplacesAnXDPProgramLeftBehind() throws {
        let veth = try VethPair()
        let root = Unique.pinRoot()
        defer {
            _ = try? L1Cache.detach(interface: veth.name, pinRoot: root)
            try? BPFFS.removeDirectory(root)
        }
        // A crashed run: attached, never detached, its egress filter added by hand.
        let crashed = try L1Cache.attach(interface: veth.name, sets: 32, pinRoot: root)
        let oldID = crashed.xdp.programID
        let handAdded = try TCAttachment.attach(BPFProgram.openPinned(crashed.tcPinPath), to: crashed.interface)

        let restarted = try L1Cache.attach(interface: veth.name, sets: 32, pinRoot: root)
        let programs = try XDPAttachment.status(of: restarted.interface).programs
        #expect(programs.map(\.id) == [restarted.xdp.programID])
        #expect(restarted.xdp.programID != oldID)
        #expect(restarted.earlierTCFilters.map(\.programID) == [handAdded.programID])
        #expect(try BPFProgram.openPinned(restarted.tcPinPath).id != handAdded.programID, "tc_egress must be re-pinned")

        // --tc-attach on a restart replaces the earlier filter in place.
        let again = try L1Cache.attach(interface: veth.name, sets: 32, pinRoot: root, tcAttach: true)
        let filters = try TCAttachment.filters(on: again.interface)
        #expect(filters.map(\.programID) == [again.tc?.programID])
        #expect(filters.first?.handle == handAdded.handle && filters.first?.priority == handAdded.priority)
    }

    @Test func refreshClockAndSweepConnections() throws {
        let veth = try VethPair()
        let root = Unique.pinRoot()
        defer {
            _ = try? L1Cache.detach(interface: veth.name, pinRoot: root)
            try? BPFFS.removeDirectory(root)
        }
        let cache = try L1Cache.attach(interface: veth.name, sets: 32, pinRoot: root)
        let configMap = try cache.map(L1Names.configMap)
        var config = try #require(try configMap.lookup(UInt32(0), as: l1_config.self))
        let offset = config.realtime_offset_ns
        config.realtime_offset_ns = 0
        try configMap.update(UInt32(0), config)
        try cache.refreshClock()
        let refreshed = try #require(try configMap.lookup(UInt32(0), as: l1_config.self))
        #expect(abs(refreshed.realtime_offset_ns - offset) < 1_000_000_000)
        #expect(refreshed.set_mask == 31, "refreshClock must keep the rest of the config")

        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let nowNs = UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
        let conns = try cache.map(L1Names.connsMap)
        var idleKey = l1_conn_key()
        idleKey.port = 1
        idleKey.proto = UInt16(L1_PROTO_TCP)
        var busyKey = idleKey
        busyKey.port = 2
        var idle = l1_conn()
        idle.last_ns = nowNs - 60_000_000_000
        var busy = l1_conn()
        busy.last_ns = nowNs
        try conns.update(idleKey, idle)
        try conns.update(busyKey, busy)

        #expect(try cache.sweepConnections(idleFor: .seconds(10)) == 1)
        let left = try conns.keys(as: l1_conn_key.self)
        #expect(left.map(\.port) == [2])
    }

    @Test func unknownInterfaceFailsClearly() throws {
        let error = #expect(throws: BPFError.self) {
            try L1Cache.attach(interface: "cbt-missing0", sets: 32, pinRoot: Unique.pinRoot())
        }
        #expect(error?.kind == .unknownInterface("cbt-missing0"))
    }
}
