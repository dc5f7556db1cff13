"""call_soon, call_soon_threadsafe and the Handle they return.

Every test here must pass on stock asyncio (FERROLOOP_TEST_TARGET=asyncio):
the expected behaviour is asyncio's, read from Lib/asyncio/base_events.py
and events.py of CPython 3.11 to 3.13.
"""
import asyncio
import contextvars
import gc
import sys
import threading
import time
import weakref

import pytest

from conftest import new_loop, run_until_stopped


request_id = contextvars.ContextVar("request_id", default="unset")




# ---------------------------------------------------------------- ordering


def test_call_soon_runs_in_fifo_order(loop):
    seen = []
    for i in range(100):
        loop.call_soon(seen.append, i)
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    assert seen == list(range(100))


def test_call_soon_passes_positional_args(loop):
    got = []

    def cb(*args):
        got.append(args)

    loop.call_soon(cb)
    loop.call_soon(cb, 1)
    loop.call_soon(cb, "a", None, (1, 2), {"k": "v"})
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    assert got == [(), (1,), ("a", None, (1, 2), {"k": "v"})]


def test_callback_return_value_is_ignored(loop):
    seen = []

    def cb():
        seen.append(1)
        return "ignored"

    loop.call_soon(cb)
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    assert seen == [1]


def test_callbacks_scheduled_by_callbacks_run_after_those_already_ready(loop):
    seen = []

    def first():
        seen.append("first")
        loop.call_soon(seen.append, "scheduled-by-first")

    loop.call_soon(first)
    loop.call_soon(seen.append, "second")
    loop.call_soon(seen.append, "third")
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    # stop() was ready before "scheduled-by-first", so that one may not have
    # run yet; run another round to flush it.
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    assert seen == ["first", "second", "third", "scheduled-by-first"]


def test_callbacks_scheduled_during_an_iteration_wait_for_the_next_one(loop):
    # stop() only ends run_forever after the current iteration: everything
    # that was ready when the iteration started runs, and nothing scheduled
    # during it does.
    seen = []

    def first():
        seen.append("first")
        loop.call_soon(seen.append, "next-iteration")
        loop.stop()

    loop.call_soon(first)
    loop.call_soon(seen.append, "same-iteration")
    run_until_stopped(loop)
    assert seen == ["first", "same-iteration"]

    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    assert seen == ["first", "same-iteration", "next-iteration"]


def test_self_rescheduling_callback_does_not_starve_timers(loop):
    count = [0]
    timer_fired = []

    def spin():
        count[0] += 1
        if count[0] > 1_000_000:  # a safety net, not a timing assertion
            loop.stop()
            return
        loop.call_soon(spin)

    def timer():
        timer_fired.append(count[0])
        loop.stop()

    loop.call_soon(spin)
    loop.call_later(0.02, timer)
    run_until_stopped(loop)
    assert timer_fired, "the timer never fired while a callback kept rescheduling itself"


# ---------------------------------------------------------------- contexts


def test_callback_runs_in_a_copy_of_the_context_at_call_soon_time(loop):
    seen = []

    def cb():
        seen.append(request_id.get())

    token = request_id.set("first")
    try:
        loop.call_soon(cb)
        request_id.set("second")
        loop.call_soon(cb)
    finally:
        request_id.reset(token)
    loop.call_soon(cb)
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    assert seen == ["first", "second", "unset"]


def test_each_callback_gets_its_own_context_copy(loop):
    seen = []

    def setter():
        request_id.set("changed-in-callback")
        seen.append(("setter", request_id.get()))

    def reader():
        seen.append(("reader", request_id.get()))

    loop.call_soon(setter)
    loop.call_soon(reader)
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    assert seen == [("setter", "changed-in-callback"), ("reader", "unset")]
    # and nothing leaked into the caller's context
    assert request_id.get() == "unset"


def test_call_soon_honours_explicit_context(loop):
    ctx = contextvars.copy_context()
    ctx.run(request_id.set, "from-ctx")
    seen = []

    def cb(tag):
        seen.append((tag, request_id.get()))
        request_id.set("written-by-callback")

    loop.call_soon(cb, "explicit", context=ctx)
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    assert seen == [("explicit", "from-ctx")]
    # The callback ran inside ctx itself (not a copy): its write is visible.
    assert ctx[request_id] == "written-by-callback"
    assert request_id.get() == "unset"


def test_call_soon_threadsafe_honours_explicit_context(loop):
    ctx = contextvars.copy_context()
    ctx.run(request_id.set, "threadsafe-ctx")
    seen = []
    loop.call_soon_threadsafe(lambda: seen.append(request_id.get()), context=ctx)
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    assert seen == ["threadsafe-ctx"]


# Objects that are not contextvars.Context, GC-tracked and not: asyncio keeps
# whatever `context=` is and calls its `run` when the callback is due.
NOT_CONTEXTS = ["x", 1, 1.5, {}, [], print]


@pytest.mark.parametrize("ctx", NOT_CONTEXTS, ids=lambda c: type(c).__name__)
def test_context_that_is_not_a_context_fails_when_the_callback_runs(loop, ctx):
    errors = []
    loop.set_exception_handler(lambda lp, c: errors.append(c["exception"]))
    seen = []
    handles = [loop.call_soon(seen.append, "soon", context=ctx),
               loop.call_later(0, seen.append, "later", context=ctx),
               loop.call_soon_threadsafe(seen.append, "threadsafe", context=ctx)]
    fut = loop.create_future()
    fut.add_done_callback(seen.append, context=ctx)
    fut.set_result(None)
    if sys.version_info >= (3, 12):
        assert all(h.get_context() is ctx for h in handles)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert seen == []
    assert len(errors) == 4
    for err in errors:
        assert isinstance(err, AttributeError)
        assert "'run'" in str(err)
    del handles, fut
    gc.collect()  # the handles and their contexts are freed without harm


@pytest.mark.parametrize("ctx", NOT_CONTEXTS, ids=lambda c: type(c).__name__)
def test_task_whose_context_is_not_a_context_never_runs(loop, ctx):
    errors = []
    loop.set_exception_handler(lambda lp, c: errors.append(c.get("exception")))
    ran = []

    async def body():
        ran.append(True)

    task = loop.create_task(body(), context=ctx)
    if sys.version_info >= (3, 12):
        assert task.get_context() is ctx
    loop.run_until_complete(asyncio.sleep(0.01))
    assert ran == [] and not task.done()
    assert isinstance(errors[0], AttributeError) and "'run'" in str(errors[0])
    task.get_coro().close()
    del task
    gc.collect()


def test_context_like_object_with_a_run_method_is_used(loop):
    calls = []

    class Runner:
        def run(self, fn, *args):
            calls.append(args)
            return fn(*args)

    seen = []
    loop.call_soon(seen.append, "soon", context=Runner())
    fut = loop.create_future()
    fut.add_done_callback(lambda f: seen.append(f.result()), context=Runner())
    fut.set_result("done")
    loop.run_until_complete(asyncio.sleep(0))
    assert seen == ["soon", "done"]
    assert calls == [("soon",), (fut,)]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="Handle.get_context() is new in 3.12")
def test_handle_get_context(loop):
    ctx = contextvars.copy_context()
    h = loop.call_soon(lambda: None, context=ctx)
    assert h.get_context() is ctx

    h2 = loop.call_soon(lambda: None)
    assert isinstance(h2.get_context(), contextvars.Context)
    assert h2.get_context() is not ctx

    token = request_id.set("snap")
    try:
        h3 = loop.call_soon(lambda: None)
    finally:
        request_id.reset(token)
    assert h3.get_context()[request_id] == "snap"
    for h in (h, h2, h3):
        h.cancel()


# ---------------------------------------------------------------- handles


def test_handle_cancel_prevents_the_call(loop):
    seen = []
    h = loop.call_soon(seen.append, "cancelled")
    loop.call_soon(seen.append, "kept")
    assert not h.cancelled()
    h.cancel()
    assert h.cancelled()
    h.cancel()  # idempotent
    assert h.cancelled()
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    assert seen == ["kept"]


def test_callback_can_cancel_a_later_ready_callback(loop):
    seen = []
    later = []

    def canceller():
        seen.append("canceller")
        later[0].cancel()

    loop.call_soon(canceller)
    later.append(loop.call_soon(seen.append, "victim"))
    loop.call_soon(seen.append, "survivor")
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    assert seen == ["canceller", "survivor"]


def test_cancel_after_the_callback_ran_is_harmless(loop):
    seen = []
    h = loop.call_soon(seen.append, 1)
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    assert seen == [1]
    h.cancel()
    assert h.cancelled()


def test_handle_repr_names_the_callback(loop):
    def a_very_distinctive_callback_name():
        pass

    h = loop.call_soon(a_very_distinctive_callback_name)
    assert "a_very_distinctive_callback_name" in repr(h)
    assert "Handle" in repr(h)
    h.cancel()
    assert "cancelled" in repr(h)


def test_call_soon_returns_distinct_handles(loop):
    h1 = loop.call_soon(lambda: None)
    h2 = loop.call_soon(lambda: None)
    assert h1 is not h2
    h1.cancel()
    assert not h2.cancelled()
    h2.cancel()


# ---------------------------------------------------------------- errors


def test_call_soon_on_closed_loop_raises():
    lp = new_loop()
    lp.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        lp.call_soon(lambda: None)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        lp.call_soon_threadsafe(lambda: None)


async def _a_coroutine_function():
    pass


@pytest.mark.parametrize("meth", ["call_soon", "call_soon_threadsafe"])
def test_call_soon_rejects_non_callables_in_debug_mode(loop, meth):
    # asyncio only validates the callback in debug mode.
    loop.set_debug(True)
    with pytest.raises(TypeError):
        getattr(loop, meth)(42)
    with pytest.raises(TypeError):
        getattr(loop, meth)("not callable")


@pytest.mark.parametrize("meth", ["call_soon", "call_soon_threadsafe"])
def test_call_soon_rejects_coroutines_in_debug_mode(loop, meth):
    loop.set_debug(True)
    with pytest.raises(TypeError, match="coroutine"):
        getattr(loop, meth)(_a_coroutine_function)
    coro = _a_coroutine_function()
    try:
        with pytest.raises(TypeError, match="coroutine"):
            getattr(loop, meth)(coro)
    finally:
        coro.close()


def test_non_callable_outside_debug_mode_never_crashes_the_loop(loop):
    # asyncio accepts the non-callable without checking (no debug mode) and
    # reports the TypeError through the exception handler when it "runs".
    # An eager TypeError at call_soon time is also acceptable; what must not
    # happen is an exception escaping run_forever.
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    seen = []
    try:
        loop.call_soon(42)
        eager = False
    except TypeError:
        eager = True
    loop.call_soon(seen.append, "after")
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    assert seen == ["after"]
    if not eager:
        assert len(errors) == 1
        assert isinstance(errors[0]["exception"], TypeError)


def test_call_soon_from_another_thread_in_debug_mode_raises(loop):
    loop.set_debug(True)
    outcome = []

    def worker():
        try:
            loop.call_soon(lambda: None)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            outcome.append(exc)
        else:
            outcome.append(None)
        loop.call_soon_threadsafe(loop.stop)

    def start():
        threading.Thread(target=worker).start()

    loop.call_soon(start)
    run_until_stopped(loop)
    assert len(outcome) == 1
    assert isinstance(outcome[0], RuntimeError), outcome
    assert "thread" in str(outcome[0]).lower()


def test_call_later_from_another_thread_in_debug_mode_raises(loop):
    loop.set_debug(True)
    outcome = []

    def worker():
        try:
            loop.call_later(1, lambda: None)
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)
        else:
            outcome.append(None)
        loop.call_soon_threadsafe(loop.stop)

    loop.call_soon(lambda: threading.Thread(target=worker).start())
    run_until_stopped(loop)
    assert isinstance(outcome[0], RuntimeError), outcome


# ---------------------------------------------------------------- threadsafe


def test_call_soon_threadsafe_many_threads_exactly_once_and_in_order(loop):
    n_threads, per_thread = 8, 1000
    total = n_threads * per_thread
    seen = []
    barrier = threading.Barrier(n_threads)

    def record(tid, i):
        seen.append((tid, i))
        if len(seen) == total:
            loop.stop()

    def producer(tid):
        barrier.wait()
        for i in range(per_thread):
            loop.call_soon_threadsafe(record, tid, i)

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(n_threads)]

    def start():
        for t in threads:
            t.start()

    loop.call_soon(start)
    try:
        run_until_stopped(loop)
    finally:
        for t in threads:
            t.join()
    assert len(seen) == total
    assert len(set(seen)) == total
    for tid in range(n_threads):
        mine = [i for (t, i) in seen if t == tid]
        assert mine == list(range(per_thread)), f"thread {tid} out of order"


def test_call_soon_threadsafe_wakes_a_sleeping_loop(loop):
    # Nothing is ready and the only timer is the 10 s watchdog, so the loop
    # sleeps in the poller until the thread wakes it.
    def worker():
        time.sleep(0.1)
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=worker)
    loop.call_soon(t.start)
    try:
        run_until_stopped(loop)
    finally:
        t.join()


def test_call_soon_threadsafe_wakes_a_loop_blocked_on_a_long_timer(loop):
    seen = []
    long_timer = loop.call_later(3600, seen.append, "hour")

    def worker():
        time.sleep(0.05)
        loop.call_soon_threadsafe(seen.append, "woken")
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=worker)
    loop.call_soon(t.start)
    try:
        run_until_stopped(loop)
    finally:
        t.join()
        long_timer.cancel()
    assert seen == ["woken"]


def test_call_soon_threadsafe_before_run_and_from_the_loop_thread(loop):
    seen = []
    h = loop.call_soon_threadsafe(seen.append, 1)
    assert not h.cancelled()
    h2 = loop.call_soon_threadsafe(seen.append, 2)
    h2.cancel()
    loop.call_soon(lambda: loop.call_soon_threadsafe(seen.append, 3))
    loop.call_soon(lambda: loop.call_soon_threadsafe(loop.stop))
    run_until_stopped(loop)
    assert seen == [1, 3]


def test_call_soon_threadsafe_from_a_thread_while_loop_not_running(loop):
    seen = []
    t = threading.Thread(target=lambda: loop.call_soon_threadsafe(seen.append, "x"))
    t.start()
    t.join()
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    assert seen == ["x"]


def test_handles_user_code_can_see_are_never_reused(loop):
    """ferroloop reuses finished call_soon handles that nothing references;
    a handle kept by user code, strongly or weakly, must stay itself."""
    import weakref

    kept = loop.call_soon(lambda: None)
    weak = weakref.ref(loop.call_soon(lambda: None))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert weak() is None
    later = [loop.call_soon(lambda: None) for _ in range(10)]
    assert all(h is not kept for h in later)
    assert not kept.cancelled()
    for h in later:
        h.cancel()


def test_each_callback_gets_a_fresh_context_copy_batch_after_batch(loop):
    """Handles may be recycled between batches; every callback must still
    start from a copy of the context current at call_soon time."""
    var = contextvars.ContextVar("var", default="unset")
    seen = []

    def callback(i):
        seen.append(var.get())
        var.set(f"set by {i}")

    for batch in range(3):
        for i in range(50):
            loop.call_soon(callback, i)
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert seen == ["unset"] * 150
    assert var.get() == "unset"


def test_handles_belong_to_the_loop_that_scheduled_them(loop_factory):
    """Finished handles may be reused by another loop of the process; a
    handle must always report (and send errors to) the loop it came from."""
    first = loop_factory()
    for _ in range(20):
        first.call_soon(lambda: None)
    first.call_soon(first.stop)
    first.run_forever()
    first.close()

    second = loop_factory()
    try:
        errors = []
        second.set_exception_handler(lambda lp, ctx: errors.append((lp, ctx["handle"])))
        handles = [second.call_soon(lambda: 1 / 0) for _ in range(20)]
        assert all(h._loop is second for h in handles)
        second.call_soon(second.stop)
        second.run_forever()
        assert [lp for lp, _ in errors] == [second] * 20
        assert [h for _, h in errors] == handles
    finally:
        second.close()


@pytest.mark.parametrize("schedule", ["call_soon", "call_later", "cancelled"])
def test_object_holding_its_own_handle_is_freed(loop, schedule):
    """An object that keeps the handle of a callback taking itself as
    argument forms a cycle; once the callback ran (or was cancelled) the
    cycle must not keep the object alive."""
    import gc
    import weakref

    class Owner:
        pass

    owner = Owner()
    if schedule == "call_soon":
        owner.handle = loop.call_soon(lambda o: None, owner)
    else:
        owner.handle = loop.call_later(0, lambda o: None, owner)
        if schedule == "cancelled":
            owner.handle.cancel()
    alive = weakref.ref(owner)
    del owner
    loop.call_later(0.01, loop.stop)
    run_until_stopped(loop)
    gc.collect()
    assert alive() is None


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe"])
def test_call_soon_argument_errors(loop, method):
    schedule = getattr(loop, method)
    with pytest.raises(TypeError):
        schedule()
    with pytest.raises(TypeError, match="unexpected keyword argument 'delay'"):
        schedule(print, delay=1)


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe"])
def test_call_soon_passes_every_positional_argument(loop, method):
    got = []
    schedule = getattr(loop, method)
    h0 = schedule(lambda: got.append(()))
    h1 = schedule(lambda a: got.append((a,)), (1, 2))  # one argument, a tuple
    h3 = schedule(lambda *a: got.append(a), 1, 2, 3, context=None)
    assert (h0._args, h1._args, h3._args) == ((), ((1, 2),), (1, 2, 3))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert got == [(), ((1, 2),), (1, 2, 3)]


def test_call_soon_is_introspectable(loop):
    import inspect

    params = list(inspect.signature(loop.call_soon).parameters)
    assert params == ["callback", "args", "context"]


def test_cycle_through_a_kept_handle_and_its_context_is_collected(loop):
    # ferroloop keeps queued handles and their context copies off the GC's
    # list; a handle still held after it ran must be back on it.
    var = contextvars.ContextVar("var")

    class Holder:
        pass

    def callback(holder):
        var.set(holder)  # context -> holder -> handle -> context

    holder = Holder()
    holder.handle = loop.call_soon(callback, holder)
    ref = weakref.ref(holder)
    del holder
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    gc.collect()
    assert ref() is None


def test_cycle_through_a_kept_timer_handle_is_collected(loop):
    var = contextvars.ContextVar("var")

    class Holder:
        pass

    def callback(holder):
        var.set(holder)
        loop.stop()

    holder = Holder()
    holder.handle = loop.call_later(0.001, callback, holder)
    ref = weakref.ref(holder)
    del holder
    run_until_stopped(loop)
    gc.collect()
    assert ref() is None
