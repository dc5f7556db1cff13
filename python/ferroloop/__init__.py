"""ferroloop: a drop-in asyncio event loop with a native (Rust) core.

Three ways to use it::

    ferroloop.run(main())
    asyncio.run(main(), loop_factory=ferroloop.new_event_loop)   # 3.12+
    asyncio.set_event_loop_policy(ferroloop.EventLoopPolicy())
"""
import asyncio as _asyncio

from . import _registry
from ._ferroloop import Future, Handle, Task, TimerHandle, __version__
from ._loop import Loop

del _registry  # imported for its effect: asyncio.all_tasks() sees native tasks

__all__ = ('Loop', 'Future', 'Task', 'Handle', 'TimerHandle', 'new_event_loop',
           'EventLoopPolicy', 'run', 'install', '__version__')


def new_event_loop(*, native_futures=True, native_tls=True):
    """Return a new ferroloop event loop.

    Its create_future() and create_task() make ferroloop's native Future and
    Task; pass native_futures=False for asyncio's own classes (for code that
    needs isinstance(x, asyncio.Future) or subclasses asyncio.Task).
    Its TLS connections run ferroloop's native SSLProtocol; native_tls=False
    uses asyncio's own (asyncio.sslproto).
    """
    return Loop(native_futures=native_futures, native_tls=native_tls)


class EventLoopPolicy(_asyncio.DefaultEventLoopPolicy):
    """An event loop policy whose loops are ferroloop loops.

    Child watchers (Python 3.11/3.12) come from asyncio's default policy.
    native_futures=False makes its loops use asyncio's own Future and Task,
    native_tls=False asyncio's own TLS layer.
    """

    def __init__(self, *, native_futures=True, native_tls=True):
        super().__init__()
        self._native_futures = native_futures
        self._native_tls = native_tls

    def _loop_factory(self):
        # asyncio's new_event_loop() returns self._loop_factory().
        return Loop(native_futures=self._native_futures, native_tls=self._native_tls)


def install():
    """Make ferroloop the default event loop (sets the event loop policy)."""
    _asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main, *, debug=None, native_futures=True, native_tls=True):
    """Run a coroutine on a new ferroloop loop and close it, like
    asyncio.run(): cancels leftover tasks, shuts down async generators and
    the default executor.  Works on Python 3.11 too."""
    if _asyncio.events._get_running_loop() is not None:
        raise RuntimeError(
            "asyncio.run() cannot be called from a running event loop")

    def loop_factory():
        return Loop(native_futures=native_futures, native_tls=native_tls)

    with _asyncio.Runner(debug=debug, loop_factory=loop_factory) as runner:
        return runner.run(main)
