import CXLBMCABI
import Foundation
import Loader
import Logging
import ProbeTargets

#if canImport(Glibc)
import Glibc
#endif

/// The uprobes on one memcached binary (bpf/uprobe/mc_probes.bpf.c): loaded,
/// configured and attached; detached when released or on ``detach()``.
public final class MemcachedProbes {
    /// Which processes of the binary are traced.
    public enum Scope: Sendable, Equatable, CustomStringConvertible {
        /// Every process running the binary, now and later, in this network
        /// namespace (inode of /proc/self/ns/net by default).
        case binary(netns: UInt32)
        /// One process: the uprobes are installed in it alone, and the
        /// programs check its tgid too.
        case process(pid: Int32)

        public var description: String {
            switch self {
            case .binary(let netns): "every process in network namespace \(netns)"
            case .process(let pid): "pid \(pid)"
            }
        }

        /// Every process running the binary in the caller's network namespace.
        public static func currentNetworkNamespace() throws -> Scope {
            var st = stat()
            guard stat("/proc/self/ns/net", &st) == 0 else {
                throw BPFError(.system, operation: "stat /proc/self/ns/net", errno: errno)
            }
            return .binary(netns: UInt32(truncatingIfNeeded: st.st_ino))
        }
    }

    public static let objectName = "mc_probes"
    /// 16 MiB, or CXL_BMC_RING_BYTES (a power of two of at least 4096) when set: `attach` has no
    /// ring-size option, and the fault tests flood a tiny ring through it.
    public static let defaultRingBytes: UInt32 = {
        if let text = getenv("CXL_BMC_RING_BYTES").map({ String(cString: $0) }), let bytes = UInt32(text),
           bytes >= 4096, bytes & (bytes - 1) == 0 {
            return bytes
        }
        return 16 << 20
    }()

    public let targets: MemcachedTargets
    public let scope: Scope
    /// The L1 pin directory whose generations the probes bump (nil: events only).
    public let l1PinDirectory: String?
    let object: BPFObject
    private var links: [BPFLink] = []

    /// (program, function, return probe)
    static let plan: [(program: String, function: String, returnProbe: Bool)] = [
        ("mc_store_begin", "do_store_item", false),
        ("mc_get_begin", "item_get", false),
        ("mc_get_end", "item_get", true),
        ("mc_get_locked_begin", "limited_get_locked", false),
        ("mc_get_locked_end", "limited_get_locked", true),
        ("mc_touch_begin", "item_touch", false),
        ("mc_touch_end", "item_touch", true),
        ("mc_delta_begin", "do_add_delta", false),
        ("mc_delta_end", "do_add_delta", true),
        ("mc_lookup_begin", "item_get_locked", false),
        ("mc_lookup_end", "item_get_locked", true),
    ]

    /// The program that does nothing (benchmarks: what the probes cost by themselves).
    public static let emptyProgram = "mc_empty"

    /// Resolves, loads and attaches. With `l1PinDirectory` the probes share
    /// L1's pinned maps (it must be attached there). `everySiteRuns` attaches
    /// that program of the object at every site instead of the real ones
    /// (benchmarks: ``emptyProgram``).
    public init(
        targets: MemcachedTargets, scope: Scope, l1PinDirectory: String? = nil,
        ringBytes: UInt32 = MemcachedProbes.defaultRingBytes, everySiteRuns: String? = nil,
        logger: Logger = Logger(label: "cxl-bmc.probes")
    ) throws {
        if case .process(let pid) = scope {
            try Self.checkProcess(pid: pid, runs: targets.binary)
        }
        if let dir = l1PinDirectory {
            guard BPFFS.exists("\(dir)/\(L1Names.configMap)"), BPFFS.exists("\(dir)/\(L1Names.wgenMap)") else {
                throw MemcachedProbeError.l1NotAttached(pinDirectory: dir)
            }
        }
        let object = try BPFObject(embedded: Self.objectName, pinRoot: l1PinDirectory)
        if let dir = l1PinDirectory {
            // The pinned maps' sizes are L1's geometry: take them as they are.
            for name in [L1Names.wgenMap, L1Names.ttlMap] {
                let pinned = try BPFMap.openPinned("\(dir)/\(name)")
                try object.setMaxEntries(map: name, pinned.maxEntries)
            }
        } else {
            // Events only: L1's maps are private and unused; keep them tiny.
            try object.setMaxEntries(map: L1Names.wgenMap, 1)
            try object.setMaxEntries(map: L1Names.ttlMap, 1)
        }
        try object.setMaxEntries(map: String(cString: MC_MAP_EVENTS), ringBytes)
        try object.load()
        self.object = object
        self.targets = targets
        self.scope = scope
        self.l1PinDirectory = l1PinDirectory

        var config = mc_probe_config()
        switch scope {
        case .binary(let netns): config.target_netns = netns
        case .process(let pid): config.target_tgid = UInt32(pid)
        }
        config.flags = l1PinDirectory != nil ? UInt32(MC_PROBE_CFG_L1) : 0
        config.current_time = targets.currentTime
        config.process_started = targets.processStarted
        config.settings = targets.settings
        withUnsafeMutableBytes(of: &config.failed_store_lookups) { raw in
            for (i, site) in targets.failedStoreLookups.prefix(Int(MC_FAILED_STORE_LOOKUPS)).enumerated() {
                raw.storeBytes(of: site.address + 5, toByteOffset: i * 8, as: UInt64.self) // where item_get returns to
            }
        }
        try object.map(named: String(cString: MC_MAP_PROBE_CONFIG)).update(UInt32(0), config)

        let pid: Int32
        if case .process(let p) = scope { pid = p } else { pid = -1 }
        do {
            for step in Self.plan {
                // The link probe reads the command from its register: no probe on the entry.
                if step.program == "mc_store_begin" && targets.storeCommandRegister != nil { continue }
                guard let target = targets.functions[step.function] else { continue }
                links.append(try object.attachUprobe(
                    program: everySiteRuns ?? step.program, binary: targets.binary, fileOffset: target.fileOffset, pid: pid,
                    returnProbe: step.returnProbe, cookie: target.address << 8))
            }
            let sites = [("mc_store_link", targets.storeSites), ("mc_delete_call", targets.deleteSites),
                         ("mc_evict_call", targets.evictSites), ("mc_flush", targets.flushSites)]
            for (program, list) in sites {
                // mc_store_link: the command's register in bits 4-7 (0: from the entry probe).
                let command = program == "mc_store_link" ? UInt64(targets.storeCommandRegister ?? 0) << 4 : 0
                for site in list {
                    links.append(try object.attachUprobe(
                        program: everySiteRuns ?? program, binary: targets.binary, fileOffset: site.fileOffset, pid: pid,
                        cookie: site.address << 8 | command | UInt64(site.register)))
                }
            }
        } catch {
            detach()
            throw error
        }
        logger.info("uprobes attached to \(targets.binary) (\(scope)): \(links.count) probes\(l1PinDirectory.map { ", bumping L1 in \($0)" } ?? "")")
    }

    deinit { detach() }

    public var probeCount: Int { links.count }

    /// Removes every probe (memcached keeps running untouched).
    public func detach() {
        for link in links { link.detach() }
        links.removeAll()
    }

    /// The ring buffer of events.
    public func eventReader() throws -> MemcachedEventReader {
        MemcachedEventReader(ring: try RingBuffer(map: object.map(named: String(cString: MC_MAP_EVENTS))))
    }

    /// The probes' write-sequence counts (see ``writeSequenceSlot(of:)``): what L3Sync compares with
    /// the events it has applied before it trusts L3 over memcached.
    public func writeSequences() throws -> WriteSequences {
        WriteSequences(map: try object.map(named: String(cString: MC_MAP_WRITE_SEQ)))
    }

    /// The write-sequence slot of a key: the probes' key hash folded to `MC_WRITE_SEQ_SLOTS`.
    public static func writeSequenceSlot(of key: some Sequence<UInt8>) -> Int {
        Int(L1KeyHash.index(of: key, mask: UInt32(MC_WRITE_SEQ_SLOTS) - 1))
    }
    /// The slot flush_all counts in.
    public static let flushSequenceSlot = Int(MC_WRITE_SEQ_FLUSH)

    /// The probes' counters, summed over CPUs.
    public func stats() throws -> MemcachedProbeStats {
        let map = try object.map(named: String(cString: MC_MAP_PROBE_STATS))
        let perCPU = try map.lookupPerCPU(UInt32(0), as: mc_probe_stats.self) ?? []
        var sum = [UInt64](repeating: 0, count: Int(MC_PSTAT_COUNT))
        for cpu in perCPU {
            withUnsafeBytes(of: cpu.counter) { raw in
                for (i, v) in raw.bindMemory(to: UInt64.self).enumerated() { sum[i] &+= v }
            }
        }
        return MemcachedProbeStats(counters: sum)
    }

    /// A process exists and runs `binary` (same file).
    static func checkProcess(pid: Int32, runs binary: String) throws {
        var a = stat(), b = stat()
        guard stat("/proc/\(pid)/exe", &a) == 0 else { throw MemcachedProbeError.notRunning(pid: pid) }
        guard stat(binary, &b) == 0, a.st_ino == b.st_ino, a.st_dev == b.st_dev else {
            let runs = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe")) ?? "another binary"
            throw MemcachedProbeError.notThatBinary(pid: pid, binary: binary, runs: runs)
        }
    }

    /// The binary a process runs (for `--pid`).
    public static func executable(of pid: Int32) throws -> String {
        guard let path = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe") else {
            throw MemcachedProbeError.notRunning(pid: pid)
        }
        return path
    }
}

/// The probes' per-slot write counts (`mc_write_seq`), read live from the kernel.
public struct WriteSequences: @unchecked Sendable {
    let map: BPFMap
    /// The count in one slot now; nil if the map cannot be read.
    public func current(slot: Int) -> UInt32? {
        try? map.lookup(UInt32(slot), as: UInt32.self)
    }
}

/// Counters of the probes (`MC_PSTAT_*`).
public struct MemcachedProbeStats: Sendable, Equatable {
    public let counters: [UInt64]
    public var emitted: UInt64 { counters[Int(MC_PSTAT_EMITTED)] }
    /// Events dropped because the ring buffer was full.
    public var lost: UInt64 { counters[Int(MC_PSTAT_LOST)] }
    public var filtered: UInt64 { counters[Int(MC_PSTAT_FILTERED)] }
    public var l1Bumps: UInt64 { counters[Int(MC_PSTAT_L1_BUMPS)] }
    public var readFaults: UInt64 { counters[Int(MC_PSTAT_READ_FAULT)] }
    public func emitted(_ kind: MemcachedEvent.Kind) -> UInt64 {
        counters[Int(MC_PSTAT_KIND_BASE) + Int(kind.rawValue)]
    }
}

/// Decodes the ring buffer's records into ``MemcachedEvent``s.
public final class MemcachedEventReader {
    let ring: RingBuffer
    /// Records that did not decode (never expected; counted, not dropped silently).
    public private(set) var malformed = 0

    init(ring: RingBuffer) { self.ring = ring }

    /// Waits up to `timeoutMs` and hands over every event ready.
    @discardableResult
    public func poll(timeoutMs: Int32, _ body: (MemcachedEvent) -> Void) throws -> Int {
        var bad = 0
        let n = try ring.poll(timeoutMs: timeoutMs) { record in
            if let event = MemcachedEvent(record: record) { body(event) } else { bad += 1 }
        }
        malformed += bad
        return n
    }
}
