#!/usr/bin/env python3
"""`make bench`'s report: vanilla memcached vs memcached + cxl-bmc, side by side, as ratios.

Runs, one after the other, each with the same client (mc-load, or for SETs bench_uprobes.py's
pipelined TCP client) against both variants in the same run, interleaved rounds:
  a. L1       bench_l1.py      server's share of CPU per UDP GET, GET throughput (veth test bed);
  b./c. L3    bench_l3.py      memcached killed and restarted (the host failure): the time until a
                               lost key is back, GET latency, hit ratio of the passes after it;
  d. uprobes  bench_uprobes.py memcached's SET rate with cxl-bmc's uprobes ÷ without.
Then writes OUT/report.md (one table of ratios, absolute figures as context) and OUT/report.svg
(drawn here, no plotting library needed), plus each part's own Markdown and JSON beside them
(report-*.md, report-*.json).

  bench_report.py --build-dir .build/release [--quick] [--out docs/benchmarks] [--only l1,l3,uprobes]

--quick runs every part briefly (about 2 minutes; figures only show that it works). Needs root.
"""
import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

FULL = {
    "l1": ["--rounds", "3", "--duration", "4", "--sizes", "64,1024"],
    "l3": ["--rounds", "3", "--keys", "10000", "--pass-requests", "20000", "--latency-keys", "100"],
    "uprobes": ["--rounds", "5", "--sets", "200000"],
}
QUICK = {
    "l1": ["--rounds", "1", "--duration", "2", "--sizes", "64"],
    "l3": ["--rounds", "1", "--keys", "2000", "--pass-requests", "4000", "--latency-keys", "20"],
    "uprobes": ["--rounds", "2", "--sets", "40000"],
}


def run_part(name, cmd):
    print(f"== {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    r = subprocess.run(cmd)
    if r.returncode != 0:
        sys.exit(f"bench_report: {name} failed ({r.returncode})")
    return time.monotonic() - t0


def fmt(x, spec=".2f", unit=""):
    return "—" if x is None else f"{x:{spec}}{unit}"


def ratio(a, b, spec=".2f"):
    return "—" if a is None or not b else f"{a / b:{spec}}×"


def table(l1, l3, up):
    """Rows: what, vanilla, cxl-bmc, ratio, how to read the ratio."""
    rows = []
    if l1:
        for size, r in l1["sizes"].items():
            v, c = r["vanilla"], r["cxl-bmc"]
            share_v, share_c = r["share_vanilla_us"], r["share_cxl_us"]
            pv, pc = r.get("proc_share_vanilla_us"), r.get("proc_share_cxl_us")

            def less(a, b):  # vanilla ÷ cxl-bmc: above 1, cxl-bmc costs less
                return f"**{a / b:.1f}×**" if b > 0.05 else "cxl-bmc within noise of the floor"
            hits = f"vanilla ÷ cxl-bmc; L1 hit ratio {r['hit_ratio']:.3f}"
            if r["hit_ratio"] < 0.5:
                hits += " (not answered in the kernel on veth)"
            bound = r.get("proc_share_cxl_bound_us")
            if pv is not None and bound is not None:
                rows.append((f"a. server's CPU per UDP GET, {size} B values: client + memcached + daemon + ksoftirqd, "
                             f"minus the bare-XDP {r['share_floor']} floor; for cxl-bmc at least its XDP program's "
                             f"time beyond the floor's ({r['xdp_extra_us']:.2f} µs, bpf_stats)",
                             fmt(pv, ".2f", " µs"), fmt(bound, ".2f", " µs"), less(pv, bound), hits))
                rows.append((f"a. the same with cxl-bmc's share as measured (difference of two close figures)",
                             fmt(pv, ".2f", " µs"), fmt(pc, ".2f", " µs"), less(pv, pc).replace("**", ""), "vanilla ÷ cxl-bmc; context"))
            elif pv is not None:
                rows.append((f"a. server's CPU per UDP GET, {size} B values: client + memcached + daemon + ksoftirqd, "
                             f"minus the bare-XDP {r['share_floor']} floor", fmt(pv, ".2f", " µs"), fmt(pc, ".2f", " µs"),
                             less(pv, pc), hits))
            rows.append((f"a. the same from whole-machine busy time (includes anything else running)",
                         fmt(share_v, ".2f", " µs"), fmt(share_c, ".2f", " µs"), less(share_v, share_c), "vanilla ÷ cxl-bmc; context"))
            rows.append((f"a. GET throughput, {size} B values (one client thread, {l1['params']['inflight']} in flight)",
                         fmt(v["ops"], ",.0f", "/s"), fmt(c["ops"], ",.0f", "/s"), f"**{c['ops'] / v['ops']:.2f}×**",
                         "cxl-bmc ÷ vanilla; bound by the client thread"))
    if l3:
        v, c = l3["summary"]["vanilla"], l3["summary"]["cxl-bmc"]
        rows.append(("b. GET of a key memcached has (TCP, one at a time)", fmt(v["hit_us"], ".0f", " µs"),
                     fmt(c["hit_us"], ".0f", " µs"), f"**{ratio(c['hit_us'], v['hit_us'])}**", "cxl-bmc ÷ vanilla: the probes' cost"))
        rows.append(("b. GET of a lost key (memcached restarted): the miss", fmt(v["miss_us"], ".0f", " µs"),
                     fmt(c["miss_us"], ".0f", " µs"), ratio(c["miss_us"], v["miss_us"]), "cxl-bmc ÷ vanilla"))
        rows.append(("b. the GET right after that miss (back to back): latency, share that hits",
                     f"{fmt(v['after_miss_us'], '.0f', ' µs')}, {fmt(v['after_miss_hit'], '.2f')}",
                     f"{fmt(c['after_miss_us'], '.0f', ' µs')}, {fmt(c['after_miss_hit'], '.2f')}", "", "then retries until the value is back"))
        never = f"never (within {l3['params']['until_hit_ms']:.0f} ms)"
        rows.append(("b. lost key: from the missing GET to the value (client side, p50)",
                     never if not v["recovered"] else fmt(v["time_to_hit_us"], ".0f", " µs"),
                     f"{fmt(c['time_to_hit_us'], '.0f', ' µs')} ({c['recovered']:.0%} back)",
                     f"**{ratio(c['time_to_hit_us'], c['hit_us'], '.0f')}** a hit GET", "vanilla: the key stays lost"))
        rows.append(("b. promotion: miss event → memcached's HD (daemon, one miss at a time / pass 1's burst)", "—",
                     f"{fmt(c['promotion_us'], '.0f', ' µs')} / {fmt(c['promotion_burst_avg_us'], '.0f', ' µs')}", "",
                     f"mean; the burst also made {fmt(c['promotions_raced'], '.0f')} promotions that raced (one job per miss)"))
        rows.append(("c. hit ratio before the failure (every key read back)", fmt(v["hit_before"], ".3f"),
                     fmt(c["hit_before"], ".3f"), "", ""))
        rows.append(("c. hit ratio, pass 1 after the restart (Zipf UDP GETs)", fmt(v["pass1"], ".3f"), fmt(c["pass1"], ".3f"),
                     "", f"misses trigger {fmt(c['pass1_promoted'], '.0f')} promotions"))
        rows.append(("c. hit ratio, pass 2 (the same sequence again)", fmt(v["pass2"], ".3f"), f"**{fmt(c['pass2'], '.3f')}**",
                     "" if not v["pass2"] else f"**{c['pass2'] / v['pass2']:.0f}×**", "target ≥ 0.90 with cxl-bmc"))
    if up:
        rows.append(("d. memcached SET rate (pipelined TCP): with cxl-bmc's uprobes ÷ without", fmt(up["base"], ",.0f", "/s"),
                     fmt(up["probed"], ",.0f", "/s"), f"**{up['ratio']:.2f}×**", f"target ≥ 0.8; {up['lost']} of {up['emitted']:,} events lost"))
    lines = ["| | vanilla memcached | memcached + cxl-bmc | ratio | |", "|---|---:|---:|---:|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# --- the plot: hand-written SVG (no matplotlib on a fresh machine) -------------------------------

def svg(panels, title):
    """panels: [(title, [(label, value or None, text)], ymax, unit-line)] → SVG text; None draws 'never'."""
    pw, ph, top, left, bottom = 220, 250, 60, 30, 32
    width = left + pw * len(panels) + 10
    height = top + ph + bottom
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{esc(title)}</text>',
           f'<text x="{width / 2}" y="40" text-anchor="middle" fill="#555">grey: vanilla memcached · blue: memcached + cxl-bmc · same client, same run</text>']
    colors = ["#9e9e9e", "#1f77b4"]
    for i, (ptitle, bars, ymax, note) in enumerate(panels):
        x0 = left + i * pw
        y0 = top + ph - 40  # baseline
        hmax = ph - 90
        for j, line in enumerate(ptitle.split("\n")):
            out.append(f'<text x="{x0 + pw / 2 - 10}" y="{top + 5 + 15 * j}" text-anchor="middle" font-weight="bold">{esc(line)}</text>')
        out.append(f'<line x1="{x0 + 10}" y1="{y0}" x2="{x0 + pw - 30}" y2="{y0}" stroke="black"/>')
        bw = (pw - 50) / max(1, len(bars)) - 8
        for j, (label, value, text) in enumerate(bars):
            bx = x0 + 14 + j * (bw + 8)
            color = colors[j % 2]  # bars alternate: vanilla, cxl-bmc
            if value is None:
                out.append(f'<text x="{bx + bw / 2}" y="{y0 - 6}" text-anchor="middle" fill="#c00">never</text>')
            else:
                if isinstance(ymax, tuple):  # ("log", low, high)
                    _, lo, hi = ymax
                    frac = math.log10(max(value, lo) / lo) / math.log10(hi / lo)
                else:
                    frac = value / ymax
                h = max(1.0, min(1.0, frac) * hmax)
                out.append(f'<rect x="{bx:.1f}" y="{y0 - h:.1f}" width="{bw:.1f}" height="{h:.1f}" fill="{color}"/>')
                size = 12 if len(bars) <= 2 else 10
                out.append(f'<text x="{bx + bw / 2:.1f}" y="{y0 - h - 5:.1f}" text-anchor="middle" font-size="{size}">{esc(text)}</text>')
            for k, part in enumerate(label.split("\n")):
                out.append(f'<text x="{bx + bw / 2:.1f}" y="{y0 + 15 + 13 * k}" text-anchor="middle" font-size="11">{esc(part)}</text>')
        out.append(f'<text x="{x0 + pw / 2 - 10}" y="{y0 + 62}" text-anchor="middle" font-size="11" fill="#555">{esc(note)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def plot(l1, l3, up):
    panels = []
    if l1:
        r = l1["sizes"].get("64") or next(iter(l1["sizes"].values()))
        v = r.get("proc_share_vanilla_us", r["share_vanilla_us"])
        c = r.get("proc_share_cxl_bound_us", r.get("proc_share_cxl_us", r["share_cxl_us"]))
        label = f"{c / v:.2f} ({v / c:.1f}× less)" if c > 0.05 else "≈ floor (noise)"
        panels.append(("a. server CPU per GET\n(64 B, vanilla = 1)",
                       [("vanilla", 1.0, "1"), ("cxl-bmc", max(0.0, c / v), label)], 1.2,
                       f"{v:.1f} µs vs {c:.1f} µs"))
        panels.append(("a. GET throughput\n(vanilla = 1)",
                       [("vanilla", 1.0, "1"), ("cxl-bmc", r["throughput_ratio"], f"{r['throughput_ratio']:.2f}")], 1.2,
                       "one client thread"))
    if l3:
        v, c = l3["summary"]["vanilla"], l3["summary"]["cxl-bmc"]
        tth = c["time_to_hit_us"]
        ms = lambda us: f"{us / 1000:.2f} ms" if us < 1000 else f"{us / 1000:.1f} ms"
        panels.append(("b. client waits (TCP GET, ms,\nlog scale)",
                       [("hit", v["hit_us"] / 1000, ms(v["hit_us"])), ("hit", c["hit_us"] / 1000, ms(c["hit_us"])),
                        ("lost\nkey →\nvalue", None if not v["recovered"] else v["time_to_hit_us"] / 1000, "never"),
                        ("lost\nkey →\nvalue", (tth or 0) / 1000, ms(tth or 0))],
                       ("log", 0.01, 1000.0), f"promotion (daemon) {c['promotion_us'] / 1000:.1f} ms"))
        panels.append(("c. hit ratio after\nmemcached restarts",
                       [("pass 1", v["pass1"], f"{v['pass1']:.2f}"), ("pass 1", c["pass1"], f"{c['pass1']:.2f}"),
                        ("pass 2", v["pass2"], f"{v['pass2']:.2f}"), ("pass 2", c["pass2"], f"{c['pass2']:.2f}")],
                       1.15, "Zipf 0.99 UDP GETs, same sequence"))
    if up:
        panels.append(("d. SET rate with uprobes\n(without = 1)",
                       [("vanilla", 1.0, "1"), ("cxl-bmc", up["ratio"], f"{up['ratio']:.2f}")], 1.2,
                       f"{up['base'] / 1000:.0f} k/s vs {up['probed'] / 1000:.0f} k/s"))
    return svg(panels, "cxl-bmc vs vanilla memcached (ratios; this run)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.path.join(ROOT, ".build", "release"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks"))
    ap.add_argument("--quick", action="store_true", help="every part briefly: shows it works, not what it measures")
    ap.add_argument("--only", default="l1,l3,uprobes", help="parts to run (the others are left out of the report)")
    ap.add_argument("--render-only", action="store_true", help="run nothing: write the report from the JSON files already in --out")
    args = ap.parse_args()
    if os.geteuid() != 0 and not args.render_only:
        sys.exit("bench_report: needs root (BPF, network namespaces)")
    os.makedirs(args.out, exist_ok=True)
    params = QUICK if args.quick else FULL
    parts = args.only.split(",")
    py, bd = sys.executable, ["--build-dir", args.build_dir]
    took = {}
    if args.render_only:
        parts = [p for p in parts if os.path.exists(f"{args.out}/report-{p}.json")]
    if "l1" in parts and not args.render_only:
        took["l1"] = run_part("a. L1", [py, f"{HERE}/bench_l1.py", *bd, *params["l1"], "--out", f"{args.out}/report-l1.md",
                                        "--json-out", f"{args.out}/report-l1.json"])
    if "l3" in parts and not args.render_only:
        took["l3"] = run_part("b./c. L3", [py, f"{HERE}/bench_l3.py", *bd, *params["l3"], "--json-out", f"{args.out}/report-l3.json"])
    if "uprobes" in parts and not args.render_only:
        took["uprobes"] = run_part("d. uprobes", [py, f"{HERE}/bench_uprobes.py", *bd, *params["uprobes"],
                                                  "--out", f"{args.out}/report-uprobes.md", "--json-out", f"{args.out}/report-uprobes.json"])

    def load(name):
        if name not in parts:
            return None
        with open(f"{args.out}/report-{name}.json") as f:
            return json.load(f)
    l1, l3, up = load("l1"), load("l3"), load("uprobes")

    run = {"when": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "load_avg": os.getloadavg()[0], "took": took}
    if args.render_only and os.path.exists(f"{args.out}/report-run.json"):
        with open(f"{args.out}/report-run.json") as f:
            run = json.load(f)
    else:
        with open(f"{args.out}/report-run.json", "w") as f:
            json.dump(run, f)
    when, load_avg, took = run["when"], run["load_avg"], run["took"]
    lines = [
        "# Benchmark report: vanilla memcached vs memcached + cxl-bmc",
        "",
        f"{'**Quick run** (`make bench-quick`): every part briefly, figures only show that it works. ' if args.quick else ''}"
        f"Produced by `make bench{'-quick' if args.quick else ''}` (`kernel-scripts/bench_report.py`) on {os.uname().nodename} "
        f"({os.cpu_count()} CPUs, kernel {os.uname().release}, load average {load_avg:.1f} at the end), {when}; "
        + (f"parts took {', '.join(f'{k} {v:.0f} s' for k, v in took.items())}. " if took else "")
        + 
        "Each part runs both variants in the same run, with the same client, in interleaved rounds, and reports medians; "
        "the machine is shared and noisy, so read the **ratios**: absolute times are context.",
        "",
        table(l1, l3, up),
        "",
        "![ratios](report.svg)",
        "",
        "How each part is measured:",
    ]
    if l1:
        p = l1["params"]
        lines.append(f"- **a. L1** (`bench_l1.py`, details in [report-l1.md](report-l1.md)): a veth test bed, mc-load sending UDP GETs "
                     f"(Zipf 0.99 over {p['keys']} keys, {p['inflight']} in flight; {'`load --lean`: requests built once, replies only classified, nothing allocated per GET, so the client adds as little as it can to every phase' if p.get('client', 'full') == 'lean' else 'the full client, which parses every reply'}) for {p['duration']:g} s per phase, {p['rounds']} rounds. "
                     "CPU per GET is the CPU time of the processes involved (mc-load, memcached, cxl-bmc's daemon, ksoftirqd: this "
                     "kernel charges softirq work, XDP included, to the task it interrupts) over replies, and, as context, the "
                     "whole machine's busy time, which also holds whatever else runs on a shared machine. On veth XDP runs in "
                     "the sender's softirq, so a bare XDP program answering every GET without a lookup is measured in the same "
                     "run and subtracted (the *floor*: a reply of a hit's size where veth can send it, else `END`); the server's "
                     "share is what is left. cxl-bmc's phase attaches L1 and warms it first.")
    if l3:
        p = l3["params"]
        lines.append(f"- **b./c. L3** (`bench_l3.py`): per round and variant, memcached is started in the test bed, "
                     f"{p['keys']} keys ({p['value_size']} B) and {p['latency_keys']} latency keys are written (cxl-bmc: attached with "
                     "`--memcached /usr/bin/memcached --pool POOL`, a fresh pool in /dev/shm, and every write waited for in L3), "
                     "then memcached is killed with SIGKILL and started again, empty — the host failure; the pool survives. "
                     f"b: `mc-load latency` GETs each latency key once over TCP, one key at a time (a miss), once more right after, then "
                     f"with a growing pause (100 µs ×1.5, at most 2 ms) until its value comes back (at most {p['until_hit_ms']:g} ms): the time from the missing GET to the value is what a client waits for a lost key; "
                     "the daemon's own figure (miss event → memcached's `HD` to the `ms … ME`) comes from /run/cxl-bmc/IFACE.json. "
                     f"c: `mc-load load` sends the same Zipf 0.99 sequence of {p['pass_requests']} UDP GETs twice (pass 1, then pass 2 "
                     f"once the promotions pass 1 triggered have settled); hit ratio = keys found ÷ keys asked. {p['rounds']} rounds.")
    if up:
        lines.append(f"- **d. uprobes** (`bench_uprobes.py`, details in [report-uprobes.md](report-uprobes.md)): memcached on loopback, "
                     f"{up['conns']} TCP connections pipelining {up['sets'] // up['conns']} SETs each, {up['rounds']} rounds alternating "
                     "without / with `cxl-bmc events --pid` (the probes attached, every event decoded).")
    notes = []
    if l1 and any(r["hit_ratio"] < 0.5 for r in l1["sizes"].values()):
        notes.append("- 1 KB values: veth can grow a frame by only ~250 bytes, so L1 passes those GETs to memcached "
                     "(the in-kernel 1 KB path is covered by the fixtures and `cxl-bmc-bench`); the figures show what L1 "
                     "costs when it cannot answer.")
    if l3 and (l3["summary"]["cxl-bmc"]["promotion_us"] or 0) > 5000:
        notes.append("- Promotion takes milliseconds, not the microseconds of an `ms` round trip: the probes submit events "
                     "to the ring buffer without a wakeup until 256 KiB are queued (`MC_EVENTS_WAKEUP_BYTES`, "
                     "bpf/uprobe/mc_probes.bpf.c), and the daemon polls the ring every 20 ms, so a lone miss waits "
                     "about 10 ms on average before L3 sees it. Under a burst every miss queues its own promotion "
                     "(repeats of a hot key end as `NS`, raced), hence the longer burst mean.")
    if notes:
        lines += ["", "Notes:", *notes]
    text = "\n".join(lines) + "\n"
    with open(f"{args.out}/report.md", "w") as f:
        f.write(text)
    with open(f"{args.out}/report.svg", "w") as f:
        f.write(plot(l1, l3, up))
    print(text)
    print(f"wrote {args.out}/report.md and {args.out}/report.svg", file=sys.stderr)


if __name__ == "__main__":
    main()
