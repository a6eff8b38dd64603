import Foundation
import NIOCore
import Testing
@testable import Peering

extension PeeringTests {
    @Suite("Transport: PeerClient ↔ PeerServer", .serialized)
    struct TransportTests {
        @Test("values round-trip byte for byte with client flags, TTL and CAS")
        func roundTrip() async throws {
            let server = try await startServer()
            let client = makeClient(port: server.port!)
            defer { Task { await client.shutdown(); try? await server.close() } }

            let binary: [UInt8] = (0..<256).map { UInt8($0) } + bytes("\r\nEND\r\nVA 3\r\n")
            let big = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            for (key, value) in [("plain", bytes("hello")), ("empty", []), ("binary", binary), ("big", big)] {
                let outcome = try await client.set(bytes(key), value: value, flags: 0xdead_beef, ttl: 100)
                guard case .stored(let cas) = outcome else { Issue.record("\(key): \(outcome)"); continue }
                let item = try #require(try await client.get(bytes(key)))
                #expect(item.value == value, "\(key)")
                #expect(item.flags == 0xdead_beef)
                #expect(item.cas == cas)
                #expect(item.ttl.map { (98...100).contains($0) } == true, "\(key): ttl \(String(describing: item.ttl))")
            }
            _ = try await client.set(bytes("forever"), value: bytes("x"))
            #expect(try await client.get(bytes("forever"))?.ttl == nil)
            #expect(try await client.get(bytes("absent")) == nil)
            // Expired on arrival (negative TTL) is a miss.
            _ = try await client.set(bytes("gone"), value: bytes("x"), ttl: -1)
            #expect(try await client.get(bytes("gone")) == nil)
            try await client.noop()
        }

        @Test("IPv6: a server on ::1 and a client to [::1]")
        func ipv6() async throws {
            let server = try await PeerServer.start(
                host: "::1", port: 0, store: InMemoryStore(),
                configuration: PeerServer.Configuration(localNodeID: 1, psk: testPSK), group: group)
            let client = PeerClient(address: PeerAddress(host: "::1", port: server.port!),
                                    configuration: PeerClient.Configuration(localNodeID: 0, peerNodeID: 1, psk: testPSK),
                                    eventLoop: group.next())
            _ = try await client.set(bytes("six"), value: bytes("v6"))
            #expect(try await client.get(bytes("six"))?.value == bytes("v6"))
            await client.shutdown()
            try await server.close()
        }

        @Test("CAS, add/replace/append/prepend, delete")
        func writeModes() async throws {
            let server = try await startServer()
            let client = makeClient(port: server.port!)
            defer { Task { await client.shutdown(); try? await server.close() } }

            guard case .stored(let cas1) = try await client.set(bytes("k"), value: bytes("one")) else {
                Issue.record("set failed"); return
            }
            #expect(try await client.set(bytes("k"), value: bytes("two"), compareCAS: cas1 + 1000) == .exists)
            guard case .stored(let cas2) = try await client.set(bytes("k"), value: bytes("two"), compareCAS: cas1) else {
                Issue.record("CAS set failed"); return
            }
            #expect(cas2 > cas1)
            #expect(try await client.set(bytes("missing"), value: bytes("x"), compareCAS: 1) == .notFound)
            #expect(try await client.set(bytes("k"), value: bytes("x"), mode: .add) == .notStored)
            #expect(try await client.set(bytes("nope"), value: bytes("x"), mode: .replace) == .notStored)
            _ = try await client.set(bytes("k"), value: bytes(">"), mode: .append)
            _ = try await client.set(bytes("k"), value: bytes("<"), mode: .prepend)
            #expect(try await client.get(bytes("k"))?.value == bytes("<two>"))
            let current = try #require(try await client.get(bytes("k"))).cas
            #expect(try await client.delete(bytes("k"), compareCAS: current + 1) == .exists)
            #expect(try await client.delete(bytes("k"), compareCAS: current) == .deleted)
            #expect(try await client.delete(bytes("k")) == .notFound)
            #expect(try await client.get(bytes("k")) == nil)
        }

        @Test("keys with spaces, control or binary bytes travel base64-encoded; overlong keys are refused")
        func binaryKeys() async throws {
            let store = InMemoryStore()
            let server = try await startServer(store: store)
            let client = makeClient(port: server.port!)
            defer { Task { await client.shutdown(); try? await server.close() } }

            let keys: [[UInt8]] = [bytes("a key with spaces"), [0, 1, 2, 0xff], bytes("tab\there"),
                                   [UInt8](repeating: 0x80, count: 186), [UInt8](repeating: 0x61, count: 250)]
            for (i, key) in keys.enumerated() {
                _ = try await client.set(key, value: [UInt8(i)])
                #expect(store.get(key, touchTTL: nil)?.value == [UInt8(i)], "stored under the raw key")
                #expect(try await client.get(key)?.value == [UInt8(i)])
            }
            let many = try await client.getMany(keys)
            #expect(many.map { $0?.value } == keys.indices.map { [UInt8($0)] })
            for bad in [[UInt8](), [UInt8](repeating: 0x61, count: 251), [UInt8](repeating: 0, count: 187)] {
                await #expect(throws: PeerError.self) { _ = try await client.get(bad) }
            }
        }

        @Test("a multi-get of 250 keys goes out in pipelined mn-terminated batches, hits and misses in place")
        func batchedMultiGet() async throws {
            let server = try await startServer()
            let client = makeClient(port: server.port!)
            defer { Task { await client.shutdown(); try? await server.close() } }

            let keys = (0..<250).map { bytes("multi:\($0)") }
            for (i, key) in keys.enumerated() where i % 3 != 0 {
                _ = try await client.set(key, value: bytes("value-\(i)"), flags: UInt32(i))
            }
            let before = server.statistics.commands
            let items = try await client.getMany(keys)
            #expect(items.count == 250)
            for (i, item) in items.enumerated() {
                if i % 3 == 0 {
                    #expect(item == nil, "\(i)")
                } else {
                    #expect(item?.value == bytes("value-\(i)"), "\(i)")
                    #expect(item?.flags == UInt32(i))
                }
            }
            // 250 quiet mg + 3 mn (batches of 100, 100, 50).
            #expect(server.statistics.commands - before == 253)
            #expect(try await client.getMany([]) == [])
        }

        @Test("concurrent requests pipelined on one connection all get their own reply")
        func pipelined() async throws {
            let server = try await startServer()
            let client = makeClient(port: server.port!)
            defer { Task { await client.shutdown(); try? await server.close() } }
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                for i in 0..<200 {
                    tasks.addTask {
                        _ = try await client.set(bytes("p\(i)"), value: bytes("v\(i)"))
                        let item = try await client.get(bytes("p\(i)"))
                        #expect(item?.value == bytes("v\(i)"))
                    }
                }
                try await tasks.waitForAll()
            }
            #expect(server.statistics.connectionsAccepted == 1)
        }

        @Test("a wrong key, or a node id the server does not know, is rejected")
        func wrongKey() async throws {
            let server = try await startServer()
            defer { Task { try? await server.close() } }
            let wrong = makeClient(port: server.port!, psk: try PreSharedKey("another-key-0123456789"))
            await #expect(throws: PeerError.self) { _ = try await wrong.get(bytes("k")) }
            do {
                try await wrong.connect()
                Issue.record("connected with the wrong key")
            } catch {
                // The second attempt happens during the backoff.
                if case .unavailable = error {} else if case .authenticationFailed = error {} else {
                    Issue.record("unexpected \(error)")
                }
            }
            let stranger = makeClient(port: server.port!, local: 7)
            await #expect(throws: PeerError.self) { try await stranger.connect() }
            // A client that expects another node at this address refuses the server.
            let confused = makeClient(port: server.port!, peer: 2)
            do {
                try await confused.connect()
                Issue.record("accepted a server claiming another node id")
            } catch {
                #expect(error == .authenticationFailed(peer: "node2 (127.0.0.1:\(server.port!))", reason: "peer says it is node 1"))
            }
            #expect(server.statistics.authenticationFailures >= 2)
            #expect(server.statistics.authenticated == 0)
            let good = makeClient(port: server.port!)
            try await good.connect()
            try await good.noop()
            #expect(server.statistics.authenticated == 1)
            for client in [wrong, stranger, confused, good] { await client.shutdown() }
        }

        @Test("a replayed handshake answer is rejected (fresh nonce per connection)")
        func replay() async throws {
            let server = try await startServer()
            defer { Task { try? await server.close() } }
            // Record a valid exchange.
            let first = try RawSocket(port: server.port!)
            let hello = try #require(first.readLine())
            let parts = hello.split(separator: " ")
            #expect(parts.count == 3 && parts[0] == "AU" && parts[1] == "1")
            let serverNonce = try #require(Hex.decode(String(parts[2])))
            let clientNonce = Handshake.makeNonce()
            let tag = Handshake.clientTag(psk: testPSK, serverNonce: serverNonce, clientNonce: clientNonce, client: 0, server: 1)
            let answer = "AU 0 \(Hex.encode(clientNonce)) \(Hex.encode(tag))\r\n"
            first.send(answer)
            #expect(first.readLine()?.hasPrefix("OK ") == true)
            first.send("mn\r\n")
            #expect(first.readLine() == "MN")
            // Replay it on a new connection: the server's nonce differs, so the tag is wrong.
            let second = try RawSocket(port: server.port!)
            let hello2 = try #require(second.readLine())
            #expect(hello2 != hello)
            second.send(answer)
            #expect(second.readLine() == "CLIENT_ERROR authentication failed")
            #expect(second.isClosedByPeer())
        }

        @Test("commands before authentication, garbage bytes and oversize input: error line, disconnect, others unaffected")
        func garbage() async throws {
            let server = try await startServer { $0.maxValueSize = 1000 }
            let client = makeClient(port: server.port!)
            defer { Task { await client.shutdown(); try? await server.close() } }
            _ = try await client.set(bytes("survivor"), value: bytes("ok"))

            let cases: [(String, [UInt8], String)] = [
                ("command before AU", bytes("mg survivor v\r\n"), "CLIENT_ERROR authentication required"),
                ("binary garbage", [0x80, 0x01, 0x00, 0x05, 0xff, 0xfe, 0x0d, 0x0a], "CLIENT_ERROR control or non-ASCII bytes in a command line"),
                ("bare newline", bytes("AU\n"), "CLIENT_ERROR line not terminated by \\r\\n"),
                ("endless line", [UInt8](repeating: 0x41, count: 5000), "CLIENT_ERROR line longer than 2048 bytes"),
                ("malformed AU", bytes("AU zero nonce tag\r\n"), "CLIENT_ERROR malformed AU"),
            ("negative node id", bytes("AU -1 \(String(repeating: "ab", count: 32)) 00\r\n"), "CLIENT_ERROR malformed AU"),
            ]
            for (name, payload, expected) in cases {
                let socket = try RawSocket(port: server.port!)
                #expect(socket.readLine()?.hasPrefix("AU 1 ") == true, "\(name)")
                socket.send(payload)
                #expect(socket.readLine() == expected, "\(name)")
                #expect(socket.isClosedByPeer(), "\(name)")
            }
            // After authenticating: unknown commands, bad data blocks, oversize values.
            let authedCases: [(String, String, String)] = [
                ("unknown command", "get survivor\r\n", "CLIENT_ERROR unknown command 'get'"),
                ("data block without \\r\\n", "ms k 2\r\nabcd\r\n", "CLIENT_ERROR data block not terminated by \\r\\n"),
                ("value over the limit", "ms k 5000\r\n", "CLIENT_ERROR value of 5000 bytes exceeds the limit of 1000"),
                ("second AU", "AU 0 00 00\r\n", "CLIENT_ERROR unexpected AU"),
                ("bad base64 key", "mg !!!! v b\r\n", "CLIENT_ERROR key is not valid base64"),
            ]
            for (name, payload, expected) in authedCases {
                let socket = try authenticatedSocket(port: server.port!)
                socket.send(payload)
                #expect(socket.readLine() == expected, "\(name)")
                #expect(socket.isClosedByPeer(), "\(name)")
            }
            // A well-framed command with an unsupported flag is refused but the connection stays.
            let socket = try authenticatedSocket(port: server.port!)
            socket.send("mg survivor v N30\r\nmg survivor v\r\n")
            #expect(socket.readLine() == "CLIENT_ERROR invalid flag 'N' for mg")
            #expect(socket.readLine() == "VA 2")
            #expect(socket.readLine() == "ok")

            #expect(try await client.get(bytes("survivor"))?.value == bytes("ok"))
            // 3 unframeable lines before AU, 5 after; the 2 others before AU are authentication failures.
            #expect(server.statistics.protocolErrors == 8)
            #expect(server.statistics.authenticationFailures == 3)
        }

        @Test("random lines and bytes, before and after authentication, never stop the server")
        func fuzz() async throws {
            let server = try await startServer { $0.maxValueSize = 4096 }
            let client = makeClient(port: server.port!)
            defer { Task { await client.shutdown(); try? await server.close() } }
            _ = try await client.set(bytes("survivor"), value: bytes("ok"))
            var rng = SplitMix(seed: 42)
            let words = ["mg", "ms", "md", "mn", "AU", "VA", "-1", "0", "99999999999999999999", "b", "q", "v", "k",
                         "O", "T-5", "Mx", "MS", "C18446744073709551615", "F-1", "=", "Zg==", "\u{7f}"]
            for round in 0..<120 {
                // Short reads: a quiet miss or an incomplete command legitimately gets no reply.
                let socket = round % 2 == 0 ? try RawSocket(port: server.port!, receiveTimeoutMilliseconds: 100)
                    : try authenticatedSocket(port: server.port!, receiveTimeoutMilliseconds: 100)
                var payload: [UInt8] = []
                for _ in 0..<Int(rng.next() % 4 + 1) {
                    if rng.next() % 3 == 0 {
                        payload += (0..<Int(rng.next() % 40)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                    } else {
                        let count = Int(rng.next() % 6) + 1
                        payload += bytes((0..<count).map { _ in words[Int(rng.next() % UInt64(words.count))] }
                            .joined(separator: " ") + "\r\n")
                    }
                }
                socket.send(payload)
                _ = socket.readLine()
            }
            #expect(try await client.get(bytes("survivor"))?.value == bytes("ok"))
            let fresh = makeClient(port: server.port!)
            #expect(try await fresh.get(bytes("survivor"))?.value == bytes("ok"))
            await fresh.shutdown()
        }

        @Test("half-open connections time out on the server; the server keeps serving")
        func halfOpen() async throws {
            let server = try await startServer {
                $0.handshakeTimeout = .milliseconds(300)
                $0.idleTimeout = .milliseconds(600)
            }
            let client = makeClient(port: server.port!)
            defer { Task { await client.shutdown(); try? await server.close() } }
            let silent = try RawSocket(port: server.port!)
            let idle = try authenticatedSocket(port: server.port!)
            let started = Date()
            _ = try await client.set(bytes("k"), value: bytes("v"))
            #expect(silent.readLine()?.hasPrefix("AU 1 ") == true)
            #expect(silent.readLine() == "CLIENT_ERROR handshake timeout")
            #expect(silent.isClosedByPeer())
            #expect(Date().timeIntervalSince(started) < 2)
            #expect(idle.readLine() == "CLIENT_ERROR idle timeout")
            #expect(idle.isClosedByPeer())
            #expect(server.statistics.timeouts >= 2)
            // The idle timeout also closed the client's connection; it reconnects on demand.
            try await Task.sleep(for: .milliseconds(700))
            #expect(try await client.get(bytes("k"))?.value == bytes("v"))
        }

        @Test("a server that accepts and never speaks: handshake timeout, then backoff; no hang")
        func stalledServerHandshake() async throws {
            let listener = try SilentListener()
            let client = makeClient(port: listener.port) {
                $0.handshakeTimeout = .milliseconds(200)
                $0.initialBackoff = .milliseconds(300)
            }
            let started = Date()
            do {
                _ = try await client.get(bytes("k"))
                Issue.record("got a reply from a silent server")
            } catch {
                #expect(error == .timedOut(peer: "node1 (127.0.0.1:\(listener.port))", what: "handshake", milliseconds: 200))
            }
            #expect(Date().timeIntervalSince(started) < 1.5)
            // Within the backoff, requests fail fast.
            do {
                _ = try await client.get(bytes("k"))
                Issue.record("no backoff")
            } catch {
                guard case .unavailable = error else { Issue.record("\(error)"); return }
            }
            await client.shutdown()
        }

        @Test("a peer that stalls after the handshake: the request times out, the queue is bounded")
        func stalledRequests() async throws {
            let listener = try SilentListener()
            let client = makeClient(port: listener.port, psk: nil) {
                $0.requestTimeout = .milliseconds(300)
                $0.maxInFlight = 4
            }
            let started = Date()
            let results = await withTaskGroup(of: PeerError?.self) { tasks in
                for i in 0..<6 {
                    tasks.addTask {
                        do {
                            _ = try await client.get(bytes("k\(i)"))
                            return nil
                        } catch {
                            return error as? PeerError ?? .shutDown
                        }
                    }
                }
                return await tasks.reduce(into: [PeerError?]()) { $0.append($1) }
            }
            #expect(Date().timeIntervalSince(started) < 2)
            let timedOut = results.filter { if case .timedOut = $0 { true } else { false } }.count
            let full = results.filter { if case .queueFull = $0 { true } else { false } }.count
            #expect(timedOut == 4)
            #expect(full == 2)
            await client.shutdown()
        }

        @Test("connection refused, then reconnect with backoff once the peer is back")
        func reconnect() async throws {
            let store = InMemoryStore()
            let server = try await startServer(store: store)
            let port = server.port!
            let client = makeClient(port: port) {
                $0.initialBackoff = .milliseconds(50)
                $0.maxBackoff = .milliseconds(200)
            }
            defer { Task { await client.shutdown() } }
            _ = try await client.set(bytes("k"), value: bytes("v1"))
            try await server.close()
            try await Task.sleep(for: .milliseconds(100))
            await #expect(throws: PeerError.self) { _ = try await client.get(bytes("k")) }
            await #expect(throws: PeerError.self) { _ = try await client.get(bytes("k")) }
            let restarted = try await PeerServer.start(
                host: "127.0.0.1", port: port, store: store,
                configuration: PeerServer.Configuration(localNodeID: 1, psk: testPSK), group: group)
            defer { Task { try? await restarted.close() } }
            var value: [UInt8]?
            for _ in 0..<40 where value == nil {
                value = try? await client.get(bytes("k"))?.value
                if value == nil { try await Task.sleep(for: .milliseconds(50)) }
            }
            #expect(value == bytes("v1"))
        }

        @Test("connections beyond maxConnections are refused with SERVER_ERROR")
        func maxConnections() async throws {
            let server = try await startServer { $0.maxConnections = 2 }
            defer { Task { try? await server.close() } }
            let a = try RawSocket(port: server.port!)
            let b = try RawSocket(port: server.port!)
            #expect(a.readLine()?.hasPrefix("AU") == true)
            #expect(b.readLine()?.hasPrefix("AU") == true)
            let c = try RawSocket(port: server.port!)
            #expect(c.readLine() == "SERVER_ERROR too many connections")
            #expect(c.isClosedByPeer())
            #expect(server.statistics.connectionsRefused == 1)
        }

        @Test("a client shut down fails fast")
        func shutDown() async throws {
            let server = try await startServer()
            let client = makeClient(port: server.port!)
            try await client.noop()
            await client.shutdown()
            await #expect(throws: PeerError.shutDown) { try await client.noop() }
            try await server.close()
        }
    }
}

/// A raw socket past the handshake, as node 0.
func authenticatedSocket(port: Int, receiveTimeoutMilliseconds: Int = 3000) throws -> RawSocket {
    let socket = try RawSocket(port: port, receiveTimeoutMilliseconds: receiveTimeoutMilliseconds)
    guard let hello = socket.readLine(), let nonce = Hex.decode(String(hello.split(separator: " ")[2])) else {
        throw PeerError.protocolViolation(peer: "test", reason: "no hello")
    }
    let clientNonce = Handshake.makeNonce()
    let tag = Handshake.clientTag(psk: testPSK, serverNonce: nonce, clientNonce: clientNonce, client: 0, server: 1)
    socket.send("AU 0 \(Hex.encode(clientNonce)) \(Hex.encode(tag))\r\n")
    guard socket.readLine()?.hasPrefix("OK ") == true else {
        throw PeerError.authenticationFailed(peer: "test", reason: "no OK")
    }
    return socket
}
