import CLoaderShim
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Routes libbpf's and libxdp's messages to swift-log and keeps the warnings
/// of the operation in progress, so a ``BPFError`` can carry them (and a
/// rejected program's verifier log, which libbpf prints as a warning).
///
/// libbpf messages are logged at debug level (info/debug messages at trace):
/// the loader turns the ones that matter into errors or its own warnings.
enum LibraryLog {
    static let logger = Logger(label: "cxl-bmc.libbpf")

    /// Warnings printed on each thread inside ``capture(_:)``, by thread.
    private static let captured = Mutex<[UInt: [String]]>([:])

    private static let installed: Void = {
        cxlbmc_set_log { source, level, message in
            guard let message else { return }
            LibraryLog.receive(source: source, level: level, message: String(cString: message))
        }
    }()

    /// Installs the print callbacks (once).
    static func install() {
        _ = installed
    }

    private static func receive(source: Int32, level: Int32, message: String) {
        var text = message.hasSuffix("\n") ? String(message.dropLast()) : message
        let prefix = source == CXLBMC_LOG_LIBXDP ? "libxdp: " : "libbpf: "
        if !text.hasPrefix(prefix) {
            text = prefix + text
        }
        if level == 0 {
            // A verifier log can run to megabytes: it reaches the user through
            // BPFError.verifierLog, not the debug log.
            if text.contains("-- BEGIN PROG LOAD LOG --") {
                logger.trace("\(text)")
            } else {
                logger.debug("\(text)")
            }
            let thread = UInt(bitPattern: Int(bitPattern: pthread_self()))
            captured.withLock { all in
                all[thread]?.append(text)
            }
        } else {
            logger.trace("\(text)")
        }
    }

    /// Runs `body`, returning its result and the warnings libbpf/libxdp
    /// printed on this thread meanwhile. `body` must not suspend.
    static func capture<T>(_ body: () throws -> T) rethrows -> (T, [String]) {
        install()
        let thread = UInt(bitPattern: Int(bitPattern: pthread_self()))
        let outer = captured.withLock { all -> [String]? in
            let previous = all[thread]
            all[thread] = []
            return previous
        }
        func finish() -> [String] {
            captured.withLock { all in
                let mine = all[thread] ?? []
                all[thread] = outer.map { $0 + mine }
                return mine
            }
        }
        do {
            let result = try body()
            return (result, finish())
        } catch {
            _ = finish()
            throw error
        }
    }

    /// The verifier log and program name inside libbpf's
    /// "prog 'NAME': -- BEGIN PROG LOAD LOG --\n...-- END PROG LOAD LOG --".
    static func verifierLog(in messages: [String]) -> (program: String, log: String)? {
        for message in messages.reversed() {
            guard let begin = message.firstRange(of: "-- BEGIN PROG LOAD LOG --\n") else { continue }
            var log = message[begin.upperBound...]
            if let end = log.firstRange(of: "-- END PROG LOAD LOG --") {
                log = log[..<end.lowerBound]
            }
            var program = "?"
            if let open = message.firstRange(of: "prog '"),
                let close = message[open.upperBound...].firstIndex(of: "'")
            {
                program = String(message[open.upperBound..<close])
            }
            return (program, String(log))
        }
        return nil
    }
}
