/// The memcached binary-protocol messages the tests need.
///
/// memcached picks a connection's protocol from its first byte, so binary requests must go on a
/// connection that has sent no text command.
public enum MemcacheBinary {
    static let requestMagic: UInt8 = 0x80
    static let responseMagic: UInt8 = 0x81
    static let headerSize = 24

    public enum Opcode: UInt8, Sendable {
        case get = 0x00
        case set = 0x01
        case add = 0x02
        case replace = 0x03
        case delete = 0x04
        case increment = 0x05
        case decrement = 0x06
        case flush = 0x08
        case append = 0x0e
        case prepend = 0x0f
        case touch = 0x1c
        case getAndTouch = 0x1d
    }

    /// Response status codes memcached uses for set and delete.
    public enum Status: UInt16, Sendable {
        case success = 0x0000
        case keyNotFound = 0x0001
        case keyExists = 0x0002
        case valueTooLarge = 0x0003
        case invalidArguments = 0x0004
        case itemNotStored = 0x0005
    }

    /// A binary-protocol response.
    public struct Response: Equatable, Sendable {
        public var opcode: UInt8
        /// The raw status; see ``Status``.
        public var status: UInt16
        public var opaque: UInt32
        public var cas: UInt64
        public var extras: [UInt8]
        public var key: [UInt8]
        public var value: [UInt8]
    }

    /// A set request: extras are flags and expiration; `cas` 0 means unconditional.
    public static func set(key: String, value: [UInt8], flags: UInt32 = 0, exptime: UInt32 = 0,
                           cas: UInt64 = 0, opaque: UInt32 = 0) -> [UInt8] {
        request(.set, key: Array(key.utf8), extras: be(flags) + be(exptime), value: value, cas: cas, opaque: opaque)
    }

    /// A delete request.
    public static func delete(key: String, opaque: UInt32 = 0) -> [UInt8] {
        request(.delete, key: Array(key.utf8), extras: [], value: [], cas: 0, opaque: opaque)
    }

    /// A get (or getAndTouch with `exptime`) request.
    public static func get(key: String, touch exptime: UInt32? = nil, opaque: UInt32 = 0) -> [UInt8] {
        if let exptime {
            return request(.getAndTouch, key: Array(key.utf8), extras: be(exptime), value: [], cas: 0, opaque: opaque)
        }
        return request(.get, key: Array(key.utf8), extras: [], value: [], cas: 0, opaque: opaque)
    }

    /// add / replace: extras are flags and expiration, like set.
    public static func store(_ opcode: Opcode, key: String, value: [UInt8], flags: UInt32 = 0, exptime: UInt32 = 0,
                             cas: UInt64 = 0, opaque: UInt32 = 0) -> [UInt8] {
        let extras = opcode == .append || opcode == .prepend ? [] : be(flags) + be(exptime)
        return request(opcode, key: Array(key.utf8), extras: extras, value: value, cas: cas, opaque: opaque)
    }

    /// increment / decrement: delta, initial value, expiration (0xffffffff: fail on a miss).
    public static func arithmetic(_ opcode: Opcode, key: String, delta: UInt64, initial: UInt64 = 0,
                                  exptime: UInt32 = 0xffff_ffff, opaque: UInt32 = 0) -> [UInt8] {
        request(opcode, key: Array(key.utf8), extras: be(delta) + be(initial) + be(exptime), value: [], cas: 0, opaque: opaque)
    }

    /// touch: a new expiration.
    public static func touch(key: String, exptime: UInt32, opaque: UInt32 = 0) -> [UInt8] {
        request(.touch, key: Array(key.utf8), extras: be(exptime), value: [], cas: 0, opaque: opaque)
    }

    /// flush, optionally delayed.
    public static func flush(delay: UInt32? = nil, opaque: UInt32 = 0) -> [UInt8] {
        request(.flush, key: [], extras: delay.map(be) ?? [], value: [], cas: 0, opaque: opaque)
    }

    /// Parses one response at the start of `bytes`; nil if it is not complete yet.
    public static func parseResponse(_ bytes: [UInt8]) throws(MemcacheError) -> (response: Response, end: Int)? {
        guard bytes.count >= headerSize else { return nil }
        guard bytes[0] == responseMagic else { throw .malformedReply("binary response magic \(bytes[0])") }
        let keyLength = Int(readBE(bytes, 2, 2))
        let extrasLength = Int(bytes[4])
        let bodyLength = Int(readBE(bytes, 8, 4))
        guard extrasLength + keyLength <= bodyLength else { throw .malformedReply("binary body lengths disagree") }
        let end = headerSize + bodyLength
        guard bytes.count >= end else { return nil }
        let keyStart = headerSize + extrasLength
        let valueStart = keyStart + keyLength
        let response = Response(
            opcode: bytes[1], status: UInt16(readBE(bytes, 6, 2)), opaque: UInt32(readBE(bytes, 12, 4)),
            cas: readBE(bytes, 16, 8), extras: Array(bytes[headerSize..<keyStart]),
            key: Array(bytes[keyStart..<valueStart]), value: Array(bytes[valueStart..<end]))
        return (response, end)
    }

    private static func request(_ opcode: Opcode, key: [UInt8], extras: [UInt8], value: [UInt8],
                                cas: UInt64, opaque: UInt32) -> [UInt8] {
        var header: [UInt8] = [requestMagic, opcode.rawValue]
        header += be(UInt16(key.count)) + [UInt8(extras.count), 0] + be(UInt16(0))
        header += be(UInt32(extras.count + key.count + value.count)) + be(opaque) + be(cas)
        return header + extras + key + value
    }

    private static func be<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        withUnsafeBytes(of: value.bigEndian, Array.init)
    }

    private static func readBE(_ bytes: [UInt8], _ offset: Int, _ count: Int) -> UInt64 {
        bytes[offset..<offset + count].reduce(0) { $0 << 8 | UInt64($1) }
    }
}
