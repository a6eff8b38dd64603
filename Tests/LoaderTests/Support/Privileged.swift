import Foundation
import Loader
import Testing

/// Kernel tests need root. Outside CI they are skipped without it; with
/// CI=true a missing privilege fails them instead, so CI cannot go green by
/// skipping everything that matters.
enum Privileged {
    static let isCI = ProcessInfo.processInfo.environment["CI"] == "true"

    /// Whether the kernel suites run at all (as root, or in CI to fail there).
    static var shouldRun: Bool { Privileges.current.sufficient || isCI }

    /// Called first by every kernel suite.
    static func require() throws {
        try #require(
            Privileges.current.sufficient,
            "kernel tests need root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON); CI=true makes their absence a failure")
    }
}

/// A unique name for this process: pin roots, interfaces.
enum Unique {
    private static let counter = Counter()

    static func next() -> Int { counter.next() }

    /// A pin root of its own under /sys/fs/bpf, removed by `cleanUp`.
    static func pinRoot() -> String {
        "\(BPFFS.mountPoint)/cxl-bmc-test-\(getpid())-\(next())"
    }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0

    func next() -> Int {
        lock.lock()
        defer { lock.unlock() }
        value += 1
        return value
    }
}

/// Runs a command (ip, tc) and returns its exit status and output.
@discardableResult
func shell(_ arguments: String...) throws -> (status: Int32, output: String) {
    let process = Process()
    let tool = arguments[0]
    let candidates = ["/usr/sbin/\(tool)", "/sbin/\(tool)", "/usr/bin/\(tool)", "/bin/\(tool)"]
    guard let path = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
        throw ShellError(description: "\(tool) not found")
    }
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = Array(arguments.dropFirst())
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

struct ShellError: Error, CustomStringConvertible {
    let description: String
}

/// A veth pair in the root namespace with unique names, deleted on deinit.
final class VethPair {
    let name: String
    let peer: String

    init() throws {
        let id = "\(getpid() % 100_000)\(Unique.next())"
        name = "cbt\(id)a"
        peer = "cbt\(id)b"
        let add = try shell("ip", "link", "add", name, "type", "veth", "peer", "name", peer)
        guard add.status == 0 else {
            throw ShellError(description: "ip link add \(name): \(add.output)")
        }
        try shell("ip", "link", "set", name, "up")
        try shell("ip", "link", "set", peer, "up")
    }

    deinit {
        _ = try? shell("ip", "link", "del", name)
    }
}

/// A bridge: an interface whose driver has no native XDP.
final class Bridge {
    let name: String

    init() throws {
        name = "cbt\(getpid() % 100_000)\(Unique.next())br"
        let add = try shell("ip", "link", "add", name, "type", "bridge")
        guard add.status == 0 else {
            throw ShellError(description: "ip link add \(name) type bridge: \(add.output)")
        }
        try shell("ip", "link", "set", name, "up")
    }

    deinit {
        _ = try? shell("ip", "link", "del", name)
    }
}
