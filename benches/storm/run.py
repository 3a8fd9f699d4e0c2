#!/usr/bin/env python3
"""An independent lock-step TFTP storm: several servers and the kernel floor in one run.

Usage (as root, on Linux, from anywhere):

    benches/storm/run.py                                   # all cases, all servers found
    benches/storm/run.py --quick --cases storm500 --repeat 1
    benches/storm/run.py --servers ringtftpd,dnsmasq --repeat 3 --out storm.md
    benches/storm/run.py --servers ringtftpd,ringtftpd-tokio-uring,ringtftpd-epoll   # A/B
    benches/storm/run.py --server-cpus 0-3 --client-cpus 4-7       # a machine with 8+ cores
    benches/storm/run.py --cases storm10000 --servers ringtftpd,dnsmasq --clients c

Two independent clients, each case run with each (--clients c,tasks, the default: both):
  c      benches/storm/storm_client.c: plain C, one thread, epoll (compiled with gcc into a
         temporary directory at the start, like the floor, benches/storm/floor.c);
  tasks  benches/storm/tasks.rs: a task per transfer on a tokio current-thread runtime, each
         awaiting its own socket under a per-packet timeout (bursty, as many test rigs are);
         built once at the start with `cargo build --release --example storm_tasks` (or
         --tasks-client PATH) and copied into the temporary directory.
Both are written from the RFCs, share no code with the server or loadgen, take the same
arguments and print the same JSON line. See benches/storm/README.md for what the columns mean.

Cases (--quick divides the counts by 4):
    storm500-one      2000 x 1 MiB, 500 at once, all clients from 127.0.0.1
    storm500-many     the same, clients spread over 127.0.0.1-127.0.0.250
    storm2000-one     4000 x 1 MiB, 2000 at once, from 127.0.0.1
    storm2000-many    the same, spread over 250 addresses
    storm10000-one    10 000 x 1 MiB, all at once, from 127.0.0.1 (ringtftpd gets
                      --max-per-client 16384: its default of 4096 per client address would
                      refuse most of them)
    storm10000-many   the same, spread over 250 addresses
--cases storm500 selects both sources of storm500. The default is storm500,storm2000;
storm10000 is opt-in (--cases storm10000, or --cases all).

Servers: ringtftpd (target/release/ringtftpd, copied into the temporary directory at the start
so a rebuild during the run does not mix builds; default flags plus PORT, --bind, --directory and
--shards N, N = the number of --server-cpus), dnsmasq (127.0.0.1:69, --tftp-max raised),
tftp-hpa's in.tftpd, atftpd (skipped when concurrency >= 900: it uses select() and aborts above
~1000 descriptors). Opt-in, not in the default list, for an A/B of ringtftpd's own backends:
ringtftpd-tokio-uring (the same binary and flags plus --backend tokio-uring: a task per
transfer on tokio-uring), ringtftpd-epoll (--backend epoll) and ringtftpd-passed (started by
systemd-socket-activate, as the shipped unit runs it: every shard reads the one socket passed);
plain ringtftpd runs the default, the io_uring engine. Each ringtftpd's start line ("... with N shards (BACKEND)") is read from its
log and checked against what the variant claims. Each server is started fresh for each run
pinned to --server-cpus (taskset), in its own cgroup v2 whose cpu.stat usage_usec is its CPU
(children included), and stopped by PID (SIGTERM, then SIGKILL, then any process left in its
cgroup); its peak memory is its VmHWM (/proc/PID/status, read before it is stopped) and, where
the cgroup has a memory controller, the cgroup's memory.peak. One client process runs pinned to
each of --client-cpus, with the transfers and the concurrency split evenly between them; their
results are merged (sums; rates over the common wall time; percentiles over every transfer's
latency). The floor (floor.c, shapes `one` and
`many`, N = the case's concurrency, as many cycles as the storm's DATA blocks) pins its server
to the first of --server-cpus and its client to the first of --client-cpus. With --repeat N the
order of the servers alternates between repeats and each figure is the median of the N runs.

Every wait is bounded: the client's --deadline, a subprocess timeout beyond it, server start and
stop timeouts; everything started is stopped on exit (finally, atexit, SIGINT, SIGTERM).
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
MIB = 1 << 20
BLKSIZE = 1468
PEERS_DIR = Path("/tmp/ringtftp-bench-peers")

CASES = {  # key: (transfers, concurrency, extra ringtftpd flags)
    "storm500": (2000, 500, []),
    "storm2000": (4000, 2000, []),
    # All at once: ringtftpd's default --max-per-client (4096) would refuse most of the
    # transfers of --sources one (every client on 127.0.0.1); its --max-transfers default
    # (16384) already fits.
    "storm10000": (10000, 10000, ["--max-per-client", "16384"]),
}
DEFAULT_CASES = ("storm500", "storm2000")
SOURCES = ("one", "many")
# The clients: name -> (what it is, for the report's header).
CLIENTS = {
    "c": "benches/storm/storm_client.c (one thread, epoll)",
    "tasks": "benches/storm/tasks.rs (a tokio current-thread task per transfer)",
}
ALL_SERVERS = ("ringtftpd", "dnsmasq", "tftp-hpa", "atftpd")
# Opt-in variants of ringtftpd (same binary): name -> (extra flags, extra environment).
RINGTFTPD_VARIANTS = {
    "ringtftpd": ([], {}),
    "ringtftpd-tokio-uring": (["--backend", "tokio-uring"], {}),
    "ringtftpd-epoll": (["--backend", "epoll"], {}),
    # As the shipped systemd unit runs it: one socket passed (systemd-socket-activate, no
    # SO_REUSEPORT), read by every shard.
    "ringtftpd-passed": ([], {}),
}
ATFTPD_MAX_CONCURRENCY = 900

ARGS: argparse.Namespace


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ processes

CGROUPS: list[Path] = []


def stop_pid(proc: subprocess.Popen, what: str, cg: Path | None = None) -> None:
    """SIGTERM, then SIGKILL, by PID; then its children and any process left in its cgroup,
    by PID."""
    kids = descendants(proc.pid) if proc.poll() is None else []
    if proc.poll() is None:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            log(f"{what} (PID {proc.pid}) did not die on SIGKILL")
    for k in kids:  # e.g. floor's forked client
        try:
            os.kill(k, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if cg is not None:
        for _ in range(50):
            left = cg_pids(cg)
            if not left:
                break
            for p in left:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                for k in Path(f"/proc/{p}/task/{t}/children").read_text().split():
                    out.append(int(k))
                    todo.append(int(k))
        except OSError:
            pass
    return out


PROCS: dict[int, tuple[subprocess.Popen, str, Path | None]] = {}


def cleanup() -> None:
    for pid, (proc, what, cg) in list(PROCS.items()):
        try:
            stop_pid(proc, what, cg)
        except Exception as e:  # noqa: BLE001 - best effort on the way out
            log(f"stopping {what} (PID {pid}): {e}")
        PROCS.pop(pid, None)
    for cg in CGROUPS:
        try:
            cg.rmdir()
        except OSError:
            pass
    CGROUPS.clear()


def on_signal(signum, _frame):
    log(f"got {signal.Signals(signum).name}: stopping")
    sys.exit(130)


# ------------------------------------------------------------------------------ machine


def cg_root() -> Path | None:
    for cand in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        p = Path(cand)
        if (p / "cgroup.procs").exists() and (p / "cgroup.controllers").exists():
            probe = p / f"ringtftp-storm-probe-{os.getpid()}"
            try:
                probe.mkdir()
                ok = (probe / "cpu.stat").exists()
                probe.rmdir()
                if ok:
                    return p
            except OSError:
                continue
    return None


def cg_has_memory(cgr: Path | None) -> bool:
    """Whether the servers' cgroups (children of cgr) get the memory controller (memory.peak);
    not where memory is a cgroup v1 hierarchy."""
    try:
        return cgr is not None and "memory" in (cgr / "cgroup.subtree_control").read_text().split()
    except OSError:
        return False


def cg_pids(cg: Path) -> list[int]:
    try:
        return [int(x) for x in (cg / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def cg_cpu(cg: Path) -> float:
    for line in (cg / "cpu.stat").read_text().splitlines():
        k, v = line.split()
        if k == "usage_usec":
            return int(v) / 1e6
    return 0.0


def proc_cpu(pid: int) -> float:
    """utime+stime+cutime+cstime of a process (children count once reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def cpu_busy_s(cpus: set[int]) -> float:
    total = 0
    with open("/proc/stat") as f:
        for line in f:
            parts = line.split()
            if parts[0].startswith("cpu") and parts[0] != "cpu" and int(parts[0][3:]) in cpus:
                total += sum(int(x) for x in parts[1:4] + parts[6:8])  # user nice system irq softirq
    return total / os.sysconf("SC_CLK_TCK")


def parse_cpus(spec: str, what: str) -> list[int]:
    """A taskset-style CPU list ("0-3", "0,2,4-5") as sorted CPU numbers."""
    cpus: set[int] = set()
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        sys.exit(f"{what}: not a CPU list: {spec!r} (e.g. 0-3 or 0,2,4)")
    allowed = os.sched_getaffinity(0)
    if not cpus or not cpus <= allowed:
        sys.exit(f"{what} {spec!r}: CPUs {sorted(cpus - allowed) or '(none)'} are not available "
                 f"(allowed: {sorted(allowed)})")
    return sorted(cpus)


def cpu_list(cpus: list[int]) -> str:
    """Sorted CPU numbers as a short taskset list: [0, 1, 2, 3, 6] -> "0-3,6"."""
    out, i = [], 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(out)


def all_cpus() -> set[int]:
    return set(ARGS.server_cpus) | set(ARGS.client_cpus)


def shard_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (utime+stime) of each thread of PID named shard-*, by name."""
    out: dict[str, float] = {}
    tck = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tids:
        try:
            head, rest = Path(f"/proc/{pid}/task/{t}/stat").read_text().rsplit(")", 1)
            name = head.split("(", 1)[1]
            if name.startswith("shard-"):
                f = rest.split()
                out[name] = (int(f[11]) + int(f[12])) / tck
        except (OSError, IndexError, ValueError):
            continue
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("model name", "Model", "cpu model", "Hardware") and v.strip():
                return v.strip()
    except OSError:
        pass
    for line in sh(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def wait_quiet(max_wait: float) -> float:
    """Wait (at most max_wait s) until the server's and the client's CPUs are nearly idle for a
    second."""
    cpus = all_cpus()
    end = time.monotonic() + max_wait
    while True:
        b0, s0 = cpu_busy_s(cpus), sum(os.times()[:2])
        time.sleep(1.0)
        busy = cpu_busy_s(cpus) - b0 - (sum(os.times()[:2]) - s0)
        if busy < 0.15 or time.monotonic() >= end:
            return max(0.0, busy)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def udp_port_bound(port: int) -> bool:
    hexport = f":{port:04X}"
    try:
        with open("/proc/net/udp") as f:
            next(f)
            for line in f:
                local = line.split()[1]
                if local.endswith(hexport) and local.split(":")[0] in ("0100007F", "00000000"):
                    return True
    except OSError:
        pass
    return False


def sh(cmd: list[str], timeout: float = 10) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return (out.stdout + out.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"? ({e})"


# ------------------------------------------------------------------------------ servers


class Server:
    def __init__(self, name: str, exe: str, port: int, argv: list[str], version: str,
                 env: dict[str, str] | None = None):
        self.name, self.exe, self.port, self.argv, self.version = name, exe, port, argv, version
        self.env = env or {}  # added to its environment (RINGTFTP_BACKEND is always cleared)
        self.backend = ""  # ringtftpd: its start line's "with N shards (BACKEND)", first run

    def command(self) -> str:
        return shlex.join([f"{k}={v}" for k, v in self.env.items()] + self.argv)


def tasks_client(tmp: Path) -> str:
    """The task-per-transfer client (benches/storm/tasks.rs, the root crate's example
    storm_tasks): --tasks-client PATH, or built once now with cargo; copied into tmp (a rebuild
    during the run does not change it). Returns why not, or ""."""
    if ARGS.tasks_client:
        src = Path(ARGS.tasks_client)
    else:
        cmd = ["cargo", "build", "--release", "--example", "storm_tasks"]
        log("building the tasks client: " + " ".join(cmd))
        try:
            b = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"{' '.join(cmd)}: {e}"
        if b.returncode != 0:
            tail = b.stderr.strip().splitlines()[-15:]
            log("cargo build failed:\n" + "\n".join(tail))
            errors = [ln for ln in tail if ln.startswith("error")]
            return (f"`{' '.join(cmd)}` failed ({errors[0] if errors else 'see above'}); "
                    "--tasks-client PATH takes a binary built earlier")
        src = REPO / "target" / "release" / "examples" / "storm_tasks"
    if not src.is_file() or not os.access(src, os.X_OK):
        return f"{src} is not an executable"
    shutil.copy2(src, tmp / "storm_tasks")
    return ""


def ringtftpd_binary(tmp: Path) -> Path | None:
    src = Path(ARGS.ringtftpd) if ARGS.ringtftpd else REPO / "target" / "release" / "ringtftpd"
    if not src.exists() and not ARGS.ringtftpd:
        end = time.monotonic() + 900
        while not src.exists() and time.monotonic() < end:
            busy = subprocess.run(["pgrep", "-f", "cargo build"], capture_output=True).returncode == 0
            if not busy:
                log("building ringtftpd (cargo build --release -p ringtftp --bin ringtftpd)")
                subprocess.run(["cargo", "build", "--release", "-p", "ringtftp", "--bin",
                                "ringtftpd"], cwd=REPO, timeout=1800, check=False)
                break
            log("target/release/ringtftpd missing and a cargo build is running: waiting")
            time.sleep(10)
    if not src.exists():
        return None
    dst = tmp / "ringtftpd"
    shutil.copy2(src, dst)  # a rebuild during the run must not change what we measure
    return dst


def make_servers(root: Path, tmp: Path) -> tuple[list[Server], list[str]]:
    want = ARGS.servers.split(",") if ARGS.servers else list(ALL_SERVERS)
    servers: list[Server] = []
    skipped: list[str] = []
    exe: Path | str | None
    ring_exe: Path | None = None
    for name in want:
        if name in RINGTFTPD_VARIANTS:
            ring_exe = ring_exe or ringtftpd_binary(tmp)  # one copy for all variants
            exe = ring_exe
            if not exe:
                skipped.append(f"{name}: no binary (target/release/ringtftpd)")
                continue
            flags, env = RINGTFTPD_VARIANTS[name]
            p = free_udp_port()
            digest = hashlib.sha256(exe.read_bytes()).hexdigest()[:12]
            # --quiet-logs: warnings only, but the start line (target `ringtftpd`, the binary)
            # stays: it names the backend, which is checked.
            launcher = []
            if name == "ringtftpd-passed":
                activate = shutil.which("systemd-socket-activate")
                if not activate:
                    skipped.append(f"{name}: no systemd-socket-activate (apt-get install systemd)")
                    continue
                launcher = [activate, "--datagram", "-l", f"127.0.0.1:{p}"]
            servers.append(Server(name, str(exe), p,
                                  launcher +
                                  [str(exe), str(p), "--bind", "127.0.0.1", "--directory",
                                   str(root), "--shards", str(len(ARGS.server_cpus))] + flags
                                  + shlex.split(ARGS.ringtftpd_args)
                                  + (["--log-level", "warn,ringtftpd=info"] if ARGS.quiet_logs
                                     else []),
                                  f"{sh([str(exe), '--version']).splitlines()[0]} "
                                  f"(binary sha256 {digest})", env))
        elif name == "dnsmasq":
            exe = shutil.which("dnsmasq")
            if not exe:
                skipped.append("dnsmasq: not installed (apt-get install dnsmasq-base)")
                continue
            if os.geteuid() != 0:
                skipped.append("dnsmasq: needs root (TFTP on port 69 only)")
                continue
            # --tftp-max: concurrent transfers (default 50, which no storm fits in).
            argv = [exe, "--conf-file=/dev/null", "--port=0", "--enable-tftp",
                    f"--tftp-root={root}", "--listen-address=127.0.0.1", "--bind-interfaces",
                    "--keep-in-foreground", "--user=root", "--group=root", "--pid-file=",
                    "--tftp-max=20000", f"--log-facility={tmp / 'logs' / 'dnsmasq.syslog'}"]
            if ARGS.quiet_logs:
                argv.append("--quiet-tftp")
            servers.append(Server(name, exe, 69, argv, sh([exe, "--version"]).splitlines()[0]))
        elif name == "tftp-hpa":
            exe = shutil.which("in.tftpd")
            ver = sh([exe, "-V"]) if exe else ""
            if "tftp-hpa" not in ver:
                skipped.append("tftp-hpa: `in.tftpd` not installed (apt-get install tftpd-hpa)")
                continue
            p = free_udp_port()
            # -L: foreground; -s: chroot to the root; it forks a process per request.
            servers.append(Server(name, exe, p, [exe, "-L", "-a", f"127.0.0.1:{p}", "-s",
                                                 str(root)], ver.splitlines()[0]))
        elif name == "atftpd":
            exe = None
            for cand in (ARGS.atftpd, shutil.which("atftpd"),
                         str(PEERS_DIR / "atftpd" / "usr" / "sbin" / "atftpd")):
                if cand and os.access(cand, os.X_OK):
                    exe = cand
                    break
            if not exe:
                skipped.append("atftpd: not found (apt-get download atftpd; dpkg -x it into "
                               f"{PEERS_DIR}/atftpd; or --atftpd PATH)")
                continue
            p = free_udp_port()
            # --maxthread: default 100 concurrent transfers; --tftpd-timeout 0: never exit idle.
            servers.append(Server(name, exe, p,
                                  [exe, "--daemon", "--no-fork", "--port", str(p),
                                   "--bind-address", "127.0.0.1", "--user", "root", "--group",
                                   "root", "--maxthread", "20000", "--tftpd-timeout", "0",
                                   "--logfile", "/dev/null" if ARGS.quiet_logs
                                   else str(tmp / "logs" / "atftpd.log"), str(root)],
                                  "atftpd " + sh([exe, "--version"]).splitlines()[0]))
        else:
            sys.exit(f"unknown server {name!r} (one of "
                     f"{','.join(ALL_SERVERS + tuple(RINGTFTPD_VARIANTS)[1:])})")
    return servers, skipped


# ------------------------------------------------------------------------------ runs


def split(n: int, k: int) -> list[int]:
    """n split into k near-equal parts (the first ones get the remainder)."""
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def percentile(sorted_ms: list[float], p: float) -> float:
    """As storm_client computes it: the value at rank round(p/100 * (n-1))."""
    if not sorted_ms:
        return 0.0
    return sorted_ms[int(p / 100.0 * (len(sorted_ms) - 1) + 0.5)]


def merge_clients(parts: list[dict], lat_files: list[Path]) -> dict:
    """One result from several client processes run side by side: counts and CPU summed,
    the rate over the common wall time (first start to last end, CLOCK_MONOTONIC), the latency
    percentiles over every completed transfer's latency (from their --latencies files)."""
    m: dict = {"clients": len(parts)}
    for k in ("ok", "failed", "total", "started", "concurrency", "data_blocks", "dup_data",
              "dup_oack", "retransmits", "other_tid", "stray", "cpu_s", "user_s", "sys_s"):
        m[k] = sum(p[k] for p in parts)
    for k in ("failed_by", "error_codes"):
        m[k] = {}
        for p in parts:
            for why, n in p.get(k, {}).items():
                m[k][why] = m[k].get(why, 0) + n
    m["sources"], m["blksize"], m["file_bytes"] = (parts[0]["sources"], parts[0]["blksize"],
                                                   parts[0]["file_bytes"])
    m["deadline_hit"] = any(p["deadline_hit"] for p in parts)
    m["t_start"] = min(p["t_start"] for p in parts)
    m["t_end"] = max(p["t_end"] for p in parts)
    m["wall_s"] = m["t_end"] - m["t_start"]
    m["rate"] = m["ok"] / m["wall_s"] if m["wall_s"] > 0 else 0.0
    lats: list[float] = []
    for f in lat_files:
        lats += [float(x) for x in f.read_text().split()]
    lats.sort()
    if len(lats) != m["ok"]:
        raise ValueError(f"{len(lats)} latencies for {m['ok']} completed transfers")
    m["lat_ms"] = {"p50": percentile(lats, 50), "p90": percentile(lats, 90),
                   "p99": percentile(lats, 99), "max": lats[-1] if lats else 0.0}
    m["parts"] = parts
    return m


def client_exe(tmp: Path, client: str) -> Path:
    return tmp / ("storm_client" if client == "c" else "storm_tasks")


def run_clients(tmp: Path, client: str, port: int, total: int, conc: int,
                sources: str) -> tuple[dict, str]:
    """One client process (storm_client or storm_tasks) per client CPU, pinned to it, with the
    transfers and the concurrency split evenly; the results merged (one process: its own
    result, untouched)."""
    exe = client_exe(tmp, client)
    cpus = ARGS.client_cpus[:max(1, min(len(ARGS.client_cpus), conc))]
    totals, concs = split(total, len(cpus)), split(conc, len(cpus))
    several = len(cpus) > 1
    procs: list[tuple[subprocess.Popen, Path | None]] = []
    for i, cpu in enumerate(cpus):
        lat = tmp / f"latencies-{i}.txt" if several else None
        argv = ["taskset", "-c", str(cpu), str(exe),
                "--server", f"127.0.0.1:{port}", "--file", "storm.bin",
                "--expect", str(ARGS.expect or tmp / "root" / "storm.bin"),
                "--total", str(totals[i]), "--concurrency", str(concs[i]),
                "--blksize", str(BLKSIZE), "--timeout", str(ARGS.timeout),
                "--retries", str(ARGS.retries), "--sources", sources,
                "--deadline", str(ARGS.deadline)] + (["--latencies", str(lat)] if lat else [])
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
        PROCS[p.pid] = (p, exe.name, None)
        procs.append((p, lat))
    parts, errs = [], []
    end = time.monotonic() + ARGS.deadline + 30
    for p, _ in procs:
        try:
            out, err = p.communicate(timeout=max(1.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            stop_pid(p, exe.name)
            out, err = "", f"{exe.name} did not stop by its deadline"
        finally:
            PROCS.pop(p.pid, None)
        line = out.strip().splitlines()[-1] if out.strip() else ""
        try:
            parts.append(json.loads(line))
            if err.strip():
                errs.append(err.strip())
        except json.JSONDecodeError:
            errs.append(f"no JSON from {exe.name} (exit {p.returncode}): {err.strip()[-300:]}")
            parts.append({})
    if not all(parts):
        return {}, "; ".join(errs)
    if not several:
        return parts[0], "; ".join(errs)
    try:
        return merge_clients(parts, [lat for _, lat in procs if lat]), "; ".join(errs)
    except (OSError, ValueError, KeyError) as e:
        return {}, f"cannot merge the clients' results: {e}"


START_LINE = re.compile(r"serving .* with (\d+) shards? \((.+?)\)(?: directory=|\s*$)")


def check_backend(server: Server, pid: int, logpath: Path, offset: int) -> tuple[str, str, str]:
    """ringtftpd's start line ("serving DIR on ADDR with N shards (BACKEND)", printed once each
    shard has chosen its backend) from its log, checked against what the variant claims.
    Returns (start line from "with" on, error, note)."""
    line, m = "", None
    end = time.monotonic() + 5
    while time.monotonic() < end:
        with open(logpath, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        for ln in text.splitlines():
            if "serving " in ln:
                line, m = ln, START_LINE.search(ln)
                break
        if line:
            break
        time.sleep(0.05)
    if not m:
        return "", "", ("start line not found in its log (a --log-level above info hides it): "
                        "backend not checked")
    shown = line[m.start():m.end()].removesuffix(" directory=").strip()
    shards, backend = int(m.group(1)), m.group(2)
    want = len(ARGS.server_cpus)
    if shards != want and "--shards" not in ARGS.ringtftpd_args:
        return shown, f"runs {shards} shards, not {want}", ""
    if server.name == "ringtftpd-epoll" and backend != "epoll":
        return shown, f"claims epoll but its start line says {backend}", ""
    if server.name == "ringtftpd-tokio-uring" and not backend.startswith("tokio-uring"):
        return shown, f"claims tokio-uring but its start line says {backend}", ""
    if server.name == "ringtftpd" and backend == "epoll":
        return shown, "", "fell back to epoll (io_uring unavailable): not the io_uring engine"
    return shown, "", ""


def set_port(server: Server, port: int) -> None:
    """Give a server (not dnsmasq: port 69) another port, in its command line too."""
    old = str(server.port)
    server.argv = [str(port) if a == old else f"127.0.0.1:{port}" if a == f"127.0.0.1:{old}"
                   else a for a in server.argv]
    server.port = port


def case_flags(server: Server, case: str) -> list[str]:
    """The case's extra ringtftpd flags (storm10000: --max-per-client), unless --ringtftpd-args
    already sets them."""
    if server.name not in RINGTFTPD_VARIANTS:
        return []
    flags = CASES[case.partition("-")[0]][2]
    given = shlex.split(ARGS.ringtftpd_args)
    return [] if any(f in given for f in flags if f.startswith("--")) else list(flags)


def peak_memory(pid: int, cg: Path | None) -> dict:
    """The server's peak memory so far: VmHWM of its process (threads included, forked
    children not) and, where its cgroup has a memory controller, the cgroup's memory.peak
    (children and kernel memory such as socket buffers included), in KiB."""
    out: dict = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["vmhwm_kib"] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    if cg is not None:
        try:
            out["cg_peak_kib"] = int((cg / "memory.peak").read_text()) // 1024
        except (OSError, ValueError):
            pass
    return out


def run_server(server: Server, client: str, case: str, total: int, conc: int, sources: str,
               tmp: Path, cgr: Path | None) -> dict:
    res: dict = {"server": server.name, "client_name": client, "case": case}
    if server.name == "atftpd" and conc >= ATFTPD_MAX_CONCURRENCY:
        res["error"] = "skipped: atftpd uses select() and aborts above ~1000 descriptors"
        return res
    if server.name == "dnsmasq" and udp_port_bound(69):
        res["error"] = "port 69 is in use by another process"
        return res
    cg = None
    if cgr is not None:
        # A fresh cgroup per run (removed after it), so memory.peak is this run's.
        cg = cgr / f"ringtftp-storm-{server.name}"
        cg.mkdir(exist_ok=True)
        if cg not in CGROUPS:
            CGROUPS.append(cg)
    logpath = tmp / "logs" / f"{case}-{server.name}-{client}.log"
    extra = case_flags(server, case)
    if extra:
        res["extra_flags"] = extra
    enter = f"echo $$ > {shlex.quote(str(cg / 'cgroup.procs'))} && " if cg else ""
    env = {k: v for k, v in os.environ.items() if k != "RINGTFTP_BACKEND"} | server.env
    for attempt in (1, 2):
        if server.name != "dnsmasq":
            # A port chosen just now, not at the start: during the earlier runs anything on
            # the machine may have taken the old one.
            set_port(server, free_udp_port())
        script = (f"{enter}ulimit -n 65536 2>/dev/null || ulimit -n $(ulimit -Hn); "
                  f"exec taskset -c {cpu_list(ARGS.server_cpus)} "
                  + shlex.join(server.argv + extra))
        log_offset = logpath.stat().st_size if logpath.exists() else 0
        with open(logpath, "ab") as logf:
            proc = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.DEVNULL,
                                    stdout=logf, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=env)
        PROCS[proc.pid] = (proc, server.name, cg)
        end = time.monotonic() + 10
        while time.monotonic() < end and proc.poll() is None and not udp_port_bound(server.port):
            time.sleep(0.05)
        time.sleep(0.1)
        if proc.poll() is None and udp_port_bound(server.port):
            break
        with open(logpath, "rb") as f:
            f.seek(log_offset)
            tail = " / ".join(f.read().decode(errors="replace").strip().splitlines()[-3:])
        res["error"] = f"did not start (exit {proc.poll()}): {tail[-300:] or 'no output'}"
        stop_pid(proc, server.name, cg)
        PROCS.pop(proc.pid, None)
        if attempt == 1 and server.name != "dnsmasq":
            log(f"  {server.name} {res['error']}: once more on another port")
            continue
        return res
    res.pop("error", None)
    try:
        if server.name in RINGTFTPD_VARIANTS:
            shown, bad, note = check_backend(server, proc.pid, logpath, log_offset)
            res["backend"] = shown
            server.backend = server.backend or shown
            if note:
                res["note"] = note
            if bad:
                res["error"] = f"wrong backend: {bad}"
                return res
        cpus = all_cpus()
        cpu0 = cg_cpu(cg) if cg else proc_cpu(proc.pid)
        shards0 = shard_cpu(proc.pid)
        busy0, self0 = cpu_busy_s(cpus), sum(os.times()[:2])
        data, err = run_clients(tmp, client, server.port, total, conc, sources)
        res |= peak_memory(proc.pid, cg)
        shards1 = shard_cpu(proc.pid)
        cpu1 = cg_cpu(cg) if cg else proc_cpu(proc.pid)
        busy = cpu_busy_s(cpus) - busy0 - (sum(os.times()[:2]) - self0)
        if not data:
            res["error"] = err or "client failed"
            return res
        res["client"] = data
        res["server_cpu_s"] = cpu1 - cpu0
        if shards1:  # ringtftpd: each shard thread's own CPU (utime+stime, clock ticks)
            res["shard_cpu_s"] = {k: v - shards0.get(k, 0.0) for k, v in sorted(shards1.items())}
        res["others_cpu_s"] = max(0.0, busy - (cpu1 - cpu0) - data.get("cpu_s", 0))
        if proc.poll() is not None:
            res["crashed"] = f"server exited during the run (status {proc.returncode})"
        return res
    finally:
        stop_pid(proc, server.name, cg)
        PROCS.pop(proc.pid, None)
        if cg is not None:
            try:
                cg.rmdir()
                CGROUPS.remove(cg)
            except (OSError, ValueError):
                pass


def run_floor(tmp: Path, shape: str, conc: int, cycles: int) -> dict:
    res: dict = {"server": f"floor-{shape}"}
    argv = [str(tmp / "floor"), shape, str(conc), str(cycles), "--payload", str(BLKSIZE + 4),
            "--server-cpu", str(ARGS.server_cpus[0]), "--client-cpu", str(ARGS.client_cpus[0])]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    PROCS[p.pid] = (p, "floor", None)
    try:
        out, err = p.communicate(timeout=ARGS.deadline + 30)
    except subprocess.TimeoutExpired:
        out, err = "", "floor did not finish in time"
    finally:
        stop_pid(p, "floor")
        # its forked client: same session, and it exits when done; make sure by PID
        PROCS.pop(p.pid, None)
    try:
        res["floor"] = json.loads(out.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        res["error"] = f"floor failed: {err.strip()[-300:]}"
    return res


# ------------------------------------------------------------------------------ figures


def derive(r: dict) -> dict:
    """Figures of one run."""
    if "floor" in r:
        f = r["floor"]
        return {"cycle_us": f["cpu_us_per_cycle"], "cycles_per_s": f["rate"],
                "server_busy": 100.0 * f["server_cpu_s"] / f["wall_s"] if f["wall_s"] else None}
    c = r["client"]
    blocks = c.get("data_blocks", 0)
    # busy %: CPU seconds over the wall time and over the CPUs that side was pinned to
    nserv, ncli = len(ARGS.server_cpus), c.get("clients", 1)
    d = {"rate": c["rate"], "p50": c["lat_ms"]["p50"], "p99": c["lat_ms"]["p99"],
         "ok": c["ok"], "failed": c["failed"], "client_cpu": c["cpu_s"],
         "client_busy": 100.0 * c["cpu_s"] / c["wall_s"] / ncli if c["wall_s"] else None,
         "server_busy": 100.0 * r["server_cpu_s"] / c["wall_s"] / nserv if c["wall_s"] else None,
         "server_cpu": r["server_cpu_s"], "others_cpu": r["others_cpu_s"],
         # DATA sent twice: duplicates the client received / the DATA blocks it received
         "dup_pct": 100.0 * c["dup_data"] / blocks if blocks else None,
         "rss_mib": r["vmhwm_kib"] / 1024 if "vmhwm_kib" in r else None,
         "cg_peak_mib": r["cg_peak_kib"] / 1024 if "cg_peak_kib" in r else None,
         "cpu_per_transfer_ms": 1e3 * r["server_cpu_s"] / c["ok"] if c["ok"] else None,
         "cycle_us": 1e6 * r["server_cpu_s"] / blocks if blocks else None}
    shards = list(r.get("shard_cpu_s", {}).values())
    if len(shards) > 1:
        mean = statistics.mean(shards)
        d["shard_max_ms"] = 1e3 * max(shards) / c["ok"] if c["ok"] else None
        d["shard_max_s"], d["shard_min_s"] = max(shards), min(shards)
        d["shard_max_over_mean"] = max(shards) / mean if mean else None
        d["shard_other_s"] = r["server_cpu_s"] - sum(shards)  # main thread, io-wq workers, ...
    return d


def median_of(runs: list[dict]) -> dict:
    good = [derive(r) for r in runs if "error" not in r]
    if not good:
        return {}
    out = {}
    for k in good[0]:
        vals = [g[k] for g in good if g.get(k) is not None]
        out[k] = statistics.median(vals) if vals else None
    return out


def fmt(v, spec: str = ".0f", none: str = "—") -> str:
    return none if v is None else format(v, spec)


def ratio(a, b) -> str:
    return "—" if a is None or not b else f"{a / b:.2f}×"


def failures(runs: list[dict]) -> str:
    parts = []
    for r in runs:
        if "error" in r:
            continue
        c = r["client"]
        if not c["failed"]:
            parts.append("0")
            continue
        why = ", ".join(f"{k} {v}" for k, v in c["failed_by"].items())
        codes = ", ".join(f"ERROR {k}: {v}" for k, v in c.get("error_codes", {}).items())
        parts.append(f"{c['failed']} ({why}{'; ' + codes if codes else ''})")
    return " / ".join(parts) if parts else "—"


def shard_cell(m: dict) -> str:
    if m.get("shard_max_ms") is None:
        return "—"
    return (f"{m['shard_max_ms']:.2f} ({m['shard_max_over_mean']:.2f}×; "
            f"{m['shard_min_s']:.2f}–{m['shard_max_s']:.2f} s)")


def rss_cell(m: dict) -> str:
    if m.get("rss_mib") is None:
        return "—"
    cg = m.get("cg_peak_mib")
    return f"{m['rss_mib']:.1f}" + (f" (cgroup {cg:.1f})" if cg is not None else "")


def render_case(case: str, total: int, conc: int, sources: str, results: list[dict]) -> list[str]:
    # One row per server and client (the floor rows have no client), in the order first run.
    by: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        by.setdefault((r["server"], r.get("client_name", "")), []).append(r)
    med = {key: median_of(runs) for key, runs in by.items()}
    floor_many = med.get(("floor-many", ""), {}).get("cycle_us")
    per_transfer = MIB // BLKSIZE + 1  # DATA blocks of one transfer
    sharded = len(ARGS.server_cpus) > 1
    head = (["server", "client", "transfers/s", "rate × dnsmasq", "p50 ms", "p99 ms",
             "p99 × dnsmasq", "server CPU / transfer ms", "CPU × dnsmasq"]
            + (["busiest shard CPU / transfer ms (max/mean; shards min–max CPU s)"]
               if sharded else [])
            + ["µs / DATA-ACK cycle", "cycle × floor many", "DATA sent twice %",
               "server peak RSS MiB", "failed", "server / client CPU busy %"])
    lines = [f"### {case}: {total} × 1 MiB, {conc} at once, sources {sources}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(cells: dict[str, str]) -> None:
        lines.append("| " + " | ".join(cells.get(h, "") for h in head) + " |")

    notes = []
    forks_noted = False
    for (name, client), runs in by.items():
        m = med[(name, client)]
        who = f"{name} with client {client}" if client else name
        errs = [r["error"] for r in runs if "error" in r]
        crashed = [r["crashed"] for r in runs if "crashed" in r]
        noisy = [r["others_cpu_s"] for r in runs if r.get("others_cpu_s", 0) >= 0.5]
        for n in dict.fromkeys(r["note"] for r in runs if "note" in r):
            notes.append(f"{who}: {n}")
        if errs:
            notes.append(f"{who}: {errs[0]}" + (f" ({len(errs)} of {len(runs)} runs)"
                                                if len(runs) > 1 else ""))
        if crashed:
            notes.append(f"{who}: {crashed[0]}")
        if noisy:
            notes.append(f"{who}: other processes used {max(noisy):.1f} CPU s during a run")
        if not m:
            row({"server": name, "client": client or "—", "transfers/s": "—",
                 "failed": errs[0] if errs else "—"})
            continue
        if name.startswith("floor"):
            # transfers/s: the cycle rate over the DATA blocks of a transfer (a ceiling: its
            # client does less than either storm client does per cycle)
            eq = m["cycles_per_s"] / per_transfer if m.get("cycles_per_s") else None
            row({"server": f"{name} (N={conc})", "client": "—", "transfers/s": f"({fmt(eq)})",
                 "µs / DATA-ACK cycle": fmt(m["cycle_us"], ".2f"),
                 "cycle × floor many": ratio(m["cycle_us"], floor_many),
                 "server / client CPU busy %": f"{fmt(m['server_busy'])} / —"})
            continue
        base = med.get(("dnsmasq", client), {})  # ratios to dnsmasq with the same client
        if name == "tftp-hpa" and m.get("cg_peak_mib") is None and not forks_noted:
            forks_noted = True
            notes.append("tftp-hpa: its peak RSS is its parent process's only (it forks a "
                         "process per request; no cgroup memory.peak here)")
        row({"server": name, "client": client, "transfers/s": fmt(m["rate"]),
             "rate × dnsmasq": ratio(m["rate"], base.get("rate")),
             "p50 ms": fmt(m["p50"]), "p99 ms": fmt(m["p99"]),
             "p99 × dnsmasq": ratio(m["p99"], base.get("p99")),
             "server CPU / transfer ms": fmt(m["cpu_per_transfer_ms"], ".2f"),
             "CPU × dnsmasq": ratio(m["cpu_per_transfer_ms"], base.get("cpu_per_transfer_ms")),
             "busiest shard CPU / transfer ms (max/mean; shards min–max CPU s)": shard_cell(m),
             "µs / DATA-ACK cycle": fmt(m["cycle_us"], ".2f"),
             "cycle × floor many": ratio(m["cycle_us"], floor_many),
             "DATA sent twice %": fmt(m["dup_pct"], ".2f"),
             "server peak RSS MiB": rss_cell(m),
             "failed": failures(runs),
             "server / client CPU busy %": f"{fmt(m['server_busy'])} / {fmt(m['client_busy'])}"})
    lines.append("")
    for n in notes:
        lines.append(f"- {n}")
    if notes:
        lines.append("")
    return lines


# ------------------------------------------------------------------------------ main


def select_cases() -> list[tuple[str, int, int, str]]:
    out = []
    wanted = ARGS.cases.split(",") if ARGS.cases else list(DEFAULT_CASES)
    if wanted == ["all"]:
        wanted = list(CASES)
    for w in wanted:
        base, _, src = w.partition("-")
        if base not in CASES or (src and src not in SOURCES):
            sys.exit(f"unknown case {w!r}: one of {', '.join(CASES)}, optionally -one or "
                     "-many (or all)")
        total, conc, _flags = CASES[base]
        if ARGS.quick:
            total, conc = total // 4, conc // 4
        for s in ([src] if src else SOURCES):
            out.append((f"{base}-{s}", total, conc, s))
    return out


def main() -> int:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--quick", action="store_true", help="counts divided by 4")
    ap.add_argument("--cases", help="storm500,storm2000 (the default), storm10000 (opt-in), "
                    "all, or one source of a case: storm500-one, storm2000-many, ...")
    ap.add_argument("--clients", default="c,tasks",
                    help="storm clients, each case run with each: c (storm_client.c), tasks "
                         "(tasks.rs, a tokio task per transfer); default c,tasks")
    ap.add_argument("--tasks-client", metavar="PATH",
                    help="a storm_tasks binary to use instead of building it with cargo")
    ap.add_argument("--servers", help="subset of " + ",".join(ALL_SERVERS) + " (default: all "
                    "of them), plus the opt-in ringtftpd-tokio-uring, ringtftpd-epoll, "
                    "ringtftpd-passed")
    ap.add_argument("--no-floor", action="store_true", help="do not run the floor")
    ap.add_argument("--repeat", type=int, default=1, help="runs per server and case (median)")
    ap.add_argument("--out", help="write the markdown report here (and FILE.json beside it)")
    ap.add_argument("--ringtftpd", help="ringtftpd binary (default target/release/ringtftpd)")
    ap.add_argument("--ringtftpd-args", default="", help="extra ringtftpd flags")
    ap.add_argument("--atftpd", help="atftpd binary")
    ap.add_argument("--quiet-logs", action="store_true",
                    help="servers log errors only (ringtftpd --log-level warn, dnsmasq "
                         "--quiet-tftp, atftpd to /dev/null); default: their default logging "
                         "into files")
    ap.add_argument("--expect", help="expected file given to the client (default: the served "
                                     "file; a different file makes every transfer fail)")
    ap.add_argument("--timeout", type=float, default=1.0, help="client per-packet timeout s")
    ap.add_argument("--retries", type=int, default=5, help="client retries")
    ap.add_argument("--deadline", type=int, default=0,
                    help="client deadline per run, s (default 300; 120 with --quick)")
    ap.add_argument("--quiet-wait", type=float, default=None,
                    help="wait up to S s for idle CPUs before each run (30; 10 with --quick)")
    ap.add_argument("--server-cpus", "--server-cpu", default="0", metavar="LIST",
                    help="CPUs of the server (taskset list such as 0-3; default 0): ringtftpd "
                         "gets --shards N, N = their number; every server is pinned to them")
    ap.add_argument("--client-cpus", "--client-cpu", default="1", metavar="LIST",
                    help="CPUs of the client (default 1): one client process per CPU, each "
                         "pinned to its CPU, the transfers and concurrency split evenly")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ARGS = ap.parse_args()
    ARGS.deadline = ARGS.deadline or (120 if ARGS.quick else 300)
    ARGS.clients = list(dict.fromkeys(c.strip() for c in ARGS.clients.split(",") if c.strip()))
    if not ARGS.clients or any(c not in CLIENTS for c in ARGS.clients):
        sys.exit(f"--clients {','.join(ARGS.clients)!r}: a list of {', '.join(CLIENTS)}")
    ARGS.server_cpus = parse_cpus(ARGS.server_cpus, "--server-cpus")
    ARGS.client_cpus = parse_cpus(ARGS.client_cpus, "--client-cpus")
    if set(ARGS.server_cpus) & set(ARGS.client_cpus):
        log(f"warning: server CPUs {cpu_list(ARGS.server_cpus)} and client CPUs "
            f"{cpu_list(ARGS.client_cpus)} overlap: they compete, and busy % means little")
    if ARGS.quiet_wait is None:
        ARGS.quiet_wait = 10.0 if ARGS.quick else 30.0
    command = shlex.join([sys.argv[0]] + sys.argv[1:])

    atexit.register(cleanup)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    cases = select_cases()
    tmp = Path(tempfile.mkdtemp(prefix="ringtftp-storm-"))
    tmp.chmod(0o755)
    (tmp / "logs").mkdir()
    root = tmp / "root"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    try:
        for src, exe in (("storm_client.c", "storm_client"), ("floor.c", "floor")):
            cc = subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-o", str(tmp / exe),
                                 str(HERE / src)], capture_output=True, text=True, timeout=120)
            if cc.returncode != 0 or cc.stderr.strip():
                log(f"gcc {src}:\n{cc.stderr}")
            if cc.returncode != 0:
                return 2
        clients_skipped = []
        if "tasks" in ARGS.clients:
            why = tasks_client(tmp)
            if why:
                log(f"skipped client tasks: {why}")
                clients_skipped.append(f"tasks: {why}")
                ARGS.clients.remove("tasks")
        if not ARGS.clients:
            log("no client left to run")
            return 2
        (root / "storm.bin").write_bytes(os.urandom(MIB))
        (root / "storm.bin").chmod(0o644)

        cgr = cg_root()
        cpu_method = ("cgroup v2 cpu.stat usage_usec of a cgroup per server (children included)"
                      if cgr else "/proc/PID/stat utime+stime+cutime+cstime (no writable "
                                  "cgroup v2: forked children count only once reaped)")
        cg_memory = cg_has_memory(cgr)
        servers, skipped = make_servers(root, tmp)
        for s in skipped:
            log(f"skipped {s}")

        results: dict[str, list[dict]] = {c[0]: [] for c in cases}
        for case, total, conc, sources in cases:
            blocks = total * (MIB // BLKSIZE + 1)
            # every server with every client, then the floor (which has its own client)
            entries: list = [("server", s, cl) for s in servers for cl in ARGS.clients]
            if not ARGS.no_floor:
                entries += [("floor", "one", ""), ("floor", "many", "")]
            for rep in range(ARGS.repeat):
                order = entries if rep % 2 == 0 else entries[::-1]
                for kind, what, client in order:
                    wait_quiet(ARGS.quiet_wait)
                    label = (f"{what.name} with client {client}" if kind == "server"
                             else f"floor-{what}")
                    log(f"{case} run {rep + 1}/{ARGS.repeat}: {label}")
                    if kind == "server":
                        r = run_server(what, client, case, total, conc, sources, tmp, cgr)
                    else:
                        r = run_floor(tmp, what, conc, blocks)
                    r["case"], r["repeat"] = case, rep
                    results[case].append(r)
                    if "error" in r:
                        log(f"  {label}: {r['error']}")
                    elif "client" in r:
                        c = r["client"]
                        rss = r.get("vmhwm_kib")
                        log(f"  {label}: {c['ok']} ok, {c['failed']} failed, {c['rate']:.0f}/s, "
                            f"server CPU {r['server_cpu_s']:.2f} s, {c['dup_data']} DATA sent "
                            f"twice" + (f", server peak RSS {rss / 1024:.1f} MiB" if rss else ""))
                    else:
                        log(f"  {label}: {r['floor']['cpu_us_per_cycle']:.2f} µs/cycle")

        commit = sh(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
        dirty = sh(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
        nserv, ncli = len(ARGS.server_cpus), len(ARGS.client_cpus)
        head = ["# Lock-step TFTP storm (independent clients)", "",
                f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
                f"- commit: {commit}" + (" + uncommitted changes" if dirty else ""),
                f"- kernel: {platform.system()} {platform.release()} ({platform.machine()})",
                f"- CPU: {cpu_model()}, {os.cpu_count()} CPUs; server on CPU"
                f"{'s' if nserv > 1 else ''} {cpu_list(ARGS.server_cpus)}"
                + (f" (ringtftpd --shards {nserv}; single-threaded peers use one core of them)"
                   if nserv > 1 else "")
                + f", client on CPU{'s' if ncli > 1 else ''} {cpu_list(ARGS.client_cpus)}"
                + (f" ({ncli} client processes, one per CPU, results merged)"
                   if ncli > 1 else "")
                + (f"; the floor's server on CPU {ARGS.server_cpus[0]}, its client on CPU "
                   f"{ARGS.client_cpus[0]}"
                   if nserv > 1 or ncli > 1 else ""),
                f"- command: `{command}`",
                "- clients: " + "; ".join(f"`{c}`: {CLIENTS[c]}" for c in ARGS.clients)
                + "".join(f"; skipped {c}" for c in clients_skipped)
                + f"; each lock-step (no windowsize), blksize {BLKSIZE}, timeout "
                f"{ARGS.timeout:g} s, {ARGS.retries} retries, every byte compared; repeats "
                f"per figure: {ARGS.repeat} (median)",
                "- server peak RSS: VmHWM of the server process (/proc/PID/status, read before "
                "it is stopped)" + ("; in parentheses its cgroup's memory.peak (forked children "
                                    "and kernel memory such as socket buffers included; a fresh "
                                    "cgroup per run)" if cg_memory else ""),
                f"- server CPU: {cpu_method}"
                + ("; per shard: utime+stime of its shard-* thread (/proc/PID/task), the rest "
                   "(main thread, io_uring workers) only in the total" if nserv > 1 else ""),
                "- servers:"]
        for s in servers:
            head.append(f"  - {s.name}: {s.version}: `{s.command()}`")
            if s.name in RINGTFTPD_VARIANTS:
                head.append(f"    - its start line: `{s.backend or 'not found'}`")
        for s in skipped:
            head.append(f"  - skipped {s}")
        for base in dict.fromkeys(c[0].partition("-")[0] for c in cases):
            flags = CASES[base][2]
            if flags and any(s.name in RINGTFTPD_VARIANTS for s in servers):
                head.append(f"  - {base}: ringtftpd also gets `{shlex.join(flags)}` (unless "
                            "--ringtftpd-args sets it): its default of 4096 transfers per "
                            "client address would refuse most of them")
        head += ["", "Ratios: rate, p99 and CPU per transfer to dnsmasq's with the same client; "
                 "CPU per DATA/ACK cycle "
                 "(server CPU / DATA blocks the client received) to the `many` floor's. "
                 "`failed` lists each run. CPU busy %: CPU seconds over the run's wall time and "
                 "the number of CPUs that side is pinned to; a client near 100 % means the "
                 "client, not the server, set the pace. DATA sent twice %: duplicate DATA "
                 "the client received / the DATA blocks it received. A floor's "
                 "transfers/s (in parentheses) is its cycle rate over the 715 DATA blocks of "
                 "a transfer.", ""]
        body = []
        for case, total, conc, sources in cases:
            body += render_case(case, total, conc, sources, results[case])
        report = "\n".join(head + body)
        print(report)
        if ARGS.out:
            Path(ARGS.out).write_text(report + "\n")
            doc = {"command": command, "commit": commit, "dirty": bool(dirty),
                   "kernel": platform.release(), "cpu_model": cpu_model(),
                   "server_cpus": ARGS.server_cpus, "client_cpus": ARGS.client_cpus,
                   "clients": ARGS.clients, "clients_skipped": clients_skipped,
                   "cpu_method": cpu_method,
                   "servers": [vars(s) for s in servers], "skipped": skipped,
                   "cases": [{"case": c, "transfers": t, "concurrency": n, "sources": s}
                             for c, t, n, s in cases],
                   "runs": results}
            Path(ARGS.out + ".json").write_text(json.dumps(doc, indent=1) + "\n")
            log(f"wrote {ARGS.out} and {ARGS.out}.json")
        return 0
    finally:
        cleanup()
        if ARGS.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
