#!/usr/bin/env python3
"""Scheduling micro-benchmarks: ferroloop against asyncio, uvloop and rloop.

Runs the same workloads on every importable event loop and prints a
markdown table: the time per operation and the speed-up against stock asyncio
(asyncio_time / loop_time, so > 1 means faster than asyncio).

    python benches/bench_scheduling.py                 # full run, ~1-2 min
    python benches/bench_scheduling.py --quick         # smoke test, seconds
    python benches/bench_scheduling.py --loops asyncio,ferroloop --json out.json

How the numbers are taken (see benches/README.md for more):

* Each workload runs in a fresh subprocess (this script again, with
  --workloads <one> and --json <temporary file>); the parent only merges the
  rows.  In one process, what an earlier workload leaves behind slows down
  the later ones: rloop 0.5 leaks the Context of every cancelled timer that
  never came due (15,000 per timers_cancel run), and with those ~240k objects
  in the heap gather's GC passes took ~2x as long on asyncio and ferroloop.
  --in-process runs everything in one process, as before.
* Every measurement gets a fresh loop, made and closed outside the timed
  region, with gc.collect() before it.  The clock runs from the first
  scheduling call until run_forever()/run_until_complete() returns.
* Loops are interleaved: each repetition runs every loop once, and the order
  rotates from one repetition to the next, so drifting machine load (two
  shared, noisy cores) hits all loops alike instead of whichever ran last.
* Time per operation: the MINIMUM over the repetitions (noise only ever
  adds time).  Ratio against asyncio: the MEDIAN over the repetitions of the
  ratio of the two loops' times in the same repetition.  The noise on these
  shared VMs comes in bursts that last seconds, so pairing measurements taken
  a moment apart cancels most of it; a ratio of two minimums taken at
  different moments does not.  Both, and every raw sample, go to --json.
* Every workload checks its own result (how many callbacks ran, in what
  order, which timers fired, what the tasks returned), and any exception that
  reaches a loop's exception handler fails the cell, so a loop that skips
  work cannot post a fast time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import faulthandler
import gc
import importlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable

from _common import describe_exit, machine

perf_counter_ns = time.perf_counter_ns

ALL_LOOPS = ("asyncio", "uvloop", "rloop", "ferroloop", "ferroloop-aio")
# ferroloop-aio: ferroloop's loop with asyncio's own Future and Task
# (new_event_loop(native_futures=False)), to separate what the native loop
# gains from what the native Future/Task gain.
BASELINE = "asyncio"


class BenchFailure(Exception):
    """A workload's result check failed: the loop did the wrong thing."""


class BenchTimeout(KeyboardInterrupt):
    """Raised from SIGALRM.  A KeyboardInterrupt subclass because event loops
    swallow every other exception raised inside a callback."""


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise BenchFailure(msg)


def _first_mismatch(got: list, want: list) -> str:
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return f"first mismatch at #{i}: got {a!r}, want {b!r}"
    return f"length {len(got)}, want {len(want)}"


# --------------------------------------------------------------------------
# Workloads.  Each takes a fresh, not running loop and n, returns the elapsed
# nanoseconds of the timed region and raises BenchFailure when the result is
# wrong.  Checks happen after the clock stops.
# --------------------------------------------------------------------------

TIMER_SPREAD = 0.001  # timers get distinct delays spread over [0, 1 ms)


def _spread_delays(n: int) -> list[float]:
    """n distinct delays in [0, TIMER_SPREAD), in a scrambled order so the
    loop's timer queue sees out-of-order inserts, not an already sorted run."""
    step = 7919
    while math.gcd(step, n) != 1:
        step += 2
    return [((i * step) % n) * TIMER_SPREAD / n for i in range(n)]


def wl_call_soon_batched(loop, n):
    ran: list[int] = []
    append = ran.append
    call_soon = loop.call_soon
    t0 = perf_counter_ns()
    for i in range(n):
        call_soon(append, i)
    call_soon(loop.stop)
    loop.run_forever()
    t1 = perf_counter_ns()
    check(ran == list(range(n)), "callbacks missing or out of order: "
          + _first_mismatch(ran, list(range(n))))
    return t1 - t0


def wl_call_soon_chained(loop, n):
    calls = 0
    last = -1
    call_soon = loop.call_soon
    stop = loop.stop

    def step(i):
        nonlocal calls, last
        calls += 1
        last = i
        if i < n:
            call_soon(step, i + 1)
        else:
            stop()

    t0 = perf_counter_ns()
    call_soon(step, 1)
    loop.run_forever()
    t1 = perf_counter_ns()
    check(calls == n and last == n, f"{calls} calls ending at {last}, want {n}")
    return t1 - t0


def wl_call_later(loop, n):
    delays = _spread_delays(n)
    fired: list[int] = []
    append = fired.append
    left = n
    stop = loop.stop

    def cb(i):
        nonlocal left
        append(i)
        left -= 1
        if not left:
            stop()

    call_later = loop.call_later
    t0 = perf_counter_ns()
    for i, d in enumerate(delays):
        call_later(d, cb, i)
    loop.run_forever()
    t1 = perf_counter_ns()
    check(len(fired) == n, f"{len(fired)} timers fired, want {n}")
    check(sorted(fired) == list(range(n)), "some timers fired twice, some never")
    return t1 - t0


def wl_timers_cancelled(loop, n):
    """n timers, 90% cancelled before the loop runs.  Of the cancelled ones
    half had short delays (they would fire during the run if cancel() were
    ignored) and half are 60 s timeouts that never come due, like the guard
    timers of asyncio.timeout()/wait_for() that almost always get cancelled."""
    delays = _spread_delays(n)
    fired: list[int] = []
    append = fired.append
    kept = list(range(0, n, 10))
    left = len(kept)
    stop = loop.stop

    def cb(i):
        nonlocal left
        append(i)
        left -= 1
        if not left:
            stop()

    plan = [(i, delays[i] + (60.0 if i % 10 in (1, 3, 5, 7, 9) else 0.0),
             i % 10 != 0) for i in range(n)]
    call_later = loop.call_later
    doomed = []
    add = doomed.append
    t0 = perf_counter_ns()
    for i, d, cancel in plan:
        h = call_later(d, cb, i)
        if cancel:
            add(h)
    for h in doomed:
        h.cancel()
    loop.run_forever()
    t1 = perf_counter_ns()
    check(sorted(fired) == kept,
          f"{len(fired)} timers fired, want the {len(kept)} not cancelled")
    check(all(h.cancelled() for h in doomed), "cancelled() is False after cancel()")
    return t1 - t0


def _run_coro(loop, coro):
    t0 = perf_counter_ns()
    result = loop.run_until_complete(coro)
    t1 = perf_counter_ns()
    return t1 - t0, result


async def _ping_pong(loop, half):
    sleep = asyncio.sleep
    last = None
    repeats = 0
    steps = [0, 0]

    async def player(me):
        nonlocal last, repeats
        for _ in range(half):
            if last == me:
                repeats += 1
            last = me
            steps[me] += 1
            await sleep(0)

    a = loop.create_task(player(0))
    b = loop.create_task(player(1))
    await a
    await b
    return steps, repeats


def wl_sleep0_ping_pong(loop, n):
    half = n // 2
    ns, (steps, repeats) = _run_coro(loop, _ping_pong(loop, half))
    check(steps == [half, half], f"steps {steps}, want {[half, half]}")
    check(repeats == 0, f"tasks did not alternate ({repeats} repeats): "
          "sleep(0) must yield to the other ready task")
    return ns


async def _tiny(i):
    return i


async def _gather_n(loop, n):
    create_task = loop.create_task
    tasks = [create_task(_tiny(i)) for i in range(n)]
    return await asyncio.gather(*tasks)


def wl_gather(loop, n):
    ns, res = _run_coro(loop, _gather_n(loop, n))
    check(res == list(range(n)), "gather results wrong: "
          + _first_mismatch(list(res), list(range(n))))
    return ns


async def _future_round_trips(loop, n):
    create_future = loop.create_future
    call_soon = loop.call_soon
    total = 0
    for i in range(n):
        fut = create_future()
        call_soon(fut.set_result, i)
        total += await fut
    return total


def wl_future_round_trip(loop, n):
    ns, total = _run_coro(loop, _future_round_trips(loop, n))
    check(total == n * (n - 1) // 2, f"sum of results {total}, want {n * (n - 1) // 2}")
    return ns


QUEUE_MAXSIZE = 16


async def _queue(loop, n):
    q = asyncio.Queue(QUEUE_MAXSIZE)
    done = object()

    async def producer():
        put = q.put
        for i in range(n):
            await put(i)
        await put(done)

    async def consumer():
        get = q.get
        expected = bad = 0
        while True:
            item = await get()
            if item is done:
                return expected, bad
            if item != expected:
                bad += 1
            expected += 1

    p = loop.create_task(producer())
    c = loop.create_task(consumer())
    await p
    return await c


def wl_queue(loop, n):
    ns, (got, bad) = _run_coro(loop, _queue(loop, n))
    check(got == n and bad == 0, f"consumer got {got} items ({bad} out of order), want {n}")
    return ns


def wl_threadsafe(loop, n):
    ran: list[int] = []
    append = ran.append
    go = threading.Event()
    main_ident = threading.get_ident()
    thread_error: list[BaseException] = []

    def producer():
        go.wait()
        try:
            cst = loop.call_soon_threadsafe
            for i in range(n):
                cst(append, i)
            cst(loop.stop)
        except BaseException as exc:
            # The loop would wait forever for the stop; wake the main thread
            # through the watchdog's signal instead.
            thread_error.append(exc)
            signal.pthread_kill(main_ident, signal.SIGALRM)

    th = threading.Thread(target=producer, daemon=True)
    th.start()
    t0 = perf_counter_ns()
    go.set()
    try:
        loop.run_forever()
    except BenchTimeout:
        if thread_error:
            exc = thread_error[0]
            raise BenchFailure(f"in the producer thread: {type(exc).__name__}: {exc}") from None
        raise
    t1 = perf_counter_ns()
    th.join()
    check(ran == list(range(n)), "callbacks missing or out of order: "
          + _first_mismatch(ran, list(range(n))))
    return t1 - t0


async def _future_handoff(loop, n):
    """PRODUCERS tasks each await, n/PRODUCERS times, a future that one
    consumer task resolves (a request/response pattern: RPC clients,
    connection pools)."""
    create_future = loop.create_future
    requests = collections.deque()
    consumer_wake = None
    per = n // HANDOFF_PRODUCERS

    async def producer(p):
        total = 0
        for i in range(per):
            fut = create_future()
            requests.append((fut, i))
            if consumer_wake is not None and not consumer_wake.done():
                consumer_wake.set_result(None)
            total += await fut
        return total

    async def consumer():
        nonlocal consumer_wake
        served = 0
        while served < per * HANDOFF_PRODUCERS:
            if not requests:
                consumer_wake = create_future()
                await consumer_wake
                continue
            while requests:
                fut, i = requests.popleft()
                fut.set_result(2 * i)
                served += 1
        return served

    c = loop.create_task(consumer())
    totals = await asyncio.gather(*[loop.create_task(producer(p))
                                    for p in range(HANDOFF_PRODUCERS)])
    return totals, await c


HANDOFF_PRODUCERS = 100


def wl_future_handoff(loop, n):
    ns, (totals, served) = _run_coro(loop, _future_handoff(loop, n))
    per = n // HANDOFF_PRODUCERS
    want = per * (per - 1)
    check(served == per * HANDOFF_PRODUCERS, f"consumer served {served}")
    check(totals == [want] * HANDOFF_PRODUCERS, "a producer got wrong results")
    return ns


CONTENDERS = 10


async def _lock(loop, n):
    lock = asyncio.Lock()
    owner = None
    overlaps = 0
    sleep = asyncio.sleep

    async def worker(me):
        nonlocal owner, overlaps
        for _ in range(n // CONTENDERS):
            async with lock:
                if owner is not None:
                    overlaps += 1
                owner = me
                await sleep(0)  # hold the lock across a task switch
                owner = None

    await asyncio.gather(*[loop.create_task(worker(i)) for i in range(CONTENDERS)])
    return overlaps


def wl_lock(loop, n):
    ns, overlaps = _run_coro(loop, _lock(loop, n))
    check(overlaps == 0, f"{overlaps} times two tasks held the lock")
    return ns


async def _event(loop, n):
    event = asyncio.Event()
    rounds = n // CONTENDERS
    woken = [0] * CONTENDERS
    sleep = asyncio.sleep

    async def waiter(me):
        wait = event.wait
        for _ in range(rounds):
            await wait()
            woken[me] += 1
            while event.is_set():  # wait for the next round
                await sleep(0)

    tasks = [loop.create_task(waiter(i)) for i in range(CONTENDERS)]
    await sleep(0)
    for _ in range(rounds):
        event.set()
        await sleep(0)  # every waiter wakes (their wakeups were queued first)
        event.clear()
        await sleep(0)
    await asyncio.gather(*tasks)
    return woken


def wl_event(loop, n):
    ns, woken = _run_coro(loop, _event(loop, n))
    rounds = n // CONTENDERS
    check(woken == [rounds] * CONTENDERS, f"wakeups per waiter {woken}, want {rounds}")
    return ns


async def _taskgroup(loop, n):
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(_tiny(i)) for i in range(n)]
    return [t.result() for t in tasks]


def wl_taskgroup(loop, n):
    ns, res = _run_coro(loop, _taskgroup(loop, n))
    check(res == list(range(n)), "TaskGroup results wrong: "
          + _first_mismatch(res, list(range(n))))
    return ns


TREE_BRANCHES = 6


async def _tree_node(size):
    """A task tree of `size` tasks, TREE_BRANCHES children per node, each
    node joining its children in a TaskGroup (pyperformance's async_tree
    shape); returns the number of tasks that ran."""
    rest = size - 1
    if rest <= 0:
        return 1
    per, extra = divmod(rest, TREE_BRANCHES)
    async with asyncio.TaskGroup() as tg:
        kids = [tg.create_task(_tree_node(per + (1 if i < extra else 0)))
                for i in range(min(TREE_BRANCHES, rest))]
    return 1 + sum(k.result() for k in kids)


async def _eager_tree(loop, n):
    eager = getattr(asyncio, "eager_task_factory", None)  # 3.12+
    loop.set_task_factory(eager)
    try:
        return await _tree_node(n)
    finally:
        loop.set_task_factory(None)


def wl_eager_tree(loop, n):
    ns, ran = _run_coro(loop, _eager_tree(loop, n))
    check(ran == n, f"{ran} of {n} tasks ran")
    return ns


async def _pending_memory(loop, n):
    import tracemalloc

    async def waiter(fut):
        return await fut

    futures = [loop.create_future() for _ in range(n)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tasks = [loop.create_task(waiter(f)) for f in futures]
        await asyncio.sleep(0)  # every task has run to its await
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    pending = sum(not t.done() for t in tasks)
    for i, f in enumerate(futures):
        f.set_result(i)
    return after - before, pending, await asyncio.gather(*tasks)


def wl_pending_memory(loop, n):
    """Bytes (tracemalloc: every Python object, native ones included) per
    task created and suspended on a future; the futures themselves are made
    before measuring."""
    nbytes, pending, res = loop.run_until_complete(_pending_memory(loop, n))
    check(pending == n, f"{pending} of {n} tasks were pending")
    check(res == list(range(n)), "results wrong")
    return nbytes


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    fn: Callable
    n: int          # operations per measurement in the default run
    op: str         # what one operation is
    unit: str = "ns"  # what fn returns: elapsed "ns", or "bytes" used


WORKLOADS = (
    Workload("call_soon", "call_soon batched", wl_call_soon_batched, 50_000,
             "one callback (scheduled up front, then run)"),
    Workload("call_soon_chain", "call_soon chained", wl_call_soon_chained, 30_000,
             "one callback that schedules the next"),
    Workload("call_later", "call_later timers", wl_call_later, 30_000,
             "one timer scheduled and fired"),
    Workload("timers_cancel", "timers 90% cancelled", wl_timers_cancelled, 30_000,
             "one timer scheduled (then cancelled or fired)"),
    Workload("sleep0", "sleep(0) ping-pong", wl_sleep0_ping_pong, 30_000,
             "one task switch"),
    Workload("gather", "create_task + gather", wl_gather, 15_000,
             "one task created, run and gathered"),
    Workload("future", "future round trip", wl_future_round_trip, 20_000,
             "create_future, call_soon(set_result), await"),
    Workload("queue", f"Queue(maxsize={QUEUE_MAXSIZE}) prod/cons", wl_queue, 40_000,
             "one item put and got"),
    Workload("threadsafe", "call_soon_threadsafe (thread)", wl_threadsafe, 20_000,
             "one callback sent from another thread"),
    # Coroutines, tasks and futures (issue 4's rows).
    Workload("gather100k", "create_task + gather, 100k", wl_gather, 100_000,
             "one task created, run and gathered"),
    Workload("handoff", f"future handoff ({HANDOFF_PRODUCERS} producers)",
             wl_future_handoff, 20_000,
             "one future created, awaited and resolved by another task"),
    Workload("lock", f"Lock, {CONTENDERS} contenders", wl_lock, 20_000,
             "one acquire/release, held across a task switch"),
    Workload("event", f"Event, {CONTENDERS} waiters", wl_event, 20_000,
             "one waiter woken"),
    Workload("taskgroup", "TaskGroup fan-out", wl_taskgroup, 20_000,
             "one task created in a TaskGroup and joined"),
    Workload("eager_tree", "eager TaskGroup tree", wl_eager_tree, 20_000,
             "one task of a 6-ary TaskGroup tree, made by asyncio.eager_task_factory"
             " (3.12+; on 3.11 not eager)"),
    Workload("pending_memory", "memory per pending task", wl_pending_memory, 20_000,
             "one task suspended on a future (bytes)", unit="bytes"),
)


# --------------------------------------------------------------------------
# Loops
# --------------------------------------------------------------------------

def _module_version(name: str) -> str:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        mod = sys.modules.get(name)
        return str(getattr(mod, "__version__", "?"))


def _build_stamp(mod) -> str:
    """When the loop's compiled extension was built: ferroloop is rebuilt all
    the time, and a table should say which build it measured."""
    ext = sys.modules.get(f"{mod.__name__}._{mod.__name__}")
    path = getattr(ext, "__file__", None)
    if not path or path.endswith(".py"):
        return ""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(path)))
    return f" (extension built {stamp})"


def load_loops(names):
    """Return ({name: factory}, {name: version}, {name: why skipped})."""
    factories, versions, skipped = {}, {}, {}
    for name in names:
        try:
            if name == "asyncio":
                # On Linux this is what asyncio.new_event_loop() returns, but
                # taken directly so an installed policy cannot swap it.
                factory = asyncio.SelectorEventLoop
                versions[name] = "stdlib"
            elif name == "ferroloop-aio":
                import functools
                mod = importlib.import_module("ferroloop")
                factory = functools.partial(mod.new_event_loop, native_futures=False)
                versions[name] = "(asyncio's Future/Task)"
            else:
                mod = importlib.import_module(name)
                factory = mod.new_event_loop
                versions[name] = _module_version(name)
                if name == "ferroloop":
                    versions[name] += _build_stamp(mod)
            # Smoke test: a loop that cannot run a coroutine is not benchmarked.
            signal.setitimer(signal.ITIMER_REAL, 10)
            lp = factory()
            try:
                got = lp.run_until_complete(asyncio.sleep(0, result=42))
                if got != 42:
                    raise BenchFailure(f"run_until_complete returned {got!r}")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                lp.close()
        except (Exception, BenchTimeout) as exc:  # ImportError, or a half-built loop
            if isinstance(exc, BenchTimeout):
                exc = BenchFailure("run_until_complete(asyncio.sleep(0)) hangs")
            skipped[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
            versions.pop(name, None)
            continue
        factories[name] = factory
    return factories, versions, skipped


# --------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------

def _on_alarm(signum, frame):
    raise BenchTimeout()


def measure(factory, workload: Workload, n: int, timeout: float, no_gc: bool) -> int:
    loop = None
    errors: list[str] = []

    def handler(lp, ctx):
        exc = ctx.get("exception")
        errors.append(f"{ctx.get('message')}: {exc!r}" if exc else str(ctx.get("message")))

    signal.setitimer(signal.ITIMER_REAL, timeout)
    # Last resort if the loop sits in a blocking call that never lets the
    # SIGALRM handler run: dump every thread's stack and exit.
    faulthandler.dump_traceback_later(timeout + 30, exit=True)
    try:
        loop = factory()
        loop.set_exception_handler(handler)
        gc.collect()
        if no_gc:
            gc.disable()
        ns = workload.fn(loop, n)
    except BenchTimeout:
        raise BenchFailure(f"no result after {timeout:g} s") from None
    except BenchFailure:
        raise
    except Exception as exc:  # e.g. a method the loop does not have yet
        where = ""
        tb = exc.__traceback__
        while tb is not None:
            where = f" ({os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno})"
            tb = tb.tb_next
        raise BenchFailure(f"{type(exc).__name__}: {exc}{where}"[:300]) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        gc.enable()
        try:
            if loop is not None:
                loop.close()
        except Exception:
            pass
    if errors:
        raise BenchFailure("exception handler called: " + errors[0][:200])
    return ns


def _cpu_times():
    """Aggregate jiffies from /proc/stat (Linux), or None."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def _steal_percent(before, after):
    """Share of CPU time the hypervisor gave to other guests meanwhile."""
    if not before or not after or len(before) < 8:
        return None
    d = [a - b for a, b in zip(after, before)]
    total = sum(d[:8])  # user nice system idle iowait irq softirq steal
    return round(100.0 * d[7] / total, 1) if total else None


def fmt_value(value_per_op: float, unit: str) -> str:
    if unit == "bytes":
        return f"{value_per_op:.0f} B"
    return fmt_time(value_per_op)


def fmt_time(ns_per_op: float) -> str:
    if ns_per_op < 1000:
        return f"{ns_per_op:.0f} ns" if ns_per_op >= 100 else f"{ns_per_op:.1f} ns"
    us = ns_per_op / 1000
    return f"{us:.2f} µs" if us < 100 else f"{us:.0f} µs"


def _log(args):
    def log(msg):
        if not args.silent:
            print(msg, file=sys.stderr, flush=True)
    return log


def run_workload(w: Workload, loops, factories, args, log) -> dict:
    """Measure one workload on every loop, interleaved, in this process."""
    n = max(10, int(w.n * args.scale))
    n_warm = max(10, n // 10)
    samples: dict[str, list[int]] = {l: [] for l in loops}
    failed: dict[str, str] = {}
    wstart = time.monotonic()
    for l in loops:  # warm-up, untimed but checked
        try:
            measure(factories[l], w, n_warm, args.timeout, args.no_gc)
        except BenchFailure as exc:
            failed[l] = f"warm-up: {exc}"
    for rep in range(args.reps):
        k = rep % len(loops)
        for l in loops[k:] + loops[:k]:
            if l in failed:
                continue
            try:
                samples[l].append(measure(factories[l], w, n, args.timeout, args.no_gc))
            except BenchFailure as exc:
                failed[l] = f"rep {rep + 1}: {exc}"
    row = {"title": w.title, "n": n, "op": w.op, "unit": w.unit, "loops": {}}
    for l in loops:
        if l in failed:
            row["loops"][l] = {"error": failed[l]}
            continue
        s = samples[l]
        row["loops"][l] = {
            "samples_ns": s,
            "min_ns_per_op": min(s) / n,
            "median_ns_per_op": statistics.median(s) / n,
        }
    base = row["loops"].get(BASELINE, {})
    for l, r in row["loops"].items():
        if "error" in r or "error" in base or not base:
            continue
        paired = [b / x for b, x in zip(base["samples_ns"], r["samples_ns"])]
        r["ratio"] = statistics.median(paired)  # what the table shows
        r["ratio_paired_range"] = [min(paired), max(paired)]
        r["ratio_of_mins"] = base["min_ns_per_op"] / r["min_ns_per_op"]
    cells = ", ".join(
        f"{l} " + ("FAILED" if "error" in r else fmt_value(r["min_ns_per_op"], w.unit))
        for l, r in row["loops"].items())
    log(f"  {w.title:<32} n={n:<7} {cells}  [{time.monotonic() - wstart:.1f}s]")
    return row


# --------------------------------------------------------------------------
# Isolation: one fresh interpreter per workload
# --------------------------------------------------------------------------
# Workloads contaminate each other inside one process: after timers_cancel
# (where rloop 0.5 leaks the Context of each cancelled 60 s timer, ~240k in
# all), gather ran ~2x slower on asyncio and ferroloop than in a fresh process
# (longer GC passes over a fragmented heap).  So by default the parent
# re-runs this script once per workload (CHILD_FLAG, --workloads <one>,
# --json <tmp file>); the child measures that workload on all loops,
# interleaved as in --in-process, and the parent merges the rows.

CHILD_FLAG = "--isolated-child"


def _crash_line(tail) -> str:
    """The most telling line of a dead child's output."""
    lines = [s.strip() for s in tail if s.strip()]
    for s in lines:
        if s.startswith(("Fatal Python error", "Timeout (")):
            return s[:200]
    return lines[-1][:200] if lines else ""


def _child_time_limit(args, n_loops: int) -> float:
    """The child's own watchdogs (SIGALRM, then faulthandler) end a stuck
    measurement; this is only the last resort if both fail."""
    return 60 + (args.reps + 1) * n_loops * (args.timeout + 30)


def _run_child(w: Workload, loops, args, tmpdir):
    """Run one workload in a fresh interpreter.  Returns (exit status, the
    child's report or None, last lines of its output, True if it was killed
    for taking too long).  The child's stdout and stderr are relayed to our
    stderr as they come (progress lines, tracebacks, faulthandler dumps), so
    our stdout still carries only the table."""
    path = os.path.join(tmpdir, f"{w.key}.json")
    argv = [sys.executable]
    try:  # -X, -W, -O ... the parent was started with
        argv += subprocess._args_from_interpreter_flags()
    except Exception:
        pass
    argv += [os.path.abspath(__file__), CHILD_FLAG, "--json", path,
             "--loops", ",".join(loops), "--workloads", w.key,
             "--reps", str(args.reps), "--scale", repr(args.scale),
             "--timeout", repr(args.timeout)]
    if args.no_gc:
        argv.append("--no-gc")
    if args.silent:
        argv.append("--silent")
    tail: collections.deque[str] = collections.deque(maxlen=50)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)

    def relay():
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            tail.append(line)
            try:
                sys.stderr.write(line)
                sys.stderr.flush()
            except Exception:
                pass

    relay_thread = threading.Thread(target=relay, daemon=True)
    relay_thread.start()
    hung = False
    try:
        rc = proc.wait(timeout=_child_time_limit(args, len(loops)))
    except subprocess.TimeoutExpired:
        hung = True
        proc.kill()
        rc = proc.wait()
    finally:
        if proc.poll() is None:  # e.g. KeyboardInterrupt in the parent
            proc.kill()
            proc.wait()
        relay_thread.join(5)
    report = None
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError):
        pass
    return rc, report, list(tail), hung


def run_isolated(workloads, loops, versions, args, log):
    """Each workload in its own subprocess; returns (rows, problems, notes).
    problems make the exit status 1 like a FAILED cell; notes do not."""
    results: dict[str, dict] = {}
    problems: list[str] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench_scheduling-") as tmpdir:
        for w in workloads:
            rc, child, tail, hung = _run_child(w, loops, args, tmpdir)
            exit_desc = describe_exit(rc)
            row = child["workloads"].get(w.key) if child else None
            if row is None:
                why = ("subprocess killed after taking too long" if hung
                       else f"subprocess died ({exit_desc}) without results")
                last = _crash_line(tail)
                if last:
                    why += f": {last}"
                n = max(10, int(w.n * args.scale))
                log(f"  {w.title:<32} n={n:<7} FAILED: {why}")
                row = {"title": w.title, "n": n, "op": w.op,
                       "loops": {l: {"error": why} for l in loops}}
            else:
                got = row["loops"]
                row["loops"] = {
                    l: got.get(l) or {"error": "did not load in the subprocess: "
                                      + child["skipped"].get(l, "?")}
                    for l in loops}
                if rc not in (0, 1):
                    problems.append(f"{w.key}: the subprocess wrote its results, "
                                    f"then died ({exit_desc}): {_crash_line(tail)}")
                for l in loops:
                    v = child["versions"].get(l)
                    if v is not None and v != versions[l]:
                        notes.append(f"{w.key} was measured with {l} {v}")
            row["subprocess"] = {
                "exit_status": rc,
                "seconds": child["seconds"] if child else None,
                "loadavg_after": child["loadavg_after"] if child else None,
            }
            results[w.key] = row
    return results, problems, notes


def run(args) -> dict:
    names = [s.strip() for s in args.loops.split(",") if s.strip()]
    unknown = [n for n in names if n not in ALL_LOOPS]
    if unknown:
        sys.exit(f"unknown loop(s) {unknown}; choose from {', '.join(ALL_LOOPS)}")
    names = [n for n in ALL_LOOPS if n in names]  # baseline first, fixed column order
    keys = [s.strip() for s in args.workloads.split(",") if s.strip()] if args.workloads else None
    workloads = [w for w in WORKLOADS if keys is None or w.key in keys]
    if keys and len(workloads) != len(keys):
        sys.exit(f"unknown workload in {keys}; choose from "
                 + ", ".join(w.key for w in WORKLOADS))

    # The parent also loads every loop (and smoke-tests it), to know early
    # which ones work and what versions the header should show.
    signal.signal(signal.SIGALRM, _on_alarm)
    factories, versions, skipped = load_loops(names)
    loops = list(factories)
    if not loops:
        sys.exit("no event loop could be loaded: " + json.dumps(skipped))
    log = _log(args)
    isolated = not (args.in_process or args.child)
    if not args.child:
        log(f"loops: {', '.join(f'{l} {versions[l]}' for l in loops)}"
            + (f"; skipped: {', '.join(skipped)}" if skipped else "")
            + ("; one subprocess per workload" if isolated else "; all in this process"))
    started = time.monotonic()
    load_before = os.getloadavg()
    cpu_before = _cpu_times()
    problems: list[str] = []
    notes: list[str] = []
    if isolated:
        # SIGTERM to the parent: exit through the finally clauses that kill
        # the running child and remove the temporary directory.
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        results, problems, notes = run_isolated(workloads, loops, versions, args, log)
    else:
        # Everything imported so far goes to the permanent generation, so the
        # collector's cost during a run depends on what the workload
        # allocates, not on how big the harness is.
        gc.collect()
        gc.freeze()
        results = {w.key: run_workload(w, loops, factories, args, log) for w in workloads}

    return {
        **machine(),
        "loops": loops,
        "versions": versions,
        "skipped": skipped,
        "reps": args.reps,
        "scale": args.scale,
        "isolation": "subprocess per workload" if isolated else "in-process",
        "statistic": "time: min over reps; ratio: median over reps of same-rep ratios",
        "gc_during_timing": not args.no_gc,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "cpu_steal_percent": _steal_percent(cpu_before, _cpu_times()),
        "seconds": time.monotonic() - started,
        "problems": problems,
        "notes": notes,
        "workloads": results,
    }


def render(report: dict) -> str:
    loops = report["loops"]
    steal = report["cpu_steal_percent"]
    out = [
        f"Python {report['python']} on {report['platform']}, {report['cpus']} CPUs; "
        f"{report['reps']} interleaved repetitions, fresh loop each, "
        + ("fresh process per workload; "
           if report.get("isolation", "in-process") != "in-process"
           else "all workloads in one process; ")
        + f"GC {'on' if report['gc_during_timing'] else 'off'} while timing; "
        f"load average {report['loadavg_before'][0]:.2f} -> {report['loadavg_after'][0]:.2f}"
        + (f", CPU steal {steal}%" if steal is not None else "")
        + f"; took {report['seconds']:.0f} s.",
        "",
        "Loops: " + ", ".join(f"{l} {report['versions'][l]}" for l in loops) + ".",
    ]
    for l, why in report["skipped"].items():
        out.append(f"Skipped {l}: {why}")
    out += ["", "Time per operation, best of the repetitions, and in brackets the speed-up "
            "over asyncio (asyncio time / loop time, median over repetitions of the "
            "same-repetition ratio; >1 means faster than asyncio).  Rows in bytes: "
            "memory per operation, and asyncio bytes / loop bytes:", ""]
    head = ["workload", "N"] + loops + ["spread"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join(["---", "--:"] + ["--:"] * len(loops) + ["--:"]) + "|")
    notes: list[tuple[str, str]] = []
    note_loops: dict[tuple[str, str], list[str]] = {}  # (title, error) -> loops
    ratios: dict[str, list[float]] = {l: [] for l in loops}
    for row in report["workloads"].values():
        cells = [row["title"], str(row["n"])]
        spread = 0.0
        for l in loops:
            r = row["loops"][l]
            if "error" in r:
                key = (row["title"], r["error"])
                if key not in note_loops:
                    note_loops[key] = []
                    notes.append(key)
                note_loops[key].append(l)
                cells.append(f"FAILED [{notes.index(key) + 1}]")
                continue
            cell = fmt_value(r["min_ns_per_op"], row.get("unit", "ns"))
            if "ratio" in r:
                cell += f" ({r['ratio']:.2f}x)"
                ratios[l].append(r["ratio"])
            cells.append(cell)
            spread = max(spread, r["median_ns_per_op"] / r["min_ns_per_op"] - 1)
        cells.append(f"{spread * 100:.0f}%")
        out.append("| " + " | ".join(cells) + " |")
    if any(ratios.values()):
        cells = ["geometric mean of ratios", ""]
        for l in loops:
            rs = ratios[l]
            cell = f"{math.exp(sum(map(math.log, rs)) / len(rs)):.2f}x" if rs else "-"
            if rs and len(rs) < len(report["workloads"]):
                cell += f" (of {len(rs)} workloads)"
            cells.append(cell)
        out.append("| " + " | ".join(cells + [""]) + " |")
    out += ["", "spread: the row's largest (median time / best time - 1), a noise gauge."]
    for i, (title, error) in enumerate(notes, 1):
        out.append(f"[{i}] {', '.join(note_loops[title, error])} / {title}: {error}")
    for problem in report.get("problems", ()):
        out.append(f"Problem: {problem}")
    for note in report.get("notes", ()):
        out.append(f"Note: {note}")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke test: N/5, 3 repetitions (a few seconds)")
    p.add_argument("--loops", default=",".join(ALL_LOOPS),
                   help=f"comma-separated subset of {','.join(ALL_LOOPS)} (default: all)")
    p.add_argument("--workloads", default="",
                   help="comma-separated subset of: " + ",".join(w.key for w in WORKLOADS))
    p.add_argument("--reps", type=int, default=None,
                   help="timed repetitions per loop and workload (default 15, --quick 3)")
    p.add_argument("--scale", type=float, default=None,
                   help="multiply every workload's N (default 1, --quick 0.2)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds one measurement may take before it counts as failed")
    p.add_argument("--no-gc", action="store_true",
                   help="disable the cyclic GC inside the timed region")
    p.add_argument("--json", metavar="PATH", help="also write raw samples and summary here")
    p.add_argument("--silent", action="store_true", help="no progress on stderr")
    p.add_argument("--in-process", action="store_true",
                   help="run all workloads in this one process, one after another "
                   "(default: a fresh subprocess per workload, so one workload's "
                   "leftover heap and GC state cannot slow down the next)")
    p.add_argument(CHILD_FLAG, dest="child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    args = p.parse_args(argv)
    if args.list:
        for w in WORKLOADS:
            print(f"{w.key:<16} N={w.n:<7} {w.title}: per op = {w.op}")
        return 0
    if args.reps is None:
        args.reps = 3 if args.quick else 15
    if args.scale is None:
        args.scale = 0.2 if args.quick else 1.0
    if args.reps < 1 or args.scale <= 0:
        p.error("--reps must be >= 1 and --scale > 0")
    if args.child:
        if not args.json:
            p.error(f"{CHILD_FLAG} needs --json")
        # A crash in a loop's extension should leave a Python stack behind.
        faulthandler.enable()

    report = run(args)
    if args.child:  # the parent reads the JSON and prints the table
        with open(args.json, "w") as f:
            json.dump(report, f)
        return 1 if any("error" in r for row in report["workloads"].values()
                        for r in row["loops"].values()) else 0
    text = render(report)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    failed = any("error" in r for row in report["workloads"].values()
                 for r in row["loops"].values())
    return 1 if failed or report.get("problems") else 0


if __name__ == "__main__":
    sys.exit(main())
