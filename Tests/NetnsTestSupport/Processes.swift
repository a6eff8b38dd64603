import Foundation

// What the netns end-to-end test targets (IntegrationTests, FaultTests) share: processes, the
// test bed, mc-load's JSON results. Test targets import it with `@testable`.

/// A failure of the test harness itself, with what went wrong.
struct HarnessError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Privileged tests (network namespaces) need root. Without it they are skipped, except under CI
/// (CI=true), where a skip would hide that nothing ran: there they run and fail.
enum Privilege {
    static let isRoot = getuid() == 0
    static let isCI = ProcessInfo.processInfo.environment["CI"] == "true"
    /// For `.enabled(if:)`: run when root, or when CI must see the failure.
    static let shouldRun = isRoot || isCI

    /// Fails the test (under CI) when not root.
    static func require() throws {
        guard isRoot else { throw HarnessError("this test needs root (network namespaces); CI=true makes that a failure") }
    }
}

/// Locations of the repository's scripts and of the build products next to the test binary.
enum Paths {
    /// Tests/NetnsTestSupport/Processes.swift → the repository root.
    static let repoRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static let testbedScript = repoRoot.appendingPathComponent("kernel-scripts/testbed.sh").path

    /// The build products folder: `swift test` runs the test binary from there.
    static let productsDir: URL = {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: exe).deletingLastPathComponent()
    }()

    /// The path of a sibling build product such as `mc-load` or `cxl-bmc`.
    static func product(_ name: String) throws -> String {
        let path = productsDir.appendingPathComponent(name).path
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw HarnessError("\(name) not found in \(productsDir.path); build it first (swift build --product \(name))")
        }
        return path
    }
}

/// The outcome of a finished process.
struct ProcessResult: CustomStringConvertible {
    var command: [String]
    var status: Int32
    var stdout: String
    var stderr: String

    var description: String {
        "\(command.joined(separator: " ")) exited \(status)\nstdout:\n\(stdout)\nstderr:\n\(stderr)"
    }

    /// The last line of stdout decoded as `T` (mc-load's `--json` object; keys in snake_case).
    func json<T: Decodable>(_ type: T.Type) throws -> T {
        guard let line = stdout.split(separator: "\n").last else { throw HarnessError("no output from \(command)") }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        do {
            return try decoder.decode(T.self, from: Data(line.utf8))
        } catch {
            throw HarnessError("cannot decode \(T.self) from '\(line)': \(error)")
        }
    }
}

/// Runs `executable` with `arguments` to completion, output captured. A process still running at
/// `timeout` is killed — by its own pid, nothing else.
func runProcess(_ executable: String, _ arguments: [String], timeout: Duration = .seconds(60)) throws -> ProcessResult {
    let out = OutputFile()
    let err = OutputFile()
    let child = try ChildProcess(executable, arguments, stdout: out.path, stderr: err.path)
    let status = child.wait(timeout: timeout)
    if status == nil {
        child.signal(SIGKILL)
        _ = child.wait(timeout: .seconds(10))
    }
    let result = ProcessResult(command: [executable] + arguments, status: status ?? -1,
                               stdout: out.contents(), stderr: err.contents())
    if status == nil { throw HarnessError("timed out after \(timeout): \(result)") }
    return result
}

/// A child process started with `posix_spawn`.
///
/// Not Foundation's `Process`: that passes on the spawning thread's signal mask, and test threads
/// block most signals, so a child would never see SIGTERM. Here the mask is emptied and the usual
/// signals get their default actions back.
final class ChildProcess {
    let pid: pid_t
    private var exitStatus: Int32?

    /// Starts `executable` (an absolute path) with stdin from /dev/null and stdout/stderr to files
    /// (or /dev/null).
    init(_ executable: String, _ arguments: [String], stdout: String? = nil, stderr: String? = nil) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdout ?? "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        if let stderr, stderr == stdout {
            // One file for both: share one open file description, or each stream overwrites the other.
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        } else {
            posix_spawn_file_actions_addopen(&actions, 2, stderr ?? "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var mask = sigset_t()
        sigemptyset(&mask)
        posix_spawnattr_setsigmask(&attributes, &mask)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for sig in [SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCHLD] { sigaddset(&defaults, sig) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
        guard rc == 0 else { throw HarnessError("cannot start \(executable): \(String(cString: strerror(rc)))") }
        self.pid = pid
    }

    /// Whether the child has exited (and been reaped).
    var hasExited: Bool { exitStatus != nil || reap(WNOHANG) }

    /// Waits up to `timeout` for the child to exit; its exit code (128 + signal if killed), or nil.
    func wait(timeout: Duration) -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while !hasExited && ContinuousClock.now < deadline { usleep(5_000) }
        return exitStatus
    }

    /// Sends `signal` to this child only, unless it has been reaped (its pid may be reused then).
    func signal(_ signal: Int32) {
        if !hasExited { kill(pid, signal) }
    }

    private func reap(_ options: Int32) -> Bool {
        var status: Int32 = 0
        guard waitpid(pid, &status, options) == pid else { return false }
        // WIFEXITED / WEXITSTATUS / WTERMSIG are C macros Swift cannot import.
        exitStatus = status & 0x7F == 0 ? (status >> 8) & 0xFF : 128 + status & 0x7F
        return true
    }
}

/// A temporary file for a child's output, removed when done.
final class OutputFile {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("cxl-bmc-test-\(UUID().uuidString)").path

    func contents() -> String {
        (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}
