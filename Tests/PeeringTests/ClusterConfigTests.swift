import Foundation
import Testing
@testable import Peering

extension PeeringTests {
    @Suite("ClusterConfig")
    struct ClusterConfigTests {
        @Test("the seed format parses as is")
        func seedFormat() throws {
            let config = try ClusterConfig.parse("""
                local_node_id=0
                num_nodes=2
                node0=10.0.0.1:11311:0x0:0x40000000
                node1=10.0.0.2:11311:0x40000000:0x40000000
                """)
            #expect(config.localNodeID == 0)
            #expect(config.nodes.count == 2)
            #expect(config.nodes[0] == NodeConfig(id: 0, address: PeerAddress(host: "10.0.0.1", port: 11311),
                                                  cxlBase: 0, cxlSize: 1 << 30, line: 3))
            #expect(config.nodes[1].cxlBase == 1 << 30)
            #expect(config.nodes[1].domain == "default")
            #expect(config.nodes[1].weight == 1)
            #expect(config.nodes[1].authenticates)
            #expect(config.replicas == 1)
            #expect(config.virtualNodesPerWeight == 1024)
            #expect(config.pskFile == nil)
            #expect(config.localNode.id == 0)
            #expect(config.sameDomainNodes.map(\.id) == [0, 1])
        }

        @Test("slices tiling the pool from offset 0, decimal and suffixed sizes, every optional key")
        func extended() throws {
            let config = try ClusterConfig.parse("""
                # three hosts, two CXL domains
                local_node_id = 2
                num_nodes = 3
                node2=[::1]:7002:128M:64M      # order does not matter
                node0=127.0.0.1:7000:0:67108864
                node1=localhost:7001:64M:64M
                node1.domain=rackB
                node1.weight=2.5
                node2.auth=none
                psk_file=keys/peer.key
                replicas=2
                vnodes=256
                pool_size=192M
                """, source: "/etc/cxl-bmc/nodes.conf", baseDirectory: "/etc/cxl-bmc")
            #expect(config.nodes.map(\.id) == [0, 1, 2])
            #expect(config.nodes[0].cxlBase == 0 && config.nodes[0].sliceEnd == 64 << 20)
            #expect(config.nodes[2].address == PeerAddress(host: "::1", port: 7002))
            #expect(config.nodes[2].address.description == "[::1]:7002")
            #expect(config.nodes[1].address.host == "localhost")
            #expect(config.nodes[1].domain == "rackB")
            #expect(config.nodes[1].weight == 2.5)
            #expect(!config.nodes[2].authenticates)
            #expect(config.pskFile == "/etc/cxl-bmc/keys/peer.key")
            #expect(config.replicas == 2)
            #expect(config.virtualNodesPerWeight == 256)
            #expect(config.poolSize == 192 << 20)
            #expect(config.sameDomainNodes.map(\.id) == [0, 2])
        }

        @Test("nodes in different domains may use the same offsets (different pools)")
        func domainsHaveTheirOwnPools() throws {
            let config = try ClusterConfig.parse("""
                local_node_id=0
                num_nodes=2
                node0=10.0.0.1:11311:0:1G
                node1=10.0.0.2:11311:0:1G
                node1.domain=rackB
                """)
            #expect(config.nodes[1].domain == "rackB")
        }

        static let errorCases: [(String, String, Int?, ClusterConfigError.Problem)] = [
            ("duplicate node", "local_node_id=0\nnum_nodes=2\nnode0=1.2.3.4:1:0:1M\nnode0=1.2.3.5:1:1M:1M\n", 4,
             .duplicateKey("node0", firstLine: 3)),
            ("missing node", "local_node_id=0\nnum_nodes=3\nnode0=1.2.3.4:1:0:1M\nnode2=1.2.3.5:1:1M:1M\n", 2,
             .missingNode(1)),
            ("num_nodes too small", "local_node_id=0\nnum_nodes=1\nnode0=1.2.3.4:1:0:1M\nnode1=1.2.3.5:1:1M:1M\n", 4,
             .nodeOutOfRange(1, numNodes: 1)),
            ("no nodes at all", "local_node_id=0\nnum_nodes=2\n", 2, .numNodesMismatch(declared: 2, defined: 0)),
            ("overlapping slices", "local_node_id=0\nnum_nodes=2\nnode0=1.2.3.4:1:0:2M\nnode1=1.2.3.5:1:1M:1M\n", 4,
             .overlappingSlices(1, 0, otherLine: 3, domain: "default")),
            ("bad address", "local_node_id=0\nnum_nodes=1\nnode0=1.2.3.400:1:0:1M\n", 3,
             .badAddress("'1.2.3.400' is neither an IPv4 address nor a host name")),
            ("bad IPv6", "local_node_id=0\nnum_nodes=1\nnode0=[fe80::zz]:1:0:1M\n", 3,
             .badAddress("'fe80::zz' is not an IPv6 address")),
            ("port 0", "local_node_id=0\nnum_nodes=1\nnode0=1.2.3.4:0:0:1M\n", 3, .badPort("'0'")),
            ("port too big", "local_node_id=0\nnum_nodes=1\nnode0=1.2.3.4:70000:0:1M\n", 3, .badPort("'70000'")),
            ("unknown key", "local_node_id=0\nnum_nodes=1\nnode0=1.2.3.4:1:0:1M\nreplica=2\n", 4, .unknownKey("replica")),
            ("unknown node option", "local_node_id=0\nnum_nodes=1\nnode0=1.2.3.4:1:0:1M\nnode0.zone=a\n", 4,
             .unknownKey("node0.zone")),
            ("weight zero", "local_node_id=0\nnum_nodes=1\nnode0=1.2.3.4:1:0:1M\nnode0.weight=0\n", 4, .badWeight("0")),
            ("weight negative", "local_node_id=0\nnum_nodes=1\nnode0=1.2.3.4:1:0:1M\nnode0.weight=-1\n", 4, .badWeight("-1")),
            ("weight not a number", "local_node_id=0\nnum_nodes=1\nnode0=1.2.3.4:1:0:1M\nnode0.weight=heavy\n", 4,
             .badWeight("heavy")),
            ("local node not listed", "local_node_id=5\nnum_nodes=1\nnode0=1.2.3.4:1:0:1M\n", 1, .localNodeNotListed(5)),
            ("missing local_node_id", "num_nodes=1\nnode0=1.2.3.4:1:0:1M\n", nil, .missingKey("local_node_id")),
            ("missing num_nodes", "local_node_id=0\nnode0=1.2.3.4:1:0:1M\n", nil, .missingKey("num_nodes")),
            ("not key=value", "local_node_id=0\nnum_nodes 1\n", 2, .syntax("expected 'key=value', got 'num_nodes 1'")),
            ("bad size", "local_node_id=0\nnum_nodes=1\nnode0=1.2.3.4:1:0:lots\n", 3,
             .badNumber(key: "node0 CXL_SIZE", value: "lots")),
            ("empty slice", "local_node_id=0\nnum_nodes=1\nnode0=1.2.3.4:1:0:0\n", 3, .emptySlice(0)),
            ("too few fields", "local_node_id=0\nnum_nodes=1\nnode0=1.2.3.4:1:0\n", 3,
             .syntax("node0: expected ADDR:PORT:CXL_BASE:CXL_SIZE (IPv6 in brackets), got '1.2.3.4:1:0'")),
            ("option for undefined node", "local_node_id=0\nnum_nodes=1\nnode0=1.2.3.4:1:0:1M\nnode3.weight=2\n", 4,
             .optionForUnknownNode(3)),
            ("same address twice", "local_node_id=0\nnum_nodes=2\nnode0=1.2.3.4:1:0:1M\nnode1=1.2.3.4:1:1M:1M\n", 4,
             .duplicateAddress("1.2.3.4:1", otherLine: 3)),
            ("slice beyond pool", "local_node_id=0\nnum_nodes=1\npool_size=1M\nnode0=1.2.3.4:1:1M:1M\n", 4,
             .sliceOutsidePool(0, poolSize: 1 << 20)),
            ("replicas above num_nodes", "local_node_id=0\nnum_nodes=1\nreplicas=2\nnode0=1.2.3.4:1:0:1M\n", 3,
             .badReplicas(2, numNodes: 1)),
            ("bad auth", "local_node_id=0\nnum_nodes=1\nnode0=1.2.3.4:1:0:1M\nnode0.auth=maybe\n", 4,
             .syntax("node0.auth must be 'psk' or 'none', got 'maybe'")),
        ]

        @Test("every error names its line and says what is wrong", arguments: errorCases.indices)
        func errors(index: Int) {
            let (name, text, line, problem) = Self.errorCases[index]
            do {
                _ = try ClusterConfig.parse(text, source: "test.conf")
                Issue.record("\(name): parsed without error")
            } catch {
                #expect(error.line == line, "\(name): \(error)")
                #expect(error.problem == problem, "\(name): \(error)")
                #expect(error.file == "test.conf")
                #expect(error.description.hasPrefix(line.map { "test.conf:\($0): " } ?? "test.conf: "), "\(error)")
            }
        }

        @Test("error messages read well")
        func messages() {
            let overlap = ClusterConfigError(file: "n.conf", line: 4,
                                             problem: .overlappingSlices(1, 0, otherLine: 3, domain: "default"))
            #expect(overlap.description == "n.conf:4: node1's CXL slice overlaps node0's (line 3) in domain 'default'")
            let mismatch = ClusterConfigError(file: "n.conf", line: 2, problem: .numNodesMismatch(declared: 3, defined: 2))
            #expect(mismatch.description == "n.conf:2: num_nodes=3 but 2 nodes are defined")
        }

        @Test("load reads a file and reports a missing one")
        func load() throws {
            let dir = try temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let path = dir + "/nodes.conf"
            try "local_node_id=0\nnum_nodes=1\nnode0=127.0.0.1:7000:0:1M\npsk_file=peer.key\n"
                .write(toFile: path, atomically: true, encoding: .utf8)
            let config = try ClusterConfig.load(path: path)
            #expect(config.pskFile == dir + "/peer.key")
            #expect(throws: ClusterConfigError.self) { try ClusterConfig.load(path: dir + "/absent.conf") }
        }

        @Test("the PSK file must be private and long enough")
        func pskFile() throws {
            let dir = try temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let path = dir + "/peer.key"
            try "  0123456789abcdef0123456789abcdef\n".write(toFile: path, atomically: true, encoding: .utf8)
            chmod(path, 0o644)
            #expect {
                try PreSharedKey.load(path: path)
            } throws: { error in
                (error as? PeerError)?.message.contains("mode 644 lets group or other access the key") == true
            }
            chmod(path, 0o600)
            let key = try PreSharedKey.load(path: path)
            #expect(key.bytes == Array("0123456789abcdef0123456789abcdef".utf8))
            try "short\n".write(toFile: path, atomically: true, encoding: .utf8)
            chmod(path, 0o600)
            #expect(throws: PeerError.self) { try PreSharedKey.load(path: path) }
            #expect(throws: PeerError.self) { try PreSharedKey.load(path: dir + "/absent") }
        }
    }
}

func temporaryDirectory() throws -> String {
    let path = NSTemporaryDirectory() + "peering-test-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}
