import ArgumentParser
import Foundation

@main
struct MCLoad: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mc-load",
        abstract: "Populate, load and check a memcached server (and the XDP cache in front of it).",
        discussion: """
            Every subcommand prints a summary; with --json the last line is one JSON object.
            Values written by populate are derived from the key, so load --validate checks them byte for byte.
            """,
        subcommands: [Populate.self, Load.self, StaleCheck.self, Mixed.self, Get.self, Raw.self, Latency.self]
    )
}

/// Where the server is.
struct ServerOptions: ParsableArguments {
    @Option(help: "Server IPv4 or IPv6 address.")
    var server: String

    @Option(help: "Server port (TCP and UDP).")
    var port: UInt16 = 11211
}

/// Prints the summary lines and, with `json`, `result` as one JSON object on the last line.
func report(_ summary: [String], _ result: some Encodable, json: Bool) throws {
    for line in summary { print(line) }
    if json {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        print(String(decoding: try encoder.encode(result), as: UTF8.self))
    }
}

extension Duration {
    /// Seconds as a `Double`.
    var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) * 1e-18
    }

    /// A duration of `seconds`, to the microsecond.
    static func seconds(fraction seconds: Double) -> Duration {
        .microseconds(Int64((seconds * 1e6).rounded()))
    }
}

/// `count` per second over `elapsed`, rounded to a whole number.
func rate(_ count: Int, _ elapsed: Duration) -> Double {
    elapsed > .zero ? (Double(count) / elapsed.seconds).rounded() : 0
}
