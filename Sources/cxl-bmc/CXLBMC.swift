import ArgumentParser
import Loader
import Logging

#if canImport(Glibc)
import Glibc
#endif

@main
struct CXLBMC: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cxl-bmc",
        abstract: "A memcached accelerator: answers UDP GETs from BPF maps at XDP (L1), watches memcached through uprobes, keeps a second tier (L3).",
        discussion: """
            cxl-bmc attach IFACE loads the L1 programs and attaches the ingress program \
            (XDP) to IFACE; memcached's UDP replies fill L1 through a TC egress program \
            pinned at /sys/fs/bpf/cxl-bmc/IFACE/tc_egress. With --memcached PATH or --pid \
            PID it also puts uprobes on memcached, which invalidate L1 exactly and feed L3 \
            (--pool PATH: a CXL pool made by `cxl-bmc pool create`, emulated by a file in \
            /dev/shm; --no-cxl: in memory). cxl-bmc events prints memcached's events live. \
            Every command but pool and cluster needs root (CAP_BPF, CAP_NET_ADMIN, \
            CAP_PERFMON).

            Set CXL_BMC_DEBUG=1 for debug logs (and the verifier log of a rejected \
            program), CXL_BMC_DEBUG=2 for libbpf's own messages too.
            """,
        subcommands: [Attach.self, Detach.self, Status.self, Stats.self, Events.self, Cluster.self, PoolCommand.self]
    )
}

/// `--xdp-mode`: native, skb, or auto (native, falling back to skb).
enum XDPModeArgument: String, ExpressibleByArgument, CaseIterable {
    case auto, native, skb

    var request: XDPModeRequest {
        switch self {
        case .auto: .auto
        case .native: .native
        case .skb: .skb
        }
    }
}

/// Options every command that touches pins shares.
struct PinOptions: ParsableArguments {
    @Option(
        name: .customLong("pin-root"),
        help: ArgumentHelp("Directory on a bpffs holding one pin directory per interface.", valueName: "DIR"))
    var pinRoot: String = BPFFS.defaultPinRoot
}

enum CLI {
    /// CXL_BMC_DEBUG: 0 info, 1 debug, 2 trace (libbpf's messages).
    static let debugLevel: Int = {
        guard let value = getenv("CXL_BMC_DEBUG") else { return 0 }
        return Int(String(cString: value)) ?? 1
    }()

    static let bootstrapLogging: Void = {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = debugLevel >= 2 ? .trace : debugLevel == 1 ? .debug : .info
            return handler
        }
    }()

    static let logger = Logger(label: "cxl-bmc")

    /// Runs a command's body: a ``BPFError`` (or any error) becomes one clear
    /// line on stderr and exit status 1, plus the verifier log's tail when
    /// CXL_BMC_DEBUG is set.
    static func run(_ body: () throws -> Void) throws {
        _ = bootstrapLogging
        do {
            try body()
        } catch let error as BPFError {
            printError("error: \(error)")
            if case .verifierRejected = error.kind {
                if debugLevel > 0, let tail = error.verifierLogTail(lines: 40) {
                    printError("verifier log (last 40 lines):\n\(tail)")
                } else {
                    printError("(set CXL_BMC_DEBUG=1 to see the verifier log)")
                }
            } else if debugLevel > 0 {
                for message in error.libraryMessages.suffix(10) {
                    printError("  \(message)")
                }
            }
            throw ExitCode.failure
        } catch let error as ExitCode {
            throw error
        } catch {
            printError("error: \(error)")
            throw ExitCode.failure
        }
    }

    static func printError(_ text: String) {
        let line = Array((text + "\n").utf8)
        _ = line.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }
}
