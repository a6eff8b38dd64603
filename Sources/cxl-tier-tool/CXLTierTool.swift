import ArgumentParser
import CXLTier

#if canImport(Glibc)
import Glibc
#endif

/// Writer, reader and verifier processes for the CXLTier multi-process and kill -9 tests.
///
/// Values are a function of (key, version) — `expectedValue` — so any process can tell a right
/// value from a wrong one without talking to the writer.
@main
struct CXLTierTool: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cxl-tier-tool",
        abstract: "Test driver for CXLTier: a writer, readers and a verifier on one pool.",
        subcommands: [Write.self, Read.self, Verify.self]
    )
}

/// The value a put of `key` at `version` stores: the key and version, then a pattern of both.
func expectedValue(key: String, version: UInt64, size: Int) -> [UInt8] {
    var v = Array("\(key)|\(version)|".utf8)
    var x = version &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(key.utf8.count)
    while v.count < size {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17
        v.append(UInt8(truncatingIfNeeded: x))
    }
    return v
}

/// Parses "key|version|" at the start of a value.
func versionInValue(_ value: [UInt8]) -> (key: String, version: UInt64)? {
    let parts = value.prefix(80).split(separator: UInt8(ascii: "|"), maxSplits: 2, omittingEmptySubsequences: false)
    guard parts.count >= 2, let key = String(validating: parts[0], as: UTF8.self),
          let vs = String(validating: parts[1], as: UTF8.self), let version = UInt64(vs) else { return nil }
    return (key, version)
}

struct PoolArguments: ParsableArguments {
    @Argument(help: "The pool file.") var path: String
    @Option(help: "Partition.") var partition = 0
    @Option(help: "Number of distinct keys (k0 … kN-1).") var keys = 1000
}

struct Write: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Attach as the partition's writer and put (and delete) random keys.")
    @OptionGroup var pool: PoolArguments
    @Option(help: "Append 'P key version' / 'D key version' after each acknowledged put / delete.") var ack: String?
    @Option(help: "Stop after this many operations (0: run until killed or --seconds).") var count = 0
    @Option(help: "Stop after this many seconds (0: no limit).") var seconds = 0.0
    @Option(help: "Largest value size; sizes vary from 24 up to it.") var valueSize = 200
    @Option(help: "One operation in N is a delete (0: none).") var deleteEvery = 0
    @Option(help: "Random seed.") var seed: UInt64 = 1
    @Option(help: "After each operation, read one of the keys k0 … kN-1 in turn (sets CLOCK reference bits; 0: none).") var hot = 0
    @Flag(help: "Append the record's log position to each acknowledged put ('P key version position').") var positions = false

    func run() throws {
        let p = try Pool(path: pool.path)
        let writer = try p.writer(partition: pool.partition)
        var version = writer.lastRecovery.lastVersion
        let fd = ack.map { open($0, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644) } ?? -1
        var rng = SplitMix(seed: seed ^ UInt64(getpid()))
        let deadline = seconds > 0 ? now() + seconds : .infinity
        var i = 0
        // Tells a test that recovery is over and puts are starting.
        _ = write(1, "ready\n", 6)
        while count == 0 || i < count {
            if i % 256 == 0 && now() > deadline { break }
            i += 1
            let key = "k\(rng.next() % UInt64(pool.keys))"
            version += 1
            let isDelete = deleteEvery > 0 && rng.next() % UInt64(deleteEvery) == 0
            let result: WriteResult
            if isDelete {
                result = try writer.delete(Array(key.utf8), version: version)
            } else {
                let size = 24 + Int(rng.next() % UInt64(max(1, valueSize - 23)))
                result = try writer.put(Array(key.utf8), expectedValue(key: key, version: version, size: size), version: version)
            }
            guard case .stored = result else { throw ValidationError("put \(key) v\(version) refused: \(result)") }
            // The record's position, read back right after the put (nothing can have moved it yet).
            let position = positions && !isDelete ? writer.partitionReader.position(Array(key.utf8)).map { " \($0)" } ?? " ?" : ""
            if hot > 0 { _ = writer.get(Array("k\(i % hot)".utf8)) }
            if fd >= 0 {
                let line = Array("\(isDelete ? "D" : "P") \(key) \(version)\(position)\n".utf8)
                _ = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            }
        }
        writer.close()
        print("{\"ops\":\(i),\"last_version\":\(version)}")
    }
}

struct Read: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Read random keys lock-free and count wrong values (exit 1 if any).")
    @OptionGroup var pool: PoolArguments
    @Option(help: "Seconds to run.") var seconds = 2.0
    @Option(help: "Random seed.") var seed: UInt64 = 2

    func run() throws {
        let p = try Pool(path: pool.path)
        let reader = try p.reader(partition: pool.partition)
        var rng = SplitMix(seed: seed ^ UInt64(getpid()))
        let deadline = now() + seconds
        var reads = 0, hits = 0, wrong = 0
        var lastSeen: [String: UInt64] = [:]
        var regressions = 0
        while true {
            if reads % 256 == 0 && now() > deadline { break }
            reads += 1
            let key = "k\(rng.next() % UInt64(pool.keys))"
            guard let item = reader.get(Array(key.utf8)) else { continue }
            hits += 1
            if item.value != expectedValue(key: key, version: item.version, size: item.value.count) || versionInValue(item.value)?.key != key {
                wrong += 1
                FileHandleStderr.write("wrong value for \(key) v\(item.version): \(item.value.prefix(40))\n")
            }
            // One writer, versions only grow: a reader must never see a key go back in time.
            if let last = lastSeen[key], item.version < last { regressions += 1 }
            lastSeen[key] = item.version
        }
        let c = reader.counters
        print("{\"reads\":\(reads),\"hits\":\(hits),\"wrong\":\(wrong),\"regressions\":\(regressions),\"checksum_failures\":\(c.checksumFailures)}")
        if wrong > 0 || regressions > 0 { throw ExitCode(1) }
    }
}

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Re-attach as writer (recovery) and check every acknowledged operation.")
    @OptionGroup var pool: PoolArguments
    @Option(help: "The writer's ack file.") var ack: String
    @Flag(help: "The log reclaims (acks carry positions): a put is allowed to be missing only when its record lies before the recovered head.") var reclaim = false

    func run() throws {
        let p = try Pool(path: pool.path)
        let writer = try p.writer(partition: pool.partition)
        let text = try String(contentsOfFile: ack)
        let reader = writer.partitionReader
        let head = writer.lastRecovery.head
        let result = verifyAcks(text, get: { writer.get(Array($0.utf8)) }, version: { reader.currentVersion(Array($0.utf8)) },
                                reclaimedBefore: reclaim ? head : nil, position: { reader.position(Array($0.utf8)) })
        writer.close()
        // Terminate a torn last line, then record what recovery showed was applied.
        let lines = (text.isEmpty || text.hasSuffix("\n") ? "" : "\n") + result.adopted.map { $0 + "\n" }.joined()
        if !lines.isEmpty {
            let fd = open(ack, O_WRONLY | O_APPEND | O_CLOEXEC)
            guard fd >= 0 else { throw ValidationError("cannot append to \(ack)") }
            _ = Array(lines.utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            close(fd)
        }
        let r = writer.lastRecovery
        print("{\"acked_keys\":\(result.keys),\"lost\":\(result.lost),\"wrong\":\(result.wrong),\"adopted\":\(result.adopted.count),"
              + "\"found\":\(result.found),\"reclaimed\":\(result.reclaimed),\"reset\":\(r.resetLog ? 1 : 0),\"head\":\(r.head),\"tail\":\(r.tail)}")
        if result.lost > 0 || result.wrong > 0 { throw ExitCode(1) }
    }
}

/// Checks an ack log: every key's last acknowledged put is found at that version or newer with
/// the right value, and a key whose last acknowledged operation is a delete is absent or newer.
/// A put may also be superseded by a delete newer than every acknowledgement: the operation the
/// writer had completed but not yet acknowledged when it was killed.
///
/// With `reclaimedBefore` (a log that reclaims: the recovered head), a put's record may also be
/// gone because the CLOCK hand passed it — allowed only when its acknowledged log position (the
/// fourth field) is before the head; a missing put at or after the head, or without a position,
/// is lost. Whatever is found must still be at the acknowledged version or newer with its own
/// value: reclaim never makes a wrong or older value acceptable. A found put whose record moved
/// (re-appended by the hand) is logged again with its new position, so a later round checks the
/// copy; a copy made and lost between two verifications is the one case this cannot tell from a
/// legitimate drop.
func verifyAcks(_ text: String, get: (String) -> TierItem?,
                version: (String) -> (version: UInt64, deleted: Bool)?,
                reclaimedBefore head: Int? = nil, position: (String) -> Int? = { _ in nil })
    -> (keys: Int, lost: Int, wrong: Int, adopted: [String], found: Int, reclaimed: Int) {
    var last: [String: (delete: Bool, version: UInt64, position: Int?)] = [:]
    var maxAcked: UInt64 = 0
    var excused = false
    // Operations found applied but never acknowledged (the one in flight at each kill): from now
    // on they are the state to check against, so the caller appends them to the ack log.
    var adopted: [String] = []
    // A line without its newline was being written when the writer died: not acknowledged.
    let complete = text.hasSuffix("\n") ? Substring(text) : text[..<(text.lastIndex(of: "\n").map { text.index(after: $0) } ?? text.startIndex)]
    for line in complete.split(separator: "\n") {
        let f = line.split(separator: " ")
        guard f.count == 3 || f.count == 4, let v = UInt64(f[2]) else { continue }
        let key = String(f[1])
        maxAcked = max(maxAcked, v)
        if let prev = last[key], prev.version > v { continue }
        last[key] = (f[0] == "D", v, f.count == 4 ? Int(f[3]) : nil)
    }
    var lost = 0, wrong = 0, foundCount = 0, reclaimed = 0
    for (key, op) in last {
        let item = get(key)
        let found = item.map { "v\($0.version)" } ?? "nothing"
        if op.delete {
            if let item, item.version <= op.version {
                wrong += 1
                FileHandleStderr.write("wrong: \(key) deleted at v\(op.version), found \(found)\n")
            }
        } else if let item {
            foundCount += 1
            if item.version > op.version {
                adopted.append("P \(key) \(item.version)" + (head != nil ? " \(position(key).map(String.init) ?? "?")" : ""))
            } else if head != nil, item.version == op.version, let now = position(key), now != op.position {
                // Re-appended by the hand since: from now on the copy's position is the one to check.
                adopted.append("P \(key) \(item.version) \(now)")
            }
            if item.version < op.version {
                lost += 1
                FileHandleStderr.write("lost: \(key) put at v\(op.version), found \(found)\n")
            }
            if item.value != expectedValue(key: key, version: item.version, size: item.value.count) {
                wrong += 1
                FileHandleStderr.write("wrong: \(key) v\(item.version) has a value that is not its own\n")
            }
        } else if let newest = version(key), newest.deleted, newest.version > maxAcked, !excused {
            // Only one operation can have been in flight, so this excuses one key at most.
            excused = true
            adopted.append("D \(key) \(newest.version)")
        } else if let head, let p = op.position, p < head {
            // The hand passed the record (dropped unreferenced, or a re-appended copy dropped later).
            reclaimed += 1
        } else {
            lost += 1
            FileHandleStderr.write("lost: \(key) put at v\(op.version)\(op.position.map { " at position \($0)" } ?? ""), found nothing\(head.map { " (head \($0))" } ?? "")\n")
        }
    }
    return (last.count, lost, wrong, adopted, foundCount, reclaimed)
}

struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

enum FileHandleStderr {
    static func write(_ s: String) {
        let b = Array(s.utf8)
        _ = b.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }
}

extension String {
    init(contentsOfFile path: String) throws {
        guard let f = fopen(path, "r") else { throw ValidationError("cannot open \(path)") }
        defer { fclose(f) }
        var data: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = fread(&buf, 1, buf.count, f)
            if n <= 0 { break }
            data += buf[..<n]
        }
        self = String(decoding: data, as: UTF8.self)
    }
}
