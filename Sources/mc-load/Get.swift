import ArgumentParser
import MemcacheClient

/// One GET, over UDP or TCP, printed.
struct Get: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "GET keys once over UDP or TCP and print the values.")

    @OptionGroup var target: ServerOptions

    @Flag(help: "Use UDP (default TCP).")
    var udp = false

    @Flag(help: "Use gets: include cas uniques.")
    var cas = false

    @Option(help: "Milliseconds to wait for the reply.")
    var timeoutMs: Int = 1000

    @Flag(help: "Print a JSON object on the last line.")
    var json = false

    @Argument(help: "Keys to get.")
    var keys: [String]

    struct Item: Encodable {
        var key: String
        var flags: UInt32
        var bytes: Int
        var cas: UInt64?
        /// The value as UTF-8, invalid bytes replaced.
        var value: String
    }

    struct Result: Encodable {
        var command = "get"
        var server: String
        var transport: String
        var hits: [Item]
        var misses: [String]
        /// UDP only: how many datagrams the reply took.
        var datagrams: Int?
    }

    func validate() throws {
        guard !keys.isEmpty else { throw ValidationError("give at least one key") }
    }

    func run() throws {
        let timeout = Duration.milliseconds(timeoutMs)
        let values: [MemcacheValue]
        var result: Result
        if udp {
            let client = try MemcacheUDPClient(host: target.server, port: target.port, timeout: timeout)
            let response = try client.get(keys, withCAS: cas)
            values = try response.reply.get().values
            result = Result(server: client.server.description, transport: "udp", hits: [], misses: [],
                            datagrams: response.datagrams.count)
        } else {
            let client = try MemcacheTCPClient(host: target.server, port: target.port, timeout: timeout)
            values = cas ? try client.gets(keys) : try client.get(keys)
            result = Result(server: client.server.description, transport: "tcp", hits: [], misses: [])
        }
        result.hits = values.map {
            Item(key: $0.key, flags: $0.flags, bytes: $0.data.count, cas: $0.cas, value: String(decoding: $0.data, as: UTF8.self))
        }
        result.misses = keys.filter { key in !values.contains { $0.key == key } }

        var summary = result.hits.map { item in
            "\(item.key) flags=\(item.flags) bytes=\(item.bytes)\(item.cas.map { " cas=\($0)" } ?? ""): \(item.value.prefix(60).debugDescription)"
        }
        summary += result.misses.map { "\($0): miss" }
        try report(summary, result, json: json)
    }
}
