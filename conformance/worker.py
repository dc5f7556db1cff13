"""Child process of conformance/run.py: run ONE CPython asyncio test module.

Not meant to be run by hand (run.py starts it), but it can be, for
debugging a single module:

    python conformance/worker.py --module test_tasks --mode ferroloop \
        --out /tmp/tasks.jsonl

--mode asyncio   stock asyncio, only the (neutral) instrumentation below.
--mode ferroloop ferroloop injected first, see ``inject_ferroloop``,
                 ``LOOP_PATCHES`` and run.py's module docstring for the
                 strategy.

Output is a JSON-lines file, one record per event, flushed as it happens so
that run.py still has everything up to the last test if this process
crashes (segfault in a native extension) or is killed on timeout:

    {"event": "start_run", ...}          interpreter and ferroloop info
    {"event": "collected", "ids": [...]} every test id of the module, in order
    {"event": "start", "id": ...}        a test began
    {"event": "loop", "id": ..., "kind": ..., "how": "created"|"ran"}
                                         first loop of a kind in this test
    {"event": "result", "id": ..., "outcome": ..., ...}
    {"event": "done", ...}               the whole module finished

Outcomes: success, failure, error, skip, expected_failure,
unexpected_success.  (run.py adds crash, timeout and not_run.)

Instrumentation (same in both modes, so it cannot bias the comparison):
``BaseEventLoop.__init__`` and ``BaseEventLoop.run_forever`` are wrapped to
record, per test, the classes of the event loops the test created and ran.
In ferroloop mode ``ferroloop.Loop.__init__``/``run_forever`` are wrapped as
well, in case ferroloop's native parts do not chain up to BaseEventLoop.
"""

import argparse
import faulthandler
import functools
import importlib
import json
import os
import sys
import time
import traceback
import unittest

import asyncio
from asyncio import base_events

PACKAGE = "test.test_asyncio"

# Stock per-selector test classes (test_events, test_sock_lowlevel,
# test_sendfile; same names in 3.11-3.13): one class per selector, each
# building ``asyncio.SelectorEventLoop(<selector>)`` itself.  In ferroloop
# mode they are replaced by one FerroloopEventLoopTests subclassing the first
# of SELECTOR_TEMPLATE_ORDER present (epoll on Linux: ferroloop polls with
# mio, i.e. epoll, so the epoll-backed SelectorEventLoop is its stock
# counterpart; run.py compares FerroloopEventLoopTests.X with
# EPollEventLoopTests.X via BASELINE_ALIASES).
SELECTOR_CLASSES = ("KqueueEventLoopTests", "EPollEventLoopTests",
                    "PollEventLoopTests", "SelectEventLoopTests")
SELECTOR_TEMPLATE_ORDER = ("EPollEventLoopTests", "PollEventLoopTests",
                           "SelectEventLoopTests")
FERRO_SELECTOR_CLASS = "FerroloopEventLoopTests"

# Longest traceback text kept per test (the tail, where the cause is).
MAX_DETAIL = 4000


# --------------------------------------------------------------------------
# Recording

class Recorder:
    """Writes JSON lines and tracks which test is currently running."""

    def __init__(self, path):
        self._fh = open(path, "a", encoding="utf-8")
        self.current = None          # per-test record dict, or None
        self.ferro_loop_class = None  # set in ferroloop mode

    def emit(self, **record):
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    # Loop bookkeeping, called from the instrumentation wrappers.
    def loop_created(self, loop):
        rec = self.current
        if rec is not None and id(loop) not in rec["_seen_created"]:
            rec["_seen_created"].add(id(loop))
            rec["loops_created"].append(_qualname(type(loop)))
            kind = _loop_kind(loop, self.ferro_loop_class)
            if kind not in rec["kinds_created"]:
                rec["kinds_created"].add(kind)
                # Streamed too, so a test that then crashes is still known
                # to have been on ferroloop.
                self.emit(event="loop", id=rec["id"], kind=kind, how="created")

    def loop_ran(self, loop):
        rec = self.current
        if rec is not None and id(loop) not in rec["_seen_ran"]:
            rec["_seen_ran"].add(id(loop))
            rec["loops_ran"].append(_qualname(type(loop)))
            kind = _loop_kind(loop, self.ferro_loop_class)
            if kind not in rec["kinds_ran"]:
                rec["kinds_ran"].add(kind)
                self.emit(event="loop", id=rec["id"], kind=kind, how="ran")


RECORDER = None


def _loop_kind(loop, ferro_loop_class):
    """'ferroloop', 'testloop' (test_utils' fake-clock loop), 'stock' (a real
    stock asyncio loop) or 'other' (e.g. a bare BaseEventLoop used as a
    dummy, or a test's own subclass)."""
    if ferro_loop_class is not None and isinstance(loop, ferro_loop_class):
        return "ferroloop"
    name = type(loop).__name__
    if name == "TestLoop":
        return "testloop"
    if isinstance(loop, _STOCK_REAL_LOOPS):
        return "stock"
    return "other"


def _stock_real_loops():
    from asyncio import selector_events
    classes = [selector_events.BaseSelectorEventLoop]
    try:
        from asyncio import proactor_events
        classes.append(proactor_events.BaseProactorEventLoop)
    except ImportError:
        pass
    return tuple(classes)


_STOCK_REAL_LOOPS = _stock_real_loops()


def _qualname(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def _wrap_method(cls, name, hook):
    """Replace cls.<name> by a wrapper calling hook(self) first.

    Returns False if the class refuses attribute assignment (immutable
    native type).
    """
    orig = getattr(cls, name)

    @functools.wraps(orig)
    def wrapper(self, *args, **kwargs):
        hook(self)
        return orig(self, *args, **kwargs)

    try:
        setattr(cls, name, wrapper)
    except (TypeError, AttributeError):
        return False
    return True


def install_instrumentation(extra_loop_classes=()):
    rec = RECORDER
    classes = [base_events.BaseEventLoop, *extra_loop_classes]
    ok = True
    for cls in classes:
        ok &= _wrap_method(cls, "__init__", rec.loop_created)
        ok &= _wrap_method(cls, "run_forever", rec.loop_ran)
    return ok


# --------------------------------------------------------------------------
# ferroloop injection

def inject_ferroloop():
    """Make ferroloop the event loop everywhere a test makes a real loop.

    See run.py's module docstring for the reasoning.  Returns the ferroloop
    module.  Raises RuntimeError if the injection does not take effect.
    """
    import ferroloop

    Loop = ferroloop.Loop
    Policy = ferroloop.EventLoopPolicy
    stock_policy = asyncio.DefaultEventLoopPolicy
    stock_eventloop = getattr(asyncio, "EventLoop", None)   # 3.13+

    # 1. The default policy *class*.  events._init_event_loop_policy() does
    #    ``from . import DefaultEventLoopPolicy`` whenever the policy is None,
    #    i.e. after every tearDownModule's set_event_loop_policy(None); tests
    #    also instantiate asyncio.DefaultEventLoopPolicy() directly.
    # 2. asyncio.EventLoop (3.13+), the "default loop class" that tests and
    #    IsolatedAsyncioTestCase.loop_factory users pass as loop_factory.
    #    SelectorEventLoop itself is NOT replaced: ferroloop.Loop derives
    #    from it and tests construct it on purpose.
    for modname, mod in list(sys.modules.items()):
        if modname != "asyncio" and not modname.startswith("asyncio."):
            continue
        if getattr(mod, "DefaultEventLoopPolicy", None) is stock_policy:
            mod.DefaultEventLoopPolicy = Policy
        if (stock_eventloop is not None
                and getattr(mod, "EventLoop", None) is stock_eventloop):
            mod.EventLoop = Loop

    # 3. The current policy.
    asyncio.set_event_loop_policy(Policy())

    # Self-check: every road to a real default loop leads to ferroloop.
    problems = []
    loop = asyncio.new_event_loop()
    if not isinstance(loop, Loop):
        problems.append(f"asyncio.new_event_loop() gave {type(loop)!r}")
    loop.close()
    asyncio.set_event_loop_policy(None)
    if not isinstance(asyncio.get_event_loop_policy(), Policy):
        problems.append("policy after set_event_loop_policy(None) is "
                        f"{type(asyncio.get_event_loop_policy())!r}")
    loop = asyncio.DefaultEventLoopPolicy().new_event_loop()
    if not isinstance(loop, Loop):
        problems.append(f"DefaultEventLoopPolicy() made {type(loop)!r}")
    loop.close()
    loop = ferroloop.new_event_loop()
    if not isinstance(loop, Loop):
        problems.append(f"ferroloop.new_event_loop() gave {type(loop)!r}")
    loop.close()
    if problems:
        raise RuntimeError("ferroloop injection failed: " + "; ".join(problems))
    asyncio.set_event_loop_policy(Policy())
    return ferroloop


# Explicit stock loops (ferroloop mode only).
#
# Some modules do not ask the policy for their loops but construct
# ``asyncio.SelectorEventLoop(...)`` in a per-class factory method, so the
# injection alone leaves every one of their tests on a stock loop.
# LOOP_PATCHES says, per module, how that factory is redirected to
# ferroloop.new_event_loop():
#
#   "replace_selector_classes"  the per-selector classes (SELECTOR_CLASSES)
#       are removed and one FerroloopEventLoopTests, derived from the epoll
#       one with the factory overridden, takes their place; run.py compares
#       it with EPollEventLoopTests, the other selector classes run in the
#       baseline only ("asyncio-only by design").
#   "override_in_place"  the one class using a stock selector loop gets
#       ferroloop's in place; test ids are the same in both modes.
#
# A class or method that is missing (renamed upstream) is an error rather
# than a silent fallback to stock loops.

def replace_selector_classes(mod, method, make_loop):
    """Swap the per-selector loop test classes for a ferroloop one."""
    template = next((getattr(mod, n) for n in SELECTOR_TEMPLATE_ORDER
                     if hasattr(mod, n)), None)
    if template is None:
        raise RuntimeError(f"{mod.__name__}: no selector loop test class "
                           f"({', '.join(SELECTOR_TEMPLATE_ORDER)}) found")
    if not hasattr(template, method):
        raise RuntimeError(f"{mod.__name__}.{template.__name__} has no "
                           f"{method}()")

    def factory(self):
        return make_loop()

    cls = type(FERRO_SELECTOR_CLASS, (template,), {
        method: factory,
        "__module__": mod.__name__,
        "__qualname__": FERRO_SELECTOR_CLASS,
        "__doc__": f"{template.__name__}'s tests on ferroloop.new_event_loop()"
                   f" (overrides {method})",
    })
    for name in SELECTOR_CLASSES:
        if hasattr(mod, name):
            delattr(mod, name)
    setattr(mod, FERRO_SELECTOR_CLASS, cls)


def override_in_place(mod, method, make_loop, classes):
    """Make each of classes build its loops with make_loop()."""
    for name in classes:
        cls = getattr(mod, name, None)
        if cls is None or method not in vars(cls):
            raise RuntimeError(f"{mod.__name__}: no {name}.{method}() to "
                               "override")

        def factory(self):
            return make_loop()
        factory.__name__ = factory.__qualname__ = method
        setattr(cls, method, factory)


# module -> (how, loop factory method, extra arguments)
LOOP_PATCHES = {
    "test_events": (replace_selector_classes, "create_event_loop", {}),
    "test_sock_lowlevel": (replace_selector_classes, "create_event_loop", {}),
    "test_sendfile": (replace_selector_classes, "create_event_loop", {}),
    "test_buffered_proto": (override_in_place, "new_loop",
                            {"classes": ("BufferedProtocolSelectorTests",)}),
    # TestServer2 (and 3.13's UnixServerCleanupTests) are
    # IsolatedAsyncioTestCases, already on ferroloop through the policy.
    "test_server": (override_in_place, "new_loop",
                    {"classes": ("SelectorStartServerTests",)}),
}


def patch_explicit_loops(mod, short, ferroloop):
    if short in LOOP_PATCHES:
        how, method, kwargs = LOOP_PATCHES[short]
        how(mod, method, ferroloop.new_event_loop, **kwargs)


# Native Future/Task variants (ferroloop mode only).
#
# test_futures, test_futures2 and test_tasks run their tests against the C
# and the pure-Python classes through class-parametrised mixins, on
# test_utils' fake-clock TestLoop -- so without this, not one of those tests
# would touch ferroloop's native Future and Task.  Each variant below is the
# C variant with ferroloop's classes plugged in (ferroloop.Future on a
# TestLoop exercises the generic, loop.call_soon() path of the native
# classes), and run.py compares it with that C variant (BASELINE_ALIASES):
#
#   FerroX (ferroloop mode)                 baseline (both modes)
#   test_futures.FerroFutureTests           CFutureTests
#   test_futures.FerroSubFutureTests        CSubFutureTests
#   test_futures.FerroFutureDoneCallbackTests / ...Sub...  C... ones
#   test_futures.FerroFutureInheritanceTests CFutureInheritanceTests
#   test_futures2.FerroFutureTests          CFutureTests (cls is a Task there)
#   test_tasks.FerroTask_FerroFuture_Tests  CTask_CFuture_Tests
#   test_tasks.FerroTask_FerroFuture_SubclassTests  CTask_CFuture_SubclassTests
#   test_tasks.FerroTask_CFuture_Tests      CTask_PyFuture_Tests (interop)
#   test_tasks.CTask_FerroFuture_Tests      CTask_PyFuture_Tests (interop)
#   test_tasks.FerroCurrentLoopTests        CCurrentLoopTests
#   test_eager_task_factory.FerroEagerTaskFactoryLoopTests, NonEagerFerroTaskTests,
#   EagerFerroTaskTests                     the CTask variants
#   test_sslproto.FerroSslProtoHandshakeTests  SslProtoHandshakeTests
#
# The last: test_sslproto's protocol-level tests build asyncio's
# SSLProtocol over mock transports; the variant builds ferroloop's native
# one (the class every ferroloop TLS connection uses) in its place.

def _variant(mod, name, base, attrs):
    attrs = dict(attrs, __module__=mod.__name__, __qualname__=name)
    cls = type(name, (base,), attrs)
    setattr(mod, name, cls)
    return cls


def patch_native_future_variants(mod, ferroloop):
    short = mod.__name__.rpartition(".")[2]
    Future, Task = ferroloop.Future, ferroloop.Task
    if short == "test_futures":
        class FerroSubFuture(Future):
            pass

        _variant(mod, "FerroFutureTests", mod.CFutureTests, {"cls": Future})
        _variant(mod, "FerroSubFutureTests", mod.CSubFutureTests,
                 {"cls": FerroSubFuture})
        _variant(mod, "FerroFutureDoneCallbackTests",
                 mod.CFutureDoneCallbackTests,
                 {"_new_future": lambda self: Future(loop=self.loop)})
        _variant(mod, "FerroSubFutureDoneCallbackTests",
                 mod.CSubFutureDoneCallbackTests,
                 {"_new_future": lambda self: FerroSubFuture(loop=self.loop)})
        _variant(mod, "FerroFutureInheritanceTests",
                 mod.CFutureInheritanceTests,
                 {"_get_future_cls": lambda self: Future})
    elif short == "test_futures2":
        _variant(mod, "FerroFutureTests", mod.CFutureTests, {"cls": Task})
    elif short == "test_tasks":
        from asyncio import futures as _futures
        CFuture = getattr(_futures, "_CFuture")
        _variant(mod, "FerroTask_FerroFuture_Tests", mod.CTask_CFuture_Tests,
                 {"Task": Task, "Future": Future})
        # Mixed pairs, like CTask_PyFuture_Tests: without SetMethodsTest,
        # which calls one class's methods on the other's instances.
        _variant(mod, "FerroTask_CFuture_Tests", mod.CTask_PyFuture_Tests,
                 {"Task": Task, "Future": CFuture})
        _variant(mod, "CTask_FerroFuture_Tests", mod.CTask_PyFuture_Tests,
                 {"Future": Future})
        # add_subclass_tests wraps the classes it finds on the class, so it
        # must see ferroloop's (not the C ones CTask_CFuture_SubclassTests
        # already wrapped).
        fresh = type("FerroTask_FerroFuture_SubclassTests",
                     (mod.BaseTaskTests, mod.test_utils.TestCase),
                     {"Task": Task, "Future": Future,
                      "__module__": mod.__name__,
                      "__qualname__": "FerroTask_FerroFuture_SubclassTests"})
        setattr(mod, fresh.__name__, mod.add_subclass_tests(fresh))
        _variant(mod, "FerroCurrentLoopTests", mod.CCurrentLoopTests,
                 {"new_task": lambda self, coro: Task(coro, loop=self.loop)})
    elif short == "test_sslproto":
        import types
        from ferroloop import _tls

        def setUp(self):
            mod.SslProtoHandshakeTests.setUp(self)
            native = types.SimpleNamespace(**vars(mod.sslproto))
            native.SSLProtocol = _tls.SSLProtocol
            saved, mod.sslproto = mod.sslproto, native

            def restore():
                mod.sslproto = saved
            self.addCleanup(restore)

        _variant(mod, "FerroSslProtoHandshakeTests", mod.SslProtoHandshakeTests,
                 {"setUp": setUp})
    elif short == "test_eager_task_factory":
        _variant(mod, "FerroEagerTaskFactoryLoopTests",
                 mod.CEagerTaskFactoryLoopTests, {"Task": Task})
        _variant(mod, "NonEagerFerroTaskTests", mod.NonEagerCTaskTests,
                 {"Task": Task})
        _variant(mod, "EagerFerroTaskTests", mod.EagerCTaskTests,
                 {"Task": Task})


# Fixture adapters (both modes, so the comparison stays symmetric).
#
# test_runners and test_pep492 build their loops as a bare, abstract
# ``asyncio.BaseEventLoop()`` whose selector is a Mock.  Run as is, not one
# of their tests would touch ferroloop, although asyncio.run()/Runner and
# async-with/await on a loop are exactly what a drop-in loop must get right.
# The adapters give those fixtures a *real* loop instead -- a stock
# SelectorEventLoop in asyncio mode, ferroloop.new_event_loop() in ferroloop
# mode -- keeping what the tests inspect (test_runners' shutdown_ag_run
# flag).  --no-adapters runs the fixtures as upstream wrote them.

def adapt_test_runners(mod, make_loop):
    def new_loop(self):
        loop = make_loop()
        loop.shutdown_ag_run = False
        real_shutdown_asyncgens = loop.shutdown_asyncgens

        async def shutdown_asyncgens():
            loop.shutdown_ag_run = True
            await real_shutdown_asyncgens()
        loop.shutdown_asyncgens = shutdown_asyncgens
        return loop

    mod.BaseTest.new_loop = new_loop


def adapt_test_pep492(mod, make_loop):
    base = mod.BaseTest

    def setUp(self):
        super(base, self).setUp()
        self.loop = make_loop()
        self.set_event_loop(self.loop)

    base.setUp = setUp


ADAPTERS = {"test_runners": adapt_test_runners,
            "test_pep492": adapt_test_pep492}

# The stock default loop class, captured before any injection.
STOCK_LOOP_FACTORY = asyncio.DefaultEventLoopPolicy._loop_factory


# --------------------------------------------------------------------------
# unittest glue

_SEVERITY = ("error", "failure", "unexpected_success", "skip",
             "expected_failure", "success")


def _test_id(test):
    # A _SubTest reports for its parent test.
    parent = getattr(test, "test_case", None)
    return (parent or test).id()


def _exc_summary(text):
    """The 'ExcType: message' line of the last traceback in text."""
    lines = text.rstrip().splitlines()
    last_frame = max((i for i, ln in enumerate(lines)
                      if ln.startswith("  File ")), default=-1)
    for ln in lines[last_frame + 1:]:
        if ln.strip() and not ln[0].isspace():
            return ln.strip()
    return next((ln.strip() for ln in reversed(lines) if ln.strip()), "")


class JsonResult(unittest.TestResult):
    """Folds every unittest event of a test into one 'result' record."""

    def __init__(self, recorder, test_timeout):
        super().__init__()
        self.rec = recorder
        self.test_timeout = test_timeout
        self._support = sys.modules.get("test.support")

    # -- lifecycle
    def startTest(self, test):
        super().startTest(test)
        tid = test.id()
        self.rec.current = {
            "id": tid, "outcomes": [], "details": [], "skip_reason": None,
            "loops_created": [], "loops_ran": [],
            "kinds_created": set(), "kinds_ran": set(),
            "_seen_created": set(), "_seen_ran": set(),
            "_t0": time.perf_counter(),
        }
        self.rec.emit(event="start", id=tid)
        if self.test_timeout:
            # Hang protection for one test: dump all stacks and _exit(1).
            # run.py sees the "Timeout (" banner in the log, marks the test
            # 'timeout' and restarts the module after it.
            faulthandler.dump_traceback_later(self.test_timeout, exit=True)
        if self._support is not None:
            self._support.environment_altered = False

    def stopTest(self, test):
        # The per-test timer is NOT cancelled here: IsolatedAsyncioTestCase
        # closes its Runner (cancel tasks, shutdown_asyncgens, executor...)
        # only after stopTest, and a hang there must be caught too.  The
        # next startTest re-arms it; stopTestRun cancels it.
        rec, self.rec.current = self.rec.current, None
        super().stopTest(test)
        if rec is None:
            return
        outcome = next((o for o in _SEVERITY if o in rec["outcomes"]),
                       "success")
        altered = bool(self._support is not None
                       and self._support.environment_altered)
        detail = "\n".join(rec["details"])
        self.rec.emit(
            event="result", id=rec["id"], outcome=outcome,
            duration=round(time.perf_counter() - rec["_t0"], 4),
            summary=_exc_summary(detail) if detail else None,
            detail=detail[-MAX_DETAIL:] if detail else None,
            skip_reason=rec["skip_reason"],
            loops_created=rec["loops_created"], loops_ran=rec["loops_ran"],
            kinds_created=sorted(rec["kinds_created"]),
            kinds_ran=sorted(rec["kinds_ran"]),
            env_altered=altered,
        )

    def stopTestRun(self):
        if self.test_timeout:
            faulthandler.cancel_dump_traceback_later()
        super().stopTestRun()

    def _add(self, test, outcome, err=None, reason=None):
        rec = self.rec.current
        tid = _test_id(test)
        text = self._exc_info_to_string(err, test) if err else None
        if rec is None or rec["id"] != tid:
            # Class/module fixture errors (setUpClass, tearDownModule...)
            # arrive outside startTest/stopTest as an _ErrorHolder.
            self.rec.emit(event="result", id=tid, outcome=outcome,
                          duration=0.0,
                          summary=_exc_summary(text) if text else None,
                          detail=text[-MAX_DETAIL:] if text else None,
                          skip_reason=reason, loops_created=[], loops_ran=[],
                          kinds_created=[], kinds_ran=[], env_altered=False)
            return
        rec["outcomes"].append(outcome)
        if text:
            rec["details"].append(text)
        if reason is not None:
            rec["skip_reason"] = reason

    # -- outcomes
    def addSuccess(self, test):
        super().addSuccess(test)
        self._add(test, "success")

    def addError(self, test, err):
        super().addError(test, err)
        self._add(test, "error", err)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._add(test, "failure", err)

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            kind = ("failure" if issubclass(err[0], test.failureException)
                    else "error")
            self._add(subtest, kind, err)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        if getattr(test, "test_case", None) is not None:
            return      # a skipped subtest does not make the test "skipped"
        self._add(test, "skip", reason=reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._add(test, "expected_failure")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._add(test, "unexpected_success")


def _flatten(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _flatten(item)
        else:
            yield item


def _read_ids(path):
    if not path:
        return None
    with open(path, encoding="utf-8") as fh:
        return {line.strip() for line in fh if line.strip()}


# --------------------------------------------------------------------------

def main(argv=None):
    global RECORDER
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--module", required=True,
                    help="e.g. test_tasks (in test.test_asyncio)")
    ap.add_argument("--mode", choices=("asyncio", "ferroloop"),
                    required=True)
    ap.add_argument("--out", required=True, help="JSON-lines output file")
    ap.add_argument("--skip-file", help="file of test ids not to run")
    ap.add_argument("--only-file", help="file of test ids to run (only)")
    ap.add_argument("--test-timeout", type=float, default=0,
                    help="per-test limit in seconds (0: none)")
    ap.add_argument("--no-adapters", dest="adapters", action="store_false",
                    help="keep test_runners/test_pep492 on their mock loops")
    args = ap.parse_args(argv)

    faulthandler.enable()
    RECORDER = rec = Recorder(args.out)
    modname = args.module
    if "." not in modname:
        modname = f"{PACKAGE}.{modname}"

    ferro = None
    extra = ()
    if args.mode == "ferroloop":
        ferro = inject_ferroloop()
        extra = (ferro.Loop,)
        rec.ferro_loop_class = ferro.Loop
    instrumented = install_instrumentation(extra)

    rec.emit(event="start_run", module=modname, mode=args.mode,
             python=sys.version.split()[0], executable=sys.executable,
             pid=os.getpid(),
             ferroloop_file=getattr(ferro, "__file__", None),
             ferroloop_version=getattr(ferro, "__version__", None),
             loop_class=_qualname(ferro.Loop) if ferro else None,
             instrumented=bool(instrumented))

    mod = importlib.import_module(modname)
    short = modname.rpartition(".")[2]
    if ferro is not None:
        patch_explicit_loops(mod, short, ferro)
    if ferro is not None and short in ("test_futures", "test_futures2", "test_tasks",
                                       "test_eager_task_factory", "test_sslproto"):
        patch_native_future_variants(mod, ferro)
    adapted = None
    if args.adapters and short in ADAPTERS:
        ADAPTERS[short](mod, ferro.new_event_loop if ferro is not None
                        else STOCK_LOOP_FACTORY)
        adapted = short

    suite = unittest.defaultTestLoader.loadTestsFromModule(mod)
    tests = list(_flatten(suite))
    rec.emit(event="collected", ids=[t.id() for t in tests],
             adapted=adapted)

    skip = _read_ids(args.skip_file) or set()
    only = _read_ids(args.only_file)
    tests = [t for t in tests
             if t.id() not in skip and (only is None or t.id() in only)]

    result = JsonResult(rec, args.test_timeout)
    t0 = time.perf_counter()
    result.startTestRun()
    try:
        unittest.TestSuite(tests)(result)
    finally:
        result.stopTestRun()
    rec.emit(event="done", ran=result.testsRun,
             seconds=round(time.perf_counter() - t0, 3))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        sys.exit(3)
