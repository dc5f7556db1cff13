"""Reaping a loop's child processes, without asyncio's child watchers.

Each ferroloop loop reaps the children it starts itself, as uvloop does and
as asyncio itself does from Python 3.14: a pidfd (Linux 5.3+) per child,
watched by the loop's native poller, is readable once the child has exited;
then ``waitpid`` collects its status at once.  Where pidfds are missing, a
thread per child blocks in ``waitpid`` (asyncio's ThreadedChildWatcher
way).  Either works from any thread and leaves no zombie behind: children
still running when the loop closes are handed to reaper threads.

The child watchers of asyncio's policy (deprecated in 3.12, gone in 3.14)
are not consulted; see the README's differences from asyncio.
"""
import os
import threading

from asyncio.log import logger

__all__ = ('ChildReaper', 'can_use_pidfd')


def can_use_pidfd():
    """Whether this kernel (and seccomp policy) supports pidfds."""
    if not hasattr(os, 'pidfd_open'):
        return False
    try:
        pidfd = os.pidfd_open(os.getpid())
    except OSError:
        return False
    os.close(pidfd)
    return True


def _collect(pid, already_read_message):
    """waitpid(pid) and turn the status into asyncio's returncode."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        # Someone else (a waitpid(-1) in the program) took the status.
        logger.warning(already_read_message, pid)
        return 255
    return os.waitstatus_to_exitcode(status)


def _reap_in_thread(pid, deliver, loop):
    """Block in waitpid(pid) on a daemon thread; deliver the returncode to
    the loop (if it is still open)."""
    def run():
        returncode = _collect(pid, "Unknown child process pid %d, "
                                   "will report returncode 255")
        if deliver is None:
            return
        try:
            loop.call_soon_threadsafe(deliver, returncode)
        except RuntimeError:
            if loop.get_debug():
                logger.warning("Loop %r that handles pid %r is closed",
                               loop, pid)

    threading.Thread(target=run, name=f"ferroloop-waitpid-{pid}",
                     daemon=True).start()


class ChildReaper:
    """The children one loop started, and how each will be reaped."""

    # Class-wide probe; a loop's instance may be switched off for tests.
    use_pidfd = can_use_pidfd()

    def __init__(self, loop):
        self._loop = loop
        self._pidfds = {}  # pid -> pidfd watched by the loop

    def watch(self, pid, callback):
        """Call ``callback(returncode)`` on the loop once ``pid`` exits."""
        if self._loop is None:
            raise RuntimeError('Event loop is closed')
        if self.use_pidfd:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                # Out of fds, no pidfds after all, or the child was already
                # reaped by someone else: the thread reports what it can.
                pass
            else:
                self._pidfds[pid] = pidfd
                self._loop._add_reader(pidfd, self._exited, pid, pidfd, callback)
                return
        _reap_in_thread(pid, callback, self._loop)

    def _exited(self, pid, pidfd, callback):
        self._loop._remove_reader(pidfd)
        os.close(pidfd)
        del self._pidfds[pid]
        returncode = _collect(pid, "child process pid %d exit status already read: "
                                   " will report returncode 255")
        # Delivered one iteration later, as asyncio's watchers deliver it
        # (call_soon_threadsafe), which keeps process_exited's place among
        # the pipes' callbacks.
        self._loop.call_soon(callback, returncode)

    def close(self):
        """The loop is closing: stop watching; children still running are
        reaped by threads so that none stays a zombie."""
        pidfds, self._pidfds = self._pidfds, {}
        for pid, pidfd in pidfds.items():
            self._loop._remove_reader(pidfd)
            os.close(pidfd)
            _reap_in_thread(pid, None, self._loop)
        # The loop holds its reaper: let go of the loop, so that a closed
        # loop is freed by reference counting as asyncio's is, not left to
        # the cyclic collector.
        self._loop = None
