import CCXLTierShim
import Foundation
import Testing
@testable import CXLTier

@Suite("CXLTier basics")
struct BasicsTests {
    @Test("put, get, overwrite, delete and reopen")
    func putGetDelete() throws {
        let tmp = TempPool()
        let pool = try tmp.create(size: 4 << 20)
        let w = try pool.writer(partition: 0)
        #expect(try w.put(bytes("alpha"), bytes("one"), flags: 7) == .stored(version: 1))
        #expect(w.get(bytes("alpha")) == TierItem(value: bytes("one"), flags: 7, version: 1))
        #expect(try w.put(bytes("alpha"), bytes("two")) == .stored(version: 2))
        #expect(w.get(bytes("alpha"))?.value == bytes("two"))
        #expect(w.get(bytes("beta")) == nil)
        #expect(try w.delete(bytes("alpha")) == .stored(version: 3))
        #expect(w.get(bytes("alpha")) == nil)
        #expect(try w.put(bytes("gamma"), [UInt8](repeating: 0xAB, count: 5000)) == .stored(version: 4))
        let stats = w.stats()
        #expect(stats.items == 1)
        #expect(stats.bytes == 5005)
        #expect(stats.puts == 3)
        #expect(stats.deletes == 1)
        w.close()

        let reopened = try tmp.open()
        let w2 = try reopened.writer(partition: 0)
        #expect(w2.lastRecovery.wasClean)
        #expect(w2.lastRecovery.records == 2, "the alpha tombstone and gamma; the two overwritten alpha records are dead")
        #expect(w2.get(bytes("gamma"))?.value.count == 5000)
        #expect(w2.get(bytes("alpha")) == nil)
        #expect(try w2.put(bytes("delta"), bytes("x")) == .stored(version: 5))
        #expect(w2.stats().epoch == 2)
        let r = try reopened.reader(partition: 0)
        #expect(r.get(bytes("delta"))?.version == 5)
    }

    @Test("versions: an older put is refused, a tombstone stops resurrection, touch keeps the version")
    func versions() throws {
        let tmp = TempPool()
        let pool = try tmp.create(size: 1 << 20)
        let w = try pool.writer(partition: 0)
        #expect(try w.put(bytes("k"), bytes("v10"), version: 10) == .stored(version: 10))
        #expect(try w.put(bytes("k"), bytes("v9"), version: 9) == .stale(current: 10))
        #expect(try w.put(bytes("k"), bytes("v10b"), version: 10) == .stale(current: 10))
        #expect(w.get(bytes("k"))?.value == bytes("v10"))
        #expect(try w.delete(bytes("k"), version: 20) == .stored(version: 20))
        #expect(try w.put(bytes("k"), bytes("old"), version: 15) == .stale(current: 20))
        #expect(w.get(bytes("k")) == nil)
        #expect(try w.put(bytes("k"), bytes("new")) == .stored(version: 21))
        #expect(try w.touch(bytes("k"), exptime: 4_000_000_000))
        #expect(w.get(bytes("k")) == TierItem(value: bytes("new"), exptime: 4_000_000_000, version: 21))
        #expect(try !w.touch(bytes("absent"), exptime: 5))
        #expect(throws: CXLTierError.self) { try w.put([], bytes("x")) }
        #expect(throws: CXLTierError.self) { try w.put([UInt8](repeating: 1, count: 251), bytes("x")) }
        #expect(throws: CXLTierError.self) { try w.put(bytes("big"), [UInt8](repeating: 1, count: 300_000)) }
        #expect(throws: CXLTierError.self) { try w.put(bytes("k"), bytes("x"), version: 1 << 56) }
    }

    @Test("TTL: an item is a miss from its exptime on; touch extends it; reclaim counts it as expired")
    func ttl() throws {
        let tmp = TempPool()
        let clock = TestClock()
        let pool = try tmp.create(size: 256 << 10)
        let w = try pool.writer(partition: 0, clock: clock.function)
        let r = try pool.reader(partition: 0, clock: clock.function)
        let now = clock.now.load(ordering: .relaxed)
        _ = try w.put(bytes("short"), bytes("s"), exptime: now + 10)
        _ = try w.put(bytes("long"), bytes("l"), exptime: now + 100)
        _ = try w.put(bytes("forever"), bytes("f"))
        clock.advance(9)
        #expect(r.get(bytes("short"))?.value == bytes("s"))
        clock.advance(1)
        #expect(r.get(bytes("short")) == nil)
        #expect(w.get(bytes("short")) == nil)
        #expect(w.stats().expired == 1)
        #expect(try !w.touch(bytes("short"), exptime: now + 1000))
        #expect(try w.touch(bytes("long"), exptime: now + 1000))
        clock.advance(200)
        #expect(r.get(bytes("long"))?.value == bytes("l"))
        #expect(r.get(bytes("forever"))?.value == bytes("f"))
        // Fill the log so the expired item is reclaimed.
        for i in 0..<5000 { _ = try w.put(bytes("fill\(i)"), [UInt8](repeating: 1, count: 100)) }
        #expect(w.stats().expired >= 2)
        #expect(w.stats().reclaimed > 0)
    }

    @Test("reclaim with no reads (CLOCK then drops in log order) keeps the index consistent and the newest items")
    func reclaim() throws {
        let tmp = TempPool()
        let pool = try tmp.create(size: 256 << 10)
        let w = try pool.writer(partition: 0)
        let g = w.geometry
        let n = 20_000
        for i in 0..<n { _ = try w.put(bytes("key-\(i)"), bytes("value-\(i)-" + String(repeating: "x", count: i % 90))) }
        let stats = w.stats()
        #expect(stats.reclaimed > 0)
        #expect(stats.logUsed <= stats.logSize)
        var present = 0
        for i in 0..<n {
            if let item = w.get(bytes("key-\(i)")) {
                #expect(item.value == bytes("value-\(i)-" + String(repeating: "x", count: i % 90)))
                present += 1
            }
        }
        #expect(UInt64(present) == w.stats().items)
        // The newest records that fit in a tenth of the log are all there.
        for i in (n - g.logSize / 10 / 192)..<n { #expect(w.get(bytes("key-\(i)")) != nil, "key-\(i)") }
        let check = PoolCheck.check(pool.region)
        #expect(check.isClean, "\(check.damage)")
        #expect(check.partitions[0].liveItems == present)
        #expect(UInt64(check.partitions[0].scannedItems) == w.stats().items)
        #expect(UInt64(check.partitions[0].scannedBytes) == w.stats().bytes)
    }

    @Test("an item displaced from a full bucket pair is marked dead: stats match a log walk, and a rebuild does not revive it")
    func indexDisplacement() throws {
        let tmp = TempPool()
        // 65535 log bytes per slot: 2 MiB gets a handful of buckets, so both of a key's fill up.
        let pool = try tmp.create(size: 2 << 20, bytesPerSlot: 65535)
        var w = try pool.writer(partition: 0)
        #expect(w.geometry.bucketCount <= 4)
        let n = 200
        func value(_ i: Int) -> [UInt8] { bytes("v\(i)-" + String(repeating: "y", count: i % 50)) }
        for i in 0..<n { _ = try w.put(bytes("key-\(i)"), value(i)) }
        let stats = w.stats()
        #expect(stats.indexEvictions > 0)
        #expect(stats.reclaimed == 0)
        let present = Set((0..<n).filter { w.get(bytes("key-\($0)")) != nil })
        #expect(UInt64(present.count) == stats.items)
        #expect(present.count < n)
        let check = PoolCheck.check(pool.region)
        #expect(check.isClean, "\(check.damage)")
        #expect(UInt64(check.partitions[0].scannedItems) == stats.items)
        #expect(UInt64(check.partitions[0].scannedBytes) == stats.bytes)
        // A rebuild finds exactly the same items (the displaced ones are dead, not resurrected).
        w.close()
        w = try pool.writer(partition: 0)
        #expect(w.lastRecovery.records == present.count)
        #expect(Set((0..<n).filter { w.get(bytes("key-\($0)")) != nil }) == present)
        for i in present { #expect(w.get(bytes("key-\(i)"))?.value == value(i)) }
        #expect(w.stats().items == stats.items)
    }

    @Test("CLOCK: a read item gets a second chance (re-appended, same version) where FIFO drops it")
    func clockSecondChance() throws {
        for policy in [ReclaimPolicy.clock, .fifo] {
            let tmp = TempPool()
            let pool = try tmp.create(size: 256 << 10)
            let w = try pool.writer(partition: 0, reclaimPolicy: policy)
            let other = try pool.reader(partition: 0)
            guard case let .stored(version) = try w.put(bytes("hot"), bytes("hot value"), flags: 7),
                  case let .stored(ownVersion) = try w.put(bytes("hot-owner"), bytes("read by the owner")) else {
                Issue.record("put refused"); continue
            }
            var i = 0
            // Three laps of cold puts; one hot key is read by a non-owner reader every 100, the
            // other by the writer's own get (the daemon's L3 get).
            while i * 192 < 3 * w.geometry.logSize {
                _ = try w.put(bytes("cold-\(i)"), [UInt8](repeating: 1, count: 150))
                if i % 100 == 0 {
                    _ = other.get(bytes("hot"))
                    _ = w.get(bytes("hot-owner"))
                }
                i += 1
            }
            let hot = other.get(bytes("hot"))
            let ownHot = other.get(bytes("hot-owner"))
            if policy == .clock {
                #expect(hot == TierItem(value: bytes("hot value"), flags: 7, version: version))
                #expect(ownHot == TierItem(value: bytes("read by the owner"), flags: 0, version: ownVersion))
                #expect(w.stats().secondChances >= 6)
            } else {
                #expect(hot == nil)
                #expect(ownHot == nil)
                #expect(w.stats().secondChances == 0)
            }
            let check = PoolCheck.check(pool.region)
            #expect(check.isClean, "\(check.damage)")
            #expect(UInt64(check.partitions[0].scannedItems) == w.stats().items)
        }
    }

    @Test("a pool of format version 1 (no reference map) is refused with a clear message")
    func olderFormat() throws {
        let tmp = TempPool()
        let pool = try tmp.create(size: 1 << 20)
        pool.region.base.setU32(PoolFormat.PoolHeader.formatVersion, 1)
        pool.region.base.setU32(PoolFormat.PoolHeader.checksum, Pool.poolChecksum(pool.region.base, count: 1))
        #expect(throws: CXLTierError.olderFormat(found: 1, supported: PoolFormat.version)) { try tmp.open() }
        #expect(CXLTierError.olderFormat(found: 1, supported: 2).description.contains("recreate the pool"))
    }

    @Test("a pool written by a newer format version is refused with a clear message")
    func newerFormat() throws {
        let tmp = TempPool()
        let pool = try tmp.create(size: 1 << 20)
        pool.region.base.setU32(PoolFormat.PoolHeader.formatVersion, PoolFormat.version + 1)
        pool.region.base.setU32(PoolFormat.PoolHeader.checksum, Pool.poolChecksum(pool.region.base, count: 1))
        #expect(throws: CXLTierError.newerFormat(found: PoolFormat.version + 1, supported: PoolFormat.version)) { try tmp.open() }
        let message = CXLTierError.newerFormat(found: 2, supported: 1).description
        #expect(message.contains("newer than this build supports"))
    }

    @Test("records left in the memory by an earlier pool never come back in a new one")
    func reusedMemory() throws {
        let region = try AnonymousRegion(size: 1 << 20)
        let first = try Pool.create(in: region)
        let w = try first.writer(partition: 0)
        for i in 0..<20 { _ = try w.put(bytes("old\(i)"), bytes("value\(i)")) }
        w.close()
        // Same geometry, same positions: only the new pool's nonce tells the old records apart.
        let second = try Pool.create(in: region)
        #expect(second.partitions[0].nonce != first.partitions[0].nonce)
        let w2 = try second.writer(partition: 0)
        #expect(w2.lastRecovery.records == 0)
        #expect(w2.get(bytes("old0")) == nil)
        #expect(PoolCheck.check(region).isClean)
    }

    @Test("one writer per partition: a second writer is refused while the first holds the lease")
    func lease() throws {
        let tmp = TempPool()
        let pool = try tmp.create(size: 1 << 20)
        let w = try pool.writer(partition: 0)
        #expect(throws: CXLTierError.partitionOwned(partition: 0, pid: getppid())) {
            // Same pid: simulate another live owner by writing our parent's pid.
            pool.region.base.setU64(pool.partitions[0].offset + PoolFormat.PartitionHeader.writerPID, UInt64(getppid()))
            _ = try pool.writer(partition: 0)
        }
        w.close()
        #expect(throws: CXLTierError.noSuchPartition(3)) { try pool.reader(partition: 3) }
    }

    @Test("the log's position → offset arithmetic (a reciprocal, no division) equals %")
    func physArithmetic() throws {
        let tmp = TempPool()
        let pool = try tmp.create(size: 3 << 20 + 12345 * 64)
        let w = try pool.writer(partition: 0)
        let m = w.memory
        let n = m.geometry.logSize
        var positions = [0, 1, 63, 64, n - 64, n - 1, n, n + 1, 2 * n - 1, 2 * n, 1 << 53, (1 << 54) - 64, (1 << 62) - 1, Int.max / 2]
        var x: UInt64 = 0x9E37_79B9_7F4A_7C15
        for _ in 0..<100_000 {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            positions.append(Int(x >> UInt64(1 + x % 40)))
        }
        for pos in positions { #expect(m.phys(pos) == pos % n, "position \(pos)") }
    }

    @Test("crc32c: hardware and software agree with the published check value")
    func crc() {
        let check = Array("123456789".utf8)
        let sw = check.withUnsafeBytes { ~cxltier_crc32c_sw(0xFFFF_FFFF, $0.baseAddress, 9) }
        let hw = check.withUnsafeBytes { ~cxltier_crc32c(0xFFFF_FFFF, $0.baseAddress, 9) }
        #expect(sw == 0xE306_9283)
        #expect(hw == 0xE306_9283)
        var rng = SystemRandomNumberGenerator()
        for n in [0, 1, 7, 8, 9, 63, 64, 1000] {
            let data = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let a = data.withUnsafeBytes { cxltier_crc32c_sw(0x1234, $0.baseAddress, n) }
            let b = data.withUnsafeBytes { cxltier_crc32c(0x1234, $0.baseAddress, n) }
            #expect(a == b)
        }
    }
}

@Suite("Regions")
struct RegionTests {
    @Test("devdax: without a device the error says so")
    func noDevDax() throws {
        let devices = try DevDaxRegion.devices()
        if devices.isEmpty {
            #expect {
                _ = try DevDaxRegion()
            } throws: { error in
                "\(error)".hasPrefix("no devdax device found: ")
            }
            #expect {
                _ = try DevDaxRegion(path: "/dev/dax9.9")
            } throws: { error in
                "\(error)".hasPrefix("no devdax device found: /dev/dax9.9")
            }
        } else {
            let region = try DevDaxRegion()
            #expect(region.size % DevDaxRegion.alignment == 0)
        }
    }

    @Test("NUMA: a node with CPUs and a missing node are refused clearly")
    func numa() throws {
        #expect {
            _ = try NumaRegion(node: 0, size: 1 << 20)
        } throws: { error in
            "\(error)" == "NUMA node 0 has CPUs (\(ProcessInfo.processInfo.activeProcessorCount)); CXL memory appears as a CPU-less node"
        }
        #expect {
            _ = try NumaRegion(node: 63, size: 1 << 20)
        } throws: { error in
            "\(error)".hasPrefix("NUMA node 63 does not exist")
        }
    }

    @Test("anonymous memory (--no-cxl) holds a pool")
    func anonymous() throws {
        let region = try AnonymousRegion(size: 1 << 20)
        let pool = try Pool.create(in: region)
        let w = try pool.writer(partition: 0)
        _ = try w.put(bytes("a"), bytes("b"))
        #expect(try pool.reader(partition: 0).get(bytes("a"))?.value == bytes("b"))
        #expect(!region.isShared)
    }

    @Test("the pool file is created with mode 0600 and refuses to overwrite")
    func shmMode() throws {
        let tmp = TempPool()
        _ = try tmp.create(size: 1 << 20)
        var st = stat()
        #expect(stat(tmp.path, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600)
        #expect(throws: CXLTierError.self) { try tmp.create(size: 1 << 20) }
    }
}

@Suite("Flush policy and PGAS")
struct FlushAndPGASTests {
    @Test("a put writes back the record, fences, then publishes; a get invalidates what it reads")
    func flushCalls() throws {
        let tmp = TempPool()
        let flush = RecordingFlush()
        let pool = try tmp.create(size: 1 << 20)
        let w = try pool.writer(partition: 0, flush: flush)
        let g = w.geometry
        let log = UInt(bitPattern: pool.region.base + g.offset + g.logOffset)
        let index = UInt(bitPattern: pool.region.base + g.offset + g.indexOffset)
        flush.reset()
        _ = try w.put(bytes("key"), [UInt8](repeating: 7, count: 100))
        let calls = flush.calls
        let record = calls.firstIndex(of: .writeBack(log, 128))
        #expect(record != nil, "\(calls)")
        let fence = calls.firstIndex(of: .storeFence)
        let slot = calls.firstIndex { if case let .writeBack(a, 8) = $0 { a >= index && a < index + UInt(g.bucketCount * 64) } else { false } }
        #expect(record! < fence!)
        #expect(fence! < slot!)
        flush.reset()
        let r = try pool.reader(partition: 0, flush: flush)
        #expect(r.get(bytes("key"))?.value.count == 100)
        let reads = flush.calls
        #expect(reads.contains { if case let .invalidate(a, 64) = $0 { a >= index } else { false } })
        #expect(reads.contains(.invalidate(log, 16 + 3 + 100)))
        #expect(!reads.contains { if case .writeBack = $0 { true } else { false } })
    }

    @Test("the non-coherent policy runs clflushopt/sfence without faulting")
    func nonCoherent() throws {
        let tmp = TempPool()
        let pool = try tmp.create(size: 1 << 20)
        let w = try pool.writer(partition: 0, flush: NonCoherentFlush())
        _ = try w.put(bytes("a"), bytes("b"))
        #expect(try pool.reader(partition: 0, flush: NonCoherentFlush()).get(bytes("a"))?.value == bytes("b"))
        #expect(cxltier_has_clflushopt() == 1 || cxltier_has_clflushopt() == 0)
    }

    @Test("PGAS: fetch-add, CAS, loads and stores by global pointer, bounds and alignment checked")
    func pgas() throws {
        let tmp = TempPool()
        let pool = try tmp.create(size: 1 << 20)
        let word = GlobalPointer.userWord(partition: 0, 3)
        #expect(GlobalPointer(packed: word.packed) == word)
        #expect(try pool.fetchAdd(word, 5) == 0)
        #expect(try pool.fetchAdd(word, 2) == 5)
        #expect(try pool.compareExchange(word, expected: 6, desired: 9) == (false, 7))
        #expect(try pool.compareExchange(word, expected: 7, desired: 9) == (true, 7))
        #expect(try pool.loadWord(word) == 9)
        // Another mapping of the same file sees the word.
        #expect(try tmp.open().loadWord(word) == 9)
        try pool.store([1, 2, 3], at: GlobalPointer(partition: 0, offset: 512))
        #expect(try pool.load(GlobalPointer(partition: 0, offset: 512), count: 3) == [1, 2, 3])
        #expect(throws: CXLTierError.self) { try pool.fetchAdd(GlobalPointer(partition: 0, offset: 513), 1) }
        #expect(throws: CXLTierError.self) { try pool.load(GlobalPointer(partition: 0, offset: UInt64(pool.partitions[0].size) - 2), count: 3) }
        #expect(throws: CXLTierError.self) { try pool.loadWord(GlobalPointer(partition: 1, offset: 0)) }
        // Items by global pointer.
        let w = try pool.writer(partition: 0)
        _ = try w.put(bytes("k"), bytes("v"))
        let r = try pool.reader(partition: 0)
        let gp = try #require(r.locate(bytes("k")))
        #expect(try pool.getItem(at: gp, key: bytes("k"))?.value == bytes("v"))
        #expect(try pool.getItem(at: gp, key: bytes("other")) == nil)
        _ = try w.put(bytes("k"), bytes("v2"))
        #expect(try pool.getItem(at: gp, key: bytes("k")) == nil, "a stale pointer is a miss")
    }
}

@Suite("nodes.conf slices")
struct LayoutTests {
    @Test("slices that tile the pool from offset 0 become partitions; the header page sits in the first")
    func tiling() throws {
        let conf = """
            # two nodes, 8 MiB each
            local_node_id=0
            num_nodes=2
            node0=10.0.0.1:11211:0:8M
            node1=10.0.0.2:11211:0x800000:0x800000   # second half
            """
        let config = try PoolLayoutConfig(parsing: conf)
        #expect(config.localNodeID == 0)
        #expect(config.slices == [SliceSpec(ownerNode: 0, base: 0, size: 8 << 20), SliceSpec(ownerNode: 1, base: 8 << 20, size: 8 << 20)])
        let tmp = TempPool()
        let pool = try tmp.create(size: 16 << 20, slices: config.slices)
        #expect(pool.partitions.map(\.offset) == [4096, 8 << 20])
        #expect(pool.partitions.map(\.size) == [(8 << 20) - 4096, 8 << 20])
        #expect(pool.partitions.map(\.ownerNode) == [0, 1])
        let w1 = try pool.writer(partition: 1)
        _ = try w1.put(bytes("n1"), bytes("v"))
        #expect(try pool.reader(partition: 0).get(bytes("n1")) == nil)
        #expect(try pool.reader(partition: 1).get(bytes("n1"))?.value == bytes("v"))
    }

    @Test("config errors name the line", arguments: [
        ("node0=a:1:0\n", 1, "expected ADDR:PORT:CXL_BASE:CXL_SIZE"),
        ("# c\n\nnode0=a:1:zz:4M\n", 3, "CXL_BASE 'zz'"),
        ("num_nodes=3\nnode0=a:1:0:4M\nnode1=a:1:4M:4M\n", 3, "num_nodes=3 but 2"),
        ("node0=a:1:0:4M\nnode0=a:2:4M:4M\n", 2, "defined twice"),
        ("garbage\n", 1, "expected key=value"),
    ])
    func configErrors(text: String, line: Int, message: String) {
        #expect {
            _ = try PoolLayoutConfig(parsing: text)
        } throws: { error in
            guard case let CXLTierError.config(l, m) = error else { return false }
            return l == line && m.contains(message)
        }
    }

    @Test("overlapping or out-of-pool slices are refused")
    func badSlices() throws {
        let tmp = TempPool()
        #expect(throws: CXLTierError.self) {
            _ = try tmp.create(size: 8 << 20, slices: [SliceSpec(ownerNode: 0, base: 0, size: 6 << 20), SliceSpec(ownerNode: 1, base: 4 << 20, size: 4 << 20)])
        }
        let tmp2 = TempPool()
        #expect(throws: CXLTierError.self) {
            _ = try tmp2.create(size: 8 << 20, slices: [SliceSpec(ownerNode: 0, base: 0, size: 16 << 20)])
        }
        #expect(parseSize("2G") == 2 << 30)
        #expect(parseSize("0x10") == 16)
        #expect(parseSize("12x") == nil)
    }
}
