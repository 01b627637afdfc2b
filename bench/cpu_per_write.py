#!/usr/bin/env python3
"""CPU time per write, for each load run of the shared store harness (bench/lib.sh starts
this beside ../shared/bench/store.sh and stops it with SIGTERM when the harness is done).

The machine has two cores shared by the servers and the load generator, so at 64 and 256
connections every target is CPU-bound and its writes/s is about the CPU it gets divided by
the CPU each write costs. This splits the two: while a `wrk` process runs, it samples the CPU
time (user + system, from /proc) of every `etcd` and every `groundwork` process, of `wrk`
itself and of the whole machine; when `wrk` exits it reads writes/s from wrk's own output
file (its standard output) and prints one line per run, then medians per target and
connection count at the end:

  cpu  TARGET  cN  rps  server_us_per_write  wrk_us_per_write  machine_busy

TARGET is whichever of etcd or groundwork has processes during the run. Kernel work done in
softirq context on behalf of a process (loopback TCP) is charged to whichever process was
running, as /proc reports it.
"""
import os
import re
import signal
import statistics
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")
SERVERS = ("etcd", "groundwork")


def proc_cpu(pid):
    """utime + stime of a process in seconds, and its name (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None, None
    name = s[s.index("(") + 1:s.rindex(")")]
    fields = s[s.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK, name


def machine():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def servers():
    """CPU seconds by server name, over their live processes (by pid, so a sum of deltas
    ignores processes that start or end mid-run)."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        cpu, name = proc_cpu(int(d))
        if name in SERVERS:
            out[int(d)] = (name, cpu)
    return out


def find_wrk():
    for d in os.listdir("/proc"):
        if d.isdigit():
            _, name = proc_cpu(int(d))
            if name == "wrk":
                return int(d)
    return None


def wrk_run(pid):
    """Connections and output file of a wrk process."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().decode(errors="replace").split("\0")
        out = os.readlink(f"/proc/{pid}/fd/1")
    except OSError:
        return None, None
    conns = next((a[2:] for a in args if re.fullmatch(r"-c\d+", a)), None)
    return conns, out


def rps_of(path):
    try:
        with open(path) as f:
            m = re.search(r"Requests/sec:\s+([\d.]+)", f.read())
        return float(m.group(1)) if m else None
    except OSError:
        return None


rows = []
stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)

while not stop:
    pid = find_wrk()
    if pid is None:
        time.sleep(0.05)
        continue
    conns, out = wrk_run(pid)
    s0, m0, t0 = servers(), machine(), time.monotonic()
    wrk_cpu = 0.0
    while True:
        cpu, name = proc_cpu(pid)
        if name != "wrk":
            break
        wrk_cpu = cpu
        time.sleep(0.05)
    s1, m1, t1 = servers(), machine(), time.monotonic()
    if conns is None or out is None:
        continue
    by_name = {}
    for p, (name, cpu) in s1.items():
        if p in s0:
            by_name[name] = by_name.get(name, 0.0) + cpu - s0[p][1]
    if not by_name:
        continue
    target = max(by_name, key=by_name.get)
    time.sleep(0.2)  # wrk's report is written as it exits
    rps = rps_of(out)
    if not rps:
        continue
    writes = rps * (t1 - t0)
    busy = (m1[0] - m0[0]) / max(1, m1[1] - m0[1])
    row = (target, int(conns), rps, 1e6 * by_name[target] / writes, 1e6 * wrk_cpu / writes, busy)
    rows.append(row)
    print("cpu  %-10s c%-4d %8.0f rps  %6.1f us/write server  %5.1f us/write wrk  busy %.2f" % row,
          file=sys.stderr, flush=True)

print("\nCPU per write (median over runs; server = all members together):")
print("| target | connections | writes/s | server CPU µs/write | wrk CPU µs/write | machine busy |")
print("|---|---|---|---|---|---|")
keys = sorted({(r[0], r[1]) for r in rows}, key=lambda k: (k[1], k[0]))
for t, c in keys:
    rs = [r for r in rows if r[0] == t and r[1] == c]
    med = [statistics.median(r[i] for r in rs) for i in range(2, 6)]
    print("| %s | %d | %.0f | %.1f | %.1f | %.2f |" % (t, c, *med))
