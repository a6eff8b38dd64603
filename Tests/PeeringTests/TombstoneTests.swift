import Foundation
import Synchronization
import Testing
@testable import Peering

extension PeeringTests {
    /// A store that remembers versioned deletes, as a CXLTier partition does (tombstones).
    final class TombstoneStore: LocalStore {
        let items = InMemoryStore()
        let tombstones = Mutex<[[UInt8]: UInt64]>([:])

        func get(_ key: [UInt8], touchTTL: Int?) -> StoredItem? { items.get(key, touchTTL: touchTTL) }

        func lookup(_ key: [UInt8], touchTTL: Int?) -> StoredLookup {
            if let item = items.get(key, touchTTL: touchTTL) { return .item(item) }
            return tombstones.withLock { $0[key] }.map { .deleted(version: $0) } ?? .absent
        }

        func store(_ key: [UInt8], value: [UInt8], flags: UInt32, ttl: Int, mode: StoreMode,
                   compareCAS: UInt64?) -> StoreOutcome {
            items.store(key, value: value, flags: flags, ttl: ttl, mode: mode, compareCAS: compareCAS)
        }

        func delete(_ key: [UInt8], compareCAS: UInt64?) -> DeleteOutcome { items.delete(key, compareCAS: compareCAS) }

        func deleteVersioned(_ key: [UInt8], version: UInt64) -> DeleteOutcome {
            _ = items.delete(key, compareCAS: nil)
            tombstones.withLock { $0[key] = version }
            return .deleted
        }
    }

    @Suite("a miss carries the deletion's version: EN c<version>")
    struct TombstoneTests {
        @Test("mg of a deleted key answers EN c<version> when asked for c; plain EN otherwise, and nothing in a quiet batch")
        func onTheWire() async throws {
            let store = TombstoneStore()
            _ = store.deleteVersioned(bytes("gone"), version: 77)
            let server = try await PeerServer.start(host: "127.0.0.1", port: 0, store: store,
                                                    configuration: .init(localNodeID: 1, psk: nil), group: group)
            defer { Task { try? await server.close() } }
            let raw = try RawSocket(port: server.port!)
            raw.send("mg gone v f c t O1\r\n")
            #expect(raw.readLine() == "EN c77 O1")
            raw.send("mg gone v O2\r\n")
            #expect(raw.readLine() == "EN O2")
            raw.send("mg never v c O3\r\n")
            #expect(raw.readLine() == "EN O3")
            raw.send("mg gone v c q O4\r\nmn\r\n")
            #expect(raw.readLine() == "MN")
        }

        @Test("PeerClient.lookup tells deleted-at-version from never held; get still answers nil for both")
        func client() async throws {
            let store = TombstoneStore()
            let server = try await PeerServer.start(host: "127.0.0.1", port: 0, store: store,
                                                    configuration: .init(localNodeID: 1, psk: testPSK, allowedPeers: [0]),
                                                    group: group)
            defer { Task { try? await server.close() } }
            let client = makeClient(port: server.port!)
            defer { Task { await client.shutdown() } }
            _ = try await client.set(bytes("k"), value: bytes("v"), version: 10)
            #expect(try await client.lookup(bytes("k")) == .item(.init(value: bytes("v"), flags: 0, cas: 1, ttl: nil)))
            #expect(try await client.delete(bytes("k"), version: 20) == .deleted)
            #expect(try await client.lookup(bytes("k")) == .deleted(version: 20))
            #expect(try await client.get(bytes("k")) == nil)
            #expect(try await client.lookup(bytes("never")) == .absent)
        }
    }
}
