"""ferroloop: a drop-in asyncio event loop with a native (Rust) core.

Three ways to use it::

    ferroloop.run(main())
    asyncio.run(main(), loop_factory=ferroloop.new_event_loop)   # 3.12+
    asyncio.set_event_loop_policy(ferroloop.EventLoopPolicy())
"""
import asyncio as _asyncio

from ._ferroloop import Handle, TimerHandle, __version__
from ._loop import Loop

__all__ = ('Loop', 'Handle', 'TimerHandle', 'new_event_loop', 'EventLoopPolicy',
           'run', 'install', '__version__')


def new_event_loop():
    """Return a new ferroloop event loop."""
    return Loop()


class EventLoopPolicy(_asyncio.DefaultEventLoopPolicy):
    """An event loop policy whose loops are ferroloop loops.

    Child watchers (Python 3.11/3.12) come from asyncio's default policy.
    """

    def _loop_factory(self):
        return Loop()

    def new_event_loop(self):
        return Loop()


def install():
    """Make ferroloop the default event loop (sets the event loop policy)."""
    _asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main, *, debug=None):
    """Run a coroutine on a new ferroloop loop and close it, like
    asyncio.run(): cancels leftover tasks, shuts down async generators and
    the default executor.  Works on Python 3.11 too."""
    if _asyncio.events._get_running_loop() is not None:
        raise RuntimeError(
            "asyncio.run() cannot be called from a running event loop")
    with _asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
