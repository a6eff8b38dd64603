/// Values a reader can check byte for byte without knowing what was written.
public enum CheckableValue {
    /// `size` bytes determined by `key` alone: `"<key>|"` repeated and cut to length. A value
    /// returned under the wrong key, shifted, or cut short differs.
    public static func pattern(forKey key: String, size: Int) -> [UInt8] {
        let unit = Array((key + "|").utf8)
        return (0..<size).map { unit[$0 % unit.count] }
    }

    /// The width of the version field: versions below 10^12 sort as text and as numbers alike.
    static let versionDigits = 12

    /// `"key=<key> v=<version> "` padded with `.` to `size` bytes (longer if the header needs it).
    public static func versioned(key: String, version: UInt64, size: Int) -> [UInt8] {
        let digits = String(version)
        let header = "key=\(key) v=\(String(repeating: "0", count: max(0, versionDigits - digits.count)) + digits) "
        return Array(header.utf8) + [UInt8](repeating: UInt8(ascii: "."), count: max(0, size - header.utf8.count))
    }

    /// The version in a ``versioned(key:version:size:)`` value, or nil if `data` is not exactly such a
    /// value for `key` and `size`.
    public static func version(in data: [UInt8], key: String, size: Int) -> UInt64? {
        let prefix = Array("key=\(key) v=".utf8)
        let headerSize = prefix.count + versionDigits + 1
        guard data.count == max(size, headerSize), data.starts(with: prefix),
              data[headerSize - 1] == UInt8(ascii: " "),
              data[headerSize...].allSatisfy({ $0 == UInt8(ascii: ".") })
        else { return nil }
        let digits = data[prefix.count..<headerSize - 1]
        guard digits.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else { return nil }
        return UInt64(String(decoding: digits, as: UTF8.self))
    }
}
