import Foundation

/// A read-only view of an ELF64 little-endian file: sections, PT_LOAD segments,
/// function symbols, build-id and debug link. Every read is bounds-checked; a
/// truncated or corrupt file gives a `ProbeTargetError`, never a trap.
public struct ELFImage: Sendable {
    /// One section header, with its name resolved from `.shstrtab`.
    public struct Section: Sendable, Equatable {
        public let name: String
        public let type: UInt32
        public let flags: UInt64
        public let address: UInt64
        public let offset: UInt64
        public let size: UInt64
        public let link: UInt32
        public let entrySize: UInt64
    }

    /// One program header.
    public struct Segment: Sendable, Equatable {
        public let type: UInt32
        public let flags: UInt32
        public let offset: UInt64
        public let virtualAddress: UInt64
        public let fileSize: UInt64
        public let memorySize: UInt64

        public var isLoad: Bool { type == ELFImage.ptLoad }
        public var isExecutable: Bool { flags & 1 != 0 }
    }

    /// A defined function symbol (STT_FUNC, not SHN_UNDEF).
    public struct Symbol: Sendable, Equatable {
        public let name: String
        /// The symbol's virtual address (st_value).
        public let value: UInt64
        public let size: UInt64
        /// True for STB_GLOBAL / STB_WEAK.
        public let isGlobal: Bool
    }

    /// The contents of `.gnu_debuglink`: the debug file's name and its CRC-32.
    public struct DebugLink: Sendable, Equatable {
        public let fileName: String
        public let crc: UInt32
    }

    /// Which symbol table to read.
    public enum SymbolTable: String, Sendable {
        case symtab = ".symtab"
        case dynsym = ".dynsym"
    }

    static let ptLoad: UInt32 = 1
    static let ptNote: UInt32 = 4
    static let shtSymtab: UInt32 = 2
    static let shtNote: UInt32 = 7
    static let shtNobits: UInt32 = 8
    static let shtDynsym: UInt32 = 11

    /// The whole file.
    public let bytes: [UInt8]
    /// e_type (2 = EXEC, 3 = DYN).
    public let fileType: UInt16
    /// e_machine (62 = x86-64).
    public let machine: UInt16
    public let sections: [Section]
    public let segments: [Segment]

    public init(data: Data) throws {
        try self.init(bytes: [UInt8](data))
    }

    public init(contentsOf path: String) throws {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw ProbeTargetError.io(path: path, reason: error.localizedDescription)
        }
        try self.init(data: data)
    }

    public init(bytes: [UInt8]) throws {
        self.bytes = bytes
        let r = Reader(bytes)
        guard bytes.count >= 64 else { throw ProbeTargetError.notELF(reason: "\(bytes.count) bytes, shorter than an ELF64 header") }
        guard bytes[0] == 0x7f, bytes[1] == 0x45, bytes[2] == 0x4c, bytes[3] == 0x46 else {
            throw ProbeTargetError.notELF(reason: "bad magic \(hexBytes(Array(bytes[0..<4])))")
        }
        guard bytes[4] == 2 else { throw ProbeTargetError.unsupportedELF(reason: "EI_CLASS \(bytes[4]), only ELF64 is supported") }
        guard bytes[5] == 1 else { throw ProbeTargetError.unsupportedELF(reason: "EI_DATA \(bytes[5]), only little-endian is supported") }
        fileType = try r.u16(0x10)
        machine = try r.u16(0x12)
        let phoff = try r.u64(0x20), shoff = try r.u64(0x28)
        let phentsize = UInt64(try r.u16(0x36)), shentsize = UInt64(try r.u16(0x3a))
        var phnum = UInt64(try r.u16(0x38)), shnum = UInt64(try r.u16(0x3c))
        var shstrndx = UInt64(try r.u16(0x3e))

        // Extended numbering: the real counts live in section header 0.
        if shoff != 0, shnum == 0 || shstrndx == 0xffff || phnum == 0xffff {
            guard shentsize >= 64 else { throw ProbeTargetError.malformed("e_shentsize \(shentsize) < 64") }
            if shnum == 0 { shnum = try r.u64(try r.add(shoff, 0x20, "section header 0")) }
            if shstrndx == 0xffff { shstrndx = UInt64(try r.u32(try r.add(shoff, 0x28, "section header 0"))) }
            if phnum == 0xffff { phnum = UInt64(try r.u32(try r.add(shoff, 0x2c, "section header 0"))) }
        }

        var segments: [Segment] = []
        if phoff != 0, phnum > 0 {
            guard phentsize >= 56 else { throw ProbeTargetError.malformed("e_phentsize \(phentsize) < 56") }
            try r.checkTable(offset: phoff, count: phnum, entrySize: phentsize, what: "program header table")
            for i in 0..<phnum {
                let base = phoff + i * phentsize
                segments.append(Segment(
                    type: try r.u32(base), flags: try r.u32(base + 4), offset: try r.u64(base + 8),
                    virtualAddress: try r.u64(base + 16), fileSize: try r.u64(base + 32), memorySize: try r.u64(base + 40)))
            }
        }
        self.segments = segments

        var raw: [(nameOffset: UInt32, section: Section)] = []
        if shoff != 0, shnum > 0 {
            guard shentsize >= 64 else { throw ProbeTargetError.malformed("e_shentsize \(shentsize) < 64") }
            try r.checkTable(offset: shoff, count: shnum, entrySize: shentsize, what: "section header table")
            for i in 0..<shnum {
                let base = shoff + i * shentsize
                raw.append((try r.u32(base), Section(
                    name: "", type: try r.u32(base + 4), flags: try r.u64(base + 8), address: try r.u64(base + 16),
                    offset: try r.u64(base + 24), size: try r.u64(base + 32), link: try r.u32(base + 40),
                    entrySize: try r.u64(base + 56))))
            }
        }
        var sections: [Section] = []
        if !raw.isEmpty {
            guard shstrndx < UInt64(raw.count) else {
                throw ProbeTargetError.malformed("e_shstrndx \(shstrndx) out of range (\(raw.count) sections)")
            }
            let names = raw[Int(shstrndx)].section
            let nameBytes = try r.slice(offset: names.offset, size: names.size, what: "section name table")
            for (nameOffset, s) in raw {
                let name = try Reader.cString(nameBytes, at: UInt64(nameOffset), what: "section name")
                sections.append(Section(name: name, type: s.type, flags: s.flags, address: s.address,
                                        offset: s.offset, size: s.size, link: s.link, entrySize: s.entrySize))
            }
        }
        self.sections = sections
    }

    /// The first section with this name.
    public func section(named name: String) -> Section? {
        sections.first { $0.name == name }
    }

    /// The contents of a section that has bytes in the file.
    public func contents(of section: Section) throws -> ArraySlice<UInt8> {
        guard section.type != Self.shtNobits else {
            throw ProbeTargetError.malformed("section \(section.name) has no bytes in this file (SHT_NOBITS)")
        }
        return try Reader(bytes).slice(offset: section.offset, size: section.size, what: "section \(section.name)")
    }

    /// The GNU build-id as lowercase hex, from a SHT_NOTE section or, failing
    /// that, a PT_NOTE segment; nil if the file carries none.
    public func buildID() throws -> String? {
        for s in sections where s.type == Self.shtNote {
            if let id = try Self.gnuBuildID(inNotes: try contents(of: s)) { return id }
        }
        let r = Reader(bytes)
        for p in segments where p.type == Self.ptNote {
            if let id = try Self.gnuBuildID(inNotes: try r.slice(offset: p.offset, size: p.fileSize, what: "PT_NOTE segment")) {
                return id
            }
        }
        return nil
    }

    /// The `.gnu_debuglink` section, if any.
    public func debugLink() throws -> DebugLink? {
        guard let s = section(named: ".gnu_debuglink") else { return nil }
        let body = try contents(of: s)
        let name = try Reader.cString(body, at: 0, what: ".gnu_debuglink file name")
        let crcOffset = (UInt64(name.utf8.count) + 1 + 3) & ~3
        let crc = try Reader(Array(body)).u32(crcOffset)
        return DebugLink(fileName: name, crc: crc)
    }

    /// The defined function symbols of `.symtab` or `.dynsym` (empty if the table is absent).
    public func functionSymbols(in table: SymbolTable) throws -> [Symbol] {
        try symbols(in: table, type: 2)
    }

    /// The defined data objects (global variables) of `.symtab` or `.dynsym`.
    public func objectSymbols(in table: SymbolTable) throws -> [Symbol] {
        try symbols(in: table, type: 1)
    }

    /// The virtual address of a file offset inside a PT_LOAD (inverse of `fileOffset(forVirtualAddress:)`).
    public func virtualAddress(forFileOffset offset: UInt64) -> UInt64? {
        guard let s = loadSegment(containingFileOffset: offset) else { return nil }
        return s.virtualAddress + (offset - s.offset)
    }

    func symbols(in table: SymbolTable, type wantedType: UInt8) throws -> [Symbol] {
        let type = table == .symtab ? Self.shtSymtab : Self.shtDynsym
        guard let symtab = sections.first(where: { $0.type == type }) else { return [] }
        guard symtab.entrySize == 24 || symtab.entrySize == 0 else {
            throw ProbeTargetError.malformed("\(symtab.name) entry size \(symtab.entrySize), expected 24")
        }
        guard Int(exactly: symtab.link).map({ $0 < sections.count }) == true else {
            throw ProbeTargetError.malformed("\(symtab.name) string table index \(symtab.link) out of range")
        }
        let strings = try contents(of: sections[Int(symtab.link)])
        let entries = Reader(Array(try contents(of: symtab)))
        var symbols: [Symbol] = []
        for i in 0..<(symtab.size / 24) {
            let base = i * 24
            let info = try entries.u8(base + 4)
            let shndx = try entries.u16(base + 6)
            guard info & 0xf == wantedType, shndx != 0 else { continue }
            let name = try Reader.cString(strings, at: UInt64(try entries.u32(base)), what: "\(symtab.name) symbol name")
            symbols.append(Symbol(name: name, value: try entries.u64(base + 8), size: try entries.u64(base + 16),
                                  isGlobal: info >> 4 == 1 || info >> 4 == 2))
        }
        return symbols
    }

    /// The file-backed PT_LOAD segment containing this virtual address.
    public func loadSegment(containing address: UInt64) -> Segment? {
        segments.first { $0.isLoad && address >= $0.virtualAddress && address - $0.virtualAddress < $0.fileSize }
    }

    /// The file-backed PT_LOAD segment containing this file offset.
    public func loadSegment(containingFileOffset offset: UInt64) -> Segment? {
        segments.first { $0.isLoad && offset >= $0.offset && offset - $0.offset < $0.fileSize }
    }

    /// The file offset of a virtual address (what a uprobe takes):
    /// `vaddr - p_vaddr + p_offset` of the PT_LOAD containing it, nil if none does.
    public func fileOffset(forVirtualAddress address: UInt64) -> UInt64? {
        guard let s = loadSegment(containing: address) else { return nil }
        let (offset, overflow) = (address - s.virtualAddress).addingReportingOverflow(s.offset)
        return overflow ? nil : offset
    }

    /// `count` bytes at a file offset.
    public func bytes(atFileOffset offset: UInt64, count: Int) throws -> [UInt8] {
        Array(try Reader(bytes).slice(offset: offset, size: UInt64(max(count, 0)), what: "\(count) bytes at \(hex(offset))"))
    }

    static func gnuBuildID(inNotes notes: ArraySlice<UInt8>) throws -> String? {
        let r = Reader(Array(notes))
        var at: UInt64 = 0
        while at + 12 <= UInt64(r.bytes.count) {
            let nameSize = UInt64(try r.u32(at)), descSize = UInt64(try r.u32(at + 4)), type = try r.u32(at + 8)
            let nameAt = at + 12
            let descAt = try r.add(nameAt, (nameSize + 3) & ~3, "note name")
            let next = try r.add(descAt, (descSize + 3) & ~3, "note descriptor")
            let name = try r.slice(offset: nameAt, size: nameSize, what: "note name")
            if type == 3, Array(name) == [0x47, 0x4e, 0x55, 0] {
                return hexBytes(Array(try r.slice(offset: descAt, size: descSize, what: "build-id note")))
            }
            at = next
        }
        return nil
    }
}

/// Bounds-checked little-endian reads; offsets are UInt64 so hostile values cannot overflow Int.
struct Reader {
    let bytes: [UInt8]
    init(_ bytes: [UInt8]) { self.bytes = bytes }

    func add(_ a: UInt64, _ b: UInt64, _ what: String) throws -> UInt64 {
        let (sum, overflow) = a.addingReportingOverflow(b)
        if overflow { throw ProbeTargetError.malformed("\(what): offset overflows") }
        return sum
    }

    func slice(offset: UInt64, size: UInt64, what: String) throws -> ArraySlice<UInt8> {
        let end = try add(offset, size, what)
        guard end <= UInt64(bytes.count) else { throw ProbeTargetError.truncated(what: what, end: end, fileSize: bytes.count) }
        return bytes[Int(offset)..<Int(end)]
    }

    func checkTable(offset: UInt64, count: UInt64, entrySize: UInt64, what: String) throws {
        let (size, overflow) = count.multipliedReportingOverflow(by: entrySize)
        if overflow { throw ProbeTargetError.malformed("\(what): size overflows") }
        _ = try slice(offset: offset, size: size, what: what)
    }

    private func load(_ offset: UInt64, _ width: UInt64) throws -> UInt64 {
        let s = try slice(offset: offset, size: width, what: "\(width)-byte field at \(hex(offset))")
        var value: UInt64 = 0
        for (i, b) in s.enumerated() { value |= UInt64(b) << (8 * UInt64(i)) }
        return value
    }

    func u8(_ o: UInt64) throws -> UInt8 { UInt8(try load(o, 1)) }
    func u16(_ o: UInt64) throws -> UInt16 { UInt16(try load(o, 2)) }
    func u32(_ o: UInt64) throws -> UInt32 { UInt32(try load(o, 4)) }
    func u64(_ o: UInt64) throws -> UInt64 { try load(o, 8) }

    /// A NUL-terminated string starting `offset` bytes into `table`.
    static func cString(_ table: ArraySlice<UInt8>, at offset: UInt64, what: String) throws -> String {
        guard offset < UInt64(table.count) else {
            throw ProbeTargetError.malformed("\(what) offset \(offset) outside its string table (\(table.count) bytes)")
        }
        let start = table.startIndex + Int(offset)
        guard let end = table[start...].firstIndex(of: 0) else {
            throw ProbeTargetError.malformed("\(what) at \(offset) is not NUL-terminated")
        }
        return String(decoding: table[start..<end], as: UTF8.self)
    }
}

/// CRC-32 (IEEE, as zlib's crc32) — the checksum `.gnu_debuglink` records.
enum CRC32 {
    static let table: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xedb8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xffff_ffff
        for b in bytes { c = table[Int((c ^ UInt32(b)) & 0xff)] ^ (c >> 8) }
        return c ^ 0xffff_ffff
    }
}
