import CXLTier
import Foundation
import L3Sync
import Peering

/// What this host's ``PeerServer`` serves: its own CXLTier partition. Peers writing through send
/// versioned writes (`ms … E<version>`, `md … E<version>`), applied only when newer than what the
/// partition holds, so writes arriving late or twice cannot undo newer ones. A plain
/// meta-protocol client (no `E`) gets memcached's semantics, versioned by this host's clock.
public final class PartitionPeerStore: LocalStore {
    private let store: CXLTierStore
    /// Versions for plain (un-versioned) clients' writes: of the same kind as L3Sync's.
    private let versions = L3VersionClock()

    public init(store: CXLTierStore) { self.store = store }

    private func stored(_ item: L3Item) -> StoredItem {
        StoredItem(value: item.value, flags: item.flags, expiresAt: Int(item.exptimeUnix), cas: item.version)
    }

    private func l3Item(value: [UInt8], flags: UInt32, ttl: Int, version: UInt64) -> L3Item {
        L3Item(value: value, flags: flags, exptimeUnix: Int64(expiryTime(ttl: ttl, now: currentUnixTime())),
               version: version)
    }

    public func get(_ key: [UInt8], touchTTL: Int?) -> StoredItem? {
        if case .item(let item) = lookup(key, touchTTL: touchTTL) { return item }
        return nil
    }

    /// One lookup of the partition, tombstones included: a deleted or expired key answers its
    /// version (`EN c<version>`), so a peer merging copies lets it outvote older ones. An item
    /// hidden by this partition's flush_all mark is absent (the mark is not a per-key version).
    public func lookup(_ key: [UInt8], touchTTL: Int?) -> StoredLookup {
        switch store.versioned(key) {
        case .absent: return .absent
        case .gone(let version): return .deleted(version: version)
        case .item(let found):
            var item = L3Item(value: found.value, flags: found.flags, exptimeUnix: Int64(found.exptime), version: found.version)
            let now = currentUnixTime()
            let hidden = (try? CXLTierStore.flushMark(pool: store.pool, partition: store.partition)
                .hides(item, now: Int64(now))) ?? true
            if hidden { return .absent }
            if let touchTTL {
                item.exptimeUnix = Int64(expiryTime(ttl: touchTTL, now: now))
                try? store.touch(key: key, exptimeUnix: item.exptimeUnix, version: item.version)
            }
            return .item(stored(item))
        }
    }

    public func storeVersioned(_ key: [UInt8], value: [UInt8], flags: UInt32, ttl: Int, version: UInt64) -> StoreOutcome {
        let item = l3Item(value: value, flags: flags, ttl: ttl, version: version)
        guard (try? store.putIfNewer(key: key, item: item)) == true else { return .notStored }
        return .stored(cas: version)
    }

    public func deleteVersioned(_ key: [UInt8], version: UInt64) -> DeleteOutcome {
        (try? store.deleteIfNewer(key: key, version: version)) == true ? .deleted : .notFound
    }

    public func store(_ key: [UInt8], value: [UInt8], flags: UInt32, ttl: Int, mode: StoreMode,
                      compareCAS: UInt64?) -> StoreOutcome {
        store.withExclusiveAccess {
            let existing = (try? store.get(key: key)) ?? nil
            if let compareCAS {
                guard let existing else { return .notFound }
                guard existing.version == compareCAS else { return .exists }
            }
            var item = l3Item(value: value, flags: flags, ttl: ttl, version: versions.now())
            switch mode {
            case .set: break
            case .add: if existing != nil { return .notStored }
            case .replace: if existing == nil { return .notStored }
            case .append, .prepend:
                guard let existing else { return .notStored }
                item.value = mode == .append ? existing.value + value : value + existing.value
                item.flags = existing.flags
                item.exptimeUnix = existing.exptimeUnix
            }
            guard (try? store.putIfNewer(key: key, item: item)) == true else { return .notStored }
            return .stored(cas: item.version)
        }
    }

    public func delete(_ key: [UInt8], compareCAS: UInt64?) -> DeleteOutcome {
        store.withExclusiveAccess {
            guard let existing = (try? store.get(key: key)) ?? nil else { return .notFound }
            if let compareCAS, existing.version != compareCAS { return .exists }
            return (try? store.deleteIfNewer(key: key, version: versions.now())) == true ? .deleted : .notFound
        }
    }
}
