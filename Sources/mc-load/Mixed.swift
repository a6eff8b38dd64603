import ArgumentParser
import Foundation
import MemcacheClient
import Synchronization

/// The soak's load: one TCP writer applies a mix of sets (some with short TTLs), deletes, touches,
/// incrs on counter keys and periodic flush_all; UDP readers GET single keys and multi-gets and
/// check every value against what the writer had been acknowledged before the GET was sent.
///
/// Every write takes the next number of one counter (the writer is a single thread, so numbers
/// follow the order memcached applied the writes in). Per key the checker keeps a *floor*: the
/// number of the newest acknowledged set, delete or flush. A value whose version is below its key's
/// floor is **stale** (a delete or flush acknowledged before the GET, or a newer set, was missed).
/// A value that is exactly the newest acknowledged one but whose TTL (from its set or a later
/// touch) ran out more than `--expiry-grace-ms` before the GET was sent is **expired**.
/// Counter keys hold decimal numbers that only grow (re-created above their floor after a flush);
/// a smaller number than the newest acknowledged incr is stale. Anything unparseable is corrupt.
struct Mixed: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Mixed writes (set, TTL, delete, touch, incr, flush_all) over TCP, checked UDP GETs and multi-gets.")

    @OptionGroup var target: ServerOptions

    @Option(help: "Number of versioned keys.")
    var keys: Int = 256

    @Option(help: "Number of counter keys (incr).")
    var counters: Int = 8

    @Option(help: "Seconds to run (at most 86400).")
    var duration: Double = 10

    @Option(help: "Reader threads.")
    var readers: Int = 2

    @Option(help: "Value size in bytes (at least the version header).")
    var valueSize: Int = 64

    @Option(help: "Key prefix.")
    var prefix: String = "mix:"

    @Option(help: "Most keys in one multi-key GET.")
    var multigetMax: Int = 8

    @Option(help: "Seconds between flush_all commands (0: never).")
    var flushEvery: Double = 30

    @Option(help: "Share of sets given a TTL of 1-3 s.")
    var ttlShare: Double = 0.2

    @Option(help: "Milliseconds past its expiry an item may still be served (memcached's clock ticks once a second).")
    var expiryGraceMs: Int = 2500

    @Option(help: "Milliseconds a reader waits for a reply before counting a timeout.")
    var timeoutMs: Int = 500

    @Option(help: "Microseconds the writer pauses between writes (0: write flat out).")
    var writeIntervalUs: Int = 0

    @Option(help: "Seed of the operation sequence.")
    var seed: UInt64 = 1

    @Flag(help: "Print a JSON object on the last line.")
    var json = false

    struct Result: Encodable, MergeableResult {
        var command = "mixed"
        var server = ""
        var reads = 0
        var multigets = 0
        var hits = 0
        var misses = 0
        var timeouts = 0
        var sets = 0
        var ttlSets = 0
        var deletes = 0
        var touches = 0
        var incrs = 0
        var flushes = 0
        var writeErrors = 0
        var stale = 0
        var expired = 0
        var corrupt = 0
        var seconds = 0.0
        var examples: [String] = []

        mutating func add(_ o: Result) {
            reads += o.reads; multigets += o.multigets; hits += o.hits; misses += o.misses; timeouts += o.timeouts
            sets += o.sets; ttlSets += o.ttlSets; deletes += o.deletes; touches += o.touches; incrs += o.incrs
            flushes += o.flushes; writeErrors += o.writeErrors
            stale += o.stale; expired += o.expired; corrupt += o.corrupt
            examples += o.examples.prefix(max(0, 5 - examples.count))
        }

        var writes: Int { sets + deletes + touches + incrs + flushes }
    }

    func validate() throws {
        guard keys >= 1 && keys <= 100_000 else { throw ValidationError("--keys must be in 1...100000") }
        guard counters >= 0 && counters <= 1000 else { throw ValidationError("--counters must be in 0...1000") }
        guard duration > 0 && duration <= 86_400 else { throw ValidationError("--duration must be in (0, 86400]") }
        guard readers >= 1 && readers <= 64 else { throw ValidationError("--readers must be in 1...64") }
        guard multigetMax >= 1 && multigetMax <= 64 else { throw ValidationError("--multiget-max must be in 1...64") }
        guard flushEvery >= 0 else { throw ValidationError("--flush-every must be 0 or more") }
        guard ttlShare >= 0 && ttlShare <= 1 else { throw ValidationError("--ttl-share must be in [0, 1]") }
        guard valueSize <= 1 << 20 else { throw ValidationError("--value-size must be at most 1048576") }
        guard timeoutMs >= 1 && timeoutMs <= 60_000 else { throw ValidationError("--timeout-ms must be in 1...60000") }
    }

    func run() throws {
        let names = (0..<keys).map { prefix + String($0) } + (0..<counters).map { prefix + "ctr" + String($0) }
        let table = MixedAckTable(count: names.count)
        let config = MixedConfig(
            host: target.server, port: target.port, names: names, versionedKeys: keys, valueSize: valueSize,
            multigetMax: min(multigetMax, names.count), flushEvery: flushEvery, ttlShare: ttlShare,
            grace: .milliseconds(expiryGraceMs), timeout: .milliseconds(timeoutMs),
            writeInterval: .microseconds(writeIntervalUs))
        let writer = try MixedWriter(config: config, table: table, seed: seed)
        var total = try writer.createAll()
        total.server = writer.server

        let start = ContinuousClock.now
        let deadline = start + .seconds(fraction: duration)
        let threads = CheckerThreads(initial: total)
        threads.spawn("writer") { try writer.run(until: deadline) }
        for r in 0..<readers {
            let readerSeed = seed &* 1000 &+ UInt64(r + 1)
            threads.spawn("reader \(r)") {
                var reader = try MixedReader(config: config, table: table, seed: readerSeed)
                return try reader.run(until: deadline)
            }
        }
        let errors: [String]
        (total, errors) = threads.wait()
        total.seconds = (ContinuousClock.now - start).seconds
        var summary = [
            "mixed \(total.server): \(total.reads) reads (\(total.multigets) multi-gets), \(total.hits) values seen, \(total.misses) misses, \(total.timeouts) timeouts",
            "  writes: \(total.sets) sets (\(total.ttlSets) with TTL), \(total.deletes) deletes, \(total.touches) touches, \(total.incrs) incrs, \(total.flushes) flushes, \(total.writeErrors) failed, in \(String(format: "%.1f", total.seconds)) s",
            "  stale: \(total.stale), expired served: \(total.expired), corrupt: \(total.corrupt)",
        ]
        summary += total.examples.map { "  " + $0 } + errors.map { "  error: " + $0 }
        let inconclusive = total.hits == 0 || total.writes == 0
        if inconclusive { summary.append("  inconclusive: no values seen or nothing written") }
        try report(summary, total, json: json)
        if total.stale > 0 || total.expired > 0 || total.corrupt > 0 || !errors.isEmpty || inconclusive {
            throw ExitCode.failure
        }
    }
}

private struct MixedConfig: Sendable {
    var host: String
    var port: UInt16
    var names: [String]
    /// Keys below this index hold versioned values; the rest are counters.
    var versionedKeys: Int
    var valueSize: Int
    var multigetMax: Int
    var flushEvery: Double
    var ttlShare: Double
    var grace: Duration
    var timeout: Duration
    var writeInterval: Duration

    func isCounter(_ key: Int) -> Bool { key >= versionedKeys }
}

/// Per key: the floor (newest acknowledged write's number, or the counter's newest value), the
/// number of the value memcached holds (nil after a delete or flush) and when that value expires.
private final class MixedAckTable: Sendable {
    struct Ack {
        var floor: UInt64 = 0
        var live: UInt64?
        var expires: ContinuousClock.Instant?
    }

    private let acks: Mutex<[Ack]>
    init(count: Int) { acks = Mutex(Array(repeating: Ack(), count: count)) }

    func update(_ key: Int, _ body: (inout Ack) -> Void) { acks.withLock { body(&$0[key]) } }
    func updateAll(_ body: (Int, inout Ack) -> Void) { acks.withLock { all in for i in all.indices { body(i, &all[i]) } } }
    func snapshot(_ keys: [Int]) -> [Ack] { acks.withLock { all in keys.map { all[$0] } } }
    func get(_ key: Int) -> Ack { acks.withLock { $0[key] } }
}

private final class MixedWriter: @unchecked Sendable {
    private let client: MemcacheTCPClient
    private let config: MixedConfig
    private let table: MixedAckTable
    private var rng: SplitMix64
    private var number: UInt64 = 0

    var server: String { client.server.description }

    init(config: MixedConfig, table: MixedAckTable, seed: UInt64) throws {
        client = try MemcacheTCPClient(host: config.host, port: config.port, timeout: .seconds(5))
        self.config = config
        self.table = table
        rng = SplitMix64(seed: seed)
    }

    private func next() -> UInt64 {
        number += 1
        return number
    }

    /// Every key exists before the readers start.
    func createAll() throws -> Mixed.Result {
        var result = Mixed.Result()
        for key in config.names.indices {
            if config.isCounter(key) { try recreateCounter(key, &result) } else { try set(key, ttl: 0, &result) }
        }
        return result
    }

    func run(until deadline: ContinuousClock.Instant) throws -> Mixed.Result {
        var result = Mixed.Result()
        var nextFlush = config.flushEvery > 0 ? ContinuousClock.now + .seconds(fraction: config.flushEvery) : nil
        while ContinuousClock.now < deadline {
            if let due = nextFlush, ContinuousClock.now >= due {
                try flush(&result)
                nextFlush = .now + .seconds(fraction: config.flushEvery)
            }
            let key = Int.random(in: 0..<config.names.count, using: &rng)
            let dice = Double(rng.next() >> 11) / Double(1 << 53)
            if config.isCounter(key) {
                try incr(key, &result)
            } else if dice < 0.65 {
                let ttl = Double(rng.next() >> 11) / Double(1 << 53) < config.ttlShare ? Int.random(in: 1...3, using: &rng) : 0
                try set(key, ttl: ttl, &result)
            } else if dice < 0.85 {
                try delete(key, &result)
            } else {
                try touch(key, ttl: Int.random(in: 0...4, using: &rng), &result)
            }
            if config.writeInterval > .zero { Thread.sleep(forTimeInterval: config.writeInterval.seconds) }
        }
        return result
    }

    private func set(_ key: Int, ttl: Int, _ result: inout Mixed.Result) throws {
        let version = next()
        let name = config.names[key]
        let sent = ContinuousClock.now
        let reply = try client.request(.store(.set, key: name, value: CheckableValue.versioned(key: name, version: version, size: config.valueSize), exptime: ttl))
        guard reply == .stored else { result.writeErrors += 1; return }
        table.update(key) { $0 = .init(floor: version, live: version, expires: ttl > 0 ? sent + .seconds(ttl) : nil) }
        result.sets += 1
        if ttl > 0 { result.ttlSets += 1 }
    }

    private func delete(_ key: Int, _ result: inout Mixed.Result) throws {
        let version = next()
        let reply = try client.request(.delete(config.names[key]))
        guard reply == .deleted || reply == .notFound else { result.writeErrors += 1; return }
        table.update(key) { $0 = .init(floor: version, live: nil, expires: nil) }
        result.deletes += 1
    }

    private func touch(_ key: Int, ttl: Int, _ result: inout Mixed.Result) throws {
        let sent = ContinuousClock.now
        let reply = try client.request(.touch(config.names[key], exptime: ttl))
        switch reply {
        case .touched:
            // The value memcached holds now expires at the new time (never, for 0).
            table.update(key) { $0.expires = ttl > 0 ? sent + .seconds(ttl) : nil }
        case .notFound:
            // Gone (expired): no later expiry can make the old value valid again.
            break
        default:
            result.writeErrors += 1
            return
        }
        result.touches += 1
    }

    private func incr(_ key: Int, _ result: inout Mixed.Result) throws {
        let reply = try client.request(.incr(config.names[key], by: 1))
        switch reply {
        case .number(let n):
            table.update(key) { $0.floor = max($0.floor, n) }
            result.incrs += 1
        case .notFound:
            try recreateCounter(key, &result)
        default:
            result.writeErrors += 1
        }
    }

    /// A counter that is gone comes back well above every value it had, so it only ever grows.
    private func recreateCounter(_ key: Int, _ result: inout Mixed.Result) throws {
        let value = table.get(key).floor + 1000
        let reply = try client.request(.store(.set, key: config.names[key], value: Array(String(value).utf8)))
        guard reply == .stored else { result.writeErrors += 1; return }
        table.update(key) { $0.floor = value }
        result.sets += 1
    }

    private func flush(_ result: inout Mixed.Result) throws {
        let version = next()
        let reply = try client.request(.flushAll())
        guard reply == .ok else { result.writeErrors += 1; return }
        table.updateAll { key, ack in
            if config.isCounter(key) {
                ack.floor += 1 // any value it held before the flush is gone now
            } else {
                ack = .init(floor: version, live: nil, expires: nil)
            }
        }
        result.flushes += 1
        // memcached's flush_all invalidates by the second: a set in the same second as the flush may
        // be flushed too (a miss, never wrong). Start the next second cleanly.
        for key in config.names.indices where config.isCounter(key) { try recreateCounter(key, &result) }
    }
}

private struct MixedReader {
    let client: MemcacheUDPClient
    let config: MixedConfig
    let table: MixedAckTable
    var rng: SplitMix64

    init(config: MixedConfig, table: MixedAckTable, seed: UInt64) throws {
        client = try MemcacheUDPClient(host: config.host, port: config.port, timeout: config.timeout)
        self.config = config
        self.table = table
        rng = SplitMix64(seed: seed)
    }

    mutating func run(until deadline: ContinuousClock.Instant) throws -> Mixed.Result {
        var result = Mixed.Result()
        while ContinuousClock.now < deadline {
            let count = config.multigetMax > 1 && rng.next() & 1 == 1 ? Int.random(in: 2...config.multigetMax, using: &rng) : 1
            var keys: [Int] = []
            while keys.count < count {
                let key = Int.random(in: 0..<config.names.count, using: &rng)
                if !keys.contains(key) { keys.append(key) }
            }
            let required = table.snapshot(keys)
            let sent = ContinuousClock.now
            let response: MemcacheUDPResponse
            do {
                response = try client.get(keys.map { config.names[$0] })
            } catch MemcacheError.timeout {
                result.timeouts += 1
                continue
            }
            result.reads += 1
            if keys.count > 1 { result.multigets += 1 }
            check(response, keys, required, sent, &result)
        }
        return result
    }

    private func check(_ response: MemcacheUDPResponse, _ keys: [Int], _ required: [MixedAckTable.Ack],
                       _ sent: ContinuousClock.Instant, _ result: inout Mixed.Result) {
        func note(_ text: String) { if result.examples.count < 5 { result.examples.append(text) } }
        guard case .success(.values(let values)) = response.reply else {
            result.corrupt += 1
            note("corrupt reply to request \(response.requestID): \(response.reply)")
            return
        }
        result.misses += max(0, keys.count - values.count)
        var unseen = Dictionary(uniqueKeysWithValues: keys.enumerated().map { (config.names[$0.element], $0.offset) })
        for value in values {
            result.hits += 1
            guard let slot = unseen.removeValue(forKey: value.key) else {
                result.corrupt += 1
                note("value for a key not asked for (or twice): '\(value.key)'")
                continue
            }
            let ack = required[slot]
            if config.isCounter(keys[slot]) {
                guard value.data.count <= 20, let n = UInt64(String(decoding: value.data, as: UTF8.self)) else {
                    result.corrupt += 1
                    note("corrupt counter '\(value.key)': \(String(decoding: value.data.prefix(40), as: UTF8.self))")
                    continue
                }
                if n < ack.floor {
                    result.stale += 1
                    note("stale counter '\(value.key)': got \(n), \(ack.floor) was acknowledged")
                }
                continue
            }
            guard let version = CheckableValue.version(in: value.data, key: value.key, size: config.valueSize) else {
                result.corrupt += 1
                note("corrupt value under '\(value.key)': \(String(decoding: value.data.prefix(80), as: UTF8.self))")
                continue
            }
            if version < ack.floor {
                result.stale += 1
                note("stale '\(value.key)': got v\(version), floor v\(ack.floor) (\(ack.live == nil ? "deleted or flushed" : "newer set"))")
            } else if version == ack.live, let expires = ack.expires, sent > expires + config.grace {
                result.expired += 1
                note("expired '\(value.key)' v\(version) served \(String(format: "%.0f", (sent - expires).seconds * 1e3)) ms after its expiry")
            }
        }
    }
}
