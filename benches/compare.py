#!/usr/bin/env python3
"""Side-by-side comparison of ringtftpd with the TFTP servers people would otherwise use.

Usage (as root, on Linux, from anywhere in the repository):

    benches/compare.py                    # the standard cases (about 13 min on 2 idle CPUs)
    benches/compare.py --quick            # smaller counts: a sanity run (about 4.5 min)
    benches/compare.py --full             # also the "data hall at once" case (about 15 min)
    benches/compare.py --out results.md   # also write the report (and results.md.json)
    benches/compare.py --render results.md.json   # print that report again
    benches/compare.py --servers ringtftpd,dnsmasq --cases storm500,bulk16

Other options: --no-build (use the binaries already in target/release), --keep (keep the
temporary directory with every loadgen JSON and server log), --atftpd PATH, --server-cpu N and
--load-cpu N (default 0 and 1), --ringtftpd-args '...' (extra daemon flags), --quiet-wait S and
--noisy-retries N (see below), --list (print the cases and exit).

Other work on the machine spoils the figures: before each run the script waits (up to
--quiet-wait, 60 s; 10 s with --quick) for both CPUs to be idle for a second; after it, it
computes how much CPU anything other than the server, loadgen and itself used meanwhile
(/proc/stat), re-runs a run shorter than 2 minutes (loss runs excepted) up to --noisy-retries
(2; 1 with --quick) times when that exceeds 0.2 CPU, keeps the quietest, and says "others used
X CPU meanwhile" in the notes of any run where it was >= 0.1. On a busy machine the waits and
re-runs can make a run several times longer.

What it does:

1. Builds the release binaries (`cargo build --release -p ringtftp --bin ringtftpd` and
   `cargo build --release -p loadgen`).
2. Writes random files into a temporary directory: 4 KiB, 1 MiB and 64 MiB (16 MiB with --quick).
3. For each installed server -- ringtftpd, tftp-hpa's `in.tftpd`, `atftpd` and `dnsmasq` -- and
   each case, starts a fresh server by hand on a loopback port (dnsmasq serves TFTP on port 69
   only, so it gets 127.0.0.1:69), pinned to CPU 0 with `taskset -c 0`, runs loadgen pinned to
   CPU 1, and stops the server by PID (SIGTERM, then SIGKILL, then any forked child left in its
   cgroup). Nothing is started as a system service.
4. Prints (and with --out writes) one markdown table per case: rate, p50/p99, failures, server
   CPU seconds and per transfer, peak memory, each with its ratio to the best peer (the best of
   the servers other than ringtftpd among those with no failure; when every peer failed some,
   the peer that completed the most transfers). The 2000-concurrent storm also gives the memory
   table (peak memory at 2000 lock-step transfers in flight).

Every transfer is verified (`--sha256`) and loadgen spreads its clients over
`--sources 127.0.0.1-127.0.0.64` (ringtftpd caps concurrent transfers per client address at 4096, `--max-per-client`).

Peers: `apt-get install tftpd-hpa dnsmasq-base` (with a /usr/sbin/policy-rc.d that exits 101 so
no service starts). atftpd conflicts with tftpd-hpa: `apt-get download atftpd` and
`dpkg -x atftpd_*.deb DIR`, then pass `--atftpd DIR/usr/sbin/atftpd` (the script also looks in
/tmp/ringtftp-bench-peers/atftpd). A server that is not found is skipped and said so.

Server CPU time: each server runs in its own cgroup v2
(/sys/fs/cgroup[/unified]/ringtftp-bench-NAME, removed at the end), whose cpu.stat usage_usec
also counts the processes tftp-hpa forks per request. When no cgroup v2
is writable the script falls back to /proc/PID/stat (utime+stime+cutime+cstime: children count
once reaped) and says so in the report. Peak memory: VmHWM of the server process; for a server
that forks (tftp-hpa), the largest sum of PSS over its processes, sampled every 200 ms or
more (the
cgroup v1 memory controller of this kind of machine is not ours to use), marked so in the table.

Every step is bounded: loadgen --deadline per case, a subprocess timeout beyond it, timeouts on
server start and stop; the servers are stopped on any exit (finally, SIGINT, SIGTERM).
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCES = "127.0.0.1-127.0.0.64"
MIB = 1 << 20
BLKSIZE = 1468
NOFILE = 65536


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- cases


@dataclass
class Case:
    key: str
    title: str
    file: str  # "4k", "1m" or "big"
    clients: int
    transfers: int
    windowsize: int | None = None
    loss: float = 0.0
    timeout: str = "1s"
    retries: int = 5
    deadline_s: int = 600
    kind: str = "storm"  # storm | bulk | loss | boot
    full_only: bool = False
    over_s: float = 0.0  # boot: the power-on wave's length (`clients` machines)


def cases_for(quick: bool, full: bool) -> list[Case]:
    # Bulk cases repeat the download (one at a time): a single windowed 64 MiB download lasts a
    # few hundred milliseconds, too short for a stable MB/s on a shared VM.
    if quick:
        c = [
            Case("storm500", "storm: 400 × 1 MiB, 100 concurrent, blksize 1468, lock-step",
                 "1m", 100, 400, deadline_s=180),
            Case("storm2000", "storm: 800 × 1 MiB, 400 concurrent, blksize 1468, lock-step",
                 "1m", 400, 800, deadline_s=240),
            Case("tiny", "tiny storm: 2000 × 4 KiB, 200 concurrent, blksize 1468",
                 "4k", 200, 2000, deadline_s=120),
            Case("bulk16", "bulk: 16 MiB, one client, blksize 1468, windowsize 16",
                 "big", 1, 1, windowsize=16, kind="bulk", deadline_s=120),
            Case("bulk64", "bulk: 16 MiB, one client, blksize 1468, windowsize 64",
                 "big", 1, 1, windowsize=64, kind="bulk", deadline_s=120),
            Case("bulk1", "bulk: 16 MiB, one client, blksize 1468, lock-step",
                 "big", 1, 1, kind="bulk", deadline_s=180),
            Case("loss", "loss: 10 × 1 MiB, 10 concurrent, blksize 1468, 2 % loss both ways",
                 "1m", 10, 10, loss=0.02, kind="loss", deadline_s=300),
            Case("boot", "hall boot: 400 machines powered on over 5 s, each edk2 1 MiB "
                 "then iPXE lock-step 8 MiB", "1m", 400, 400, kind="boot", over_s=5,
                 deadline_s=300),
            Case("hall", "data hall at once: 2000 × 1 MiB, all 2000 concurrent, "
                 "client timeout 1 s, 5 retries", "1m", 2000, 2000, deadline_s=600,
                 full_only=True),
        ]
    else:
        c = [
            Case("storm500", "storm: 2000 × 1 MiB, 500 concurrent, blksize 1468, lock-step",
                 "1m", 500, 2000, deadline_s=600),
            Case("storm2000", "storm: 4000 × 1 MiB, 2000 concurrent, blksize 1468, lock-step",
                 "1m", 2000, 4000, deadline_s=900),
            Case("tiny", "tiny storm: 10 000 × 4 KiB, 1000 concurrent, blksize 1468",
                 "4k", 1000, 10000, deadline_s=300),
            Case("bulk16", "bulk: 5 × 64 MiB, one client at a time, blksize 1468, windowsize 16",
                 "big", 1, 5, windowsize=16, kind="bulk", deadline_s=300),
            Case("bulk64", "bulk: 5 × 64 MiB, one client at a time, blksize 1468, windowsize 64",
                 "big", 1, 5, windowsize=64, kind="bulk", deadline_s=300),
            Case("bulk1", "bulk: 3 × 64 MiB, one client at a time, blksize 1468, lock-step",
                 "big", 1, 3, kind="bulk", deadline_s=600),
            Case("loss", "loss: 200 × 1 MiB, 50 concurrent, blksize 1468, 2 % loss both ways",
                 "1m", 50, 200, loss=0.02, kind="loss", deadline_s=900),
            Case("boot", "hall boot: 2000 machines powered on over 10 s, each edk2 1 MiB "
                 "then iPXE lock-step 8 MiB", "1m", 2000, 2000, kind="boot", over_s=10,
                 deadline_s=900),
            Case("hall", "data hall at once: 10 000 × 1 MiB, all 10 000 concurrent, "
                 "client timeout 1 s, 5 retries", "1m", 10000, 10000, deadline_s=1200,
                 full_only=True),
        ]
    return [x for x in c if full or not x.full_only]


# ------------------------------------------------------------------------------------- servers


@dataclass
class Server:
    name: str
    exe: str
    port: int = 0
    argv: list[str] = field(default_factory=list)
    note: str = ""


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


def find_atftpd(explicit: str | None) -> str | None:
    for cand in [explicit, shutil.which("atftpd"),
                 "/tmp/ringtftp-bench-peers/atftpd/usr/sbin/atftpd"]:
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def make_servers(args, root: Path, ringtftpd: Path) -> tuple[list[Server], list[str]]:
    servers: list[Server] = []
    skipped: list[str] = []
    want = set(args.servers.split(",")) if args.servers else None

    def wanted(n):
        return want is None or n in want

    if wanted("ringtftpd"):
        p = free_udp_port()
        servers.append(Server("ringtftpd", str(ringtftpd), p,
                              [str(ringtftpd), str(p), "--bind", "127.0.0.1", "--directory",
                               str(root), "--log-level", "warn"] + shlex.split(args.ringtftpd_args)))
    if wanted("tftp-hpa"):
        exe = shutil.which("in.tftpd")
        # atftpd's package also ships an in.tftpd (a link to atftpd): make sure it is tftp-hpa's.
        ver = subprocess.run([exe, "-V"], capture_output=True, text=True, timeout=10) \
            if exe else None
        if ver is not None and "tftp-hpa" in ver.stdout + ver.stderr:
            p = free_udp_port()
            # -L: listen in the foreground; -s: chroot to the root; it forks per request.
            servers.append(Server("tftp-hpa", exe, p,
                                  [exe, "-L", "-a", f"127.0.0.1:{p}", "-s", str(root)]))
        else:
            skipped.append("tftp-hpa (`in.tftpd`) not installed")
    if wanted("atftpd"):
        exe = find_atftpd(args.atftpd)
        if exe:
            p = free_udp_port()
            # --maxthread: atftpd refuses requests beyond it (default 100); give it all.
            servers.append(Server("atftpd", exe, p,
                                  [exe, "--daemon", "--no-fork", "--port", str(p),
                                   "--bind-address", "127.0.0.1", "--user", "root",
                                   "--group", "root", "--maxthread", "20000",
                                   "--tftpd-timeout", "0", "--logfile", "/dev/null", str(root)]))
        else:
            skipped.append("atftpd not found (apt-get download atftpd; dpkg -x; --atftpd PATH)")
    if wanted("dnsmasq"):
        exe = shutil.which("dnsmasq")
        if not exe:
            skipped.append("dnsmasq not installed")
        elif os.geteuid() != 0:
            skipped.append("dnsmasq needs root (it serves TFTP on port 69 only)")
        else:
            # --tftp-max: concurrent transfers (default 50); give it all.
            servers.append(Server("dnsmasq", exe, 69,
                                  [exe, "--conf-file=/dev/null", "--port=0", "--enable-tftp",
                                   f"--tftp-root={root}", "--listen-address=127.0.0.1",
                                   "--bind-interfaces", "--keep-in-foreground",
                                   "--log-facility=/dev/null", "--quiet-tftp", "--user=root",
                                   "--group=root", "--pid-file=", "--tftp-max=20000"]))
    return servers, skipped


def server_version(s: Server) -> str:
    try:
        if s.name == "ringtftpd":
            out = subprocess.run([s.exe, "--version"], capture_output=True, text=True, timeout=10)
            return out.stdout.strip().splitlines()[0]
        if s.name == "tftp-hpa":
            out = subprocess.run([s.exe, "-V"], capture_output=True, text=True, timeout=10)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        if s.name == "atftpd":
            out = subprocess.run([s.exe, "--version"], capture_output=True, text=True, timeout=10)
            return "atftpd " + (out.stdout + out.stderr).strip().splitlines()[0]
        if s.name == "dnsmasq":
            out = subprocess.run([s.exe, "--version"], capture_output=True, text=True, timeout=10)
            return out.stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        pass
    return "?"


# -------------------------------------------------------------------------------- measurement


def cgroup_v2_root() -> Path | None:
    for cand in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]:
        p = Path(cand)
        if (p / "cgroup.procs").exists() and (p / "cgroup.controllers").exists():
            probe = p / f"ringtftp-bench-probe-{os.getpid()}"
            try:
                probe.mkdir()
                ok = (probe / "cpu.stat").exists()
                probe.rmdir()
                if ok:
                    return p
            except OSError:
                continue
    return None


def read_cpu_stat(cg: Path) -> float:
    for line in (cg / "cpu.stat").read_text().splitlines():
        k, v = line.split()
        if k == "usage_usec":
            return int(v) / 1e6
    return 0.0


def proc_cpu(pid: int) -> float:
    """utime+stime+cutime+cstime of a process, in seconds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / os.sysconf("SC_CLK_TCK")


def status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def cpu_busy_s(cpus: set[int]) -> float:
    """user+nice+system seconds spent so far by these CPUs (/proc/stat)."""
    total = 0
    with open("/proc/stat") as f:
        for line in f:
            parts = line.split()
            if parts[0].startswith("cpu") and parts[0] != "cpu" and int(parts[0][3:]) in cpus:
                total += int(parts[1]) + int(parts[2]) + int(parts[3])
    return total / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_wait: float) -> float:
    """Wait (at most max_wait s) until the two CPUs are nearly idle for a second; return the
    CPUs' worth of time others used in the last second measured."""
    cpus = {ARGS.server_cpu, ARGS.load_cpu}
    end = time.monotonic() + max_wait
    while True:
        b0, s0 = cpu_busy_s(cpus), sum(os.times()[:2])
        time.sleep(1.0)
        busy = cpu_busy_s(cpus) - b0 - (sum(os.times()[:2]) - s0)
        if busy < 0.15 or time.monotonic() >= end:
            return max(0.0, busy)


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                kids = Path(f"/proc/{p}/task/{t}/children").read_text().split()
                for k in kids:
                    out.append(int(k))
                    todo.append(int(k))
        except OSError:
            pass
    return out


class Running:
    """A server process started by this script, in its own cgroup when possible."""

    def __init__(self, server: Server, cg_root: Path | None, logdir: Path, tag: str):
        self.server = server
        self.cg: Path | None = None
        if cg_root is not None:
            self.cg = cg_root / f"ringtftp-bench-{server.name}"
            self.cg.mkdir(exist_ok=True)
        self.logpath = logdir / f"{tag}-{server.name}.log"
        self.logf = open(self.logpath, "wb")
        enter = f"echo $$ > {shlex.quote(str(self.cg / 'cgroup.procs'))} && " if self.cg else ""
        script = (f"{enter}ulimit -n {NOFILE} 2>/dev/null || ulimit -n $(ulimit -Hn); "
                  f"exec taskset -c {ARGS.server_cpu} " + shlex.join(server.argv))
        self.proc = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.pid = self.proc.pid
        self.peak_pss_kib = 0
        self.peak_procs = 1
        self._stop_sampling = threading.Event()
        self._sampler: threading.Thread | None = None
        LIVE.append(self)

    def pids(self) -> list[int]:
        if self.cg is not None:
            try:
                return [int(x) for x in (self.cg / "cgroup.procs").read_text().split()]
            except OSError:
                return []
        return ([self.pid] if self.proc.poll() is None else []) + descendants(self.pid)

    def wait_ready(self, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return False
            if udp_port_bound(self.server.port):
                time.sleep(0.1)
                return self.proc.poll() is None
            time.sleep(0.05)
        return False

    def cpu(self) -> float:
        if self.cg is not None:
            return read_cpu_stat(self.cg)
        return proc_cpu(self.pid)

    def start_sampling(self) -> None:
        def run():
            pause = 0.2
            while not self._stop_sampling.wait(pause):
                t = time.monotonic()
                ps = self.pids()
                self.peak_procs = max(self.peak_procs, len(ps))
                if len(ps) > 1:
                    self.peak_pss_kib = max(self.peak_pss_kib, sum(pss_kib(p) for p in ps))
                # Thousands of forked children: sample less often, so the sampler takes at
                # most a tenth of loadgen's CPU.
                pause = max(0.2, 10 * (time.monotonic() - t))
        self._sampler = threading.Thread(target=run, daemon=True)
        self._sampler.start()

    def stop_sampling(self) -> None:
        self._stop_sampling.set()
        if self._sampler:
            self._sampler.join(timeout=5)

    def hwm_kib(self) -> int:
        return status_kib(self.pid, "VmHWM")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def exit_description(self) -> str:
        rc = self.proc.poll()
        if rc is None:
            return "running"
        if rc < 0:
            return f"killed by {signal.Signals(-rc).name}"
        return f"exited with status {rc}"

    def stop(self) -> None:
        self.stop_sampling()
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    log(f"{self.server.name} (PID {self.pid}) did not die on SIGKILL")
        # Children it forked (tftp-hpa), each by PID.
        for _ in range(50):
            left = self.pids()
            if not left:
                break
            for p in left:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        self.logf.close()
        if self in LIVE:
            LIVE.remove(self)


LIVE: list[Running] = []
CGROUPS: set[Path] = set()


def cleanup() -> None:
    for r in list(LIVE):
        try:
            r.stop()
        except Exception as e:  # noqa: BLE001 - best effort on the way out
            log(f"stopping {r.server.name} (PID {r.pid}): {e}")
    for cg in CGROUPS:
        try:
            cg.rmdir()
        except OSError:
            pass


def on_signal(signum, _frame):
    log(f"signal {signal.Signals(signum).name}: stopping servers")
    cleanup()
    sys.exit(128 + signum)


# ---------------------------------------------------------------------------------- probing


def probe_options(port: int, filename: str, windowsize: int | None = 16) -> str:
    """Send one RRQ asking blksize 1468 (and windowsize); say what the server granted."""
    rrq = b"\x00\x01" + filename.encode() + b"\x00octet\x00blksize\x001468\x00"
    if windowsize:
        rrq += b"windowsize\x00" + str(windowsize).encode() + b"\x00"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.bind(("127.0.0.1", 0))
        s.sendto(rrq, ("127.0.0.1", port))
        try:
            data, peer = s.recvfrom(70000)
        except socket.timeout:
            return "no answer"
        op = struct.unpack("!H", data[:2])[0]
        err = b"\x00\x05\x00\x00probe done\x00"
        s.sendto(err, peer)
        if op == 6:
            parts = data[2:].split(b"\x00")
            opts = {parts[i].decode().lower(): parts[i + 1].decode()
                    for i in range(0, len(parts) - 1, 2) if parts[i]}
            granted = " ".join(f"{k}={v}" for k, v in opts.items())
            return granted or "empty OACK"
        if op == 3:
            return "options ignored (DATA 1, blksize 512)"
        if op == 5:
            return "ERROR " + data[4:].split(b"\x00")[0].decode(errors="replace")
        return f"opcode {op}"


# ---------------------------------------------------------------------------------- running


@dataclass
class Result:
    server: str
    case: str
    data: dict | None = None
    cpu_s: float | None = None
    hwm_kib: int = 0
    pss_kib: int = 0
    procs: int = 1
    crashed: str = ""
    error: str = ""
    wall_s: float = 0.0
    loadgen_cpu_s: float = 0.0
    other_cpu: float = 0.0  # CPUs' worth of time used by anything else during the run
    granted: str = ""
    attempts: int = 1


def run_case(case: Case, server: Server, files: dict, loadgen: Path, cg_root, tmp: Path,
             ) -> Result:
    res = Result(server.name, case.key)
    tag = f"{case.key}"
    if server.name == "dnsmasq" and udp_port_bound(69):
        res.error = "port 69 is in use by another process"
        return res
    r = Running(server, cg_root, tmp / "logs", tag)
    if r.cg is not None:
        CGROUPS.add(r.cg)
    try:
        if not r.wait_ready():
            res.error = f"did not start ({r.exit_description()}); see {r.logpath}"
            return res
        fname, sha, size = files[case.file]
        res.granted = probe_options(server.port, fname, case.windowsize)
        jpath = tmp / "json" / f"{case.key}-{server.name}.json"
        argv = [str(loadgen), f"127.0.0.1:{server.port}", fname,
                "--clients", str(case.clients), "--transfers", str(case.transfers),
                "--blksize", str(BLKSIZE), "--sha256", sha, "--sources", SOURCES,
                "--timeout", case.timeout, "--retries", str(case.retries),
                "--deadline", f"{case.deadline_s}s", "--json", str(jpath), "--quiet"]
        if case.kind == "boot":
            # A scenario: each machine fetches its boot program as UEFI edk2 does, then an
            # 8 MiB file lock-step as iPXE does (`examples/hall.toml` documents the format).
            name8, sha8, _ = files["8m"]
            scenario = tmp / "hall.toml"
            scenario.write_text(
                f'[[step]]\nfile = "{fname}"\nprofile = "edk2"\nsha256 = "{sha}"\n\n'
                f'[[step]]\nfile = "{name8}"\nprofile = "ipxe"\nsha256 = "{sha8}"\n')
            argv = [str(loadgen), f"127.0.0.1:{server.port}", "--scenario", str(scenario),
                    "--power-on", str(case.clients), "--over", f"{case.over_s}s",
                    "--sources", SOURCES, "--timeout", case.timeout,
                    "--retries", str(case.retries), "--deadline", f"{case.deadline_s}s",
                    "--json", str(jpath), "--quiet"]
        if case.windowsize:
            argv += ["--windowsize", str(case.windowsize)]
        if case.loss:
            argv += ["--loss", str(case.loss), "--seed", "1"]
        script = (f"ulimit -n {NOFILE} 2>/dev/null || ulimit -n $(ulimit -Hn); "
                  f"exec taskset -c {ARGS.load_cpu} " + shlex.join(argv))
        cpus = {ARGS.server_cpu, ARGS.load_cpu}
        cpu0 = r.cpu()
        busy0, self0 = cpu_busy_s(cpus), sum(os.times()[:2])
        r.start_sampling()
        t0 = time.monotonic()
        out_path = tmp / "logs" / f"{case.key}-{server.name}.loadgen.txt"
        with open(out_path, "wb") as out:
            lg = subprocess.Popen(["/bin/sh", "-c", script], stdout=out,
                                  stderr=subprocess.STDOUT)
            rc: int | str = "timeout"
            end = time.monotonic() + case.deadline_s + 60
            while time.monotonic() < end:
                pid, status, ru = os.wait4(lg.pid, os.WNOHANG)
                if pid:
                    lg.returncode = os.waitstatus_to_exitcode(status)
                    rc = lg.returncode
                    res.loadgen_cpu_s = ru.ru_utime + ru.ru_stime
                    break
                time.sleep(0.05)
            else:
                lg.kill()
                lg.wait(timeout=10)
        res.wall_s = time.monotonic() - t0
        time.sleep(0.3)  # let the last ACKs reach the server before reading its time
        r.stop_sampling()
        res.cpu_s = r.cpu() - cpu0
        ours = res.cpu_s + res.loadgen_cpu_s + (sum(os.times()[:2]) - self0)
        res.other_cpu = max(0.0, (cpu_busy_s(cpus) - busy0 - ours) / (res.wall_s + 0.3))
        res.hwm_kib = r.hwm_kib()
        res.pss_kib = r.peak_pss_kib
        res.procs = r.peak_procs
        if not r.alive():
            res.crashed = r.exit_description()
        if jpath.exists():
            try:
                res.data = json.loads(jpath.read_text())
            except json.JSONDecodeError as e:
                res.error = f"bad loadgen JSON: {e}"
        if res.data is None and not res.error:
            tail = out_path.read_text(errors="replace")[-300:]
            res.error = f"loadgen status {rc}: {tail.strip()}"
        return res
    finally:
        r.stop()


# --------------------------------------------------------------------------------- reporting


def fmt_dur(us: float | None) -> str:
    if us is None:
        return "–"
    if us >= 1e6:
        return f"{us / 1e6:.2f} s"
    if us >= 1e3:
        return f"{us / 1e3:.1f} ms"
    return f"{us:.0f} µs"


def fmt_num(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "–"
    if abs(x) >= 100:
        return f"{x:,.0f}".replace(",", " ")
    return f"{x:.{digits}f}"


def ratio(v: float | None, best: float | None) -> str:
    if v is None or best is None or best == 0:
        return ""
    return f" (×{v / best:.2f})"


def peak_mem_mib(r: Result) -> tuple[float | None, bool]:
    """Peak memory in MiB, and whether it is a sampled family PSS sum."""
    if r.data is None and not r.hwm_kib:
        return None, False
    if r.procs > 1 and r.pss_kib > r.hwm_kib:
        return r.pss_kib / 1024, True
    return (r.hwm_kib / 1024 if r.hwm_kib else None), False


def failures_text(r: Result) -> str:
    d = r.data
    if d is None:
        return "–"
    n = d.get("failed", 0)
    if not n:
        return "0"
    parts = ", ".join(f"{k} {v}" for k, v in sorted(d.get("failures", {}).items(),
                                                   key=lambda kv: -kv[1]))
    return f"{n} ({parts})" if parts else str(n)


def metrics(case: Case, r: Result) -> dict:
    d = r.data or {}
    ok = d.get("ok") or 0
    m = {
        "rate": d.get("transfers_per_s") if r.data else None,
        "mbps": d.get("mb_per_s") if r.data else None,
        "p50": d.get("transfer_us", {}).get("p50") if ok else None,
        "p99": d.get("transfer_us", {}).get("p99") if ok else None,
        "cpu": r.cpu_s,
        "cpu_per": (r.cpu_s / ok * 1e3) if (r.cpu_s is not None and ok) else None,
        "mb_per_cpu": (d.get("bytes", 0) / 1e6 / r.cpu_s) if (r.cpu_s and ok) else None,
        "mem": peak_mem_mib(r)[0],
    }
    return m


HIGHER = {"rate", "mbps", "mb_per_cpu"}


def best_peer(case: Case, results: list[Result], key: str) -> float | None:
    peers = [r for r in results if r.server != "ringtftpd" and r.data and r.data.get("ok")]
    clean = [r for r in peers if not r.data.get("failed") and not r.crashed]
    # With no clean peer, the reference is the peer that completed the most transfers (the
    # few survivors of a server that failed most of them would flatter its latency).
    pool = clean or ([max(peers, key=lambda r: r.data["ok"])] if peers else [])
    vals = [metrics(case, r)[key] for r in pool]
    vals = [v for v in vals if v is not None and v > 0]
    if not vals:
        return None
    return max(vals) if key in HIGHER else min(vals)


def table(case: Case, results: list[Result]) -> str:
    best = {k: best_peer(case, results, k)
            for k in ("rate", "mbps", "p50", "p99", "cpu", "cpu_per", "mb_per_cpu", "mem")}
    lines = [f"### {case.title}", ""]
    if case.kind == "bulk":
        head = ["server", "options granted", "MB/s ↑", "slowest download", "failures", "server CPU s ↓",
                "MB per CPU-s ↑", "peak mem MiB ↓", "notes"]
    else:
        head = ["server", "ok", "transfers/s ↑", "MB/s", "p50 ↓", "p99 ↓", "failures",
                "server CPU s", "CPU ms/transfer ↓", "peak mem MiB ↓", "notes"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" for _ in head) + "|")
    for r in results:
        m = metrics(case, r)
        notes = []
        if r.crashed:
            notes.append(f"**server {r.crashed}**")
        if r.error:
            notes.append(r.error)
        mem, sampled = peak_mem_mib(r)
        if sampled:
            notes.append(f"mem: PSS sum of up to {r.procs} processes")
        elif r.procs > 1:
            notes.append(f"up to {r.procs} processes")
        if r.data and r.data.get("options_ignored"):
            notes.append("options ignored")
        if case.kind == "boot" and r.data and r.data.get("machines"):
            mach = r.data["machines"]
            boot = mach.get("boot_us", {})
            notes.append(f"time to boot p50 {fmt_dur(boot.get('p50'))}, "
                         f"p99 {fmt_dur(boot.get('p99'))}; {mach.get('booted')} booted, "
                         f"{mach.get('failed')} failed, hall up after "
                         f"{fmt_num(mach.get('hall_s'), 2)} s")
        if r.data and r.data.get("error_messages"):
            msgs = "; ".join(f"{k}: {v}" for k, v in r.data["error_messages"].items())
            notes.append("ERROR says: " + msgs[:120])
        if r.other_cpu >= 0.1:
            notes.append(f"others used {r.other_cpu:.2f} CPU meanwhile"
                         + (f" (best of {r.attempts} runs)" if r.attempts > 1 else ""))
        mem_s = (fmt_num(mem) + ("*" if sampled else "") + ratio(mem, best["mem"])) \
            if mem is not None else "–"
        name = f"**{r.server}**" if r.server == "ringtftpd" else r.server
        if case.kind == "bulk":
            time_s = fmt_dur(r.data["transfer_us"]["max"]) if (r.data and r.data.get("ok")) \
                else "–"
            row = [name, r.granted or "?",
                   fmt_num(m["mbps"]) + ratio(m["mbps"], best["mbps"]),
                   time_s, failures_text(r),
                   fmt_num(m["cpu"], 2) + ratio(m["cpu"], best["cpu"]),
                   fmt_num(m["mb_per_cpu"]) + ratio(m["mb_per_cpu"], best["mb_per_cpu"]),
                   mem_s, "; ".join(notes)]
        else:
            d = r.data or {}
            row = [name, f"{d.get('ok', '–')}/{d.get('ok', 0) + d.get('failed', 0)}"
                   if r.data else "–",
                   fmt_num(m["rate"]) + ratio(m["rate"], best["rate"]),
                   fmt_num(m["mbps"]),
                   fmt_dur(m["p50"]) + ratio(m["p50"], best["p50"]),
                   fmt_dur(m["p99"]) + ratio(m["p99"], best["p99"]),
                   failures_text(r),
                   fmt_num(m["cpu"], 2),
                   fmt_num(m["cpu_per"], 2) + ratio(m["cpu_per"], best["cpu_per"]),
                   mem_s, "; ".join(notes)]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    return "\n".join(lines)


def memory_table(case: Case, results: list[Result]) -> str:
    best = best_peer(case, results, "mem")
    lines = [f"### memory: peak memory at {case.clients} concurrent lock-step transfers "
             f"(from the {case.transfers} × 1 MiB storm)", "",
             "| server | peak in flight | peak mem MiB ↓ | ≤ 32 MiB | how measured |",
             "|---|---|---|---|---|"]
    for r in results:
        mem, sampled = peak_mem_mib(r)
        how = (f"PSS sum of up to {r.procs} processes, sampled every 200 ms or more" if sampled
               else "VmHWM of the server process")
        pk = r.data.get("peak_active", "–") if r.data else "–"
        lines.append(f"| {r.server} | {pk} | "
                     f"{(fmt_num(mem) + ratio(mem, best)) if mem is not None else '–'} | "
                     f"{'–' if mem is None else 'yes' if mem <= 32 else 'no'} | {how} |")
    lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- main


def render(doc: dict) -> str:
    """The markdown report from the raw results (as saved in OUT.json)."""
    cases = [Case(**c) for c in doc["cases"]]
    results = {k: [Result(**r) for r in v] for k, v in doc["results"].items()}
    out = ["# ringtftpd side by side", "", f"Command: `{doc['command']}`", ""]
    out += doc["header"]
    out += ["", "Ratios are to the best peer (the best of the servers other than ringtftpd, "
            "among those with no failure; when every peer failed some, the peer that completed "
            "the most transfers); ↑ higher is better, ↓ lower is better. MB = 10⁶ bytes. Peak "
            "mem marked * is a sampled PSS sum over a forking server's processes; otherwise "
            "VmHWM of the server process.", ""]
    for case in cases:
        out.append(table(case, results[case.key]))
        if case.key == "storm2000":
            out.append(memory_table(case, results[case.key]))
    out.append("Wall time per case: " + ", ".join(doc["timings"]) + ".")
    return "\n".join(out) + "\n"


def machine_lines(cpu_method: str) -> list[str]:
    cpu_model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src",
                                "loadgen", "Cargo.toml", "Cargo.lock"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit += " (working tree with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.TimeoutExpired):
        commit = "?"
    return [
        f"- machine: {os.cpu_count()} CPUs ({cpu_model}), {mem_gib:.0f} GiB, "
        f"Linux {platform.release()}",
        f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        f"- ringtftp commit: {commit}",
        f"- pinning: each server `taskset -c {ARGS.server_cpu}`, loadgen "
        f"`taskset -c {ARGS.load_cpu}`; a fresh server process per case",
        f"- server CPU time: {cpu_method}",
    ]


def main() -> int:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller counts, a fast sanity run")
    ap.add_argument("--full", action="store_true",
                    help="also the data hall case (10 000 concurrent; long)")
    ap.add_argument("--out", help="also write the markdown report to this file")
    ap.add_argument("--servers", help="comma-separated subset: ringtftpd,tftp-hpa,atftpd,dnsmasq")
    ap.add_argument("--cases", help="comma-separated subset of case keys (see --list)")
    ap.add_argument("--list", action="store_true", help="print the cases and exit")
    ap.add_argument("--render", metavar="OUT.json",
                    help="print the report again from the raw results of an earlier --out")
    ap.add_argument("--no-build", action="store_true", help="use the binaries in target/release")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--atftpd", help="path of an atftpd binary (e.g. unpacked with dpkg -x)")
    ap.add_argument("--ringtftpd-args", default="", help="extra arguments for ringtftpd")
    ap.add_argument("--quiet-wait", type=float,
                    help="before each run, wait up to this many seconds for idle CPUs "
                    "(default 60, 10 with --quick)")
    ap.add_argument("--noisy-retries", type=int,
                    help="re-runs (of runs under 2 minutes) when others used the CPUs "
                    "(default 2, 1 with --quick)")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ARGS = ap.parse_args()

    if ARGS.render:
        print(render(json.loads(Path(ARGS.render).read_text())), end="")
        return 0
    if ARGS.quiet_wait is None:
        ARGS.quiet_wait = 10 if ARGS.quick else 60
    if ARGS.noisy_retries is None:
        ARGS.noisy_retries = 1 if ARGS.quick else 2
    cases = cases_for(ARGS.quick, ARGS.full)
    if ARGS.list:
        for c in cases_for(ARGS.quick, True):
            print(f"{c.key:10} {c.title}{'  [--full]' if c.full_only else ''}")
        return 0
    if ARGS.cases:
        keys = ARGS.cases.split(",")
        cases = [c for c in cases_for(ARGS.quick, True) if c.key in keys]
    if not cases:
        print("no case selected", file=sys.stderr)
        return 2

    command = "benches/compare.py" + ("" if len(sys.argv) == 1 else " " + shlex.join(sys.argv[1:]))
    started = time.monotonic()
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    atexit.register(cleanup)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, max(NOFILE, resource.getrlimit(
            resource.RLIMIT_NOFILE)[1])))
    except (ValueError, OSError):
        pass
    # The harness itself stays off the server's CPU.
    try:
        os.sched_setaffinity(0, {ARGS.load_cpu})
    except OSError:
        pass

    release = REPO / "target" / "release"
    if not ARGS.no_build:
        for cmd in (["cargo", "build", "--release", "-p", "ringtftp", "--bin", "ringtftpd"],
                    ["cargo", "build", "--release", "-p", "loadgen"]):
            log("building: " + " ".join(cmd))
            b = subprocess.run(cmd, cwd=REPO, timeout=1800)
            if b.returncode != 0:
                log("build failed (try --no-build to use the binaries already built)")
                return 1
    ringtftpd, loadgen = release / "ringtftpd", release / "loadgen"
    for p in (ringtftpd, loadgen):
        if not p.exists():
            log(f"missing {p}")
            return 1

    tmp = Path(tempfile.mkdtemp(prefix="ringtftp-bench-"))
    (tmp / "json").mkdir()
    (tmp / "logs").mkdir()
    root = tmp / "root"
    root.mkdir()
    # atftpd and tftp-hpa drop privileges (nobody) or chroot: keep the files world-readable.
    for d in (tmp, root):
        d.chmod(0o755)
    big = 16 * MIB if ARGS.quick else 64 * MIB
    files = {}
    for key, name, size in (("4k", "ipxe.4k", 4096), ("1m", "boot.1m", MIB),
                            ("8m", "kernel.8m", 8 * MIB), ("big", f"initrd.{big // MIB}m", big)):
        data = os.urandom(size)
        (root / name).write_bytes(data)
        (root / name).chmod(0o644)
        files[key] = (name, hashlib.sha256(data).hexdigest(), size)
    log(f"files in {root}")

    cg_root = cgroup_v2_root()
    if cg_root is not None:
        cpu_method = (f"cgroup v2 `cpu.stat` usage_usec of a cgroup per server "
                      f"({cg_root}/ringtftp-bench-NAME), which counts forked children")
    else:
        cpu_method = ("**no writable cgroup v2**: /proc/PID/stat utime+stime+cutime+cstime "
                      "(children count only once reaped)")
    servers, skipped = make_servers(ARGS, root, ringtftpd)
    for s in skipped:
        log("skipping " + s)

    options: dict[str, str] = {}
    versions: dict[str, str] = {}
    working: list[Server] = []
    for s in servers:
        versions[s.name] = server_version(s)
        r = Running(s, cg_root, tmp / "logs", "probe")
        if r.cg is not None:
            CGROUPS.add(r.cg)
        try:
            if not r.wait_ready():
                skipped.append(f"{s.name}: did not start ({r.exit_description()}): "
                               + r.logpath.read_text(errors="replace")[-200:].strip())
                continue
            options[s.name] = probe_options(s.port, files["4k"][0])
            smoke = subprocess.run([str(loadgen), f"127.0.0.1:{s.port}", files["4k"][0],
                                    "--sha256", files["4k"][1], "--deadline", "20s", "-q"],
                                   capture_output=True, text=True, timeout=60)
            if smoke.returncode != 0 or " 0 failed" not in smoke.stdout:
                skipped.append(f"{s.name}: smoke transfer failed: {smoke.stdout[-200:]}")
                continue
            working.append(s)
            log(f"{s.name}: {versions[s.name]}; RRQ blksize 1468 windowsize 16 -> {options[s.name]}")
        finally:
            r.stop()

    all_results: dict[str, list[Result]] = {}
    timings: list[str] = []
    for case in cases:
        results = []
        for s in working:
            res = None
            for attempt in range(1, ARGS.noisy_retries + 2):
                busy = wait_quiet(ARGS.quiet_wait)
                log(f"{case.key}: {s.name} (attempt {attempt}; others used {busy:.2f} CPU "
                    f"in the last second) ...")
                this = run_case(case, s, files, loadgen, cg_root, tmp)
                this.attempts = attempt
                if res is None or this.other_cpu < res.other_cpu:
                    res = this
                # Loss runs wait on timers, not CPU: others' load hardly moves them.
                if (this.other_cpu < 0.2 or this.wall_s > 120 or this.error
                        or case.kind == "loss"):
                    break
                log(f"{case.key}: {s.name}: others used {this.other_cpu:.2f} CPU meanwhile")
            d = res.data or {}
            log(f"{case.key}: {s.name}: {d.get('ok', '-')} ok, {d.get('failed', '-')} failed, "
                f"{d.get('transfers_per_s', '-')} transfers/s, {d.get('mb_per_s', '-')} MB/s, "
                f"cpu {res.cpu_s if res.cpu_s is None else round(res.cpu_s, 2)} s, "
                f"wall {res.wall_s:.1f} s, loadgen cpu {res.loadgen_cpu_s:.2f} s, "
                f"others {res.other_cpu:.2f} CPU {res.crashed} {res.error}")
            timings.append(f"{case.key}/{s.name} {res.wall_s:.1f} s")
            results.append(res)
        all_results[case.key] = results

    elapsed = time.monotonic() - started
    header = machine_lines(cpu_method)
    header.append("- servers (each started by hand on 127.0.0.1, dnsmasq on port 69):")
    for s in working:
        header.append(f"  - {s.name}: {versions.get(s.name, '?')}; asked blksize 1468 "
                      f"windowsize 16 → {options.get(s.name, '?')}; "
                      f"`{shlex.join([Path(s.argv[0]).name] + s.argv[1:])}`")
    for s in skipped:
        header.append(f"  - not measured: {s}")
    header.append(f"- loadgen: every transfer verified with --sha256, `--sources {SOURCES}`, "
                  "client timeout 1 s and 5 retries unless said otherwise")
    others = sorted(r.other_cpu for rs in all_results.values() for r in rs if r.data)
    if others:
        header.append(f"- other work on the machine during the runs (/proc/stat busy time minus "
                      f"server, loadgen and harness): median {others[len(others) // 2]:.2f} "
                      f"CPU, max {others[-1]:.2f} CPU; {sum(o >= 0.1 for o in others)} of "
                      f"{len(others)} runs at ≥ 0.1 CPU (named in the notes)")
    header.append(f"- total run time: {elapsed / 60:.1f} min")
    doc = {"command": command, "header": header, "timings": timings,
           "cases": [dataclasses.asdict(c) for c in cases],
           "results": {k: [dataclasses.asdict(r) for r in v] for k, v in all_results.items()}}
    report = render(doc)
    print(report, end="")
    if ARGS.out:
        Path(ARGS.out).write_text(report)
        Path(ARGS.out + ".json").write_text(json.dumps(doc, indent=1))
        log(f"report written to {ARGS.out} (raw results in {ARGS.out}.json; "
            f"--render {ARGS.out}.json prints the report again)")
    if ARGS.keep:
        log(f"kept {tmp} (loadgen JSON in json/, server and loadgen output in logs/)")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


ARGS: argparse.Namespace

if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        cleanup()
