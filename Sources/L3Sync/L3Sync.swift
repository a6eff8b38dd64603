import Foundation
import Loader
import MemcacheClient
import MemcachedProbes
import Synchronization

/// Keeps L3 in step with memcached from its events: every applied write is
/// written through (with the event's timestamp as its version), evicted items
/// are kept, and a GET miss that L3 can answer is promoted back into
/// memcached with add semantics (`ms <key> … ME`), so a newer client write is
/// never clobbered and the next GET hits memcached (and then L1).
///
/// ``apply(_:)`` runs on the event consumer's thread and never blocks on the
/// network: fetches and promotions go to a bounded queue served by one
/// worker with its own connection. A full queue drops the job and counts it.
///
/// A promotion is conditional on the probes' write sequences (`mc_write_seq`):
/// it is not made when the key's slot was written after the miss, it reads L3
/// only once L3 has applied every write memcached made to the slot, and after
/// memcached's `HD` it checks that no other write reached the slot meanwhile;
/// if one did (it may have been a delete of a key memcached no longer held,
/// which the add undid), the promotion is undone at once with
/// `md <key> C<its cas>`, which touches nothing a client wrote after it.
public final class L3Sync: Sendable {
    public struct Counters: Sendable, Equatable {
        public var stores: UInt64 = 0
        public var deletes: UInt64 = 0
        public var touches: UInt64 = 0
        public var deltas: UInt64 = 0
        public var flushes: UInt64 = 0
        /// Evicted items L3 did not hold yet, kept.
        public var evictionsKept: UInt64 = 0
        public var misses: UInt64 = 0
        /// Misses L3 could answer.
        public var l3Hits: UInt64 = 0
        public var promoted: UInt64 = 0
        /// Promotions not made because a newer write won: memcached refused the add (the key exists
        /// again), or the key's slot was written between the miss and the promotion.
        public var promotionsRaced: UInt64 = 0
        public var fetched: UInt64 = 0
        /// Jobs dropped because the queue was full.
        public var dropped: UInt64 = 0
        /// L3 or memcached errors (each logged by the caller's counters, never silent).
        public var failures: UInt64 = 0
        /// Times L3 was emptied because events were lost.
        public var resyncs: UInt64 = 0
        /// Sum of promotion latencies (miss event → memcached's HD), ns.
        public var promotionNsTotal: UInt64 = 0
        /// Store events that were this daemon's own promotions (not written through again).
        public var promotionEchoes: UInt64 = 0
        /// Misses of a key whose promotion was already queued (merged into it).
        public var promotionsMerged: UInt64 = 0
        /// Deletes of keys memcached did not hold (L3 forgets them too).
        public var deletesOfAbsentKeys: UInt64 = 0
        /// Promotions skipped because L3 had not caught up with the key's writes in time.
        public var promotionsDeferred: UInt64 = 0
        /// Promotions undone: a delete or flush reached memcached between L3's read and the add.
        public var promotionsUndone: UInt64 = 0
        /// Promotion latencies (miss event → memcached's HD), log2 histogram of µs: bucket i counts
        /// latencies in [2^(i-1), 2^i) µs (bucket 0: under 1 µs).
        public var promotionLatencyLog2Us = [UInt64](repeating: 0, count: 32)
        /// L3 lookups made for promotions, their total time and a log2 histogram of ns (bucket i:
        /// [2^(i-1), 2^i) ns), whatever L3 is (a partition, the cluster, memory).
        public var lookups: UInt64 = 0
        public var lookupNsTotal: UInt64 = 0
        public var lookupLatencyLog2Ns = [UInt64](repeating: 0, count: 40)

        /// The latency under which `fraction` of the promotions completed (the bucket's upper bound), µs.
        public func promotionLatencyPercentileUs(_ fraction: Double) -> UInt64? {
            Self.percentile(promotionLatencyLog2Us, fraction)
        }

        /// The latency under which `fraction` of the L3 lookups completed (the bucket's upper bound), ns.
        public func lookupLatencyPercentileNs(_ fraction: Double) -> UInt64? {
            Self.percentile(lookupLatencyLog2Ns, fraction)
        }

        /// The bucket i of a log2 histogram holds [2^(i-1), 2^i): the upper bound of the one
        /// where `fraction` of the samples is reached.
        static func percentile(_ histogram: [UInt64], _ fraction: Double) -> UInt64? {
            let total = histogram.reduce(0, +)
            guard total > 0 else { return nil }
            let rank = max(1, UInt64((Double(total) * fraction).rounded(.up)))
            var seen: UInt64 = 0
            for (i, n) in histogram.enumerated() {
                seen += n
                if seen >= rank { return UInt64(1) << i }
            }
            return UInt64(1) << (histogram.count - 1)
        }

        static func log2Bucket(_ value: UInt64, buckets: Int) -> Int {
            value == 0 ? 0 : min(buckets - 1, 64 - value.leadingZeroBitCount)
        }
    }

    private enum Job {
        case fetch(MemcachedEvent)
        /// `seqAtMiss`: the key's write-sequence count when it missed (nil: unknown).
        /// `retry`: made again after an undo that turned out needless (another key of the slot was written).
        case promote(key: [UInt8], missAtNs: UInt64, seqAtMiss: UInt32?, retry: Bool = false)
    }

    public let store: any L3Store
    private let host: String
    private let port: UInt16
    private let counters = Mutex(Counters())
    private let queue = Mutex<[Job]>([])
    private let queueCapacity: Int
    private let wake = DispatchSemaphore(value: 0)
    private let stopped = Atomic<Bool>(false)
    private let idle = DispatchSemaphore(value: 0)

    /// Events lost so far (the probes' counter), read before every promotion;
    /// nil when it cannot be read (then L3 is not trusted either).
    private let lostEvents: @Sendable () -> UInt64?
    private let lostSeen = Mutex<UInt64>(0)

    /// The probes' current count in a write-sequence slot (nil: unreadable); nil when there are no
    /// probes (tests that feed events by hand): promotions are then unconditional.
    public typealias WriteSequenceReader = @Sendable (_ slot: Int) -> UInt32?
    private let writeSequence: WriteSequenceReader?
    /// Per slot, the highest write sequence whose event L3 has applied.
    private let applied = Mutex([UInt32](repeating: 0, count: MemcachedProbes.flushSequenceSlot + 1))

    /// `host`/`port`: memcached's TCP address, for fetches and promotions.
    /// `lostEvents`: the probes' count of events lost (ring buffer full).
    /// `writeSequence`: the probes' write sequences (``MemcachedProbes/writeSequences()``).
    public init(store: any L3Store, memcachedHost host: String, port: UInt16, queueCapacity: Int = 65536,
                lostEvents: @escaping @Sendable () -> UInt64? = { 0 }, writeSequence: WriteSequenceReader? = nil) {
        self.store = store
        self.lostEvents = lostEvents
        self.writeSequence = writeSequence
        self.host = host
        self.port = port
        self.queueCapacity = queueCapacity
        let thread = Thread { [self] in self.work() }
        thread.name = "cxl-bmc.l3sync"
        thread.start()
    }

    public func stop() {
        stopped.store(true, ordering: .releasing)
        wake.signal()
    }

    public var snapshot: Counters { counters.withLock { $0 } }

    func count(_ update: (inout Counters) -> Void) {
        counters.withLock { (c: inout Counters) -> Void in update(&c) }
    }

    private static func now() -> Int64 { Int64(Date().timeIntervalSince1970) }

    /// If events were lost (the ring buffer was full) since the last look,
    /// whatever they said (a delete, say) is unknown, so nothing L3 holds may
    /// be promoted over memcached any more: L3 drops it all and refills from
    /// new writes. Checked before every promotion and by the consumer.
    /// Returns whether it emptied L3.
    @discardableResult
    public func checkLostEvents() -> Bool {
        let fresh: Bool
        if let lost = lostEvents() {
            fresh = lostSeen.withLock { seen -> Bool in
                guard lost > seen else { return false }
                seen = lost
                return true
            }
        } else {
            fresh = true
        }
        guard fresh else { return false }
        // Every write counted now happened before the flush below, so L3 hides what it wrote: the
        // slots whose events were lost need not wait for a later write before promotions trust them.
        let counted = writeSequence.map { read in (0...MemcachedProbes.flushSequenceSlot).map { read($0) } }
        do {
            try store.flush(versionsBefore: L3VersionClock.wallClockMicros(), effectiveUnix: 0)
            count { $0.resyncs += 1 }
            if let counted {
                applied.withLock { applied in
                    for (slot, seq) in counted.enumerated() {
                        if let seq, !Self.reached(applied[slot], seq) { applied[slot] = seq }
                    }
                }
            }
        } catch {
            count { $0.failures += 1 }
        }
        return true
    }

    /// Applies one event (consumer thread).
    public func apply(_ event: MemcachedEvent) {
        do {
            switch event.kind {
            case .store:
                count { $0.stores += 1 }
                if let value = event.value {
                    if isOwnPromotion(key: event.key, value: value, flags: event.clientFlags) {
                        count { $0.promotionEchoes += 1 }
                        markApplied(event) // nothing to write: L3 holds it already
                        return
                    }
                    try store.put(key: event.key, item: item(event, value: value, flags: event.clientFlags))
                } else {
                    enqueue(.fetch(event))
                    return // applied once fetched
                }
            case .delete:
                count {
                    $0.deletes += 1
                    if event.deletedAbsentKey { $0.deletesOfAbsentKeys += 1 }
                }
                try store.delete(key: event.key, version: version(event))
            case .touch:
                count { $0.touches += 1 }
                if let exptime = event.exptimeUnix {
                    try store.touch(key: event.key, exptimeUnix: exptime, version: version(event))
                }
            case .delta:
                count { $0.deltas += 1 }
                if let old = try store.get(key: event.key) {
                    var updated = old
                    updated.value = Array(String(event.number).utf8)
                    updated.version = version(event)
                    try store.put(key: event.key, item: updated)
                } else {
                    enqueue(.fetch(event))
                    return // applied once fetched
                }
            case .flush:
                count { $0.flushes += 1 }
                // Immediate: everything written before this event. Delayed: everything
                // written before the flush time, from then on.
                let at = event.exptimeUnix ?? Self.now()
                if event.number == 0 || at <= Self.now() {
                    try store.flush(versionsBefore: version(event), effectiveUnix: 0)
                } else {
                    try store.flush(versionsBefore: UInt64(at) * 1_000_000, effectiveUnix: at)
                }
            case .evict:
                if let value = event.value, try store.get(key: event.key) == nil {
                    count { $0.evictionsKept += 1 }
                    try store.put(key: event.key, item: item(event, value: value, flags: event.clientFlags))
                }
            case .miss:
                count { $0.misses += 1 }
                enqueue(.promote(key: event.key, missAtNs: event.timestampNs, seqAtMiss: event.writeSeq))
            }
            markApplied(event)
        } catch {
            count { $0.failures += 1 }
        }
    }

    // MARK: Write sequences

    private static func slot(of event: MemcachedEvent) -> Int {
        event.kind == .flush ? MemcachedProbes.flushSequenceSlot : MemcachedProbes.writeSequenceSlot(of: event.key)
    }

    /// `a` is at or after `b` (sequence numbers wrap).
    private static func reached(_ a: UInt32, _ b: UInt32) -> Bool { Int32(bitPattern: a &- b) >= 0 }

    /// L3 now reflects this write (an event whose write L3 failed to take is never marked: its
    /// slot stays behind, and promotions of its keys wait for a later write).
    private func markApplied(_ event: MemcachedEvent) {
        guard event.kind != .miss, let seq = event.writeSeq else { return }
        let slot = Self.slot(of: event)
        applied.withLock { if !Self.reached($0[slot], seq) { $0[slot] = seq } }
    }

    /// The probes' counts for the key's slot and the flush slot now.
    private func currentSequences(_ key: [UInt8]) -> (slot: Int, key: UInt32, flush: UInt32)? {
        guard let read = writeSequence else { return nil }
        let slot = MemcachedProbes.writeSequenceSlot(of: key)
        guard let k = read(slot), let f = read(MemcachedProbes.flushSequenceSlot) else { return nil }
        return (slot, k, f)
    }

    /// Waits (the consumer applies events every 20 ms at most) until L3 has applied the writes
    /// counted in `seq`; false after `timeout`.
    private func waitApplied(_ seq: (slot: Int, key: UInt32, flush: UInt32), timeout: Duration = .milliseconds(200)) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while true {
            let done = applied.withLock {
                Self.reached($0[seq.slot], seq.key) && Self.reached($0[MemcachedProbes.flushSequenceSlot], seq.flush)
            }
            if done { return true }
            if ContinuousClock.now >= deadline || stopped.load(ordering: .acquiring) { return false }
            usleep(200)
        }
    }

    private func item(_ event: MemcachedEvent, value: [UInt8], flags: UInt32) -> L3Item {
        L3Item(value: value, flags: flags, exptimeUnix: event.exptimeUnix ?? 0, version: version(event))
    }

    /// CLOCK_REALTIME − CLOCK_MONOTONIC when this started: turns events'
    /// monotonic timestamps into wall-clock versions.
    private let realtimeOffsetNs = L1Cache.realtimeOffsetNs()

    private let versions = L3VersionClock()

    /// The event's wall-clock time in µs, made strictly increasing: its L3 version.
    private func version(_ event: MemcachedEvent) -> UInt64 {
        versions.next(atLeast: UInt64(max(1, (Int64(event.timestampNs) + realtimeOffsetNs) / 1000)))
    }

    /// Keys with a promotion queued: a burst of misses of one key (many clients, or a client
    /// retrying) makes one promotion, not one per miss that would all but the first lose the race.
    private let promotionsQueued = Mutex<Set<[UInt8]>>([])

    private func enqueue(_ job: Job) {
        if case .promote(let key, _, _, _) = job {
            guard promotionsQueued.withLock({ $0.insert(key).inserted }) else {
                count { $0.promotionsMerged += 1 }
                return
            }
        }
        let accepted = queue.withLock { q -> Bool in
            guard q.count < queueCapacity else { return false }
            q.append(job)
            return true
        }
        if accepted {
            wake.signal()
        } else {
            if case .promote(let key, _, _, _) = job { promotionsQueued.withLock { _ = $0.remove(key) } }
            count { $0.dropped += 1 }
        }
    }

    /// Waits until every job queued so far is done (tests, shutdown).
    public func drain(timeout: Duration = .seconds(10)) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if queue.withLock({ $0.isEmpty }) && busy.load(ordering: .acquiring) == false { return true }
            usleep(5_000)
        }
        return false
    }
    private let busy = Atomic<Bool>(false)

    /// Items this daemon promoted, until memcached's store event for them comes back. That event
    /// is not a client's write: written through with a new version, it could overwrite a newer
    /// write another host made meanwhile. It is recognised by key, value and flags.
    private struct Promotion {
        var value: [UInt8]
        var flags: UInt32
        var atNs: UInt64
    }
    private let promotions = Mutex<[[UInt8]: Promotion]>([:])
    private static let promotionEchoWindowNs: UInt64 = 5_000_000_000

    private func isOwnPromotion(key: [UInt8], value: [UInt8], flags: UInt32) -> Bool {
        let now = L1Cache.monotonicNs()
        return promotions.withLock { pending in
            guard let p = pending[key] else { return false }
            pending[key] = nil
            return p.value == value && p.flags == flags && now &- p.atNs < Self.promotionEchoWindowNs
        }
    }

    private func remember(promotionOf key: [UInt8], value: [UInt8], flags: UInt32) {
        let now = L1Cache.monotonicNs()
        promotions.withLock { pending in
            if pending.count >= 65536 { pending = pending.filter { now &- $0.value.atNs < Self.promotionEchoWindowNs } }
            if pending.count < 65536 { pending[key] = Promotion(value: value, flags: flags, atNs: now) }
        }
    }

    private func work() {
        var client: MemcacheTCPClient?
        while !stopped.load(ordering: .acquiring) {
            wake.wait()
            while let job = queue.withLock({ q in q.isEmpty ? nil : q.removeFirst() }) {
                busy.store(true, ordering: .releasing)
                defer { busy.store(false, ordering: .releasing) }
                do {
                    if client == nil { client = try MemcacheTCPClient(host: host, port: port, timeout: .seconds(2)) }
                    try run(job, client!)
                } catch {
                    client = nil // reconnect next time
                    count { $0.failures += 1 }
                }
            }
        }
    }

    private func run(_ job: Job, _ client: MemcacheTCPClient) throws {
        switch job {
        case .fetch(let event):
            let fetcher = MemcachedValueFetcher(client: client)
            if case .fetched(let full) = try fetcher.fetch(event), let value = full.value {
                count { $0.fetched += 1 }
                if event.kind == .store, isOwnPromotion(key: event.key, value: value, flags: full.clientFlags) {
                    count { $0.promotionEchoes += 1 }
                    markApplied(event)
                    return
                }
                var flags = full.clientFlags
                if event.kind == .delta, let old = try store.get(key: event.key) { flags = old.flags }
                try store.put(key: event.key, item: item(event, value: value, flags: flags))
                markApplied(event)
            } else {
                // Gone or superseded: a later event (delete, store) says what happened; until it
                // is applied the key's slot stays behind, so no promotion trusts L3 for it.
            }
        case .promote(let key, let missAt, let seqAtMiss, let retry):
            // From here on a new miss of the key queues a new promotion.
            promotionsQueued.withLock { _ = $0.remove(key) }
            checkLostEvents()
            let before = currentSequences(key)
            if let before, !waitApplied(before) {
                count { $0.promotionsDeferred += 1 }
                return
            }
            if writeSequence != nil && before == nil {
                count { $0.promotionsDeferred += 1 }
                return
            }
            if let before, let seqAtMiss, before.key != seqAtMiss, !retry {
                // The key (or another of its slot) was written since it missed: memcached may hold
                // it again, or a delete may have made L3's copy obsolete. The miss is outdated;
                // a new one will come if the key is still missing.
                count { $0.promotionsRaced += 1 }
                return
            }
            let lookupStart = L1Cache.monotonicNs()
            let found = try store.get(key: key)
            let lookupNs = L1Cache.monotonicNs() &- lookupStart
            count {
                $0.lookups += 1
                $0.lookupNsTotal += lookupNs
                $0.lookupLatencyLog2Ns[Counters.log2Bucket(lookupNs, buckets: $0.lookupLatencyLog2Ns.count)] += 1
            }
            guard let hit = found else { return }
            count { $0.l3Hits += 1 }
            var flags = ["F\(hit.flags)", "ME"]
            if hit.exptimeUnix != 0 {
                // memcached's clock ticks once a second and lags the wall clock by up to one: an item
                // this close to its expiry may be expired in memcached already (the miss), and is not
                // worth a promotion that a delete of it could race.
                let left = hit.exptimeUnix - Self.now()
                guard left >= Self.minimumSecondsLeftToPromote else { return }
                flags.append("T\(left)")
            }
            let (name, encoded) = MemcachedValueFetcher.metaKey(key)
            if encoded { flags.append("b") }
            if before != nil { flags.append("c") } // memcached's CAS of the added item, to undo it exactly
            remember(promotionOf: key, value: hit.value, flags: hit.flags)
            let reply = try client.request(.metaSet(name, value: hit.value, flags: flags))
            guard case .meta(let meta) = reply else { throw MemcacheError.malformedReply("ms answered \(reply)") }
            let took = UInt64(max(0, Int64(L1Cache.monotonicNs()) - Int64(missAt)))
            if meta.code == "HD" {
                if let before {
                    switch try check(promotionOf: key, name: name, encoded: encoded, hit: hit, before: before, reply: meta, client: client) {
                    case .stands:
                        break
                    case .undone:
                        count { $0.promotionsUndone += 1 }
                        return
                    case .undoneNeedlessly:
                        count { $0.promotionsUndone += 1 }
                        if !retry { enqueue(.promote(key: key, missAtNs: missAt, seqAtMiss: nil, retry: true)) }
                        return
                    }
                }
                let bucket = Counters.log2Bucket(took / 1000, buckets: 32)
                count {
                    $0.promoted += 1
                    $0.promotionNsTotal += took
                    $0.promotionLatencyLog2Us[bucket] += 1
                }
            } else if meta.code == "NS" {
                count { $0.promotionsRaced += 1 }
                promotions.withLock { _ = $0.removeValue(forKey: key) } // no store event will follow
            } else {
                throw MemcacheError.malformedReply("ms answered \(meta.code)")
            }
        }
    }

    /// Items with less time left are not promoted.
    static let minimumSecondsLeftToPromote: Int64 = 2

    private enum PromotionCheck { case stands, undone, undoneNeedlessly }

    /// After memcached added the promoted item: whether it may stay. Only our own add should have
    /// reached the key's slot since `before` (and no flush). Otherwise it is deleted at once with
    /// its CAS (a client's write that landed after the add is left alone): the other write may
    /// have been a delete of this key that the add undid, and every moment the item stays a GET
    /// may read it. Once L3 has applied those writes, if it still holds the version promoted (the
    /// write was to another key of the slot), the undo was needless and the caller may promote again.
    private func check(
        promotionOf key: [UInt8], name: String, encoded: Bool, hit: L3Item, before: (slot: Int, key: UInt32, flush: UInt32),
        reply: MetaReply, client: MemcacheTCPClient
    ) throws -> PromotionCheck {
        let after = currentSequences(key)
        if let after, after.key == before.key &+ 1 && after.flush == before.flush { return .stands }
        try undo()
        if let after, after.flush == before.flush, waitApplied(after), let now = try store.get(key: key),
           now.version == hit.version {
            return .undoneNeedlessly
        }
        return .undone

        func undo() throws {
            guard let casFlag = reply.flags.first(where: { $0.hasPrefix("c") }), let cas = UInt64(casFlag.dropFirst()) else {
                throw MemcacheError.malformedReply("ms … c answered without its CAS: \(reply.flags)")
            }
            var flags = ["C\(cas)"]
            if encoded { flags.append("b") }
            let answer = try client.request(.metaDelete(name, flags: flags))
            guard case .meta(let meta) = answer, ["HD", "EX", "NF"].contains(meta.code) else {
                throw MemcacheError.malformedReply("md answered \(answer)")
            }
        }
    }
}
