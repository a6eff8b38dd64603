import CXLTier
import Foundation
import L3Sync
import Peering
import Synchronization

/// Membership change: when a daemon starts (or reloads) with a nodes.conf whose ring places the
/// keys its partition holds on other nodes (a node was added, removed or re-weighted, or
/// `replicas` changed), it sends each key — item or tombstone, with its version — to every node
/// of the key's new replica set (its first r nodes) that lacks it:
///
/// - a key this host no longer holds a replica of goes to all of its r nodes (with consistent
///   hashing that is exactly the keys whose placement moved: adding a 4th node to 3 moves ≈ 1/4);
/// - a key this host still holds a replica of (r > 1) goes to each of its other r − 1 nodes that
///   holds an older version or nothing — checked first (a direct read inside this host's CXL
///   domain, `mg` over the network otherwise), so a node that newly enters a key's replica set
///   receives it from every old replica that stays, even when the replica it displaced is down.
///
/// Versioned writes (`ms`/`md … E<version>`) make the hand-off safe to race with new writes and
/// to repeat: a node holding a newer (or the same) version keeps it.
extension ClusterL3Store {
    public struct HandOffReport: Sendable, Equatable, CustomStringConvertible {
        /// Index entries found in this host's partition (one per key, normally).
        public var scanned = 0
        /// Keys the ring no longer places on this host (their state was sent to their nodes).
        public var moved = 0
        /// Keys this host still holds a replica of whose other replicas were checked (r > 1).
        public var checked = 0
        /// Of those checks, how many found the node already holding the version (nothing sent).
        public var upToDate = 0
        /// Writes the receiving nodes applied.
        public var applied = 0
        /// Writes refused because the node held a newer (or the same) version: not an error.
        public var alreadyNewer = 0
        /// Writes that could not be delivered (the node stayed unreachable).
        public var failed = 0
        /// Keys gone from the partition between the scan and their send (reclaimed): nothing to send.
        public var vanished = 0
        public var seconds = 0.0

        public var description: String {
            "scanned \(scanned) keys, \(moved) now placed on other nodes, \(checked) checked on their other replicas "
                + "(\(upToDate) copies up to date): \(applied) applied there, "
                + "\(alreadyNewer) already held newer, \(failed) not delivered, \(vanished) reclaimed meanwhile "
                + "(\(String(format: "%.2f", seconds)) s)"
        }
    }

    /// Scans this host's partition and sends every key to the nodes of its replica set that
    /// need it (see above). Waits up to `waitForNodes` for those nodes to answer a heartbeat
    /// first (a joining node may start after this one): without ``startHeartbeats(interval:)``
    /// it waits all of it; a node still down then is sent to anyway (and counted as failed).
    public func handOff(waitForNodes: Duration = .seconds(30), concurrency: Int = 64) -> HandOffReport {
        let started = ContinuousClock.now
        let rounds = heartbeatRounds.load(ordering: .acquiring)
        var report = HandOffReport()
        // One placement for the whole run, even if a reload replaces it meanwhile.
        let topology = self.topology
        let me = topology.config.localNodeID
        let reader: PartitionReader
        do { reader = try pool.reader(partition: local.partition) } catch {
            logger.error("hand-off: cannot read this host's partition: \(error)")
            return report
        }
        let mark = try? CXLTierStore.flushMark(pool: pool, partition: local.partition)
        /// What to send for `key` now: its newest state, unless absent or flushed (nothing to keep).
        let current: @Sendable ([UInt8]) -> VersionedLookup = { key in
            let state = reader.versioned(key)
            if case .item(let item) = state,
               mark?.hides(L3Item(value: [], flags: item.flags, exptimeUnix: Int64(item.exptime), version: item.version),
                           now: Int64(currentUnixTime())) ?? false {
                return .absent
            }
            return state
        }
        // Only the keys to send are kept (not their values: a partition's share can be large);
        // each key's state is read again right before it is sent.
        var plan: [(key: [UInt8], nodes: [NodeID], check: Bool)] = []
        var planned = Set<[UInt8]>()
        reader.forEachIndexedKey { key in
            report.scanned += 1
            let nodes = topology.ring.owners(of: key, replicas: topology.replicas)
            guard planned.insert(key).inserted, current(key) != .absent else { return }
            if !nodes.contains(me) {
                report.moved += 1
                plan.append((key, nodes, false))
            } else if nodes.count > 1 {
                report.checked += 1
                plan.append((key, nodes.filter { $0 != me }, true))
            }
        }
        count { $0.handOffMoved += UInt64(report.moved) }
        func finish() -> HandOffReport {
            let elapsed = (ContinuousClock.now - started).components
            report.seconds = Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18
            return report
        }
        guard !plan.isEmpty else { return finish() }

        // The nodes must have answered a heartbeat: until the first round every peer is presumed up,
        // and a node a reload just added until a round that started after it. A round completed
        // since `rounds` was read may have begun before: two are waited for.
        let targets = Set(plan.flatMap(\.nodes))
        let deadline = ContinuousClock.now + waitForNodes
        while ContinuousClock.now < deadline, !heartbeatStop.load(ordering: .acquiring),
              heartbeatRounds.load(ordering: .acquiring) < rounds + 2 || !targets.allSatisfy(isUp) {
            usleep(50_000)
        }

        enum Outcome: Sendable { case applied, alreadyNewer, upToDate, failed, vanished }
        typealias Send = (key: [UInt8], node: NodeID, check: Bool)
        let members = topology.members
        let logger = logger
        let width = max(1, concurrency)
        /// The version `member` holds of `key` (item or tombstone), 0 for nothing (or no answer).
        @Sendable func held(_ key: [UInt8], by member: Member) async -> UInt64 {
            if let reader = member.reader {
                switch reader.versioned(key) {
                case .item(let item): return item.version
                case .gone(let version): return version
                case .absent: return 0
                }
            }
            switch try? await member.client?.lookup(key) {
            case .item(let item): return item.cas
            case .deleted(let version): return version
            case .absent, nil: return 0
            }
        }
        /// Each send's outcome, in order; at most `width` in flight (each client pipelines them).
        func deliver(_ sends: [Send]) -> [Outcome] {
            let result = blocking { () async -> [Outcome] in
                await withTaskGroup(of: (Int, Outcome).self) { group in
                    var outcomes = [Outcome](repeating: .failed, count: sends.count)
                    var running = 0
                    for (index, send) in sends.enumerated() {
                        if running >= width, let (done, outcome) = await group.next() {
                            outcomes[done] = outcome
                            running -= 1
                        }
                        guard let member = members[send.node], let client = member.client else { continue }
                        let state = current(send.key)
                        running += 1
                        group.addTask {
                            do {
                                if send.check {
                                    let version: UInt64
                                    switch state {
                                    case .item(let item): version = item.version
                                    case .gone(let deleted): version = deleted
                                    case .absent: return (index, .vanished)
                                    }
                                    if await held(send.key, by: member) >= version { return (index, .upToDate) }
                                }
                                switch state {
                                case .item(let item):
                                    // T: absolute unix time (over 30 days memcached reads T as absolute), 0 never.
                                    let stored = try await client.set(send.key, value: item.value, flags: item.flags,
                                                                      ttl: Int(item.exptime), version: item.version)
                                    return (index, stored == .notStored ? .alreadyNewer : .applied)
                                case .gone(let version):
                                    let deleted = try await client.delete(send.key, version: version)
                                    return (index, deleted == .deleted ? .applied : .alreadyNewer)
                                case .absent:
                                    return (index, .vanished)
                                }
                            } catch {
                                logger.debug("hand-off of a key to node \(send.node) failed: \(error)")
                                return (index, .failed)
                            }
                        }
                    }
                    for await (done, outcome) in group { outcomes[done] = outcome }
                    return outcomes
                }
            }
            return (try? result.get()) ?? sends.map { _ in .failed }
        }
        // Versioned writes are idempotent: what failed (a timeout on a busy peer) is sent again.
        var pending: [Send] = plan.flatMap { entry in entry.nodes.map { (entry.key, $0, entry.check) } }
        for attempt in 0..<3 where !pending.isEmpty && !heartbeatStop.load(ordering: .acquiring) {
            if attempt > 0 { usleep(500_000) }
            let outcomes = deliver(pending)
            var failed: [Send] = []
            for (send, outcome) in zip(pending, outcomes) {
                switch outcome {
                case .applied: report.applied += 1
                case .alreadyNewer: report.alreadyNewer += 1
                case .upToDate: report.upToDate += 1
                case .failed: failed.append(send)
                case .vanished: report.vanished += 1
                }
            }
            pending = failed
        }
        report.failed = pending.count
        count { c in
            c.handOffApplied += UInt64(report.applied)
            c.handOffAlreadyNewer += UInt64(report.alreadyNewer)
            c.handOffFailed += UInt64(report.failed)
        }
        return finish()
    }
}
