import ArgumentParser
import Loader

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show where L1 is attached: XDP program and mode, TC filter, geometry.",
        discussion: "Lists every pin directory under PIN-ROOT and asks the kernel what is attached to its interface."
    )

    @OptionGroup var pins: PinOptions

    func run() throws {
        try CLI.run {
            try Privileges.check(for: "read L1 status")
            let all = try L1Cache.status(pinRoot: pins.pinRoot)
            if all.isEmpty {
                print("cxl-bmc is not attached anywhere (no pin directories in \(pins.pinRoot))")
                return
            }
            for status in all {
                print(Self.render(status))
            }
        }
    }

    static func render(_ status: L1Status) -> String {
        var lines: [String] = []
        if let ifindex = status.ifindex {
            lines.append("\(status.interface) (ifindex \(ifindex))")
        } else {
            lines.append("\(status.interface) (interface gone; stale pins: run `cxl-bmc detach \(status.interface)`)")
        }
        lines.append("  pins: \(status.pinDirectory)")
        if let geometry = status.geometry {
            lines.append("  L1:   \(geometry)\(status.port.map { ", memcached UDP port \($0)" } ?? "")")
        } else {
            lines.append("  L1:   maps not pinned")
        }
        if let program = status.xdpProgram, let xdp = status.xdp {
            let how = xdp.dispatcherID.map { "behind libxdp dispatcher id \($0)" } ?? "attached alone"
            lines.append("  XDP:  \(program.name) id \(program.id), \(xdp.mode?.description ?? "?") mode, \(how)")
            let others = xdp.programs.filter { $0.id != program.id }
            if !others.isEmpty {
                lines.append("        also on the hook: \(others.map { "\($0.name) id \($0.id)" }.joined(separator: ", "))")
            }
        } else if status.ifindex != nil {
            let others = status.xdp?.programs.map { "\($0.name) id \($0.id)" } ?? []
            lines.append("  XDP:  not attached\(others.isEmpty ? "" : " (hook has: \(others.joined(separator: ", ")))")")
        }
        if status.tcFilters.isEmpty {
            lines.append("  TC:   no egress filter\(status.tcPinned ? " (program pinned at \(status.pinDirectory)/\(L1Names.tcPin))" : "")")
        } else {
            for filter in status.tcFilters {
                lines.append("  TC:   egress filter \(filter.name) handle \(filter.handle) priority \(filter.priority), program id \(filter.programID)")
            }
        }
        return lines.joined(separator: "\n")
    }
}
