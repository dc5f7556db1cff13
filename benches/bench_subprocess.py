#!/usr/bin/env python3
"""Subprocess and pipe benchmark: ferroloop against asyncio, uvloop (and
rloop where it can), side by side in one run.

Workloads (each loop runs each one in a fresh Python process):

  spawn         spawn and reap N short processes (`true`), one after the
                other: create_subprocess_exec + wait.  µs per process.
  read_proto    1 GiB from `cat` (a sparse file) through a read pipe into
                a SubprocessProtocol that counts bytes.  MB/s.
  read_streams  the same through create_subprocess_exec and
                stdout.read(1 MiB).  MB/s.
  write_proto   1 GiB written into `cat > /dev/null` through the write
                pipe, 1 MiB at a time, respecting pause/resume_writing.
                MB/s.
  write_streams the same with stdin.write + drain.  MB/s.

    python benches/bench_subprocess.py                 # all, ~2 min
    python benches/bench_subprocess.py --quick         # smoke test
    python benches/bench_subprocess.py --loops asyncio,ferroloop --reps 5
    python benches/bench_subprocess.py --json sub.json

Every point is measured on each loop in turn, the order rotating from rep
to rep so that noise on the shared cores hits the loops alike; the table
shows the median of the reps and the ratio to asyncio (above 1: better
than asyncio).  CPU is the parent process's own CPU time (the loop's
side; the child's work is the same for every loop).  The child checks its
own result: every process exited 0, every byte counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from _common import available_loops, describe_exit, make_loop

ALL_LOOPS = ("asyncio", "uvloop", "rloop", "ferroloop")
BASELINE = "asyncio"
GIB = 1 << 30
CHUNK = 1 << 20

# workload -> (unit, what one row says, is a rate (higher is better))
WORKLOADS = {
    "spawn": ("µs/process", "spawn + reap `true`, sequentially", False),
    "read_proto": ("MB/s", "`cat file` -> read pipe -> SubprocessProtocol", True),
    "read_streams": ("MB/s", "`cat file` -> read pipe -> StreamReader.read(1 MiB)", True),
    "write_proto": ("MB/s", "1 MiB writes -> write pipe (pause/resume_writing) -> `cat > /dev/null`", True),
    "write_streams": ("MB/s", "1 MiB stdin.write + drain -> `cat > /dev/null`", True),
}


# -- the workloads (run in the child process) ---------------------------------

async def spawn(n, _path):
    for _ in range(n):
        proc = await asyncio.create_subprocess_exec("true")
        if await proc.wait() != 0:
            raise RuntimeError(f"`true` exited {proc.returncode}")
    return n


class _Counter(asyncio.SubprocessProtocol):
    def __init__(self, done):
        self.done = done
        self.received = 0
        self.transport = None
        self.can_write = None

    def connection_made(self, transport):
        self.transport = transport

    def pipe_data_received(self, fd, data):
        self.received += len(data)

    def pause_writing(self):
        self.can_write = asyncio.get_running_loop().create_future()

    def resume_writing(self):
        if self.can_write is not None and not self.can_write.done():
            self.can_write.set_result(None)

    def process_exited(self):
        if not self.done.done():
            self.done.set_result(self.transport.get_returncode())


async def read_proto(size, path):
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    transport, proto = await loop.subprocess_exec(
        lambda: _Counter(done), "cat", path, stdin=None, stdout=subprocess.PIPE, stderr=None)
    try:
        # process_exited may come before the pipe's last bytes: wait for both.
        rc = await done
        await transport._wait()
    finally:
        transport.close()
    if rc != 0 or proto.received != size:
        raise RuntimeError(f"cat exited {rc}, {proto.received} of {size} bytes")
    return size


async def read_streams(size, path):
    proc = await asyncio.create_subprocess_exec("cat", path, stdout=subprocess.PIPE)
    received = 0
    while True:
        chunk = await proc.stdout.read(CHUNK)
        if not chunk:
            break
        received += len(chunk)
    if await proc.wait() != 0 or received != size:
        raise RuntimeError(f"cat exited {proc.returncode}, {received} of {size} bytes")
    return size


async def write_proto(size, _path):
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    transport, proto = await loop.subprocess_exec(
        lambda: _Counter(done), "sh", "-c", "exec cat > /dev/null",
        stdin=subprocess.PIPE, stdout=None, stderr=None)
    stdin = transport.get_pipe_transport(0)
    block = b"x" * CHUNK
    try:
        for _ in range(size // CHUNK):
            stdin.write(block)
            if proto.can_write is not None:
                await proto.can_write
                proto.can_write = None
        stdin.close()
        rc = await done
    finally:
        transport.close()
    if rc != 0:
        raise RuntimeError(f"cat exited {rc}")
    return size


async def write_streams(size, _path):
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", "exec cat > /dev/null", stdin=subprocess.PIPE)
    block = b"x" * CHUNK
    for _ in range(size // CHUNK):
        proc.stdin.write(block)
        await proc.stdin.drain()
    proc.stdin.close()
    if await proc.wait() != 0:
        raise RuntimeError(f"cat exited {proc.returncode}")
    return size


def child(loop_name, workload, amount, path):
    """Run one workload on one loop; print {"seconds", "cpu", "amount"}."""
    loop = make_loop(loop_name)
    asyncio.set_event_loop(loop)
    try:
        func = globals()[workload]
        loop.run_until_complete(spawn(3, path))  # warm-up: imports, first fork
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        done = loop.run_until_complete(func(amount, path))
        seconds = time.perf_counter() - t0
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        loop.close()
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    print(json.dumps({"seconds": seconds, "cpu": cpu, "amount": done}))


# -- the driver ---------------------------------------------------------------

def measure(loop_name, workload, amount, path, timeout):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", loop_name, workload,
           str(amount), path]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout}s"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [describe_exit(proc.returncode)])[-1]
        return None, last
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


def figure(workload, sample):
    """The row's number for one sample: µs per process or MB/s."""
    if workload == "spawn":
        return sample["seconds"] / sample["amount"] * 1e6
    return sample["amount"] / sample["seconds"] / 1e6


def cpu_figure(workload, sample):
    """Parent CPU: µs per process, or seconds per GiB."""
    if workload == "spawn":
        return sample["cpu"] / sample["amount"] * 1e6
    return sample["cpu"] / (sample["amount"] / GIB)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loops", default=",".join(ALL_LOOPS))
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--processes", type=int, default=500, help="spawn: N processes")
    ap.add_argument("--bytes", type=int, default=GIB, help="read/write workloads: bytes")
    ap.add_argument("--quick", action="store_true", help="1 rep, 50 processes, 64 MiB")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--json", help="also write the raw samples here")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        loop_name, workload, amount, path = args.child
        child(loop_name, workload, int(amount), path)
        return 0
    if args.quick:
        args.reps, args.processes, args.bytes = 1, 50, 64 << 20
    args.bytes -= args.bytes % CHUNK

    loops, notes = available_loops(args.loops.split(","))
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r} (known: {', '.join(WORKLOADS)})")

    samples = {w: {l: [] for l in loops} for w in workloads}
    errors = {}
    with tempfile.NamedTemporaryFile(prefix="ferroloop-bench-") as f:
        f.truncate(args.bytes)  # sparse: cat reads zeros from memory
        for w in workloads:
            amount = args.processes if w == "spawn" else args.bytes
            for rep in range(args.reps):
                order = loops[rep % len(loops):] + loops[:rep % len(loops)]
                for name in order:
                    if (w, name) in errors:
                        continue
                    sample, err = measure(name, w, amount, f.name, args.timeout)
                    if err:
                        errors[(w, name)] = err
                        print(f"  {w} on {name}: ERROR {err}", file=sys.stderr)
                        continue
                    samples[w][name].append(sample)
                    print(f"  {w} on {name}: {figure(w, sample):.1f} {WORKLOADS[w][0]}",
                          file=sys.stderr)

    print(f"Python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs; median of {args.reps} rep(s); "
          f"{args.processes} processes, {args.bytes >> 20} MiB per transfer\n")
    compared = [l for l in loops if l != BASELINE]
    versus_uvloop = "ferroloop" in loops and "uvloop" in loops
    header = "| workload | unit | " + " | ".join(loops) + " | " + " | ".join(
        f"{l} vs asyncio" for l in compared) + (" | ferroloop vs uvloop" if versus_uvloop else "") + " |"
    print(header)
    print("|" + "---|" * (2 + len(loops) + len(compared) + versus_uvloop))
    footnotes = []
    for w in workloads:
        unit, _, higher_better = WORKLOADS[w]
        med = {}
        cells = []
        for name in loops:
            if (w, name) in errors:
                footnotes.append(f"{w} on {name}: {errors[(w, name)]}")
                cells.append(f"ERROR[{len(footnotes)}]")
                continue
            med[name] = statistics.median(figure(w, s) for s in samples[w][name])
            cpu = statistics.median(cpu_figure(w, s) for s in samples[w][name])
            cpu_unit = "µs" if w == "spawn" else "s/GiB"
            cells.append(f"{med[name]:.0f} (cpu {cpu:.2f} {cpu_unit})" if w != "spawn"
                         else f"{med[name]:.0f} (cpu {cpu:.0f} {cpu_unit})")
        def ratio(name, base):
            if name not in med or base not in med:
                return "-"
            r = med[name] / med[base] if higher_better else med[base] / med[name]
            return f"{r:.2f}x"

        ratios = [ratio(name, BASELINE) for name in compared]
        if versus_uvloop:
            ratios.append(ratio("ferroloop", "uvloop"))
        print(f"| {w} | {unit} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    print()
    for w in workloads:
        print(f"- {w}: {WORKLOADS[w][1]}")
    for i, note in enumerate(footnotes, 1):
        print(f"\n[{i}] {note}")
    for note in notes:
        print(f"\nskipped {note}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"samples": samples, "errors": {f"{w}/{l}": e for (w, l), e in errors.items()},
                       "python": platform.python_version()}, out, indent=1)
    # Rivals may lack subprocess support; ferroloop and asyncio may not.
    return 1 if any(name in ("ferroloop", BASELINE) for _, name in errors) else 0


if __name__ == "__main__":
    sys.exit(main())
