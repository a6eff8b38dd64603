#!/usr/bin/env python3
"""memcached's SET rate with cxl-bmc's uprobes attached ÷ without, measured side by side.

Starts Debian's memcached on a loopback port, then runs interleaved rounds of a pipelined TCP
SET load (64-byte values, several connections, each sending its whole batch before reading the
replies), each round once per variant (the order rotates from round to round):

  none     no probes
  empty    the same probes, every one running an empty BPF program (`events --bench-empty`):
           what the uprobes cost by themselves (trap + dispatch)
  nodrain  the real programs, nobody reading the ring (`events --bench-no-drain`, a ring big
           enough for a round): trap + programs
  full     the real programs and the real consumer (`events --pid PID --quiet`: every event
           decoded as the daemon does, none printed)
  full2    the same with do_store_item's entry probed too (`events --bench-entry-probe`): the
           two-trap store path used for builds whose do_store_item is not a known one

so the report splits the cost between the trap, the programs and the consumer. Reports medians,
each variant's ratio to `none` (median of the per-round ratios, and ratio of the medians), the
events emitted and lost (counted by the probes), and, from one extra `full` pass with
kernel.bpf_stats_enabled=1 (not counted in the ratios), each program's mean run time.

Usage: bench_uprobes.py --build-dir .build/release [--rounds 5] [--sets 200000] [--out docs/benchmarks/uprobes.md]
"""
import argparse, json, os, random, signal, socket, statistics, subprocess, sys, threading, time

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def wait_listening(port, timeout=5):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close(); return True
        except OSError:
            time.sleep(0.02)
    return False

def set_load(port, sets, conns, value_size, round_id):
    """Pipelined SETs; returns sets per second (all connections together)."""
    value = b"v" * value_size
    per = sets // conns
    bufs = [b"".join(b"set k%d:%d 0 0 %d\r\n%s\r\n" % (c, (i * 7919) % 100000, value_size, value) for i in range(per))
            for c in range(conns)]
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(conns)]
    errors = []
    def run(sock, buf):
        try:
            sender = threading.Thread(target=sock.sendall, args=(buf,)); sender.start()
            need, got = per * len(b"STORED\r\n"), 0
            while got < need:
                d = sock.recv(1 << 20)
                if not d: raise RuntimeError("connection closed")
                got += len(d)
            sender.join()
        except Exception as e:
            errors.append(e)
    threads = [threading.Thread(target=run, args=(s, b)) for s, b in zip(socks, bufs)]
    t0 = time.perf_counter()
    for t in threads: t.start()
    for t in threads: t.join()
    dt = time.perf_counter() - t0
    for s in socks: s.close()
    if errors: raise errors[0]
    return per * conns / dt

VARIANTS = {
    "none": None,
    "empty": ["--bench-empty"],
    "nodrain": ["--bench-no-drain", "--ring-size", str(1 << 27)],
    "full": [],
    "full2": ["--bench-entry-probe"],
}
LABELS = {
    "none": "without probes",
    "empty": "probes, empty programs (trap floor)",
    "nodrain": "real programs, ring not drained",
    "full": "real programs + consumer (`events --quiet`)",
    "full2": "the same, do_store_item's entry probed too (two traps per SET, as before)",
}

def start_events(cxl, pid, extra):
    ev = subprocess.Popen([cxl, "events", "--pid", str(pid), "--quiet"] + extra, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    line = ""
    while "tracing" not in line and time.time() < deadline:
        line = ev.stderr.readline()
        if not line and ev.poll() is not None: sys.exit("cxl-bmc events exited")
    return ev

def stop_events(ev):
    """(emitted, lost) from the summary line."""
    time.sleep(0.3)  # let the consumer drain
    ev.send_signal(signal.SIGINT)
    _, err = ev.communicate(timeout=60)
    summary = [l for l in err.splitlines() if l.startswith("events:")]
    if not summary: return 0, 0
    parts = summary[-1].split()
    return int(parts[3]), int(parts[5])

def prog_stats(pid):
    """{program name: (run_cnt, run_time_ns)} of the BPF programs process pid holds (its fds' fdinfo)."""
    ids = set()
    fd_dir = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(fd_dir):
        try:
            with open(os.path.join(fd_dir, fd)) as fh:
                for line in fh:
                    if line.startswith("prog_id:"): ids.add(int(line.split()[1]))
        except OSError:
            pass
    stats = {}
    for i in sorted(ids):
        out = subprocess.run(["bpftool", "prog", "show", "id", str(i), "--json"], capture_output=True, text=True).stdout
        try:
            p = json.loads(out)
        except ValueError:
            continue
        name = p.get("name", "?")
        cnt, ns = stats.get(name, (0, 0))
        stats[name] = (cnt + p.get("run_cnt", 0), ns + p.get("run_time_ns", 0))
    return stats

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--memcached", default="/usr/bin/memcached")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sets", type=int, default=200000)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--value-size", type=int, default=64)
    ap.add_argument("--variants", default="none,empty,nodrain,full,full2",
                    help="comma-separated subset of " + ",".join(VARIANTS) + " (none is always measured)")
    ap.add_argument("--no-prog-stats", action="store_true", help="skip the bpf_stats pass")
    ap.add_argument("--out", default="docs/benchmarks/uprobes.md")
    ap.add_argument("--json-out", help="also write the result as JSON here")
    a = ap.parse_args()
    names = ["none"] + [v for v in a.variants.split(",") if v in VARIANTS and v != "none"]
    cxl = os.path.join(a.build_dir, "cxl-bmc")
    port = free_port()
    mc = subprocess.Popen([a.memcached, "-U", "0", "-p", str(port), "-l", "127.0.0.1", "-t", "2", "-m", "1024", "-u", "root"])
    try:
        if not wait_listening(port): sys.exit("memcached did not start")
        set_load(port, a.sets // 4, a.conns, a.value_size, -1)  # warm-up: slabs allocated
        rates = {v: [] for v in names}
        counts = {v: [0, 0] for v in names}
        for r in range(a.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for v in order:
                ev = start_events(cxl, mc.pid, VARIANTS[v]) if VARIANTS[v] is not None else None
                rates[v].append(set_load(port, a.sets, a.conns, a.value_size, r))
                if ev:
                    e, l = stop_events(ev)
                    counts[v][0] += e; counts[v][1] += l
        progs = {}
        if not a.no_prog_stats:
            old = subprocess.run(["sysctl", "-n", "kernel.bpf_stats_enabled"], capture_output=True, text=True).stdout.strip() or "0"
            subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=1"], check=False)
            try:
                for v in [v for v in names if v not in ("none", "nodrain")]:
                    ev = start_events(cxl, mc.pid, VARIANTS[v])
                    set_load(port, a.sets, a.conns, a.value_size, -2)
                    for k, val in prog_stats(ev.pid).items():
                        progs[k if v == "full" else f"{k} ({v})"] = val
                    stop_events(ev)
            finally:
                subprocess.run(["sysctl", "-q", f"kernel.bpf_stats_enabled={old}"], check=False)
        med = {v: statistics.median(rates[v]) for v in names}
        per_round = {v: statistics.median([x / b for x, b in zip(rates[v], rates["none"])]) for v in names}
        ratio = per_round.get("full", per_round[names[-1]])
        rows = [
            "# uprobes: memcached SET rate with the probes attached ÷ without",
            "",
            f"Measured by `kernel-scripts/bench_uprobes.py` ({time.strftime('%Y-%m-%d')}): Debian's memcached 1.6.18 "
            f"(`-t 2`), {a.conns} TCP connections each pipelining {a.sets // a.conns} `set` commands of {a.value_size}-byte "
            f"values, {a.rounds} interleaved rounds, each round once per variant (order rotating). "
            "Ratios are to the same round's run without probes (median over rounds), and of the medians. "
            "The client and the consumer share the machine's 2 cores with memcached.",
            "",
            "| variant | SETs/s (median) | ÷ without (per round) | ÷ without (medians) | events emitted / lost | rounds |",
            "|---|---:|---:|---:|---|---|",
        ]
        for v in names:
            ev_text = "" if v == "none" else f"{counts[v][0]:,} / {counts[v][1]:,}"
            rows.append(f"| {LABELS[v]} | {med[v]:,.0f} | {per_round[v]:.2f} | {med[v] / med['none']:.2f} | {ev_text} | "
                        f"{', '.join(f'{x:,.0f}' for x in rates[v])} |")
        rows += ["", f"**Ratio with ÷ without (real programs + consumer): {ratio:.2f}** (target ≥ 0.8).", "",
                 "What the split means, and kernel 6.18's optimized (nop5) uprobes: "
                 "[../uprobes.md](../uprobes.md#cost-and-why-it-is-what-it-is).", ""]
        if progs:
            rows += ["BPF programs' own run time during one more pass per variant (kernel.bpf_stats_enabled=1; "
                     "not counted in the ratios):", "",
                     "| program | runs | mean ns per run |", "|---|---:|---:|"]
            for name, (cnt, ns) in sorted(progs.items()):
                if cnt:
                    rows.append(f"| {name} | {cnt:,} | {ns / cnt:,.0f} |")
            rows.append("")
        text = "\n".join(rows)
        print(text)
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out, "w") as fh: fh.write(text)
        summary = {"base": med["none"], "probed": med.get("full"), "ratio": ratio,
                   "variants": {v: {"median": med[v], "ratio": per_round[v], "rounds": rates[v],
                                    "emitted": counts[v][0], "lost": counts[v][1]} for v in names},
                   "programs": {k: {"runs": c, "ns": n} for k, (c, n) in progs.items()},
                   "rounds": a.rounds, "sets": a.sets, "conns": a.conns}
        print(json.dumps(summary))
        if a.json_out:
            with open(a.json_out, "w") as fh: json.dump(summary, fh)
    finally:
        mc.kill(); mc.wait()

if __name__ == "__main__":
    main()
