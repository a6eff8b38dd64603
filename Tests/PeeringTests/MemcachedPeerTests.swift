import Foundation
import Testing
@testable import Peering

extension PeeringTests {
    @Suite("PeerClient against a real memcached (meta protocol, no auth)", .serialized,
           .enabled(if: MemcachedProcess.available))
    struct MemcachedPeerTests {
        @Test("get/set/delete, flags, TTL, CAS, binary keys and batched multi-get")
        func plainMemcached() async throws {
            let memcached = try MemcachedProcess()
            defer { memcached.stop() }
            let client = makeClient(port: memcached.port, psk: nil)
            defer { Task { await client.shutdown() } }

            let value: [UInt8] = (0..<256).map { UInt8($0) } + bytes("\r\nEND\r\n")
            guard case .stored(let cas) = try await client.set(bytes("mc:k"), value: value, flags: 42, ttl: 300) else {
                Issue.record("not stored"); return
            }
            #expect(cas > 0)
            let item = try #require(try await client.get(bytes("mc:k")))
            #expect(item.value == value)
            #expect(item.flags == 42)
            #expect(item.cas == cas)
            // memcached's clock ticks once a second and may round up.
            #expect(item.ttl.map { (298...301).contains($0) } == true, "ttl \(String(describing: item.ttl))")
            #expect(try await client.get(bytes("mc:absent")) == nil)
            #expect(try await client.set(bytes("mc:k"), value: bytes("x"), compareCAS: cas + 1) == .exists)
            #expect(try await client.set(bytes("mc:k"), value: bytes("x"), mode: .add) == .notStored)
            _ = try await client.set(bytes("mc:k"), value: bytes("!"), mode: .append)
            #expect(try await client.get(bytes("mc:k"))?.value == value + bytes("!"))

            let binaryKey: [UInt8] = [0, 1, 0x20, 0xff]
            _ = try await client.set(binaryKey, value: bytes("bin"))
            #expect(try await client.get(binaryKey)?.value == bytes("bin"))

            let keys = (0..<150).map { bytes("mc:multi:\($0)") }
            for (i, key) in keys.enumerated() where i % 2 == 0 { _ = try await client.set(key, value: bytes("v\(i)")) }
            let items = try await client.getMany(keys + [binaryKey])
            for (i, item) in items.dropLast().enumerated() {
                #expect(item?.value == (i % 2 == 0 ? bytes("v\(i)") : nil), "\(i)")
            }
            #expect(items.last??.value == bytes("bin"))

            #expect(try await client.delete(bytes("mc:k")) == .deleted)
            #expect(try await client.delete(bytes("mc:k")) == .notFound)
            // memcached keeps no tombstones: its plain EN reads as "absent", never as a deletion.
            #expect(try await client.lookup(bytes("mc:k")) == .absent)
            #expect(try await client.lookup(bytes("mc:absent")) == .absent)
            try await client.noop()
        }

        @Test("a PSK client talking to a plain memcached fails the handshake cleanly")
        func pskAgainstMemcached() async throws {
            let memcached = try MemcachedProcess()
            defer { memcached.stop() }
            let client = makeClient(port: memcached.port) { $0.handshakeTimeout = .milliseconds(300) }
            await #expect(throws: PeerError.self) { try await client.connect() }
            await client.shutdown()
        }
    }
}
