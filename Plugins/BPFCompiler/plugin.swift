import Foundation
import PackagePlugin

/// Compiles every `bpf/**/*.bpf.c` of the package with the toolchain's own
/// clang and embeds the objects in the target as base64 string literals.
///
/// Every BPF source and every header under `bpf/` is declared as an input, so
/// editing any of them rebuilds the objects. A *new* `.bpf.c` is only seen
/// once SwiftPM re-plans the build (for instance after Package.swift changes).
@main
struct BPFCompiler: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) async throws -> [Command] {
        let bpfDir = context.package.directoryURL.appending(path: "bpf").resolvingSymlinksInPath()
        let (programs, headers) = try scan(bpfDir)
        if programs.isEmpty {
            Diagnostics.warning("BPFCompiler: no *.bpf.c under \(bpfDir.path)")
        }

        let clang = try findTool("clang", context: context)
        let objcopy = try findTool("llvm-objcopy", context: context)
        let output = context.pluginWorkDirectoryURL.appending(path: "EmbeddedBPFObjects.swift")
        let workDir = context.pluginWorkDirectoryURL.appending(path: "obj")

        var arguments = [
            "--clang", clang.path, "--objcopy", objcopy.path,
            "--include", bpfDir.appending(path: "include").path,
            "--work-dir", workDir.path, "--output", output.path,
        ]
        arguments += programs.map(\.path)

        return [
            .buildCommand(
                displayName: "Compiling \(programs.count) BPF object(s) for \(target.name)",
                executable: try context.tool(named: "bpf-embed").url,
                arguments: arguments,
                inputFiles: programs + headers + [clang, objcopy],
                outputFiles: [output]
            )
        ]
    }

    /// All `*.bpf.c` and `*.h` files under `dir`, sorted so the output is stable.
    private func scan(_ dir: URL) throws -> (programs: [URL], headers: [URL]) {
        var programs: [URL] = []
        var headers: [URL] = []
        let enumerator = FileManager.default.enumerator(
            at: dir, includingPropertiesForKeys: [.isRegularFileKey])
        while let url = enumerator?.nextObject() as? URL {
            let name = url.lastPathComponent
            if name.hasSuffix(".bpf.c") {
                programs.append(url)
            } else if name.hasSuffix(".h") {
                headers.append(url)
            }
        }
        return (programs.sorted { $0.path < $1.path }, headers.sorted { $0.path < $1.path })
    }

    /// The toolchain's tool: SwiftPM's own lookup first, then next to swiftc.
    private func findTool(_ name: String, context: PluginContext) throws -> URL {
        if let tool = try? context.tool(named: name) {
            return tool.url
        }
        if let swiftc = try? context.tool(named: "swiftc") {
            let sibling = swiftc.url.deletingLastPathComponent().appending(path: name)
            if FileManager.default.isExecutableFile(atPath: sibling.path) {
                return sibling
            }
        }
        for dir in ["/opt/swift/usr/bin", "/usr/bin"] {
            let candidate = URL(fileURLWithPath: dir).appending(path: name)
            if FileManager.default.isExecutableFile(atPath: candidate.path) {
                return candidate
            }
        }
        throw PluginError.toolNotFound(name)
    }
}

enum PluginError: Error, CustomStringConvertible {
    case toolNotFound(String)

    var description: String {
        switch self {
        case .toolNotFound(let name):
            "BPFCompiler: cannot find '\(name)' in the Swift toolchain (it needs clang with the BPF target and llvm-objcopy)"
        }
    }
}
