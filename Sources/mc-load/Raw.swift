import ArgumentParser
import Foundation
import MemcacheClient

/// Sends one request exactly as given and prints memcached's reply: for end-to-end tests
/// that must drive every kind of write, and for poking at a server by hand.
struct Raw: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send raw protocol text (escapes: \\r \\n \\\\) over TCP or UDP and print the reply.")

    @OptionGroup var target: ServerOptions

    @Flag(help: "Send one UDP datagram (with a frame header) instead of over TCP.")
    var udp = false

    @Option(help: "Milliseconds to wait for the reply.")
    var timeoutMs: Int = 1000

    @Flag(help: "Print a JSON object on the last line.")
    var json = false

    @Argument(help: "The request, e.g. 'set k 0 0 1\\r\\nv\\r\\n'. Real CR/LF characters work too.")
    var text: String

    struct Result: Encodable {
        var command = "raw"
        var server: String
        var transport: String
        /// The reply as UTF-8 (invalid bytes replaced).
        var reply: String
    }

    /// Turns the two-character escapes \r, \n and \\ into their bytes.
    static func unescape(_ s: String) -> [UInt8] {
        var out: [UInt8] = []
        var chars = Array(s.utf8)[...]
        while let c = chars.popFirst() {
            guard c == UInt8(ascii: "\\"), let next = chars.first else {
                out.append(c)
                continue
            }
            switch next {
            case UInt8(ascii: "r"): out.append(13)
            case UInt8(ascii: "n"): out.append(10)
            case UInt8(ascii: "\\"): out.append(c)
            default:
                out.append(c)
                continue
            }
            chars.removeFirst()
        }
        return out
    }

    func run() throws {
        let timeout = Duration.milliseconds(timeoutMs)
        let bytes = Self.unescape(text)
        let result: Result
        if udp {
            let client = try MemcacheUDPClient(host: target.server, port: target.port, timeout: timeout)
            let id = UInt16.random(in: 1...UInt16.max)
            try client.sendDatagram(MemcacheUDPHeader(requestID: id).bytes + bytes)
            guard let reply = try client.receiveDatagram(until: .now + timeout), reply.count >= MemcacheUDPHeader.size else {
                throw MemcacheError.timeout
            }
            result = Result(server: client.server.description, transport: "udp",
                            reply: String(decoding: reply.dropFirst(MemcacheUDPHeader.size), as: UTF8.self))
        } else {
            let client = try MemcacheTCPClient(host: target.server, port: target.port, timeout: timeout)
            try client.sendRaw(bytes)
            let reply = try client.readReply()
            result = Result(server: client.server.description, transport: "tcp", reply: "\(reply)")
        }
        try report([result.reply], result, json: json)
    }
}
