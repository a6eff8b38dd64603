import Foundation
import Testing
@testable import Peering

/// `cxl-bmc cluster status`, run as the sibling build product next to the test binary.
enum CXLBMCBinary {
    static let path: String = {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("cxl-bmc").path
    }()
    static var available: Bool { FileManager.default.isExecutableFile(atPath: path) }

    static func run(_ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: stdout, as: UTF8.self), String(decoding: stderr, as: UTF8.self))
    }
}

extension PeeringTests {
    @Suite("cxl-bmc cluster status", .enabled(if: CXLBMCBinary.available))
    struct ClusterStatusTests {
        struct Report: Decodable {
            struct Node: Decodable {
                var id: Int
                var domain: String
                var weight: Double
                var keyShare: Double
                var replicaShare: Double
                var reachable: Bool?
                var reachability: String
            }
            var localNodeID: Int
            var replicas: Int
            var nodes: [Node]
        }

        @Test("reports shares, and which peers answer the handshake")
        func status() async throws {
            let server = try await startServer()
            defer { Task { try? await server.close() } }
            let dir = try temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try String(decoding: testPSK.bytes, as: UTF8.self).write(toFile: dir + "/peer.key", atomically: true, encoding: .utf8)
            chmod(dir + "/peer.key", 0o600)
            try """
                local_node_id=0
                num_nodes=3
                node0=127.0.0.1:\(freePort()):0:64M
                node1=127.0.0.1:\(server.port!):64M:128M
                node1.weight=2
                node2=127.0.0.1:\(freePort()):0:64M
                node2.domain=rackB
                psk_file=peer.key
                replicas=2
                """.write(toFile: dir + "/nodes.conf", atomically: true, encoding: .utf8)
            let result = try CXLBMCBinary.run(["cluster", "status", "--config", dir + "/nodes.conf", "--json"])
            #expect(result.status == 0, "\(result.stderr)")
            let report = try JSONDecoder().decode(Report.self, from: Data(result.stdout.utf8))
            #expect(report.localNodeID == 0 && report.replicas == 2)
            #expect(report.nodes.map(\.id) == [0, 1, 2])
            #expect(report.nodes[1].reachable == true, "\(report.nodes[1].reachability)")
            #expect(report.nodes[1].reachability == "ok (authenticated)")
            #expect(report.nodes[0].reachable == false && report.nodes[2].reachable == false)
            #expect(report.nodes[2].domain == "rackB")
            #expect(abs(report.nodes.map(\.keyShare).reduce(0, +) - 1) < 1e-9)
            #expect(abs(report.nodes[1].keyShare - 0.5) < 0.05)
            #expect(abs(report.nodes.map(\.replicaShare).reduce(0, +) - 2) < 1e-9)
            #expect(server.statistics.authenticated == 1)

            let text = try CXLBMCBinary.run(["cluster", "status", "--config", dir + "/nodes.conf"])
            #expect(text.stdout.contains("node1   127.0.0.1:\(server.port!)"))
            #expect(text.stdout.contains("ok (authenticated), mn round trip"))
        }

        @Test("an invalid config or a readable key file: exit 1 and the reason on stderr")
        func invalid() throws {
            let dir = try temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let path = dir + "/nodes.conf"
            try "local_node_id=0\nnum_nodes=2\nnode0=127.0.0.1:1:0:64M\nnode1=127.0.0.1:2:32M:64M\n"
                .write(toFile: path, atomically: true, encoding: .utf8)
            let bad = try CXLBMCBinary.run(["cluster", "status", "--config", path])
            #expect(bad.status == 1)
            #expect(bad.stderr == "error: \(path):4: node1's CXL slice overlaps node0's (line 3) in domain 'default'\n")
            try "local_node_id=0\nnum_nodes=1\nnode0=127.0.0.1:1:0:64M\npsk_file=k\n"
                .write(toFile: path, atomically: true, encoding: .utf8)
            try "0123456789abcdef0123".write(toFile: dir + "/k", atomically: true, encoding: .utf8)
            chmod(dir + "/k", 0o640)
            let open = try CXLBMCBinary.run(["cluster", "status", "--config", path])
            #expect(open.status == 1)
            #expect(open.stderr.contains("mode 640 lets group or other access the key"))
        }
    }
}
