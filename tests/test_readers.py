"""add_reader / remove_reader / add_writer / remove_writer.

asyncio's reader and writer callbacks are level-triggered: a callback is
called on every iteration while its fd stays ready.  ferroloop sits on mio
(edge-triggered), so these tests pin the level-triggered behaviour down.
"""
import errno
import os
import socket

import sys

import pytest

from conftest import new_loop, run_until_stopped


@pytest.fixture
def pipe():
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


class FileLike:
    """Anything with a fileno() method is accepted as an fd."""

    def __init__(self, fd):
        self._fd = fd

    def fileno(self):
        return self._fd


# ---------------------------------------------------------------- readers


def test_reader_called_with_args_when_data_arrives(loop, sockpair):
    a, b = sockpair
    got = []

    def on_readable(sock, tag):
        got.append((tag, sock.recv(100)))
        loop.stop()

    loop.add_reader(a.fileno(), on_readable, a, "tag")
    loop.call_soon(b.send, b"hello")
    try:
        run_until_stopped(loop)
    finally:
        assert loop.remove_reader(a.fileno()) is True
    assert got == [("tag", b"hello")]


def test_reader_accepts_socket_object(loop, sockpair):
    a, b = sockpair
    got = []

    def on_readable():
        got.append(a.recv(100))
        loop.stop()

    loop.add_reader(a, on_readable)
    b.send(b"x")
    try:
        run_until_stopped(loop)
    finally:
        # registered by object, removed by fd number: same fd
        assert loop.remove_reader(a.fileno()) is True
    assert got == [b"x"]


def test_reader_accepts_object_with_fileno(loop, pipe):
    r, w = pipe
    got = []

    def on_readable():
        got.append(os.read(r, 100))
        loop.stop()

    fobj = FileLike(r)
    loop.add_reader(fobj, on_readable)
    os.write(w, b"data")
    try:
        run_until_stopped(loop)
    finally:
        assert loop.remove_reader(fobj) is True
    assert got == [b"data"]


def test_reader_on_raw_pipe_fd(loop, pipe):
    r, w = pipe
    got = []

    def on_readable():
        got.append(os.read(r, 100))
        if b"".join(got) == b"abc":
            loop.stop()

    loop.add_reader(r, on_readable)
    loop.call_soon(os.write, w, b"a")
    loop.call_later(0.01, os.write, w, b"b")
    loop.call_later(0.02, os.write, w, b"c")
    try:
        run_until_stopped(loop)
    finally:
        loop.remove_reader(r)
    assert b"".join(got) == b"abc"


def test_reader_for_data_already_buffered_before_add_reader(loop, sockpair):
    a, b = sockpair
    b.send(b"early")
    got = []

    def on_readable():
        got.append(a.recv(100))
        loop.stop()

    loop.add_reader(a.fileno(), on_readable)
    try:
        run_until_stopped(loop)
    finally:
        loop.remove_reader(a.fileno())
    assert got == [b"early"]


def test_reader_is_level_triggered(loop, sockpair):
    # The callback reads nothing the first times: asyncio calls it again on
    # every iteration while data is pending.  An edge-triggered loop would
    # call it once and then hang (the watchdog catches that).
    a, b = sockpair
    calls = [0]

    def on_readable():
        calls[0] += 1
        if calls[0] == 5:
            assert a.recv(100) == b"z"
            loop.remove_reader(a.fileno())
            loop.stop()

    loop.add_reader(a.fileno(), on_readable)
    b.send(b"z")
    run_until_stopped(loop)
    assert calls[0] == 5


def test_reader_reading_one_byte_per_call(loop, sockpair):
    a, b = sockpair
    got = []
    extra = []

    def on_readable():
        try:
            got.append(a.recv(1))
        except BlockingIOError:
            extra.append("spurious")
            return
        if len(got) == 10:
            loop.call_later(0.05, loop.stop)

    loop.add_reader(a.fileno(), on_readable)
    b.send(b"0123456789")
    try:
        run_until_stopped(loop)
    finally:
        loop.remove_reader(a.fileno())
    assert b"".join(got) == b"0123456789"
    assert extra == []


def test_reader_called_once_per_iteration(loop, sockpair):
    a, b = sockpair
    calls = []
    b.send(b"x")
    loop.add_reader(a.fileno(), lambda: calls.append(1))
    try:
        loop.stop()
        loop.run_forever()
        assert len(calls) <= 1
        loop.stop()
        loop.run_forever()
        loop.stop()
        loop.run_forever()
    finally:
        loop.remove_reader(a.fileno())
    # data still unread: it must have been reported again
    assert 2 <= len(calls) <= 3


def test_remove_reader_stops_callbacks(loop, sockpair):
    a, b = sockpair
    calls = []

    def on_readable():
        calls.append(a.recv(100))
        assert loop.remove_reader(a.fileno()) is True
        b.send(b"second")  # must not be reported any more
        loop.call_later(0.05, loop.stop)

    loop.add_reader(a.fileno(), on_readable)
    b.send(b"first")
    run_until_stopped(loop)
    assert calls == [b"first"]
    assert a.recv(100) == b"second"


def test_reader_removed_then_added_again_sees_data_that_arrived_meanwhile(loop, sockpair):
    # ferroloop keeps a removed fd registered for a moment (so that a
    # sock_recv loop re-adding its reader costs less); data that arrives in
    # between must still be reported once a reader is back, in any later
    # iteration.
    a, b = sockpair
    calls = []

    def first():
        calls.append(('first', a.recv(100)))
        loop.remove_reader(a.fileno())
        b.send(b"meanwhile")
        loop.call_soon(lambda: loop.call_soon(lambda: loop.call_later(0.02, add_again)))

    def add_again():
        loop.add_reader(a.fileno(), second)

    def second():
        calls.append(('second', a.recv(100)))
        loop.remove_reader(a.fileno())
        loop.stop()

    loop.add_reader(a.fileno(), first)
    b.send(b"one")
    run_until_stopped(loop)
    assert calls == [('first', b"one"), ('second', b"meanwhile")]


def test_fd_number_reused_after_remove_and_close(loop):
    # A reader removed, its socket closed, and a new socket (which gets the
    # same fd number) watched in the same iteration: only the new socket's
    # data is reported.
    a, b = socket.socketpair()
    a.setblocking(False)
    got = []

    def old_reader():
        a.recv(100)
        loop.remove_reader(a.fileno())
        fd = a.fileno()
        a.close()
        b.close()
        c, d = socket.socketpair()
        c.setblocking(False)
        keep.extend([c, d])
        assert fd in (c.fileno(), d.fileno())
        loop.add_reader(c.fileno(), new_reader, c)
        d.send(b"new")

    def new_reader(c):
        got.append(c.recv(100))
        loop.remove_reader(c.fileno())
        loop.stop()

    keep = []
    loop.add_reader(a.fileno(), old_reader)
    b.send(b"old")
    try:
        run_until_stopped(loop)
    finally:
        for s in keep:
            s.close()
    assert got == [b"new"]


def test_remove_reader_return_values(loop, sockpair):
    a, _ = sockpair
    assert loop.remove_reader(a.fileno()) is False
    loop.add_reader(a.fileno(), lambda: None)
    assert loop.remove_reader(a.fileno()) is True
    assert loop.remove_reader(a.fileno()) is False


def test_remove_reader_keeps_the_writer(loop, sockpair):
    a, _ = sockpair
    loop.add_reader(a.fileno(), lambda: None)
    loop.add_writer(a.fileno(), lambda: None)
    assert loop.remove_reader(a.fileno()) is True
    assert loop.remove_reader(a.fileno()) is False
    assert loop.remove_writer(a.fileno()) is True
    assert loop.remove_writer(a.fileno()) is False


def test_adding_a_reader_again_replaces_the_callback(loop, sockpair):
    a, b = sockpair
    seen = []

    def old():
        seen.append("old")
        a.recv(100)

    def new():
        seen.append("new")
        a.recv(100)
        loop.stop()

    loop.add_reader(a.fileno(), old)
    loop.add_reader(a.fileno(), new)
    b.send(b"x")
    try:
        run_until_stopped(loop)
    finally:
        assert loop.remove_reader(a.fileno()) is True
    assert seen == ["new"]


def test_reader_exception_goes_to_handler_and_loop_keeps_running(loop, sockpair):
    a, b = sockpair
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

    def bad_reader():
        a.recv(100)
        loop.remove_reader(a.fileno())
        loop.call_soon(loop.stop)
        raise ZeroDivisionError("reader failed")

    loop.add_reader(a.fileno(), bad_reader)
    b.send(b"x")
    run_until_stopped(loop)
    assert len(errors) == 1
    assert isinstance(errors[0]["exception"], ZeroDivisionError)
    assert errors[0]["message"].startswith("Exception in callback")


def test_reader_sees_eof(loop, sockpair):
    a, b = sockpair
    got = []

    def on_readable():
        data = a.recv(100)
        got.append(data)
        if not data:
            loop.remove_reader(a.fileno())
            loop.stop()

    loop.add_reader(a.fileno(), on_readable)
    b.send(b"last")
    loop.call_later(0.01, b.close)
    run_until_stopped(loop)
    assert got == [b"last", b""]


def test_reader_on_many_sockets(loop):
    pairs = [socket.socketpair() for _ in range(50)]
    got = {}
    try:
        for i, (a, b) in enumerate(pairs):
            a.setblocking(False)

            def on_readable(i=i, a=a):
                got[i] = a.recv(100)
                loop.remove_reader(a.fileno())
                if len(got) == len(pairs):
                    loop.stop()

            loop.add_reader(a.fileno(), on_readable)
        for i, (_, b) in enumerate(reversed(pairs)):
            b.send(str(len(pairs) - 1 - i).encode())
        run_until_stopped(loop)
    finally:
        for a, b in pairs:
            a.close()
            b.close()
    assert got == {i: str(i).encode() for i in range(len(pairs))}


# ---------------------------------------------------------------- writers


def test_writer_called_repeatedly_while_writable(loop, sockpair):
    a, _ = sockpair
    calls = []

    def on_writable(tag):
        calls.append(tag)
        if len(calls) == 5:
            assert loop.remove_writer(a.fileno()) is True
            loop.stop()

    loop.add_writer(a.fileno(), on_writable, "w")
    run_until_stopped(loop)
    assert calls == ["w"] * 5


def test_writer_on_pipe(loop, pipe):
    r, w = pipe
    calls = []

    def on_writable():
        calls.append(os.write(w, b"ping"))
        loop.remove_writer(w)
        loop.stop()

    loop.add_writer(w, on_writable)
    run_until_stopped(loop)
    assert calls == [4]
    assert os.read(r, 100) == b"ping"


def test_writer_waits_until_buffer_drains(loop, sockpair):
    a, b = sockpair
    # Fill a's send buffer until the kernel refuses more.
    chunk = b"x" * 65536
    sent = 0
    while True:
        try:
            sent += a.send(chunk)
        except BlockingIOError:
            break
    events = []

    def on_writable():
        events.append("writable")
        loop.remove_writer(a.fileno())
        loop.stop()

    received = [0]

    def drain():
        events.append("drain")
        while True:
            try:
                data = b.recv(1 << 20)
            except BlockingIOError:
                break
            received[0] += len(data)

    loop.add_writer(a.fileno(), on_writable)
    loop.call_later(0.05, drain)
    try:
        run_until_stopped(loop)
    finally:
        loop.remove_writer(a.fileno())
    assert events[0] == "drain", events
    assert events[-1] == "writable"


def test_writer_replaced_by_second_add_writer(loop, sockpair):
    a, _ = sockpair
    seen = []

    def old():
        seen.append("old")

    def new():
        seen.append("new")
        loop.stop()

    loop.add_writer(a.fileno(), old)
    loop.add_writer(FileLike(a.fileno()), new)
    try:
        run_until_stopped(loop)
    finally:
        assert loop.remove_writer(a) is True
    assert seen == ["new"]


def test_reader_and_writer_on_same_fd(loop, sockpair):
    a, b = sockpair
    seen = set()

    def on_readable():
        a.recv(100)
        seen.add("read")
        loop.remove_reader(a.fileno())
        if seen == {"read", "write"}:
            loop.stop()

    def on_writable():
        seen.add("write")
        loop.remove_writer(a.fileno())
        if seen == {"read", "write"}:
            loop.stop()

    loop.add_reader(a.fileno(), on_readable)
    loop.add_writer(a.fileno(), on_writable)
    b.send(b"x")
    run_until_stopped(loop)
    assert seen == {"read", "write"}


def test_remove_writer_return_values(loop, pipe):
    _, w = pipe
    assert loop.remove_writer(w) is False
    loop.add_writer(w, lambda: None)
    assert loop.remove_writer(w) is True
    assert loop.remove_writer(w) is False


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("meth", ["add_reader", "add_writer"])
@pytest.mark.parametrize("bad", ["not a file", object(), 1.5, None])
def test_invalid_file_object_raises_value_error(loop, meth, bad):
    with pytest.raises(ValueError, match="Invalid file object"):
        getattr(loop, meth)(bad, lambda: None)


@pytest.mark.parametrize("meth", ["remove_reader", "remove_writer"])
def test_remove_with_invalid_file_object_raises_value_error(loop, meth):
    with pytest.raises(ValueError, match="Invalid file object"):
        getattr(loop, meth)("not a file")


@pytest.mark.parametrize("meth", ["add_reader", "add_writer"])
def test_negative_fd_raises_value_error(loop, meth):
    with pytest.raises(ValueError):
        getattr(loop, meth)(-1, lambda: None)


def test_fileno_raising_value_error_is_invalid(loop):
    class Closed:
        def fileno(self):
            raise ValueError("I/O operation on closed file")

    with pytest.raises(ValueError, match="Invalid file object"):
        loop.add_reader(Closed(), lambda: None)


@pytest.mark.parametrize("meth", ["add_reader", "add_writer"])
def test_add_on_closed_loop_raises(meth, sockpair):
    a, _ = sockpair
    lp = new_loop()
    lp.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        getattr(lp, meth)(a.fileno(), lambda: None)


@pytest.mark.parametrize("meth", ["remove_reader", "remove_writer"])
def test_remove_on_closed_loop_returns_false(meth, sockpair):
    a, _ = sockpair
    lp = new_loop()
    getattr(lp, meth.replace("remove", "add"))(a.fileno(), lambda: None)
    lp.close()
    assert getattr(lp, meth)(a.fileno()) is False


def test_close_unregisters_readers_and_writers(sockpair):
    a, b = sockpair
    lp = new_loop()
    lp.add_reader(a.fileno(), lambda: None)
    lp.add_writer(b.fileno(), lambda: None)
    lp.close()
    # The fds stay open and usable after the loop is gone.
    b.send(b"still works")
    assert a.recv(100) == b"still works"


@pytest.mark.parametrize("which", ["reader", "writer"])
def test_remove_after_the_socket_was_closed(loop, which):
    # A socket closed while watched has no fileno any more (-1): it is found
    # by identity, as selectors does (anyio closes streams this way).
    add = getattr(loop, f"add_{which}")
    remove = getattr(loop, f"remove_{which}")
    a, b = socket.socketpair()
    try:
        add(a, lambda: None)
        fd = a.fileno()
        a.close()
        assert remove(a) is True
        assert fd not in loop._selector.get_map()
        # Once removed, it is an unknown closed socket: an error, as a
        # closed socket never registered is.
        with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
            remove(a)
    finally:
        a.close()
        b.close()


def test_fd_beyond_c_int_is_an_overflow(loop):
    # selectors hands the fd to epoll, which takes a C int: OverflowError.
    with pytest.raises(OverflowError):
        loop.add_reader(2 ** 40, lambda: None)
    with pytest.raises(OverflowError, match="C int"):
        loop.add_writer(2 ** 31, lambda: None)
    with pytest.raises(OverflowError, match="C int"):
        loop.add_reader(2 ** 100, lambda: None)
    with pytest.raises(ValueError, match="Invalid file descriptor"):
        loop.add_reader(-2 ** 100, lambda: None)


@pytest.mark.skipif(sys.version_info < (3, 13), reason="3.13's epoll.register() warns about bools")
def test_bool_as_a_file_descriptor_warns(loop):
    with pytest.warns(RuntimeWarning, match="bool is used as a file descriptor"):
        try:
            loop.add_reader(True, lambda: None)  # fd 1
        except OSError:
            pass  # fd 1 may be a file epoll refuses (pytest's capture)
        else:
            loop.remove_reader(1)


def test_removing_an_fd_beyond_c_int_finds_nothing(loop):
    # No such fd can have been registered: asyncio's selector finds no key.
    class Big:
        def fileno(self):
            return 2 ** 31

    for fd in (2 ** 31, 2 ** 100, Big()):
        assert loop.remove_reader(fd) is False
        assert loop.remove_writer(fd) is False


def test_add_reader_on_a_closed_fd_is_an_oserror_with_errno(loop):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as info:
        loop.add_reader(r, lambda: None)
    assert info.value.errno == errno.EBADF
    assert str(info.value) == '[Errno 9] Bad file descriptor'
