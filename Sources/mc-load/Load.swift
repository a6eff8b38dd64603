import ArgumentParser
import Foundation
import MemcacheClient

/// UDP GET load from one thread with a fixed number of requests in flight, keys drawn from a Zipf
/// distribution over the keys `populate` wrote.
struct Load: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "UDP GET load with Zipf-distributed keys.")

    @OptionGroup var target: ServerOptions

    @Option(help: "Number of keys (as given to populate).")
    var keys: Int

    @Option(help: "Value size in bytes (as given to populate), which --validate checks.")
    var valueSize: Int

    @Option(help: "Zipf skew θ in [0, 1); 0 is uniform.")
    var zipf: Double = 0.99

    @Option(help: "Seconds to send for (at most 3600).")
    var duration: Double = 5

    @Option(help: "Requests kept in flight.")
    var inflight: Int = 32

    @Option(help: "Keys per GET request.")
    var multiget: Int = 1

    @Option(help: "Key prefix (as given to populate).")
    var prefix: String = "k"

    @Option(help: "Milliseconds after which an unanswered request counts as a timeout.")
    var timeoutMs: Int = 200

    @Option(help: "Stop after this many requests even if time is left.")
    var maxRequests: Int = 100_000_000

    @Option(help: "Seed of the key sequence.")
    var seed: UInt64 = 1

    @Flag(name: .customLong("validate"), help: "Check every value byte for byte against the one populate wrote.")
    var validateValues = false

    @Flag(help: "Print a JSON object on the last line.")
    var json = false

    @Flag(help: """
        Measure the server, not check it: each key's request is built once and replies are only \
        classified (a reply starting \"VALUE \" is a hit, one that is only \"END\" a miss; a reply is \
        complete at the datagram that ends in \"END\\r\\n\", which populate's values never do), so the \
        client allocates nothing per GET and costs the machine as little as it can. One key per GET; \
        not with --validate.
        """)
    var lean = false

    struct Result: Encodable {
        var command = "load"
        var server: String
        var requests = 0
        var replies = 0
        var hits = 0
        var misses = 0
        var timeouts = 0
        var validationErrors = 0
        /// Replies that could not be parsed, or datagrams with a bad frame header.
        var errors = 0
        var datagrams = 0
        var seconds = 0.0
        var opsPerSec = 0.0
        var keysPerSec = 0.0
    }

    func validate() throws {
        guard keys >= 1 else { throw ValidationError("--keys must be at least 1") }
        guard zipf >= 0 && zipf < 1 else { throw ValidationError("--zipf must be in [0, 1)") }
        guard duration > 0 && duration <= 3600 else { throw ValidationError("--duration must be in (0, 3600]") }
        guard inflight >= 1 && inflight <= 4096 else { throw ValidationError("--inflight must be in 1...4096") }
        guard multiget >= 1 && multiget <= min(keys, 100) else {
            throw ValidationError("--multiget must be in 1...min(keys, 100)")
        }
        guard timeoutMs >= 1 && timeoutMs <= 60_000 else { throw ValidationError("--timeout-ms must be in 1...60000") }
        guard maxRequests >= 1 else { throw ValidationError("--max-requests must be at least 1") }
        if lean && (validateValues || multiget != 1) {
            throw ValidationError("--lean sends one key per GET and does not read values: not with --validate or --multiget")
        }
    }

    private struct Outstanding {
        var sent: ContinuousClock.Instant
        var keys: [String]
    }

    func run() throws {
        if lean { return try runLean() }
        let client = try MemcacheUDPClient(host: target.server, port: target.port)
        var ranks = Zipf(n: keys, theta: zipf, seed: seed)
        var assembler = UDPReplyAssembler()
        var outstanding: [UInt16: Outstanding] = [:]
        var result = Result(server: client.server.description)
        var nextID: UInt16 = 0
        // Option wrappers are slow to read; the loop reads these on every datagram.
        let (inflight, maxRequests, timeout) = (inflight, maxRequests, Duration.milliseconds(timeoutMs))
        // Expiry is checked at this granularity, not per datagram.
        let tick = Duration.milliseconds(1)

        let start = ContinuousClock.now
        let stopSending = start + .seconds(fraction: duration)
        var nextExpiryCheck = start + tick

        while true {
            var now = ContinuousClock.now
            let sending = now < stopSending && result.requests < maxRequests
            if !sending && outstanding.isEmpty { break }

            while sending && outstanding.count < inflight && result.requests < maxRequests {
                while outstanding[nextID] != nil { nextID &+= 1 }
                let names = drawKeys(&ranks)
                try client.send(requestID: nextID, command: .get(names))
                outstanding[nextID] = Outstanding(sent: now, keys: names)
                nextID &+= 1
                result.requests += 1
            }

            if let datagram = try client.receiveDatagram(until: now + tick) {
                result.datagrams += 1
                do {
                    if let response = try assembler.add(datagram),
                       let request = outstanding.removeValue(forKey: response.requestID) {
                        account(response, request.keys, &result)
                    }
                } catch {
                    result.errors += 1
                }
            }

            now = ContinuousClock.now
            if now >= nextExpiryCheck {
                for (id, request) in outstanding where now - request.sent > timeout {
                    outstanding[id] = nil
                    assembler.discard(requestID: id)
                    result.timeouts += 1
                }
                nextExpiryCheck = now + tick
            }
        }

        let elapsed = ContinuousClock.now - start
        result.seconds = elapsed.seconds
        result.opsPerSec = rate(result.replies, elapsed)
        result.keysPerSec = rate(result.hits + result.misses, elapsed)
        var summary = [
            "load \(result.server): \(result.requests) requests, \(result.replies) replies, \(result.timeouts) timeouts in \(String(format: "%.2f", result.seconds)) s",
            "  \(Int(result.opsPerSec)) ops/s, \(result.hits) hits, \(result.misses) misses, \(result.datagrams) datagrams, \(result.errors) errors",
        ]
        if validateValues { summary.append("  validation errors: \(result.validationErrors)") }
        try report(summary, result, json: json)
        if result.validationErrors > 0 || result.errors > 0 { throw ExitCode.failure }
    }

    /// The load with `--lean`: the same requests in the same order (same seed), no allocation per
    /// GET. Request ids are handed out in order, so the oldest outstanding request is found by
    /// walking ids from the oldest one sent.
    private func runLean() throws {
        let client = try MemcacheUDPClient(host: target.server, port: target.port)
        var ranks = Zipf(n: keys, theta: zipf, seed: seed)
        let requests = (0..<keys).map { MemcacheUDPRequest.get(requestID: 0, keys: [prefix + String($0)]) }
        var result = Result(server: client.server.description)
        let (inflight, maxRequests, timeout) = (inflight, maxRequests, Duration.milliseconds(timeoutMs))
        let tick = Duration.milliseconds(1)
        let ids = 1 << 16
        var busy = [Bool](repeating: false, count: ids)
        var hit = [Bool](repeating: false, count: ids)
        let start = ContinuousClock.now
        var sentAt = [ContinuousClock.Instant](repeating: start, count: ids)
        var outstanding = 0
        var nextID = 0, oldestID = 0
        var sendBuffer = [UInt8](repeating: 0, count: 2048)
        var receiveBuffer = [UInt8](repeating: 0, count: 65536)
        let stopSending = start + .seconds(fraction: duration)
        var nextExpiryCheck = start + tick
        let end = Array("END\r\n".utf8), value = Array("VALUE ".utf8)

        func finish(_ id: Int) {
            busy[id] = false
            outstanding -= 1
        }

        while true {
            var now = ContinuousClock.now
            let sending = now < stopSending && result.requests < maxRequests
            if !sending && outstanding == 0 { break }

            while sending && outstanding < inflight && result.requests < maxRequests {
                while busy[nextID] { nextID = (nextID + 1) & (ids - 1) }
                let id = nextID
                try requests[ranks.next()].withUnsafeBytes { request in
                    try sendBuffer.withUnsafeMutableBytes { out in
                        out.copyMemory(from: request)
                        out[0] = UInt8(id >> 8)
                        out[1] = UInt8(id & 0xff)
                        try client.sendDatagram(UnsafeRawBufferPointer(rebasing: out[..<request.count]))
                    }
                }
                busy[id] = true
                hit[id] = false
                sentAt[id] = now
                outstanding += 1
                nextID = (id + 1) & (ids - 1)
                result.requests += 1
            }

            let received = try receiveBuffer.withUnsafeMutableBytes { try client.receiveDatagram(into: $0, until: now + tick) }
            if let n = received {
                result.datagrams += 1
                let id = n >= MemcacheUDPHeader.size ? Int(receiveBuffer[0]) << 8 | Int(receiveBuffer[1]) : -1
                if id >= 0 && busy[id] {
                    let payload = receiveBuffer[MemcacheUDPHeader.size..<n]
                    if payload.starts(with: value) { hit[id] = true }
                    if payload.count >= end.count && payload.suffix(end.count).elementsEqual(end) {
                        result.replies += 1
                        if hit[id] { result.hits += 1 } else if payload.count == end.count { result.misses += 1 } else { result.errors += 1 }
                        finish(id)
                    }
                } else if id < 0 {
                    result.errors += 1
                }
            }

            now = ContinuousClock.now
            if now >= nextExpiryCheck {
                // Oldest first: the first outstanding request still young ends the walk.
                var walked = 0
                while oldestID != nextID && walked < ids {
                    if busy[oldestID] {
                        guard now - sentAt[oldestID] > timeout else { break }
                        finish(oldestID)
                        result.timeouts += 1
                    }
                    oldestID = (oldestID + 1) & (ids - 1)
                    walked += 1
                }
                if !sending && now - stopSending > timeout + tick {
                    // Whatever is still out is lost, wherever the walk stopped.
                    for id in 0..<ids where busy[id] {
                        finish(id)
                        result.timeouts += 1
                    }
                }
                nextExpiryCheck = now + tick
            }
        }

        let elapsed = ContinuousClock.now - start
        result.seconds = elapsed.seconds
        result.opsPerSec = rate(result.replies, elapsed)
        result.keysPerSec = rate(result.hits + result.misses, elapsed)
        try report([
            "load \(result.server) (lean): \(result.requests) requests, \(result.replies) replies, \(result.timeouts) timeouts in \(String(format: "%.2f", result.seconds)) s",
            "  \(Int(result.opsPerSec)) ops/s, \(result.hits) hits, \(result.misses) misses, \(result.datagrams) datagrams, \(result.errors) errors",
        ], result, json: json)
        if result.errors > 0 { throw ExitCode.failure }
    }

    /// `multiget` distinct keys, drawn by Zipf rank.
    private func drawKeys(_ ranks: inout Zipf) -> [String] {
        var chosen: [Int] = []
        while chosen.count < multiget {
            let rank = ranks.next()
            if !chosen.contains(rank) { chosen.append(rank) }
        }
        return chosen.map { prefix + String($0) }
    }

    private func account(_ response: MemcacheUDPResponse, _ requested: [String], _ result: inout Result) {
        guard case .success(let reply) = response.reply, case .values(let values) = reply else {
            result.errors += 1
            return
        }
        result.replies += 1
        result.hits += values.count
        result.misses += max(0, requested.count - values.count)
        guard validateValues else { return }
        var unseen = Set(requested)
        for value in values {
            let expectedKey = unseen.remove(value.key) != nil
            if !expectedKey || value.data != CheckableValue.pattern(forKey: value.key, size: valueSize) {
                result.validationErrors += 1
            }
        }
    }
}
