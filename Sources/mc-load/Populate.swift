import Foundation
import ArgumentParser
import MemcacheClient

/// Stores keys `<prefix>0 … <prefix>N-1` over TCP, each value ``CheckableValue/pattern(forKey:size:)``.
struct Populate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Set N keys over TCP with values derived from each key.")

    @OptionGroup var target: ServerOptions

    @Option(help: "Number of keys.")
    var keys: Int

    @Option(help: "Value size in bytes.")
    var valueSize: Int

    @Option(help: "Expiry (memcached exptime) in seconds; 0 never expires.")
    var ttl: Int = 0

    @Option(help: "Key prefix.")
    var prefix: String = "k"

    @Option(help: "Sets sent before reading their replies.")
    var batch: Int = 100

    @Flag(help: "Read every key back over TCP and check its value.")
    var verify = false

    @Flag(help: "Print a JSON object on the last line.")
    var json = false

    struct Result: Encodable {
        var command = "populate"
        var server: String
        var keys: Int
        var stored: Int
        var failed: Int
        var verified: Int?
        var verifyErrors: Int?
        var seconds: Double
        var setsPerSec: Double
    }

    func validate() throws {
        guard keys >= 1 && keys <= 100_000_000 else { throw ValidationError("--keys must be in 1...100000000") }
        guard valueSize >= 0 && valueSize <= 1 << 20 else { throw ValidationError("--value-size must be in 0...1048576") }
        guard batch >= 1 && batch <= 10_000 else { throw ValidationError("--batch must be in 1...10000") }
    }

    func run() throws {
        let client = try MemcacheTCPClient(host: target.server, port: target.port)
        let start = ContinuousClock.now
        var stored = 0
        var failed = 0
        var firstFailure: String?
        // Pipelined in batches: one round trip per batch instead of per key.
        for batchStart in stride(from: 0, to: keys, by: batch) {
            let range = batchStart..<min(batchStart + batch, keys)
            let bytes = range.flatMap { i -> [UInt8] in
                let key = prefix + String(i)
                return MemcacheCommand.store(.set, key: key, value: CheckableValue.pattern(forKey: key, size: valueSize),
                                             exptime: ttl).bytes
            }
            try client.sendRaw(bytes)
            for i in range {
                let reply = try client.readReply()
                if reply == .stored {
                    stored += 1
                } else {
                    failed += 1
                    firstFailure = firstFailure ?? "\(prefix)\(i): \(reply)"
                }
            }
        }
        let elapsed = ContinuousClock.now - start

        var verified: Int?
        var verifyErrors: Int?
        if verify {
            (verified, verifyErrors) = try readBack(client)
        }

        var summary = ["populate \(client.server): \(stored)/\(keys) stored, \(failed) failed in \(String(format: "%.3f", elapsed.seconds)) s (\(Int(rate(keys, elapsed))) sets/s)"]
        if let firstFailure { summary.append("first failure: \(firstFailure)") }
        if let verified, let verifyErrors { summary.append("verify: \(verified) values correct, \(verifyErrors) wrong or missing") }
        try report(summary, Result(server: client.server.description, keys: keys, stored: stored, failed: failed,
                                   verified: verified, verifyErrors: verifyErrors, seconds: elapsed.seconds,
                                   setsPerSec: rate(keys, elapsed)), json: json)
        if failed > 0 || (verifyErrors ?? 0) > 0 { throw ExitCode.failure }
    }

    /// Multi-gets every key back and counts values that are exactly right, and those that are not.
    private func readBack(_ client: MemcacheTCPClient) throws -> (correct: Int, wrong: Int) {
        var correct = 0
        for batchStart in stride(from: 0, to: keys, by: batch) {
            let names = (batchStart..<min(batchStart + batch, keys)).map { prefix + String($0) }
            let expected = Set(names)
            for value in try client.get(names)
            where expected.contains(value.key) && value.data == CheckableValue.pattern(forKey: value.key, size: valueSize) {
                correct += 1
            }
        }
        return (correct, keys - correct)
    }
}
