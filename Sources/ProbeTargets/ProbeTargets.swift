import Foundation

/// Where to attach a uprobe for one function: a file offset in the binary.
public struct ProbeTarget: Sendable, Equatable {
    /// How the offset was found.
    public enum Source: Sendable, Equatable {
        /// The binary's own `.symtab` or `.dynsym`.
        case symbols
        /// A separate debug file (found by build-id or `.gnu_debuglink`) at this path.
        case debugFile(String)
        /// A prologue-checked offset table with this name.
        case offsetTable(String)
    }

    public let function: String
    /// Offset in the binary's file, as `uprobe` / `bpf_program__attach_uprobe` take it.
    public let fileOffset: UInt64
    public let source: Source
    /// Link-time virtual address (what the code's own addresses are relative to).
    public var address: UInt64 = 0
    /// Bytes of the function, when the source knows them.
    public var size: UInt64? = nil
}

/// A global variable of the binary: its link-time virtual address.
public struct DataSymbol: Sendable, Equatable {
    public let name: String
    public let address: UInt64
    public let size: UInt64?
    public let source: ProbeTarget.Source
}

/// Finds uprobe file offsets for named functions of a binary, trying in order
/// its own symbols, its separate debug file, then an offset table for its exact
/// build-id (whose prologue bytes must match the binary).
public enum ProbeTargetResolver {
    /// Resolves every function in `functions` or throws: `.functionsNotFound` if some
    /// are nowhere, `.prologueMismatch` if a table offset does not match the binary.
    public static func resolve(
        binary: String,
        functions: [String],
        debugRoot: String = "/usr/lib/debug",
        tables: [OffsetTable] = OffsetTable.shipped
    ) throws -> [String: ProbeTarget] {
        let image = try ELFImage(contentsOf: binary)
        let buildID = try image.buildID()
        var wanted = Set(functions)
        var found: [String: ProbeTarget] = [:]
        var notes: [String] = []

        func take(from symbols: [ELFImage.Symbol], sourceName: String, source: ProbeTarget.Source) throws {
            for function in wanted.sorted() {
                guard let address = try uniqueAddress(of: function, in: symbols, source: sourceName) else { continue }
                guard let segment = image.loadSegment(containing: address), segment.isExecutable,
                      let offset = image.fileOffset(forVirtualAddress: address) else {
                    throw ProbeTargetError.symbolNotMapped(function: function, address: address, source: sourceName)
                }
                let size = symbols.first { $0.name == function && $0.value == address }?.size
                found[function] = ProbeTarget(function: function, fileOffset: offset, source: source,
                                              address: address, size: size)
                wanted.remove(function)
            }
        }

        try take(from: try image.functionSymbols(in: .symtab) + image.functionSymbols(in: .dynsym),
                 sourceName: binary, source: .symbols)
        if wanted.isEmpty { return found }
        notes.append("no symbols for them in the binary")

        if let (path, debug) = try findDebugFile(binary: binary, image: image, buildID: buildID, debugRoot: debugRoot, notes: &notes) {
            try take(from: try debug.functionSymbols(in: .symtab) + debug.functionSymbols(in: .dynsym),
                     sourceName: path, source: .debugFile(path))
            if wanted.isEmpty { return found }
            notes.append("\(path) lacks them")
        }

        let matching = tables.filter { $0.buildID == buildID }
        if matching.isEmpty {
            notes.append("no offset table for this build-id (have: \(tables.map { "\($0.name) \($0.buildID)" }.joined(separator: ", ")))")
        }
        for table in matching {
            for function in wanted.sorted() {
                guard let entry = table.entries[function], !entry.isData else { continue }
                guard image.loadSegment(containingFileOffset: entry.fileOffset)?.isExecutable == true else {
                    throw ProbeTargetError.offsetNotExecutable(function: function, offset: entry.fileOffset, table: table.name)
                }
                let actual = entry.fileOffset < UInt64(image.bytes.count)
                    ? Array(image.bytes[Int(entry.fileOffset)...].prefix(entry.prologue.count)) : []
                guard actual == entry.prologue else {
                    throw ProbeTargetError.prologueMismatch(function: function, offset: entry.fileOffset,
                                                            expected: entry.prologue, found: actual, table: table.name)
                }
                found[function] = ProbeTarget(function: function, fileOffset: entry.fileOffset, source: .offsetTable(table.name),
                                              address: image.virtualAddress(forFileOffset: entry.fileOffset) ?? entry.fileOffset,
                                              size: entry.size)
                wanted.remove(function)
            }
            if !wanted.isEmpty { notes.append("offset table \(table.name) lacks them") }
        }

        guard wanted.isEmpty else {
            var seen = Set<String>()
            let missing = functions.filter { wanted.contains($0) && seen.insert($0).inserted }
            throw ProbeTargetError.functionsNotFound(binary: binary, buildID: buildID, missing: missing, notes: notes)
        }
        return found
    }

    /// Resolves global variables the same way (symbols, debug file, `kind=data`
    /// table lines). Names found nowhere are simply absent from the result: the
    /// caller decides what it can do without them.
    public static func resolveData(
        binary: String,
        names: [String],
        debugRoot: String = "/usr/lib/debug",
        tables: [OffsetTable] = OffsetTable.shipped
    ) throws -> [String: DataSymbol] {
        let image = try ELFImage(contentsOf: binary)
        let buildID = try image.buildID()
        var found: [String: DataSymbol] = [:]
        func take(_ symbols: [ELFImage.Symbol], _ source: ProbeTarget.Source, _ sourceName: String) throws {
            for name in names where found[name] == nil {
                guard let address = try uniqueAddress(of: name, in: symbols, source: sourceName) else { continue }
                let size = symbols.first { $0.name == name && $0.value == address }?.size
                found[name] = DataSymbol(name: name, address: address, size: size, source: source)
            }
        }
        try take(try image.objectSymbols(in: .symtab) + image.objectSymbols(in: .dynsym), .symbols, binary)
        if found.count < names.count {
            var notes: [String] = []
            if let (path, debug) = try findDebugFile(binary: binary, image: image, buildID: buildID,
                                                     debugRoot: debugRoot, notes: &notes) {
                try take(try debug.objectSymbols(in: .symtab) + debug.objectSymbols(in: .dynsym), .debugFile(path), path)
            }
        }
        for table in tables where table.buildID == buildID {
            for name in names where found[name] == nil {
                guard let entry = table.entries[name], entry.isData else { continue }
                found[name] = DataSymbol(name: name, address: entry.fileOffset, size: entry.size, source: .offsetTable(table.name))
            }
        }
        return found
    }

    /// The one address `function` has in `symbols`; globals win over locals of the same name.
    static func uniqueAddress(of function: String, in symbols: [ELFImage.Symbol], source: String) throws -> UInt64? {
        let named = symbols.filter { $0.name == function }
        let preferred = named.contains(where: \.isGlobal) ? named.filter(\.isGlobal) : named
        let addresses = Set(preferred.map(\.value)).sorted()
        guard addresses.count <= 1 else {
            throw ProbeTargetError.ambiguousSymbol(function: function, addresses: addresses, source: source)
        }
        return addresses.first
    }

    /// The separate debug file for `image`, as gdb looks for it: by build-id under
    /// `debugRoot/.build-id`, then by `.gnu_debuglink` next to the binary, in its
    /// `.debug/`, and under `debugRoot/<binary's directory>`. A candidate must carry
    /// the same build-id (and, for a debug link, the recorded CRC); others are skipped.
    static func findDebugFile(
        binary: String, image: ELFImage, buildID: String?, debugRoot: String, notes: inout [String]
    ) throws -> (String, ELFImage)? {
        let fm = FileManager.default
        var candidates: [(path: String, crc: UInt32?)] = []
        if let buildID, buildID.count > 2 {
            candidates.append(("\(debugRoot)/.build-id/\(buildID.prefix(2))/\(buildID.dropFirst(2)).debug", nil))
        }
        if let link = try image.debugLink() {
            let absolute = binary.hasPrefix("/") ? binary : fm.currentDirectoryPath + "/" + binary
            let directory = (absolute as NSString).deletingLastPathComponent
            for dir in [directory, directory + "/.debug", debugRoot + directory] {
                candidates.append(("\(dir)/\(link.fileName)", link.crc))
            }
        }
        let binaryPath = (binary as NSString).standardizingPath
        for (path, crc) in candidates where fm.fileExists(atPath: path) && (path as NSString).standardizingPath != binaryPath {
            let debug: ELFImage
            do {
                debug = try ELFImage(contentsOf: path)
            } catch let error as ProbeTargetError {
                notes.append("ignored \(path): \(error)")
                continue
            }
            if let crc, CRC32.checksum(debug.bytes) != crc {
                notes.append("ignored \(path): CRC does not match the binary's .gnu_debuglink")
                continue
            }
            let debugID = try? debug.buildID()
            if let buildID, let debugID, debugID != buildID {
                notes.append("ignored \(path): build-id \(debugID) is not the binary's")
                continue
            }
            return (path, debug)
        }
        notes.append("no debug file (looked for \(candidates.isEmpty ? "nothing: no build-id or debug link" : candidates.map(\.path).joined(separator: ", ")))")
        return nil
    }
}
