"""ferroloop's public Python API: the ways a user turns it on.

Most tests here are about the ferroloop package itself and are skipped when
FERROLOOP_TEST_TARGET=asyncio; the ones that check the loop object against
asyncio's abstract API run on both targets.
"""
import asyncio
import gc
import os
import sys
import threading
import warnings

import pytest

from conftest import new_loop, on_ferroloop

needs_ferroloop = pytest.mark.skipif(
    not on_ferroloop(), reason="tests the ferroloop package itself")
PY312 = sys.version_info >= (3, 12)


@pytest.fixture
def ferroloop():
    import ferroloop as mod

    return mod


@pytest.fixture
def restore_policy():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        saved = asyncio.get_event_loop_policy()
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(saved)
        asyncio.set_event_loop(None)


def open_fds():
    return set(os.listdir("/proc/self/fd"))


# ---------------------------------------------------------------- both targets


def _abstract_methods():
    return sorted(name for name, value in vars(asyncio.AbstractEventLoop).items()
                  if not name.startswith("_") and callable(value))


@pytest.mark.parametrize("name", _abstract_methods())
def test_loop_has_every_abstract_event_loop_method(loop, name):
    assert callable(getattr(loop, name, None)), f"loop has no {name}()"


def test_loop_is_an_abstract_event_loop(loop):
    assert isinstance(loop, asyncio.AbstractEventLoop)


def test_loop_has_slow_callback_duration(loop):
    assert isinstance(loop.slow_callback_duration, float)


# ---------------------------------------------------------------- ferroloop package


@needs_ferroloop
def test_version_is_a_string(ferroloop):
    assert isinstance(ferroloop.__version__, str)
    assert ferroloop.__version__


@needs_ferroloop
def test_new_event_loop_returns_a_ferroloop_loop(ferroloop):
    lp = ferroloop.new_event_loop()
    try:
        assert isinstance(lp, ferroloop.Loop)
        assert isinstance(lp, asyncio.AbstractEventLoop)
        assert not lp.is_running() and not lp.is_closed()
    finally:
        lp.close()


@needs_ferroloop
def test_each_new_event_loop_is_distinct(ferroloop):
    a, b = ferroloop.new_event_loop(), ferroloop.new_event_loop()
    try:
        assert a is not b
    finally:
        a.close()
        b.close()


@needs_ferroloop
def test_run_returns_result_and_closes_loop(ferroloop):
    loops = []

    async def main(x):
        loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0.001)
        return x * 2

    assert ferroloop.run(main(21)) == 42
    assert isinstance(loops[0], ferroloop.Loop)
    assert loops[0].is_closed()


@needs_ferroloop
def test_run_propagates_exceptions(ferroloop):
    async def main():
        await asyncio.sleep(0)
        raise LookupError("from main")

    with pytest.raises(LookupError):
        ferroloop.run(main())


@needs_ferroloop
@pytest.mark.parametrize("debug", [True, False])
def test_run_honours_debug(ferroloop, debug):
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert ferroloop.run(main(), debug=debug) is debug


@needs_ferroloop
def test_run_cancels_leftover_tasks(ferroloop):
    cancelled = []

    async def background():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        asyncio.get_running_loop().create_task(background())
        await asyncio.sleep(0)

    ferroloop.run(main())
    assert cancelled == [True]


@needs_ferroloop
def test_run_from_a_running_loop_raises(ferroloop):
    async def inner():
        return 1

    async def main():
        coro = inner()
        try:
            with pytest.raises(RuntimeError):
                ferroloop.run(coro)
        finally:
            coro.close()
        return "ok"

    assert ferroloop.run(main()) == "ok"


@needs_ferroloop
def test_run_leaves_no_fds_or_threads_behind(ferroloop):
    async def main():
        await asyncio.sleep(0)
        await asyncio.to_thread(int)

    ferroloop.run(main())  # warm up lazily created resources
    gc.collect()
    fds_before = open_fds()
    threads_before = set(threading.enumerate())
    for _ in range(5):
        ferroloop.run(main())
    gc.collect()
    assert open_fds() <= fds_before, f"leaked fds: {sorted(open_fds() - fds_before)}"
    leaked = set(threading.enumerate()) - threads_before
    assert not leaked, f"leaked threads: {leaked}"


@needs_ferroloop
def test_event_loop_policy_makes_ferroloop_loops(ferroloop, restore_policy):
    policy = ferroloop.EventLoopPolicy()
    assert isinstance(policy, asyncio.AbstractEventLoopPolicy)
    lp = policy.new_event_loop()
    try:
        assert isinstance(lp, ferroloop.Loop)
    finally:
        lp.close()


@needs_ferroloop
def test_set_event_loop_policy_then_asyncio_run(ferroloop, restore_policy):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(ferroloop.EventLoopPolicy())

    async def main():
        return type(asyncio.get_running_loop())

    assert asyncio.run(main()) is ferroloop.Loop


@needs_ferroloop
def test_install_makes_asyncio_use_ferroloop(ferroloop, restore_policy):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ferroloop.install()
    lp = asyncio.new_event_loop()
    try:
        assert isinstance(lp, ferroloop.Loop)
    finally:
        lp.close()

    async def main():
        return type(asyncio.get_running_loop())

    assert asyncio.run(main()) is ferroloop.Loop


@needs_ferroloop
@pytest.mark.skipif(not PY312, reason="asyncio.run(loop_factory=) is new in 3.12")
def test_asyncio_run_with_ferroloop_loop_factory(ferroloop):
    async def main():
        return asyncio.get_running_loop()

    lp = asyncio.run(main(), loop_factory=ferroloop.new_event_loop)
    assert isinstance(lp, ferroloop.Loop)
    assert lp.is_closed()


@needs_ferroloop
def test_asyncio_runner_with_ferroloop(ferroloop):
    async def main():
        return type(asyncio.get_running_loop())

    with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
        assert runner.run(main()) is ferroloop.Loop


@needs_ferroloop
def test_conftest_new_loop_is_ferroloop(ferroloop):
    lp = new_loop()
    try:
        assert isinstance(lp, ferroloop.Loop)
    finally:
        lp.close()


@needs_ferroloop
def test_ferroloop_in_a_subprocess_exits_cleanly():
    # A fresh interpreter that imports ferroloop, runs a coroutine and exits:
    # catches crashes at interpreter shutdown (e.g. in native destructors).
    import subprocess

    script = (
        "import asyncio, ferroloop\n"
        "async def main():\n"
        "    await asyncio.sleep(0.001)\n"
        "    return 'done'\n"
        "print(ferroloop.run(main()))\n"
        "lp = ferroloop.new_event_loop()\n"  # left unclosed on purpose
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "done"


def test_native_methods_are_the_subclasses_own(ferroloop):
    # CPython specialises C method calls only on instances of exactly the
    # class holding the descriptor: ferroloop gives its subclasses their own.
    from ferroloop import _transports

    def objclass(cls, name):
        return cls.__dict__[name].__objclass__

    assert objclass(ferroloop.Task, "done") is ferroloop.Task
    assert objclass(ferroloop.Task, "add_done_callback") is ferroloop.Task
    assert objclass(ferroloop.Loop, "call_soon") is ferroloop.Loop
    assert objclass(_transports.SocketTransport, "write") is _transports.SocketTransport
    # Methods a Python class overrides stay overridden.
    assert type(_transports.DatagramTransport.__dict__["write"]).__name__ == "function"

    loop = ferroloop.new_event_loop()
    try:
        async def coro():
            return 7

        task = loop.create_task(coro())
        assert loop.run_until_complete(task) == 7
        assert task.done() and task.result() == 7
        # The rebound descriptor still checks its receiver's type.
        with pytest.raises(TypeError):
            ferroloop.Task.__dict__["result"](loop.create_future())
        with pytest.raises(TypeError):
            ferroloop.Loop.__dict__["call_soon"](object(), print)

        class MyLoop(ferroloop.Loop):
            pass

        mine = MyLoop()
        try:
            ran = []
            mine.call_soon(ran.append, 1)
            mine.call_soon(mine.stop)
            mine.run_forever()
            assert ran == [1]
        finally:
            mine.close()
    finally:
        loop.close()


@pytest.mark.parametrize("value, enabled", [(1, True), (0, False), ("yes", True), ("", False), (None, False)])
def test_set_debug_takes_any_truth_value(loop, value, enabled):
    # asyncio stores set_debug()'s argument and tests its truth.
    loop.set_debug(value)
    assert bool(loop.get_debug()) is enabled

    async def main():
        return bool(asyncio.get_running_loop().get_debug())

    assert loop.run_until_complete(main()) is enabled
