import Foundation

/// Privileged tests run as root. Elsewhere they are skipped — except in CI
/// (CI=true), where a missing privilege must fail the run, never skip it.
enum Privilege {
    static var isRoot: Bool { geteuid() == 0 }
    static var inCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }
    static var canRun: Bool { isRoot || inCI }
}
