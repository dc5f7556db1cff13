"""run_forever / run_until_complete / stop / close and the loop's state.

Also checks that loops leave no file descriptors or threads behind.
"""
import asyncio
import gc
import os
import threading

import pytest

from conftest import new_loop, run_until_stopped





def open_fds():
    return set(os.listdir("/proc/self/fd"))


# ---------------------------------------------------------------- state


def test_fresh_loop_state(loop):
    assert not loop.is_running()
    assert not loop.is_closed()


def test_is_running_inside_and_outside(loop):
    seen = []

    def probe():
        seen.append(loop.is_running())
        seen.append(asyncio.get_running_loop() is loop)
        seen.append(asyncio.get_event_loop() is loop)
        loop.stop()

    loop.call_soon(probe)
    run_until_stopped(loop)
    assert seen == [True, True, True]
    assert not loop.is_running()
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_close_sets_is_closed_and_is_idempotent():
    lp = new_loop()
    lp.close()
    assert lp.is_closed()
    assert not lp.is_running()
    lp.close()  # a second close is fine
    assert lp.is_closed()


@pytest.mark.parametrize("call", [
    lambda lp: lp.run_forever(),
    lambda lp: lp.call_soon(print),
    lambda lp: lp.call_later(1, print),
    lambda lp: lp.call_at(1, print),
    lambda lp: lp.call_soon_threadsafe(print),
    lambda lp: lp.run_in_executor(None, print),
], ids=["run_forever", "call_soon", "call_later", "call_at", "call_soon_threadsafe",
        "run_in_executor"])
def test_closed_loop_methods_raise(call):
    lp = new_loop()
    lp.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        call(lp)


def test_create_task_on_closed_loop_raises():
    lp = new_loop()
    lp.close()
    coro = asyncio.sleep(0)
    try:
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            lp.create_task(coro)
    finally:
        coro.close()


def test_run_until_complete_on_closed_loop_raises():
    lp = new_loop()
    lp.close()
    coro = asyncio.sleep(0)
    try:
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            lp.run_until_complete(coro)
    finally:
        coro.close()


def test_repr_mentions_state(loop):
    r = repr(loop)
    assert "running=False" in r
    assert "closed=False" in r


# ---------------------------------------------------------------- nesting


def test_run_forever_inside_run_forever_raises(loop):
    errors = []

    def nested():
        try:
            loop.run_forever()
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.stop()

    loop.call_soon(nested)
    run_until_stopped(loop)
    assert errors == ["This event loop is already running"]
    assert not loop.is_running()


def test_run_until_complete_on_running_loop_raises(loop):
    errors = []

    async def inner():
        return 1

    def nested():
        coro = inner()
        try:
            loop.run_until_complete(coro)
        except RuntimeError as exc:
            errors.append(str(exc))
        finally:
            coro.close()
        loop.stop()

    loop.call_soon(nested)
    run_until_stopped(loop)
    assert errors == ["This event loop is already running"]


def test_close_while_running_raises(loop):
    errors = []

    def try_close():
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.stop()

    loop.call_soon(try_close)
    run_until_stopped(loop)
    assert errors == ["Cannot close a running event loop"]
    assert not loop.is_closed()


@pytest.mark.parametrize("how", ["run_until_complete", "run_forever"])
def test_running_a_second_loop_inside_a_running_loop_raises(loop, how):
    # Note: CPython 3.13.0's run_forever() clears the running loop when its
    # own setup fails, so each way is checked on its own.
    other = new_loop()
    errors = []

    def nested():
        try:
            if how == "run_forever":
                other.run_forever()
            else:
                other.run_until_complete(other.create_future())
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.stop()

    loop.call_soon(nested)
    try:
        run_until_stopped(loop)
    finally:
        other.close()
    assert len(errors) == 1
    assert "another loop is running" in errors[0]


def test_run_forever_twice_in_sequence(loop):
    seen = []
    for i in range(3):
        loop.call_soon(seen.append, i)
        loop.call_soon(loop.stop)
        run_until_stopped(loop)
    assert seen == [0, 1, 2]


def test_loop_runs_in_another_thread(loop_factory):
    result = []

    def worker():
        lp = loop_factory()
        try:
            async def main():
                await asyncio.sleep(0)
                return threading.get_ident()

            result.append(lp.run_until_complete(main()))
        finally:
            lp.close()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert result == [t.ident]


def test_two_loops_in_two_threads_at_once(loop_factory):
    results = {}
    barrier = threading.Barrier(2)

    def worker(name):
        lp = loop_factory()
        try:
            async def main():
                barrier.wait()
                await asyncio.sleep(0.01)
                return asyncio.get_running_loop() is lp

            results[name] = lp.run_until_complete(main())
        finally:
            lp.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {"a": True, "b": True}


# ---------------------------------------------------------------- stop


def test_stop_before_run_forever_runs_one_iteration(loop):
    seen = []

    def first():
        seen.append("first")
        loop.call_soon(seen.append, "second-iteration")

    loop.call_soon(first)
    loop.stop()
    loop.run_forever()  # must return after one iteration
    assert seen == ["first"]
    assert not loop.is_running()
    loop.stop()
    loop.run_forever()
    assert seen == ["first", "second-iteration"]


def test_stop_with_nothing_scheduled_returns(loop):
    loop.stop()
    loop.run_forever()
    assert not loop.is_running()


def test_stop_is_reset_after_run_forever(loop):
    loop.stop()
    loop.run_forever()
    # The earlier stop() must not leak into this run: the loop keeps going
    # until the timer stops it.
    seen = []
    loop.call_later(0.02, lambda: (seen.append("timer"), loop.stop()))
    run_until_stopped(loop)
    assert seen == ["timer"]


def test_stop_inside_run_until_complete_raises(loop):
    async def main():
        loop.stop()
        await asyncio.sleep(10)

    task = loop.create_task(main())
    with pytest.raises(RuntimeError, match="Event loop stopped before Future completed."):
        loop.run_until_complete(task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)


def test_stop_called_twice(loop):
    loop.call_soon(loop.stop)
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    assert not loop.is_running()


# ---------------------------------------------------------------- run_until_complete


def test_run_until_complete_returns_coroutine_result(loop):
    async def main(x):
        await asyncio.sleep(0)
        return x * 2

    assert loop.run_until_complete(main(21)) == 42


def test_run_until_complete_raises_coroutine_exception(loop):
    class Boom(Exception):
        pass

    async def main():
        await asyncio.sleep(0)
        raise Boom("x")

    with pytest.raises(Boom):
        loop.run_until_complete(main())


def test_run_until_complete_with_future(loop):
    fut = loop.create_future()
    loop.call_later(0.01, fut.set_result, "done")
    assert loop.run_until_complete(fut) == "done"


def test_run_until_complete_with_failing_future(loop):
    fut = loop.create_future()
    loop.call_soon(fut.set_exception, KeyError("k"))
    with pytest.raises(KeyError):
        loop.run_until_complete(fut)


def test_run_until_complete_with_done_future(loop):
    fut = loop.create_future()
    fut.set_result(5)
    assert loop.run_until_complete(fut) == 5


def test_run_until_complete_with_cancelled_future(loop):
    fut = loop.create_future()
    fut.cancel()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(fut)


def test_run_until_complete_with_task(loop):
    async def main():
        return "task result"

    task = loop.create_task(main())
    assert loop.run_until_complete(task) == "task result"
    assert task.done()


def test_run_until_complete_with_awaitable_object(loop):
    class Awaitable:
        def __await__(self):
            yield from asyncio.sleep(0).__await__()
            return "awaited"

    assert loop.run_until_complete(Awaitable()) == "awaited"


def test_run_until_complete_rejects_non_awaitable(loop):
    with pytest.raises(TypeError):
        loop.run_until_complete(42)


def test_run_until_complete_with_future_of_another_loop_raises(loop):
    other = new_loop()
    try:
        fut = other.create_future()
        with pytest.raises(ValueError):
            loop.run_until_complete(fut)
    finally:
        other.close()


def test_run_until_complete_leaves_other_callbacks_pending(loop):
    seen = []

    async def main():
        loop.call_later(30, seen.append, "late")
        return "ok"

    assert loop.run_until_complete(main()) == "ok"
    assert seen == []
    assert not loop.is_running()


def test_run_until_complete_propagates_base_exceptions(loop):
    async def main():
        raise SystemExit(3)

    with pytest.raises(SystemExit):
        loop.run_until_complete(main())
    assert not loop.is_running()


def test_close_does_not_run_pending_callbacks():
    lp = new_loop()
    seen = []
    lp.call_soon(seen.append, 1)
    lp.call_later(0, seen.append, 2)
    lp.close()
    assert seen == []


def test_set_event_loop_and_get_event_loop(loop):
    asyncio.set_event_loop(loop)
    assert asyncio.get_event_loop() is loop


# ---------------------------------------------------------------- leaks


def test_loops_leave_no_fds_behind(loop_factory):
    gc.collect()
    before = open_fds()
    for _ in range(20):
        lp = loop_factory()
        lp.call_soon(lp.stop)
        lp.run_forever()

        async def main():
            await asyncio.sleep(0)

        lp.run_until_complete(main())
        lp.close()
    gc.collect()
    after = open_fds()
    assert after <= before, f"leaked fds: {sorted(after - before)}"


def test_loop_dropped_without_close_leaves_no_fds(loop_factory):
    import warnings

    gc.collect()
    before = open_fds()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        for _ in range(10):
            lp = loop_factory()
            lp.call_soon(lp.stop)
            lp.run_forever()
            del lp
        gc.collect()
    after = open_fds()
    assert after <= before, f"leaked fds: {sorted(after - before)}"


def test_loops_leave_no_threads_behind(loop_factory):
    before = set(threading.enumerate())
    for _ in range(5):
        lp = loop_factory()

        def poke(lp=lp):
            lp.call_soon_threadsafe(lp.stop)

        t = threading.Thread(target=poke)
        lp.call_soon(t.start)
        lp.run_forever()
        t.join()
        lp.close()
    after = set(threading.enumerate())
    assert after <= before, f"leaked threads: {after - before}"


def test_objects_keeping_their_own_unrun_handles_are_freed_after_close():
    # aiohttp's request handler keeps its keep-alive timer this way:
    # self._timer = loop.call_later(delay, self._on_timeout).  Once the loop
    # is closed, the object <-> handle cycle must be collectable.
    import socket
    import weakref

    class Owner:
        def __init__(self, loop, kind, sock=None):
            if kind == "timer":
                self.h = loop.call_later(100, self.cb)
            elif kind == "timer with args":
                self.h = loop.call_later(100, self.cb2, self, 1)
            elif kind == "queued":
                self.h = loop.call_soon(self.cb)
            elif kind == "reader":
                loop.add_reader(sock, self.cb)
                self.h = sock

        def cb(self):
            pass

        def cb2(self, *args):
            pass

    a, b = socket.socketpair()
    try:
        loop = new_loop()
        owners = [Owner(loop, kind, a) for kind in ("timer", "timer with args", "queued", "reader")]
        refs = [weakref.ref(o) for o in owners]
        del owners
        loop.close()
        gc.collect()
        assert [r() for r in refs] == [None] * len(refs)
    finally:
        a.close()
        b.close()


def test_closed_loop_is_freed_without_the_cyclic_collector(loop_factory):
    # asyncio's loop, once closed, is freed by reference counting alone;
    # ferroloop's must be too (tornado's suite checks it): no cycle through
    # its subprocess reaper, servers, transports or executor.
    import sys
    import weakref

    async def main():
        lp = asyncio.get_running_loop()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, '-c', 'print("hi")', stdout=asyncio.subprocess.PIPE)
        assert (await proc.communicate())[0].strip() == b'hi'
        server = await asyncio.start_server(lambda r, w: w.close(), '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        assert await reader.read() == b''
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        await lp.run_in_executor(None, int)
        lp.call_later(10, print).cancel()
        await lp.shutdown_default_executor()

    gc.collect()
    gc.disable()
    try:
        lp = loop_factory()
        lp.run_until_complete(main())
        lp.run_until_complete(lp.shutdown_asyncgens())
        lp.close()
        ref = weakref.ref(lp)
        del lp
        assert ref() is None, gc.get_referrers(ref())
    finally:
        gc.enable()
