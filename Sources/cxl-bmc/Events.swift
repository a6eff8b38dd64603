import ArgumentParser
import Foundation
import Loader
import MemcachedProbes

#if canImport(Glibc)
import Glibc
#endif

/// Options naming the memcached to probe, shared by `events` and `attach`.
struct MemcachedTargetOptions: ParsableArguments {
    @Option(
        name: [.customShort("m"), .customLong("memcached")],
        help: ArgumentHelp(
            "Probe every process running this memcached binary, now and later, in this network namespace.",
            valueName: "PATH"))
    var binary: String?

    @Option(name: [.customShort("p"), .customLong("pid")], help: "Probe this memcached process only.")
    var pid: Int32?

    @Option(
        name: .customLong("debug-root"),
        help: ArgumentHelp("Where separate debug files are looked up (.build-id/xx/rest.debug).", valueName: "DIR"))
    var debugRoot = "/usr/lib/debug"

    var given: Bool { binary != nil || pid != nil }

    func validate() throws {
        if binary != nil && pid != nil {
            throw ValidationError("give --memcached PATH or --pid PID, not both")
        }
        if let pid, pid <= 0 { throw ValidationError("--pid must be a process id") }
    }

    /// Resolves the targets in the binary and attaches the probes.
    func attach(
        l1PinDirectory: String?, ringBytes: UInt32 = MemcachedProbes.defaultRingBytes, everySiteRuns: String? = nil,
        storeEntryProbe: Bool = false
    ) throws -> MemcachedProbes {
        let path: String
        let scope: MemcachedProbes.Scope
        if let pid {
            path = try MemcachedProbes.executable(of: pid)
            scope = .process(pid: pid)
        } else if let binary {
            guard FileManager.default.isExecutableFile(atPath: binary) else {
                throw ValidationError("--memcached \(binary): no such executable")
            }
            path = binary
            scope = try .currentNetworkNamespace()
        } else {
            throw ValidationError("give --memcached PATH or --pid PID")
        }
        var targets = try MemcachedTargets.resolve(binary: path, debugRoot: debugRoot)
        if storeEntryProbe { targets.storeCommandRegister = nil }
        return try MemcachedProbes(targets: targets, scope: scope, l1PinDirectory: l1PinDirectory, ringBytes: ringBytes,
                                   everySiteRuns: everySiteRuns)
    }
}

/// Set by SIGINT/SIGTERM; polled by the event loop.
nonisolated(unsafe) var eventsStopRequested: sig_atomic_t = 0

struct Events: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print what memcached does, live: misses, stores, deletes, touches, incr/decr, flushes, evictions.",
        discussion: """
            Attaches uprobes to an unmodified memcached (found by its symbols, its debug file, or \
            cxl-bmc's offset table for Debian's stripped build) and prints one line per event, like \
            memcached's own `watch`, until SIGINT/SIGTERM, --count or --duration. Values up to 4096 \
            bytes travel with the event; larger or chunked ones are shown by length, or fetched from \
            memcached with --fetch (mg KEY v f t c). Events lost because the ring buffer was full are \
            counted and reported at exit (and with a warning as soon as they happen).

            With --l1 IFACE the probes also bump the generations of the L1 cache attached on IFACE, \
            as `cxl-bmc attach IFACE --memcached PATH` does.
            """)

    @OptionGroup var memcached: MemcachedTargetOptions

    @Option(help: "Share the L1 maps of this interface (attached with `cxl-bmc attach IFACE`).")
    var l1: String?

    @Option(help: "Stop after this many events.")
    var count: Int?

    @Option(help: ArgumentHelp("Stop after this many seconds.", valueName: "SEC"))
    var duration: Double?

    @Option(help: ArgumentHelp("Fetch values that did not fit in the event from memcached at this address.", valueName: "HOST:PORT"))
    var fetch: String?

    @Flag(help: "One JSON object per event (values base64), and a final one with the counters.")
    var json = false

    @Flag(help: "Decode the events but print only the final counters (measures what a consumer keeps up with).")
    var quiet = false

    @Option(name: .customLong("ring-size"), help: ArgumentHelp("Ring buffer bytes (a power of two, at least 4096).", valueName: "BYTES"))
    var ringSize: UInt32 = MemcachedProbes.defaultRingBytes

    @Flag(name: .customLong("bench-empty"), help: .hidden)
    var benchEmpty = false  // bench_uprobes.py: empty programs at every site (the probes' own cost)

    @Flag(name: .customLong("bench-entry-probe"), help: .hidden)
    var benchEntryProbe = false  // bench_uprobes.py: do_store_item's entry probed too (two traps per SET)

    @Flag(name: .customLong("bench-no-drain"), help: .hidden)
    var benchNoDrain = false  // bench_uprobes.py: the real programs, nobody reading the ring

    @OptionGroup var pins: PinOptions

    func validate() throws {
        guard memcached.given else { throw ValidationError("give --memcached PATH or --pid PID") }
        guard ringSize >= 4096, ringSize & (ringSize - 1) == 0 else {
            throw ValidationError("--ring-size must be a power of two of at least 4096")
        }
        if let count, count <= 0 { throw ValidationError("--count must be positive") }
        if let duration, duration <= 0 { throw ValidationError("--duration must be positive") }
        if let fetch, Self.hostPort(fetch) == nil { throw ValidationError("--fetch wants HOST:PORT, got \(fetch)") }
        if quiet && (json || fetch != nil) { throw ValidationError("--quiet prints no events: leave out --json and --fetch") }
    }

    static func hostPort(_ text: String) -> (String, UInt16)? {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]), port > 0 else {
            return nil
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return host.isEmpty ? nil : (host, port)
    }

    func run() throws {
        try CLI.run {
            try Privileges.check(for: "attach uprobes to memcached")
            signal(SIGPIPE, SIG_IGN)
            for s in [SIGINT, SIGTERM] { signal(s, { _ in eventsStopRequested = 1 }) }
            let l1Dir = l1.map { BPFFS.pinDirectory(for: $0, root: pins.pinRoot) }
            let probes = try memcached.attach(
                l1PinDirectory: l1Dir, ringBytes: ringSize, everySiteRuns: benchEmpty ? MemcachedProbes.emptyProgram : nil,
                storeEntryProbe: benchEntryProbe)
            let reader = try probes.eventReader()
            let fetcher = try fetch.flatMap(Self.hostPort).map { try MemcachedValueFetcher(host: $0.0, port: $0.1) }
            CLI.printError("tracing \(probes.targets.binary) (build-id \(probes.targets.buildID ?? "none")), \(probes.probeCount) probes; Ctrl-C to stop")
            let deadline = duration.map { Date().addingTimeInterval($0) }
            var seen = 0
            var lostReported: UInt64 = 0
            var nextLossCheck = Date()
            while eventsStopRequested == 0 {
                if let count, seen >= count { break }
                if let deadline, Date() >= deadline { break }
                if benchNoDrain {
                    usleep(20_000)
                    continue
                }
                try reader.poll(timeoutMs: 20) { event in
                    if let count, seen >= count { return }
                    seen += 1
                    var shown = event
                    var note = ""
                    if event.needsFetch, let fetcher {
                        switch (try? fetcher.fetch(event)) {
                        case .fetched(let full): shown = full
                        case .superseded(let cas): note = " (fetch: superseded by cas \(cas))"
                        case .gone: note = " (fetch: gone)"
                        case nil: note = " (fetch failed)"
                        }
                    }
                    if !quiet { print(json ? Self.json(shown) : shown.summary + note) }
                }
                fflush(nil)
                guard Date() >= nextLossCheck else { continue }
                nextLossCheck = Date().addingTimeInterval(1)
                let lost = try probes.stats().lost
                if lost > lostReported {
                    CLI.printError("warning: \(lost - lostReported) events lost (ring buffer full); \(lost) in all")
                    lostReported = lost
                }
            }
            let stats = try probes.stats()
            probes.detach()
            let summary = "events: \(seen) \(quiet ? "decoded" : "printed"), \(stats.emitted) emitted, \(stats.lost) lost, \(reader.malformed) malformed, \(stats.filtered) from other processes ignored"
            if json {
                print("{\"printed\":\(seen),\"emitted\":\(stats.emitted),\"lost\":\(stats.lost),\"malformed\":\(reader.malformed),\"filtered\":\(stats.filtered)}")
            }
            CLI.printError(summary)
        }
    }

    static func json(_ e: MemcachedEvent) -> String {
        var fields: [String] = [
            "\"kind\":\"\(e.kind)\"", "\"pid\":\(e.pid)", "\"key_b64\":\"\(Data(e.key).base64EncodedString())\"",
            "\"key\":\(Stats.jsonString(e.keyString))", "\"command\":\(e.command)",
        ]
        if let c = e.storeCommand { fields.append("\"store\":\"\(c)\"") }
        if let m = e.missSource { fields.append("\"source\":\"\(m)\"") }
        fields.append("\"flags\":\(e.clientFlags)")
        fields.append("\"exptime_rel\":\(e.exptimeRelative)")
        fields.append("\"exptime\":\(e.exptimeUnix.map(String.init) ?? "null")")
        fields.append("\"now_rel\":\(e.memcachedNow)")
        fields.append("\"cas\":\(e.cas.map(String.init) ?? "null")")
        fields.append("\"value_len\":\(e.valueLength)")
        fields.append("\"value_b64\":\(e.value.map { "\"\(Data($0).base64EncodedString())\"" } ?? "null")")
        fields.append("\"number\":\(e.number)")
        return "{" + fields.joined(separator: ",") + "}"
    }
}
