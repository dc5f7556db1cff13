#!/usr/bin/env python3
"""Network echo benchmark: server CPU time per request, ferroloop against
asyncio, uvloop and rloop, side by side in one run.

For every scenario (an echo server written one way: Protocol,
BufferedProtocol, streams, ...) each loop runs the server in its own
subprocess pinned to CPU 0, and the Rust load generator
(benches/loadgen, pinned to CPU 1) drives it with N connections, each with
one request in flight.  Printed: a markdown table per scenario with the
request rate and the server's CPU time per request for each loop.

    cargo build --release --manifest-path benches/loadgen/Cargo.toml   # once
    python benches/bench_net.py                        # everything, ~10 min
    python benches/bench_net.py --duration 1 --scenarios protocol,native
    python benches/bench_net.py --loops asyncio,ferroloop --json net.json

How the numbers are taken (see benches/README.md for more):

* CPU µs/req is the figure to compare.  The client shares the machine's two
  cores with the server, so the request rate depends on how fast the client
  is and on whatever else runs; the server's own CPU time (utime + stime
  from /proc/<pid>/stat, every thread) divided by the requests it served
  does not.  Ratios are asyncio CPU/req ÷ loop CPU/req: above 1 means the
  loop spends less CPU than asyncio on a request.
* Every point is a warm-up run of the load generator, then a reading of the
  server's CPU time, the measured run, and a second reading once the server
  has gone idle again.  Between the two readings the server does nothing
  but the measured requests (and N connects and closes).
* All loops' servers for a scenario run at once (idle servers sleep in
  epoll and cost nothing), and every point is measured on each loop in turn,
  the order rotating from point to point, so a burst of noise on the shared
  cores hits the loops alike.  --reps R repeats every point R times; the
  table shows the median.
* A loop that cannot run a scenario (its server does not start, dies, or
  the load generator reports an error or a wrong echo) gets an ERROR cell
  with a footnote; the run goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from _common import describe_exit, machine, make_loop

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_LOADGEN = os.path.join(HERE, "loadgen", "target", "release", "ferroloop-loadgen")
BUILD_HINT = "cargo build --release --manifest-path benches/loadgen/Cargo.toml"

ALL_LOOPS = ("asyncio", "uvloop", "rloop", "ferroloop")
BASELINE = "asyncio"
RIVALS = ("uvloop", "rloop")  # ferroloop is also compared with the best of these

UDP_MAX_SIZE = 1024
READ_SIZE = 65536  # streams' reader.read() and loop.sock_recv()
BUFFER_SIZE = 256 * 1024  # BufferedProtocol's buffer, like asyncio's own reads

# scenario -> (transport the client uses, what the table says)
SCENARIOS = {
    "protocol": ("tcp", "asyncio.Protocol echo over TCP (data_received -> transport.write)"),
    "buffered": ("tcp", "asyncio.BufferedProtocol echo over TCP (get_buffer / buffer_updated -> write)"),
    "streams": ("tcp", "streams echo over TCP (start_server; reader.read(65536), writer.write, drain)"),
    "unix": ("unix", "asyncio.Protocol echo over a Unix socket (create_unix_server)"),
    "udp": ("udp", f"DatagramProtocol echo over UDP (datagram_received -> sendto), sizes capped at {UDP_MAX_SIZE}"),
    "sock": ("tcp", "loop.sock_accept, then sock_recv(65536) / sock_sendall per connection task"),
    "native": (None, "native Rust epoll echo server (ferroloop-loadgen echo-server, no Python): the physical limit"),
    "http": ("http", "HTTP/1.1 keep-alive hello world on asyncio.Protocol, driven by wrk"),
}


# --------------------------------------------------------------------------
# Server side: this script re-run with --serve <scenario> --loop <name>.
# --------------------------------------------------------------------------

class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    def connection_made(self, transport):
        self.transport = transport
        self._new_buffer()

    def _new_buffer(self):
        self.view = memoryview(bytearray(BUFFER_SIZE))

    def get_buffer(self, sizehint):
        return self.view

    def buffer_updated(self, nbytes):
        self.transport.write(self.view[:nbytes])
        if self.transport.get_write_buffer_size():
            # Part of the data is queued in the transport, which may hold a
            # view of our buffer rather than a copy: never overwrite it, read
            # the next bytes into a fresh buffer.  (With one request in
            # flight per connection this is rare.)
            self._new_buffer()


class EchoDatagramProtocol(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


HTTP_RESPONSE = (b"HTTP/1.1 200 OK\r\n"
                 b"Content-Type: text/plain\r\n"
                 b"Content-Length: 13\r\n"
                 b"Connection: keep-alive\r\n"
                 b"\r\n"
                 b"Hello, World!")


class HttpProtocol(asyncio.Protocol):
    """Answers every request (found by its blank line; wrk sends GETs with no
    body) with the same response, pipelined requests included."""

    def connection_made(self, transport):
        self.transport = transport
        self.pending = b""

    def data_received(self, data):
        buf = self.pending + data if self.pending else data
        n = buf.count(b"\r\n\r\n")
        if n:
            self.transport.write(HTTP_RESPONSE * n)
            buf = buf[buf.rfind(b"\r\n\r\n") + 4:]
        self.pending = buf


async def _streams_client(reader, writer):
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass  # the load generator closes with a request in flight
    finally:
        writer.close()


async def _sock_server(loop, port):
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(128)
    lsock.setblocking(False)
    tasks = set()  # strong references: the loop keeps only weak ones

    async def client(conn):
        try:
            while True:
                data = await loop.sock_recv(conn, READ_SIZE)
                if not data:
                    break
                await loop.sock_sendall(conn, data)
        except ConnectionError:
            pass
        finally:
            conn.close()

    async def accept_forever():
        while True:
            conn, _ = await loop.sock_accept(lsock)
            conn.setblocking(False)
            # create_server does this for its transports; same here.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t = loop.create_task(client(conn))
            tasks.add(t)
            t.add_done_callback(tasks.discard)

    t = loop.create_task(accept_forever())
    tasks.add(t)
    return tasks


async def start_python_server(loop, scenario, port, path):
    host = "127.0.0.1"
    if scenario == "protocol":
        return await loop.create_server(EchoProtocol, host, port)
    if scenario == "buffered":
        return await loop.create_server(EchoBufferedProtocol, host, port)
    if scenario == "streams":
        return await asyncio.start_server(_streams_client, host, port)
    if scenario == "unix":
        return await loop.create_unix_server(EchoProtocol, path)
    if scenario == "udp":
        return await loop.create_datagram_endpoint(EchoDatagramProtocol, local_addr=(host, port))
    if scenario == "sock":
        return await _sock_server(loop, port)
    if scenario == "http":
        return await loop.create_server(HttpProtocol, host, port)
    raise ValueError(f"no Python server for scenario {scenario!r}")


_SERVING = []  # the server objects, kept alive while the loop runs


def serve(args) -> int:
    loop = make_loop(args.loop)
    asyncio.set_event_loop(loop)
    _SERVING.append(loop.run_until_complete(
        start_python_server(loop, args.serve, args.port, args.unix)))
    print("READY", flush=True)
    loop.run_forever()  # until the harness stops us with SIGTERM
    return 0


# --------------------------------------------------------------------------
# Harness side
# --------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (all threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)


def settled_cpu_ticks(pid: int) -> int:
    """The server's CPU time once it has gone idle: after a run, it still
    handles the closing connections for a moment, and that belongs to the
    run."""
    time.sleep(0.03)
    last = cpu_ticks(pid)
    for _ in range(20):
        time.sleep(0.03)
        now = cpu_ticks(pid)
        if now == last:
            break
        last = now
    return last


def free_port(kind: int) -> int:
    """A free local port.  (Another process could take it before the server
    binds it; on a benchmark machine that does not happen.)"""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail_of(path: str, n: int = 3) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [s.strip() for s in f.read().splitlines() if s.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])[-400:]


class ServerError(Exception):
    pass


class Server:
    """One echo server in a subprocess: a loop running a scenario, or the
    native one."""

    def __init__(self, column, scenario, kind, args, tmpdir):
        self.column, self.scenario, self.kind = column, scenario, kind
        self.tmpdir = tmpdir
        tag = f"{scenario}-{column}-{kind}"
        self.stderr_path = os.path.join(tmpdir, tag + ".stderr")
        self.unix_path = os.path.join(tmpdir, tag + ".sock") if kind == "unix" else None
        self.port = None
        if kind != "unix":
            self.port = free_port(socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
        if column == "native":
            argv = [args.loadgen, "echo-server"]
            argv += ["--unix", self.unix_path] if self.unix_path else ["--addr", f"127.0.0.1:{self.port}"]
            if kind == "udp":
                argv.append("--udp")
        else:
            argv = [sys.executable, os.path.abspath(__file__), "--serve", scenario,
                    "--loop", column, "--port", str(self.port or 0)]
            if self.unix_path:
                argv += ["--unix", self.unix_path]
        self.argv = args.pin_server + argv
        self.proc = None
        self.ready_timeout = args.timeout

    def start(self):
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=err)
        # Wait for the READY line, but not forever (a loop that hangs while
        # starting its server).
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + self.ready_timeout
        line = b""
        try:
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self.stop()
                    raise ServerError(f"server not ready after {self.ready_timeout:g} s: "
                                      + tail_of(self.stderr_path))
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    rc = self.proc.wait()
                    raise ServerError(f"server exited ({describe_exit(rc)}) before it was ready: "
                                      + tail_of(self.stderr_path))
                line += chunk
        finally:
            sel.close()
        if not line.startswith(b"READY"):
            self.stop()
            raise ServerError(f"unexpected first line from the server: {line[:200]!r}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def death(self) -> str:
        rc = self.proc.poll() if self.proc else None
        return (f"server died ({describe_exit(rc)}): " if rc is not None else "") + tail_of(self.stderr_path)

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


def run_loadgen(server: Server, size: int, conns: int, seconds: float, args) -> dict:
    mode = "udp" if server.kind == "udp" else "tcp"
    argv = args.pin_client + [args.loadgen, mode, "--conns", str(conns), "--size", str(size),
                              "--duration", repr(seconds), "--stall", repr(args.stall)]
    argv += ["--unix", server.unix_path] if server.unix_path else ["--addr", f"127.0.0.1:{server.port}"]
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=seconds + args.stall + 30)
    except subprocess.TimeoutExpired:
        raise ServerError(f"load generator did not finish within {seconds + args.stall + 30:g} s")
    if p.returncode != 0:
        msg = (p.stderr.strip().splitlines() or [describe_exit(p.returncode)])[-1]
        raise ServerError(msg[:400])
    r = json.loads(p.stdout)
    return {"requests": r["requests"], "seconds": r["seconds"],
            "requests_per_sec": r["requests_per_sec"], "p50_us": r["p50_us"],
            "p99_us": r["p99_us"], "losses": r.get("losses")}


_WRK_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6}


def _wrk_latency_us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * _WRK_UNITS[m.group(2)] if m else float("nan")


def run_wrk(server: Server, conns: int, seconds: float, args) -> dict:
    # wrk takes whole seconds.
    secs = max(1, round(seconds))
    argv = args.pin_client + ["wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--latency",
                              f"http://127.0.0.1:{server.port}/"]
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=secs + 30)
    except subprocess.TimeoutExpired:
        raise ServerError(f"wrk did not finish within {secs + 30} s")
    out = p.stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out)
    if p.returncode != 0 or not m:
        raise ServerError("wrk: " + ((p.stderr or out).strip().splitlines() or ["no output"])[-1][:300])
    requests = int(m.group(1))
    elapsed = float(m.group(2)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise ServerError(f"wrk: {bad.group(1)} responses were not 2xx/3xx")
    errs = re.search(r"Socket errors: (.*)", out)
    if requests == 0:
        raise ServerError("wrk: no request completed" + (f" (socket errors: {errs.group(1)})" if errs else ""))
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    return {"requests": requests, "seconds": elapsed,
            "requests_per_sec": requests / elapsed if elapsed else 0.0,
            "p50_us": _wrk_latency_us(pct.get("50", "")),
            "p99_us": _wrk_latency_us(pct.get("99", "")),
            "socket_errors": errs.group(1) if errs else None}


def measure_point(server: Server, row: dict, args) -> dict:
    """Warm-up run, CPU reading, measured run, CPU reading."""
    if row["kind"] == "http":
        def drive(secs):
            return run_wrk(server, row["conns"], secs, args)
    else:
        def drive(secs):
            return run_loadgen(server, row["size"], row["conns"], secs, args)
    if args.warmup > 0:
        drive(args.warmup)
    pid = server.proc.pid
    before = settled_cpu_ticks(pid)
    r = drive(args.duration)
    after = settled_cpu_ticks(pid)
    if not server.alive():
        raise ServerError(server.death())
    cpu_s = (after - before) / CLK_TCK
    r["server_cpu_s"] = cpu_s
    r["cpu_us_per_req"] = cpu_s / r["requests"] * 1e6
    # How busy the server was: near 1.0 means it was the bottleneck.
    r["server_cpu_share"] = cpu_s / r["seconds"] if r["seconds"] else None
    return r


def plan_rows(scenario: str, args) -> list[dict]:
    if scenario == "http":
        return [{"kind": "http", "size": None, "conns": c} for c in args.conns]
    if scenario == "udp":
        sizes = sorted({min(s, UDP_MAX_SIZE) for s in args.sizes})
        return [{"kind": "udp", "size": s, "conns": c} for s in sizes for c in args.conns]
    if scenario == "native":
        udp_sizes = sorted({min(s, UDP_MAX_SIZE) for s in args.sizes})
        return ([{"kind": k, "size": s, "conns": c} for k in ("tcp", "unix")
                 for s in args.sizes for c in args.conns]
                + [{"kind": "udp", "size": s, "conns": c} for s in udp_sizes for c in args.conns])
    kind = SCENARIOS[scenario][0]
    return [{"kind": kind, "size": s, "conns": c} for s in args.sizes for c in args.conns]


def row_key(row: dict) -> str:
    size = "-" if row["size"] is None else str(row["size"])
    return f"{row['kind']}/{size}/{row['conns']}"


def fmt_num(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def run_scenario(scenario: str, loops: list[str], args, tmpdir, log) -> dict:
    columns = ["native"] if scenario == "native" else loops
    rows = plan_rows(scenario, args)
    servers: dict[tuple[str, str], Server] = {}
    start_errors: dict[tuple[str, str], str] = {}
    cells: dict[str, dict[str, dict]] = {row_key(r): {} for r in rows}
    samples: dict[str, dict[str, list]] = {row_key(r): {c: [] for c in columns} for r in rows}
    started = time.monotonic()

    def server_for(column, kind):
        key = (column, kind)
        if key in start_errors:
            raise ServerError(start_errors[key])
        srv = servers.get(key)
        if srv is not None and srv.alive():
            return srv
        if srv is not None:  # died during an earlier point: say so, start a new one
            servers.pop(key)
            log(f"    {column}: restarting the {scenario} server ({srv.death()})")
        srv = Server(column, scenario, kind, args, tmpdir)
        try:
            srv.start()
        except ServerError as exc:
            start_errors[key] = str(exc)
            raise
        servers[key] = srv
        return srv

    try:
        for i, row in enumerate(rows):
            rk = row_key(row)
            for rep in range(args.reps):
                k = (i * args.reps + rep) % len(columns)
                for column in columns[k:] + columns[:k]:
                    if "error" in cells[rk].get(column, {}):
                        continue
                    try:
                        r = measure_point(server_for(column, row["kind"]), row, args)
                    except (ServerError, OSError, ValueError, KeyError) as exc:
                        cells[rk][column] = {"error": str(exc) or type(exc).__name__}
                        log(f"  {scenario} {rk} {column}: ERROR {exc}")
                        continue
                    samples[rk][column].append(r)
                    log(f"  {scenario} {rk} {column}: {r['requests_per_sec']:,.0f} req/s, "
                        f"{r['cpu_us_per_req']:.1f} µs CPU/req, server CPU {r['server_cpu_share']:.0%}")
    finally:
        for srv in servers.values():
            srv.stop()

    for rk, per_col in samples.items():
        for column, ss in per_col.items():
            if "error" in cells[rk].get(column, {}):
                cells[rk][column]["samples"] = ss
                continue
            cells[rk][column] = {
                "requests_per_sec": statistics.median(s["requests_per_sec"] for s in ss),
                "cpu_us_per_req": statistics.median(s["cpu_us_per_req"] for s in ss),
                "p50_us": statistics.median(s["p50_us"] for s in ss),
                "p99_us": statistics.median(s["p99_us"] for s in ss),
                "samples": ss,
            }
        base = cells[rk].get(BASELINE, {})
        for column, c in cells[rk].items():
            if "cpu_us_per_req" in c and "cpu_us_per_req" in base and c["cpu_us_per_req"] > 0:
                c["cpu_ratio_vs_asyncio"] = base["cpu_us_per_req"] / c["cpu_us_per_req"]
        ferro = cells[rk].get("ferroloop", {})
        rivals = [cells[rk][r]["cpu_us_per_req"] for r in RIVALS
                  if "cpu_us_per_req" in cells[rk].get(r, {})]
        if rivals and "cpu_us_per_req" in ferro and ferro["cpu_us_per_req"] > 0:
            cells[rk]["ferroloop_vs_best_rival"] = min(rivals) / ferro["cpu_us_per_req"]
    return {"title": SCENARIOS[scenario][1], "columns": columns,
            "rows": [dict(r, key=row_key(r)) for r in rows], "cells": cells,
            "seconds": time.monotonic() - started}


def render(report: dict) -> str:
    out = [
        f"Python {report['python']} on {report['platform']}, {report['cpus']} CPUs; "
        f"{report['pinning']}; "
        f"{report['duration']:g} s per point after a {report['warmup']:g} s warm-up, "
        f"median of {report['reps']}; load average {report['loadavg_before'][0]:.2f} -> "
        f"{report['loadavg_after'][0]:.2f}; took {report['seconds']:.0f} s.",
        "",
        "Loops: " + ", ".join(f"{l} {report['versions'][l]}" for l in report["loops"]) + ".",
    ]
    for l, why in report["skipped_loops"].items():
        out.append(f"Skipped {l}: {why}")
    for s, why in report["skipped_scenarios"].items():
        out.append(f"Skipped scenario {s}: {why}")
    out += ["", "req/s: requests per second (depends on the client, which shares the two "
            "cores).  CPU µs/req: the server's CPU time (user + sys) per request, the fair "
            "figure; in brackets asyncio's CPU/req divided by the loop's (>1: less CPU than "
            "asyncio).  ferro vs best: the lower CPU/req of uvloop and rloop divided by "
            "ferroloop's (>1: ferroloop spends less)."]
    notes: list[str] = []
    for scenario, sc in report["scenarios"].items():
        cols = sc["columns"]
        native = scenario == "native"
        show_best = not native and "ferroloop" in cols and any(r in cols for r in RIVALS)
        out += ["", f"### {scenario}: {sc['title']}", ""]
        head = (["transport"] if native else []) + ["size", "conns"]
        align = ["---"] * len(head)
        for c in cols:
            head += [f"{c} req/s", f"{c} CPU µs/req"]
            align += ["--:", "--:"]
        if show_best:
            head.append("ferro vs best")
            align.append("--:")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join(align) + "|")
        for row in sc["rows"]:
            cells = sc["cells"][row["key"]]
            line = ([row["kind"]] if native else []) + [
                "-" if row["size"] is None else str(row["size"]), str(row["conns"])]
            for c in cols:
                cell = cells.get(c, {})
                if "error" in cell:
                    note = f"{scenario} / {c}: {cell['error']}"
                    if note not in notes:
                        notes.append(note)
                    line += [f"ERROR [{notes.index(note) + 1}]", ""]
                    continue
                if "cpu_us_per_req" not in cell:
                    line += ["-", "-"]
                    continue
                cpu = fmt_num(cell["cpu_us_per_req"])
                if c != BASELINE and "cpu_ratio_vs_asyncio" in cell:
                    cpu += f" ({cell['cpu_ratio_vs_asyncio']:.2f}x)"
                line += [f"{cell['requests_per_sec']:,.0f}", cpu]
            if show_best:
                v = cells.get("ferroloop_vs_best_rival")
                line.append(f"{v:.2f}x" if v is not None else "-")
            out.append("| " + " | ".join(line) + " |")
    if notes:
        out.append("")
        for i, note in enumerate(notes, 1):
            out.append(f"[{i}] {note}")
    return "\n".join(out)


def _module_version(name: str) -> str:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return str(getattr(sys.modules.get(name), "__version__", "?"))


def _build_stamp(mod) -> str:
    """When ferroloop's extension was built (it is rebuilt all the time)."""
    ext = sys.modules.get(f"{mod.__name__}._{mod.__name__}")
    path = getattr(ext, "__file__", None)
    if not path or path.endswith(".py"):
        return ""
    return time.strftime(" (extension built %Y-%m-%d %H:%M:%S)", time.localtime(os.path.getmtime(path)))


def load_loops(names):
    """Which loops import and can run a coroutine: ([names], {name: version},
    {name: why skipped})."""
    ok, versions, skipped = [], {}, {}
    for name in names:
        try:
            if name == "asyncio":
                versions[name] = "stdlib"
            else:
                mod = importlib.import_module(name)
                versions[name] = _module_version(name)
                if name == "ferroloop":
                    versions[name] += _build_stamp(mod)
            lp = make_loop(name)
            try:
                if lp.run_until_complete(asyncio.sleep(0, result=42)) != 42:
                    raise RuntimeError("run_until_complete returned the wrong value")
            finally:
                lp.close()
        except Exception as exc:
            skipped[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
            versions.pop(name, None)
            continue
        ok.append(name)
    return ok, versions, skipped


def pinning(args):
    """taskset prefixes for the server and the client, and a description.
    split: server on CPU 0, client on CPU 1 (the default); same: both on
    CPU 0; none: not pinned."""
    mode = "none" if args.no_pin else args.pin
    if mode == "none":
        return [], [], "not pinned"
    if not shutil.which("taskset"):
        return [], [], "not pinned (no taskset)"
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        cpus = set(range(os.cpu_count() or 1))
    client_cpu = 1 if mode == "split" else 0
    if not {0, client_cpu} <= cpus:
        return [], [], f"not pinned (CPUs 0 and {client_cpu} not both available: {sorted(cpus)})"
    return (["taskset", "-c", "0"], ["taskset", "-c", str(client_cpu)],
            f"server on CPU 0, client on CPU {client_cpu}")


def int_list(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}")
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"need integers >= 1: {text!r}")
    return vals


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loops", default=",".join(ALL_LOOPS),
                   help=f"comma-separated subset of {','.join(ALL_LOOPS)} (default: all that import)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all)")
    p.add_argument("--sizes", type=int_list, default=[1024, 10240, 102400],
                   help="message sizes in bytes (default 1024,10240,102400; UDP caps them at "
                   f"{UDP_MAX_SIZE}; http ignores them)")
    p.add_argument("--conns", type=int_list, default=[1, 10],
                   help="connections (default 1,10), each with one request in flight")
    p.add_argument("--duration", type=float, default=2.0,
                   help="seconds of the measured run of each point (default 2; wrk rounds to whole seconds)")
    p.add_argument("--warmup", type=float, default=0.5,
                   help="seconds of the warm-up run before each point (default 0.5; wrk: at least 1)")
    p.add_argument("--reps", type=int, default=1, help="repetitions of every point; the median is shown")
    p.add_argument("--json", metavar="PATH", help="also write every number here")
    p.add_argument("--loadgen", default=DEFAULT_LOADGEN,
                   help="the ferroloop-loadgen binary (default: benches/loadgen/target/release/)")
    p.add_argument("--timeout", type=float, default=20.0,
                   help="seconds a server may take to start (default 20)")
    p.add_argument("--stall", type=float, default=5.0,
                   help="the load generator gives up after this many seconds without an echo (default 5)")
    p.add_argument("--pin", choices=("split", "same", "none"), default="split",
                   help="split: server on CPU 0, client on CPU 1 (default); same: both on "
                   "CPU 0 (no cross-CPU wake-ups, see benches/README.md); none: no taskset")
    p.add_argument("--no-pin", action="store_true", help="same as --pin none")
    p.add_argument("--silent", action="store_true", help="no progress on stderr")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    # The server mode, run by the harness itself.
    p.add_argument("--serve", metavar="SCENARIO", help=argparse.SUPPRESS)
    p.add_argument("--loop", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--unix", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.serve:
        return serve(args)
    if args.list:
        for key, (_, title) in SCENARIOS.items():
            print(f"{key:<10} {title}")
        return 0
    if args.reps < 1 or args.duration <= 0 or args.warmup < 0:
        p.error("--reps must be >= 1, --duration > 0 and --warmup >= 0")
    names = [s.strip() for s in args.loops.split(",") if s.strip()]
    if set(names) - set(ALL_LOOPS):
        p.error(f"unknown loop(s) {sorted(set(names) - set(ALL_LOOPS))}; choose from {','.join(ALL_LOOPS)}")
    names = [n for n in ALL_LOOPS if n in names]  # baseline first, fixed column order
    wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if set(wanted) - set(SCENARIOS):
        p.error(f"unknown scenario(s) {sorted(set(wanted) - set(SCENARIOS))}; choose from {','.join(SCENARIOS)}")
    wanted = [s for s in SCENARIOS if s in wanted]
    if not (os.path.isfile(args.loadgen) and os.access(args.loadgen, os.X_OK)):
        sys.exit(f"load generator not found at {args.loadgen}; build it with:\n  {BUILD_HINT}")

    def log(msg):
        if not args.silent:
            print(msg, file=sys.stderr, flush=True)

    loops, versions, skipped = load_loops(names)
    if not loops:
        sys.exit("no event loop could be loaded: " + json.dumps(skipped))
    skipped_scenarios = {}
    if "http" in wanted and not shutil.which("wrk"):
        skipped_scenarios["http"] = "wrk is not installed (apt-get install wrk)"
        wanted.remove("http")
    args.pin_server, args.pin_client, placement = pinning(args)
    log(f"loops: {', '.join(f'{l} {versions[l]}' for l in loops)}"
        + (f"; skipped: {', '.join(skipped)}" if skipped else "")
        + f"; {placement}")

    # SIGTERM to the harness: leave through the finally clauses that stop
    # the servers.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.monotonic()
    load_before = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_net-") as tmpdir:
        for scenario in wanted:
            log(f"{scenario}: {SCENARIOS[scenario][1]}")
            results[scenario] = run_scenario(scenario, loops, args, tmpdir, log)
    report = {
        **machine(),
        "loops": loops,
        "versions": versions,
        "skipped_loops": skipped,
        "skipped_scenarios": skipped_scenarios,
        "pinning": placement,
        "duration": args.duration,
        "warmup": args.warmup,
        "reps": args.reps,
        "sizes": args.sizes,
        "conns": args.conns,
        "clock_ticks_per_sec": CLK_TCK,
        "statistic": "median over reps of requests/s and of server CPU µs per request",
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "seconds": time.monotonic() - started,
        "scenarios": results,
    }
    print(render(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    failed = any("error" in c for sc in results.values() for row in sc["cells"].values()
                 for c in row.values() if isinstance(c, dict))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
