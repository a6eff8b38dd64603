import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// An item as the local tier holds it.
public struct StoredItem: Equatable, Sendable {
    public var value: [UInt8]
    /// memcached's client flags.
    public var flags: UInt32
    /// Unix time in seconds when the item expires; 0 = never.
    public var expiresAt: Int
    /// The item's version, served as its CAS value.
    public var cas: UInt64

    public init(value: [UInt8], flags: UInt32, expiresAt: Int, cas: UInt64) {
        self.value = value
        self.flags = flags
        self.expiresAt = expiresAt
        self.cas = cas
    }
}

public enum StoreOutcome: Equatable, Sendable {
    case stored(cas: UInt64)
    /// add of an existing key, replace/append/prepend of a missing one.
    case notStored
    /// The compare-CAS did not match.
    case exists
    /// A compare-CAS write to a missing key.
    case notFound
}

/// What a store holds for a key, deletions included (``LocalStore/lookup(_:touchTTL:)``).
public enum StoredLookup: Equatable, Sendable {
    case item(StoredItem)
    /// The newest state is a deletion (or an expiry) at this version: served as `EN c<version>`
    /// to an `mg` asking for `c`, so a reader merging copies can tell it from "never held".
    case deleted(version: UInt64)
    case absent
}

public enum DeleteOutcome: Equatable, Sendable {
    case deleted, notFound, exists
}

/// What ``PeerServer`` serves from: this host's partition of L3. CXLTier implements it for the
/// real store; ``InMemoryStore`` is the reference and test implementation. Calls run on the
/// server's event loops and must not block for long.
public protocol LocalStore: Sendable {
    /// The live item for `key`; when `touchTTL` is set, its expiry is updated first (memcached TTL rules).
    func get(_ key: [UInt8], touchTTL: Int?) -> StoredItem?
    /// `get`, and when there is no live item, the version of the deletion it knows of (stores that
    /// keep tombstones). The default knows none: `.item` or `.absent`.
    func lookup(_ key: [UInt8], touchTTL: Int?) -> StoredLookup
    /// Writes `value`. `ttl` follows memcached: 0 never expires, negative is already expired,
    /// over 30 days is an absolute Unix time. `compareCAS` makes the write conditional.
    func store(_ key: [UInt8], value: [UInt8], flags: UInt32, ttl: Int, mode: StoreMode,
               compareCAS: UInt64?) -> StoreOutcome
    func delete(_ key: [UInt8], compareCAS: UInt64?) -> DeleteOutcome
    /// A write ordered by `version` (`ms … E<version>`, sent by cxl-bmc peers writing through):
    /// applied only if no newer write or delete of the key is held; otherwise `.notStored`.
    /// The default ignores the version (a plain set).
    func storeVersioned(_ key: [UInt8], value: [UInt8], flags: UInt32, ttl: Int, version: UInt64) -> StoreOutcome
    /// A delete ordered by `version` (`md … E<version>`): remembered, so an older write cannot
    /// bring the key back. The default ignores the version.
    func deleteVersioned(_ key: [UInt8], version: UInt64) -> DeleteOutcome
}

extension LocalStore {
    public func lookup(_ key: [UInt8], touchTTL: Int?) -> StoredLookup {
        get(key, touchTTL: touchTTL).map(StoredLookup.item) ?? .absent
    }

    public func storeVersioned(_ key: [UInt8], value: [UInt8], flags: UInt32, ttl: Int, version: UInt64) -> StoreOutcome {
        store(key, value: value, flags: flags, ttl: ttl, mode: .set, compareCAS: nil)
    }

    public func deleteVersioned(_ key: [UInt8], version: UInt64) -> DeleteOutcome {
        delete(key, compareCAS: nil)
    }
}

/// memcached's expiry rule: 0 never, < 0 already expired, ≤ 30 days relative, else absolute.
public func expiryTime(ttl: Int, now: Int) -> Int {
    if ttl == 0 { return 0 }
    if ttl < 0 { return now - 1 }
    return ttl > 60 * 60 * 24 * 30 ? ttl : now + ttl
}

public func currentUnixTime() -> Int { Int(time(nil)) }

/// A dictionary behind a mutex, with memcached's write modes, CAS and TTL.
public final class InMemoryStore: LocalStore {
    private struct State {
        var items: [[UInt8]: StoredItem] = [:]
        var nextCAS: UInt64 = 1
    }

    private let state = Mutex(State())
    private let clock: @Sendable () -> Int

    public init(clock: @escaping @Sendable () -> Int = currentUnixTime) { self.clock = clock }

    public var count: Int { state.withLock { $0.items.count } }

    public func get(_ key: [UInt8], touchTTL: Int?) -> StoredItem? {
        let now = clock()
        return state.withLock { state in
            guard var item = state.items[key] else { return nil }
            if item.expiresAt != 0 && item.expiresAt <= now {
                state.items[key] = nil
                return nil
            }
            if let touchTTL {
                item.expiresAt = expiryTime(ttl: touchTTL, now: now)
                state.items[key] = item
            }
            return item
        }
    }

    public func store(_ key: [UInt8], value: [UInt8], flags: UInt32, ttl: Int, mode: StoreMode,
                      compareCAS: UInt64?) -> StoreOutcome {
        let now = clock()
        return state.withLock { state in
            var existing = state.items[key]
            if let item = existing, item.expiresAt != 0 && item.expiresAt <= now {
                state.items[key] = nil
                existing = nil
            }
            if let compareCAS {
                guard let existing else { return .notFound }
                guard existing.cas == compareCAS else { return .exists }
            }
            var newValue = value
            var newFlags = flags
            var expiresAt = expiryTime(ttl: ttl, now: now)
            switch mode {
            case .set: break
            case .add: if existing != nil { return .notStored }
            case .replace: if existing == nil { return .notStored }
            case .append, .prepend:
                guard let existing else { return .notStored }
                newValue = mode == .append ? existing.value + value : value + existing.value
                newFlags = existing.flags
                expiresAt = existing.expiresAt
            }
            let cas = state.nextCAS
            state.nextCAS += 1
            state.items[key] = StoredItem(value: newValue, flags: newFlags, expiresAt: expiresAt, cas: cas)
            return .stored(cas: cas)
        }
    }

    public func delete(_ key: [UInt8], compareCAS: UInt64?) -> DeleteOutcome {
        let now = clock()
        return state.withLock { state in
            guard let item = state.items[key], item.expiresAt == 0 || item.expiresAt > now else {
                state.items[key] = nil
                return .notFound
            }
            if let compareCAS, item.cas != compareCAS { return .exists }
            state.items[key] = nil
            return .deleted
        }
    }
}
