"""add_signal_handler / remove_signal_handler and Ctrl-C (SIGINT).

All of these run in the main thread (pytest's).  Before sending a signal
whose default action would kill the test process, each test installs a
plain Python handler as a fallback, so that a loop that failed to install
its own handler makes the test fail instead of killing pytest.
"""
import asyncio
import os
import signal
import threading
import time

import pytest

from conftest import WATCHDOG, new_loop, run_until_stopped


pytestmark = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signal tests need the main thread",
)




@pytest.fixture
def fallback_handlers():
    """Catch stray SIGUSR1/SIGUSR2 in Python and restore the old handlers."""
    stray = []

    def fallback(signum, frame):
        stray.append(signum)

    saved = {}
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        saved[sig] = signal.signal(sig, fallback)
    saved_int = signal.getsignal(signal.SIGINT)
    saved_wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(saved_wakeup)
    yield stray
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    signal.signal(signal.SIGINT, saved_int)
    signal.set_wakeup_fd(saved_wakeup)


async def _coro_handler():
    pass


# ---------------------------------------------------------------- handlers


def test_signal_handler_called_with_args(loop, fallback_handlers):
    got = []

    def handler(*args):
        got.append(args)
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, handler, "a", 2)
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    try:
        run_until_stopped(loop)
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    assert got == [("a", 2)]
    assert fallback_handlers == []


def test_signal_handler_runs_as_a_loop_callback_not_in_the_signal_frame(loop, fallback_handlers):
    # The handler is scheduled on the loop; it runs after the callback that
    # sent the signal has returned.
    order = []

    def sender():
        os.kill(os.getpid(), signal.SIGUSR1)
        order.append("sender-done")

    def handler():
        order.append("handler")
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, handler)
    loop.call_soon(sender)
    try:
        run_until_stopped(loop)
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    assert order == ["sender-done", "handler"]


def test_signal_from_another_thread_wakes_a_sleeping_loop(loop, fallback_handlers):
    got = []

    def handler():
        got.append("usr2")
        loop.stop()

    def worker():
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGUSR2)

    loop.add_signal_handler(signal.SIGUSR2, handler)
    t = threading.Thread(target=worker)
    loop.call_soon(t.start)
    try:
        run_until_stopped(loop)
    finally:
        t.join()
        loop.remove_signal_handler(signal.SIGUSR2)
    assert got == ["usr2"]
    assert fallback_handlers == []


def test_signal_handler_called_for_every_delivery(loop, fallback_handlers):
    got = []

    def handler():
        got.append(1)
        if len(got) < 3:
            loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        else:
            loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, handler)
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    try:
        run_until_stopped(loop)
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    assert got == [1, 1, 1]


def test_second_add_signal_handler_replaces_the_first(loop, fallback_handlers):
    seen = []
    loop.add_signal_handler(signal.SIGUSR1, seen.append, "old")
    loop.add_signal_handler(signal.SIGUSR1, lambda: (seen.append("new"), loop.stop()))
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    try:
        run_until_stopped(loop)
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    assert seen == ["new"]


def test_signal_handler_exception_goes_to_exception_handler(loop, fallback_handlers):
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

    def handler():
        loop.call_soon(loop.stop)
        raise ValueError("boom from signal handler")

    loop.add_signal_handler(signal.SIGUSR1, handler)
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    try:
        run_until_stopped(loop)
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    assert len(errors) == 1
    assert isinstance(errors[0]["exception"], ValueError)


def test_remove_signal_handler_return_values_and_restores_default(loop, fallback_handlers):
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    # asyncio puts back the default disposition, not the previous handler
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_remove_sigint_handler_restores_default_int_handler(loop, fallback_handlers):
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    assert loop.remove_signal_handler(signal.SIGINT) is True
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_close_removes_signal_handlers(fallback_handlers):
    lp = new_loop()
    lp.add_signal_handler(signal.SIGUSR1, lambda: None)
    lp.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("sig", [0, -1, 4242])
def test_invalid_signal_number_raises_value_error(loop, sig):
    with pytest.raises(ValueError):
        loop.add_signal_handler(sig, lambda: None)
    with pytest.raises(ValueError):
        loop.remove_signal_handler(sig)


def test_non_int_signal_raises_type_error(loop):
    with pytest.raises(TypeError):
        loop.add_signal_handler("SIGUSR1", lambda: None)
    with pytest.raises(TypeError):
        loop.remove_signal_handler("SIGUSR1")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP])
def test_uncatchable_signal_raises_runtime_error(loop, sig, fallback_handlers):
    with pytest.raises(RuntimeError):
        loop.add_signal_handler(sig, lambda: None)
    # nothing was registered
    assert loop.remove_signal_handler(sig) is False


def test_coroutine_function_handler_raises_type_error(loop):
    with pytest.raises(TypeError):
        loop.add_signal_handler(signal.SIGUSR1, _coro_handler)


def test_coroutine_object_handler_raises_type_error(loop):
    coro = _coro_handler()
    try:
        with pytest.raises(TypeError):
            loop.add_signal_handler(signal.SIGUSR1, coro)
    finally:
        coro.close()


def test_add_signal_handler_on_closed_loop_raises(fallback_handlers):
    lp = new_loop()
    lp.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        lp.add_signal_handler(signal.SIGUSR1, lambda: None)


def test_add_signal_handler_from_non_main_thread_raises_runtime_error(fallback_handlers):
    # asyncio calls signal.set_wakeup_fd(), which refuses to work outside the
    # main thread, and turns that ValueError into a RuntimeError.
    outcome = []

    def worker():
        lp = new_loop()
        try:
            lp.add_signal_handler(signal.SIGUSR1, lambda: None)
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)
        else:
            outcome.append(None)
        finally:
            lp.close()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert isinstance(outcome[0], RuntimeError), outcome
    assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN)


# ---------------------------------------------------------------- Ctrl-C


def _run_expecting_keyboard_interrupt(loop):
    watchdog_fired = []

    def watchdog():
        watchdog_fired.append(True)
        loop.stop()

    # The only other timer is far away, so the loop is asleep in the poller
    # when SIGINT arrives.
    loop.call_later(WATCHDOG, watchdog)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert not watchdog_fired
    assert not loop.is_running()


def test_sigint_from_a_thread_interrupts_a_sleeping_run_forever(loop, fallback_handlers):
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def worker():
        time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=worker)
    loop.call_soon(t.start)
    try:
        _run_expecting_keyboard_interrupt(loop)
    finally:
        t.join()


def test_sigint_from_a_callback_propagates_out_of_run_forever(loop, fallback_handlers):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    loop.call_later(0.01, os.kill, os.getpid(), signal.SIGINT)
    _run_expecting_keyboard_interrupt(loop)


def test_loop_is_usable_after_keyboard_interrupt(loop, fallback_handlers):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    loop.call_soon(os.kill, os.getpid(), signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    seen = []
    loop.call_soon(seen.append, "again")
    loop.call_soon(loop.stop)
    run_until_stopped(loop)
    assert seen == ["again"]


def test_sigint_interrupts_run_until_complete(loop, fallback_handlers):
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def worker():
        time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=worker)
    fut = loop.create_future()
    guard = loop.call_later(WATCHDOG, fut.set_result, "watchdog")

    async def main():
        t.start()
        return await fut

    task = loop.create_task(main())
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(task)
    finally:
        t.join()
        guard.cancel()
    assert not fut.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)
