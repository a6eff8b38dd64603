import Foundation
import L1Model
import L1TestSupport
import Loader

/// A disagreement between L1 and the model that has been read and judged:
/// the fuzzer counts it apart and does not fail on it.
public struct KnownDivergence: Sendable {
    public let kind: String
    public let reason: String
}

/// Runs generated packets through L1's XDP (and TC) programs with
/// BPF_PROG_TEST_RUN, one run per packet, and compares each verdict and
/// output frame with the model's.
public final class L1Fuzz {
    /// Cases where L1 and the model disagree and the lead has to decide; see docs/reliability.md.
    public static let knownDivergences: [KnownDivergence] = []

    public static let sets: UInt32 = 1024

    /// L1's set index of a key, as the BPF side computes it: used only to give every primed key
    /// its own set.
    public static func setIndex(_ key: [UInt8], sets: UInt32) -> UInt32 {
        L1KeyHash.index(of: key, mask: sets - 1)
    }

    public struct Divergence: Codable, Sendable {
        public var kind: String
        public var family: String
        public var packetIndex: Int
        public var detail: String
        public var frameHex: String
        public var known: Bool
    }

    public struct Report: Codable, Sendable {
        public var seed: UInt64
        public var packets = 0
        public var seconds = 0.0
        public var packetsPerSecond = 0.0
        public var perFamily: [String: Int] = [:]
        public var wellFormedGets = 0
        public var hits = 0
        public var passes = 0
        /// Passes the model allowed only because a key was uncertain (answering was allowed too).
        public var uncertainPasses = 0
        public var tcRuns = 0
        /// Frames the kernel's test run would not take as an skb (EINVAL).
        public var tcRefused = 0
        public var tcRefusedExample: String?
        public var primes = 0
        /// Packets after which L1 had emptied itself (epoch bump), by family.
        public var emptiedBy: [String: Int] = [:]
        public var divergencesByKind: [String: Int] = [:]
        public var unexpectedDivergences = 0
        public var knownDivergences = 0
        public var examples: [Divergence] = []

        public var hitFraction: Double { wellFormedGets == 0 ? 0 : Double(hits) / Double(wellFormedGets) }
    }

    public let harness: L1Harness
    /// What the model believes L1 holds (tests may plant beliefs to check the checker).
    public var model = L1Model()
    public var generator: Generator
    public private(set) var report: Report
    private var primeCounter: UInt16 = 1
    private var sincePrime = 0
    private var primedEpoch: UInt32 = 0
    public var reprimeEvery = 2000
    public var maxExamplesPerKind = 3

    public init(seed: UInt64) throws {
        harness = try L1Harness(sets: Self.sets, hold: 0, noreplyHold: 0, inflightMax: 0)
        generator = Generator(seed: seed, items: Generator.universe(seed: seed, sets: Self.sets))
        report = Report(seed: seed)
        try prime()
    }

    /// Puts the items the model does not hold (all of them at first) into L1
    /// through the real path: a TCP `set` on a fresh stream, memcached's
    /// STORED at egress, then a UDP GET miss and memcached's reply, which fills.
    public func prime() throws {
        var peers = Peers(ipv6: false, clientPort: 41999, tcpPort: 50000)
        try harness.ingress(peers.syn())
        let missing = generator.items.filter { model.presence(of: $0.key) == nil }
        for item in missing {
            let set = Array("set ".utf8) + item.key + Array(" \(item.flags) 0 \(item.value.count)\r\n".utf8) + item.value + [13, 10]
            try harness.ingress(peers.send(set))
            try harness.egress(peers.answer("STORED\r\n"))
            let id = primeCounter
            primeCounter &+= 1
            let verb = item.cas == nil ? "get " : "gets "
            let request = Packet().eth().ipv4(src: "10.0.0.2", dst: "10.0.0.1").udp(sport: peers.clientPort, dport: L1Harness.port)
                .payload(Packet.frameHeader(id: id) + Array(verb.utf8) + item.key + [13, 10])
            try harness.ingress(request)
            let reply = Packet().eth(src: [0x02, 0, 0, 0, 0, 0x01], dst: [0x02, 0, 0, 0, 0, 0x02])
                .ipv4(src: "10.0.0.1", dst: "10.0.0.2").udp(sport: L1Harness.port, dport: peers.clientPort)
                .payload(Packet.frameHeader(id: id) + item.block(withCAS: true) + Array("END\r\n".utf8))
            try harness.egress(reply)
        }
        for item in missing { model.add(item) }
        primedEpoch = try harness.state().epoch
        report.primes += 1
        sincePrime = 0
    }

    /// Runs one frame through XDP (and TC when `tc`), checks it against the
    /// model, and updates the model. Returns the divergence found, if any.
    @discardableResult
    public func check(_ frame: [UInt8], family: Family, tc: Bool) throws -> Divergence? {
        let prediction = model.predict(frame)
        let run: BPFTestRun
        do { run = try harness.xdp.testRun(packet: frame) } catch {
            throw FuzzError.testRun("XDP on frame \(hex(frame)): \(error)")
        }
        if !prediction.getKeys.isEmpty { report.wellFormedGets += 1 }
        var kind: String?
        var detail = ""
        var answered = false
        if run.action == XDP_TX_ACTION {
            if let answer = prediction.answer, run.packet == answer {
                answered = true
                if prediction.unseenReason != nil {
                    kind = prediction.unseenReason!.hasPrefix("corrupt") ? "answersCorruptChecksum" : "answersSourcePort0"
                    detail = prediction.unseenReason!
                } else {
                    report.hits += 1
                }
            } else if prediction.answer == nil {
                kind = "answeredWhatMustPass"
                detail = "model passes (\(prediction.passReason)); L1 sent \(hex(run.packet))"
            } else {
                kind = "wrongReply"
                detail = "expected \(hex(prediction.answer!)); L1 sent \(hex(run.packet))"
            }
        } else if run.action == XDP_PASS_ACTION {
            report.passes += 1
            if run.packet != frame {
                kind = "passModifiedFrame"
                detail = "L1 passed \(hex(run.packet))"
            } else if prediction.mustAnswer && prediction.unseenReason == nil {
                kind = "missedHit"
                detail = "every key is held; model answers \(hex(prediction.answer!))"
            } else if prediction.answer != nil && prediction.unseenReason == nil {
                report.uncertainPasses += 1
            }
        } else {
            kind = "xdpVerdict\(run.action)"
            detail = "model: \(prediction.answer == nil ? "pass" : "answer")"
        }
        model.observe(prediction, answered: answered)
        if prediction.effect != .inert {
            // L1 empties itself (epoch bump) on what it cannot read exactly: once it
            // has, the model holds nothing either, and every GET must pass.
            let epoch = try harness.state().epoch
            if epoch != primedEpoch {
                model.forgetAll()
                primedEpoch = epoch
                report.emptiedBy[family.rawValue, default: 0] += 1
            }
        }

        if tc {
            // The kernel's test run refuses skbs whose network header is cut
            // short (EINVAL): such frames never reach TC from the stack.
            if let out = try? harness.tc.testRun(packet: frame) {
                report.tcRuns += 1
                if kind == nil, out.action != TC_OK_ACTION || out.packet != frame {
                kind = "tcModifiedFrame"
                    detail = "TC verdict \(out.action), frame \(out.packet == frame ? "unchanged" : hex(out.packet))"
                }
            } else {
                report.tcRefused += 1
                if report.tcRefusedExample == nil { report.tcRefusedExample = hex(frame) }
            }
        }
        report.packets += 1
        report.perFamily[family.rawValue, default: 0] += 1
        guard let kind else { return nil }
        let known = Self.knownDivergences.contains { $0.kind == kind }
        if known { report.knownDivergences += 1 } else { report.unexpectedDivergences += 1 }
        report.divergencesByKind[kind, default: 0] += 1
        let d = Divergence(kind: kind, family: family.rawValue, packetIndex: report.packets - 1, detail: detail,
                           frameHex: hex(frame), known: known)
        if report.examples.filter({ $0.kind == kind }).count < maxExamplesPerKind { report.examples.append(d) }
        return d
    }

    /// Generates and checks `count` packets, re-priming L1 whenever the model
    /// knows too few of its items (so GETs keep hitting) and every `reprimeEvery` packets.
    public func run(packets count: Int) throws {
        let start = Date()
        for _ in 0..<count {
            let (family, frame) = generator.next()
            // TC sees memcached's replies, and a sample of everything else.
            try check(frame, family: family, tc: family == .reply || report.packets % 8 == 0)
            sincePrime += 1
            let missing = generator.items.count - model.knownCount
            if missing * 4 > generator.items.count || (missing > 0 && sincePrime >= reprimeEvery) { try prime() }
        }
        report.seconds += Date().timeIntervalSince(start)
        report.packetsPerSecond = Double(report.packets) / max(report.seconds, 1e-9)
    }

    public func makeFrame(_ family: Family) -> [UInt8] { generator.make(family) }
}

public enum FuzzError: Error { case testRun(String) }

public func hex(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out = [UInt8]()
    out.reserveCapacity(bytes.count * 2)
    for b in bytes { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 15)]) }
    return String(decoding: out, as: UTF8.self)
}
