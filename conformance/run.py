#!/usr/bin/env python3
"""Run CPython's own asyncio test suite on ferroloop and compare with asyncio.

Usage
-----
    # one Python (the one running this script), default module list:
    /work/venv312/bin/python conformance/run.py

    # all three CI Pythons from one driver, two jobs at a time:
    python3 conformance/run.py --python /work/venv311/bin/python \\
        --python /work/venv312/bin/python --python /work/venv313/bin/python -j2

    # stock asyncio only (no ferroloop needed), a few modules:
    python3 conformance/run.py --python-only-asyncio --modules test_locks,test_queues

Each module of ``test.test_asyncio`` (the copy shipped with the target
Python; nothing is copied into this repo) runs in a fresh subprocess
(conformance/worker.py) twice: on stock asyncio (the baseline) and with
ferroloop injected.  A test that succeeds on asyncio but fails, errors,
crashes, hangs or does not run on ferroloop is a *regression*; the exit
status is 1 if there is any.  Tests that already fail on stock asyncio on
this machine are ignored.

Injection strategy (worker.inject_ferroloop / worker.LOOP_PATCHES)
------------------------------------------------------------------
Before the test module is imported, in the child process only:

1. ``asyncio.DefaultEventLoopPolicy`` is rebound to
   ``ferroloop.EventLoopPolicy`` in every ``asyncio*`` module namespace that
   holds it.  This is the hook that survives the tests' own resets: every
   ``tearDownModule`` (and several tests) call
   ``asyncio.set_event_loop_policy(None)``, after which
   ``events._init_event_loop_policy()`` runs ``from . import
   DefaultEventLoopPolicy`` and so builds a ferroloop policy again.  Tests
   that instantiate ``asyncio.DefaultEventLoopPolicy()`` themselves (test_events
   PolicyTests, GetEventLoopTests) also get ferroloop loops from it.
2. ``asyncio.set_event_loop_policy(ferroloop.EventLoopPolicy())``.
   With 1 and 2, everything that asks the policy for a loop gets a
   ferroloop.Loop: ``asyncio.new_event_loop()``, ``asyncio.run()``,
   ``asyncio.Runner()``, and ``unittest.IsolatedAsyncioTestCase`` (which
   uses ``asyncio.Runner``; on 3.13 with ``loop_factory=None``).
   ``asyncio.new_event_loop`` itself is deliberately NOT replaced by a
   function returning ferroloop.new_event_loop(): it already goes through
   the policy, and test_runners checks exactly that ``asyncio.run()``
   honours a custom policy installed by the test.
3. 3.13+: ``asyncio.EventLoop`` (the "default loop class", used as
   ``loop_factory=asyncio.EventLoop``) is rebound to ``ferroloop.Loop``.
   ``asyncio.SelectorEventLoop`` is left alone: ferroloop.Loop derives from
   it, and tests construct it on purpose.
4. Some modules do not ask the policy for their loops: they construct
   ``asyncio.SelectorEventLoop(...)`` explicitly in a per-class factory,
   so 1-3 leave them on stock loops.  worker.LOOP_PATCHES redirects those
   factories to ``ferroloop.new_event_loop()`` (in ferroloop mode only):

   * test_events, test_sock_lowlevel, test_sendfile run their mixins once
     per stock selector (EPoll/Poll/Select/KqueueEventLoopTests, each with
     ``create_event_loop`` returning ``SelectorEventLoop(<selector>)``).
     Those classes are removed and ``FerroloopEventLoopTests`` (a subclass
     of ``EPollEventLoopTests`` whose ``create_event_loop`` returns
     ``ferroloop.new_event_loop()``) takes their place.  Its baseline is
     ``EPollEventLoopTests`` (ferroloop polls with mio, i.e. epoll); the
     Poll/Select classes run in the baseline only and are reported as
     "asyncio-only by design".
   * test_buffered_proto (``BufferedProtocolSelectorTests``) and
     test_server (``SelectorStartServerTests``) have one selector class
     whose ``new_loop`` returns ``asyncio.SelectorEventLoop()`` (the
     default, epoll, selector); ``new_loop`` is overridden in place, so
     the test ids are the same in both modes.  test_server's
     IsolatedAsyncioTestCase classes (TestServer2, 3.13's
     UnixServerCleanupTests) are covered by 2 already.
   * test_protocols is not patched: it only checks the protocol ABCs and
     never makes a loop.

5. test_runners and test_pep492 build their loops as a bare abstract
   ``asyncio.BaseEventLoop()`` with a Mock selector, so as written none of
   their tests would touch ferroloop.  A small fixture adapter
   (worker.ADAPTERS) gives them a real loop instead, in *both* modes so the
   comparison stays symmetric: stock SelectorEventLoop for the baseline,
   ferroloop.new_event_loop() for ferroloop; test_runners' shutdown_ag_run
   flag is kept.  --no-adapters restores the upstream fixtures.

Deliberately left on stock loops:

* ``test_utils.TestLoop`` (``TestCase.new_test_loop()``, many tests of
  test_tasks/test_futures): a BaseEventLoop subclass with a generator-driven
  fake clock that overrides ``time()`` and ``_run_once()``.  Rebasing it on
  ferroloop would test neither (the native scheduler would be bypassed by
  ``_run_once`` or would ignore the fake clock); these tests check the
  Task/Future machinery, not the loop.  They are counted as "testloop"
  in the per-test loop records.
* bare ``asyncio.BaseEventLoop()`` dummies (test_pep492, test_runners) and
  loops that tests create from their own classes or policies.

Verification: worker.py wraps ``BaseEventLoop.__init__``/``run_forever``
(and ``ferroloop.Loop``'s) in *both* modes and records, per test, which
loop kinds were created and run.  The table's "on-ferro" column counts the
tests that ran a ferroloop.Loop; "stock" counts tests that still ran a real
stock loop in ferroloop mode (expected: only test_events' policy tests that
install their own stock-loop policies, and the like; a module whose tests
show up here wholesale builds its loops explicitly and needs an entry in
worker.LOOP_PATCHES).

Hang and crash protection: each test has a limit (--test-timeout, via
faulthandler in the child), each module run a total limit (--timeout,
enforced here by killing the child's process group).  Results are
streamed, so when a child segfaults or is killed the test in progress is
recorded as crash/timeout and the module is restarted after it; tests that
never got to run are "not_run" (a regression if they pass on asyncio).
A hang or crash after a test has reported (e.g. while
IsolatedAsyncioTestCase closes its Runner) is charged to that test.
Failed/errored/crashed regressions are re-run once in a fresh process
(--no-rerun to disable); those that pass then are reported as flaky and not
counted.  Timeouts are not re-run.

Known differences: conformance/known_differences.txt, one per line:
``[<python-version>:]<test-id-or-fnmatch-glob> <reason>``, e.g.
``3.13:test.test_asyncio.test_events.FerroloopEventLoopTests.test_foo  loop
is not a BaseSelectorEventLoop``.  They are reported separately and do not
fail the run; entries that no longer fail are listed as stale.

Output: conformance/results/py<X.Y>/<module>.{asyncio,ferroloop}.jsonl (raw
per-test records) and .log (child stdout/stderr), <module>.json (the
comparison), and conformance/results/summary.json.
"""

import argparse
import concurrent.futures
import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKER = HERE / "worker.py"
KNOWN_FILE = HERE / "known_differences.txt"
PACKAGE = "test.test_asyncio"

DEFAULT_MODULES = (
    "test_tasks", "test_futures", "test_futures2", "test_locks",
    "test_queues", "test_taskgroups", "test_timeouts", "test_runners",
    "test_waitfor", "test_pep492", "test_context", "test_threads",
    "test_events", "test_eager_task_factory",
    # Streams, subprocesses and TLS run asyncio's own transports over the
    # native loop and, since issue 4, on native futures and tasks: kept in
    # the default run so that neither can break them unnoticed.
    "test_streams", "test_subprocess", "test_ssl", "test_sslproto",
    "test_unix_events", "test_base_events",
    # Socket-level loop API (sock_* methods, sendfile, servers, buffered
    # protocols) on ferroloop's own loop: these build their loops
    # explicitly, see docstring point 4.  test_protocols only checks the ABCs.
    "test_server", "test_sock_lowlevel", "test_sendfile",
    "test_buffered_proto", "test_protocols",
    # 3.13 only: staggered_race, which create_connection's happy eyeballs
    # runs on native tasks.
    "test_staggered",
)
# Submission order: longest first, so that -j2 packs well.  Measured per
# run on this 2-core machine (3.11-3.13): test_tasks 23-31s, test_events
# 9-15s on asyncio (all selector classes) / ~4s on ferroloop, test_taskgroups
# ~6s, test_sock_lowlevel and test_sendfile ~3s (asyncio 2s with three
# selector classes + ferroloop 1s), everything else < 4s.  A full
# asyncio+ferroloop comparison takes ~2 min per Python at -j1, ~1 min at -j2.
DURATION_HINT = {"test_tasks": 30, "test_events": 20, "test_subprocess": 13,
                 "test_ssl": 11, "test_taskgroups": 6, "test_sslproto": 5,
                 "test_futures": 3, "test_sock_lowlevel": 3,
                 "test_sendfile": 3}

# ferroloop-mode test id fragment -> baseline id fragment (see docstring 4.):
# FerroloopEventLoopTests replaces the per-selector classes of test_events,
# test_sock_lowlevel and test_sendfile.  The ")" form is for class fixture
# pseudo-ids, e.g. "setUpClass (test.test_asyncio.test_sendfile.Ferro...)".
BASELINE_ALIASES = {".FerroloopEventLoopTests.": ".EPollEventLoopTests.",
                    ".FerroloopEventLoopTests)": ".EPollEventLoopTests)"}
# Native Future/Task variants (worker.patch_native_future_variants), and
# the native SSLProtocol's: each is compared with the class it was made from.
for _ferro, _c in (("FerroFutureTests", "CFutureTests"),
                   ("FerroSubFutureTests", "CSubFutureTests"),
                   ("FerroFutureDoneCallbackTests", "CFutureDoneCallbackTests"),
                   ("FerroSubFutureDoneCallbackTests",
                    "CSubFutureDoneCallbackTests"),
                   ("FerroFutureInheritanceTests", "CFutureInheritanceTests"),
                   ("FerroTask_FerroFuture_SubclassTests",
                    "CTask_CFuture_SubclassTests"),
                   ("FerroTask_FerroFuture_Tests", "CTask_CFuture_Tests"),
                   ("FerroTask_CFuture_Tests", "CTask_PyFuture_Tests"),
                   ("CTask_FerroFuture_Tests", "CTask_PyFuture_Tests"),
                   ("FerroCurrentLoopTests", "CCurrentLoopTests"),
                   ("FerroEagerTaskFactoryLoopTests", "CEagerTaskFactoryLoopTests"),
                   ("NonEagerFerroTaskTests", "NonEagerCTaskTests"),
                   ("EagerFerroTaskTests", "EagerCTaskTests"),
                   ("FerroSslProtoHandshakeTests", "SslProtoHandshakeTests")):
    BASELINE_ALIASES[f".{_ferro}."] = f".{_c}."
del _ferro, _c

OK = ("success", "expected_failure")
BAD = ("failure", "error", "unexpected_success", "crash", "timeout",
       "not_run")

PRINT_LOCK = threading.Lock()


def log(msg):
    with PRINT_LOCK:
        print(msg, flush=True)


# --------------------------------------------------------------------------
# Target interpreters

PROBE = r"""
import importlib.util, json, sys
out = {"version": sys.version.split()[0], "tag": "%d.%d" % sys.version_info[:2],
       "modules": {}, "ferroloop": None, "ferroloop_error": None}
for m in sys.argv[1:]:
    try:
        out["modules"][m] = importlib.util.find_spec(m) is not None
    except Exception:
        out["modules"][m] = False
try:
    import ferroloop
    out["ferroloop"] = getattr(ferroloop, "__file__", "?")
except Exception as e:
    out["ferroloop_error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out))
"""


def probe_python(python, modules):
    with tempfile.TemporaryDirectory(prefix="ferroconf-") as tmp:
        proc = subprocess.run(
            [python, "-c", PROBE, *[f"{PACKAGE}.{m}" for m in modules]],
            capture_output=True, text=True, cwd=tmp, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{python}: probe failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------
# Running one module in one mode

def _read_jsonl(path):
    records = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    pass        # torn last line of a killed child
    except FileNotFoundError:
        pass
    return records


def _merge(old, new):
    """Two records for one id (e.g. repeated fixture errors): keep worst."""
    if old is None:
        return new
    order = ("crash", "timeout", "error", "failure", "unexpected_success",
             "not_run", "skip", "expected_failure", "success")
    return old if order.index(old["outcome"]) <= order.index(new["outcome"]) \
        else new


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_module(python, module, mode, outdir, *, timeout, test_timeout,
               adapters=True, only=None, tag="", max_restarts=25):
    """Run one test module in one mode, restarting after crashes/hangs.

    Returns a dict: tests (id -> record), collected (ids), seconds, notes,
    start_run (the child's interpreter record).
    """
    stem = f"{module}.{mode}{tag}"
    jsonl = outdir / f"{stem}.jsonl"
    logf = outdir / f"{stem}.log"
    for p in (jsonl, logf):
        if p.exists():
            p.unlink()
    tests, collected, notes, start_run = {}, None, [], None
    streamed_kinds = {}     # id -> {"created": set(), "ran": set()}
    t0 = time.monotonic()
    deadline = t0 + timeout
    attempt = 0
    workdir = Path(tempfile.mkdtemp(prefix=f"ferroconf-{module}-"))
    try:
        while True:
            attempt += 1
            skip_file = workdir / "skip.txt"
            skip_file.write_text("\n".join(tests))
            cmd = [python, str(WORKER), "--module", module, "--mode", mode,
                   "--out", str(jsonl), "--skip-file", str(skip_file),
                   "--test-timeout", str(test_timeout)]
            if not adapters:
                cmd.append("--no-adapters")
            if only is not None:
                only_file = workdir / "only.txt"
                only_file.write_text("\n".join(only))
                cmd += ["--only-file", str(only_file)]
            n_before = len(_read_jsonl(jsonl))
            with open(logf, "a", encoding="utf-8") as lf:
                lf.write(f"=== attempt {attempt}: {' '.join(cmd)}\n")
                lf.flush()
                log_offset = lf.tell()
                proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=workdir,
                                        start_new_session=True)
                killed = False
                try:
                    proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    killed = True
                    _kill_group(proc)
                    proc.wait()
                _kill_group(proc)    # stray grandchildren of this child only

            records = _read_jsonl(jsonl)[n_before:]
            in_progress, last_started, done = None, None, False
            for r in records:
                ev = r.get("event")
                if ev == "start_run":
                    start_run = start_run or r
                elif ev == "collected":
                    if collected is None:
                        collected = r["ids"]
                elif ev == "start":
                    in_progress = last_started = r["id"]
                elif ev == "loop":
                    k = streamed_kinds.setdefault(
                        r["id"], {"created": set(), "ran": set()})
                    k[r["how"]].add(r["kind"])
                elif ev == "result":
                    tests[r["id"]] = _merge(tests.get(r["id"]), r)
                    if r["id"] == in_progress:
                        in_progress = None
                elif ev == "done":
                    done = True
            if done:
                if killed:
                    notes.append("child finished all tests but hung at "
                                 "interpreter exit (killed)")
                elif proc.returncode != 0:
                    notes.append(f"child finished all tests but exited with "
                                 f"status {proc.returncode}")
                break

            with open(logf, encoding="utf-8", errors="replace") as lf:
                lf.seek(log_offset)
                tail = lf.read()
            tail_short = tail[-3000:]
            if killed:
                cause = "timeout"
                why = f"module time limit ({timeout:.0f}s) exceeded"
            elif "Timeout (" in tail and proc.returncode == 1:
                cause = "timeout"
                why = f"per-test time limit ({test_timeout:.0f}s) exceeded"
            elif proc.returncode < 0:
                cause = "crash"
                try:
                    sig = signal.Signals(-proc.returncode).name
                except ValueError:
                    sig = str(-proc.returncode)
                why = f"child killed by {sig}"
            else:
                cause = "crash"
                why = f"child exited with status {proc.returncode}"

            if collected is None:
                # Died before it could even list the tests: import error,
                # failed injection self-check...
                pid = f"{PACKAGE}.{module} (module import/setup)"
                tests[pid] = {"id": pid, "outcome": cause,
                              "summary": why + ": " + _last_line(tail),
                              "detail": tail_short}
                notes.append(f"attempt {attempt}: {why} before collecting")
                break
            culprit = in_progress
            if culprit is None and last_started is not None:
                # Died after the last test reported: in its late teardown
                # (IsolatedAsyncioTestCase closes its Runner after
                # stopTest), or in the next class/module fixture.
                culprit = last_started
                why += " after the test reported (late teardown/fixture)"
            if culprit is not None:
                old = tests.get(culprit)
                kinds = streamed_kinds.get(culprit, {})
                tests[culprit] = {
                    "id": culprit, "outcome": cause, "summary": why,
                    "detail": tail_short,
                    "reported_outcome": old["outcome"] if old else None,
                    "kinds_created": sorted(kinds.get("created", ())),
                    "kinds_ran": sorted(kinds.get("ran", ()))}
                notes.append(f"attempt {attempt}: {why} in {culprit}")
            else:
                notes.append(f"attempt {attempt}: {why} before the first "
                             "test (module/class fixture?)")
            wanted = [t for t in collected if only is None or t in only]
            remaining = [t for t in wanted if t not in tests]
            if (killed or culprit is None or not remaining
                    or attempt > max_restarts):
                break
        # Whatever never ran.
        wanted = [t for t in (collected or []) if only is None or t in only]
        for t in wanted:
            if t not in tests:
                tests[t] = {"id": t, "outcome": "not_run",
                            "summary": "did not run (earlier crash/timeout)",
                            "detail": None, "kinds_created": [],
                            "kinds_ran": []}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"tests": tests, "collected": collected or [],
            "seconds": round(time.monotonic() - t0, 2), "notes": notes,
            "start_run": start_run, "attempts": attempt}


def _last_line(text):
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


# --------------------------------------------------------------------------
# Known differences

def load_known(path, pytag):
    """-> list of (pattern, reason, lineno) applying to this Python."""
    entries = []
    if not path.exists():
        return entries
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) < 2:
            raise SystemExit(f"{path}:{lineno}: missing reason: {raw!r}")
        pattern, reason = parts
        m = re.match(r"^(\d+\.\d+):(.+)$", pattern)
        if m:
            if m.group(1) != pytag:
                continue
            pattern = m.group(2)
        entries.append((pattern, reason.strip(), lineno))
    return entries


def match_known(test_id, known):
    for pattern, reason, lineno in known:
        if fnmatch.fnmatchcase(test_id, pattern):
            return reason, lineno
    return None


# --------------------------------------------------------------------------
# Comparison

def baseline_id(ferro_id):
    for frag, base in BASELINE_ALIASES.items():
        if frag in ferro_id:
            return ferro_id.replace(frag, base)
    return ferro_id


def compare(module, base, ferro, known):
    btests, ftests = base["tests"], ferro["tests"]
    collected_f = set(ferro["collected"])
    rows = {}
    regressions, known_hits, newly_skipped, fixed = [], [], [], []
    matched_known_lines = set()
    for fid, frec in ftests.items():
        bid = baseline_id(fid)
        brec = btests.get(bid)
        b_out = brec["outcome"] if brec else None
        f_out = frec["outcome"]
        if b_out is None and fid not in collected_f:
            # A fixture error / crash pseudo-id: fine on asyncio by definition.
            b_out = "success"
        status = "not_compared"
        if b_out in OK:
            if f_out in OK:
                status = "ok"
            elif f_out == "skip":
                status = "newly_skipped"
                newly_skipped.append(fid)
            elif f_out in BAD:
                hit = match_known(fid, known)
                if hit:
                    status = "known"
                    matched_known_lines.add(hit[1])
                    known_hits.append({"id": fid, "reason": hit[0],
                                       "outcome": f_out})
                else:
                    status = "regression"
        elif b_out in BAD:
            status = "fails_on_asyncio"
            if f_out in OK:
                fixed.append(fid)
        elif b_out == "skip":
            status = "skipped_on_asyncio"
        entry = {"asyncio": b_out, "ferroloop": f_out, "status": status,
                 "baseline_id": bid if bid != fid else None,
                 "summary": frec.get("summary"),
                 "ferro_loop": "ferroloop" in (frec.get("kinds_ran") or [])
                 or "ferroloop" in (frec.get("kinds_created") or [])}
        if status == "regression":
            regressions.append(dict(entry, id=fid, detail=frec.get("detail")))
        rows[fid] = entry
    # Baseline tests with no ferroloop counterpart (the Poll/Select classes).
    mapped = {baseline_id(f) for f in ftests}
    asyncio_only = sorted(b for b in btests if b not in mapped)
    # Known entries that matched a test that now passes.
    stale = []
    for fid, entry in rows.items():
        if entry["status"] == "ok":
            hit = match_known(fid, known)
            if hit:
                stale.append({"id": fid, "line": hit[1], "reason": hit[0]})

    def count(tests, outs):
        return sum(1 for r in tests.values() if r["outcome"] in outs)

    def kind_count(tests, kind):
        return sum(1 for r in tests.values()
                   if kind in (r.get("kinds_ran") or [])
                   or kind in (r.get("kinds_created") or []))

    return {
        "module": module,
        "asyncio": {"tests": len(btests), "passed": count(btests, OK),
                    "failed": count(btests, BAD),
                    "skipped": count(btests, ("skip",)),
                    "seconds": base["seconds"], "notes": base["notes"],
                    "stock_loop_tests": kind_count(btests, "stock")},
        "ferroloop": {"tests": len(ftests), "passed": count(ftests, OK),
                      "failed": count(ftests, BAD),
                      "skipped": count(ftests, ("skip",)),
                      "seconds": ferro["seconds"], "notes": ferro["notes"],
                      "ferro_loop_tests": kind_count(ftests, "ferroloop"),
                      "stock_loop_tests": kind_count(ftests, "stock"),
                      "testloop_tests": kind_count(ftests, "testloop"),
                      "start_run": ferro["start_run"]},
        "compared": {
            "tests": len(rows),
            "asyncio_passed": sum(1 for e in rows.values()
                                  if e["asyncio"] in OK),
            "ferroloop_passed": sum(1 for e in rows.values()
                                    if e["ferroloop"] in OK)},
        "regressions": regressions,
        "known": known_hits,
        "stale_known": stale,
        "newly_skipped": newly_skipped,
        "fixed_vs_asyncio": fixed,
        "asyncio_only_by_design": len(asyncio_only),
        "flaky": [],
        "tests": rows,
    }


def rerun_regressions(python, module, outdir, report, args):
    """Re-run regressed tests once in a fresh process; passes -> flaky."""
    # Hangs are not re-run (deterministic enough, and each costs
    # --test-timeout); neither are tests that never ran or fixture errors.
    ids = [r["id"] for r in report["regressions"]
           if r["ferroloop"] not in ("timeout", "not_run")
           and " " not in r["id"]]
    if not ids or len(ids) > args.rerun_max:
        return
    res = run_module(python, module, "ferroloop", outdir,
                     timeout=args.timeout, test_timeout=args.test_timeout,
                     adapters=args.adapters, only=set(ids), tag=".rerun")
    still = []
    for reg in report["regressions"]:
        r = res["tests"].get(reg["id"])
        if r is not None and r["outcome"] in OK:
            reg["rerun"] = r["outcome"]
            report["flaky"].append(reg["id"])
            report["tests"][reg["id"]]["status"] = "flaky"
        else:
            still.append(reg)
    report["regressions"] = still
    report["ferroloop"]["rerun_seconds"] = res["seconds"]


# --------------------------------------------------------------------------
# Reporting

def _short(tid):
    return tid[len(PACKAGE) + 1:] if tid.startswith(PACKAGE + ".") else tid


def cause_key(reg):
    out = reg["ferroloop"]
    s = reg.get("summary") or ""
    if out in ("crash", "timeout", "not_run"):
        return f"{out}: {re.sub(r' in .*', '', s)}"
    s = re.sub(r"0x[0-9a-fA-F]+", "0x…", s)
    s = re.sub(r"\b\d+(\.\d+)?\b", "N", s)
    s = re.sub(r"<[^<>]{20,}>", "<…>", s)
    return f"{out}: {s[:160]}"


def print_table(pyinfo, reports, baseline_only):
    tag = pyinfo["version"]
    if baseline_only:
        hdr = (f"{'module':<26}{'tests':>7}{'pass':>7}{'fail':>7}{'skip':>7}"
               f"{'real-loop':>11}{'time':>9}")
        log(f"\nPython {tag} - stock asyncio baseline\n{hdr}\n{'-' * len(hdr)}")
        tot = [0] * 5
        for rep in reports:
            a = rep["asyncio"]
            vals = (a["tests"], a["passed"], a["failed"], a["skipped"],
                    a["stock_loop_tests"])
            tot = [x + y for x, y in zip(tot, vals)]
            log(f"{rep['module']:<26}" + "".join(f"{v:>7}" for v in vals[:4])
                + f"{vals[4]:>11}{a['seconds']:>8.1f}s")
        secs = sum(r["asyncio"]["seconds"] for r in reports)
        log(f"{'TOTAL':<26}" + "".join(f"{v:>7}" for v in tot[:4])
            + f"{tot[4]:>11}{secs:>8.1f}s")
        return
    hdr = (f"{'module':<24}{'ran':>6}{'pass/aio':>9}{'pass/ferro':>11}"
           f"{'regress':>8}{'known':>6}{'flaky':>6}{'newskip':>8}"
           f"{'on-ferro':>9}{'stock':>6}{'testloop':>9}{'t/aio':>7}"
           f"{'t/ferro':>8}")
    log(f"\nPython {tag} - asyncio vs ferroloop\n{hdr}\n{'-' * len(hdr)}")
    tot = [0] * 10
    ta = tf = 0.0
    for rep in reports:
        a, f = rep["asyncio"], rep["ferroloop"]
        c = rep["compared"]
        vals = (c["tests"], c["asyncio_passed"], c["ferroloop_passed"],
                len(rep["regressions"]),
                len(rep["known"]), len(rep["flaky"]),
                len(rep["newly_skipped"]), f["ferro_loop_tests"],
                f["stock_loop_tests"], f["testloop_tests"])
        tot = [x + y for x, y in zip(tot, vals)]
        ta += a["seconds"]
        tf += f["seconds"] + f.get("rerun_seconds", 0)
        log(f"{rep['module']:<24}{vals[0]:>6}{vals[1]:>9}{vals[2]:>11}"
            f"{vals[3]:>8}{vals[4]:>6}{vals[5]:>6}{vals[6]:>8}{vals[7]:>9}"
            f"{vals[8]:>6}{vals[9]:>9}{a['seconds']:>6.1f}s"
            f"{f['seconds']:>7.1f}s")
    log(f"{'TOTAL':<24}{tot[0]:>6}{tot[1]:>9}{tot[2]:>11}{tot[3]:>8}"
        f"{tot[4]:>6}{tot[5]:>6}{tot[6]:>8}{tot[7]:>9}{tot[8]:>6}{tot[9]:>9}"
        f"{ta:>6.0f}s{tf:>7.0f}s")
    by_design = sum(r["asyncio_only_by_design"] for r in reports)
    log("ran: tests run on ferroloop and compared with their asyncio "
        "baseline; on-ferro: tests that created or ran a ferroloop.Loop; "
        "stock: tests that still used a stock real loop in ferroloop mode; "
        "testloop: tests on test_utils' fake-clock TestLoop (stays stock "
        f"by design). {by_design} asyncio-only tests (the Poll/Select "
        "loop classes of test_events, test_sock_lowlevel and test_sendfile) "
        "are not compared.")


def print_details(pyinfo, reports, verbose):
    tag = pyinfo["version"]
    for rep in reports:
        for n in rep["asyncio"]["notes"]:
            log(f"  [{tag}] {rep['module']} asyncio: {n}")
        for n in rep["ferroloop"].get("notes", []):
            log(f"  [{tag}] {rep['module']} ferroloop: {n}")
    regs = [r for rep in reports for r in rep["regressions"]]
    if regs:
        groups = {}
        for r in regs:
            groups.setdefault(cause_key(r), []).append(r["id"])
        log(f"\nRegressions on Python {tag}: {len(regs)}, by cause:")
        for key, ids in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            log(f"  {len(ids):4d}  {key}")
            for tid in ids[: None if verbose else 6]:
                log(f"          {_short(tid)}")
            if not verbose and len(ids) > 6:
                log(f"          ... {len(ids) - 6} more (see --verbose or "
                    "the JSON)")
    for what, key in (("Flaky (failed, passed on re-run)", "flaky"),
                      ("Newly skipped on ferroloop", "newly_skipped"),
                      ("Known differences hit", "known"),
                      ("Stale known differences (now pass)", "stale_known")):
        items = [x for rep in reports for x in rep[key]]
        if items:
            log(f"\n{what} on Python {tag}: {len(items)}")
            for x in items[: None if verbose else 10]:
                if isinstance(x, dict):
                    log(f"    {_short(x['id'])}  ({x['reason']})")
                else:
                    log(f"    {_short(x)}")
            if not verbose and len(items) > 10:
                log(f"    ... {len(items) - 10} more")


# --------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Run CPython's test.test_asyncio on ferroloop and "
                    "compare with stock asyncio.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring of conformance/run.py for details.")
    ap.add_argument("--python", action="append", metavar="EXE",
                    help="target interpreter (repeatable); default: the one "
                         "running this script")
    ap.add_argument("--modules", metavar="M1,M2",
                    help="comma-separated test.test_asyncio modules "
                         f"(default: {','.join(DEFAULT_MODULES)}; those "
                         "missing on a Python are skipped)")
    ap.add_argument("--python-only-asyncio", "--asyncio-only",
                    dest="asyncio_only", action="store_true",
                    help="run the stock asyncio baseline only")
    ap.add_argument("--timeout", type=float, default=600,
                    help="limit per module run in seconds, restarts "
                         "included (default 600)")
    ap.add_argument("--test-timeout", type=float, default=60,
                    help="limit per test in seconds (default 60)")
    ap.add_argument("-j", "--jobs", type=int, default=1,
                    help="modules run in parallel (default 1; the CI "
                         "machine has 2 cores)")
    ap.add_argument("--no-rerun", dest="rerun", action="store_false",
                    help="do not re-run regressions to detect flaky tests")
    ap.add_argument("--rerun-max", type=int, default=50,
                    help="skip the re-run when a module has more "
                         "regressions than this (default 50)")
    ap.add_argument("--no-adapters", dest="adapters", action="store_false",
                    help="run test_runners/test_pep492 on their upstream "
                         "mock loops (see docstring, point 5)")
    ap.add_argument("--known", type=Path, default=KNOWN_FILE,
                    help="known differences file")
    ap.add_argument("--results-dir", type=Path, default=HERE / "results")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="list every regressed test")
    args = ap.parse_args(argv)

    pythons = args.python or [sys.executable]
    modules = ([m.strip() for m in args.modules.split(",") if m.strip()]
               if args.modules else list(DEFAULT_MODULES))
    modules = [m[len(PACKAGE) + 1:] if m.startswith(PACKAGE + ".") else m
               for m in modules]
    explicit = args.modules is not None

    # Probe every interpreter first: fail early, not after 10 minutes.
    targets = []
    for py in pythons:
        info = probe_python(py, modules)
        info["python"] = py
        present = [m for m in modules if info["modules"][f"{PACKAGE}.{m}"]]
        missing = [m for m in modules if m not in present]
        if missing:
            msg = f"[{info['version']}] not in this Python: {', '.join(missing)}"
            if explicit and not present:
                print(msg, file=sys.stderr)
                return 2
            log(msg + " (skipped)")
        if not args.asyncio_only and info["ferroloop"] is None:
            print(f"{py} ({info['version']}): cannot import ferroloop: "
                  f"{info['ferroloop_error']}\n(use --python-only-asyncio for "
                  "the baseline alone)", file=sys.stderr)
            return 2
        if not args.asyncio_only:
            log(f"[{info['version']}] ferroloop from {info['ferroloop']}")
        targets.append((info, present))

    def job(info, module):
        outdir = args.results_dir / f"py{info['tag']}"
        outdir.mkdir(parents=True, exist_ok=True)
        py, tag = info["python"], info["version"]
        kw = dict(timeout=args.timeout, test_timeout=args.test_timeout,
                  adapters=args.adapters)
        base = run_module(py, module, "asyncio", outdir, **kw)
        log(f"[{tag}] {module:<24} asyncio   {len(base['tests']):5d} tests "
            f"{base['seconds']:7.1f}s")
        if args.asyncio_only:
            empty = {"tests": {}, "collected": [], "seconds": 0.0,
                     "notes": [], "start_run": None}
            rep = compare(module, base, empty, [])
        else:
            ferro = run_module(py, module, "ferroloop", outdir, **kw)
            rep = compare(module, base, ferro,
                          load_known(args.known, info["tag"]))
            if args.rerun and rep["regressions"]:
                rerun_regressions(py, module, outdir, rep, args)
            log(f"[{tag}] {module:<24} ferroloop {len(ferro['tests']):5d} "
                f"tests {ferro['seconds']:7.1f}s  "
                f"regressions={len(rep['regressions'])} "
                f"on-ferro={rep['ferroloop']['ferro_loop_tests']}")
        rep["python"] = tag
        rep["executable"] = py
        with open(outdir / f"{module}.json", "w", encoding="utf-8") as fh:
            json.dump(rep, fh, indent=1, sort_keys=True)
        return rep

    jobs = [(info, m) for info, present in targets for m in present]
    jobs.sort(key=lambda j: -DURATION_HINT.get(j[1], 1))
    t0 = time.monotonic()
    results = {}
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futs = {pool.submit(job, info, m): (info["version"], m)
                for info, m in jobs}
        for fut in concurrent.futures.as_completed(futs):
            results[futs[fut]] = fut.result()

    summary = {"pythons": {}, "wall_seconds": round(time.monotonic() - t0, 1)}
    n_regress = 0
    for info, present in targets:
        reports = [results[(info["version"], m)] for m in present]
        print_table(info, reports, args.asyncio_only)
        if not args.asyncio_only:
            print_details(info, reports, args.verbose)
        n_regress += sum(len(r["regressions"]) for r in reports)
        summary["pythons"][info["version"]] = {
            r["module"]: {k: r[k] for k in ("asyncio", "ferroloop")}
            | {"regressions": [x["id"] for x in r["regressions"]],
               "known": [x["id"] for x in r["known"]],
               "flaky": r["flaky"]}
            for r in reports}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    with open(args.results_dir / "summary.json", "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1, sort_keys=True)
    log(f"\nwall time {summary['wall_seconds']:.0f}s; results in "
        f"{args.results_dir}")
    if args.asyncio_only:
        return 0
    log(f"{'FAIL' if n_regress else 'OK'}: {n_regress} regression(s)")
    return 1 if n_regress else 0


if __name__ == "__main__":
    sys.exit(main())
