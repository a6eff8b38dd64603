import CCXLTierShim
import CXLTier

#if canImport(Glibc)
import Glibc
#endif

// The CXLTier benchmark: get latency in-process and from a second process, put rate on one
// core and metadata bytes per item, each beside a Swift Dictionary baseline measured in the
// same run. Prints a Markdown table.
//
//   cxl-tier-bench [--items N] [--value-size B] [--samples S] [--bytes-per-slot B] [--dir DIR]
//   cxl-tier-bench --reader POOL --items N --samples S     (the second process; prints one line)

struct Options {
    var items = 10_000_000
    var valueSize = 64
    var samples = 1_000_000
    var bytesPerSlot = PoolFormat.defaultBytesPerSlot
    var dir = "/dev/shm"
    var readerPool: String?
    /// Time the fetch of the key from the 10 M-key table too (how earlier runs measured).
    var keyInTimer = false
    /// Only fill a pool and print the put rate (for A/B runs of the put path).
    var putOnly = false

    init(_ args: [String]) {
        var i = 1
        func next() -> String {
            i += 1
            guard i < args.count else { fatal("missing value after \(args[i - 1])") }
            return args[i]
        }
        while i < args.count {
            switch args[i] {
            case "--items": items = Int(next()) ?? items
            case "--value-size": valueSize = Int(next()) ?? valueSize
            case "--samples": samples = Int(next()) ?? samples
            case "--bytes-per-slot": bytesPerSlot = Int(next()) ?? bytesPerSlot
            case "--dir": dir = next()
            case "--reader": readerPool = next()
            case "--key-in-timer": keyInTimer = true
            case "--put-only": putOnly = true
            default: fatal("unknown argument \(args[i])")
            }
            i += 1
        }
    }
}

func fatal(_ message: String) -> Never {
    printErr("cxl-tier-bench: \(message)\n")
    exit(2)
}

@inline(__always) func nanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

func key(_ i: Int) -> [UInt8] {
    var k: [UInt8] = Array("key:".utf8)
    var digits = [UInt8](repeating: UInt8(ascii: "0"), count: 10)
    var n = i
    for d in (0..<10).reversed() { digits[d] = UInt8(ascii: "0") + UInt8(n % 10); n /= 10 }
    k += digits
    return k
}

struct Latency {
    var p50: Double
    var p99: Double
    var mean: Double
}

func percentiles(_ samples: inout [UInt64]) -> Latency {
    samples.sort()
    let mean = Double(samples.reduce(0, +)) / Double(samples.count)
    return Latency(p50: Double(samples[samples.count / 2]), p99: Double(samples[samples.count * 99 / 100]), mean: mean)
}

/// Random sample indexes, the same sequence for every contender.
func sampleIndexes(count: Int, items: Int) -> [Int] {
    var x: UInt64 = 0x1234_5678_9ABC_DEF1
    return (0..<count).map { _ in
        x ^= x << 13; x ^= x >> 7; x ^= x << 17
        return Int(x % UInt64(items))
    }
}

/// Writes key `i` into `buffer` (14 bytes, the same bytes as `key(i)`) without reading memory.
@inline(__always) func fillKey(_ buffer: inout [UInt8], _ i: Int) {
    buffer.withUnsafeMutableBufferPointer { b in
        var n = i
        for d in (4..<14).reversed() { b[d] = UInt8(ascii: "0") + UInt8(n % 10); n /= 10 }
    }
}

/// Times calls of `body(key)` one by one, the key for each sample written into a reused buffer
/// before the timer starts: a server has the key in hand (in its request buffer, in cache), so
/// fetching it from a 10 M-key table — two more DRAM misses — is not part of a get. The timer's
/// own cost is included and reported separately.
func timeEach(_ indexes: [Int], _ body: ([UInt8]) -> Bool) -> (Latency, Int) {
    var samples = [UInt64](repeating: 0, count: indexes.count)
    var hits = 0
    var buffer = key(0)
    for (n, i) in indexes.enumerated() {
        if options.keyInTimer {
            let t0 = nanos()
            let hit = body(keyTable[i])
            samples[n] = nanos() - t0
            if hit { hits += 1 }
            continue
        }
        fillKey(&buffer, i)
        let t0 = nanos()
        let hit = body(buffer)
        let t1 = nanos()
        samples[n] = t1 - t0
        if hit { hits += 1 }
    }
    return (percentiles(&samples), hits)
}

func rssBytes() -> Int {
    guard let f = fopen("/proc/self/statm", "r") else { return 0 }
    defer { fclose(f) }
    var size = 0, resident = 0
    withUnsafeMutablePointer(to: &size) { s in
        withUnsafeMutablePointer(to: &resident) { r in
            _ = withVaList([s, r]) { vfscanf(f, "%ld %ld", $0) }
        }
    }
    return resident * Int(sysconf(Int32(_SC_PAGESIZE)))
}

let options = Options(CommandLine.arguments)
/// Every key, for the puts (and for `--key-in-timer`).
let keyTable = (0..<options.items).map(key)

/// /proc/loadavg's first three fields: other work on the machine disturbs every figure.
func loadAverage() -> String {
    guard let f = fopen("/proc/loadavg", "r") else { return "?" }
    defer { fclose(f) }
    var buffer = [CChar](repeating: 0, count: 128)
    guard fgets(&buffer, 128, f) != nil else { return "?" }
    let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    return String(decoding: bytes, as: UTF8.self).split(separator: " ").prefix(3).joined(separator: " ")
}
let loadBefore = loadAverage()

if let path = options.readerPool {
    // The second process: read the first one's partition.
    do {
        let pool = try Pool(path: path)
        let reader = try pool.reader(partition: 0)
        let indexes = sampleIndexes(count: options.samples, items: options.items)
        _ = timeEach(Array(indexes.prefix(options.samples / 10))) { reader.get($0) != nil }
        let (lat, hits) = timeEach(indexes) { reader.get($0)?.value.count == options.valueSize }
        print("\(lat.p50) \(lat.p99) \(lat.mean) \(hits)")
        exit(0)
    } catch {
        fatal("reader: \(error)")
    }
}

let n = options.items
let recordSize = (16 + 14 + options.valueSize + 63) / 64 * 64
let logBytes = n * recordSize + n * recordSize / 50 + (1 << 20)
let poolSize = logBytes + logBytes / options.bytesPerSlot / 8 * 64 + (8 << 20)
let path = "\(options.dir)/cxl-tier-bench-\(getpid())"
printErr("cxl-tier-bench: \(n) items, \(options.valueSize) B values, pool \(poolSize >> 20) MiB at \(path), crc32c \(CRC32C.isHardware ? "SSE4.2" : "software")\n")

let keys = keyTable
let value = [UInt8](repeating: 0x5A, count: options.valueSize)
let indexes = sampleIndexes(count: options.samples, items: n)

// Timer overhead.
var timerSamples = (0..<100_000).map { _ -> UInt64 in let a = nanos(); let b = nanos(); return b - a }
let timer = percentiles(&timerSamples)

if options.putOnly {
    do {
        let pool = try Pool.create(path: path, size: poolSize, bytesPerSlot: options.bytesPerSlot)
        let writer = try pool.writer(partition: 0)
        let t0 = nanos()
        for i in 0..<n { _ = try writer.put(keys[i], value) }
        let seconds = Double(nanos() - t0) / 1e9
        unlink(path)
        print("put rate, one core: \(format2(Double(n) / seconds / 1e6)) M/s (load \(loadAverage()))")
        exit(0)
    } catch {
        unlink(path)
        fatal("\(error)")
    }
}

// Dictionary baseline: put rate, get latency, bytes per entry beyond key+value.
// Memory: a fill with fresh key and value arrays, RSS measured around it (not timed).
let rss0 = rssBytes()
var memoryDict: [[UInt8]: [UInt8]] = [:]
for i in 0..<n { memoryDict[key(i)] = value.withUnsafeBufferPointer { Array($0) } }
let dictBytes = rssBytes() - rss0
memoryDict = [:]
// Timed: the prepared keys, a fresh copy of the value per entry (CXLTier copies it too).
var dict: [[UInt8]: [UInt8]] = [:]
var t0 = nanos()
for i in 0..<n { dict[keys[i]] = value.withUnsafeBufferPointer { Array($0) } }
let dictPutSeconds = Double(nanos() - t0) / 1e9
_ = timeEach(Array(indexes.prefix(options.samples / 10))) { dict[$0] != nil }
let (dictGet, dictHits) = timeEach(indexes) { dict[$0]?.count == options.valueSize }
let dictCount = dict.count
dict = [:]

// CXLTier.
let pool: Pool
let writer: PartitionWriter
do {
    pool = try Pool.create(path: path, size: poolSize, bytesPerSlot: options.bytesPerSlot)
    writer = try pool.writer(partition: 0)
} catch {
    fatal("\(error)")
}
defer { unlink(path) }
t0 = nanos()
do {
    for i in 0..<n { _ = try writer.put(keys[i], value) }
} catch {
    unlink(path)
    fatal("put: \(error)")
}
let tierPutSeconds = Double(nanos() - t0) / 1e9
let stats = writer.stats()

// Puts in a batch with the buckets prefetched 8 puts ahead (the daemon's write-through queue
// delivers batches), into a second pool of the same geometry.
let ahead = 8
let tierBatchPutSeconds: Double
do {
    let path2 = path + "-batch"
    defer { unlink(path2) }
    let pool2 = try Pool.create(path: path2, size: poolSize, bytesPerSlot: options.bytesPerSlot)
    let writer2 = try pool2.writer(partition: 0)
    t0 = nanos()
    for i in 0..<n {
        if i + ahead < n { writer2.prefetch(keys[i + ahead]) }
        _ = try writer2.put(keys[i], value)
    }
    tierBatchPutSeconds = Double(nanos() - t0) / 1e9
    writer2.close()
} catch {
    unlink(path)
    fatal("batch put: \(error)")
}

// Gets in a batch (a multi-get), prefetched the same way: throughput, not per-call latency.
t0 = nanos()
var batchHits = 0
for (k, i) in indexes.enumerated() {
    if k + ahead < indexes.count { writer.partitionReader.prefetch(keys[indexes[k + ahead]]) }
    if writer.partitionReader.get(keys[i]) != nil { batchHits += 1 }
}
let batchGetNanos = Double(nanos() - t0) / Double(indexes.count)
let reader = writer.partitionReader
_ = timeEach(Array(indexes.prefix(options.samples / 10))) { reader.get($0) != nil }
let (tierGet, tierHits) = timeEach(indexes) { reader.get($0)?.value.count == options.valueSize }

// The same gets over a 1000-key working set (cache resident): the CPU cost without DRAM misses.
let hotIndexes = indexes.map { $0 % 1000 }
let (tierHot, _) = timeEach(hotIndexes) { reader.get($0)?.value.count == options.valueSize }
var hotDict: [[UInt8]: [UInt8]] = [:]
for i in 0..<min(n, 1000) { hotDict[keys[i]] = [UInt8](value) }
let (dictHot, _) = timeEach(hotIndexes) { hotDict[$0]?.count == options.valueSize }

// What one dependent random load costs on this machine, over as much memory as the log:
// a cold get needs at least three (the key, the bucket, the record).
// One word per cache line, visited in a random single cycle (Sattolo's shuffle of the lines).
let chaseLines = min(poolSize, 1 << 30) / 64
var order = [Int](0..<chaseLines)
var shuffleState: UInt64 = 88172645463325252
for i in stride(from: chaseLines - 1, to: 0, by: -1) {
    shuffleState ^= shuffleState << 13; shuffleState ^= shuffleState >> 7; shuffleState ^= shuffleState << 17
    order.swapAt(i, Int(shuffleState % UInt64(i)))
}
var chase = [Int](repeating: 0, count: chaseLines * 8)
for k in 0..<chaseLines { chase[order[k] * 8] = order[(k + 1) % chaseLines] * 8 }
order = []
var cursor = 0
t0 = nanos()
for _ in 0..<2_000_000 { cursor = chase[cursor] }
let loadLatency = Double(nanos() - t0) / 2e6
chase = []

// Another process reads this partition.
var remote: (Latency, Int)?
do {
    var pid: pid_t = 0
    let exe = "/proc/self/exe"
    let args = [exe, "--reader", path, "--items", "\(n)", "--samples", "\(options.samples)", "--value-size", "\(options.valueSize)"] + (options.keyInTimer ? ["--key-in-timer"] : [])
    let argv = args.map { strdup($0) } + [nil]
    let outPath = "\(path).reader"
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    if posix_spawn(&pid, exe, &actions, nil, argv, environ) == 0 {
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        if let f = fopen(outPath, "r") {
            var p50 = 0.0, p99 = 0.0, mean = 0.0
            var hits = 0
            withUnsafeMutablePointer(to: &p50) { a in withUnsafeMutablePointer(to: &p99) { b in
                withUnsafeMutablePointer(to: &mean) { c in withUnsafeMutablePointer(to: &hits) { d in
                    _ = withVaList([a, b, c, d]) { vfscanf(f, "%lf %lf %lf %ld", $0) }
                } }
            } }
            fclose(f)
            if p50 > 0 { remote = (Latency(p50: p50, p99: p99, mean: mean), hits) }
        }
        unlink(outPath)
    }
    posix_spawn_file_actions_destroy(&actions)
    argv.forEach { free($0) }
}

// Metadata: the 16-byte record header (no flags, no exptime here) plus the index, amortized
// over the items stored; log padding (cache-line alignment) reported separately.
let g = writer.geometry
let stored = Double(stats.items)
let indexBytes = Double(g.bucketCount * 64)
let header = 16.0
let slotPerItem = 8.0
let indexPerItem = indexBytes / stored
let padding = Double(recordSize - (16 + 14 + options.valueSize))
let dictPerItem = Double(dictBytes) / Double(dictCount) - Double(14 + options.valueSize)

func ns(_ x: Double) -> String { String(Int(x.rounded())) + " ns" }
func ratio(_ a: Double, _ b: Double) -> String {
    let r = a / b
    return String(Int(r)) + "." + String(Int((r * 100).rounded()) % 100 / 10) + String(Int((r * 100).rounded()) % 10) + "×"
}
func verdict(_ ok: Bool) -> String { ok ? "met" : "**not met**" }
let putRate = Double(n) / tierPutSeconds
let dictRate = Double(n) / dictPutSeconds

print("""
## CXLTier benchmark

\(n) items, \(options.valueSize) B values, 14 B keys, emulated pool (\(path.hasPrefix("/dev/shm") ? "/dev/shm" : options.dir), \(poolSize >> 20) MiB), \
\(options.samples) random gets per measurement, release build, one core, crc32c \(CRC32C.isHardware ? "SSE4.2" : "software"). \
Latencies are per call and include the timer (clock_gettime pair: p50 \(ns(timer.p50))); \
\(options.keyInTimer ? "the key is fetched from the \(n)-key table inside the timer (two more DRAM misses per get)" : "the key is in hand (written into a reused buffer) when the timer starts").

| measurement | CXLTier | Swift Dictionary | CXLTier / Dictionary | target | |
|---|---|---|---|---|---|
| get p50, in-process | \(ns(tierGet.p50)) | \(ns(dictGet.p50)) | \(ratio(tierGet.p50, dictGet.p50)) | ≤ 300 ns | \(verdict(tierGet.p50 <= 300)) |
| get p99, in-process | \(ns(tierGet.p99)) | \(ns(dictGet.p99)) | \(ratio(tierGet.p99, dictGet.p99)) | ≤ 1000 ns | \(verdict(tierGet.p99 <= 1000)) |
| get p50, other process | \(remote.map { ns($0.0.p50) } ?? "failed") | \(ns(dictGet.p50)) (in-process) | \(remote.map { ratio($0.0.p50, dictGet.p50) } ?? "–") | ≤ 500 ns | \(verdict((remote?.0.p50 ?? .infinity) <= 500)) |
| get p99, other process | \(remote.map { ns($0.0.p99) } ?? "failed") | \(ns(dictGet.p99)) (in-process) | \(remote.map { ratio($0.0.p99, dictGet.p99) } ?? "–") | – | |
| get p50, 1000-key working set (cache resident) | \(ns(tierHot.p50)) | \(ns(dictHot.p50)) | \(ratio(tierHot.p50, dictHot.p50)) | – | |
| get p99, 1000-key working set | \(ns(tierHot.p99)) | \(ns(dictHot.p99)) | \(ratio(tierHot.p99, dictHot.p99)) | – | |
| put rate, one core | \(String(format2(putRate / 1e6))) M/s | \(String(format2(dictRate / 1e6))) M/s | \(ratio(putRate, dictRate)) | ≥ 2 M/s | \(verdict(putRate >= 2e6)) |
| put rate, batch with prefetch 8 ahead | \(format2(Double(n) / tierBatchPutSeconds / 1e6)) M/s | \(format2(dictRate / 1e6)) M/s | \(ratio(Double(n) / tierBatchPutSeconds, dictRate)) | ≥ 2 M/s | \(verdict(Double(n) / tierBatchPutSeconds >= 2e6)) |
| get, batch with prefetch 8 ahead: time per get | \(ns(batchGetNanos)) | \(ns(dictGet.mean)) (mean, one by one) | \(ratio(batchGetNanos, dictGet.mean)) | – | |
| metadata per item: header + one slot | \(Int(header + slotPerItem)) B | – | – | ≤ 24 B | \(verdict(header + slotPerItem <= 24)) |
| metadata per item: header + index amortized | \(format2(header + indexPerItem)) B | \(format2(dictPerItem)) B (RSS − payload) | \(ratio(header + indexPerItem, dictPerItem)) | ≤ 24 B | \(verdict(header + indexPerItem <= 24)) |

- Batched puts go into a second, empty pool of the same geometry; batched gets hit \(batchHits)/\(options.samples).
- Hits: CXLTier \(tierHits)/\(options.samples) in-process, \(remote.map { "\($0.1)" } ?? "–")/\(options.samples) from the other process; Dictionary \(dictHits)/\(options.samples).
- Stored \(stats.items) of \(n) items (\(stats.indexEvictions) evicted from the index because both buckets were full, \(stats.reclaimed) reclaimed by the log); \
index \(g.bucketCount) buckets × 8 slots = \(Int(indexBytes) >> 20) MiB, load \(format2(stored / Double(g.bucketCount * 8) * 100)) %.
- Log space per item: \(recordSize) B record = 16 B header + 14 B key + \(options.valueSize) B value + \(Int(padding)) B cache-line padding.
- Dictionary bytes per entry: RSS growth while filling a Dictionary with fresh key and value arrays, divided by the entries, minus the 14 + \(options.valueSize) payload bytes (array headers, malloc rounding and the hash table count as its metadata).
- One dependent random load over \(min(poolSize, 1 << 30) >> 20) MiB on this machine: \(ns(loadLatency)) (pointer chase in the same run, ended at line \(cursor / 8)). \
A cold get is at least three of those (the key, the bucket line, the record).
- Load average (1, 5, 15 min) on this \(sysconf(Int32(_SC_NPROCESSORS_ONLN)))-CPU machine: \(loadBefore) at the start, \(loadAverage()) at the end; \
anything above ~1 means other processes competed with the benchmark.
- Means: CXLTier get \(ns(tierGet.mean)), other process \(remote.map { ns($0.0.mean) } ?? "–"), Dictionary \(ns(dictGet.mean)).
""")

func format2(_ x: Double) -> String {
    let r = (x * 100).rounded() / 100
    let whole = Int(r)
    let frac = Int(((r - Double(whole)) * 100).rounded())
    return "\(whole).\(frac < 10 ? "0" : "")\(frac)"
}

func printErr(_ s: String) {
    let b = Array(s.utf8)
    _ = b.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}
