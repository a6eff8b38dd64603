import CLibBPF
import CXLBMCABI

/// What `struct l1_config` holds besides the geometry: the port and the
/// windows of the fill protocol.
public struct L1Settings: Sendable {
    public var port: UInt16
    /// How long to cache keys whose TTL L1 did not see written (0: never).
    public var unknownTTLNs: UInt64
    /// Fills refused this long after a write's reply passed egress.
    public var holdNs: UInt64
    /// ... and after a write that gets no reply (noreply, quiet).
    public var noreplyHoldNs: UInt64
    /// A write with no reply by then is presumed applied.
    public var inflightMaxNs: UInt64

    public init(
        port: UInt16 = UInt16(MC_DEFAULT_PORT), unknownTTLNs: UInt64 = 0, holdNs: UInt64 = L1Cache.holdNs,
        noreplyHoldNs: UInt64 = L1Cache.noreplyHoldNs, inflightMaxNs: UInt64 = L1Cache.inflightMaxNs
    ) {
        self.port = port
        self.unknownTTLNs = unknownTTLNs
        self.holdNs = holdNs
        self.noreplyHoldNs = noreplyHoldNs
        self.inflightMaxNs = inflightMaxNs
    }

    /// The config map's value for this geometry, with the clock offset of now.
    public func config(for geometry: L1Geometry) -> l1_config {
        var config = l1_config()
        config.port = port.bigEndian
        config.flags = UInt32(L1_CFG_ENABLED)
        config.set_mask = geometry.sets - 1
        config.unknown_ttl_ns = unknownTTLNs
        config.hold_ns = holdNs
        config.noreply_hold_ns = noreplyHoldNs
        config.inflight_max_ns = inflightMaxNs
        config.realtime_offset_ns = L1Cache.realtimeOffsetNs()
        return config
    }
}

/// Both L1 programs loaded with private maps they share (nothing pinned,
/// nothing attached): for BPF_PROG_TEST_RUN fixtures and benchmarks, which
/// must run the very code `attach` loads.
public final class L1Programs {
    public let xdpObject: BPFObject
    public let tcObject: BPFObject
    public let xdp: BPFProgram
    public let tc: BPFProgram
    public let geometry: L1Geometry

    public init(geometry: L1Geometry, settings: L1Settings = L1Settings()) throws {
        xdpObject = try BPFObject(embedded: L1Names.xdpObject)
        tcObject = try BPFObject(embedded: L1Names.tcObject)
        for object in [xdpObject, tcObject] {
            for (map, entries) in geometry.maxEntries where object.mapNames.contains(map) {
                try object.setMaxEntries(map: map, entries)
            }
        }
        try xdpObject.load()
        try tcObject.reuseMaps(from: xdpObject)
        try tcObject.load()
        xdp = try xdpObject.program(named: L1Names.xdpProgram)
        tc = try tcObject.program(named: L1Names.tcProgram)
        self.geometry = geometry
        try xdpObject.map(named: L1Names.configMap).update(UInt32(0), settings.config(for: geometry))
    }

    public func map(_ name: String) throws -> BPFMap { try xdpObject.map(named: name) }

    /// Per-CPU counters summed.
    public func stats() throws -> L1Stats { try L1Stats(map: map(L1Names.statsMap)) }
}
