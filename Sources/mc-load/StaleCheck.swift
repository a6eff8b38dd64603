import ArgumentParser
import Foundation
import MemcacheClient
import Synchronization

/// The stale-read checker. One writer sets K hot keys over TCP with rising versions; readers GET
/// them over UDP. A value is stale if its version is older than the newest version whose STORED
/// the writer had received before the GET was sent: the server had applied that write by then,
/// so any cache in front of it must not answer with an older one.
struct StaleCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stale-check",
        abstract: "Check that UDP GETs never return a value older than an acknowledged TCP SET.")

    @OptionGroup var target: ServerOptions

    @Option(help: "Send the GETs to this UDP port instead of --port (to check the checker against another server).")
    var udpPort: UInt16?

    @Option(help: "Number of hot keys.")
    var keys: Int = 16

    @Option(help: "Seconds to run (at most 3600).")
    var duration: Double = 5

    @Option(help: "Reader threads.")
    var readers: Int = 1

    @Option(help: "Value size in bytes (at least the version header).")
    var valueSize: Int = 64

    @Option(help: "Key prefix.")
    var prefix: String = "stale:"

    @Option(help: "Most keys in one multi-key GET.")
    var multigetMax: Int = 4

    @Option(help: "Milliseconds a reader waits for a reply before counting a timeout.")
    var timeoutMs: Int = 500

    @Option(help: "Microseconds the writer pauses between writes (0: write flat out). A paced writer lets an in-kernel cache serve hits between writes, so the race is really exercised.")
    var writeIntervalUs: Int = 0

    @Flag(help: "Print a JSON object on the last line.")
    var json = false

    struct Result: Encodable, MergeableResult {
        var command = "stale-check"
        var server: String
        var reads = 0
        var hits = 0
        var misses = 0
        var timeouts = 0
        var writes = 0
        var writeErrors = 0
        var stale = 0
        var corrupt = 0
        var seconds = 0.0
        /// The first few stale or corrupt values, described.
        var examples: [String] = []

        mutating func add(_ other: Result) {
            reads += other.reads
            hits += other.hits
            misses += other.misses
            timeouts += other.timeouts
            writes += other.writes
            writeErrors += other.writeErrors
            stale += other.stale
            corrupt += other.corrupt
            examples += other.examples.prefix(max(0, Self.maxExamples - examples.count))
        }

        static let maxExamples = 5
    }

    func validate() throws {
        guard (0...1_000_000).contains(writeIntervalUs) else { throw ValidationError("--write-interval-us must be 0...1000000") }
        guard keys >= 1 && keys <= 100_000 else { throw ValidationError("--keys must be in 1...100000") }
        guard duration > 0 && duration <= 3600 else { throw ValidationError("--duration must be in (0, 3600]") }
        guard readers >= 1 && readers <= 64 else { throw ValidationError("--readers must be in 1...64") }
        guard multigetMax >= 1 else { throw ValidationError("--multiget-max must be at least 1") }
        guard timeoutMs >= 1 && timeoutMs <= 60_000 else { throw ValidationError("--timeout-ms must be in 1...60000") }
        guard valueSize <= 1 << 20 else { throw ValidationError("--value-size must be at most 1048576") }
    }

    func run() throws {
        let config = Config(host: target.server, port: target.port, udpPort: udpPort ?? target.port,
                            names: (0..<keys).map { prefix + String($0) }, valueSize: valueSize,
                            multigetMax: min(multigetMax, keys), timeout: .milliseconds(timeoutMs),
                            writeInterval: .microseconds(writeIntervalUs))
        let acks = AckTable(count: keys)
        let writer = try Writer(config: config, acks: acks)
        // Every key exists before reading starts, so misses mean something is wrong.
        var total = try writer.writeAll()
        let server = writer.server

        let start = ContinuousClock.now
        let deadline = start + .seconds(fraction: duration)
        let threads = CheckerThreads(initial: total)
        threads.spawn("writer") { try writer.run(until: deadline) }
        for r in 0..<readers {
            threads.spawn("reader \(r)") {
                var reader = try Reader(config: config, acks: acks, seed: UInt64(r + 1))
                return try reader.run(until: deadline)
            }
        }
        let errors: [String]
        (total, errors) = threads.wait()
        total.server = server
        total.seconds = (ContinuousClock.now - start).seconds
        var summary = [
            "stale-check \(server): \(total.reads) reads, \(total.hits) values seen, \(total.misses) misses, \(total.timeouts) timeouts",
            "  \(total.writes) writes (\(total.writeErrors) failed) over \(keys) keys in \(String(format: "%.2f", total.seconds)) s",
            "  stale: \(total.stale), corrupt: \(total.corrupt)",
        ]
        summary += total.examples.map { "  " + $0 } + errors.map { "  error: " + $0 }
        let inconclusive = total.hits == 0 || total.writes == 0
        if inconclusive { summary.append("  inconclusive: no values seen or nothing written") }
        try report(summary, total, json: json)
        if total.stale > 0 || total.corrupt > 0 || !errors.isEmpty || inconclusive { throw ExitCode.failure }
    }
}

/// What the writer and readers share read-only.
private struct Config: Sendable {
    var host: String
    var port: UInt16
    var udpPort: UInt16
    var names: [String]
    var valueSize: Int
    var multigetMax: Int
    var timeout: Duration
    var writeInterval: Duration
}

/// Per key, the newest version whose STORED the writer has received, and when.
private final class AckTable: Sendable {
    struct Ack {
        var version: UInt64 = 0
        var time: ContinuousClock.Instant?
    }

    private let acks: Mutex<[Ack]>

    init(count: Int) { acks = Mutex(Array(repeating: Ack(), count: count)) }

    func record(_ key: Int, version: UInt64, at time: ContinuousClock.Instant) {
        acks.withLock { $0[key] = Ack(version: version, time: time) }
    }

    func snapshot(_ keys: [Int]) -> [Ack] {
        acks.withLock { all in keys.map { all[$0] } }
    }
}

/// Sets the keys round-robin over TCP, each write with the next version.
private final class Writer: @unchecked Sendable {
    // Used by one thread at a time: the main thread's writeAll, then the writer thread.
    private let client: MemcacheTCPClient
    private let config: Config
    private let acks: AckTable
    private var version: UInt64 = 0

    var server: String { client.server.description }

    init(config: Config, acks: AckTable) throws {
        client = try MemcacheTCPClient(host: config.host, port: config.port, timeout: config.timeout)
        self.config = config
        self.acks = acks
    }

    func writeAll() throws -> StaleCheck.Result {
        var result = StaleCheck.Result(server: server)
        for key in config.names.indices { try write(key, &result) }
        return result
    }

    func run(until deadline: ContinuousClock.Instant) throws -> StaleCheck.Result {
        var result = StaleCheck.Result(server: server)
        var key = 0
        while ContinuousClock.now < deadline {
            try write(key, &result)
            key = (key + 1) % config.names.count
            if config.writeInterval > .zero { Thread.sleep(forTimeInterval: config.writeInterval.seconds) }
        }
        return result
    }

    private func write(_ key: Int, _ result: inout StaleCheck.Result) throws {
        version += 1
        let name = config.names[key]
        let reply = try client.request(
            .store(.set, key: name, value: CheckableValue.versioned(key: name, version: version, size: config.valueSize)))
        guard reply == .stored else {
            result.writeErrors += 1
            return
        }
        acks.record(key, version: version, at: .now)
        result.writes += 1
    }
}

/// GETs random hot keys over UDP, half single-key and half multi-key, and checks every value.
private struct Reader {
    let client: MemcacheUDPClient
    let config: Config
    let acks: AckTable
    var rng: SplitMix64

    init(config: Config, acks: AckTable, seed: UInt64) throws {
        client = try MemcacheUDPClient(host: config.host, port: config.udpPort, timeout: config.timeout)
        self.config = config
        self.acks = acks
        rng = SplitMix64(seed: seed)
    }

    mutating func run(until deadline: ContinuousClock.Instant) throws -> StaleCheck.Result {
        var result = StaleCheck.Result(server: client.server.description)
        while ContinuousClock.now < deadline {
            let keys = drawKeys()
            // What the GET must see at least: acknowledged before it is sent.
            let required = acks.snapshot(keys)
            let sent = ContinuousClock.now
            let response: MemcacheUDPResponse
            do {
                response = try client.get(keys.map { config.names[$0] })
            } catch MemcacheError.timeout {
                result.timeouts += 1
                continue
            }
            result.reads += 1
            check(response, keys, required, sent, &result)
        }
        return result
    }

    private mutating func drawKeys() -> [Int] {
        let count = config.multigetMax > 1 && rng.next() & 1 == 1
            ? Int.random(in: 2...config.multigetMax, using: &rng) : 1
        var keys: [Int] = []
        while keys.count < count {
            let key = Int.random(in: 0..<config.names.count, using: &rng)
            if !keys.contains(key) { keys.append(key) }
        }
        return keys
    }

    private func check(_ response: MemcacheUDPResponse, _ keys: [Int], _ required: [AckTable.Ack],
                       _ sent: ContinuousClock.Instant, _ result: inout StaleCheck.Result) {
        func note(_ text: String) {
            if result.examples.count < StaleCheck.Result.maxExamples { result.examples.append(text) }
        }
        guard case .success(.values(let values)) = response.reply else {
            result.corrupt += 1
            note("corrupt reply to request \(response.requestID): \(response.reply)")
            return
        }
        result.misses += max(0, keys.count - values.count)
        var unseen = Dictionary(uniqueKeysWithValues: keys.enumerated().map { (config.names[$0.element], $0.offset) })
        for value in values {
            result.hits += 1
            guard let slot = unseen.removeValue(forKey: value.key),
                  let version = CheckableValue.version(in: value.data, key: value.key, size: config.valueSize)
            else {
                result.corrupt += 1
                note("corrupt value under '\(value.key)': \(String(decoding: value.data.prefix(80), as: UTF8.self))")
                continue
            }
            let ack = required[slot]
            if version < ack.version {
                result.stale += 1
                let age = ack.time.map { String(format: "%.3f ms", (sent - $0).seconds * 1e3) } ?? "?"
                note("stale '\(value.key)': got v\(version), v\(ack.version) was acknowledged \(age) before the GET")
            }
        }
    }
}

/// A result a checker's threads each produce and that sums into one.
protocol MergeableResult: Sendable {
    mutating func add(_ other: Self)
}

/// Runs a checker's writer and readers on threads of their own and sums what they return:
/// `spawn` each, then `wait()` for the total (starting from `initial`) and the errors, one per
/// thread that threw, named.
final class CheckerThreads<Result: MergeableResult>: Sendable {
    private let results: Mutex<Result>
    private let failures = Mutex<[String]>([])
    private let done = DispatchGroup()

    init(initial: Result) { results = Mutex(initial) }

    func spawn(_ name: String, _ body: @escaping @Sendable () throws -> Result) {
        done.enter()
        let thread = Thread { [self] in
            do {
                let r = try body()
                results.withLock { $0.add(r) }
            } catch {
                failures.withLock { $0.append("\(name): \(error)") }
            }
            done.leave()
        }
        thread.name = name
        thread.start()
    }

    func wait() -> (total: Result, errors: [String]) {
        done.wait()
        return (results.withLock { $0 }, failures.withLock { $0 })
    }
}
