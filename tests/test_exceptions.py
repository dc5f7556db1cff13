"""Exception handling and debug mode.

Exceptions raised by callbacks go to the loop's exception handler with
asyncio's context keys; SystemExit and KeyboardInterrupt leave the loop.
Debug mode adds thread checks, source tracebacks and slow-callback warnings.
"""
import asyncio
import contextvars
import logging
import os
import subprocess
import sys
import time

import pytest

from conftest import TARGET, new_loop, run_until_stopped

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))




class Boom(Exception):
    pass


def explode(*args):
    raise Boom("boom", *args)


# ---------------------------------------------------------------- handler


def test_callback_exception_goes_to_custom_handler(loop):
    contexts = []

    def handler(lp, context):
        contexts.append((lp, context))

    loop.set_exception_handler(handler)
    h = loop.call_soon(explode, 1)
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    assert len(contexts) == 1
    lp, ctx = contexts[0]
    assert lp is loop
    assert ctx["message"].startswith("Exception in callback ")
    assert "explode" in ctx["message"]
    assert isinstance(ctx["exception"], Boom)
    assert ctx["exception"].args == ("boom", 1)
    assert ctx["handle"] is h


def test_timer_callback_exception_goes_to_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    h = loop.call_later(0, explode)
    loop.call_later(0.01, loop.stop)
    run_until_stopped(loop)
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], Boom)
    assert contexts[0]["handle"] is h
    assert contexts[0]["message"].startswith("Exception in callback ")


def test_loop_keeps_running_after_a_callback_raises(loop):
    loop.set_exception_handler(lambda lp, ctx: None)
    seen = []
    loop.call_soon(explode)
    loop.call_soon(seen.append, "next")
    loop.call_soon(explode)
    loop.call_soon(seen.append, "last")
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    assert seen == ["next", "last"]


def test_exception_traceback_is_kept(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    loop.call_soon(explode)
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    tb = contexts[0]["exception"].__traceback__
    names = []
    while tb is not None:
        names.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert "explode" in names


def test_get_and_set_exception_handler(loop):
    assert loop.get_exception_handler() is None

    def handler(lp, ctx):
        pass

    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


@pytest.mark.parametrize("bad", [42, "handler", object()])
def test_set_exception_handler_rejects_non_callables(loop, bad):
    with pytest.raises(TypeError):
        loop.set_exception_handler(bad)
    assert loop.get_exception_handler() is None


def test_call_exception_handler_uses_custom_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    loop.call_exception_handler({"message": "by hand", "custom": 1})
    assert contexts == [{"message": "by hand", "custom": 1}]


@pytest.mark.skipif(sys.version_info < (3, 12),
                    reason="3.12+ runs the custom handler in the handle's context")
def test_custom_handler_runs_in_the_callback_context(loop):
    var = contextvars.ContextVar("exc_var", default="outside")
    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(var.get()))
    ctx = contextvars.copy_context()
    ctx.run(var.set, "inside")
    loop.call_soon(explode, context=ctx)
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    assert seen == ["inside"]


# ---------------------------------------------------------------- default handler / logging


def test_default_handler_logs_to_asyncio_logger(loop, caplog):
    caplog.set_level(logging.ERROR, logger="asyncio")
    loop.call_soon(explode)
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 1
    rec = records[0]
    assert rec.levelno == logging.ERROR
    assert rec.getMessage().startswith("Exception in callback ")
    assert "explode" in rec.getMessage()
    assert rec.exc_info is not None and rec.exc_info[0] is Boom


def test_default_exception_handler_called_directly(loop, caplog):
    caplog.set_level(logging.ERROR, logger="asyncio")
    try:
        raise Boom("direct")
    except Boom as exc:
        err = exc
    loop.default_exception_handler({"message": "a distinctive message", "exception": err,
                                    "extra_key": "extra value"})
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 1
    text = records[0].getMessage()
    assert text.startswith("a distinctive message")
    assert "extra_key" in text and "extra value" in text
    assert records[0].exc_info[1] is err


def test_default_handler_without_message(loop, caplog):
    caplog.set_level(logging.ERROR, logger="asyncio")
    loop.call_exception_handler({})
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 1
    assert records[0].getMessage().startswith("Unhandled exception in event loop")


def test_failing_custom_handler_is_logged(loop, caplog):
    caplog.set_level(logging.ERROR, logger="asyncio")

    def bad_handler(lp, ctx):
        raise ValueError("handler is broken")

    loop.set_exception_handler(bad_handler)
    loop.call_exception_handler({"message": "original problem"})
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 1
    assert records[0].getMessage().startswith("Unhandled error in exception handler")
    assert records[0].exc_info[0] is ValueError


def test_failing_custom_handler_during_run(loop, caplog):
    caplog.set_level(logging.ERROR, logger="asyncio")
    loop.set_exception_handler(lambda lp, ctx: 1 / 0)
    seen = []
    loop.call_soon(explode)
    loop.call_soon(seen.append, "survived")
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    assert seen == ["survived"]
    msgs = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert any(m.startswith("Unhandled error in exception handler") for m in msgs)


def test_custom_handler_can_defer_to_default(loop, caplog):
    caplog.set_level(logging.ERROR, logger="asyncio")
    calls = []

    def handler(lp, ctx):
        calls.append(ctx["message"])
        lp.default_exception_handler(ctx)

    loop.set_exception_handler(handler)
    loop.call_soon(explode)
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    assert len(calls) == 1
    msgs = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert len(msgs) == 1 and msgs[0].startswith("Exception in callback")


def test_unretrieved_task_exception_is_reported(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def fails():
        raise Boom("never retrieved")

    async def main():
        loop.create_task(fails())
        await asyncio.sleep(0.01)

    loop.run_until_complete(main())
    import gc
    gc.collect()
    assert any(isinstance(c.get("exception"), Boom) for c in contexts), contexts


# ---------------------------------------------------------------- BaseException


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_base_exception_in_callback_leaves_run_forever(loop, exc_type):
    handled = []
    loop.set_exception_handler(lambda lp, ctx: handled.append(ctx))
    seen = []

    def raiser():
        raise exc_type()

    loop.call_soon(raiser)
    loop.call_soon(seen.append, "after")
    with pytest.raises(exc_type):
        run_until_stopped(loop)
    assert handled == []
    assert not loop.is_running()
    # the loop is still usable and the remaining callback runs next time
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    assert seen == ["after"]


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_base_exception_in_timer_leaves_run_forever(loop, exc_type):
    def raiser():
        raise exc_type()

    loop.call_later(0.01, raiser)
    with pytest.raises(exc_type):
        run_until_stopped(loop)


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_base_exception_in_callback_leaves_run_until_complete(loop, exc_type):
    def raiser():
        raise exc_type()

    async def main():
        loop.call_soon(raiser)
        await asyncio.sleep(1)

    task = loop.create_task(main())
    with pytest.raises(exc_type):
        loop.run_until_complete(task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_base_exception_in_coroutine_leaves_run_until_complete(loop, exc_type):
    async def main():
        await asyncio.sleep(0)
        raise exc_type()

    with pytest.raises(exc_type):
        loop.run_until_complete(main())


def test_exception_handler_base_exception_propagates(loop):
    def handler(lp, ctx):
        raise SystemExit("from handler")

    loop.set_exception_handler(handler)
    loop.call_soon(explode)
    with pytest.raises(SystemExit):
        run_until_stopped(loop)


# ---------------------------------------------------------------- debug mode


def test_set_debug_get_debug(loop):
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


def _debug_in_subprocess(env_extra, args=()):
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from conftest import new_loop\n"
        "lp = new_loop()\n"
        "print(lp.get_debug())\n"
        "lp.close()\n"
    )
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    env.pop("PYTHONDEVMODE", None)
    env["FERROLOOP_TEST_TARGET"] = TARGET
    env.update(env_extra)
    out = subprocess.run([sys.executable, *args, "-c", script, TESTS_DIR], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_pythonasynciodebug_enables_debug_mode():
    assert _debug_in_subprocess({"PYTHONASYNCIODEBUG": "1"}) == "True"


def test_debug_mode_off_by_default():
    assert _debug_in_subprocess({}) == "False"


def test_dev_mode_enables_debug_mode():
    assert _debug_in_subprocess({}, args=("-X", "dev")) == "True"


def test_slow_callback_is_logged_in_debug_mode(loop, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05

    def a_slow_callback():
        time.sleep(0.2)

    loop.call_soon(a_slow_callback)
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    msgs = [r.getMessage() for r in caplog.records
            if r.name == "asyncio" and r.levelno == logging.WARNING]
    # Only the sleeping callback is certain to be slow (a loaded machine may
    # make another one slow too, so only count this one).
    slow = [m for m in msgs if m.startswith("Executing <") and "a_slow_callback" in m]
    assert len(slow) == 1, msgs
    assert " took " in slow[0] and slow[0].endswith(" seconds")


def test_slow_callback_not_logged_outside_debug_mode(loop, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")
    loop.set_debug(False)
    loop.slow_callback_duration = 0.01
    loop.call_soon(time.sleep, 0.05)
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    assert not [r for r in caplog.records if r.getMessage().startswith("Executing <")]


def test_slow_callback_duration_default_and_settable(loop):
    assert loop.slow_callback_duration == 0.1
    loop.slow_callback_duration = 0.5
    assert loop.slow_callback_duration == 0.5


def test_handles_have_source_traceback_in_debug_mode(loop):
    loop.set_debug(True)
    h = loop.call_soon(lambda: None)
    t = loop.call_later(10, lambda: None)
    try:
        for handle in (h, t):
            tb = handle._source_traceback
            assert tb, "debug-mode handle has no _source_traceback"
            # the last frame is this test, where the handle was created
            assert tb[-1][2] == "test_handles_have_source_traceback_in_debug_mode"
        assert "created at" in repr(h)
    finally:
        h.cancel()
        t.cancel()


def test_handles_have_no_source_traceback_outside_debug_mode(loop):
    loop.set_debug(False)
    h = loop.call_soon(lambda: None)
    assert not getattr(h, "_source_traceback", None)
    h.cancel()


def test_debug_exception_context_has_source_traceback(loop):
    loop.set_debug(True)
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    loop.call_soon(explode)
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    assert contexts and contexts[0].get("source_traceback")


def test_debug_mode_can_be_toggled_while_running(loop):
    seen = []

    def toggle():
        loop.set_debug(True)
        seen.append(loop.get_debug())
        loop.set_debug(False)
        seen.append(loop.get_debug())
        loop.stop()

    loop.call_soon(toggle)
    run_until_stopped(loop)
    assert seen == [True, False]


def test_new_loop_default_debug_follows_sys_flags():
    lp = new_loop()
    try:
        expected = sys.flags.dev_mode or bool(os.environ.get("PYTHONASYNCIODEBUG"))
        assert lp.get_debug() == expected
    finally:
        lp.close()


@pytest.mark.parametrize("debug", [False, True])
def test_unretrieved_task_exception_is_reported_in_debug_mode_too(loop, debug):
    """A task that failed and that nobody awaits must be freed and reported
    ("Task exception was never retrieved").  Regression: in debug mode a frame
    kept alive by the exception's traceback held the (GC-untracked) handle
    that ran the task, so the task leaked and was never reported."""
    import gc

    seen = []
    loop.set_debug(debug)
    loop.set_exception_handler(lambda lp, ctx: seen.append(ctx["message"]))

    async def fails():
        1 / 0

    async def main():
        asyncio.ensure_future(fails())
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()

    loop.run_until_complete(main())
    assert "Task exception was never retrieved" in seen
