import CCXLTierShim

/// How writes become visible to, and reads become fresh for, other hosts sharing the memory.
///
/// On coherent memory (one host, CXL 3 with back-invalidate, the emulated pool) all three are
/// no-ops. On a non-coherent CXL 2.0 multi-headed device the writer must write lines back
/// (`clflushopt`) and fence before publishing, and a reader must drop its cached copy of a line
/// before reading it. The emulation cannot catch a missing flush, so tests record the calls.
public protocol FlushPolicy: Sendable {
    /// Makes `count` bytes at `address`, just stored, reach memory.
    func writeBack(_ address: UnsafeRawPointer, count: Int)
    /// Orders the write-backs before every later store (the publishing store in particular).
    func storeFence()
    /// Drops cached copies of `count` bytes at `address` before they are read.
    func invalidate(_ address: UnsafeRawPointer, count: Int)
}

/// Coherent memory: nothing to do.
public struct CoherentFlush: FlushPolicy {
    public init() {}
    @inline(__always) public func writeBack(_ address: UnsafeRawPointer, count: Int) {}
    @inline(__always) public func storeFence() {}
    @inline(__always) public func invalidate(_ address: UnsafeRawPointer, count: Int) {}
}

/// Non-coherent sharing: `clflushopt` (or `clflush`) every line written, `sfence` before
/// publishing; `clflushopt` + `mfence` on every line before it is read.
public struct NonCoherentFlush: FlushPolicy {
    public init() {}

    public func writeBack(_ address: UnsafeRawPointer, count: Int) {
        forEachLine(address, count) { cxltier_flush_line($0) }
    }

    public func storeFence() { cxltier_sfence() }

    public func invalidate(_ address: UnsafeRawPointer, count: Int) {
        forEachLine(address, count) { cxltier_flush_line($0) }
        cxltier_mfence()
    }

    private func forEachLine(_ address: UnsafeRawPointer, _ count: Int, _ body: (UnsafeRawPointer) -> Void) {
        guard count > 0 else { return }
        let start = UInt(bitPattern: address) & ~UInt(PoolFormat.line - 1)
        let end = UInt(bitPattern: address) + UInt(count)
        var line = start
        while line < end {
            body(UnsafeRawPointer(bitPattern: line)!)
            line += UInt(PoolFormat.line)
        }
    }
}
