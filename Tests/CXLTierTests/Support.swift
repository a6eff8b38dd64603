import Foundation
import Synchronization
import Testing
@testable import CXLTier

/// A pool file in /dev/shm unique to this test, removed when the value goes away.
final class TempPool {
    let path: String

    init() {
        path = "/dev/shm/cxl-bmc-test-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
    }

    func create(size: Int, slices: [SliceSpec] = [], bytesPerSlot: Int = PoolFormat.defaultBytesPerSlot) throws -> Pool {
        try Pool.create(path: path, size: size, slices: slices, bytesPerSlot: bytesPerSlot)
    }

    func open() throws -> Pool { try Pool(path: path) }

    deinit { unlink(path) }
}

/// A settable clock for TTL tests.
final class TestClock: Sendable {
    let now = Atomic<UInt32>(1_700_000_000)
    var function: @Sendable () -> UInt32 { { [self] in now.load(ordering: .relaxed) } }
    func advance(_ seconds: UInt32) { now.add(seconds, ordering: .relaxed) }
}

/// Records every flush-policy call, to test that writers and readers make them.
final class RecordingFlush: FlushPolicy, @unchecked Sendable {
    enum Call: Equatable {
        case writeBack(UInt, Int)
        case storeFence
        case invalidate(UInt, Int)
    }
    private let lock = Mutex<[Call]>([])
    var calls: [Call] { lock.withLock { $0 } }
    func reset() { lock.withLock { $0 = [] } }
    func writeBack(_ address: UnsafeRawPointer, count: Int) { lock.withLock { $0.append(.writeBack(UInt(bitPattern: address), count)) } }
    func storeFence() { lock.withLock { $0.append(.storeFence) } }
    func invalidate(_ address: UnsafeRawPointer, count: Int) { lock.withLock { $0.append(.invalidate(UInt(bitPattern: address), count)) } }
}

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

/// Products next to the test binary (`swift test` runs it from the build folder).
enum Products {
    static let dir: URL = {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: exe).deletingLastPathComponent()
    }()

    static func path(_ name: String) throws -> String {
        let p = dir.appendingPathComponent(name).path
        guard FileManager.default.isExecutableFile(atPath: p) else {
            throw TestFailure("\(name) not found in \(dir.path); build it first (swift build --product \(name))")
        }
        return p
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}
