import Foundation
import L1Fuzz

/// l1-fuzz: random and mutated packets through L1's XDP and TC programs,
/// each compared with the reference model (Sources/L1Model).
///   l1-fuzz [--seed N] [--packets N] [--json]
/// Exits 1 if any divergence is not in L1Fuzz.knownDivergences.

var seed: UInt64 = 1
var packets = 1_000_000
var json = false
var args = CommandLine.arguments.dropFirst()
func usage() -> Never {
    FileHandle.standardError.write(Data("usage: l1-fuzz [--seed N] [--packets N] [--json]\n".utf8))
    exit(2)
}
while let a = args.popFirst() {
    switch a {
    case "--seed": guard let v = args.popFirst().flatMap({ UInt64($0) }) else { usage() }; seed = v
    case "--packets": guard let v = args.popFirst().flatMap({ Int($0) }), v >= 0 else { usage() }; packets = v
    case "--json": json = true
    case "-h", "--help": usage()
    default: usage()
    }
}
guard geteuid() == 0 else {
    FileHandle.standardError.write(Data("l1-fuzz: BPF_PROG_TEST_RUN needs root\n".utf8))
    exit(2)
}

do {
    let fuzz = try L1Fuzz(seed: seed)
    // Progress on stderr every 1 M packets for long runs.
    var done = 0
    while done < packets {
        let chunk = min(1_000_000, packets - done)
        try fuzz.run(packets: chunk)
        done += chunk
        if !json && packets > 1_000_000 {
            let r = fuzz.report
            FileHandle.standardError.write(Data("\(done) packets, \(Int(r.packetsPerSecond)) /s, \(r.hits) hits, \(r.unexpectedDivergences) unexpected divergences\n".utf8))
        }
    }
    let r = fuzz.report
    if json {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        print(String(decoding: try enc.encode(r), as: UTF8.self))
    } else {
        print("seed \(r.seed): \(r.packets) packets in \(String(format: "%.1f", r.seconds)) s (\(Int(r.packetsPerSecond)) packets/s)")
        print("well-formed GETs \(r.wellFormedGets), hits \(r.hits) (\(String(format: "%.1f", r.hitFraction * 100)) %), passes \(r.passes) (\(r.uncertainPasses) of keys the model was unsure of), TC runs \(r.tcRuns) (refused by the kernel \(r.tcRefused)), primes \(r.primes)")
        for (family, n) in r.perFamily.sorted(by: { $0.key < $1.key }) { print("  \(family): \(n)") }
        print("divergences: \(r.unexpectedDivergences) unexpected, \(r.knownDivergences) known")
        print("L1 emptied itself after: " + r.emptiedBy.sorted(by: { $0.key < $1.key }).map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        for (kind, n) in r.divergencesByKind.sorted(by: { $0.key < $1.key }) { print("  \(kind): \(n)") }
        for d in r.examples {
            print("[\(d.known ? "known" : "UNEXPECTED")] \(d.kind) (\(d.family), packet \(d.packetIndex)): \(d.detail.prefix(400))\n  frame \(d.frameHex)")
        }
    }
    exit(r.unexpectedDivergences == 0 ? 0 : 1)
} catch {
    FileHandle.standardError.write(Data("l1-fuzz: \(error)\n".utf8))
    exit(2)
}
