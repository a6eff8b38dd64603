import Foundation
@testable import NetnsTestSupport
import MemcacheClient
import Testing

/// The clients against a real memcached on loopback: every command the TCP client speaks, and UDP
/// over IPv4 and IPv6. Needs memcached installed, not root.
@Suite(.enabled(if: LoopbackMemcached.shouldRun, "needs /usr/bin/memcached (kernel-scripts/install-deps.sh)"))
struct LoopbackClientTests {
    private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    @Test func storageCommands() throws {
        try LoopbackMemcached.with { server in
            let c = try server.tcp()
            #expect(try c.request(.store(.add, key: "s", value: bytes("b"))) == .stored)
            #expect(try c.request(.store(.add, key: "s", value: bytes("x"))) == .notStored)
            #expect(try c.request(.store(.replace, key: "s", value: bytes("c"), flags: 3)) == .stored)
            #expect(try c.request(.store(.replace, key: "nope", value: bytes("c"))) == .notStored)
            #expect(try c.request(.store(.append, key: "s", value: bytes("d"))) == .stored)
            #expect(try c.request(.store(.prepend, key: "s", value: bytes("\r\n"))) == .stored)
            #expect(try c.get("s") == MemcacheValue(key: "s", flags: 3, data: bytes("\r\ncd")))

            let cas = try #require(try c.gets(["s"]).first?.cas)
            #expect(try c.request(.cas(key: "s", value: bytes("new"), cas: cas + 1)) == .exists)
            #expect(try c.request(.cas(key: "s", value: bytes("new"), cas: cas)) == .stored)
            #expect(try c.request(.cas(key: "gone", value: bytes("x"), cas: 1)) == .notFound)
            #expect(try c.get("s")?.data == bytes("new"))
        }
    }

    @Test func noreplyCommandsAnswerNothing() throws {
        try LoopbackMemcached.with { server in
            let c = try server.tcp()
            try c.send(.store(.set, key: "q", value: bytes("1"), noreply: true))
            try c.send(.incr("q", by: 4, noreply: true))
            try c.send(.store(.set, key: "d", value: bytes("x"), noreply: true))
            try c.send(.delete("d", noreply: true))
            // Had any of them answered, that answer would be read here instead.
            #expect(try c.request(.version) != .error)
            #expect(try c.get(["q", "d"]) == [MemcacheValue(key: "q", data: bytes("5"))])
            try c.send(.flushAll(noreply: true))
            #expect(try c.get("q") == nil)
        }
    }

    @Test func arithmeticTouchAndGat() throws {
        try LoopbackMemcached.with { server in
            let c = try server.tcp()
            try c.set("n", bytes("10"))
            #expect(try c.request(.incr("n", by: 5)) == .number(15))
            #expect(try c.request(.decr("n", by: 20)) == .number(0))
            #expect(try c.request(.incr("none", by: 1)) == .notFound)
            #expect(try c.request(.touch("n", exptime: 100)) == .touched)
            #expect(try c.request(.touch("none", exptime: 100)) == .notFound)
            #expect(try c.request(.gat(exptime: 100, keys: ["n", "none"])).values.map(\.key) == ["n"])
            #expect(try c.request(.gats(exptime: 0, keys: ["n"])).values.first?.cas != nil)
            #expect(try c.delete("n") == .deleted)
            #expect(try c.delete("n") == .notFound)
            #expect(try c.flushAll() == .ok)
            #expect(try c.stats()["pid"] != nil)
        }
    }

    @Test func metaCommands() throws {
        try LoopbackMemcached.with { server in
            let c = try server.tcp()
            #expect(try c.request(.metaSet("m", value: bytes("ab\r\n"), flags: ["F5", "T0"])) == .meta(MetaReply(code: "HD")))
            #expect(try c.request(.metaGet("m", flags: ["v", "f", "k"]))
                == .meta(MetaReply(code: "VA", flags: ["f5", "km"], value: bytes("ab\r\n"))))
            #expect(try c.request(.metaGet("none", flags: ["v"])) == .meta(MetaReply(code: "EN")))
            #expect(try c.request(.metaArithmetic("ctr", flags: ["N0", "J7", "v"]))
                == .meta(MetaReply(code: "VA", flags: [], value: bytes("7"))))
            #expect(try c.request(.metaDelete("m")) == .meta(MetaReply(code: "HD")))
            #expect(try c.request(.metaDelete("m")) == .meta(MetaReply(code: "NF")))
            // Quiet mode: the miss says nothing, so mn's MN is the next reply.
            try c.send(.metaGet("none", flags: ["v", "q"]))
            #expect(try c.request(.metaNoop) == .meta(MetaReply(code: "MN")))
        }
    }

    @Test func commandSplitAcrossSegments() throws {
        try LoopbackMemcached.with { server in
            let c = try server.tcp()
            let command = MemcacheCommand.store(.set, key: "split", value: bytes("hello world")).bytes
            try c.sendSplit(command, at: [3, 10, command.count - 4], pause: .milliseconds(10))
            #expect(try c.readReply() == .stored)
            #expect(try c.get("split")?.data == bytes("hello world"))
        }
    }

    @Test func binaryProtocolSetAndDelete() throws {
        try LoopbackMemcached.with { server in
            let binary = try server.tcp()
            let set = try binary.binarySet("bin", [0, 1, 2, 0x0D, 0x0A], flags: 9)
            #expect(set.status == MemcacheBinary.Status.success.rawValue)
            #expect(set.cas != 0)
            #expect(try server.tcp().get("bin") == MemcacheValue(key: "bin", flags: 9, data: [0, 1, 2, 0x0D, 0x0A]))
            #expect(try binary.binaryDelete("bin").status == MemcacheBinary.Status.success.rawValue)
            #expect(try binary.binaryDelete("bin").status == MemcacheBinary.Status.keyNotFound.rawValue)
        }
    }

    @Test(arguments: ["127.0.0.1", "::1"])
    func udpGet(host: String) throws {
        try LoopbackMemcached.with { server in
            let tcp = try server.tcp()
            try tcp.set("u1", bytes("one"))
            try tcp.set("u2", bytes("two"), flags: 2)
            let udp = try server.udp(host)
            let response = try udp.get(["u1", "missing", "u2"])
            #expect(try response.reply.get().values == [
                MemcacheValue(key: "u1", data: bytes("one")), MemcacheValue(key: "u2", flags: 2, data: bytes("two")),
            ])
            #expect(try udp.get(["missing"]).reply.get() == .values([]))
            #expect(try udp.get(["u1"], withCAS: true).reply.get().values.first?.cas != nil)
        }
    }

    @Test func udpMultiDatagramReply() throws {
        try LoopbackMemcached.with { server in
            let value = CheckableValue.pattern(forKey: "big", size: 3000)
            try server.tcp().set("big", value)
            try server.tcp().set("big2", value)
            let response = try server.udp().get(["big", "big2"])
            #expect(response.datagrams.count >= 6)
            #expect(try response.reply.get().values.map(\.data) == [value, value])
            #expect(response.payload.count == response.datagrams.reduce(0) { $0 + $1.count - MemcacheUDPHeader.size })
        }
    }

    @Test func timeoutWhenNothingAnswers() throws {
        let silent = try SilentUDPSocket()
        let udp = try MemcacheUDPClient(host: "127.0.0.1", port: silent.port, timeout: .milliseconds(100))
        let start = ContinuousClock.now
        #expect(throws: MemcacheError.timeout) { try udp.get(["a"]) }
        #expect(ContinuousClock.now - start < .seconds(1))
    }
}

/// A bound UDP socket on loopback that never answers.
private final class SilentUDPSocket {
    let fd: Int32
    let port: UInt16

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard fd >= 0, bound else {
            if fd >= 0 { close(fd) }
            throw HarnessError("cannot bind a UDP socket on 127.0.0.1")
        }
        self.fd = fd
        port = UInt16(bigEndian: address.sin_port)
    }

    deinit { close(fd) }
}
