#!/usr/bin/env python3
"""Derive a uprobe offset table for a stripped x86-64 ELF binary from an unstripped rebuild of the same source.

    derive_offsets.py --rebuild REBUILT STRIPPED [-o OUT] [--names a,b,...] [--label TEXT] [--compiler TEXT]
                      [--configure TEXT] [--data current_time,process_started,settings] [-v]

Procedure (docs/uprobe-targets.md, "Deriving a table for another build"):

1. Disassemble `.text` of both binaries with `objdump -d --no-show-raw-insn -w` and normalise every
   instruction: drop its address, replace direct call/jump targets by `T` (PLT targets keep their
   `name@plt`, which a stripped binary still shows), RIP-relative displacements by `R`, and drop objdump's
   `# addr <sym>` comments.
2. The rebuild's functions are its `.symtab` FUNC symbols (start, st_size); symbols at one address are
   aliases of one function.
3. Candidate function starts in the stripped binary: `.eh_frame_hdr` FDE starts, direct call and jump
   targets, function pointers (R_X86_64_RELATIVE targets, RIP-relative `lea` targets) in `.text`, the ELF
   entry, and padding boundaries: the first non-padding instruction after `ret`, `jmp`, `ud2`, `hlt` or a
   call to a noreturn PLT function (`abort`, `__stack_chk_fail`, ...).
4. A rebuild function F (N bytes, k instructions) matches at candidate S if the k instructions from S
   span exactly N bytes and their normalised text is identical to F's.
5. Accept only unique matches. Where several candidates match (e.g. two 5-byte `jmp T` thunks), a
   candidate is dropped if its call/jump targets contradict already accepted functions (target inside F
   must be at the same offset from S; a target in accepted function G must be at the same offset in G's
   stripped copy) or if its start is already taken by another accepted function; if several are left, strong
   starts (FDE, call target, function pointer) are preferred, then the one whose RIP-relative addresses agree
   with those of accepted functions; repeated until nothing changes. Finally every accepted match is
   re-checked against all others (code targets) and dropped on a contradiction.
6. Global data addresses are read off RIP-relative references in matched functions: a data symbol is
   reported only if every reference to it in matched code points to the same stripped address.

Output: `name 0xFILEOFFSET size=N prologue=<first 12 bytes at that file offset in STRIPPED>`, sorted by
offset, under a `# ... build-id <hex>` header (format read by Sources/ProbeTargets/OffsetTable.swift).
Statistics go to stderr.
"""

import argparse
import bisect
import os
import re
import struct
import subprocess
import sys
import time

PROLOGUE_BYTES = 12
NORETURN = {
    "abort", "__stack_chk_fail", "exit", "_exit", "_Exit", "__assert_fail", "pthread_exit", "__fortify_fail",
    "__chk_fail", "err", "errx", "verr", "verrx", "longjmp", "siglongjmp", "__longjmp_chk", "quick_exit",
}


def fail(msg):
    print(f"derive_offsets: error: {msg}", file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------- ELF (64-bit little-endian only)

class Elf:
    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            self.data = f.read()
        d = self.data
        if d[:4] != b"\x7fELF":
            fail(f"{path} is not an ELF file")
        if d[4] != 2 or d[5] != 1:
            fail(f"{path}: only 64-bit little-endian ELF is supported")
        (self.e_type, self.e_machine, _, self.entry, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum,
         shstrndx) = struct.unpack_from("<HHIQQQIHHHHHH", d, 16)
        if self.e_machine != 62:
            fail(f"{path}: not x86-64 (e_machine {self.e_machine})")
        self.phdrs = [struct.unpack_from("<IIQQQQQQ", d, phoff + i * phentsize) for i in range(phnum)]
        raw = [struct.unpack_from("<IIQQQQIIQQ", d, shoff + i * shentsize) for i in range(shnum)]
        strtab = raw[shstrndx]
        self.sections = []
        for s in raw:
            name = self._cstr(strtab[4] + s[0])
            self.sections.append(dict(name=name, type=s[1], flags=s[2], addr=s[3], offset=s[4], size=s[5],
                                      link=s[6], info=s[7], entsize=s[9]))
        self.by_name = {s["name"]: s for s in self.sections}

    def _cstr(self, off):
        end = self.data.index(b"\0", off)
        return self.data[off:end].decode("utf-8", "replace")

    def section(self, name):
        return self.by_name.get(name)

    def build_id(self):
        for s in self.sections:
            if s["type"] != 7:  # SHT_NOTE
                continue
            off, end = s["offset"], s["offset"] + s["size"]
            while off + 12 <= end:
                namesz, descsz, ntype = struct.unpack_from("<III", self.data, off)
                name = self.data[off + 12: off + 12 + namesz]
                desc_off = off + 12 + ((namesz + 3) & ~3)
                if ntype == 3 and name.rstrip(b"\0") == b"GNU":
                    return self.data[desc_off: desc_off + descsz].hex()
                off = desc_off + ((descsz + 3) & ~3)
        return None

    def load_for_vaddr(self, vaddr):
        for p in self.phdrs:
            if p[0] == 1 and p[3] <= vaddr < p[3] + p[5]:  # PT_LOAD, p_vaddr, p_filesz
                return p
        return None

    def file_offset(self, vaddr):
        p = self.load_for_vaddr(vaddr)
        if p is None:
            fail(f"{self.path}: address {vaddr:#x} is in no PT_LOAD")
        return vaddr - p[3] + p[2]

    def read_vaddr(self, vaddr, n):
        off = self.file_offset(vaddr)
        return self.data[off: off + n]

    def symbols(self):
        s = self.section(".symtab")
        if s is None:
            return []
        strtab = self.sections[s["link"]]
        out = []
        for i in range(s["size"] // 24):
            name, info, other, shndx, value, size = struct.unpack_from("<IBBHQQ", self.data, s["offset"] + i * 24)
            if shndx == 0 or shndx >= 0xff00:
                continue
            out.append(dict(name=self._cstr(strtab["offset"] + name), type=info & 0xf, bind=info >> 4,
                            value=value, size=size, shndx=shndx))
        return out

    def relative_relocs(self):
        out = []
        for s in self.sections:
            if s["type"] != 4:  # SHT_RELA
                continue
            for i in range(s["size"] // 24):
                _, info, addend = struct.unpack_from("<QQq", self.data, s["offset"] + i * 24)
                if info & 0xffffffff == 8:  # R_X86_64_RELATIVE
                    out.append(addend)
        return out

    def fde_starts(self):
        """Initial locations from .eh_frame_hdr's binary search table (common encodings only)."""
        s = self.section(".eh_frame_hdr")
        if s is None:
            return []
        d, base, addr = self.data, s["offset"], s["addr"]
        version, ptr_enc, count_enc, table_enc = d[base: base + 4]
        if version != 1:
            return []
        pos = 4

        def read(enc, pos):
            fmt = enc & 0x0f
            if fmt == 0x03:
                v, n = struct.unpack_from("<I", d, base + pos)[0], 4
            elif fmt == 0x0b:
                v, n = struct.unpack_from("<i", d, base + pos)[0], 4
            elif fmt == 0x04:
                v, n = struct.unpack_from("<Q", d, base + pos)[0], 8
            elif fmt == 0x0c:
                v, n = struct.unpack_from("<q", d, base + pos)[0], 8
            else:
                raise ValueError(enc)
            app = enc & 0x70
            if app == 0x10:
                v += addr + pos
            elif app == 0x30:
                v += addr
            elif app != 0:
                raise ValueError(enc)
            return v & 0xffffffffffffffff, pos + n

        try:
            _, pos = read(ptr_enc, pos)
            count, pos = read(count_enc, pos)
            out = []
            for _ in range(count):
                loc, pos = read(table_enc, pos)
                _, pos = read(table_enc, pos)
                out.append(loc)
            return out
        except (ValueError, struct.error):
            return []


# ---------------------------------------------------------------- disassembly

LINE_RE = re.compile(r"^\s*([0-9a-f]+):\t(.*)$")
TARGET_RE = re.compile(r"^([0-9a-f]+) <([^>]*)>$")
RIP_RE = re.compile(r"(-?0x[0-9a-f]+)?\(%rip\)")
BRANCH_MNEMONICS = re.compile(r"^(call|jmp|j[a-z]{1,4}|loop[a-z]*|jrcxz|jecxz|xbegin)$")


class Insn:
    __slots__ = ("addr", "size", "mnem", "text", "target", "plt", "rip")

    def __init__(self, addr, mnem, text, target, plt, rip):
        self.addr, self.mnem, self.text, self.target, self.plt, self.rip = addr, mnem, text, target, plt, rip
        self.size = 0


def disassemble(elf):
    text = elf.section(".text")
    if text is None:
        fail(f"{elf.path} has no .text")
    try:
        out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-w", "-j", ".text", elf.path],
                             check=True, capture_output=True, text=True).stdout
    except FileNotFoundError:
        fail("objdump not found (package binutils)")
    except subprocess.CalledProcessError as e:
        fail(f"objdump -d {elf.path} failed: {e.stderr.strip()}")
    insns = []
    for line in out.splitlines():
        m = LINE_RE.match(line)
        if not m:
            continue
        addr = int(m.group(1), 16)
        body = m.group(2).split("#", 1)[0].strip()
        comment = m.group(2).split("#", 1)[1].strip() if "#" in m.group(2) else ""
        parts = body.split(None, 1)
        mnem = parts[0] if parts else ""
        ops = parts[1].strip() if len(parts) > 1 else ""
        prefix = ""
        # prefixes objdump prints before the mnemonic (notrack, bnd, rep, lock, data16, cs ...)
        while mnem in ("notrack", "bnd", "rep", "repz", "repnz", "lock", "data16", "cs", "ds", "ss", "es",
                       "fs", "gs", "addr32") and ops:
            prefix += mnem + " "
            parts = ops.split(None, 1)
            mnem, ops = parts[0], (parts[1].strip() if len(parts) > 1 else "")
        target = plt = rip = None
        if BRANCH_MNEMONICS.match(mnem):
            t = TARGET_RE.match(ops)
            if t:
                target = int(t.group(1), 16)
                label = t.group(2)
                if label.endswith("@plt") and "+" not in label:
                    plt = label[:-4]
                ops = plt + "@plt" if plt else "T"
            elif re.fullmatch(r"[0-9a-f]+", ops):
                target = int(ops, 16)
                ops = "T"
        if "(%rip)" in ops:
            cm = re.match(r"([0-9a-f]+)", comment)
            if cm:
                rip = int(cm.group(1), 16)
            ops = RIP_RE.sub("R(%rip)", ops)
        insns.append(Insn(addr, mnem, f"{prefix}{mnem} {ops}".strip(), target, plt, rip))
    if not insns:
        fail(f"objdump printed no instructions for {elf.path}")
    end = text["addr"] + text["size"]
    for a, b in zip(insns, insns[1:]):
        a.size = b.addr - a.addr
    insns[-1].size = end - insns[-1].addr
    return insns


def is_padding(insn):
    return (insn.mnem.startswith("nop") or insn.text in ("xchg %ax,%ax", "int3")
            or insn.text.startswith("data16 ") or insn.text.startswith("cs nop") or insn.mnem == "int3")


def is_terminator(insn):
    if insn.mnem in ("ret", "retq", "ud2", "hlt") or insn.mnem.startswith("ret"):
        return True
    if insn.mnem in ("jmp", "jmpq"):
        return True
    return insn.mnem in ("call", "callq") and insn.plt in NORETURN


# ---------------------------------------------------------------- matching

MOD = (1 << 61) - 1
BASE = 1_000_003


class Stream:
    """Normalised token ids of one binary's .text with prefix hashes for O(1) range hashes."""

    def __init__(self, insns, vocab):
        self.insns = insns
        self.addrs = [i.addr for i in insns]
        self.index = {a: n for n, a in enumerate(self.addrs)}
        self.end_addr = insns[-1].addr + insns[-1].size
        self.tok = [vocab.setdefault(i.text, len(vocab) + 1) for i in insns]
        h = [0] * (len(self.tok) + 1)
        for n, t in enumerate(self.tok):
            h[n + 1] = (h[n] * BASE + t) % MOD
        self.h = h

    def addr_at(self, n):
        return self.addrs[n] if n < len(self.addrs) else self.end_addr

    def range_hash(self, i, j, powers):
        return (self.h[j] - self.h[i] * powers[j - i]) % MOD


class Func:
    __slots__ = ("names", "start", "size", "i", "k", "hash", "bind")

    def __init__(self, names, start, size, i, k, bind):
        self.names, self.start, self.size, self.i, self.k, self.bind = names, start, size, i, k, bind
        self.hash = None

    @property
    def name(self):
        return self.names[0]


def rebuild_functions(elf, stream):
    text = elf.section(".text")
    lo, hi = text["addr"], text["addr"] + text["size"]
    by_addr = {}
    for s in elf.symbols():
        if s["type"] != 2 or s["size"] == 0 or not (lo <= s["value"] < hi):  # STT_FUNC
            continue
        by_addr.setdefault((s["value"], s["size"]), []).append(s)
    funcs, skipped = [], []
    for (start, size), syms in sorted(by_addr.items()):
        # global names first, so the table uses the name callers know
        syms.sort(key=lambda s: (s["bind"] != 1, s["name"]))
        names = [s["name"] for s in syms]
        i = stream.index.get(start)
        j = len(stream.addrs) if start + size == stream.end_addr else stream.index.get(start + size)
        if i is None or j is None:
            skipped.append(names[0])
            continue
        funcs.append(Func(names, start, size, i, j - i, syms[0]["bind"]))
    return funcs, skipped


def candidate_starts(elf, stream):
    text = elf.section(".text")
    lo, hi = text["addr"], text["addr"] + text["size"]
    strong, weak = set(), set()
    strong.update(a for a in elf.fde_starts() if lo <= a < hi)
    strong.update(a for a in elf.relative_relocs() if lo <= a < hi)
    if lo <= elf.entry < hi:
        strong.add(elf.entry)
    strong.add(lo)
    insns = stream.insns
    for n, ins in enumerate(insns):
        if ins.target is not None and lo <= ins.target < hi and ins.plt is None:
            if ins.mnem in ("call", "callq"):
                strong.add(ins.target)
            else:
                weak.add(ins.target)
        if ins.rip is not None and ins.mnem == "lea" and lo <= ins.rip < hi:
            strong.add(ins.rip)
        if is_terminator(ins) and n + 1 < len(insns):
            m = n + 1
            weak.add(insns[m].addr)
            while m < len(insns) and is_padding(insns[m]):
                m += 1
            if m < len(insns):
                weak.add(insns[m].addr)
    strong = {a for a in strong if a in stream.index}
    weak = {a for a in weak if a in stream.index} - strong
    return strong, weak


class Matcher:
    def __init__(self, reb_elf, reb, funcs, st, strong, weak, verbose=False):
        self.reb_elf, self.reb, self.funcs, self.st = reb_elf, reb, funcs, st
        self.strong, self.weak = strong, weak
        self.verbose = verbose
        self.starts = sorted(f.start for f in funcs)
        self.by_start = {f.start: f for f in funcs}
        self.accepted = {}      # rebuild start -> stripped start
        self.taken = {}         # stripped start -> rebuild start
        self.rip_map = {}       # rebuild RIP-relative target -> set of stripped targets seen in accepted code

    def rebuild_func_at(self, addr):
        n = bisect.bisect_right(self.starts, addr) - 1
        if n < 0:
            return None
        f = self.by_start[self.starts[n]]
        return f if addr < f.start + f.size else None

    def raw_matches(self):
        maxk = max(f.k for f in self.funcs)
        powers = [1] * (maxk + 1)
        for n in range(1, maxk + 1):
            powers[n] = powers[n - 1] * BASE % MOD
        by_first = {}
        for f in self.funcs:
            f.hash = self.reb.range_hash(f.i, f.i + f.k, powers)
            by_first.setdefault(self.reb.tok[f.i], []).append(f)
        matches = {f.start: [] for f in self.funcs}
        st = self.st
        ntok = len(st.tok)
        for s in self.strong | self.weak:
            i = st.index[s]
            for f in by_first.get(st.tok[i], ()):
                j = i + f.k
                if j > ntok or st.addr_at(j) - s != f.size:
                    continue
                if st.range_hash(i, j, powers) != f.hash:
                    continue
                if st.tok[i:j] != self.reb.tok[f.i:f.i + f.k]:
                    continue
                matches[f.start].append(s)
        return matches

    def consistent(self, f, s, data=False):
        """False if f at stripped start s contradicts an accepted function or f's own layout. With data=True
        also if a RIP-relative address differs from the one all accepted functions agree on (only a tie-breaker:
        with another link order merged strings and one-past-the-end pointers legitimately move)."""
        reb_insns = self.reb.insns[f.i:f.i + f.k]
        i = self.st.index[s]
        st_insns = self.st.insns[i:i + f.k]
        for ri, si in zip(reb_insns, st_insns):
            if ri.target is None or ri.plt is not None:
                continue
            if si.target is None:
                return False
            tr, ts = ri.target, si.target
            if f.start <= tr < f.start + f.size:
                if ts - s != tr - f.start:
                    return False
                continue
            if s <= ts < s + f.size:
                return False
            g = self.rebuild_func_at(tr)
            if g is None:
                continue
            gs = self.accepted.get(g.start)
            if gs is not None and ts != gs + (tr - g.start):
                return False
        if not data:
            return True
        for ri, si in zip(reb_insns, st_insns):
            # a data (or code) address that accepted functions agree on must be the same here
            if ri.rip is None:
                continue
            seen = self.rip_map.get(ri.rip)
            if seen is not None and len(seen) == 1 and si.rip not in seen:
                return False
        return True

    def accept(self, f, s):
        self.accepted[f.start] = s
        self.taken[s] = f.start
        i = self.st.index[s]
        for ri, si in zip(self.reb.insns[f.i:f.i + f.k], self.st.insns[i:i + f.k]):
            if ri.rip is not None and si.rip is not None:
                self.rip_map.setdefault(ri.rip, set()).add(si.rip)

    def run(self):
        t0 = time.time()
        matches = self.raw_matches()
        self.stats = dict(raw_seconds=time.time() - t0)
        self.stats["unmatched"] = [f.name for f in self.funcs if not matches[f.start]]
        pending = {f.start: list(ms) for f, ms in ((f, matches[f.start]) for f in self.funcs) if ms}
        rounds = 0
        rejected = []
        while True:
            rounds += 1
            progress = False
            for fstart, cands in list(pending.items()):
                f = self.by_start[fstart]
                live = [s for s in cands if s not in self.taken and self.consistent(f, s)]
                if len(live) > 1:
                    strong = [s for s in live if s in self.strong]
                    if strong:
                        live = strong
                if len(live) > 1:
                    by_data = [s for s in live if self.consistent(f, s, data=True)]
                    if len(by_data) == 1:
                        live = by_data
                if len(live) == 1:
                    self.accept(f, live[0])
                    del pending[fstart]
                    progress = True
                elif not live:
                    del pending[fstart]
                    rejected.append(f.name)
                else:
                    pending[fstart] = live
            if not progress:
                break
        # final check of every accepted match against all the others
        dropped = []
        for fstart, s in list(self.accepted.items()):
            if not self.consistent(self.by_start[fstart], s):
                dropped.append(self.by_start[fstart].name)
                del self.accepted[fstart]
                del self.taken[s]
        self.stats.update(rounds=rounds, rejected=rejected, ambiguous=[self.by_start[a].name for a in pending], dropped=dropped,
                          seconds=time.time() - t0)
        return self.accepted

    def data_addresses(self, names):
        """Stripped address of each named rebuild data symbol, if all references in matched code agree."""
        syms = {s["name"]: s for s in self.reb_elf.symbols() if s["type"] in (0, 1) and s["name"] in names}
        votes = {n: set() for n in syms}
        for fstart, s in self.accepted.items():
            f = self.by_start[fstart]
            i = self.st.index[s]
            for ri, si in zip(self.reb.insns[f.i:f.i + f.k], self.st.insns[i:i + f.k]):
                if ri.rip is None or si.rip is None:
                    continue
                for n, sym in syms.items():
                    if sym["value"] <= ri.rip < sym["value"] + max(sym["size"], 1):
                        votes[n].add(si.rip - (ri.rip - sym["value"]))
        out = {}
        for n in names:
            if n in votes and len(votes[n]) == 1:
                out[n] = (next(iter(votes[n])), syms[n])
        return out


# ---------------------------------------------------------------- tables

DATA_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_.]*) @ (0x[0-9a-fA-F]+)")


def parse_table(text, what):
    """(build-id, {name: (offset, size, prologue)}, {data name: addr}) of a table in OffsetTable.swift's format."""
    build_id, entries, data = None, {}, {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        tokens = line.split()
        if line.startswith("#"):
            if "build-id" in tokens:
                k = tokens.index("build-id")
                build_id = tokens[k + 1].lower() if k + 1 < len(tokens) else None
            if "global data" in line:
                for n, a in DATA_RE.findall(line):
                    data[n] = int(a, 16)
            continue
        if len(tokens) >= 3 and "kind=data" in tokens[2:] and tokens[1].startswith("0x"):
            data[tokens[0]] = int(tokens[1], 16)  # `name 0xVADDR [size=N] kind=data`
            continue
        rest = " ".join(tokens[2:])
        m = re.fullmatch(r"size=\s*(\d+)\s+prologue=([0-9a-fA-F]+)", rest)
        if not tokens[1].startswith("0x") or not m:
            fail(f"{what}:{lineno}: expected `name 0xOFFSET size=N prologue=HEX`, found: {line}")
        if tokens[0] in entries:
            fail(f"{what}:{lineno}: {tokens[0]} listed twice")
        entries[tokens[0]] = (int(tokens[1], 16), int(m.group(1)), m.group(2).lower())
    return build_id, entries, data


def compare_tables(reference_path, derived_text):
    """Every entry (and global data address) of the reference table must be derived identically."""
    with open(reference_path) as fh:
        ref_id, ref, ref_data = parse_table(fh.read(), reference_path)
    got_id, got, got_data = parse_table(derived_text, "derived table")
    problems = []
    if ref_id != got_id:
        problems.append(f"build-id: {reference_path} is for {ref_id}, the binary is {got_id}")
    for name, (off, size, prologue) in sorted(ref.items(), key=lambda kv: kv[1][0]):
        if name not in got:
            problems.append(f"{name}: in the table at {off:#x} size={size}, not derived (no unique match)")
            continue
        goff, gsize, gprologue = got[name]
        diffs = []
        if goff != off:
            diffs.append(f"offset {off:#x} vs derived {goff:#x}")
        if gsize != size:
            diffs.append(f"size {size} vs derived {gsize}")
        if gprologue != prologue:
            diffs.append(f"prologue {prologue} vs derived {gprologue}")
        if diffs:
            problems.append(f"{name}: " + ", ".join(diffs))
    for name, addr in sorted(ref_data.items()):
        if got_data.get(name) != addr:
            g = got_data.get(name)
            problems.append(f"global {name}: {addr:#x} vs derived {g:#x}" if g is not None
                            else f"global {name}: {addr:#x}, not derived")
    for p in problems:
        print(f"derive_offsets: DIFFERENT {p}", file=sys.stderr)
    verdict = "differs" if problems else "identical"
    print(f"derive_offsets: compared with {reference_path}: {len(ref)} entries, {len(ref_data)} global data "
          f"addresses: {verdict}" + (f" ({len(problems)} differences)" if problems else ""), file=sys.stderr)
    return not problems


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stripped")
    ap.add_argument("--rebuild", required=True, help="unstripped rebuild of the same source (with .symtab)")
    ap.add_argument("-o", "--output", help="write the table here (default stdout)")
    ap.add_argument("--names", help="comma-separated function names to emit (default: every matched function)")
    ap.add_argument("--label", help="what the stripped binary is, for the header (default: its path)")
    ap.add_argument("--compiler", default="", help="compiler of the rebuild, for the header")
    ap.add_argument("--configure", default="", help="configure options of the rebuild, for the header")
    ap.add_argument("--data", default="current_time,process_started,settings",
                    help="global data symbols whose addresses go in the header")
    ap.add_argument("--require", help="comma-separated names that must all be matched (exit 2 otherwise)")
    ap.add_argument("--compare", metavar="TABLE",
                    help="compare the derived table with TABLE (its entries and global data); exit 1 on any difference")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()

    t0 = time.time()
    st_elf, reb_elf = Elf(args.stripped), Elf(args.rebuild)
    if not reb_elf.section(".symtab"):
        fail(f"{args.rebuild} has no .symtab (not an unstripped build)")
    build_id = st_elf.build_id()
    if not build_id:
        fail(f"{args.stripped} has no GNU build-id note")
    vocab = {}
    reb = Stream(disassemble(reb_elf), vocab)
    st = Stream(disassemble(st_elf), vocab)
    funcs, skipped = rebuild_functions(reb_elf, reb)
    strong, weak = candidate_starts(st_elf, st)
    m = Matcher(reb_elf, reb, funcs, st, strong, weak, args.verbose)
    accepted = m.run()

    names_filter = None
    if args.names:
        names_filter = [n for n in args.names.split(",") if n]
    rows = []
    name_count = {}
    for f in funcs:
        for n in f.names:
            name_count[n] = name_count.get(n, 0) + 1
    for fstart, s in accepted.items():
        f = m.by_start[fstart]
        off = st_elf.file_offset(s)
        prologue = st_elf.data[off: off + PROLOGUE_BYTES].hex()
        for n in f.names:
            if name_count[n] > 1:
                continue  # a static name used by two functions in the rebuild: not a usable table key
            if names_filter is None or n in names_filter:
                rows.append((off, n, f.size, prologue))
    rows.sort()

    text = st_elf.section(".text")
    p = st_elf.load_for_vaddr(text["addr"])
    if p[2] == p[3]:
        note = (f"# uprobe file offset == vaddr for .text here (PT_LOAD R E: offset {p[2]:#x} vaddr {p[3]:#x})")
    else:
        note = (f"# uprobe file offset = vaddr - {p[3]:#x} + {p[2]:#x} for .text "
                f"(PT_LOAD R E: offset {p[2]:#x} vaddr {p[3]:#x}); the offsets below are file offsets")
    data_names = [n for n in args.data.split(",") if n]
    data = m.data_addresses(data_names) if data_names else {}
    label = args.label or args.stripped
    lines = [
        f"# {label}, build-id {build_id}",
        note,
        f"# derived by kernel-scripts/derive-offsets.sh: matched against an unstripped rebuild"
        + (f" ({', '.join(x for x in (args.compiler, args.configure) if x)})" if args.compiler or args.configure else "")
        + ";",
        "# normalized disassembly identical and unique for every entry. prologue = first 12 bytes at the offset "
        "(check before attaching).",
    ]
    if data:
        parts = []
        for n in data_names:
            if n in data:
                addr, sym = data[n]
                sec = reb_elf.sections[sym["shndx"]]["name"] if sym["shndx"] < len(reb_elf.sections) else "?"
                parts.append(f"{n} @ {addr:#x} (size {sym['size']}, {sec})")
        lines.append("# global data (vaddr): " + ", ".join(parts))
    width = max([32] + [len(r[1]) + 1 for r in rows])
    for off, n, size, prologue in rows:
        lines.append(f"{n:<{width}} 0x{off:05x} size={size:5d} prologue={prologue}")
    # The globals the probes read, as entries OffsetTable.swift resolves (kind=data: vaddr, no prologue).
    for n in data_names:
        if n in data:
            addr, sym = data[n]
            lines.append(f"{n:<{width}} 0x{addr:05x} size={sym['size']} kind=data")
    out = "\n".join(lines) + "\n"
    if args.output:
        tmp = args.output + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(out)
        os.replace(tmp, args.output)
    else:
        sys.stdout.write(out)

    s = m.stats
    matched_names = sum(1 for f in funcs if f.start in accepted for n in f.names if name_count[n] == 1)
    print(f"derive_offsets: rebuild has {len(funcs)} functions in .text ({len(skipped)} skipped: not on "
          f"instruction boundaries); stripped binary: {len(strong)} strong + {len(weak)} weak candidate starts; "
          f"matched {len(accepted)} functions ({matched_names} unique names), "
          f"{len(s['unmatched'])} without an identical match, {len(s['ambiguous'])} ambiguous, "
          f"{len(s['rejected'])} whose matches all contradict accepted ones, "
          f"{len(s['dropped'])} dropped as inconsistent; {len(rows)} rows written; "
          f"{time.time() - t0:.1f} s", file=sys.stderr)
    if args.verbose:
        for key in ("unmatched", "ambiguous", "rejected", "dropped"):
            if s[key]:
                print(f"derive_offsets: {key}: {' '.join(sorted(s[key]))}", file=sys.stderr)
        if skipped:
            print(f"derive_offsets: skipped: {' '.join(sorted(skipped))}", file=sys.stderr)
    if args.compare and not compare_tables(args.compare, out):
        sys.exit(1)
    if args.require:
        have = {r[1] for r in rows}
        missing = [n for n in args.require.split(",") if n and n not in have]
        if missing:
            print(f"derive_offsets: not matched: {' '.join(missing)}", file=sys.stderr)
            sys.exit(2)


if __name__ == "__main__":
    main()
