import ArgumentParser
import Loader

struct Detach: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Detach L1 from an interface (from any process).",
        discussion: """
            Detaches cxl-bmc's ingress (XDP) program from IFACE. Unless --keep-pins, it \
            also detaches every egress filter running cxl-bmc's program on IFACE (added by \
            --tc-attach or by hand), removes the clsact qdisc if cxl-bmc created it and no \
            filter is left on it, and removes PIN-ROOT/IFACE with the pinned maps (the \
            cached data is dropped). A running `cxl-bmc attach IFACE` notices and exits.
            """
    )

    @Argument(help: "The interface to detach from.")
    var interface: String

    @Flag(help: "Keep the pinned maps and egress filters, so a later attach reuses the cache.")
    var keepPins = false

    @OptionGroup var pins: PinOptions

    func run() throws {
        try CLI.run {
            let report = try L1Cache.detach(interface: interface, pinRoot: pins.pinRoot, keepPins: keepPins)
            guard report.didAnything else {
                print("cxl-bmc is not attached to \(interface) (no XDP program, egress filter or pins of its)")
                return
            }
            if !report.interfaceExists {
                print("\(interface) no longer exists")
            }
            for id in report.xdpProgramIDs {
                print("detached XDP program id \(id) from \(interface)")
            }
            for filter in report.tcFilters {
                print("detached egress filter \(filter.name) (handle \(filter.handle), priority \(filter.priority)) from \(interface)")
            }
            if report.removedQdisc {
                print("removed the clsact qdisc cxl-bmc had created on \(interface)")
            }
            if let pins = report.removedPins {
                print("removed the pins in \(pins)")
            } else if keepPins {
                print("kept the pins in \(BPFFS.pinDirectory(for: interface, root: pins.pinRoot))")
            }
        }
    }
}
