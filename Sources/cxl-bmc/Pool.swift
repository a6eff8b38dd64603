import ArgumentParser
import CXLTier
import Peering

#if canImport(Glibc)
import Glibc
#endif

/// `cxl-bmc pool …`: create, inspect and check L3 pools (CXLTier).
struct PoolCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pool",
        abstract: "Create, inspect and check an L3 pool (the CXLTier item store).",
        discussion: """
            A pool is a file in /dev/shm or on hugetlbfs (the emulated CXL memory), a devdax \
            device, or NUMA memory; these commands work on pool files. The format is described \
            in docs/CXLTier.md.
            """,
        subcommands: [Create.self, Inspect.self, Check.self]
    )

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a pool file (mode 0600) and lay out its partitions.",
            discussion: """
                Without --config the pool has one partition, owned by node 0. With --config, one \
                partition per nodeN=ADDR:PORT:CXL_BASE:CXL_SIZE line, over that node's slice; the \
                pool header page (4 KiB) lives at the start of the slice that covers offset 0. \
                With nodeN.domain= options, only the nodes of local_node_id's CXL domain: create \
                each domain's pool with a config of one of its nodes.
                """
        )

        /// A full cluster config (Peering's: per-node domain, weight, auth options) lays out the
        /// slices of the local node's CXL domain — nodes of other domains map another pool and may
        /// reuse the same offsets. A file that is only a layout (the seed's nodeN= lines) gives
        /// every node's slice.
        static func slices(_ text: String, path: String) throws -> [SliceSpec] {
            let directory = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
            do {
                let cluster = try ClusterConfig.parse(text, source: path, baseDirectory: directory)
                return cluster.sameDomainNodes.map { SliceSpec(ownerNode: $0.id, base: Int($0.cxlBase), size: Int($0.cxlSize)) }
            } catch let clusterError {
                // A file using per-node options is a cluster config: its own error is the helpful one.
                if text.contains(/(?m)^\s*node\d+\.[a-z]+\s*=/) { throw clusterError }
                return try PoolLayoutConfig(parsing: text).slices
            }
        }

        @Argument(help: "Path of the pool file to create (it must not exist).") var path: String
        @Option(help: ArgumentHelp("Pool size in bytes; K, M, G suffixes (binary).", valueName: "SIZE")) var size: String
        @Option(help: ArgumentHelp("nodes.conf whose node lines name the slices.", valueName: "FILE")) var config: String?
        @Option(help: ArgumentHelp("Log bytes provisioned per index slot (expected item footprint; default \(PoolFormat.defaultBytesPerSlot)); sets the index size as --hash-table does.", valueName: "BYTES"))
        var bytesPerSlot: Int?
        @Option(
            name: [.customShort("t"), .customLong("hash-table")],
            help: ArgumentHelp(
                "Index buckets (8 items each) per partition: at least N in the smallest partition, as close as its size allows (larger partitions get proportionally more); the rest is log. Default: one bucket per \(L3IndexSize.bytesPerBucket(bytesPerSlot: PoolFormat.defaultBytesPerSlot)) bytes.",
                valueName: "N"))
        var hashTable: Int?

        func validate() throws {
            if bytesPerSlot != nil && hashTable != nil {
                throw ValidationError("--bytes-per-slot and --hash-table both set the index size: give one")
            }
            if let hashTable { try L3IndexSize.validate(hashTable) }
        }

        func run() throws {
            try CLI.run {
                guard let bytes = parseSize(size), bytes > 0 else { throw ValidationError("--size '\(size)' is not a size (e.g. 4096, 64M, 2G)") }
                var slices: [SliceSpec] = []
                if let config {
                    guard let f = fopen(config, "r") else { throw CXLTierError.system(operation: "open", target: config, errno: errno) }
                    var text: [UInt8] = []
                    var buffer = [UInt8](repeating: 0, count: 4096)
                    while case let n = fread(&buffer, 1, buffer.count, f), n > 0 { text += buffer[..<n] }
                    fclose(f)
                    slices = try Self.slices(String(decoding: text, as: UTF8.self), path: config)
                }
                let slotBytes = try hashTable.map {
                    try L3IndexSize.bytesPerSlot(buckets: $0, partitionSizes: L3IndexSize.partitionSizes(poolSize: bytes, slices: slices))
                } ?? bytesPerSlot ?? PoolFormat.defaultBytesPerSlot
                let pool = try CXLTier.Pool.create(path: path, size: bytes, slices: slices, bytesPerSlot: slotBytes)
                print("created \(path): \(pool.region.size) bytes\(pool.region.size != bytes ? " (rounded up to the huge page size of its hugetlbfs)" : ""), \(pool.partitions.count) partition(s)")
                for g in pool.partitions { print("  " + Inspect.describe(g)) }
            }
        }
    }

    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a pool's partitions: owner, geometry, fill, items and checksum failures."
        )

        @Argument(help: "The pool file.") var path: String

        func run() throws {
            try CLI.run {
                let region = try ShmRegion(opening: path)
                let report = PoolCheck.check(region)
                print("\(path): \(report.poolSize) bytes, format version \(report.formatVersion), \(report.partitions.count) partition(s)")
                for p in report.partitions {
                    print("  " + Self.describe(p.geometry))
                    let permille = p.stats.logSize > 0 ? p.stats.logUsed * 1000 / p.stats.logSize : 0
                    let writer = p.writerPID != 0 ? "writer pid \(p.writerPID)" : (p.cleanShutdown ? "no writer (clean)" : "no writer")
                    print("    log \(p.stats.logUsed)/\(p.stats.logSize) bytes (\(permille / 10).\(permille % 10)%), epoch \(p.stats.epoch), \(writer)")
                    print("    items \(p.liveItems) live, \(p.tombstones) tombstones, \(p.expiredItems) expired; \(p.slotsUsed) index slots used of \(p.geometry.bucketCount * PoolFormat.slotsPerBucket)")
                    print("    stats: puts \(p.stats.puts), deletes \(p.stats.deletes), reclaimed \(p.stats.reclaimed), second chances (CLOCK) \(p.stats.secondChances), expired \(p.stats.expired), index evictions \(p.stats.indexEvictions), items \(p.stats.items), bytes \(p.stats.bytes)")
                    print("    log walk: \(p.scannedItems) live items, \(p.scannedBytes) key+value bytes\(p.scannedItems == Int(p.stats.items) && p.scannedBytes == Int(p.stats.bytes) ? " (as the writer counts)" : " (the writer counts \(p.stats.items) items, \(p.stats.bytes) bytes)")")
                    print("    checksum failures: \(p.checksumFailures) damaged run(s), \(p.damagedBytes) bytes (writer counted \(p.stats.checksumFailures))")
                }
                for d in report.damage { print("  damage: \(d)") }
            }
        }

        static func describe(_ g: PartitionGeometry) -> String {
            "partition \(g.id): node \(g.ownerNode), offset 0x\(String(g.offset, radix: 16)), \(g.size) bytes, \(g.bucketCount) buckets, log \(g.logSize) bytes"
        }
    }

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate every header, record and index slot of a pool; optionally repair.",
            discussion: """
                Prints each piece of damage with its pool offset. Exit status: 0 clean; 1 the \
                check could not run (e.g. no such file, or --repair on a partition with a live \
                writer); 2 damage found (and, with --repair, not all of it repaired); 3 damage \
                found and repaired (the pool now checks clean). \
                --repair rewrites a damaged pool or partition header from its copies, turns \
                damaged log bytes into padding and rebuilds the indexes; it refuses partitions \
                that have a live writer.
                """
        )

        @Argument(help: "The pool file.") var path: String
        @Flag(help: "Repair what is found.") var repair = false

        func run() throws {
            var status: Int32 = 0
            try CLI.run {
                let region = try ShmRegion(opening: path)
                let report = PoolCheck.check(region)
                for d in report.damage { print("damage: \(d)") }
                if report.isClean {
                    print("\(path): clean (\(report.partitions.reduce(0) { $0 + $1.liveItems }) live items in \(report.partitions.count) partition(s))")
                    return
                }
                status = 2
                guard repair else {
                    print("\(path): \(report.damage.count) problem(s) found; run with --repair to fix")
                    return
                }
                let after = try PoolCheck.repair(region)
                for d in after.damage { print("still damaged: \(d)") }
                if after.isClean {
                    status = 3
                    print("\(path): repaired (\(after.partitions.reduce(0) { $0 + $1.liveItems }) live items)")
                }
            }
            if status != 0 { throw ExitCode(status) }
        }
    }
}
