import Foundation
import Testing
@testable import ProbeTargets

/// The functions ARCHITECTURE.md probes on memcached 1.6.18.
let memcachedFunctions = [
    "do_store_item", "limited_get", "limited_get_locked", "item_get", "item_get_locked", "do_item_unlink",
    "item_touch", "do_add_delta", "process_command_ascii", "do_item_unlink_nolock", "lru_pull_tail",
    "do_item_link", "try_read_command_binary",
]
let debianMemcachedPath = "/usr/bin/memcached"
let debianMemcachedBuildID = "cb4951e778913a1598cb9fa92e8c377dfc545320"
let isCI = ProcessInfo.processInfo.environment["CI"] == "true"
/// On CI a missing memcached is a failure, elsewhere the test is skipped.
let memcachedAvailable = isCI || FileManager.default.fileExists(atPath: debianMemcachedPath)
let toolchainAvailable = ["/usr/bin/gcc", "/usr/bin/strip", "/usr/bin/objcopy", "/usr/bin/nm", "/usr/bin/readelf"]
    .allSatisfy { FileManager.default.isExecutableFile(atPath: $0) }

struct CommandFailed: Error, CustomStringConvertible {
    let description: String
}

/// Runs a tool and returns its stdout; throws if it exits non-zero.
@discardableResult
func run(_ tool: String, _ arguments: [String]) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: tool)
    process.arguments = arguments
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let output = out.fileHandleForReading.readDataToEndOfFile()
    let errors = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
        throw CommandFailed(description: "\(tool) \(arguments.joined(separator: " ")): \(String(decoding: errors, as: UTF8.self))")
    }
    return String(decoding: output, as: UTF8.self)
}

/// A fresh temporary directory, removed by the caller via `defer`.
func makeTemporaryDirectory() throws -> String {
    let path = NSTemporaryDirectory() + "probe-targets-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func removeDirectory(_ path: String) {
    try? FileManager.default.removeItem(atPath: path)
}

/// Expects `body` to throw a `ProbeTargetError` and returns it.
func expectProbeError(_ body: () throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) -> ProbeTargetError? {
    do {
        try body()
        Issue.record("expected a ProbeTargetError, nothing was thrown", sourceLocation: sourceLocation)
    } catch let error as ProbeTargetError {
        return error
    } catch {
        Issue.record("expected a ProbeTargetError, got \(type(of: error)): \(error)", sourceLocation: sourceLocation)
    }
    return nil
}

/// A tiny program whose functions carry memcached's names, built with gcc -g.
let sampleProgram = """
    __attribute__((noinline, used)) int do_store_item(volatile int *it, int comm) { return it[0] * 7 + comm; }
    __attribute__((noinline, used)) int item_touch(const char *key, int nkey) { return key[0] + nkey * 3; }
    __attribute__((noinline, used)) static int lru_pull_tail(int id) { return id * 5 + 1; }
    int main(int argc, char **argv) {
        volatile int item[1] = { argc };
        return do_store_item(item, argc) + item_touch(argv[0], argc) + lru_pull_tail(argc);
    }
    """
let sampleFunctions = ["do_store_item", "item_touch", "lru_pull_tail"]

/// Compiles `sampleProgram` into `directory/name` with extra gcc flags.
func buildSample(in directory: String, name: String, flags: [String]) throws -> String {
    let source = directory + "/sample.c"
    try sampleProgram.write(toFile: source, atomically: true, encoding: .utf8)
    let output = directory + "/" + name
    try run("/usr/bin/gcc", ["-g", "-O2", "-Wl,--build-id=sha1"] + flags + ["-o", output, source])
    return output
}

/// File offsets computed independently of ELFImage: addresses from `nm`, PT_LOAD rows from `readelf -lW`.
func expectedOffsets(of binary: String, functions: [String]) throws -> [String: UInt64] {
    var addresses: [String: UInt64] = [:]
    for line in try run("/usr/bin/nm", [binary]).split(separator: "\n") {
        let fields = line.split(separator: " ")
        if fields.count == 3, functions.contains(String(fields[2])), let address = UInt64(fields[0], radix: 16) {
            addresses[String(fields[2])] = address
        }
    }
    var loads: [(offset: UInt64, vaddr: UInt64, filesz: UInt64)] = []
    for line in try run("/usr/bin/readelf", ["-lW", binary]).split(separator: "\n") {
        let fields = line.split(separator: " ")
        guard fields.first == "LOAD", fields.count >= 5 else { continue }
        func number(_ s: Substring) -> UInt64 { UInt64(s.dropFirst(2), radix: 16) ?? 0 }
        loads.append((number(fields[1]), number(fields[2]), number(fields[4])))
    }
    var offsets: [String: UInt64] = [:]
    for (name, address) in addresses {
        if let load = loads.first(where: { address >= $0.vaddr && address < $0.vaddr + $0.filesz }) {
            offsets[name] = address - load.vaddr + load.offset
        }
    }
    return offsets
}

extension ProbeTarget {
    /// Where the probe goes and who said so (address and size are checked separately).
    struct Location: Equatable {
        let function: String
        let fileOffset: UInt64
        let source: ProbeTarget.Source
    }
    var location: Location { Location(function: function, fileOffset: fileOffset, source: source) }
}
