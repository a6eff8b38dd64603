#if canImport(Glibc)
import Glibc
#endif

/// A network interface, by name and index.
public struct NetworkInterface: Hashable, Sendable, CustomStringConvertible {
    public let name: String
    public let index: Int32

    /// Looks `name` up (`if_nametoindex`); throws
    /// ``BPFError/Kind/unknownInterface(_:)`` if there is no such interface.
    public init(name: String) throws {
        let index = if_nametoindex(name)
        guard index != 0 else {
            throw BPFError(.unknownInterface(name), operation: "look up interface \(name)", errno: errno)
        }
        self.name = name
        self.index = Int32(index)
    }

    public var description: String { "\(name) (ifindex \(index))" }
}
