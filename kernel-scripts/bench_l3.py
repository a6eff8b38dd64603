#!/usr/bin/env python3
"""L3 benchmark: what a client sees after memcached lost its items, vanilla vs memcached + cxl-bmc.

One test bed (two network namespaces joined by veth), Debian's memcached, the same client (mc-load)
for both, rounds interleaved (this machine is noisy). Each round, for "vanilla" (memcached alone)
and "cxl-bmc" (`cxl-bmc attach IFACE --memcached /usr/bin/memcached --pool POOL`, a fresh pool in
/dev/shm):
  1. memcached is started; two key sets are written over TCP (`mc-load populate --verify`, which
     also reads them back: the hit ratio before the failure): KEYS keys (the Zipf working set,
     prefix k) and LATENCY_KEYS keys (prefix l, for the latency probe);
  2. GET latency of keys memcached has (`mc-load latency`, one TCP GET at a time);
  3. the host failure: memcached is killed (SIGKILL) and started again, empty; the pool survives;
  4. latency probe (`mc-load latency --until-hit-ms`): each lost key is GET once (a miss), once
     more right after, then with a growing pause (100 µs ×1.5, at most 2 ms) until its value comes
     back or the limit passes; keys are taken at random intervals (up to --gap-us);
  5. pass 1 and pass 2 over the working set: the same Zipf sequence of UDP GETs (`mc-load load
     --max-requests --seed`) twice, with the promotions pass 1 triggered settled in between.
Reports, per variant, medians over rounds: hit ratios (before, pass 1, pass 2), GET latency of
present keys, of a miss, of the GET right after a miss, time from the miss to the value, and the
daemon's own promotion latency (miss event → memcached's HD, from /run/cxl-bmc/IFACE.json).
Writes JSON (--json-out) and prints a summary. Only the test bed's namespaces are addressed. Needs root.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MEMCACHED = "/usr/bin/memcached"


def sh(*args, check=True):
    r = subprocess.run(args, capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"bench_l3: {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Bed:
    def __init__(self, args):
        self.args = args
        self.name = f"bl{os.getpid() % 1000}"
        out = sh("bash", os.path.join(HERE, "testbed.sh"), "up", self.name)
        self.env = dict(l.split("=", 1) for l in out.split() if "=" in l)
        self.srv, self.cli = self.env["SERVER_NS"], self.env["CLIENT_NS"]
        self.iface, self.ip = self.env["SERVER_IF"], self.env["SERVER_IP4"]
        self.mc_pid = None

    def down(self):
        sh("bash", os.path.join(HERE, "testbed.sh"), "down", self.name, check=False)

    def mc_load(self, *args):
        out = sh("nsenter", f"--net=/run/netns/{self.cli}", self.args.mc_load, *args, "--server", self.ip, "--json")
        return json.loads(out.strip().splitlines()[-1])

    def start_memcached(self):
        out = sh("bash", os.path.join(HERE, "testbed.sh"), "memcached", self.name, "-t", "1", "-m", "512")
        self.mc_pid = int(dict(l.split("=", 1) for l in out.split() if "=" in l)["MEMCACHED_PID"])

    def kill_memcached(self):
        """SIGKILL to the memcached this script started (checked by name first: pids get reused)."""
        pid, self.mc_pid = self.mc_pid, None
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "memcached":
                    return
            os.kill(pid, signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):
            return
        for _ in range(200):  # gone, or a zombie waiting for init
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().split(")")[-1].split()[0] == "Z":
                        break
            except FileNotFoundError:
                break
            time.sleep(0.01)


def status(iface):
    try:
        with open(f"/run/cxl-bmc/{iface}.json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def wait_l3(iface, done, what, timeout=60):
    """Polls the daemon's status file until done(l3) holds."""
    end = time.time() + timeout
    while time.time() < end:
        s = status(iface)
        if s and s.get("l3") and done(s["l3"]):
            return s["l3"]
        time.sleep(0.2)
    sys.exit(f"bench_l3: timed out waiting for {what}: {status(iface)}")


def wait_settled(iface, timeout=60):
    """Waits until the L3 counters stay the same over two updates of the status file (1 s apart)."""
    end = time.time() + timeout
    seen, values, same = None, None, 0
    while time.time() < end:
        s = status(iface)
        if s and s.get("l3") and s["updatedUnix"] != seen:
            seen = s["updatedUnix"]
            now = {k: s["l3"][k] for k in ("misses", "l3_hits", "promoted", "promotions_raced", "failures", "dropped")}
            same = same + 1 if now == values else 0
            values = now
            if same >= 2:
                return s["l3"]
        time.sleep(0.25)
    sys.exit("bench_l3: L3 counters did not settle")


def one_round(bed, args, variant):
    a = args
    bed.start_memcached()
    attach = pool = attach_log = None
    try:
        if variant == "cxl-bmc":
            pool = f"/dev/shm/cxl-bmc-bench-{bed.name}.pool"
            if os.path.exists(pool):
                os.unlink(pool)
            sh(a.cxl_bmc, "pool", "create", pool, "--size", a.pool_size)
            attach_log = open(f"/tmp/cxl-bmc-bench-{bed.name}.log", "w+")
            attach = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{bed.srv}", a.cxl_bmc, "attach", bed.iface, "--tc-attach",
                 "--memcached", MEMCACHED, "--pool", pool, "--memcached-addr", f"{bed.ip}:11211"],
                stdout=attach_log, stderr=subprocess.STDOUT, text=True)
            for _ in range(300):
                attach_log.seek(0)
                if any(l.startswith("L3:") for l in attach_log) or attach.poll() is not None:
                    break
                time.sleep(0.1)
            if attach.poll() is not None:
                attach_log.seek(0)
                sys.exit(f"bench_l3: cxl-bmc attach exited: {attach_log.read()}")
            wait_l3(bed.iface, lambda l3: True, "the daemon's first status")
        r = {"variant": variant}
        pre = bed.mc_load("populate", "--keys", str(a.keys), "--value-size", str(a.value_size), "--verify")
        bed.mc_load("populate", "--keys", str(a.latency_keys), "--value-size", str(a.value_size), "--prefix", "l")
        r["hit_before"] = pre["verified"] / a.keys
        present = bed.mc_load("latency", "--count", str(a.latency_keys), "--value-size", str(a.value_size),
                              "--prefix", "l", "--until-hit-ms", "0", "--gap-us", str(a.gap_us))
        r["hit_us"] = present["hit"].get("p50_us")
        if variant == "cxl-bmc":  # every write is in L3 before the failure
            need = a.keys + a.latency_keys
            wait_l3(bed.iface, lambda l3: l3["stores"] >= need, f"{need} stores written through")

        log(f"  {variant}: killing memcached {bed.mc_pid} (the host failure) and starting it again")
        bed.kill_memcached()
        bed.start_memcached()
        time.sleep(0.3)

        lost = bed.mc_load("latency", "--count", str(a.latency_keys), "--value-size", str(a.value_size),
                           "--prefix", "l", "--until-hit-ms", str(a.until_hit_ms), "--gap-us", str(a.gap_us))
        r["miss_us"] = lost["miss"].get("p50_us")
        r["after_miss_us"] = lost["after_miss"].get("p50_us")
        r["after_miss_hit"] = lost["after_miss_hits"] / max(1, lost["miss"]["count"])
        r["recovered"] = lost["recovered"] / max(1, lost["miss"]["count"])
        r["time_to_hit_us"] = lost["time_to_hit"].get("p50_us")
        r["time_to_hit_p99_us"] = lost["time_to_hit"].get("p99_us")
        if variant == "cxl-bmc":
            l3 = wait_settled(bed.iface)
            r["promotion_us"] = l3["promotion_avg_us"]  # isolated promotions (one miss at a time)
            promoted_before = l3["promoted"]

        load = ["load", "--keys", str(a.keys), "--value-size", str(a.value_size), "--zipf", str(a.zipf),
                "--duration", "600", "--max-requests", str(a.pass_requests), "--inflight", str(a.inflight),
                "--seed", "7", "--validate"]
        p1 = bed.mc_load(*load)
        if variant == "cxl-bmc":
            l3 = wait_settled(bed.iface)
            r["pass1_promoted"] = l3["promoted"] - promoted_before
            r["promotion_burst_avg_us"] = l3["promotion_avg_us"]  # average over all promotions so far
            r["dropped"] = l3["dropped"]
            r["promotions_raced"] = l3["promotions_raced"]
            r["failures"] = l3["failures"]
        else:
            time.sleep(1)
        p2 = bed.mc_load(*load)
        r["pass1"] = p1["hits"] / max(1, p1["hits"] + p1["misses"])
        r["pass2"] = p2["hits"] / max(1, p2["hits"] + p2["misses"])
        r["pass_timeouts"] = p1["timeouts"] + p2["timeouts"]
        log(f"  {variant}: before {r['hit_before']:.3f}, pass 1 {r['pass1']:.3f}, pass 2 {r['pass2']:.3f}; "
            f"GET hit {r['hit_us'] or 0:.0f} µs, miss {r['miss_us'] or 0:.0f} µs, right after a miss {r['after_miss_us'] or 0:.0f} µs "
            f"({r['after_miss_hit']:.2f} hits), miss → value {r['time_to_hit_us'] or 0:.0f} µs ({r['recovered']:.2f} came back)"
            + (f", promotion {r['promotion_us']} µs" if variant == "cxl-bmc" else ""))
        return r
    finally:
        if attach:
            attach.send_signal(signal.SIGTERM)
            try:
                attach.wait(timeout=30)
            except subprocess.TimeoutExpired:
                attach.kill()
        if bed.mc_pid:
            bed.kill_memcached()
        if pool and os.path.exists(pool):
            os.unlink(pool)
        if attach_log:
            attach_log.close()
            os.unlink(attach_log.name)


def med(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.path.join(ROOT, ".build", "release"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keys", type=int, default=10000, help="the Zipf working set")
    ap.add_argument("--value-size", type=int, default=64)
    ap.add_argument("--zipf", type=float, default=0.99)
    ap.add_argument("--pass-requests", type=int, default=20000, help="UDP GETs per pass")
    ap.add_argument("--inflight", type=int, default=32)
    ap.add_argument("--latency-keys", type=int, default=100)
    ap.add_argument("--until-hit-ms", type=float, default=50)
    ap.add_argument("--gap-us", type=int, default=25000,
                    help="random pause between the latency probe's keys, up to this (longer than the daemon's 20 ms event poll)")
    ap.add_argument("--pool-size", default="256M")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_l3: needs root (BPF, network namespaces)")
    args.mc_load = os.path.join(args.build_dir, "mc-load")
    args.cxl_bmc = os.path.join(args.build_dir, "cxl-bmc")
    bed = Bed(args)
    rows = {"vanilla": [], "cxl-bmc": []}
    try:
        for round_ in range(args.rounds):
            log(f"L3 round {round_ + 1} of {args.rounds}")
            for variant in ("vanilla", "cxl-bmc"):
                rows[variant].append(one_round(bed, args, variant))
    finally:
        bed.down()
    keys = ("hit_before", "pass1", "pass2", "hit_us", "miss_us", "after_miss_us", "after_miss_hit", "recovered",
            "time_to_hit_us", "time_to_hit_p99_us", "promotion_us", "promotion_burst_avg_us", "pass1_promoted",
            "promotions_raced", "dropped", "failures", "pass_timeouts")
    summary = {v: {k: med(rs, k) for k in keys} for v, rs in rows.items()}
    result = {"params": {k: v for k, v in vars(args).items() if k not in ("mc_load", "cxl_bmc", "json_out")},
              "summary": summary, "rounds": rows}
    text = json.dumps(result, indent=1)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(text)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
