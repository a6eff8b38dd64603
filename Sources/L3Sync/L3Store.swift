import Foundation
import Synchronization

/// What L3 must offer the write-through and the promotion path: one interface
/// over a local CXLTier partition, a peer's partition read directly, or a
/// peer across the network. Versions order writes to one key; a write older
/// than what the store holds is ignored (a delete cannot be undone by a late put).
public protocol L3Store: AnyObject, Sendable {
    func put(key: [UInt8], item: L3Item) throws
    /// Removes the key (remembering `version`).
    func delete(key: [UInt8], version: UInt64) throws
    func touch(key: [UInt8], exptimeUnix: Int64, version: UInt64) throws
    /// The live item, nil on a miss (absent, expired, flushed, or not validated).
    func get(key: [UInt8]) throws -> L3Item?
    /// flush_all: from `effectiveUnix` on, every item whose version is below
    /// `versionsBefore` is gone. Like memcached's `oldest_live`, the latest
    /// flush replaces an earlier one still pending.
    func flush(versionsBefore: UInt64, effectiveUnix: Int64) throws
}

/// The flush_all state a store keeps: items below `versionsBefore` are gone once `effectiveUnix` is reached.
public struct L3FlushMark: Sendable, Equatable {
    public var versionsBefore: UInt64 = 0
    public var effectiveUnix: Int64 = 0

    public init(versionsBefore: UInt64 = 0, effectiveUnix: Int64 = 0) {
        self.versionsBefore = versionsBefore
        self.effectiveUnix = effectiveUnix
    }

    public func hides(_ item: L3Item, now: Int64) -> Bool {
        versionsBefore != 0 && now >= effectiveUnix && item.version < versionsBefore
    }
}

/// One item as L3 keeps it.
public struct L3Item: Sendable, Equatable {
    public var value: [UInt8]
    public var flags: UInt32
    /// Absolute unix seconds; 0 = never.
    public var exptimeUnix: Int64
    /// Orders writes to one key, and says when the write happened: wall-clock
    /// microseconds of memcached's event (so versions survive daemon restarts,
    /// and "stored before T" for flush_all is `version < T`).
    public var version: UInt64

    public init(value: [UInt8], flags: UInt32, exptimeUnix: Int64, version: UInt64) {
        self.value = value
        self.flags = flags
        self.exptimeUnix = exptimeUnix
        self.version = version
    }

    public func isExpired(now: Int64) -> Bool { exptimeUnix != 0 && exptimeUnix <= now }
}

/// An L3Store in this process's memory: `--no-cxl` runs and tests.
public final class InMemoryL3Store: L3Store {
    private struct State {
        var items: [[UInt8]: L3Item] = [:]
        var deleted: [[UInt8]: UInt64] = [:]
        var flush = L3FlushMark()
    }
    private let state = Mutex(State())
    private let clock: @Sendable () -> Int64

    public init(clock: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970) }) {
        self.clock = clock
    }

    public func put(key: [UInt8], item: L3Item) throws {
        state.withLock { s in
            if let dead = s.deleted[key], dead >= item.version { return }
            if let old = s.items[key], old.version > item.version { return }
            s.items[key] = item
        }
    }

    public func delete(key: [UInt8], version: UInt64) throws {
        state.withLock { s in
            if let old = s.items[key], old.version > version { return }
            s.items[key] = nil
            s.deleted[key] = max(s.deleted[key] ?? 0, version)
        }
    }

    public func touch(key: [UInt8], exptimeUnix: Int64, version: UInt64) throws {
        state.withLock { s in
            guard var item = s.items[key], item.version <= version else { return }
            item.exptimeUnix = exptimeUnix
            s.items[key] = item
        }
    }

    public func get(key: [UInt8]) throws -> L3Item? {
        let now = clock()
        return state.withLock { s in
            guard let item = s.items[key], !item.isExpired(now: now), !s.flush.hides(item, now: now) else { return nil }
            return item
        }
    }

    public func flush(versionsBefore: UInt64, effectiveUnix: Int64) throws {
        state.withLock { $0.flush = L3FlushMark(versionsBefore: versionsBefore, effectiveUnix: effectiveUnix) }
    }

    public var count: Int { state.withLock { $0.items.count } }
}

/// Hands out L3 versions: wall-clock microseconds (so versions survive daemon restarts, and
/// "stored before T" for flush_all is `version < T`; µs fit CXLTier's 56-bit versions), made
/// strictly increasing per clock.
public final class L3VersionClock: Sendable {
    private let last = Mutex<UInt64>(0)

    public init() {}

    public static func wallClockMicros() -> UInt64 {
        var real = timespec()
        clock_gettime(CLOCK_REALTIME, &real)
        return UInt64(real.tv_sec) * 1_000_000 + UInt64(real.tv_nsec) / 1000
    }

    /// `micros`, or just above the last version handed out if that is not below it.
    public func next(atLeast micros: UInt64) -> UInt64 {
        last.withLock { last in
            last = max(micros, last + 1)
            return last
        }
    }

    /// The next version at the current wall-clock time.
    public func now() -> UInt64 { next(atLeast: Self.wallClockMicros()) }
}
