"""TLS echo benchmark: CPU time per round trip through asyncio's TLS layer,
ferroloop against asyncio, uvloop (and rloop where it can), side by side.

One process per measurement runs both ends on the loop under test: an
`asyncio.Protocol` echo server behind `create_server(ssl=...)` and a
streams client (`open_connection(ssl=...)`) that writes a message and
`readexactly`s it back, one message in flight.  What is timed is the
process's CPU time per round trip (both ends, so twice the TLS record work),
which the machine's other load disturbs less than wall time; round trips per
second are shown too.  The loops alternate inside every repetition; the
table shows medians and the ratio asyncio CPU / loop CPU (above 1: less CPU
than asyncio).

On ferroloop the TLS layer is its native SSLProtocol (asyncio's state
machine in Rust); "ferroloop-pytls" is ferroloop with asyncio's own Python
`sslproto` instead (`new_event_loop(native_tls=False)`), which shows what
the native layer gains.  uvloop has its own TLS layer in Cython.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from _common import available_loops, describe_exit, machine

LOOPS = ("asyncio", "uvloop", "rloop", "ferroloop-pytls", "ferroloop")

CHILD = r"""
import asyncio, os, ssl, sys, time
sys.path.insert(0, {benches!r})
from _common import make_loop

loop_name, size, count, cert, key = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]

# glibc serves allocations of 128 KiB and more with mmap until the first
# such block is freed, which raises that threshold.  uvloop's TLS layer
# allocates a buffer that size per read: in a fresh process that is an
# mmap/munmap pair per record (2.5x its CPU per round trip), gone once any
# large buffer has been freed -- which a real application soon does, and
# importing ferroloop does too.  Every loop is measured after one.
big = bytes(8 << 20)
del big

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.transport.write(data)

async def main():
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context()
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
    message = os.urandom(size)
    for _ in range(max(1, count // 10)):  # warm-up
        writer.write(message)
        await reader.readexactly(size)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        writer.write(message)
        if await reader.readexactly(size) != message:
            raise SystemExit("echo mismatch")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    print(wall, cpu)

if loop_name == "ferroloop-pytls":
    import ferroloop
    loop = ferroloop.new_event_loop(native_tls=False)
else:
    loop = make_loop(loop_name)
try:
    loop.run_until_complete(main())
finally:
    loop.close()
"""


def make_cert(directory):
    """A throwaway self-signed certificate (openssl's CLI)."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
         "-out", cert, "-days", "1", "-subj", "/CN=localhost"],
        check=True, capture_output=True,
    )
    return cert, key


def measure(loop_name, size, count, cert, key, timeout):
    """(wall seconds, CPU seconds) for `count` round trips, or an error string."""
    benches = os.path.dirname(os.path.abspath(__file__))
    code = CHILD.format(benches=benches)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, loop_name, str(size), str(count), cert, key],
            capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout} s"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [""])[-1]
        return f"{describe_exit(proc.returncode)}: {last}"
    wall, cpu = (float(x) for x in proc.stdout.split())
    return wall, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loops", default=",".join(LOOPS),
                    help="comma-separated subset of " + ",".join(LOOPS) + " (default: all that import)")
    ap.add_argument("--sizes", default="1024,16384,102400", help="message sizes in bytes")
    ap.add_argument("--bytes", type=int, default=32 << 20,
                    help="bytes echoed per measurement (round trips = bytes / size, at most 20000)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions; the median is shown")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--json", help="also write every sample here")
    args = ap.parse_args()

    loops = [name for name in args.loops.split(",") if name]
    unknown = [name for name in loops if name not in LOOPS]
    if unknown:
        ap.error(f"unknown loop(s): {', '.join(unknown)}")
    # ferroloop-pytls is ferroloop too.
    importable, notes = available_loops([name.split("-")[0] for name in loops])
    loops = [name for name in loops if name.split("-")[0] in importable]
    for note in notes:
        print(note, file=sys.stderr)
    sizes = [int(s) for s in args.sizes.split(",") if s]

    samples = {(name, size): [] for name in loops for size in sizes}
    errors = {}
    unsupported = set()
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = make_cert(tmp)
        for rep in range(args.reps):
            for size in sizes:
                count = max(100, min(20000, args.bytes // size))
                for name in loops:
                    if (name, size) in errors or name in unsupported:
                        continue
                    result = measure(name, size, count, cert, key, args.timeout)
                    if isinstance(result, str):
                        if "NotImplementedError" in result:
                            unsupported.add(name)  # rloop has no TLS
                        else:
                            errors[(name, size)] = result
                            print(f"{name} {size}: {result}", file=sys.stderr)
                        continue
                    wall, cpu = result
                    samples[(name, size)].append({"count": count, "wall": wall, "cpu": cpu})

    info = machine()
    print(f"Python {info['python']} on {info['platform']}, {info['cpus']} CPUs; "
          f"median of {args.reps} repetitions; one process per measurement, both ends on the loop.\n")
    print("CPU time per round trip (client and server together) and in brackets asyncio CPU / loop CPU; "
          "round trips per second below it:\n")
    print("| message | " + " | ".join(loops) + " |")
    print("|---|" + "--:|" * len(loops))
    for size in sizes:
        base = samples.get(("asyncio", size))
        base_cpu = statistics.median(s["cpu"] / s["count"] for s in base) if base else None
        cells, rates = [], []
        for name in loops:
            got = samples[(name, size)]
            if not got:
                cells.append("no TLS" if name in unsupported else "FAILED")
                rates.append("")
                continue
            cpu = statistics.median(s["cpu"] / s["count"] for s in got)
            rate = statistics.median(s["count"] / s["wall"] for s in got)
            ratio = f" ({base_cpu / cpu:.2f}x)" if base_cpu else ""
            cells.append(f"{cpu * 1e6:.1f} µs{ratio}")
            rates.append(f"{rate:,.0f}/s")
        label = f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"
        print(f"| {label} | " + " | ".join(cells) + " |")
        print("| (round trips) | " + " | ".join(rates) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "samples": {f"{n}/{s}": v for (n, s), v in samples.items()},
                       "errors": {f"{n}/{s}": e for (n, s), e in errors.items()}}, f, indent=1)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
