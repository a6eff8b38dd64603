import Crypto

/// The peer handshake: a pre-shared-key challenge/response, run before any command.
///
/// ```
/// server → client   AU <server-id> <Ns>                 Ns: 32 fresh random bytes, hex
/// client → server   AU <client-id> <Nc> <Tc>            Nc: 32 fresh random bytes, hex
/// server → client   OK <Ts>                             (or CLIENT_ERROR … and close)
///
/// Tc = HMAC-SHA256(psk, "cxl-bmc-peer-v1 client" ‖ Ns ‖ Nc ‖ client-id ‖ server-id)
/// Ts = HMAC-SHA256(psk, "cxl-bmc-peer-v1 server" ‖ Ns ‖ Nc ‖ client-id ‖ server-id)
/// ```
/// The server's nonce is new for every connection, so a recorded `Tc` is worthless on any other
/// connection (no replay); the client's nonce does the same for `Ts`, which proves to the client
/// that the server holds the key too. Both node ids are inside the MACs and each side checks the
/// other's id against the config, so a tag cannot be reflected or re-used for another pair of
/// nodes. Tags are compared in constant time (swift-crypto). The lines are ordinary meta-protocol
/// lines (two-letter code, space-separated tokens). The handshake authenticates the connection's
/// start only: later traffic is neither encrypted nor MACed (run peers on a trusted network or
/// under IPsec/WireGuard against an on-path attacker).
public enum Handshake {
    public static let nonceLength = 32
    static let context = "cxl-bmc-peer-v1"

    public static func makeNonce() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<nonceLength).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
    }

    static func message(role: String, serverNonce: [UInt8], clientNonce: [UInt8],
                        client: NodeID, server: NodeID) -> [UInt8] {
        var bytes = Array("\(context) \(role)".utf8)
        bytes += serverNonce
        bytes += clientNonce
        for id in [client, server] { withUnsafeBytes(of: UInt64(truncatingIfNeeded: id).bigEndian) { bytes += $0 } }
        return bytes
    }

    public static func clientTag(psk: PreSharedKey, serverNonce: [UInt8], clientNonce: [UInt8],
                                 client: NodeID, server: NodeID) -> [UInt8] {
        tag(psk, message(role: "client", serverNonce: serverNonce, clientNonce: clientNonce,
                         client: client, server: server))
    }

    public static func serverTag(psk: PreSharedKey, serverNonce: [UInt8], clientNonce: [UInt8],
                                 client: NodeID, server: NodeID) -> [UInt8] {
        tag(psk, message(role: "server", serverNonce: serverNonce, clientNonce: clientNonce,
                         client: client, server: server))
    }

    /// Constant-time check of a received tag.
    static func verify(_ received: [UInt8], psk: PreSharedKey, message: [UInt8]) -> Bool {
        HMAC<SHA256>.isValidAuthenticationCode(received, authenticating: message, using: SymmetricKey(data: psk.bytes))
    }

    static func verifyClient(_ tag: [UInt8], psk: PreSharedKey, serverNonce: [UInt8], clientNonce: [UInt8],
                             client: NodeID, server: NodeID) -> Bool {
        verify(tag, psk: psk, message: message(role: "client", serverNonce: serverNonce, clientNonce: clientNonce,
                                                client: client, server: server))
    }

    static func verifyServer(_ tag: [UInt8], psk: PreSharedKey, serverNonce: [UInt8], clientNonce: [UInt8],
                             client: NodeID, server: NodeID) -> Bool {
        verify(tag, psk: psk, message: message(role: "server", serverNonce: serverNonce, clientNonce: clientNonce,
                                                client: client, server: server))
    }

    private static func tag(_ psk: PreSharedKey, _ message: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: psk.bytes)))
    }
}
