import CXLBMCABI

/// The names of the L1 objects, programs and maps. Map and program names come
/// from the ABI header (`L1_MAP_*`, `L1_PROG_*`), so they cannot drift from
/// the BPF side; a test checks each one exists in the embedded objects.
public enum L1Names {
    /// Embedded object of the ingress program (bpf/xdp/xdp_mcache.bpf.c).
    public static let xdpObject = "xdp_mcache"
    /// Embedded object of the egress program (bpf/tc/tc_mcache.bpf.c).
    public static let tcObject = "tc_mcache"

    public static let xdpProgram: String = L1_PROG_XDP
    public static let tcProgram: String = L1_PROG_TC

    public static let configMap: String = L1_MAP_CONFIG
    public static let stateMap: String = L1_MAP_STATE
    public static let statsMap: String = L1_MAP_STATS
    public static let setsMap: String = L1_MAP_SETS
    public static let smallMap: String = L1_MAP_SMALL
    public static let mediumMap: String = L1_MAP_MEDIUM
    public static let largeMap: String = L1_MAP_LARGE
    public static let ticketsMap: String = L1_MAP_TICKETS
    public static let ttlMap: String = L1_MAP_TTL
    public static let connsMap: String = L1_MAP_CONNS
    public static let wgenMap: String = L1_MAP_WGEN

    /// Every `L1_MAP_*` of the header: the maps both objects declare
    /// (mcache_maps.bpf.h) and share through their pins.
    public static let sharedMaps: [String] = [
        configMap, stateMap, statsMap, setsMap, smallMap, mediumMap, largeMap,
        ticketsMap, ttlMap, connsMap, wgenMap,
    ]

    /// Where `attach` pins the egress program inside an interface's pin directory.
    public static let tcPin = "tc_egress"
}
