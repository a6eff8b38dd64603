import Foundation

/// Uprobe file offsets for one exact build of a binary, keyed by its GNU build-id,
/// for binaries shipped without symbols. Each entry carries the bytes expected at
/// the offset, checked before use.
///
/// Format: `#` comment lines, one of which contains `build-id <hex>`; then one
/// entry per line: `name 0xOFFSET size=N prologue=HEX` (`size= N` is accepted too);
/// global variables as `name 0xVADDR size=N kind=data`.
public struct OffsetTable: Sendable, Equatable {
    /// One function of the table.
    public struct Entry: Sendable, Equatable {
        public let function: String
        public let fileOffset: UInt64
        public let size: UInt64?
        /// Bytes expected at `fileOffset` in the binary.
        public let prologue: [UInt8]
        /// Line in the table file, for messages.
        public let line: Int
        /// A global variable (`kind=data`): `fileOffset` is then its virtual
        /// address, and there is no prologue to check.
        public var isData: Bool = false
    }

    /// Where the table came from (its file name), for messages.
    public let name: String
    /// Lowercase hex build-id of the binary the table describes.
    public let buildID: String
    public let entries: [String: Entry]

    public init(name: String, text: String) throws {
        self.name = name
        var buildID: String?
        var entries: [String: Entry] = [:]
        func fail(_ line: Int, _ reason: String) -> ProbeTargetError {
            .tableParse(table: name, line: line, reason: reason)
        }
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = index + 1
            let trimmed = rawLine.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty { continue }
            let tokens = trimmed.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            if trimmed.hasPrefix("#") {
                guard let i = tokens.firstIndex(of: "build-id") else { continue }
                guard i + 1 < tokens.count, let id = Self.hexBuildID(tokens[i + 1]) else {
                    throw fail(line, "`build-id` is not followed by a hex build-id")
                }
                if let previous = buildID, previous != id { throw fail(line, "second build-id \(id) (already \(previous))") }
                buildID = id
                continue
            }
            guard tokens.count >= 2 else { throw fail(line, "expected `name 0xOFFSET size=N prologue=HEX`") }
            let function = tokens[0]
            guard tokens[1].hasPrefix("0x"), let offset = UInt64(tokens[1].dropFirst(2), radix: 16) else {
                throw fail(line, "offset `\(tokens[1])` is not a hex number like 0x1f00")
            }
            var size: UInt64?
            var prologue: [UInt8]?
            var isData = false
            var rest = tokens.dropFirst(2).makeIterator()
            while let token = rest.next() {
                guard let eq = token.firstIndex(of: "=") else { throw fail(line, "expected key=value, found `\(token)`") }
                let key = String(token[..<eq])
                var value = String(token[token.index(after: eq)...])
                if value.isEmpty, let next = rest.next() { value = next }
                switch key {
                case "size":
                    guard let n = UInt64(value) else { throw fail(line, "size `\(value)` is not a decimal number") }
                    size = n
                case "kind":
                    guard value == "data" || value == "function" else {
                        throw fail(line, "kind `\(value)` is not `data` or `function`")
                    }
                    isData = value == "data"
                case "prologue":
                    guard let bytes = Self.parseHex(value), !bytes.isEmpty else {
                        throw fail(line, "prologue `\(value)` is not an even-length hex byte string")
                    }
                    prologue = bytes
                default:
                    throw fail(line, "unknown key `\(key)`")
                }
            }
            if isData { prologue = prologue ?? [] }
            guard let prologue else { throw fail(line, "\(function) has no prologue=HEX (offsets are only used after checking it)") }
            guard entries[function] == nil else {
                throw fail(line, "\(function) already listed on line \(entries[function]!.line)")
            }
            entries[function] = Entry(function: function, fileOffset: offset, size: size, prologue: prologue, line: line,
                                      isData: isData)
        }
        guard let buildID else { throw fail(1, "no `# ... build-id <hex>` header line") }
        self.buildID = buildID
        self.entries = entries
    }

    public init(contentsOf url: URL) throws {
        let text: String
        do {
            text = try String(contentsOf: url, encoding: .utf8)
        } catch {
            throw ProbeTargetError.io(path: url.path, reason: error.localizedDescription)
        }
        try self.init(name: url.lastPathComponent, text: text)
    }

    /// The tables bundled with this module (`Offsets/*.offsets`).
    public static func loadShipped() throws -> [OffsetTable] {
        guard let directory = Bundle.module.url(forResource: "Offsets", withExtension: nil) else { return [] }
        let files: [URL]
        do {
            files = try FileManager.default.contentsOfDirectory(at: directory, includingPropertiesForKeys: nil)
        } catch {
            throw ProbeTargetError.io(path: directory.path, reason: error.localizedDescription)
        }
        return try files.filter { $0.pathExtension == "offsets" }
            .sorted { $0.lastPathComponent < $1.lastPathComponent }
            .map { try OffsetTable(contentsOf: $0) }
    }

    /// `loadShipped()`, or no tables if the bundle is unreadable (the test suite
    /// checks that it loads, so this only hides a broken installation's details).
    public static let shipped: [OffsetTable] = (try? loadShipped()) ?? []

    static func hexBuildID(_ token: String) -> String? {
        let id = token.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: ",;."))
        guard id.count >= 8, parseHex(id) != nil else { return nil }
        return id
    }

    static func parseHex(_ text: String) -> [UInt8]? {
        let digits = Array(text.utf8)
        guard digits.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(digits.count / 2)
        var i = 0
        while i < digits.count {
            guard let hi = hexDigit(digits[i]), let lo = hexDigit(digits[i + 1]) else { return nil }
            bytes.append(hi << 4 | lo)
            i += 2
        }
        return bytes
    }

    private static func hexDigit(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
