import ArgumentParser
import Dispatch
import Loader

#if canImport(Glibc)
import Glibc
#endif

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show L1's counters (per-CPU counters summed), and memcached's events and L3's when attach runs them.",
        discussion: "Reads the pinned mcache_stats map of IFACE, or of every attached interface, and what a running `attach --memcached/--pid` publishes in /run/cxl-bmc/IFACE.json (updated every second)."
    )

    @Argument(help: "The interface; all attached interfaces if omitted.")
    var interface: String?

    @Flag(help: "Print JSON: one object per sample, interface -> counter -> value (plus \"events\" and \"l3\" objects when attach runs the uprobes, and \"cluster\" and \"down_nodes\" with --config).")
    var json = false

    @Option(help: ArgumentHelp("Print a sample every SEC seconds until interrupted.", valueName: "SEC"))
    var watch: Double?

    @OptionGroup var pins: PinOptions

    func validate() throws {
        if let watch, !(watch > 0) { throw ValidationError("--watch must be positive") }
    }

    func run() throws {
        try CLI.run {
            try Privileges.check(for: "read L1 stats")
            let interfaces: [String]
            if let interface {
                interfaces = [interface]
            } else {
                interfaces = try L1Cache.status(pinRoot: pins.pinRoot).map(\.interface)
                if interfaces.isEmpty {
                    throw CLIError("cxl-bmc is not attached anywhere (no pin directories in \(pins.pinRoot))")
                }
            }
            var previous: [String: L1Stats] = [:]
            while true {
                var samples: [(String, L1Stats)] = []
                for name in interfaces {
                    samples.append((name, try L1Cache.stats(interface: name, pinRoot: pins.pinRoot)))
                }
                if json {
                    print(Self.json(samples))
                } else {
                    for (name, stats) in samples {
                        print(Self.table(name, stats, since: previous[name]))
                        // What the daemon attached there publishes: memcached's events, L3.
                        if let daemon = DaemonStatus.read(interface: name) {
                            print(daemon.lines.joined(separator: "\n"))
                        }
                    }
                }
                fflush(nil)
                guard let watch else { return }
                previous = Dictionary(uniqueKeysWithValues: samples)
                usleep(UInt32(min(watch, 3600) * 1_000_000))
            }
        }
    }

    static func table(_ interface: String, _ stats: L1Stats, since previous: L1Stats?) -> String {
        let width = stats.counters.map(\.label.count).max() ?? 0
        var lines = ["\(interface):"]
        for counter in stats.counters {
            var line = "  " + counter.label + String(repeating: " ", count: width - counter.label.count)
            line += "  \(counter.value)"
            if let before = previous?[counter.key] {
                line += "  (+\(counter.value &- before))"
            }
            lines.append(line)
        }
        return lines.joined(separator: "\n")
    }

    static func json(_ samples: [(String, L1Stats)]) -> String {
        /// The daemon's counters (name → value) as one JSON object, keys sorted.
        func object(_ counters: [String: UInt64]) -> String {
            "{" + counters.sorted { $0.key < $1.key }.map { "\"\($0.key)\":\($0.value)" }.joined(separator: ",") + "}"
        }
        let objects = samples.map { name, stats in
            var fields = stats.counters.map { "\"\($0.key)\":\($0.value)" }.joined(separator: ",")
            if let daemon = DaemonStatus.read(interface: name) {
                fields += ",\"events\":" + object(daemon.events)
                if let l3 = daemon.l3 { fields += ",\"l3\":" + object(l3) }
                if let cluster = daemon.cluster {
                    fields += ",\"cluster\":" + object(cluster)
                    fields += ",\"down_nodes\":[" + (daemon.downNodes ?? []).map(String.init).joined(separator: ",") + "]"
                }
            }
            return "\(jsonString(name)):{\(fields)}"
        }
        return "{" + objects.joined(separator: ",") + "}"
    }

    static func jsonString(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}

/// A plain CLI failure with a message for the user.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
