import ArgumentParser
import Foundation
import MemcacheClient

/// Client-side latency of single GETs over TCP, one at a time, and what a client sees when a key
/// is missing: for each key, one GET; on a miss, one GET right after it, then GETs with a growing
/// pause (--retry-us, ×1.5, at most --retry-max-us: every miss is an event a promoter may act on,
/// so hammering would measure the retries) until the value comes back (cxl-bmc promotes it from L3)
/// or --until-hit-ms passes (vanilla memcached: never).
struct Latency: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Time single TCP GETs of keys populate wrote; after a miss, retry until the key is back.")

    @OptionGroup var target: ServerOptions

    @Option(help: "GET the keys <prefix>FIRST … <prefix>FIRST+COUNT-1.")
    var first: Int = 0

    @Option(help: "How many keys to GET (each once, plus retries after a miss).")
    var count: Int

    @Option(help: "Value size in bytes (as given to populate), which every hit is checked against.")
    var valueSize: Int

    @Option(help: "Key prefix (as given to populate).")
    var prefix: String = "k"

    @Option(help: "After a miss, retry for at most this many milliseconds (0: do not retry).")
    var untilHitMs: Double = 50

    @Option(help: "After a miss, the first pause between retries in microseconds (it grows ×1.5).")
    var retryUs: Double = 100

    @Option(help: "The longest pause between retries in microseconds.")
    var retryMaxUs: Double = 2000

    @Option(help: "Pause between keys, uniformly random up to this many microseconds: each miss is handled alone, at a time unrelated to the last one (a promoter that works in periodic batches would otherwise be met in phase).")
    var gapUs: Int = 1000

    @Flag(help: "Print a JSON object on the last line.")
    var json = false

    struct Percentiles: Encodable {
        var count: Int
        var p50Us: Double?
        var p90Us: Double?
        var p99Us: Double?
        var meanUs: Double?

        init(_ samples: [Double]) {
            count = samples.count
            guard !samples.isEmpty else { return }
            let sorted = samples.sorted()
            func at(_ q: Double) -> Double { sorted[min(sorted.count - 1, Int(q * Double(sorted.count)))] }
            (p50Us, p90Us, p99Us) = (at(0.5), at(0.9), at(0.99))
            meanUs = sorted.reduce(0, +) / Double(sorted.count)
        }
    }

    struct Result: Encodable {
        var command = "latency"
        var server: String
        var keys: Int
        /// GETs that found the key at once.
        var hit: Percentiles
        /// First GETs that missed.
        var miss: Percentiles
        /// The GET right after a miss (back to back, same connection).
        var afterMiss: Percentiles
        /// Of those, how many found the key.
        var afterMissHits: Int
        /// From sending the missing GET to receiving the value, for keys that came back.
        var timeToHit: Percentiles
        /// Keys that missed and came back within --until-hit-ms.
        var recovered: Int
        var wrongValues: Int
    }

    func validate() throws {
        guard count >= 1, first >= 0 else { throw ValidationError("--count must be at least 1, --first at least 0") }
        guard untilHitMs >= 0, gapUs >= 0 else { throw ValidationError("--until-hit-ms and --gap-us must not be negative") }
    }

    func run() throws {
        let client = try MemcacheTCPClient(host: target.server, port: target.port)
        var hit: [Double] = [], miss: [Double] = [], afterMiss: [Double] = [], toHit: [Double] = []
        var afterMissHits = 0, recovered = 0, wrong = 0
        let clock = ContinuousClock()
        func timedGet(_ key: String) throws -> (MemcacheValue?, Double) {
            let t0 = clock.now
            let value = try client.get(key)
            return (value, (clock.now - t0).seconds * 1e6)
        }
        for i in first..<(first + count) {
            let key = prefix + String(i)
            let expected = CheckableValue.pattern(forKey: key, size: valueSize)
            let start = clock.now
            let (value, us) = try timedGet(key)
            if let value {
                hit.append(us)
                if value.data != expected { wrong += 1 }
            } else {
                miss.append(us)
                let deadline = start + .seconds(fraction: untilHitMs / 1000)
                var retries = 0
                var pause = retryUs
                while clock.now < deadline {
                    if retries > 0 {
                        usleep(UInt32(pause))
                        pause = min(pause * 1.5, retryMaxUs)
                    }
                    let (again, againUs) = try timedGet(key)
                    if retries == 0 {
                        afterMiss.append(againUs)
                        if again != nil { afterMissHits += 1 }
                    }
                    retries += 1
                    if let again {
                        toHit.append((clock.now - start).seconds * 1e6)
                        recovered += 1
                        if again.data != expected { wrong += 1 }
                        break
                    }
                }
            }
            if gapUs > 0 { usleep(UInt32.random(in: 0...UInt32(gapUs))) }
        }
        let result = Result(server: client.server.description, keys: count, hit: Percentiles(hit), miss: Percentiles(miss),
                            afterMiss: Percentiles(afterMiss), afterMissHits: afterMissHits,
                            timeToHit: Percentiles(toHit), recovered: recovered, wrongValues: wrong)
        func show(_ name: String, _ p: Percentiles) -> String {
            guard let p50 = p.p50Us, let p99 = p.p99Us else { return "  \(name): none" }
            return "  \(name): \(p.count), p50 \(String(format: "%.1f", p50)) µs, p99 \(String(format: "%.1f", p99)) µs"
        }
        let summary = [
            "latency \(result.server): \(count) keys, \(hit.count) hit at once, \(miss.count) missed, \(recovered) came back within \(untilHitMs) ms, \(wrong) wrong values",
            show("hit", result.hit), show("miss", result.miss),
            show("GET right after a miss (\(afterMissHits) hits)", result.afterMiss), show("miss → value", result.timeToHit),
        ]
        try report(summary, result, json: json)
        if wrong > 0 { throw ExitCode.failure }
    }
}
