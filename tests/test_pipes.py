"""Pipe transports (loop.connect_read_pipe / connect_write_pipe): the
behaviour of asyncio's `_UnixReadPipeTransport` and
`_UnixWritePipeTransport`, which ferroloop's native pipe transports replace.

Every test also passes on stock asyncio (FERROLOOP_TEST_TARGET=asyncio).
"""
import asyncio
import errno
import gc
import os
import socket
import tempfile
import threading
import warnings

import pytest

from conftest import Recorder, on_ferroloop, open_fds


def run(loop, coro, timeout=20):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def PipeRecorder(loop):
    """Records every callback; eof_received() answers True, which pipes
    ignore (they close at EOF anyway)."""
    return Recorder(loop, eof_keep_open=True)


def pattern(n):
    """n bytes of a recognisable, position-dependent pattern."""
    block = bytes(range(251)) * 4200  # ~1 MiB, period 251
    out = bytearray()
    while len(out) < n:
        out += block
    return bytes(out[:n])


def slow_reader(fd, sink, delay_every=1 << 20):
    """Read `fd` to EOF on a thread (blocking), into `sink`."""
    def run_reader():
        with open(fd, 'rb', buffering=0) as f:
            while True:
                chunk = f.read(65536)
                if not chunk:
                    return
                sink.extend(chunk)
    t = threading.Thread(target=run_reader, daemon=True)
    t.start()
    return t


async def close_and_collect(loop, tr, proto, rfd):
    """Close write pipe `tr` while a thread reads `rfd` to EOF; return what
    the thread read once connection_lost has run."""
    sink = bytearray()
    t = slow_reader(rfd, sink)
    tr.close()
    await proto.lost
    await loop.run_in_executor(None, t.join)
    return sink


# -- read pipes --------------------------------------------------------------

def test_read_pipe_delivers_everything_then_eof_then_lost(loop):
    before = open_fds()
    rfd, wfd = os.pipe()
    payload = pattern(8 * 1024 * 1024)

    def writer():
        with open(wfd, 'wb', buffering=0) as f:
            f.write(payload)

    async def main():
        proto = PipeRecorder(loop)
        pipe = open(rfd, 'rb', buffering=0)
        tr, p = await loop.connect_read_pipe(lambda: proto, pipe)
        assert p is proto and proto.events == ['made']
        assert isinstance(tr, asyncio.ReadTransport)
        assert tr.get_extra_info('pipe') is pipe
        assert tr.is_reading() and not tr.is_closing()
        t = threading.Thread(target=writer)
        t.start()
        assert await proto.lost is None
        t.join()
        assert proto.events == ['made', 'data', 'eof', ('lost', None)]
        assert bytes(proto.data) == payload
        assert tr.is_closing()
        assert pipe.closed  # connection_lost closes the pipe object
        return tr

    run(loop, main())
    assert open_fds() == before


def test_read_pipe_api_surface(loop):
    rfd, wfd = os.pipe()

    async def main():
        tr, proto = await loop.connect_read_pipe(lambda: PipeRecorder(loop), open(rfd, 'rb', 0))
        for name in ('write', 'writelines', 'write_eof', 'can_write_eof', 'abort',
                     'get_write_buffer_size', 'set_write_buffer_limits'):
            assert not hasattr(tr, name), name
        assert not isinstance(tr, asyncio.WriteTransport)
        assert 'fd=%d' % rfd in repr(tr)
        new = PipeRecorder(loop)
        tr.set_protocol(new)
        assert tr.get_protocol() is new
        tr.set_protocol(proto)
        tr.close()
        assert tr.is_closing()
        tr.close()  # a second close() does nothing
        await proto.lost
        assert proto.events == ['made', ('lost', None)]
        assert 'closed' in repr(tr)
        os.close(wfd)

    run(loop, main())


def test_read_pipe_pause_and_resume(loop):
    rfd, wfd = os.pipe()

    async def main():
        tr, proto = await loop.connect_read_pipe(lambda: PipeRecorder(loop), open(rfd, 'rb', 0))
        tr.pause_reading()
        assert not tr.is_reading()
        tr.pause_reading()  # idempotent
        os.write(wfd, b'while paused')
        for _ in range(5):
            await asyncio.sleep(0.01)
        assert proto.data == b''
        tr.resume_reading()
        assert tr.is_reading()
        while len(proto.data) < 12:
            await asyncio.sleep(0.005)
        assert proto.data == b'while paused'
        os.close(wfd)
        await proto.lost
        assert not tr.is_reading()
        tr.resume_reading()  # closed: stays off
        assert not tr.is_reading()

    run(loop, main())


def test_read_pipe_lets_deferred_callbacks_run_between_reads(loop):
    # A subprocess's pipes pass their data on through call_soon (asyncio's
    # base_subprocess), so the StreamReader that pauses a pipe runs a step
    # after the read.  asyncio reads a pipe once per readiness report, and
    # the callbacks a read queued run before the next read: a deferred pause
    # holds.  (ferroloop used to read up to 16 times 256 KiB in one go, and
    # buffered megabytes past the pause.)
    rfd, wfd = os.pipe()
    total = 16 << 20
    data = pattern(total)

    def write_all():
        with open(wfd, 'wb', buffering=0) as f:
            view = memoryview(data)
            while view:
                view = view[f.write(view[:1 << 20]):]

    class Deferred(asyncio.Protocol):
        def __init__(self):
            self.chunks = []
            self.unprocessed = 0
            self.most_unprocessed = 0
            self.lost = loop.create_future()

        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, chunk):
            self.unprocessed += 1
            self.most_unprocessed = max(self.most_unprocessed, self.unprocessed)
            loop.call_soon(self.process, chunk)

        def process(self, chunk):
            self.unprocessed -= 1
            self.chunks.append(chunk)
            # Pause, as a StreamReader over its limit does; go on later.
            self.transport.pause_reading()
            loop.call_later(0.0005, self.transport.resume_reading)

        def eof_received(self):
            pass

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        tr, proto = await loop.connect_read_pipe(Deferred, open(rfd, 'rb', 0))
        writer = threading.Thread(target=write_all, daemon=True)
        writer.start()
        assert await proto.lost is None
        writer.join()
        return proto

    proto = run(loop, main(), timeout=60)
    assert b''.join(proto.chunks) == data
    assert proto.most_unprocessed == 1


def test_read_pipe_protocol_error_is_reported_and_reading_goes_on(loop):
    rfd, wfd = os.pipe()
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

    class Failing(Recorder):
        def data_received(self, data):
            super().data_received(data)
            if len(errors) == 0 and b'boom' in data:
                raise ZeroDivisionError('in data_received')

    async def main():
        tr, proto = await loop.connect_read_pipe(lambda: Failing(loop), open(rfd, 'rb', 0))
        os.write(wfd, b'boom')
        while not errors:
            await asyncio.sleep(0.005)
        assert isinstance(errors[0]['exception'], ZeroDivisionError)
        assert not tr.is_closing()
        os.write(wfd, b'-more')
        os.close(wfd)
        await proto.lost
        assert proto.data == b'boom-more'
        assert proto.events == ['made', 'data', 'eof', ('lost', None)]

    run(loop, main())


def test_pipe_transports_reject_regular_files(loop):
    with tempfile.TemporaryFile() as f:
        with pytest.raises(ValueError, match='Pipe transport is for pipes/sockets only'):
            run(loop, loop.connect_read_pipe(lambda: PipeRecorder(loop), f))
        with pytest.raises(ValueError, match='only for pipes, sockets and character devices'):
            run(loop, loop.connect_write_pipe(lambda: PipeRecorder(loop), f))


def test_read_pty_eio_closes_quietly(loop):
    master, slave = os.openpty()
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

    async def main():
        tr, proto = await loop.connect_read_pipe(lambda: PipeRecorder(loop), open(master, 'rb', 0))
        os.write(slave, b'hello pty\n')
        while b'hello' not in proto.data:
            await asyncio.sleep(0.005)
        os.close(slave)  # the master then reads EIO
        exc = await proto.lost
        assert isinstance(exc, OSError) and exc.errno == errno.EIO
        assert errors == []

    run(loop, main())


def test_socket_as_read_and_write_pipe(loop):
    a, b = socket.socketpair()
    c, d = socket.socketpair()

    async def main():
        rtr, rproto = await loop.connect_read_pipe(lambda: PipeRecorder(loop), a)
        wtr, wproto = await loop.connect_write_pipe(lambda: PipeRecorder(loop), c)
        b.sendall(b'from b')
        wtr.write(b'to d')
        while rproto.data != b'from b':
            await asyncio.sleep(0.005)
        assert d.recv(100) == b'to d'
        b.close()
        await rproto.lost
        wtr.close()
        assert await wproto.lost is None
        assert a.fileno() == -1 and c.fileno() == -1
        d.close()

    run(loop, main())


# -- write pipes -------------------------------------------------------------

def test_write_pipe_big_write_arrives_intact_with_flow_control(loop):
    rfd, wfd = os.pipe()
    sink = bytearray()
    payload = pattern(16 * 1024 * 1024)

    async def main():
        tr, proto = await loop.connect_write_pipe(lambda: PipeRecorder(loop), open(wfd, 'wb', 0))
        assert isinstance(tr, asyncio.WriteTransport)
        assert tr.can_write_eof()
        assert tr.get_write_buffer_limits() == (16384, 65536)
        with pytest.raises(NotImplementedError):
            tr.pause_reading()  # asyncio's write pipe is a Transport
        tr.write(payload[:1])
        tr.write(bytearray(payload[1:10]))
        tr.write(memoryview(payload)[10:4 << 20])
        assert tr.get_write_buffer_size() > 0  # nobody reads yet
        assert proto.events[-1] == 'pause'
        tr.writelines([payload[4 << 20:8 << 20], payload[8 << 20:]])
        t = slow_reader(rfd, sink)
        tr.close()  # flushes first
        assert tr.is_closing()
        tr.write(b'dropped after close')  # counted, not sent, no error
        assert await proto.lost is None
        await loop.run_in_executor(None, t.join)
        assert proto.events == ['made', 'pause', 'resume', ('lost', None)]

    run(loop, main())
    assert bytes(sink) == payload


def test_write_pipe_first_burst_pauses_as_asyncio_does(loop):
    # Writes made without returning to the loop fill the pipe's default
    # 64 KiB and then the transport's buffer: the protocol is paused before
    # 1 MiB is written, as with asyncio (uvloop's test_write_buffer_full).
    rfd, wfd = os.pipe()

    async def main():
        tr, proto = await loop.connect_write_pipe(lambda: PipeRecorder(loop), open(wfd, 'wb', 1024))
        written = 0
        while 'pause' not in proto.events and written < (1 << 20):
            tr.write(b'x' * 32768)
            written += 32768
        paused_at = written
        os.close(rfd)
        exc = await proto.lost
        return paused_at, exc

    paused_at, exc = run(loop, main())
    assert paused_at <= 256 * 1024
    assert isinstance(exc, BrokenPipeError)


def test_write_pipe_reader_gone_with_empty_buffer(loop):
    rfd, wfd = os.pipe()

    async def main():
        tr, proto = await loop.connect_write_pipe(lambda: PipeRecorder(loop), open(wfd, 'wb', 0))
        tr.write(b'small')
        os.close(rfd)
        assert await proto.lost is None
        assert tr.is_closing()

    run(loop, main())


def test_write_pipe_reader_gone_with_data_pending(loop):
    rfd, wfd = os.pipe()
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

    async def main():
        tr, proto = await loop.connect_write_pipe(lambda: PipeRecorder(loop), open(wfd, 'wb', 0))
        tr.write(b'x' * (4 << 20))  # more than the pipe holds (even grown)
        assert tr.get_write_buffer_size() > 0
        os.close(rfd)
        exc = await proto.lost
        assert isinstance(exc, BrokenPipeError)
        assert tr.get_write_buffer_size() == 0
        assert errors == []  # OSErrors on write pipes are not reported

    run(loop, main())


def test_write_pipe_abort_drops_buffer(loop):
    rfd, wfd = os.pipe()

    async def main():
        tr, proto = await loop.connect_write_pipe(lambda: PipeRecorder(loop), open(wfd, 'wb', 0))
        tr.write(b'y' * (4 << 20))
        tr.abort()
        assert tr.is_closing() and tr.get_write_buffer_size() == 0
        assert await proto.lost is None
        with open(rfd, 'rb', 0) as r:
            got = r.read()  # what the kernel took before the abort
        assert 0 < len(got) < 4 << 20

    run(loop, main())


def test_write_pipe_write_eof_and_bad_input(loop):
    rfd, wfd = os.pipe()

    async def main():
        tr, proto = await loop.connect_write_pipe(lambda: PipeRecorder(loop), open(wfd, 'wb', 0))
        with pytest.raises(AssertionError):
            tr.write('text is not bytes')
        tr.write(b'')
        import array
        tr.writelines([b'last ', array.array('b', b'wo'), memoryview(b'rds')])
        with pytest.raises(TypeError):
            tr.writelines(['text'])
        tr.write_eof()
        assert tr.is_closing()
        assert await proto.lost is None
        with open(rfd, 'rb', 0) as r:
            assert r.read() == b'last words'

    run(loop, main())


def test_write_pipe_to_dev_null(loop):
    async def main():
        with open(os.devnull, 'wb', 0) as devnull:
            tr, proto = await loop.connect_write_pipe(lambda: PipeRecorder(loop), devnull)
            tr.write(b'z' * (4 << 20))
            assert tr.get_write_buffer_size() == 0
            tr.close()
            assert await proto.lost is None

    run(loop, main())


def test_write_pipe_buffer_limits(loop):
    rfd, wfd = os.pipe()

    async def main():
        tr, proto = await loop.connect_write_pipe(lambda: PipeRecorder(loop), open(wfd, 'wb', 0))
        with pytest.raises(ValueError, match='high.*must be >= low'):
            tr.set_write_buffer_limits(high=1, low=2)
        tr.set_write_buffer_limits(high=200000, low=100)
        assert tr.get_write_buffer_limits() == (100, 200000)
        tr.write(b'a' * 150000)  # the pipe takes some or all of it
        assert tr.get_write_buffer_size() <= 200000
        assert 'pause' not in proto.events
        tr.write(b'b' * (3 << 20))  # over the high mark whatever the pipe took
        assert tr.get_write_buffer_size() > 200000
        assert proto.events[-1] == 'pause'
        sink = await close_and_collect(loop, tr, proto, rfd)
        assert len(sink) == 150000 + (3 << 20) and proto.events == ['made', 'pause', 'resume', ('lost', None)]

    run(loop, main())


def test_unclosed_pipe_transports_warn_and_close(loop):
    rfd, wfd = os.pipe()

    async def main():
        r = open(rfd, 'rb', 0)
        w = open(wfd, 'wb', 0)
        rtr, _ = await loop.connect_read_pipe(lambda: PipeRecorder(loop), r)
        wtr, _ = await loop.connect_write_pipe(lambda: PipeRecorder(loop), w)
        return r, w, rtr, wtr

    r, w, rtr, wtr = run(loop, main())
    loop.close()  # the loop no longer refers to them
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        gc.collect()  # what earlier tests left behind
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        del rtr, wtr
        gc.collect()
    unclosed = [str(c.message) for c in caught
                if issubclass(c.category, ResourceWarning) and 'unclosed transport' in str(c.message)]
    assert len(unclosed) == 2, [str(c.message) for c in caught]
    assert r.closed and w.closed


def test_pipe_cycles_leave_no_fd_open(loop):
    async def one():
        rfd, wfd = os.pipe()
        rtr, rp = await loop.connect_read_pipe(lambda: PipeRecorder(loop), open(rfd, 'rb', 0))
        wtr, wp = await loop.connect_write_pipe(lambda: PipeRecorder(loop), open(wfd, 'wb', 0))
        wtr.write(b'ping')
        wtr.close()
        await wp.lost
        await rp.lost
        assert rp.data == b'ping'

    async def main():
        for _ in range(30):
            await one()

    before = open_fds()
    run(loop, main())
    assert open_fds() == before


@pytest.mark.skipif(not on_ferroloop(), reason='ferroloop-only: pipes seen full grow to 1 MiB')
def test_pipes_seen_full_grow(loop):
    import fcntl
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    small_r, small_w = os.pipe()

    def capacity(fd):
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)

    async def main():
        default = capacity(small_w)
        wtr, wp = await loop.connect_write_pipe(lambda: PipeRecorder(loop), open(out_w, 'wb', 0))
        str_, sp = await loop.connect_write_pipe(lambda: PipeRecorder(loop), open(small_w, 'wb', 0))
        str_.write(b'fits')
        wtr.write(b'w' * (4 << 20))  # fills the pipe, which does not grow yet
        assert capacity(out_w) == default
        assert wtr.get_write_buffer_size() == (4 << 20) - default
        # Once the loop has waited for the reader, the flush grows the pipe.
        drained = 0
        while drained < default:
            drained += len(os.read(out_r, default - drained))
        while capacity(out_w) == default:
            await asyncio.sleep(0.005)
        assert capacity(out_w) == 1 << 20
        assert wtr.get_write_buffer_size() == (4 << 20) - default - (1 << 20)
        assert capacity(small_w) == default  # never full: left alone
        rtr, rp = await loop.connect_read_pipe(lambda: PipeRecorder(loop), open(in_r, 'rb', 0))
        os.write(in_w, b'r' * default)  # a full pipe's worth
        while len(rp.data) < default:
            await asyncio.sleep(0.005)
        assert capacity(in_r) == 1 << 20
        wtr.abort()
        str_.close()
        rtr.close()
        await asyncio.gather(wp.lost, sp.lost, rp.lost)
        for fd in (out_r, in_w, small_r):
            os.close(fd)

    run(loop, main())


@pytest.mark.skipif(not on_ferroloop(), reason='ferroloop-only: pipes seen full grow to 1 MiB')
def test_at_most_sixteen_pipes_are_grown_at_once(loop):
    # The pipe-buffer quota is per user: a process with many busy pipes
    # grows only 16 of them at a time, and a closed pipe gives its slot back.
    import fcntl

    def capacity(fd):
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)

    async def fill(count):
        pipes = [os.pipe() for _ in range(count)]
        made = []
        for r, w in pipes:
            tr, proto = await loop.connect_write_pipe(lambda: PipeRecorder(loop), open(w, 'wb', 0))
            tr.write(b'x' * (2 << 20))  # more than a pipe holds, even grown
            made.append((tr, proto, r, w))
        # Make room in each: the loop's flush then grows the pipe (or not).
        for _, _, r, _ in made:
            drained = 0
            while drained < 65536:
                drained += len(os.read(r, 65536 - drained))
        full = (2 << 20) - 65536
        while any(tr.get_write_buffer_size() >= full for tr, _, _, _ in made):
            await asyncio.sleep(0.005)
        return made

    async def close_all(made):
        for tr, _, _, _ in made:
            tr.abort()
        await asyncio.gather(*(proto.lost for _, proto, _, _ in made))
        for _, _, r, _ in made:
            os.close(r)

    async def main():
        made = await fill(20)
        grown = [capacity(r) for _, _, r, _ in made].count(1 << 20)
        assert 1 <= grown <= 16  # (slots held by pipes still open elsewhere count too)
        await close_all(made)
        # The slots are free again.
        again = await fill(1)
        assert capacity(again[0][2]) == 1 << 20
        await close_all(again)

    run(loop, main())


def test_pty_master_as_read_and_write_pipe(loop):
    # One fd, two transports (as terminal emulators and expect-like tools
    # use a pty master): both keep working, closing one leaves the other.
    master, slave = os.openpty()
    import tty
    tty.setraw(slave)

    async def main():
        rtr, rp = await loop.connect_read_pipe(lambda: PipeRecorder(loop), open(master, 'rb', 0))
        wtr, wp = await loop.connect_write_pipe(lambda: PipeRecorder(loop), open(os.dup(master), 'wb', 0))
        os.write(slave, b'from the slave')
        while rp.data != b'from the slave':
            await asyncio.sleep(0.005)
        wtr.write(b'to the slave')
        await asyncio.sleep(0.02)
        assert os.read(slave, 100) == b'to the slave'
        wtr.close()
        await wp.lost
        os.write(slave, b'!')
        while rp.data != b'from the slave!':
            await asyncio.sleep(0.005)
        rtr.close()
        await rp.lost

    run(loop, main())
    os.close(slave)


def test_write_pipe_resumes_only_when_drained(loop):
    rfd, wfd = os.pipe()
    sizes_at_resume = []

    class Watch(Recorder):
        def resume_writing(self):
            sizes_at_resume.append(self.transport.get_write_buffer_size())
            super().resume_writing()

    async def main():
        tr, proto = await loop.connect_write_pipe(lambda: Watch(loop, eof_keep_open=True),
                                                  open(wfd, 'wb', 0))
        tr.write(b'q' * (8 << 20))
        assert proto.events[-1] == 'pause'
        sink = await close_and_collect(loop, tr, proto, rfd)
        assert len(sink) == 8 << 20

    run(loop, main())
    assert sizes_at_resume == [0]


def test_write_to_a_pipe_whose_reader_is_gone(loop, caplog):
    rfd, wfd = os.pipe()

    async def main():
        tr, proto = await loop.connect_write_pipe(lambda: PipeRecorder(loop), open(wfd, 'wb', 0))
        os.close(rfd)
        tr.write(b'nobody reads')  # EPIPE at once
        for _ in range(6):
            tr.write(b'more')  # counted, then logged
        exc = await proto.lost
        assert isinstance(exc, BrokenPipeError)

    with caplog.at_level('WARNING', logger='asyncio'):
        run(loop, main())
    assert 'pipe closed by peer or os.write(pipe, data) raised exception.' in caplog.text


def test_read_pipe_on_an_unpollable_device(loop):
    # epoll refuses /dev/null (EPERM).  asyncio still makes the transport
    # (stdin redirected from /dev/null must not crash a program that
    # connects it): the error goes to the exception handler when reading
    # would start, nothing is ever read, and close() works as usual.
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx.get('exception')))
    fds = open_fds()

    async def main():
        with open(os.devnull, 'rb', 0) as f:
            tr, proto = await loop.connect_read_pipe(lambda: PipeRecorder(loop), f)
            await asyncio.sleep(0.01)
            assert proto.events == ['made']
            assert len(errors) == 1 and isinstance(errors[0], PermissionError)
            assert errors[0].errno == errno.EPERM
            tr.close()
            assert await proto.lost is None
            assert f.closed  # the transport owned it, as in asyncio

    run(loop, main())
    assert open_fds() == fds
