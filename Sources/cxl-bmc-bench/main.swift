import ArgumentParser
import CXLBMCABI
import Foundation
import L1TestSupport
import Loader

/// Benchmarks of the L1 programs themselves, through BPF_PROG_TEST_RUN: the
/// kernel times the loaded program on one frame, with no network and no
/// scheduler in the way. Each call runs the program once: with `repeat` the
/// kernel would rerun it on the frame it already rewrote into a reply.
@main
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cxl-bmc-bench",
        abstract: "Time the L1 XDP and TC programs per packet with BPF_PROG_TEST_RUN (needs root).",
        discussion: """
            Each case primes L1 the way traffic would (a TCP set, its STORED, a UDP GET miss \
            and memcached's reply), then runs one frame `--runs` times, one run per call, \
            and reports the median of the kernel's timings.
            """)

    @Option(help: "Timed runs per case; the median is reported.") var runs: Int = 20_000
    @Flag(help: "Print one JSON object instead of a table.") var json = false

    struct Case {
        let name: String
        let program: String
        let expectAction: UInt32
        /// The frame of run `i`.
        let frame: (Int) -> [UInt8]
        /// Untimed set-up before run `i`, so every run meets the same state.
        var prepare: ((Int) throws -> Void)? = nil

        init(_ name: String, _ program: String, _ expectAction: UInt32, frame: [UInt8]) {
            self.init(name, program, expectAction, frames: { _ in frame })
        }
        init(_ name: String, _ program: String, _ expectAction: UInt32, frames: @escaping (Int) -> [UInt8],
             prepare: ((Int) throws -> Void)? = nil) {
            self.name = name
            self.program = program
            self.expectAction = expectAction
            self.frame = frames
            self.prepare = prepare
        }
    }

    func run() throws {
        // Keys written before attach have no known TTL: let the fill case
        // cache them (its keys are new each run).
        let l1 = try L1Harness(sets: 4096, unknownTTL: 60_000_000_000)
        var peers = Peers()
        let small = String(repeating: "s", count: 64)
        let large = String(repeating: "L", count: 1024)
        try l1.prime(&peers, key: "key:small", value: small, id: 1)
        try l1.prime(&peers, key: "key:large", value: large, id: 2)
        for i in 0..<4 { try l1.prime(&peers, key: "key:m\(i)", value: small, id: UInt16(10 + i)) }

        // A TCP stream whose next segment is always the one timed.
        var stream = Peers(tcpPort: 50100)
        let setSegment = stream.send("set key:other 0 0 64\r\n\(small)\r\n").bytes
        let synBefore = Peers(tcpPort: 50100).syn()
        let fillPeers = Peers(clientPort: 41000)

        let cases = [
            Case("hit, 64 B value", "xdp", XDP_TX_ACTION, frame: peers.request(id: 100, "get key:small\r\n").bytes),
            Case("hit, 1 KB value", "xdp", XDP_TX_ACTION, frame: peers.request(id: 101, "get key:large\r\n").bytes),
            Case("hit, 4 keys × 64 B", "xdp", XDP_TX_ACTION,
                 frame: peers.request(id: 102, "get key:m0 key:m1 key:m2 key:m3\r\n").bytes),
            Case("miss (ticket taken)", "xdp", XDP_PASS_ACTION, frame: peers.request(id: 103, "get key:absent\r\n").bytes),
            Case("TCP set segment, 64 B", "xdp", XDP_PASS_ACTION, frames: { _ in setSegment },
                 prepare: { _ in try l1.ingress(synBefore) }),
            Case("egress fill, 64 B reply", "tc", TC_OK_ACTION,
                 frames: { i in fillPeers.reply(id: UInt16(truncatingIfNeeded: i), "VALUE f\(i) 0 64\r\n\(small)\r\nEND\r\n").bytes },
                 prepare: { i in try l1.ingress(fillPeers.request(id: UInt16(truncatingIfNeeded: i), "get f\(i)\r\n")) }),
        ]
        var results: [(String, Double)] = []
        for c in cases {
            let program = c.program == "xdp" ? l1.xdp : l1.tc
            var samples: [Double] = []
            samples.reserveCapacity(runs)
            for i in 0..<max(1, runs) {
                try c.prepare?(i)
                let run = try program.testRun(packet: c.frame(i))
                guard run.action == c.expectAction else {
                    throw ValidationError("\(c.name): action \(run.action), expected \(c.expectAction)")
                }
                samples.append(Double(run.durationNs))
            }
            samples.sort()
            results.append((c.name, samples[samples.count / 2]))
        }
        if json {
            let fields = results.map { "\"\($0.0)\": \(String(format: "%.0f", $0.1))" }.joined(separator: ", ")
            print("{\"ns_per_run\": {\(fields)}, \"runs\": \(runs)}")
        } else {
            print("L1 program time per packet (BPF_PROG_TEST_RUN, median of \(runs) single runs)")
            for (name, ns) in results {
                print("  " + name.padding(toLength: 28, withPad: " ", startingAt: 0) + String(format: "%6.0f ns", ns))
            }
        }
    }
}
