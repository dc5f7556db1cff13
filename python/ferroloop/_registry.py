"""Make asyncio.all_tasks() see ferroloop's native tasks.

asyncio lists tasks in a module-level ``weakref.WeakSet`` (3.11:
``asyncio.tasks._all_tasks``; 3.12+: ``_scheduled_tasks``) which its C Tasks
add themselves to and ``all_tasks()`` iterates.  Native tasks keep a cheaper
registry of their own (see src/registry.rs).  So that every reader of
asyncio's set -- ``all_tasks()``, ``asyncio.run()``'s cleanup, TaskGroup-free
code that walks tasks -- also sees native tasks, the set's class is switched
to this subclass, which iterates, counts and tests membership of both.  The
object stays the same (asyncio's C module holds it too), so asyncio's own
tasks are registered as before.
"""
import weakref
from asyncio import tasks as _tasks

from . import _ferroloop

__all__ = ()


class TaskRegistry(weakref.WeakSet):
    """asyncio's task WeakSet, plus ferroloop's pending native tasks."""

    def __iter__(self):
        yield from weakref.WeakSet.__iter__(self)
        yield from _ferroloop._native_tasks()

    def __len__(self):
        return weakref.WeakSet.__len__(self) + _ferroloop._native_task_count()

    def __contains__(self, item):
        return (weakref.WeakSet.__contains__(self, item)
                or _ferroloop._is_registered(item))


def _install():
    name = '_scheduled_tasks' if hasattr(_tasks, '_scheduled_tasks') else '_all_tasks'
    registry = getattr(_tasks, name, None)
    if type(registry) is weakref.WeakSet:
        registry.__class__ = TaskRegistry


_install()
