import Foundation

/// Everything that can go wrong while reading an ELF file, an offset table, or
/// resolving uprobe targets. Every malformed input ends up here; nothing traps.
public enum ProbeTargetError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The file could not be read.
    case io(path: String, reason: String)
    /// The bytes are not an ELF file at all (too short for a header, bad magic).
    case notELF(reason: String)
    /// A valid ELF file this parser does not handle (only ELF64 little-endian is).
    case unsupportedELF(reason: String)
    /// A header or table points past the end of the file.
    case truncated(what: String, end: UInt64, fileSize: Int)
    /// A structure is internally inconsistent (bad entry size, string without NUL, ...).
    case malformed(String)
    /// A symbol's address is not inside a file-backed executable PT_LOAD of the binary.
    case symbolNotMapped(function: String, address: UInt64, source: String)
    /// Several different addresses carry the same function name.
    case ambiguousSymbol(function: String, addresses: [UInt64], source: String)
    /// The binary's bytes at a table offset are not the table's recorded prologue.
    case prologueMismatch(function: String, offset: UInt64, expected: [UInt8], found: [UInt8], table: String)
    /// A table offset is not inside an executable segment of the binary.
    case offsetNotExecutable(function: String, offset: UInt64, table: String)
    /// Some requested functions were found nowhere; `notes` says what was tried.
    case functionsNotFound(binary: String, buildID: String?, missing: [String], notes: [String])
    /// An offset table line could not be parsed.
    case tableParse(table: String, line: Int, reason: String)

    public var description: String {
        switch self {
        case let .io(path, reason):
            return "cannot read \(path): \(reason)"
        case let .notELF(reason):
            return "not an ELF file: \(reason)"
        case let .unsupportedELF(reason):
            return "unsupported ELF file: \(reason)"
        case let .truncated(what, end, fileSize):
            return "truncated ELF file: \(what) ends at byte \(end) but the file has \(fileSize) bytes"
        case let .malformed(reason):
            return "malformed ELF file: \(reason)"
        case let .symbolNotMapped(function, address, source):
            return "\(function) at address \(hex(address)) (from \(source)) is not in a file-backed executable PT_LOAD segment of the binary"
        case let .ambiguousSymbol(function, addresses, source):
            return "\(function) has several addresses in \(source): \(addresses.map(hex).joined(separator: ", "))"
        case let .prologueMismatch(function, offset, expected, found, table):
            return "refusing to probe \(function) at file offset \(hex(offset)) (offset table \(table)): "
                + "expected prologue \(hexBytes(expected)), found \(hexBytes(found)); "
                + "the binary is not the build the table was derived from, and a probe there could land mid-instruction and crash the process"
        case let .offsetNotExecutable(function, offset, table):
            return "offset table \(table) puts \(function) at file offset \(hex(offset)), which is not in an executable segment of the binary"
        case let .functionsNotFound(binary, buildID, missing, notes):
            let id = buildID ?? "<none>"
            var text = "\(binary) (build-id \(id)): cannot locate \(missing.joined(separator: ", ")). "
            if !notes.isEmpty { text += "Tried: " + notes.joined(separator: "; ") + ". " }
            text += "Fix: install the debug symbols for exactly this build (build-id \(id)) so that "
                + "/usr/lib/debug/.build-id/\(id.prefix(2))/\(id.dropFirst(2)).debug exists — for Debian's memcached "
                + "that is memcached-dbgsym from the debug archive (deb http://deb.debian.org/debian-debug bookworm-debug main) — "
                + "or ship/pass an offset table for build-id \(id) (see docs/uprobe-targets.md)."
            return text
        case let .tableParse(table, line, reason):
            return "\(table):\(line): \(reason)"
        }
    }
}

func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }

func hexBytes(_ bytes: [UInt8]) -> String {
    bytes.isEmpty ? "<none>" : bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
}
