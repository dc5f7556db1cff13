"""Shared fixtures.

Every test runs on ferroloop by default.  Set FERROLOOP_TEST_TARGET=asyncio to run
the same tests on stock asyncio: that is how we check that a test asserts
asyncio's real behaviour rather than ferroloop's.
"""
import asyncio
import os
import socket

import pytest

TARGET = os.environ.get("FERROLOOP_TEST_TARGET", "ferroloop")


def has_ipv6_loopback():
    """Whether this machine can bind ::1 (some containers have no IPv6)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(('::1', 0))
        return True
    except OSError:
        return False


try:
    from test.test_asyncio import utils as _aio_test_utils
    _SIGNED_CERTFILE = _aio_test_utils.SIGNED_CERTFILE  # a certificate for 'localhost'
    _SIGNING_CA = _aio_test_utils.SIGNING_CA
except (ImportError, AttributeError):  # pragma: no cover - Python without its test package
    _SIGNED_CERTFILE = _SIGNING_CA = None

needs_certs = pytest.mark.skipif(_SIGNED_CERTFILE is None or not os.path.exists(_SIGNED_CERTFILE),
                                 reason="CPython's test certificates are not installed")


def tls_contexts():
    """(server, client) SSL contexts: CPython's test certificate for
    'localhost', and a client that verifies it."""
    import ssl

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(_SIGNED_CERTFILE)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(_SIGNING_CA)
    return server, client


def new_loop():
    """A fresh event loop of the kind under test."""
    if TARGET == "asyncio":
        return asyncio.new_event_loop()
    import ferroloop

    return ferroloop.new_event_loop()


def open_fds():
    """How many file descriptors this process has open."""
    return len(os.listdir('/proc/self/fd'))


def on_ferroloop():
    return TARGET != "asyncio"


def _classes(name):
    classes = [getattr(asyncio, name)]
    if on_ferroloop():
        import ferroloop

        classes.append(getattr(ferroloop, name))
    return tuple(classes)


# What create_future()/create_task() return on the loop under test: asyncio's
# classes, plus ferroloop's native ones (which cannot subclass asyncio's C
# classes, see the README).
FUTURE_CLASSES = _classes("Future")
TASK_CLASSES = _classes("Task")


# Seconds after which a loop that should have stopped is stopped by force.
WATCHDOG = 10.0


def run_until_stopped(loop, seconds=WATCHDOG):
    """run_forever() guarded by a timer that stops the loop if nothing else
    does, so a broken loop fails the test instead of hanging it."""
    fired = []

    def watchdog():
        fired.append(True)
        loop.stop()

    guard = loop.call_later(seconds, watchdog)
    try:
        loop.run_forever()
    finally:
        guard.cancel()
    assert not fired, f"watchdog fired after {seconds}s: the loop never stopped"


class Recorder(asyncio.Protocol):
    """Records every callback, in order."""

    def __init__(self, loop, eof_keep_open=False):
        self.loop = loop
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.eof_keep_open = eof_keep_open
        self.lost = loop.create_future()
        self.got_eof = loop.create_future()

    def connection_made(self, transport):
        self.events.append('made')
        self.transport = transport

    def data_received(self, data):
        assert type(data) is bytes
        if not self.events or self.events[-1] != 'data':
            self.events.append('data')
        self.data += data

    def eof_received(self):
        self.events.append('eof')
        self.got_eof.set_result(None)
        return self.eof_keep_open

    def pause_writing(self):
        self.events.append('pause')

    def resume_writing(self):
        self.events.append('resume')

    def connection_lost(self, exc):
        self.events.append(('lost', type(exc).__name__ if exc else None))
        self.lost.set_result(exc)


@pytest.fixture
def sockpair():
    """Two connected non-blocking Unix stream sockets."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def loop():
    lp = new_loop()
    asyncio.set_event_loop(lp)
    try:
        yield lp
    finally:
        if lp.is_running():
            lp.stop()
        if not lp.is_closed():
            lp.close()
        asyncio.set_event_loop(None)


@pytest.fixture
def loop_factory():
    return new_loop
