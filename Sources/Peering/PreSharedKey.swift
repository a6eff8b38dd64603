#if canImport(Glibc)
import Glibc
#endif

/// The cluster's pre-shared key, read from `psk_file`.
///
/// The file holds the key as text (e.g. `openssl rand -hex 32 > peer.key`); surrounding
/// whitespace is ignored, at least 16 bytes must remain. The file must be a regular file not
/// readable or writable by group or other (`chmod 600`), as ssh does for private keys.
public struct PreSharedKey: Sendable, Equatable {
    public static let minimumLength = 16
    public let bytes: [UInt8]

    public init(bytes: [UInt8]) throws(PeerError) {
        guard bytes.count >= Self.minimumLength else {
            throw .badKey("the pre-shared key is \(bytes.count) bytes; at least \(Self.minimumLength) are required")
        }
        self.bytes = bytes
    }

    public init(_ text: String) throws(PeerError) { try self.init(bytes: Array(text.utf8)) }

    /// Reads and checks `path`.
    public static func load(path: String) throws(PeerError) -> PreSharedKey {
        var info = stat()
        guard stat(path, &info) == 0 else { throw .badKey("\(path): \(errnoDescription())") }
        guard (info.st_mode & S_IFMT) == S_IFREG else { throw .badKey("\(path): not a regular file") }
        if info.st_mode & 0o077 != 0 {
            let mode = String(info.st_mode & 0o777, radix: 8)
            throw .badKey("\(path): mode \(mode) lets group or other access the key; run chmod 600 \(path)")
        }
        guard let raw = readFileBytes(path) else { throw .badKey("\(path): \(errnoDescription())") }
        let isSpace: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x09 || $0 == 0x0a || $0 == 0x0d }
        let trimmed = raw.drop(while: isSpace).reversed().drop(while: isSpace).reversed()
        do {
            return try PreSharedKey(bytes: Array(trimmed))
        } catch {
            throw .badKey("\(path): \(error.message)")
        }
    }
}
