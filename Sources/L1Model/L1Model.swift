/// A pure-Swift reference model of what L1's XDP program must do with any
/// frame: answer a memcached UDP GET exactly as memcached would (XDP_TX with
/// the exact reply frame), or pass the frame on byte for byte unchanged.
///
/// The model is written from memcached's protocol and the kernel's receive
/// rules, not from the BPF code: it parses frames itself and builds replies
/// itself. What it knows of L1 is only L1's published limits (one VLAN tag,
/// no IP options or IPv6 extension headers on an answered GET, at most 16
/// keys of at most 250 bytes, no control bytes, one reply datagram of at most
/// 1400 bytes, payloads parsed up to 2048 bytes).
public struct L1Model {
    public static let port: UInt16 = 11211
    public static let maxKeys = 16
    public static let maxKeyLength = 250
    public static let maxReplyPayload = 1400
    /// L1 reads at most this much of a datagram; a longer one is not answered.
    public static let payloadMax = 2048

    /// One item as memcached holds it.
    public struct Item: Equatable, Sendable {
        public var key: [UInt8]
        public var flags: UInt32
        public var value: [UInt8]
        /// nil when L1 learnt the item from a plain `get` (its CAS unknown).
        public var cas: UInt64?

        public init(key: [UInt8], flags: UInt32, value: [UInt8], cas: UInt64?) {
            self.key = key
            self.flags = flags
            self.value = value
            self.cas = cas
        }

        /// memcached's bytes for one hit: `VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\n`.
        public func block(withCAS: Bool) -> [UInt8] {
            var b = Array("VALUE ".utf8) + key + Array(" \(flags) \(value.count)".utf8)
            if withCAS, let cas { b += Array(" \(cas)".utf8) }
            return b + [13, 10] + value + [13, 10]
        }
    }

    /// How sure the model is that L1 still holds an item.
    public enum Presence: Equatable, Sendable {
        /// Nothing since it was cached may have removed it: a GET must hit.
        case present
        /// A packet since may (legitimately) have dropped it: hit or pass.
        case maybe
    }

    private(set) var items: [[UInt8]: (item: Item, presence: Presence)] = [:]

    public init() {}

    /// L1 was just filled with exactly these items (and holds nothing else that matters).
    public mutating func reset(to cached: [Item]) {
        items = [:]
        for item in cached { items[item.key] = (item, .present) }
    }

    /// An item was just cached (through L1's real fill path).
    public mutating func add(_ item: Item) { items[item.key] = (item, .present) }
    /// L1 emptied itself.
    public mutating func forgetAll() { items = [:] }

    public func presence(of key: [UInt8]) -> Presence? { items[key]?.presence }
    public var presentCount: Int { items.values.filter { $0.presence == .present }.count }
    /// Items the model believes L1 may still hold.
    public var knownCount: Int { items.count }

    // MARK: - Prediction

    /// What a packet may do to L1's contents.
    public enum Effect: Equatable, Sendable {
        /// Must leave L1 unchanged: not for memcached, a GET, or dropped by the kernel.
        case inert
        /// Reaches memcached's port and is not a GET (or cannot be read exactly):
        /// L1 may drop any entry; `written` keys are written by memcached and
        /// must never be served again from what L1 held.
        case mayChange(written: [[UInt8]], flush: Bool)
    }

    public struct Prediction: Sendable {
        /// The frame L1 would send back under its answering rules, if it may answer.
        public var answer: [UInt8]?
        /// True when every key is `.present`: L1 must answer (if memcached would see the request).
        public var mustAnswer: Bool
        /// nil when memcached would receive and answer this request; otherwise why
        /// not (bad checksum, source port 0): then L1 must not answer it either.
        public var unseenReason: String?
        public var effect: Effect
        /// The request's keys when it is a well-formed GET.
        public var getKeys: [[UInt8]]
        /// Why L1 passes it (for statistics).
        public var passReason: String
    }

    /// The layers of a frame, parsed the way the kernel would receive it.
    public struct Layers {
        public var l3Offset = 14
        public var vlanTags = 0
        public var ipv6 = false
        public var ipOptionsOrExtensions = false
        public var fragment = false
        public var proto: UInt8 = 0
        public var l4Offset = 0
        public var sport: UInt16 = 0
        public var dport: UInt16 = 0
        public var payloadOffset = 0
        public var payloadLength = 0
        public var ipChecksumOK = true
        public var udpChecksumOK = true
        /// The kernel would deliver this to a socket (lengths and versions sane).
        public var deliverable = false
    }

    /// The big-endian 16-bit field at `o`.
    public static func be16(_ f: [UInt8], _ o: Int) -> UInt16 { UInt16(f[o]) << 8 | UInt16(f[o + 1]) }

    /// Parses headers; nil for frames that are not IPv4/IPv6 at all.
    public static func layers(_ f: [UInt8]) -> Layers? {
        var l = Layers()
        guard f.count >= 14 else { return nil }
        var type = be16(f, 12)
        var off = 14
        while type == 0x8100 || type == 0x88a8 {
            guard f.count >= off + 4 else { return nil }
            l.vlanTags += 1
            type = be16(f, off + 2)
            off += 4
        }
        l.l3Offset = off
        var l4Length = 0
        if type == 0x0800 {
            guard f.count >= off + 20, f[off] >> 4 == 4 else { return l }
            let ihl = Int(f[off] & 15) * 4
            l.fragment = be16(f, off + 6) & 0x3fff != 0
            l.ipOptionsOrExtensions = ihl != 20
            l.proto = f[off + 9]
            let total = Int(be16(f, off + 2))
            guard ihl >= 20, total >= ihl, off + total <= f.count else { return l }
            l.ipChecksumOK = onesComplement(Array(f[off..<(off + ihl)])) == 0xffff
            l.l4Offset = off + ihl
            l4Length = total - ihl
        } else if type == 0x86dd {
            guard f.count >= off + 40, f[off] >> 4 == 6 else { return l }
            l.ipv6 = true
            var next = f[off + 6]
            let payload = Int(be16(f, off + 4))
            guard off + 40 + payload <= f.count else { return l }
            var p = off + 40
            var left = payload
            // Extension headers: any of them keeps the GET from being answered.
            while [0, 43, 60, 51, 44, 50, 135, 139, 140].contains(next) {
                l.ipOptionsOrExtensions = true
                if next == 44 { l.fragment = true }
                guard next != 50, left >= 8, p + 2 <= f.count else { l.proto = next; return l }
                let len = next == 51 ? (Int(f[p + 1]) + 2) * 4 : (Int(f[p + 1]) + 1) * 8
                guard len <= left else { l.proto = next; return l }
                next = f[p]
                p += len
                left -= len
            }
            l.proto = next
            l.l4Offset = p
            l4Length = left
        } else {
            return nil
        }
        let o = l.l4Offset
        if l.proto == 17 {
            guard l4Length >= 8 else { return l }
            l.sport = be16(f, o)
            l.dport = be16(f, o + 2)
            let ulen = Int(be16(f, o + 4))
            guard ulen >= 8, ulen <= l4Length else { return l }
            l.payloadOffset = o + 8
            l.payloadLength = ulen - 8
            let check = be16(f, o + 6)
            if check == 0 {
                l.udpChecksumOK = !l.ipv6 // IPv6 requires a UDP checksum
            } else {
                let pseudo = pseudoHeader(f, l, length: ulen)
                // A local sender (veth) leaves the pseudo-header sum for offload, and the kernel
                // delivers such a datagram unchecked: memcached sees it.
                l.udpChecksumOK = onesComplement(pseudo + Array(f[o..<(o + ulen)])) == 0xffff
                    || check == onesComplement(pseudo)
            }
            l.deliverable = !l.fragment
        } else if l.proto == 6 {
            guard l4Length >= 20 else { return l }
            l.sport = be16(f, o)
            l.dport = be16(f, o + 2)
            let doff = Int(f[o + 12] >> 4) * 4
            guard doff >= 20, doff <= l4Length else { return l }
            l.payloadOffset = o + doff
            l.payloadLength = l4Length - doff
            l.deliverable = !l.fragment
        }
        return l
    }

    /// The IPv4 or IPv6 pseudo-header of an L4 checksum.
    public static func pseudoHeader(_ f: [UInt8], _ l: Layers, length: Int, proto: UInt8 = 17) -> [UInt8] {
        let ip = l.l3Offset
        if l.ipv6 {
            let len = UInt32(length)
            return Array(f[(ip + 8)..<(ip + 40)]) + [UInt8(len >> 24), UInt8((len >> 16) & 0xff), UInt8((len >> 8) & 0xff), UInt8(len & 0xff), 0, 0, 0, proto]
        }
        return Array(f[(ip + 12)..<(ip + 20)]) + [0, proto, UInt8(length >> 8), UInt8(length & 0xff)]
    }

    /// The folded one's-complement sum (not inverted) of `data`.
    public static func onesComplement(_ data: [UInt8]) -> UInt16 {
        var sum: UInt32 = 0
        var i = 0
        while i + 1 < data.count {
            sum += UInt32(data[i]) << 8 | UInt32(data[i + 1])
            i += 2
        }
        if i < data.count { sum += UInt32(data[i]) << 8 }
        while sum >> 16 != 0 { sum = (sum & 0xffff) + (sum >> 16) }
        return UInt16(sum)
    }

    /// A key byte as L1 accepts it: printable, not a space, not DEL (bytes >= 0x80 are allowed, as memcached does).
    static func isKeyByte(_ b: UInt8) -> Bool { b > 0x20 && b != 0x7f }

    /// The request line of a text GET: (isGets, keys), or nil with the reason it is not one L1 answers.
    public static func parseGet(_ text: ArraySlice<UInt8>) -> (gets: Bool, keys: [[UInt8]])? {
        guard text.count >= 6, text.last == 10, text[text.endIndex - 2] == 13 else { return nil }
        let line = text.dropLast(2)
        let gets: Bool
        var rest: ArraySlice<UInt8>
        if line.starts(with: Array("gets ".utf8)) {
            gets = true
            rest = line.dropFirst(5)
        } else if line.starts(with: Array("get ".utf8)) {
            gets = false
            rest = line.dropFirst(4)
        } else {
            return nil
        }
        var keys: [[UInt8]] = []
        while !rest.isEmpty {
            if rest.first == 32 { rest = rest.dropFirst(); continue }
            let token = rest.prefix { $0 != 32 }
            guard token.allSatisfy(isKeyByte), token.count <= maxKeyLength else { return nil }
            keys.append(Array(token))
            guard keys.count <= maxKeys else { return nil }
            rest = rest.dropFirst(token.count)
        }
        return keys.isEmpty ? nil : (gets, keys)
    }

    /// Predicts L1's verdict on `frame` given what the model holds.
    public func predict(_ frame: [UInt8]) -> Prediction {
        var p = Prediction(answer: nil, mustAnswer: false, unseenReason: nil, effect: .inert, getKeys: [], passReason: "")
        guard let l = Self.layers(frame) else {
            p.passReason = "not IP"
            return p
        }
        // Frames whose contents L1 cannot read exactly may hide a write: L1 may
        // empty itself. Anything else to memcached's port that is not a GET, too.
        let opaque = l.fragment || l.vlanTags > 1 || (l.ipv6 && l.ipOptionsOrExtensions)
        let toPort = (l.proto == 17 || l.proto == 6) && l.l4Offset + 4 <= frame.count
            && Self.be16(frame, l.l4Offset + 2) == Self.port
        let mayChange = Effect.mayChange(written: [], flush: false)
        let base = opaque ? mayChange : Effect.inert
        p.effect = base
        guard l.deliverable, l.dport == Self.port else {
            p.passReason = l.deliverable ? "other port" : "truncated or opaque"
            if toPort { p.effect = mayChange }
            return p
        }
        guard l.proto == 17 else {
            p.passReason = "TCP"
            p.effect = mayChange
            return p
        }
        let payload = frame[l.payloadOffset..<(l.payloadOffset + l.payloadLength)]
        // memcached drops datagrams shorter than the frame header and
        // multi-datagram requests without reading them.
        guard payload.count >= 8, payload[payload.startIndex + 4] == 0, payload[payload.startIndex + 5] == 1 else {
            p.passReason = "frame header"
            return p
        }
        let text = payload.dropFirst(8)
        guard let get = Self.parseGet(text), payload.count <= Self.payloadMax else {
            p.passReason = "not a GET L1 answers"
            p.effect = .mayChange(written: Self.writtenKeys(text), flush: Self.isFlush(text))
            return p
        }
        p.getKeys = get.keys
        guard !l.ipOptionsOrExtensions, l.vlanTags <= 1 else {
            p.passReason = "IP options or extension headers"
            p.effect = mayChange
            return p
        }
        // Every key must be held (with its CAS for gets) and the reply must fit one datagram.
        var blocks: [UInt8] = []
        var allPresent = true
        for key in get.keys {
            guard let (item, presence) = items[key], !get.gets || item.cas != nil else {
                p.passReason = "miss"
                return p
            }
            if presence == .maybe { allPresent = false }
            blocks += item.block(withCAS: get.gets)
        }
        let replyPayload = Array(payload.prefix(2)) + [0, 0, 0, 1, 0, 0] + blocks + Array("END\r\n".utf8)
        guard replyPayload.count <= Self.maxReplyPayload else {
            p.passReason = "too big"
            return p
        }
        p.answer = Self.replyFrame(frame, l, payload: replyPayload)
        p.mustAnswer = allPresent
        if !l.ipChecksumOK || !l.udpChecksumOK {
            p.unseenReason = "corrupt checksum: the kernel drops it before memcached"
        } else if l.sport == 0 {
            p.unseenReason = "source port 0: memcached cannot reply"
        }
        p.passReason = "hit"
        return p
    }

    /// The request frame turned into its reply: MACs, addresses and ports
    /// swapped, lengths and checksums recomputed, TTL/hop limit 64, everything
    /// else in the headers kept.
    public static func replyFrame(_ f: [UInt8], _ l: Layers, payload: [UInt8]) -> [UInt8] {
        var out = Array(f[0..<l.payloadOffset])
        for i in 0..<6 { out.swapAt(i, i + 6) }
        let ip = l.l3Offset, udp = l.l4Offset
        let ulen = 8 + payload.count
        func put16(_ o: Int, _ v: UInt16) { out[o] = UInt8(v >> 8); out[o + 1] = UInt8(v & 0xff) }
        if l.ipv6 {
            for i in 0..<16 { out.swapAt(ip + 8 + i, ip + 24 + i) }
            put16(ip + 4, UInt16(ulen))
            out[ip + 7] = 64
        } else {
            for i in 0..<4 { out.swapAt(ip + 12 + i, ip + 16 + i) }
            put16(ip + 2, UInt16(20 + ulen))
            out[ip + 8] = 64
            put16(ip + 10, 0)
            put16(ip + 10, ~onesComplement(Array(out[ip..<(ip + 20)])))
        }
        for i in 0..<2 { out.swapAt(udp + i, udp + 2 + i) }
        put16(udp + 4, UInt16(ulen))
        put16(udp + 6, 0)
        out += payload
        var reply = l
        reply.payloadLength = payload.count
        let sum = ~onesComplement(pseudoHeader(out, reply, length: ulen) + Array(out[udp...]))
        put16(udp + 6, sum == 0 ? 0xffff : sum)
        return out
    }

    // MARK: - Writes memcached would apply

    static let storage: Set<String> = ["set", "add", "replace", "append", "prepend", "cas"]
    static let keyed: Set<String> = ["delete", "incr", "decr", "touch"]

    /// Keys that well-formed text writes in this datagram make memcached change.
    /// Only what is certain: anything unusual leaves the keys at `.maybe`.
    public static func writtenKeys(_ text: ArraySlice<UInt8>) -> [[UInt8]] {
        var keys: [[UInt8]] = []
        var rest = text
        while let nl = rest.firstIndex(of: 10) {
            var line = rest[rest.startIndex..<nl]
            if line.last == 13 { line = line.dropLast() }
            rest = rest[(nl + 1)...]
            let raw = line.split(separator: 32)
            let tokens = raw.map { String(decoding: $0, as: UTF8.self) }
            guard let cmd = tokens.first, tokens.count >= 2, raw[1].count <= maxKeyLength else { continue }
            let key = Array(raw[1])
            let numeric = tokens.dropFirst(2).allSatisfy { Int($0) != nil || $0 == "noreply" }
            if storage.contains(cmd), tokens.count >= 5, numeric, let n = Int(tokens[4]), n >= 0 {
                guard rest.count >= n + 2, rest[rest.startIndex + n] == 13, rest[rest.startIndex + n + 1] == 10 else { break }
                keys.append(key)
                rest = rest.dropFirst(n + 2)
            } else if keyed.contains(cmd), numeric {
                keys.append(key)
            } else if cmd == "gat" || cmd == "gats", tokens.count >= 3, Int(tokens[1]) != nil {
                keys += raw.dropFirst(2).map { Array($0) }
            }
        }
        return keys
    }

    static func isFlush(_ text: ArraySlice<UInt8>) -> Bool { text.starts(with: Array("flush_all".utf8)) }

    // MARK: - Learning from what happened

    /// Updates the model after L1 handled a frame: its effect, and for keys the
    /// model was unsure of, what L1's answer (or pass) showed.
    public mutating func observe(_ p: Prediction, answered: Bool) {
        if answered {
            for key in p.getKeys { items[key]?.presence = .present }
        } else if p.answer != nil, p.unseenReason == nil {
            // A pass of a fitting request whose keys were all held: if exactly one
            // key was uncertain, that one is gone.
            let unsure = Set(p.getKeys.filter { items[$0]?.presence == .maybe })
            if unsure.count == 1, let key = unsure.first { items[key] = nil }
        }
        switch p.effect {
        case .inert:
            break
        case .mayChange(let written, let flush):
            if flush {
                items = [:]
                return
            }
            for key in written { items[key] = nil }
            for key in Array(items.keys) { items[key]?.presence = .maybe }
        }
    }
}
