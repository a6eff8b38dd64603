/// Builds a minimal BPF ELF object (one program, a license, a symbol table;
/// no maps, no BTF), so loader tests control exactly what the verifier sees.
enum MiniELF {
    /// One BPF instruction.
    static func insn(_ opcode: UInt8, dst: UInt8 = 0, src: UInt8 = 0, off: Int16 = 0, imm: Int32 = 0) -> [UInt8] {
        var bytes: [UInt8] = [opcode, (src << 4) | dst]
        bytes += withUnsafeBytes(of: off.littleEndian, Array.init)
        bytes += withUnsafeBytes(of: imm.littleEndian, Array.init)
        return bytes
    }

    /// `r0 = imm; exit`: a program that returns `imm`.
    static func returning(_ imm: Int32) -> [UInt8] {
        insn(0xb7, dst: 0, imm: imm) + insn(0x95)
    }

    /// `exit` with r0 never written: the verifier says "R0 !read_ok".
    static let uninitializedReturn = insn(0x95)

    /// An ET_REL, EM_BPF object with `code` in section `section` as program `name`.
    static func object(section: String, program name: String, code: [UInt8]) -> [UInt8] {
        var strtab: [UInt8] = [0]
        func addString(_ s: String) -> UInt32 {
            let offset = UInt32(strtab.count)
            strtab += Array(s.utf8) + [0]
            return offset
        }
        let sectionName = addString(section)
        let licenseName = addString("license")
        let symtabName = addString(".symtab")
        let strtabName = addString(".strtab")
        let programName = addString(name)

        var symtab = [UInt8](repeating: 0, count: 24)
        symtab += le(programName) + [0x12, 0] + le(UInt16(1)) + le(UInt64(0)) + le(UInt64(code.count))

        let license = Array("GPL".utf8) + [0]
        var body: [UInt8] = []
        var offsets: [Int] = []
        for data in [code, license, symtab, strtab] {
            while body.count % 8 != 0 { body.append(0) }
            offsets.append(64 + body.count)
            body += data
        }
        while body.count % 8 != 0 { body.append(0) }
        let sectionHeaders = 64 + body.count

        var elf: [UInt8] = [0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0] + [UInt8](repeating: 0, count: 8)
        elf += le(UInt16(1)) + le(UInt16(247)) + le(UInt32(1))
        elf += le(UInt64(0)) + le(UInt64(0)) + le(UInt64(sectionHeaders))
        elf += le(UInt32(0)) + le(UInt16(64)) + le(UInt16(0)) + le(UInt16(0))
        elf += le(UInt16(64)) + le(UInt16(5)) + le(UInt16(4))
        elf += body

        func header(_ name: UInt32, _ type: UInt32, _ flags: UInt64, _ offset: Int, _ size: Int,
                    link: UInt32 = 0, info: UInt32 = 0, align: UInt64 = 8, entsize: UInt64 = 0) -> [UInt8] {
            le(name) + le(type) + le(flags) + le(UInt64(0)) + le(UInt64(offset)) + le(UInt64(size))
                + le(link) + le(info) + le(align) + le(entsize)
        }
        elf += [UInt8](repeating: 0, count: 64)
        elf += header(sectionName, 1, 0x6, offsets[0], code.count)
        elf += header(licenseName, 1, 0x3, offsets[1], license.count, align: 1)
        elf += header(symtabName, 2, 0, offsets[2], symtab.count, link: 4, info: 1, entsize: 24)
        elf += header(strtabName, 3, 0, offsets[3], strtab.count, align: 1)
        return elf
    }

    private static func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        withUnsafeBytes(of: value.littleEndian, Array.init)
    }

    /// The section names of an ELF64 little-endian object.
    static func sectionNames(_ elf: [UInt8]) -> [String] {
        func read<T: FixedWidthInteger>(_ type: T.Type, _ offset: Int) -> T {
            elf[offset..<offset + MemoryLayout<T>.size].withUnsafeBytes { $0.loadUnaligned(as: T.self) }
        }
        let shoff = Int(read(UInt64.self, 0x28))
        let shentsize = Int(read(UInt16.self, 0x3a))
        let shnum = Int(read(UInt16.self, 0x3c))
        let shstrndx = Int(read(UInt16.self, 0x3e))
        let strings = Int(read(UInt64.self, shoff + shstrndx * shentsize + 0x18))
        return (0..<shnum).map { index in
            let nameOffset = strings + Int(read(UInt32.self, shoff + index * shentsize))
            let end = elf[nameOffset...].firstIndex(of: 0) ?? elf.count
            return String(decoding: elf[nameOffset..<end], as: UTF8.self)
        }
    }
}

/// Ethernet + IPv4 + UDP frames for test runs (checksums left zero: the
/// programs under test do not check them).
enum TestPacket {
    static func udp(payload: [UInt8], destinationPort: UInt16 = 11211, sourcePort: UInt16 = 40000) -> [UInt8] {
        var frame: [UInt8] = [0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00]
        let udpLength = 8 + payload.count
        let ipLength = 20 + udpLength
        frame += [0x45, 0, UInt8(ipLength >> 8), UInt8(ipLength & 0xff), 0, 1, 0x40, 0, 64, 17, 0, 0]
        frame += [10, 0, 0, 2, 10, 0, 0, 1]
        frame += [UInt8(sourcePort >> 8), UInt8(sourcePort & 0xff), UInt8(destinationPort >> 8), UInt8(destinationPort & 0xff)]
        frame += [UInt8(udpLength >> 8), UInt8(udpLength & 0xff), 0, 0]
        return frame + payload
    }

    /// A memcached UDP GET: 8-byte frame header (request id 1, 1 datagram) + "get KEY\r\n".
    static func memcachedGet(_ key: String) -> [UInt8] {
        udp(payload: [0, 1, 0, 0, 0, 1, 0, 0] + Array("get \(key)\r\n".utf8))
    }
}
