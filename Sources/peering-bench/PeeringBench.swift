import ArgumentParser
import Foundation
import NIOCore
import NIOPosix
import Peering

/// Peering transport benchmark: remote get latency over TCP (loopback), and a 100-key batched
/// multi-get against 100 single gets. Prints Markdown.
@main
struct PeeringBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "peering-bench",
        abstract: "Remote get p50/p99 over loopback TCP and batched multi-get vs single gets (Markdown on stdout)."
    )

    @Option(help: "Single gets to time.")
    var gets = 20_000

    @Option(help: "Rounds of 100-key multi-get and of 100 single gets.")
    var rounds = 300

    @Option(help: "Value size in bytes.")
    var valueSize = 64

    @Option(help: "Also measure against this memcached binary (started on a free loopback port, killed at the end); empty to skip.")
    var memcached = "/usr/bin/memcached"

    @Flag(help: "Run client and server on one event-loop thread (fewer cross-thread wake-ups on a small machine).")
    var sharedLoop = false

    @Flag(help: "Also measure a PeerServer in a network namespace over a veth pair (root; the namespace and the pair are created and removed by this run).")
    var veth = false

    @Option(help: ArgumentHelp("Serve on IPV4:PORT until killed (what --veth runs inside the namespace).", valueName: "IPV4:PORT"))
    var serve: String?

    static let psk = try! PreSharedKey("bench-key-0123456789abcdef")

    func run() async throws {
        if let serve {
            let parts = serve.split(separator: ":")
            guard parts.count == 2, let port = Int(parts[1]) else { throw ValidationError("--serve IPV4:PORT") }
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            _ = try await PeerServer.start(host: String(parts[0]), port: port, store: InMemoryStore(),
                                           configuration: PeerServer.Configuration(localNodeID: 1, psk: Self.psk),
                                           group: group)
            while true { try await Task.sleep(for: .seconds(3600)) }
        }
        let serverGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let clientGroup = sharedLoop ? serverGroup : MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let psk = Self.psk
        let server = try await PeerServer.start(
            host: "127.0.0.1", port: 0, store: InMemoryStore(),
            configuration: PeerServer.Configuration(localNodeID: 1, psk: psk), group: serverGroup)
        let client = PeerClient(address: PeerAddress(host: "127.0.0.1", port: server.port!),
                                configuration: PeerClient.Configuration(localNodeID: 0, peerNodeID: 1, psk: psk),
                                eventLoop: clientGroup.next())

        print("# Peering transport benchmark\n")
        print("`peering-bench --gets \(gets) --rounds \(rounds) --value-size \(valueSize)` (release build), "
            + "\(ProcessInfo.processInfo.activeProcessorCount) cores, \(Date()), load average at start "
            + "\(loadAverage()) (the machine may be shared: figures are noisy).\n")
        print("Client and server are in one process on \(sharedLoop ? "one event-loop thread" : "separate event-loop threads"), over loopback TCP; "
            + "each figure includes the async/await hop into the client's event loop. "
            + "With --veth, a second server runs in its own network namespace behind a veth pair. "
            + "The cluster lookups by access path (direct read vs network) follow the table.\n")
        print("| target | single get p50 | p99 | mean | 100-key multi-get (median) | 100 single gets, sequential (median) | ratio | 100 single gets, concurrent (median) |")
        print("|---|---|---|---|---|---|---|---|")
        let ours = try await measure(client: client)
        print(ours.row(name: "PeerServer (in-memory store, PSK auth)"))
        await client.shutdown()
        try await server.close()

        if !memcached.isEmpty, FileManager.default.isExecutableFile(atPath: memcached) {
            let process = try startMemcached(memcached)
            defer { process.terminate(); process.waitUntilExit() }
            let plain = PeerClient(address: PeerAddress(host: "127.0.0.1", port: process.port),
                                   configuration: PeerClient.Configuration(localNodeID: 0, peerNodeID: 1, psk: nil),
                                   eventLoop: clientGroup.next())
            let figures = try await measure(client: plain)
            print(figures.row(name: "memcached 1.6 (meta protocol, no auth)"))
            await plain.shutdown()
        }
        if veth {
            do {
                let testbed = try VethTestbed()
                defer { testbed.remove() }
                let port = 7400
                let server = try testbed.spawn([CommandLine.arguments[0], "--serve", "\(testbed.innerAddress):\(port)"])
                defer { kill(server.processIdentifier, SIGKILL); server.waitUntilExit() }
                guard waitForPort(host: testbed.innerAddress, port: port) else { throw BenchError.serverDidNotStart }
                let remote = PeerClient(address: PeerAddress(host: testbed.innerAddress, port: port),
                                        configuration: PeerClient.Configuration(localNodeID: 0, peerNodeID: 1, psk: psk),
                                        eventLoop: clientGroup.next())
                let figures = try await measure(client: remote)
                print(figures.row(name: "PeerServer in a netns over veth (PSK auth)"))
                await remote.shutdown()
            } catch {
                print("| PeerServer in a netns over veth | not measured: \(error) | | | | | | |")
            }
        }
        print("\nratio = 100 sequential single gets ÷ one 100-key multi-get (higher is better for batching).")
        AccessPathBench.report(lookups: gets, valueSize: valueSize)
        if !sharedLoop { try await clientGroup.shutdownGracefully() }
        try await serverGroup.shutdownGracefully()
    }

    struct Figures {
        var p50: Double, p99: Double, mean: Double
        var batch: Double, sequential: Double, concurrent: Double

        func row(name: String) -> String {
            "| \(name) | \(us(p50)) | \(us(p99)) | \(us(mean)) | \(us(batch)) | \(us(sequential)) | "
                + String(format: "**%.1f×**", sequential / batch) + " | \(us(concurrent)) |"
        }

        func us(_ seconds: Double) -> String { String(format: "%.1f µs", seconds * 1e6) }
    }

    func measure(client: PeerClient) async throws -> Figures {
        let value = [UInt8](repeating: 0x61, count: valueSize)
        let keys = (0..<1000).map { Array("bench:key:\($0)".utf8) }
        for key in keys { _ = try await client.set(key, value: value) }
        for key in keys.prefix(500) { _ = try await client.get(key) }

        var latencies: [Double] = []
        latencies.reserveCapacity(gets)
        for i in 0..<gets {
            let start = DispatchTime.now().uptimeNanoseconds
            guard try await client.get(keys[i % keys.count]) != nil else { throw BenchError.miss }
            latencies.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        latencies.sort()

        var batch: [Double] = [], sequential: [Double] = [], concurrent: [Double] = []
        for round in 0..<rounds {
            let slice = Array(keys[(round * 100) % 900 ..< (round * 100) % 900 + 100])
            var start = DispatchTime.now().uptimeNanoseconds
            let items = try await client.getMany(slice)
            batch.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
            guard items.allSatisfy({ $0 != nil }) else { throw BenchError.miss }

            start = DispatchTime.now().uptimeNanoseconds
            for key in slice { guard try await client.get(key) != nil else { throw BenchError.miss } }
            sequential.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)

            start = DispatchTime.now().uptimeNanoseconds
            try await withThrowingTaskGroup(of: Bool.self) { tasks in
                for key in slice { tasks.addTask { try await client.get(key) != nil } }
                for try await hit in tasks where !hit { throw BenchError.miss }
            }
            concurrent.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }
        return Figures(
            p50: latencies[latencies.count / 2], p99: latencies[latencies.count * 99 / 100],
            mean: latencies.reduce(0, +) / Double(latencies.count),
            batch: median(batch), sequential: median(sequential), concurrent: median(concurrent))
    }

    func loadAverage() -> String {
        guard let text = try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8) else { return "?" }
        return text.split(separator: " ").prefix(3).joined(separator: " ")
    }

    enum BenchError: Error { case miss, memcachedDidNotStart, serverDidNotStart, command(String) }

    /// A network namespace and a veth pair: `pb<pid>a` (10.251.N.1/30) here, `pb<pid>b` (10.251.N.2/30) inside.
    final class VethTestbed {
        let namespace: String
        let outer: String
        let inner: String
        let outerAddress: String
        let innerAddress: String
        static let ip = FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") ? "/usr/sbin/ip" : "/sbin/ip"

        init() throws {
            let pid = getpid()
            namespace = "pbench\(pid)"
            outer = "pb\(pid)a"
            inner = "pb\(pid)b"
            let subnet = Int(pid) % 60 * 4
            outerAddress = "10.251.\(subnet / 256).\(subnet % 256 + 1)"
            innerAddress = "10.251.\(subnet / 256).\(subnet % 256 + 2)"
            do {
                try Self.run(["netns", "add", namespace])
                try Self.run(["link", "add", outer, "type", "veth", "peer", "name", inner])
                try Self.run(["link", "set", inner, "netns", namespace])
                try Self.run(["addr", "add", "\(outerAddress)/30", "dev", outer])
                try Self.run(["link", "set", outer, "up"])
                try Self.run(["-n", namespace, "addr", "add", "\(innerAddress)/30", "dev", inner])
                try Self.run(["-n", namespace, "link", "set", inner, "up"])
                try Self.run(["-n", namespace, "link", "set", "lo", "up"])
            } catch {
                remove()
                throw error
            }
        }

        /// Runs `arguments` inside the namespace (`ip netns exec` execs, so the pid is the program's).
        func spawn(_ arguments: [String]) throws -> Process {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: Self.ip)
            process.arguments = ["netns", "exec", namespace] + arguments
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            return process
        }

        func remove() {
            try? Self.run(["link", "del", outer])
            try? Self.run(["netns", "del", namespace])
        }

        static func run(_ arguments: [String]) throws {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: ip)
            process.arguments = arguments
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            process.waitUntilExit()
            guard process.terminationStatus == 0 else {
                throw BenchError.command("ip \(arguments.joined(separator: " ")) exited with \(process.terminationStatus)")
            }
        }
    }

    /// Polls a TCP connect to an IPv4 address for up to 5 s.
    func waitForPort(host: String, port: Int) -> Bool {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr(host)
        for _ in 0..<250 {
            let probe = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(probe, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            close(probe)
            if connected == 0 { return true }
            usleep(20_000)
        }
        return false
    }

    final class MemcachedProcess {
        let process: Process
        let port: Int
        init(process: Process, port: Int) {
            self.process = process
            self.port = port
        }
        /// SIGKILL: a child inherits the parent's blocked-signal mask, which may hold SIGTERM.
        func terminate() { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        func waitUntilExit() { process.waitUntilExit() }
    }

    func startMemcached(_ path: String) throws -> MemcachedProcess {
        // A free port: bind port 0, read it back, release it.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length)
                return getsockname(fd, $0, &length)
            }
        }
        let port = Int(UInt16(bigEndian: address.sin_port))
        close(fd)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = ["-U", "0", "-p", String(port), "-l", "127.0.0.1", "-u", "root", "-t", "1"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let running = MemcachedProcess(process: process, port: port)
        for _ in 0..<100 {
            let probe = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(probe, $0, length) }
            }
            close(probe)
            if connected == 0 { return running }
            usleep(20_000)
        }
        running.terminate()
        running.waitUntilExit()
        throw BenchError.memcachedDidNotStart
    }
}
