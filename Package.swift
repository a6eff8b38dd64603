// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "cxl-bmc",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "cxl-bmc", targets: ["cxl-bmc"]),
        .executable(name: "mc-load", targets: ["mc-load"]),
        .executable(name: "peering-bench", targets: ["peering-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-async-algorithms", from: "1.1.4"),
    ],
    targets: [
        // The ABI shared with the BPF programs: bpf/include is both the BPF
        // include directory and this C module, so every struct is defined once.
        .target(name: "CXLBMCABI", path: "bpf/include", sources: ["abi_check.c"], publicHeadersPath: "."),

        // System libraries from Debian (libbpf-dev, libxdp-dev).
        .systemLibrary(name: "CLibBPF", pkgConfig: "libbpf", providers: [.apt(["libbpf-dev"])]),
        .systemLibrary(name: "CLibXDP", pkgConfig: "libxdp", providers: [.apt(["libxdp-dev"])]),
        // Small C shim over libbpf's macros (LIBBPF_OPTS) and variadic calls.
        .target(name: "CLoaderShim", dependencies: ["CLibBPF", "CLibXDP"]),

        // Compiles bpf/**/*.bpf.c with the toolchain's clang during `swift build`
        // and embeds the objects in the binary.
        .executableTarget(name: "bpf-embed", path: "Plugins/bpf-embed"),
        .plugin(name: "BPFCompiler", capability: .buildTool(), dependencies: ["bpf-embed"]),
        .target(name: "BPFObjects", plugins: ["BPFCompiler"]),

        // libbpf/libxdp wrapper: objects, maps, pins, XDP/TC attach, test runs.
        .target(
            name: "Loader",
            dependencies: [
                "CLibBPF", "CLibXDP", "CLoaderShim", "CXLBMCABI", "BPFObjects",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        .executableTarget(
            name: "cxl-bmc",
            dependencies: [
                "Loader", "CXLBMCABI", "MemcachedProbes", "MemcacheClient", "L3Sync", "Peering", "CXLTier", "L3Cluster",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "AsyncAlgorithms", package: "swift-async-algorithms"),
            ]
        ),

        // Where to put uprobes in a (possibly stripped) memcached: ELF symbols,
        // build-id debug files, or a shipped offset table checked against the
        // functions' prologue bytes.
        .target(name: "ProbeTargets", resources: [.copy("Offsets")]),

        // Uprobes on vanilla memcached (bpf/uprobe): targets, attach, typed events.
        .target(
            name: "MemcachedProbes",
            dependencies: [
                "Loader", "ProbeTargets", "CXLBMCABI", "MemcacheClient",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        // L3 kept in step with memcached: write-through from its events, promotion on misses.
        .target(name: "L3Sync", dependencies: ["MemcachedProbes", "MemcacheClient", "CXLTier", "Loader"]),
        // L3 over every node's partition: per-key access paths (local, direct read, network),
        // replication, failover; the partition served to peers.
        .target(
            name: "L3Cluster",
            dependencies: [
                "L3Sync", "Peering", "CXLTier",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),

        // memcached client for tests, the stale-read checker and benchmarks.
        .target(name: "MemcacheClient"),
        .executableTarget(
            name: "mc-load",
            dependencies: [
                "MemcacheClient",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        .testTarget(name: "LoaderTests", dependencies: ["Loader", "CXLBMCABI", "BPFObjects"]),
        // Packet builder and an unattached L1 for fixtures and benchmarks.
        .target(name: "L1TestSupport", dependencies: ["Loader", "CXLBMCABI"]),
        .executableTarget(
            name: "cxl-bmc-bench",
            dependencies: [
                "L1TestSupport", "Loader", "CXLBMCABI",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        .testTarget(name: "L1FixtureTests", dependencies: ["L1TestSupport", "Loader", "CXLBMCABI"]),
        .testTarget(
            name: "L3ClusterTests",
            dependencies: [
                "L3Cluster", "L3Sync", "CXLTier", "Peering",
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // Processes, the netns test bed and mc-load's results, shared by the end-to-end test targets.
        .target(name: "NetnsTestSupport", path: "Tests/NetnsTestSupport"),
        .testTarget(name: "IntegrationTests", dependencies: ["NetnsTestSupport", "MemcacheClient", "MemcachedProbes", "Loader", "ProbeTargets", "L3Sync", "CXLTier", "Peering"]),
        .testTarget(name: "ProbeTargetsTests", dependencies: ["ProbeTargets"]),
        // Fault injection, the mini-soak and the threat model's checks (issue 7): the daemon, memcached
        // and the pool killed, damaged or starved under load. Support/ is a copy of IntegrationTests'.
        .testTarget(name: "FaultTests", dependencies: ["NetnsTestSupport", "MemcacheClient", "CXLTier"]),

        // L3 across hosts: cluster config, placement (consistent hashing), and the
        // network transport (memcached meta protocol over TCP after a PSK handshake).
        .target(
            name: "Peering",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "peering-bench",
            dependencies: [
                "Peering", "L3Cluster", "L3Sync", "CXLTier",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(
            name: "PeeringTests",
            dependencies: [
                "Peering",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),

        // L3: the item store in (emulated) CXL memory. libnuma and libdaxctl for the NUMA and
        // devdax regions; a C shim for crc32c (SSE4.2), atomics and cache-line flushes.
        .systemLibrary(name: "CNuma", pkgConfig: "numa", providers: [.apt(["libnuma-dev"])]),
        .systemLibrary(name: "CDaxctl", pkgConfig: "libdaxctl", providers: [.apt(["libdaxctl-dev"])]),
        .target(name: "CCXLTierShim"),
        .target(name: "CXLTier", dependencies: ["CCXLTierShim", "CNuma", "CDaxctl"]),
        // Writer/reader/verifier processes for the multi-process and kill -9 tests.
        .executableTarget(
            name: "cxl-tier-tool",
            dependencies: ["CXLTier", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        // The CXLTier benchmark against a Swift Dictionary baseline (release build).
        .executableTarget(name: "cxl-tier-bench", dependencies: ["CXLTier", "CCXLTierShim"]),
        .testTarget(
            name: "CXLTierTests",
            dependencies: ["CXLTier", "CCXLTierShim", .product(name: "PropertyBased", package: "swift-property-based")]
        ),

        // Packet fuzzing against a reference model (issue 7): the model, the fuzzer, its CLI and tests.
        .target(name: "L1Model"),
        .target(name: "L1Fuzz", dependencies: ["L1Model", "L1TestSupport", "Loader"]),
        .executableTarget(name: "l1-fuzz", dependencies: ["L1Fuzz"]),
        .testTarget(name: "L1FuzzTests", dependencies: ["CXLBMCABI", "L1Fuzz", "L1Model", "L1TestSupport", "Loader"]),
    ]
)
