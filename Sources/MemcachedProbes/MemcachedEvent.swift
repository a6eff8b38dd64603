import CXLBMCABI

/// One thing memcached did, decoded from a `struct mc_event` record.
public struct MemcachedEvent: Sendable, Equatable {
    public enum Kind: UInt8, Sendable, CaseIterable, CustomStringConvertible {
        case miss = 1, store, delete, touch, delta, flush, evict

        public var description: String {
            switch self {
            case .miss: "miss"
            case .store: "store"
            case .delete: "delete"
            case .touch: "touch"
            case .delta: "delta"
            case .flush: "flush"
            case .evict: "evict"
            }
        }
    }

    /// The command of a store (memcached's NREAD_* numbering).
    public enum StoreCommand: UInt8, Sendable, CustomStringConvertible {
        case link = 0, add, set, replace, append, prepend, cas
        public var description: String {
            switch self {
            case .link: "link"
            case .add: "add"
            case .set: "set"
            case .replace: "replace"
            case .append: "append"
            case .prepend: "prepend"
            case .cas: "cas"
            }
        }
    }

    /// Which lookup missed.
    public enum MissSource: UInt8, Sendable, CustomStringConvertible {
        case get = 1, getLocked, touch
        public var description: String {
            switch self {
            case .get: "get"
            case .getLocked: "get-locked"
            case .touch: "gat"
            }
        }
    }

    public let kind: Kind
    /// Raw `mc_event.command`; see ``storeCommand``, ``missSource``, ``isIncrement``.
    public let command: UInt8
    public let timestampNs: UInt64
    public let pid: Int32
    public let tid: Int32
    public let key: [UInt8]
    public let clientFlags: UInt32
    /// memcached's own exptime (seconds since it started), 0 = never.
    public let exptimeRelative: UInt32
    /// Absolute expiry in unix seconds (0 = never); nil if memcached's clock was unreadable.
    public let exptimeUnix: Int64?
    /// memcached's `current_time` when the event fired.
    public let memcachedNow: UInt32
    public let cas: UInt64?
    /// Length of the whole value.
    public let valueLength: Int
    /// The value when it travelled inline (all of it); nil when it must be fetched.
    public let value: [UInt8]?
    /// DELTA: the new value; FLUSH: its delay in seconds.
    public let number: UInt64
    /// A write's number in its key's write-sequence slot (``MemcachedProbes/writeSequenceSlot(of:)``;
    /// a flush: in the flush slot) after it; a miss: the slot's count when it missed; nil for evictions.
    public let writeSeq: UInt32?

    public var keyString: String { String(decoding: key, as: UTF8.self) }
    public var storeCommand: StoreCommand? { kind == .store ? StoreCommand(rawValue: command) : nil }
    public var missSource: MissSource? { kind == .miss ? MissSource(rawValue: command) : nil }
    public var isIncrement: Bool { kind == .delta && command == UInt8(MC_DELTA_INCR) }
    /// A delete of a key memcached did not hold (it answered NOT_FOUND).
    public var deletedAbsentKey: Bool { kind == .delete && command == UInt8(MC_DELETE_ABSENT) }
    /// The value is larger than an event carries (or chunked): fetch it from memcached.
    public var needsFetch: Bool { value == nil && (kind == .store || kind == .evict) }

    /// Decodes one ring-buffer record; nil if it is malformed (too short,
    /// unknown kind, lengths beyond the record). Reads the fields in place at
    /// their `struct mc_event` offsets: a record is a few hundred bytes, the
    /// struct over 4 KB, and the consumer must keep up with memcached.
    public init?(record: UnsafeRawBufferPointer) {
        let header = Int(MC_EVENT_HEADER_LEN)
        guard record.count >= header else { return nil }
        func field<T>(_ path: KeyPath<mc_event, T>, _ type: T.Type) -> T {
            record.loadUnaligned(fromByteOffset: MemoryLayout<mc_event>.offset(of: path)!, as: T.self)
        }
        guard let kind = Kind(rawValue: field(\.kind, UInt8.self)) else { return nil }
        let keyLength = Int(field(\.key_len, UInt8.self))
        let inline = Int(field(\.inline_len, UInt16.self))
        guard keyLength <= Int(MC_MAX_KEY_LEN), inline <= Int(MC_EVENT_VALUE_INLINE_MAX),
              record.count >= header + inline else { return nil }
        let flags = field(\.flags, UInt8.self)
        let keyAt = MemoryLayout<mc_event>.offset(of: \.key)!
        self.kind = kind
        command = field(\.command, UInt8.self)
        timestampNs = field(\.ts_ns, UInt64.self)
        pid = Int32(bitPattern: field(\.tgid, UInt32.self))
        tid = Int32(bitPattern: field(\.tid, UInt32.self))
        key = Array(record[keyAt..<(keyAt + keyLength)])
        clientFlags = field(\.client_flags, UInt32.self)
        exptimeRelative = field(\.exptime_rel, UInt32.self)
        exptimeUnix = flags & UInt8(MC_EVF_NO_CLOCK) != 0 ? nil : field(\.exptime_unix, Int64.self)
        memcachedNow = field(\.now_rel, UInt32.self)
        cas = flags & UInt8(MC_EVF_CAS) != 0 ? field(\.cas, UInt64.self) : nil
        valueLength = Int(field(\.value_len, UInt32.self))
        value = flags & UInt8(MC_EVF_VALUE_INLINE) != 0 ? Array(record[header..<(header + inline)]) : nil
        number = field(\.number, UInt64.self)
        writeSeq = flags & UInt8(MC_EVF_WRITE_SEQ) != 0 ? field(\.write_seq, UInt32.self) : nil
    }

    /// Builds an event (tests, fetch results).
    public init(
        kind: Kind, command: UInt8 = 0, timestampNs: UInt64 = 0, pid: Int32 = 0, tid: Int32 = 0, key: [UInt8],
        clientFlags: UInt32 = 0, exptimeRelative: UInt32 = 0, exptimeUnix: Int64? = 0, memcachedNow: UInt32 = 0,
        cas: UInt64? = nil, valueLength: Int = 0, value: [UInt8]? = nil, number: UInt64 = 0, writeSeq: UInt32? = nil
    ) {
        self.kind = kind
        self.command = command
        self.timestampNs = timestampNs
        self.pid = pid
        self.tid = tid
        self.key = key
        self.clientFlags = clientFlags
        self.exptimeRelative = exptimeRelative
        self.exptimeUnix = exptimeUnix
        self.memcachedNow = memcachedNow
        self.cas = cas
        self.valueLength = valueLength
        self.value = value
        self.number = number
        self.writeSeq = writeSeq
    }

    /// The event completed with what memcached returned for the key.
    public func with(value: [UInt8], clientFlags: UInt32? = nil, cas: UInt64? = nil) -> MemcachedEvent {
        MemcachedEvent(
            kind: kind, command: command, timestampNs: timestampNs, pid: pid, tid: tid, key: key,
            clientFlags: clientFlags ?? self.clientFlags, exptimeRelative: exptimeRelative, exptimeUnix: exptimeUnix,
            memcachedNow: memcachedNow, cas: cas ?? self.cas, valueLength: value.count, value: value, number: number,
            writeSeq: writeSeq)
    }

    /// One line for people, like memcached's `watch`.
    public var summary: String {
        var parts = ["pid=\(pid)", kind.description]
        switch kind {
        case .store: parts.append(storeCommand?.description ?? "cmd=\(command)")
        case .miss: parts.append(missSource?.description ?? "src=\(command)")
        case .delta: parts.append(isIncrement ? "incr" : "decr")
        case .delete where deletedAbsentKey: parts.append("absent")
        default: break
        }
        if kind != .flush { parts.append("key=\(Self.printable(key))") }
        if kind == .store || kind == .evict || kind == .touch {
            parts.append("flags=\(clientFlags)")
            parts.append("exptime=\(exptimeUnix.map { String($0) } ?? "rel:\(exptimeRelative)")")
        }
        if let cas { parts.append("cas=\(cas)") }
        if kind == .store || kind == .evict {
            if let value {
                parts.append("value=\(value.count)B:\(Self.printable(Array(value.prefix(32))))\(value.count > 32 ? "…" : "")")
            } else {
                parts.append("value=\(valueLength)B(fetch)")
            }
        }
        if kind == .delta { parts.append("value=\(number)") }
        if kind == .flush { parts.append("delay=\(number)s") }
        return parts.joined(separator: " ")
    }

    static func printable(_ bytes: [UInt8]) -> String {
        var s = ""
        for b in bytes {
            if b >= 0x21 && b < 0x7f && b != UInt8(ascii: "\\") {
                s.unicodeScalars.append(Unicode.Scalar(b))
            } else {
                s += "\\x" + (b < 16 ? "0" : "") + String(b, radix: 16)
            }
        }
        return s
    }
}
