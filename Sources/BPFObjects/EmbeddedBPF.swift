#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The BPF objects compiled from `bpf/**/*.bpf.c` during `swift build`.
///
/// Each object is named after its source file without `.bpf.c`
/// (`bpf/xdp/xdp_mcache.bpf.c` is `xdp_mcache`). The ELF bytes keep their
/// BTF (`.BTF`, `.BTF.ext`) but not their DWARF.
public enum EmbeddedBPF {
    /// The names of every embedded object, sorted.
    public static let names: [String] = GeneratedBPFObjects.base64.keys.sorted()

    /// The ELF bytes of the object called `name`, or nil if there is none.
    public static func object(named name: String) -> [UInt8]? {
        guard let encoded = GeneratedBPFObjects.base64[name],
            let data = Data(base64Encoded: encoded)
        else { return nil }
        return [UInt8](data)
    }
}
