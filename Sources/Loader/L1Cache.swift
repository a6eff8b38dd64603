import CXLBMCABI
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// The size of L1: a power-of-two number of sets of `L1_WAYS` ways each.
public struct L1Geometry: Sendable, Equatable, CustomStringConvertible {
    public let sets: UInt32

    /// `sets` must be a power of two (the BPF side masks hashes with sets - 1).
    public init(sets: UInt32) throws {
        guard sets > 0, sets & (sets - 1) == 0, sets <= Self.maxSets else {
            throw BPFError(
                .geometryMismatch, operation: "size L1 with \(sets) sets",
                detail: "the number of sets must be a power of two between 1 and \(Self.maxSets)")
        }
        self.sets = sets
    }

    /// The most sets a geometry may have.
    public static let maxSets: UInt32 = 1 << 24

    /// The geometry holding about `entries` items: sets = nextPow2(entries /
    /// L1_WAYS), at least 1 and at most ``maxSets``.
    public static func forEntries(_ entries: Int) -> L1Geometry {
        let ways = Int(L1_WAYS)
        let wanted = max(1, entries / ways + (entries % ways == 0 ? 0 : 1))
        var sets: UInt32 = 1
        while Int(sets) < wanted && sets < maxSets { sets <<= 1 }
        return try! L1Geometry(sets: sets)
    }

    /// Items L1 can hold (sets × ways).
    public var entries: Int { Int(sets) * Int(L1_WAYS) }

    /// max_entries of every set-dependent map.
    public var maxEntries: [(map: String, entries: UInt32)] {
        [
            (L1Names.setsMap, sets),
            (L1Names.wgenMap, sets),
            (L1Names.smallMap, sets * UInt32(L1_SMALL_WAYS)),
            (L1Names.mediumMap, sets * UInt32(L1_MEDIUM_WAYS)),
            (L1Names.largeMap, sets * UInt32(L1_LARGE_WAYS)),
        ]
    }

    public var description: String {
        "\(sets) sets × \(L1_WAYS) ways = \(entries) entries"
    }
}

/// L1 on one interface: the XDP ingress program attached, the TC egress
/// program pinned (and attached if asked), their shared maps pinned under
/// `<pinRoot>/<interface>/` so a restart (or a manually attached tc filter)
/// keeps using the same cache.
public final class L1Cache {
    public let interface: NetworkInterface
    public let pinDirectory: String
    public let geometry: L1Geometry
    public let port: UInt16
    /// Whether the maps were already pinned (a restart) rather than created.
    public let reusedPins: Bool
    public let xdpObject: BPFObject
    public let tcObject: BPFObject
    public let xdp: XDPAttachment
    /// The egress filter, if `attach` attached one (`tcAttach`).
    public private(set) var tc: TCAttachment?
    /// Without `tcAttach`: egress filters already running cxl-bmc's program
    /// (added by hand in an earlier run). They keep running that program on
    /// the same pinned maps.
    public private(set) var earlierTCFilters: [TCFilter] = []
    /// Where the egress program is pinned, for `tc filter ... object-pinned`.
    public var tcPinPath: String { "\(pinDirectory)/\(L1Names.tcPin)" }

    static let logger = Logger(label: "cxl-bmc.loader")

    /// A directory in the pin directory whose presence says cxl-bmc created
    /// the clsact qdisc, so a later detach (maybe another process) removes it.
    static let qdiscMarker = "clsact_created"

    /// How long fills stay refused after a write is released, and after a
    /// write that gets no reply (`l1_config.hold_ns`, `noreply_hold_ns`).
    public static let holdNs: UInt64 = 50_000_000
    public static let noreplyHoldNs: UInt64 = 1_000_000_000
    /// When a write with no reply yet is presumed applied (`inflight_max_ns`).
    public static let inflightMaxNs: UInt64 = 1_000_000_000

    private init(
        interface: NetworkInterface, pinDirectory: String, geometry: L1Geometry, port: UInt16,
        reusedPins: Bool, xdpObject: BPFObject, tcObject: BPFObject, xdp: XDPAttachment, tc: TCAttachment?
    ) {
        self.interface = interface
        self.pinDirectory = pinDirectory
        self.geometry = geometry
        self.port = port
        self.reusedPins = reusedPins
        self.xdpObject = xdpObject
        self.tcObject = tcObject
        self.xdp = xdp
        self.tc = tc
    }

    /// Loads both programs, pins their maps and the egress program under
    /// `<pinRoot>/<interface>/`, configures L1 and attaches XDP (and TC egress
    /// if `tcAttach`). Maps already pinned there are reused; if they were made
    /// for another geometry this throws ``BPFError/Kind/geometryMismatch``.
    ///
    /// - Parameters:
    ///   - port: memcached's UDP port.
    ///   - sets: L1 sets, a power of two (see ``L1Geometry/forEntries(_:)``).
    ///   - unknownTTL: how long to cache keys whose TTL L1 did not see written (0: never).
    public static func attach(
        interface name: String, port: UInt16 = UInt16(MC_DEFAULT_PORT), sets: UInt32,
        pinRoot: String = BPFFS.defaultPinRoot, tcAttach: Bool = false, xdpMode: XDPModeRequest = .auto,
        unknownTTL: Duration = .zero
    ) throws -> L1Cache {
        try Privileges.check(for: "attach L1 to \(name)")
        let geometry = try L1Geometry(sets: sets)
        let interface = try NetworkInterface(name: name)
        try BPFFS.ensureMounted()
        let pinDirectory = BPFFS.pinDirectory(for: name, root: pinRoot)
        try BPFFS.createDirectory(pinDirectory)
        let reused = BPFFS.exists("\(pinDirectory)/\(L1Names.configMap)")

        do {
            let xdpObject = try BPFObject(embedded: L1Names.xdpObject, pinRoot: pinDirectory)
            let tcObject = try BPFObject(embedded: L1Names.tcObject, pinRoot: pinDirectory)
            for object in [xdpObject, tcObject] {
                for (map, entries) in geometry.maxEntries where object.mapNames.contains(map) {
                    try object.setMaxEntries(map: map, entries)
                }
                try checkPinnedMaps(of: object, in: pinDirectory, interface: name)
            }
            try xdpObject.load()
            try tcObject.load()
            // Configure and pin before XDP sees a packet.
            try configure(
                xdpObject.map(named: L1Names.configMap), port: port, geometry: geometry, unknownTTL: unknownTTL)
            if reused {
                try forgetUnwatchedTime(xdpObject)
            }
            let tcProgram = try tcObject.program(named: L1Names.tcProgram)
            let tcPinPath = "\(pinDirectory)/\(L1Names.tcPin)"
            try BPFFS.unpin(tcPinPath)
            try tcProgram.pin(tcPinPath)

            let cache = L1Cache(
                interface: interface, pinDirectory: pinDirectory, geometry: geometry, port: port,
                reusedPins: reused, xdpObject: xdpObject, tcObject: tcObject,
                xdp: try attachXDP(xdpObject, to: interface, mode: xdpMode),
                tc: nil)
            if tcAttach {
                cache.tc = try attachTC(tcProgram, to: interface, pinDirectory: pinDirectory)
            } else {
                cache.earlierTCFilters = try ourTCFilters(on: interface)
            }
            logger.info(
                "L1 attached to \(interface): XDP \(cache.xdp.mode) mode\(cache.xdp.usesDispatcher ? " (libxdp dispatcher)" : ""), \(geometry), pins in \(pinDirectory)\(reused ? " (reused)" : "")"
            )
            return cache
        } catch {
            if !reused {
                _ = try? detach(interface: name, pinRoot: pinRoot, keepPins: false)
            }
            throw error
        }
    }

    /// Refuses pins made for another geometry (or an older ABI) with a message
    /// telling the user what to do, before libbpf's terser failure.
    private static func checkPinnedMaps(of object: BPFObject, in pinDirectory: String, interface: String) throws {
        for map in object.mapNames {
            guard let path = try object.pinPath(ofMap: map), BPFFS.exists(path) else { continue }
            let wanted = try object.definition(ofMap: map)
            let pinned = try BPFMap.openPinned(path).definition
            guard pinned == wanted else {
                let difference =
                    pinned.maxEntries != wanted.maxEntries
                    ? "\(map) is pinned with \(pinned.maxEntries) entries, this attach needs \(wanted.maxEntries) (attach with the same --l1-entries to keep the cache)"
                    : "\(map) is pinned with another layout (\(pinned.type), key \(pinned.keySize) B, value \(pinned.valueSize) B; this cxl-bmc needs \(wanted.type), \(wanted.keySize) B, \(wanted.valueSize) B)"
                throw BPFError(
                    .geometryMismatch,
                    operation: "reuse the L1 maps pinned in \(pinDirectory)",
                    detail: "\(difference); run `cxl-bmc detach \(interface)` first (it drops the cached data)")
            }
        }
    }

    /// Attaches the ingress program, first detaching one an earlier run left
    /// on the interface (a crash leaves XDP attached).
    private static func attachXDP(_ object: BPFObject, to interface: NetworkInterface, mode: XDPModeRequest) throws
        -> XDPAttachment
    {
        let program = try object.program(named: L1Names.xdpProgram)
        for stale in try ourXDPPrograms(on: interface) {
            logger.info("replacing XDP program id \(stale.id) left on \(interface.name) by an earlier run")
            try XDPAttachment.detach(programID: stale.id, mode: nil, from: interface)
        }
        return try XDPAttachment.attach(program, to: interface, mode: mode)
    }

    /// Attaches the egress program, replacing in place a filter of an earlier
    /// run (so there is never a moment without one).
    private static func attachTC(_ program: BPFProgram, to interface: NetworkInterface, pinDirectory: String) throws
        -> TCAttachment
    {
        let existing = try ourTCFilters(on: interface)
        let attachment: TCAttachment
        if let first = existing.first {
            attachment = try TCAttachment.attach(
                program, to: interface, handle: first.handle, priority: first.priority, replace: true)
            for other in existing.dropFirst() {
                try TCAttachment.detach(other, from: interface)
            }
        } else {
            attachment = try TCAttachment.attach(program, to: interface)
        }
        if attachment.createdQdisc {
            try BPFFS.createDirectory("\(pinDirectory)/\(qdiscMarker)")
        }
        return attachment
    }

    /// Reused pins hold entries from before this attach, but nobody watched the
    /// writes made since the last run detached: every entry must become a miss
    /// (a flush epoch bump) and the stream tracking start over (streams of the
    /// gap are followed conservatively, as streams older than the attach).
    private static func forgetUnwatchedTime(_ xdpObject: BPFObject) throws {
        let stateMap = try xdpObject.map(named: L1Names.stateMap)
        var state = try stateMap.lookup(UInt32(0), as: l1_state.self) ?? l1_state()
        state.epoch &+= 1
        try stateMap.update(UInt32(0), state)
        let conns = try xdpObject.map(named: L1Names.connsMap)
        for key in try conns.keys() { try conns.delete(key: key) }
        logger.info("reused pinned L1 maps: flushed L1 (epoch \(state.epoch)) and reset stream tracking")
    }

    /// Writes `struct l1_config`: port, enabled, set mask, hold times, clock offset.
    /// A restart overwrites the whole config (the port may have changed).
    private static func configure(_ configMap: BPFMap, port: UInt16, geometry: L1Geometry, unknownTTL: Duration) throws {
        let settings = L1Settings(port: port, unknownTTLNs: UInt64(unknownTTL.nanoseconds))
        try configMap.update(UInt32(0), settings.config(for: geometry))
    }

    /// A map of L1 (through the XDP object; both objects share them).
    public func map(_ name: String) throws -> BPFMap {
        if xdpObject.mapNames.contains(name) {
            return try xdpObject.map(named: name)
        }
        return try tcObject.map(named: name)
    }

    /// Rewrites `realtime_offset_ns` (CLOCK_REALTIME − CLOCK_MONOTONIC), which
    /// moves when the wall clock is set; the BPF side uses it to turn
    /// memcached's absolute exptimes into monotonic deadlines.
    public func refreshClock() throws {
        let configMap = try map(L1Names.configMap)
        guard var config = try configMap.lookup(UInt32(0), as: l1_config.self) else { return }
        config.realtime_offset_ns = Self.realtimeOffsetNs()
        config.probe_lease = Self.probeLeaseNow()
        try configMap.update(UInt32(0), config)
    }

    /// The lease value for now: CLOCK_MONOTONIC >> 20, as the XDP program compares it.
    static func probeLeaseNow() -> UInt32 { UInt32(truncatingIfNeeded: monotonicNs() >> 20) }

    /// Whether ingress tracks memcached's writes itself (off once memcached's
    /// uprobes report them exactly: `L1_CFG_PROBE_WRITES`).
    public func setWritesTrackedByProbes(_ probes: Bool) throws {
        let configMap = try map(L1Names.configMap)
        guard var config = try configMap.lookup(UInt32(0), as: l1_config.self) else { return }
        if probes {
            config.flags |= UInt32(L1_CFG_PROBE_WRITES)
            // Renewed by refreshClock() every second from here on; without it L1 stops answering.
            config.probe_lease = Self.probeLeaseNow()
        } else {
            config.flags &= ~UInt32(L1_CFG_PROBE_WRITES)
        }
        try configMap.update(UInt32(0), config)
    }

    /// Deletes `mcache_conns` entries idle for longer than `idle`: the release
    /// of last resort for writes whose reply egress never saw. Returns how
    /// many were deleted.
    @discardableResult
    public func sweepConnections(idleFor idle: Duration) throws -> Int {
        let conns = try map(L1Names.connsMap)
        let now = Self.monotonicNs()
        let limit = UInt64(idle.nanoseconds)
        var idleKeys: [[UInt8]] = []
        try conns.forEachKey { key in
            guard let bytes = try conns.lookup(key: key) else { return }
            let conn = BPFMap.load(l1_conn.self, from: bytes)
            if now &- conn.last_ns > limit {
                idleKeys.append(key)
            }
        }
        var deleted = 0
        for key in idleKeys where try conns.delete(key: key) {
            deleted += 1
        }
        if deleted > 0 {
            Self.logger.debug("swept \(deleted) idle connection(s) from \(L1Names.connsMap)")
        }
        return deleted
    }

    /// The summed L1 counters.
    public func stats() throws -> L1Stats {
        try L1Stats(map: map(L1Names.statsMap))
    }

    /// Whether the XDP program is still attached (someone may have run
    /// `cxl-bmc detach` or `ip link set dev X xdp off`).
    public func isAttached() throws -> Bool {
        let attached = try XDPAttachment.kernelProgramIDs(of: interface)
        if attached.contains(xdp.programID) { return true }
        if attached.isEmpty { return false }
        // Something else in front: libxdp's dispatcher, maybe with ours behind it.
        return try XDPAttachment.status(of: interface).programs.contains { $0.id == xdp.programID }
    }

    /// Detaches XDP and this instance's TC filter. Unless `keepPins`, also
    /// every egress filter running cxl-bmc's program on the interface (the
    /// ones added by hand with `tc ... object-pinned`), and the pins. With
    /// `keepPins`, hand-added filters stay, still using the pinned maps, so a
    /// restart picks up the same cache.
    public func detach(keepPins: Bool = false) throws {
        try xdp.detach()
        try tc?.detach(removingQdiscIfCreated: false)
        try Self.detach(interface: interface.name, pinRoot: parentDirectory(of: pinDirectory), keepPins: keepPins)
    }

    /// What ``detach(interface:pinRoot:keepPins:)`` found and removed.
    public struct DetachReport: Sendable {
        public var xdpProgramIDs: [UInt32] = []
        public var tcFilters: [TCFilter] = []
        public var removedQdisc = false
        /// The pin directory that was removed, if there was one.
        public var removedPins: String?
        /// false if the interface no longer exists (only pins were removed).
        public var interfaceExists = true

        public var didAnything: Bool {
            !xdpProgramIDs.isEmpty || !tcFilters.isEmpty || removedQdisc || removedPins != nil
        }
    }

    /// Detaches L1 from `interface`, from any process: cxl-bmc's XDP
    /// program, and unless `keepPins` its egress filters, the clsact qdisc if
    /// cxl-bmc created it and nothing else uses it, and the pin directory.
    /// An interface that no longer exists only has its pins removed.
    @discardableResult
    public static func detach(interface name: String, pinRoot: String = BPFFS.defaultPinRoot, keepPins: Bool = false)
        throws -> DetachReport
    {
        try Privileges.check(for: "detach L1 from \(name)")
        var report = DetachReport()
        let pinDirectory = BPFFS.pinDirectory(for: name, root: pinRoot)
        if let interface = try? NetworkInterface(name: name) {
            for program in try ourXDPPrograms(on: interface) {
                try XDPAttachment.detach(programID: program.id, mode: nil, from: interface)
                logger.info("detached XDP program id \(program.id) from \(name)")
                report.xdpProgramIDs.append(program.id)
            }
            if !keepPins {
                for filter in try ourTCFilters(on: interface) {
                    try TCAttachment.detach(filter, from: interface)
                    logger.info("detached TC egress filter \(filter.name) (program id \(filter.programID)) from \(name)")
                    report.tcFilters.append(filter)
                }
                if BPFFS.exists("\(pinDirectory)/\(qdiscMarker)") {
                    report.removedQdisc = try TCAttachment.removeQdiscIfEmpty(on: interface)
                }
            }
        } else {
            logger.info("interface \(name) is gone; removing its pins only")
            report.interfaceExists = false
        }
        if !keepPins && BPFFS.exists(pinDirectory) {
            try BPFFS.removeDirectory(pinDirectory)
            report.removedPins = pinDirectory
            if BPFFS.entries(of: pinRoot).isEmpty {
                rmdir(pinRoot)
            }
        }
        return report
    }

    /// The summed counters of the L1 pinned for `interface`.
    public static func stats(interface name: String, pinRoot: String = BPFFS.defaultPinRoot) throws -> L1Stats {
        let path = "\(BPFFS.pinDirectory(for: name, root: pinRoot))/\(L1Names.statsMap)"
        do {
            return try L1Stats(map: BPFMap.openPinned(path))
        } catch let error as BPFError where error.kind == .notFound {
            throw BPFError(
                .notFound, operation: "read L1 stats of \(name)", errno: error.errno,
                detail: "nothing pinned at \(path): is cxl-bmc attached to \(name)?")
        }
    }

    /// What is attached, for every pin directory under `pinRoot`.
    public static func status(pinRoot: String = BPFFS.defaultPinRoot) throws -> [L1Status] {
        try BPFFS.entries(of: pinRoot).filter(\.isDirectory).map { entry in
            try L1Status(interface: entry.name, pinDirectory: "\(pinRoot)/\(entry.name)")
        }
    }

    // MARK: Helpers

    /// cxl-bmc's ingress programs on `interface` (found by name: one pin
    /// directory per interface, so any on it is this instance's).
    static func ourXDPPrograms(on interface: NetworkInterface) throws -> [XDPStatus.Program] {
        try XDPAttachment.status(of: interface).programs.filter { $0.name == kernelName(L1Names.xdpProgram) }
    }

    /// cxl-bmc's egress filters on `interface`, whoever attached them.
    static func ourTCFilters(on interface: NetworkInterface) throws -> [TCFilter] {
        try TCAttachment.filters(on: interface).filter { filter in
            guard filter.isBPF, let program = try? BPFProgram.open(id: filter.programID) else { return false }
            return program.name == kernelName(L1Names.tcProgram)
        }
    }

    /// The kernel keeps program names to BPF_OBJ_NAME_LEN - 1 characters.
    static func kernelName(_ name: String) -> String { String(name.prefix(15)) }

    public static func realtimeOffsetNs() -> Int64 {
        var realtime = timespec()
        var monotonic = timespec()
        clock_gettime(CLOCK_REALTIME, &realtime)
        clock_gettime(CLOCK_MONOTONIC, &monotonic)
        return (Int64(realtime.tv_sec) - Int64(monotonic.tv_sec)) * 1_000_000_000
            + (Int64(realtime.tv_nsec) - Int64(monotonic.tv_nsec))
    }

    /// CLOCK_MONOTONIC in ns: bpf_ktime_get_ns()'s clock.
    public static func monotonicNs() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }
}

/// What `cxl-bmc status` shows for one pin directory.
public struct L1Status: Sendable {
    public let interface: String
    /// nil if the interface no longer exists.
    public let ifindex: Int32?
    public let pinDirectory: String
    /// Everything attached to the interface's XDP hook.
    public let xdp: XDPStatus?
    /// cxl-bmc's XDP program among them.
    public let xdpProgram: XDPStatus.Program?
    /// cxl-bmc's egress filters (attached by cxl-bmc or by hand).
    public let tcFilters: [TCFilter]
    public let tcPinned: Bool
    /// From the pinned `mcache_sets`; nil if it is not pinned.
    public let geometry: L1Geometry?
    /// memcached's port from the pinned `mcache_config`.
    public let port: UInt16?

    init(interface name: String, pinDirectory: String) throws {
        self.interface = name
        self.pinDirectory = pinDirectory
        let interface = try? NetworkInterface(name: name)
        ifindex = interface?.index
        if let interface {
            xdp = try? XDPAttachment.status(of: interface)
            xdpProgram = xdp?.programs.first { $0.name == L1Cache.kernelName(L1Names.xdpProgram) }
            tcFilters = (try? L1Cache.ourTCFilters(on: interface)) ?? []
        } else {
            xdp = nil
            xdpProgram = nil
            tcFilters = []
        }
        tcPinned = BPFFS.exists("\(pinDirectory)/\(L1Names.tcPin)")
        let sets = try? BPFMap.openPinned("\(pinDirectory)/\(L1Names.setsMap)")
        geometry = sets.flatMap { try? L1Geometry(sets: $0.maxEntries) }
        let config = try? BPFMap.openPinned("\(pinDirectory)/\(L1Names.configMap)")
            .lookup(UInt32(0), as: l1_config.self)
        port = config.map { UInt16(bigEndian: $0.port) }
    }
}

extension Duration {
    /// The duration in whole nanoseconds (clamped at 0 and Int64.max).
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        guard seconds >= 0 else { return 0 }
        let (product, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        return overflow ? .max : product + attoseconds / 1_000_000_000
    }
}

private func parentDirectory(of path: String) -> String {
    guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return "/" }
    return String(path[..<slash])
}
