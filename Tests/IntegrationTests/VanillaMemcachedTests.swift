import Foundation
@testable import NetnsTestSupport
import Testing

/// Vanilla memcached in the netns testbed, driven by `mc-load` from the client namespace: the
/// baseline every accelerated run must match. Needs root; skipped without it, failed under CI.
@Suite(.serialized, .enabled(if: Privilege.shouldRun, "needs root for network namespaces"))
struct VanillaMemcachedTests {
    enum Family: String, CaseIterable {
        case ipv4, ipv6
        func server(_ testbed: Testbed) -> String { self == .ipv4 ? testbed.serverIP4 : testbed.serverIP6 }
    }

    @Test func testbedIsSetUpAndTornDown() throws {
        var name = ""
        var pid: Int32 = 0
        try Testbed.with { testbed in
            name = testbed.name
            pid = try testbed.startMemcached()
            // XDP_TX on veth reaches only a peer in NAPI mode, which GRO provides.
            let features = try testbed.runInClient("/usr/sbin/ethtool", ["-k", testbed.clientIF])
            #expect(features.stdout.contains("generic-receive-offload: on"), "\(features)")
            #expect(isRunning(pid))
        }
        #expect(!FileManager.default.fileExists(atPath: "/run/netns/\(name)-srv"))
        #expect(!FileManager.default.fileExists(atPath: "/run/netns/\(name)-cli"))
        #expect(!isRunning(pid), "memcached \(pid) outlived its testbed")
    }

    /// Whether `pid` exists and is not a zombie (a daemon's zombie waits for init to reap it).
    private func isRunning(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let afterName = stat.range(of: ") ")
        else { return false }
        return stat[afterName.upperBound...].first != "Z"
    }

    @Test(arguments: Family.allCases)
    func udpGetsAreAnsweredByteExact(family: Family) throws {
        try Testbed.with { testbed in
            try testbed.startMemcached()
            let server = family.server(testbed)
            let common = ["--server", server, "--keys", "200", "--value-size", "64", "--json"]
            let populate = try testbed.mcLoad(["populate"] + common)
            #expect(populate.status == 0, "\(populate)")

            // A reply lost for good still counts as a timeout; one delayed by a stall of this shared
            // machine (netns teardown of earlier tests, a busy core) does not: UDP has no retransmit.
            let run = try testbed.mcLoad(["load", "--duration", "1", "--inflight", "4", "--validate", "--timeout-ms", "2000"] + common)
            #expect(run.status == 0, "\(run)")
            let load = try run.json(McLoad.Load.self)
            #expect(load.replies > 100)
            #expect(load.hits == load.replies)
            #expect(load.misses == 0)
            #expect(load.timeouts == 0)
            #expect(load.validationErrors == 0)
            #expect(load.errors == 0)
        }
    }

    @Test(arguments: Family.allCases)
    func tcpSetAndGet(family: Family) throws {
        try Testbed.with { testbed in
            try testbed.startMemcached()
            let server = family.server(testbed)
            let run = try testbed.mcLoad(["populate", "--server", server, "--keys", "500", "--value-size", "100",
                                          "--verify", "--json"])
            #expect(run.status == 0, "\(run)")
            let populate = try run.json(McLoad.Populate.self)
            #expect(populate.stored == 500)
            #expect(populate.verified == 500)
            #expect(populate.verifyErrors == 0)

            let get = try testbed.mcLoad(["get", "--server", server, "--json", "k7", "absent"]).json(McLoad.Get.self)
            #expect(get.hits.map(\.key) == ["k7"])
            #expect(get.hits.first?.bytes == 100)
            #expect(get.misses == ["absent"])
        }
    }

    @Test func multiDatagramRepliesAreReassembled() throws {
        try Testbed.with { testbed in
            try testbed.startMemcached()
            let common = ["--server", testbed.serverIP4, "--keys", "10", "--value-size", "3000", "--prefix", "big", "--json"]
            let populate = try testbed.mcLoad(["populate"] + common)
            #expect(populate.status == 0, "\(populate)")

            // 3000 bytes take three datagrams of at most 1400.
            let get = try testbed.mcLoad(["get", "--udp", "--server", testbed.serverIP4, "--json", "big3"]).json(McLoad.Get.self)
            #expect(get.hits.first?.bytes == 3000)
            #expect(get.datagrams == 3)

            let run = try testbed.mcLoad(["load", "--duration", "1", "--inflight", "2", "--multiget", "2", "--validate",
                                          "--timeout-ms", "2000"] + common)
            #expect(run.status == 0, "\(run)")
            let load = try run.json(McLoad.Load.self)
            #expect(load.replies > 10)
            #expect(load.hits == 2 * load.replies)
            #expect(load.datagrams >= 6 * load.replies)
            #expect(load.validationErrors == 0)
            #expect(load.timeouts == 0)
        }
    }

    /// The lean client (the benchmark's) counts what the full client counts: the same seeded
    /// sequence over 200 keys of which only 150 exist gives the same hits and misses, with
    /// single- and three-datagram values.
    @Test(arguments: [64, 3000])
    func leanLoadCountsHitsAndMissesAsTheFullClient(valueSize: Int) throws {
        try Testbed.with { testbed in
            try testbed.startMemcached()
            let populate = try testbed.mcLoad(["populate", "--server", testbed.serverIP4, "--keys", "150",
                                               "--value-size", String(valueSize), "--json"])
            #expect(populate.status == 0, "\(populate)")
            let common = ["load", "--server", testbed.serverIP4, "--keys", "200", "--value-size", String(valueSize),
                          "--zipf", "0", "--duration", "30", "--max-requests", "3000", "--inflight", "4",
                          "--seed", "11", "--timeout-ms", "2000", "--json"]
            let full = try testbed.mcLoad(common).json(McLoad.Load.self)
            let leanRun = try testbed.mcLoad(common + ["--lean"])
            #expect(leanRun.status == 0, "\(leanRun)")
            let lean = try leanRun.json(McLoad.Load.self)
            #expect(lean.requests == 3000)
            #expect(lean.timeouts == 0 && full.timeouts == 0)
            #expect(lean.errors == 0)
            #expect(lean.replies == 3000)
            #expect(lean.misses > 0 && lean.hits > lean.misses, "keys 150..<200 are absent")
            #expect(lean.hits == full.hits)
            #expect(lean.misses == full.misses)
            #expect(lean.datagrams >= (valueSize > 1400 ? 3 * lean.hits : lean.replies))

            let refused = try testbed.mcLoad(common + ["--lean", "--validate"])
            #expect(refused.status != 0, "--lean does not read values: --validate is refused")
        }
    }

    @Test func staleCheckFindsNothingStaleInVanillaMemcached() throws {
        try Testbed.with { testbed in
            try testbed.startMemcached()
            let run = try testbed.mcLoad(["stale-check", "--server", testbed.serverIP4, "--keys", "8",
                                          "--duration", "2", "--readers", "1", "--json"])
            #expect(run.status == 0, "\(run)")
            let check = try run.json(McLoad.StaleCheck.self)
            #expect(check.stale == 0)
            #expect(check.corrupt == 0)
            #expect(check.reads > 100)
            #expect(check.hits >= check.reads)
            #expect(check.writes > 100)
        }
    }

    /// The checker itself: reading from a second memcached that the writer does not update must be
    /// caught as stale, and one holding values of the wrong form as corrupt.
    @Test func staleCheckCatchesStaleAndCorruptValues() throws {
        try Testbed.with { testbed in
            try testbed.startMemcached()
            try testbed.startMemcached(["-t", "1", "-p", "11212", "-U", "11212"])
            let base = ["stale-check", "--server", testbed.serverIP4, "--keys", "4", "--readers", "1", "--json"]

            // Old versions in the second server, then write newer ones to the first and read the second.
            let prime = try testbed.mcLoad(base + ["--port", "11212", "--duration", "0.2"])
            #expect(prime.status == 0, "\(prime)")
            let stale = try testbed.mcLoad(base + ["--udp-port", "11212", "--duration", "1.5"])
            #expect(stale.status == 1, "\(stale)")
            #expect(try stale.json(McLoad.StaleCheck.self).stale > 0)

            let overwrite = try testbed.mcLoad(["populate", "--server", testbed.serverIP4, "--port", "11212",
                                                "--keys", "4", "--value-size", "64", "--prefix", "stale:"])
            #expect(overwrite.status == 0, "\(overwrite)")
            let corrupt = try testbed.mcLoad(base + ["--udp-port", "11212", "--duration", "0.3"])
            #expect(corrupt.status == 1, "\(corrupt)")
            #expect(try corrupt.json(McLoad.StaleCheck.self).corrupt > 0)
        }
    }
}
