import CLibBPF

#if canImport(Glibc)
import Glibc
#endif

/// A consumer of a `BPF_MAP_TYPE_RINGBUF` map (libbpf's `struct ring_buffer`).
/// ``poll(timeoutMs:_:)`` hands every record to the closure, in order, on the
/// calling thread. Not thread-safe: one thread polls.
public final class RingBuffer {
    private var handle: OpaquePointer?
    private let map: BPFMap
    private let sink: Sink

    /// Records are delivered through this box: libbpf calls back with a context pointer.
    private final class Sink {
        var body: ((UnsafeRawBufferPointer) -> Void)?
    }

    public init(map: BPFMap) throws {
        guard map.type == .ringBuffer else {
            throw BPFError(.system, operation: "read ring buffer \(map.name)", detail: "\(map.name) is a \(map.type) map")
        }
        self.map = map
        self.sink = Sink()
        let context = Unmanaged.passUnretained(sink).toOpaque()
        let callback: ring_buffer_sample_fn = { context, data, size in
            guard let context, let data else { return 0 }
            let sink = Unmanaged<Sink>.fromOpaque(context).takeUnretainedValue()
            sink.body?(UnsafeRawBufferPointer(start: data, count: size))
            return 0
        }
        let (raw, code) = (ring_buffer__new(map.fd, callback, context, nil), errno)
        guard let raw else {
            throw BPFError.system("open ring buffer \(map.name)", errno: code)
        }
        handle = raw
    }

    deinit {
        if let handle { ring_buffer__free(handle) }
    }

    /// Waits up to `timeoutMs` (-1: forever) for a wake-up, then consumes every
    /// record there is (also those a producer wrote without waking us, see
    /// `BPF_RB_NO_WAKEUP`). Returns how many. EINTR is not an error.
    @discardableResult
    public func poll(timeoutMs: Int32, _ body: (UnsafeRawBufferPointer) -> Void) throws -> Int {
        guard let handle else { return 0 }
        return try withoutActuallyEscaping(body) { body in
            sink.body = body
            defer { sink.body = nil }
            let woken = ring_buffer__poll(handle, timeoutMs)
            if woken < 0 && -woken != EINTR {
                throw BPFError.system("poll ring buffer \(map.name)", errno: -woken)
            }
            let rest = ring_buffer__consume(handle)
            if rest < 0 { throw BPFError.system("consume ring buffer \(map.name)", errno: -rest) }
            return Int(max(woken, 0) + rest)
        }
    }
}
