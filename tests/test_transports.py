"""Stream socket transports (TCP and Unix): the behaviour of asyncio's
`_SelectorSocketTransport`, which ferroloop's native transport replaces.

Every test also passes on stock asyncio (FERROLOOP_TEST_TARGET=asyncio).
"""
import asyncio
import errno
import gc
import os
import platform
import socket
import subprocess
import sys
import tempfile
import warnings

import pytest

from conftest import Recorder, on_ferroloop, open_fds


def run(loop, coro, timeout=10):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


class EchoServer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        self.transport.close()


async def tcp_pair(loop, server_factory=EchoServer, client=None):
    """A server on 127.0.0.1 and one connected client."""
    server = await loop.create_server(server_factory, '127.0.0.1', 0)
    host, port = server.sockets[0].getsockname()[:2]
    client = client or Recorder(loop)
    transport, _ = await loop.create_connection(lambda: client, host, port)
    return server, transport, client


async def socketpair_transport(loop, protocol):
    """A transport on one end of a socketpair; the other end is returned
    as a plain blocking socket for the test to drive."""
    a, b = socket.socketpair()
    a.setblocking(False)
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, a)
    return transport, b


def test_echo_round_trip_and_callback_order(loop):
    async def main():
        server, tr, client = await tcp_pair(loop)
        tr.write(b'hello')
        while len(client.data) < 5:
            await asyncio.sleep(0.001)
        assert bytes(client.data) == b'hello'
        tr.close()
        assert tr.is_closing()
        assert await client.lost is None
        server.close()
        await server.wait_closed()
        return client.events

    assert run(loop, main()) == ['made', 'data', ('lost', None)]


def test_transport_api_surface(loop):
    async def main():
        server, tr, client = await tcp_pair(loop)
        try:
            assert isinstance(tr, asyncio.Transport)
            assert isinstance(tr, asyncio.BaseTransport)
            assert tr.get_protocol() is client
            assert tr.can_write_eof() is True
            assert tr.is_reading()
            sock = tr.get_extra_info('socket')
            assert sock.family == socket.AF_INET
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert tr.get_extra_info('sockname') == sock.getsockname()
            assert tr.get_extra_info('peername') == server.sockets[0].getsockname()
            assert tr.get_extra_info('nonexistent', 'dflt') == 'dflt'
            assert tr.get_write_buffer_size() == 0
            assert tr.get_write_buffer_limits() == (16384, 65536)
            tr.set_write_buffer_limits(high=100)
            assert tr.get_write_buffer_limits() == (25, 100)
            tr.set_write_buffer_limits(low=10)
            assert tr.get_write_buffer_limits() == (10, 40)
            with pytest.raises(ValueError, match=r'high \(1\) must be >= low \(2\)'):
                tr.set_write_buffer_limits(high=1, low=2)
            assert 'fd=' in repr(tr) and 'read=polling' in repr(tr)
            # Libraries tag transports with attributes of their own.
            tr.tag = 'mine'
            assert tr.tag == 'mine' and vars(tr)['tag'] == 'mine'
        finally:
            tr.close()
            await client.lost
            server.close()
            await server.wait_closed()
        assert 'closed' in repr(tr)
        assert tr.get_protocol() is None

    run(loop, main())


def test_write_checks_its_argument(loop):
    async def main():
        server, tr, client = await tcp_pair(loop)
        with pytest.raises(TypeError, match="data argument must be a bytes-like object, not 'str'"):
            tr.write('text')
        with pytest.raises(TypeError):
            tr.writelines(['text'])
        tr.write(b'')  # nothing to do
        tr.write_eof()
        with pytest.raises(RuntimeError, match=r'Cannot call write\(\) after write_eof\(\)'):
            tr.write(b'x')
        tr.close()
        await client.lost
        server.close()

    run(loop, main())


@pytest.mark.parametrize('kind', ['bytes', 'bytearray', 'memoryview', 'writelines', 'mixed'])
def test_large_writes_arrive_complete_and_in_order(loop, kind):
    payload = os.urandom(1 << 16) * 64  # 4 MiB, far beyond the socket buffers

    async def main():
        receiver = Recorder(loop)
        server = await loop.create_server(lambda: receiver, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        sender = Recorder(loop)
        tr, _ = await loop.create_connection(lambda: sender, '127.0.0.1', port)
        if kind == 'bytes':
            tr.write(payload)
        elif kind == 'bytearray':
            buf = bytearray(payload)
            tr.write(buf)
            buf[:] = b'\0' * len(buf)  # the transport kept its own copy
        elif kind == 'memoryview':
            tr.write(memoryview(payload)[:1000])
            tr.write(memoryview(payload)[1000:])
        elif kind == 'writelines':
            chunks = [payload[i:i + 100000] for i in range(0, len(payload), 100000)]
            tr.writelines(chunks)
        else:
            # Small and large pieces, bytes (large ones are queued by
            # reference) and bytearrays (copied, then scribbled over),
            # one by one and through writelines.
            pos, i = 0, 0
            while pos < len(payload):
                size = [10, 70000, 300, 5000, 200000][i % 5]
                piece = payload[pos:pos + size]
                if i % 3 == 0:
                    buf = bytearray(piece)
                    tr.write(buf)
                    buf[:] = b'\0' * len(buf)
                elif i % 3 == 1:
                    tr.write(piece)
                else:
                    tr.writelines([piece[:7], bytearray(piece[7:9]), piece[9:]])
                pos += size
                i += 1
        assert tr.get_write_buffer_size() > 0
        tr.close()  # flushes first, then connection_lost
        await receiver.lost  # the peer saw everything, then EOF
        await sender.lost
        server.close()
        return sender.events, receiver

    events, receiver = run(loop, main())
    assert receiver.data == payload
    assert receiver.events[-2:] == ['eof', ('lost', None)]
    assert events[-1] == ('lost', None)
    # 4 MiB into a 64 KiB high-water mark: the protocol was paused.
    assert 'pause' in events


def test_flow_control_pauses_and_resumes_the_protocol(loop):
    async def main():
        proto = Recorder(loop)
        tr, peer = await socketpair_transport(loop, proto)
        await asyncio.sleep(0)
        tr.set_write_buffer_limits(high=64, low=16)
        # Fill the kernel buffer, then go over the high mark.
        while tr.get_write_buffer_size() <= 64:
            tr.write(b'x' * 65536)
        assert proto.events[-1] == 'pause'
        assert tr._protocol_paused if on_ferroloop() else True
        # The peer drains everything: the buffer falls under the low mark.
        total = 0
        peer.setblocking(False)
        while 'resume' not in proto.events:
            try:
                total += len(peer.recv(1 << 20))
            except BlockingIOError:
                await asyncio.sleep(0.001)
        assert tr.get_write_buffer_size() <= 16
        tr.abort()
        await proto.lost
        peer.close()
        return proto.events

    events = run(loop, main())
    assert events.count('pause') == 1 and events.count('resume') == 1
    assert events[-1] == ('lost', None)


def test_pause_and_resume_reading(loop):
    async def main():
        proto = Recorder(loop)
        tr, peer = await socketpair_transport(loop, proto)
        await asyncio.sleep(0.01)
        tr.pause_reading()
        assert not tr.is_reading()
        tr.pause_reading()  # idempotent
        peer.sendall(b'abc')
        await asyncio.sleep(0.05)
        assert proto.data == b''
        tr.resume_reading()
        assert tr.is_reading()
        while proto.data != b'abc':
            await asyncio.sleep(0.001)
        tr.close()
        assert not tr.is_reading()
        await proto.lost
        peer.close()

    run(loop, main())


def test_data_already_there_is_read_after_connection_made(loop):
    async def main():
        a, b = socket.socketpair()
        b.sendall(b'early')
        a.setblocking(False)
        proto = Recorder(loop)
        tr, _ = await loop.connect_accepted_socket(lambda: proto, a)
        assert proto.events == ['made']  # nothing delivered before the waiter
        while proto.data != b'early':
            await asyncio.sleep(0.001)
        tr.close()
        await proto.lost
        b.close()

    run(loop, main())


@pytest.mark.parametrize('keep_open', [False, True])
def test_eof_received_decides_who_closes(loop, keep_open):
    async def main():
        proto = Recorder(loop, eof_keep_open=keep_open)
        tr, peer = await socketpair_transport(loop, proto)
        peer.sendall(b'last words')
        peer.shutdown(socket.SHUT_WR)
        await proto.got_eof
        await asyncio.sleep(0.01)
        if keep_open:
            # Half-closed: we can still write, the peer still reads.
            assert not tr.is_closing()
            tr.write(b'reply')
            tr.write_eof()
            peer.settimeout(5)
            got = b''
            while len(got) < 5:
                got += peer.recv(100)
            assert got == b'reply'
            assert peer.recv(100) == b''  # our write_eof
            tr.close()
        else:
            assert tr.is_closing()
        await proto.lost
        peer.close()
        return proto

    proto = run(loop, main())
    assert proto.data == b'last words'
    assert proto.events == ['made', 'data', 'eof', ('lost', None)]


def test_connection_reset_reports_the_error_once(loop):
    async def main():
        proto = Recorder(loop)
        tr, peer = await socketpair_transport(loop, proto)
        await asyncio.sleep(0)
        peer.close()
        # Writing into a closed peer fails: EPIPE, no SIGPIPE.
        for _ in range(20):
            tr.write(b'x' * 1000)
            await asyncio.sleep(0.001)
            if proto.lost.done():
                break
        return await proto.lost

    exc = run(loop, main())
    assert exc is None or isinstance(exc, (BrokenPipeError, ConnectionResetError))


def test_writes_after_connection_lost_are_counted_then_logged(loop, caplog):
    async def main():
        proto = Recorder(loop)
        tr, peer = await socketpair_transport(loop, proto)
        tr.abort()
        for _ in range(7):
            tr.write(b'lost')  # no error raised, nothing sent
        await proto.lost
        peer.close()

    with caplog.at_level('WARNING', logger='asyncio'):
        run(loop, main())
    assert 'socket.send() raised exception.' in caplog.text


def test_abort_drops_buffered_data_and_reports_once(loop):
    async def main():
        proto = Recorder(loop)
        tr, peer = await socketpair_transport(loop, proto)
        tr.write(b'x' * (8 << 20))
        assert tr.get_write_buffer_size() > 0
        tr.abort()
        tr.abort()
        tr.close()
        assert tr.get_write_buffer_size() == 0
        assert await proto.lost is None
        await asyncio.sleep(0.01)
        peer.close()
        return proto.events

    events = run(loop, main())
    assert [e for e in events if isinstance(e, tuple)] == [('lost', None)]


def test_protocol_error_goes_to_the_exception_handler_and_closes(loop):
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

    class Broken(Recorder):
        def data_received(self, data):
            raise ZeroDivisionError('boom')

    async def main():
        proto = Broken(loop)
        tr, peer = await socketpair_transport(loop, proto)
        peer.sendall(b'x')
        exc = await proto.lost
        peer.close()
        return tr, proto, exc

    tr, proto, exc = run(loop, main())
    assert isinstance(exc, ZeroDivisionError)
    assert len(errors) == 1
    assert errors[0]['message'] == 'Fatal error: protocol.data_received() call failed.'
    assert errors[0]['transport'] is tr and errors[0]['protocol'] is proto


class ReadsIntoBuffer:
    """get_buffer()/buffer_updated() collecting into .got; records the size
    hints; .lost has connection_lost's exception."""

    def __init__(self, loop, size):
        self.buf = bytearray(size)
        self.got = bytearray()
        self.sizes = set()
        self.lost = loop.create_future()

    def get_buffer(self, sizehint):
        self.sizes.add(sizehint)
        return self.buf

    def buffer_updated(self, nbytes):
        self.got += self.buf[:nbytes]

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_buffered_protocol_reads_into_its_buffer(loop):
    class Buffered(ReadsIntoBuffer, asyncio.BufferedProtocol):
        def __init__(self):
            super().__init__(loop, 1000)

    payload = os.urandom(300000)

    async def main():
        proto = Buffered()
        tr, peer = await socketpair_transport(loop, proto)
        # From a thread: more than the socket buffers hold.
        await loop.run_in_executor(None, peer.sendall, payload)
        peer.shutdown(socket.SHUT_WR)
        await proto.lost
        peer.close()
        return proto

    proto = run(loop, main())
    assert proto.got == payload
    assert proto.sizes == {-1}


@pytest.mark.skipif(not on_ferroloop(), reason="asyncio reads only BufferedProtocol instances into "
                    "buffers; this duck-typed one fails there (uvloop reads it; see README)")
def test_duck_typed_buffered_protocol_reads_into_its_buffer(loop):
    # get_buffer() and buffer_updated() without data_received(), on a class
    # that is not an asyncio.BufferedProtocol: read as one, as uvloop does.
    # A protocol that has data_received() too keeps asyncio's choice.
    class Duck(ReadsIntoBuffer, asyncio.BaseProtocol):
        def __init__(self):
            super().__init__(loop, 64)

    class Both(Duck):
        def __init__(self):
            super().__init__()
            self.data = bytearray()

        def data_received(self, data):
            self.data += data

    async def main(proto):
        tr, peer = await socketpair_transport(loop, proto)
        peer.sendall(b'x' * 1000)
        peer.close()
        return await proto.lost

    duck = Duck()
    assert run(loop, main(duck)) is None
    assert duck.got == b'x' * 1000
    both = Both()
    assert run(loop, main(both)) is None
    assert both.data == b'x' * 1000 and both.got == b''


def test_socket_subclass_gets_its_own_recv_and_send_called(loop):
    # asyncio's transport calls the socket's recv/send: a subclass that
    # overrides them (instrumented sockets, test doubles) sees every call.
    calls = []

    class Traced(socket.socket):
        def recv(self, *args):
            calls.append('recv')
            return super().recv(*args)

        def send(self, *args):
            calls.append('send')
            return super().send(*args)

    before = open_fds()

    async def main():
        a, b = socket.socketpair()
        sock = Traced(fileno=a.detach())
        proto = Recorder(loop)
        tr, _ = await loop.create_connection(lambda: proto, sock=sock)
        assert isinstance(tr, asyncio.Transport)
        tr.write(b'ping')
        assert await loop.run_in_executor(None, b.recv, 100) == b'ping'
        b.sendall(b'pong')
        b.shutdown(socket.SHUT_WR)
        await proto.got_eof
        tr.close()
        await proto.lost
        b.close()
        return bytes(proto.data)

    assert run(loop, main()) == b'pong'
    assert 'recv' in calls and 'send' in calls
    assert open_fds() == before


def test_get_buffer_is_asked_only_when_there_is_data(loop):
    # asyncio calls get_buffer() when the socket is readable, then recv_into:
    # never at connection setup, after resume_reading with nothing queued,
    # or after a read that exactly filled the buffer.  Every buffer asked
    # for is filled (or meets the EOF).
    class Counting(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = bytearray(100)
            self.asked = 0
            self.updates = []
            self.eof = loop.create_future()

        def get_buffer(self, sizehint):
            self.asked += 1
            return self.buf

        def buffer_updated(self, nbytes):
            self.updates.append(nbytes)

        def eof_received(self):
            self.eof.set_result(None)

    async def main():
        proto = Counting()
        tr, peer = await socketpair_transport(loop, proto)
        for _ in range(5):
            await asyncio.sleep(0)
        assert proto.asked == 0
        tr.pause_reading()
        tr.resume_reading()
        for _ in range(5):
            await asyncio.sleep(0)
        assert proto.asked == 0
        peer.sendall(b'y' * 100)  # exactly one buffer
        while not proto.updates:
            await asyncio.sleep(0.001)
        for _ in range(5):
            await asyncio.sleep(0)
        assert proto.asked == 1 and proto.updates == [100]
        peer.shutdown(socket.SHUT_WR)
        await proto.eof
        tr.close()
        peer.close()
        return proto

    proto = run(loop, main())
    assert proto.updates == [100]
    assert proto.asked == 2  # the last one met the EOF, as in asyncio


def test_buffered_protocol_sees_a_reset_that_came_while_paused(loop):
    # A Unix stream peer closed with our data unread: the socket's pending
    # error is ECONNRESET, which the next read must report (not an EOF).
    class Buffered(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = bytearray(1024)
            self.lost = loop.create_future()
            self.eof = False

        def get_buffer(self, sizehint):
            return self.buf

        def buffer_updated(self, nbytes):
            pass

        def eof_received(self):
            self.eof = True

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        proto = Buffered()
        tr, peer = await socketpair_transport(loop, proto)
        tr.pause_reading()
        tr.write(b'never read')
        await asyncio.sleep(0.01)
        peer.close()
        await asyncio.sleep(0.01)
        tr.resume_reading()
        return proto, await proto.lost

    proto, exc = run(loop, main())
    assert isinstance(exc, ConnectionResetError) and exc.errno == errno.ECONNRESET
    assert not proto.eof


def test_empty_buffer_from_get_buffer_is_a_fatal_error(loop):
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

    class Empty(asyncio.BufferedProtocol):
        def __init__(self):
            self.lost = loop.create_future()

        def get_buffer(self, sizehint):
            return bytearray()

        def buffer_updated(self, nbytes):
            raise AssertionError('not reached')

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        proto = Empty()
        tr, peer = await socketpair_transport(loop, proto)
        peer.sendall(b'x')
        exc = await proto.lost
        peer.close()
        return exc

    exc = run(loop, main())
    assert isinstance(exc, RuntimeError)
    assert 'get_buffer() returned an empty buffer' in str(exc)
    assert errors[0]['message'] == 'Fatal error: protocol.get_buffer() call failed.'


def test_set_protocol_switches_where_data_goes(loop):
    async def main():
        first, second = Recorder(loop), Recorder(loop)
        tr, peer = await socketpair_transport(loop, first)
        peer.sendall(b'one')
        while first.data != b'one':
            await asyncio.sleep(0.001)
        tr.set_protocol(second)
        assert tr.get_protocol() is second
        peer.sendall(b'two')
        while second.data != b'two':
            await asyncio.sleep(0.001)
        tr.close()
        await second.lost
        peer.close()
        return first, second

    first, second = run(loop, main())
    assert first.data == b'one' and not first.lost.done()


def test_read_callbacks_see_the_creators_context(loop):
    import contextvars
    var = contextvars.ContextVar('var', default='unset')
    seen = []

    class Proto(Recorder):
        def data_received(self, data):
            seen.append(var.get())
            super().data_received(data)

    async def main():
        var.set('creator')
        proto = Proto(loop)
        tr, peer = await socketpair_transport(loop, proto)
        var.set('changed later')
        peer.sendall(b'x')
        while not proto.data:
            await asyncio.sleep(0.001)
        tr.close()
        await proto.lost
        peer.close()

    run(loop, main())
    assert seen == ['creator']


def test_unix_socket_streams(loop):
    async def main():
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, 'sock')

            async def handle(reader, writer):
                line = await reader.readline()
                writer.write(line.upper())
                await writer.drain()
                writer.close()

            server = await asyncio.start_unix_server(handle, path)
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b'ping\n')
            assert await reader.readline() == b'PING\n'
            assert await reader.read() == b''
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()

    run(loop, main())


@pytest.mark.skipif(not socket.has_ipv6, reason='no IPv6 on this machine')
def test_ipv6_echo(loop):
    async def main():
        try:
            server = await loop.create_server(EchoServer, '::1', 0)
        except OSError as exc:
            pytest.skip(f'IPv6 loopback unusable: {exc}')
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection('::1', port)
        assert writer.get_extra_info('socket').family == socket.AF_INET6
        writer.write(b'six\n')
        assert await reader.readline() == b'six\n'
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_many_connections_leave_no_fd_open(loop):
    async def main():
        server = await loop.create_server(EchoServer, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]

        async def one(i):
            reader, writer = await asyncio.open_connection('127.0.0.1', port)
            writer.write(b'%d\n' % i)
            line = await reader.readline()
            writer.close()
            await writer.wait_closed()
            return line

        lines = await asyncio.gather(*(one(i) for i in range(50)))
        assert lines == [b'%d\n' % i for i in range(50)]
        server.close()
        await server.wait_closed()

    before = open_fds()
    run(loop, main())
    loop.close()
    gc.collect()
    assert open_fds() <= before


def test_unclosed_transport_warns_and_closes_its_socket(loop):
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        proto = Recorder(loop)
        tr, _ = await loop.connect_accepted_socket(lambda: proto, a)
        return tr, a, b

    tr, a, b = run(loop, main())
    fd = a.fileno()
    loop.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        del tr
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) and 'unclosed transport' in str(w.message)
               for w in caught)
    assert a.fileno() == -1 or fd not in [int(x) for x in os.listdir('/proc/self/fd')]
    b.close()


def test_sendfile_sends_the_file(loop, tmp_path):
    data = os.urandom(3 << 20)
    path = tmp_path / 'blob'
    path.write_bytes(data)

    async def sendfile_case():
        received = Recorder(loop)
        server = await loop.create_server(lambda: received, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        tr, _ = await loop.create_connection(asyncio.Protocol, '127.0.0.1', port)
        with open(path, 'rb') as f:
            sent = await loop.sendfile(tr, f, offset=1000, count=2 << 20)
            assert f.tell() == 1000 + (2 << 20)
        tr.write(b'after')  # the transport works as before
        tr.close()
        while len(received.data) < (2 << 20) + 5:
            await asyncio.sleep(0.005)
        server.close()
        return sent, bytes(received.data)

    sent, got = run(loop, sendfile_case())
    assert sent == 2 << 20
    assert got == data[1000:1000 + (2 << 20)] + b'after'


def test_sendfile_fallback_for_a_non_regular_file(loop):
    import io

    async def main():
        received = Recorder(loop)
        server = await loop.create_server(lambda: received, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        tr, _ = await loop.create_connection(asyncio.Protocol, '127.0.0.1', port)
        sent = await loop.sendfile(tr, io.BytesIO(b'in memory' * 1000))
        tr.close()
        while len(received.data) < 9000:
            await asyncio.sleep(0.005)
        server.close()
        return sent, bytes(received.data)

    sent, got = run(loop, main())
    assert sent == 9000 and got == b'in memory' * 1000


def test_start_tls_upgrades_a_native_transport(loop):
    ssl = pytest.importorskip('ssl')
    from test.test_asyncio import utils as test_utils

    async def main():
        async def handle(reader, writer):
            assert await reader.readline() == b'STARTTLS\n'
            writer.write(b'GO\n')  # the client waits for it: no TLS bytes
            await writer.drain()    # reach our reader's plain-text buffer
            await writer.start_tls(test_utils.simple_server_sslcontext())
            writer.write((await reader.readline()).upper())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        writer.write(b'STARTTLS\n')
        assert await reader.readline() == b'GO\n'
        await writer.start_tls(test_utils.simple_client_sslcontext())
        assert writer.get_extra_info('ssl_object') is not None
        writer.write(b'secret\n')
        assert await reader.readline() == b'SECRET\n'
        writer.close()
        server.close()

    run(loop, main())


@pytest.mark.skipif(sys.version_info < (3, 13), reason='Server.close_clients() is new in 3.13')
def test_server_close_clients(loop):
    async def main():
        server = await loop.create_server(EchoServer, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        writer.write(b'x')
        assert await reader.read(1) == b'x'
        server.close()
        server.close_clients()
        assert await reader.read() == b''
        await server.wait_closed()
        writer.close()

    run(loop, main())


def test_udp_delivers_every_queued_datagram_in_order(loop):
    class Collect(asyncio.DatagramProtocol):
        def __init__(self):
            self.got = []
            self.done = loop.create_future()

        def datagram_received(self, data, addr):
            self.got.append(data)
            if len(self.got) == 200 and not self.done.done():
                self.done.set_result(None)

    async def main():
        proto = Collect()
        tr, _ = await loop.create_datagram_endpoint(lambda: proto, local_addr=('127.0.0.1', 0))
        if on_ferroloop() or sys.version_info >= (3, 13):
            assert isinstance(tr, asyncio.DatagramTransport)
        addr = tr.get_extra_info('sockname')
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(200):  # all queued before the loop reads any
                s.sendto(b'%d' % i, addr)
            await proto.done
        tr.close()
        return proto.got

    assert run(loop, main()) == [b'%d' % i for i in range(200)]


def test_udp_stops_reading_when_closed_mid_batch(loop):
    class CloseAfterOne(asyncio.DatagramProtocol):
        def __init__(self):
            self.got = []
            self.lost = loop.create_future()

        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.got.append(data)
            self.transport.close()

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        proto = CloseAfterOne()
        tr, _ = await loop.create_datagram_endpoint(lambda: proto, local_addr=('127.0.0.1', 0))
        addr = tr.get_extra_info('sockname')
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(5):
                s.sendto(b'x', addr)
            await proto.lost
        return proto.got

    assert run(loop, main()) == [b'x']


@pytest.mark.skipif(not on_ferroloop(), reason="ferroloop's import-time malloc tuning")
@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason="glibc's malloc thresholds")
def test_import_keeps_transport_sized_buffers_on_the_heap():
    # glibc maps every allocation above 128 KiB on its own until a large
    # mapped block is freed; importing ferroloop frees one, so the 256 KiB
    # read buffers of its transports come from the heap (no mmap, munmap and
    # page faults per read).  Checked in a fresh interpreter.
    code = r'''
import ctypes
libc = ctypes.CDLL("libc.so.6")
class MI(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = MI
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def mapped(import_first):
    if import_first:
        import ferroloop
    before = libc.mallinfo2().hblks
    blocks = [libc.malloc(300 * 1024) for _ in range(4)]
    after = libc.mallinfo2().hblks
    for b in blocks:
        libc.free(b)
    return after - before
import sys
print(mapped(sys.argv[1] == "import"))
'''
    def run(arg):
        out = subprocess.run([sys.executable, '-c', code, arg], capture_output=True, text=True, check=True)
        return int(out.stdout)

    assert run('plain') == 4  # the premise: a fresh interpreter maps them
    assert run('import') == 0
