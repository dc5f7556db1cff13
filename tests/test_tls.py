"""TLS transports: the SSL protocol under create_connection/create_server
(ferroloop's native one by default, asyncio's with native_tls=False).

Data through both application protocol kinds and both flow-control
directions, the ends of a session (close_notify, abort, a corrupted record,
timeouts), writes after close, the isinstance() checks, an SSLObject
subclass, and that closed connections leave no object or fd behind.  Every
test also passes on stock asyncio (FERROLOOP_TEST_TARGET=asyncio).
"""
import asyncio
import gc
import logging
import os
import ssl
import weakref
from asyncio import sslproto

import pytest

from conftest import needs_certs, on_ferroloop, open_fds, tls_contexts

pytestmark = needs_certs


def run(loop, coro, timeout=30):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


class Recorder(asyncio.Protocol):
    """Records what the transport calls, in order."""

    def __init__(self):
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.lost = asyncio.get_running_loop().create_future()
        self.eof_result = None

    def connection_made(self, transport):
        self.transport = transport
        self.events.append('made')

    def data_received(self, data):
        if not self.events or self.events[-1] != 'data':
            self.events.append('data')
        self.data += data

    def eof_received(self):
        self.events.append('eof')
        return self.eof_result

    def connection_lost(self, exc):
        self.events.append('lost')
        self.lost.set_result(exc)

    def pause_writing(self):
        self.events.append('pause')

    def resume_writing(self):
        self.events.append('resume')


class ServerSide(Recorder):
    """A Recorder that adds itself to a list (the server's connections)."""

    def __init__(self, peers):
        super().__init__()
        peers.append(self)


class BufferedRecorder(asyncio.BufferedProtocol):
    """A BufferedProtocol with a small buffer, so one TLS read fills it
    several times."""

    def __init__(self, size=1000):
        # A memoryview: asyncio's SSL protocol fills the rest of a buffer
        # through a slice of it (a bytearray's slice would be a copy).
        self.buf = memoryview(bytearray(size))
        self.data = bytearray()
        self.sizes_asked = []
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        self.sizes_asked.append(sizehint)
        return self.buf

    def buffer_updated(self, nbytes):
        self.data += self.buf[:nbytes]

    def eof_received(self):
        return None

    def connection_lost(self, exc):
        self.lost.set_result(exc)


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def tls_server(protocol_factory):
    server_ctx, client_ctx = tls_contexts()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol_factory, '127.0.0.1', 0, ssl=server_ctx)
    return server, server.sockets[0].getsockname()[1], client_ctx


async def tls_connect(port, client_ctx, factory=Recorder, **kwargs):
    """A TLS connection to the test server: (transport, protocol)."""
    return await asyncio.get_running_loop().create_connection(
        factory, '127.0.0.1', port, ssl=client_ctx, server_hostname='localhost', **kwargs)


@pytest.mark.parametrize('app', ['Protocol', 'BufferedProtocol'])
def test_megabytes_echo_through_both_protocol_kinds(loop, app):
    payload = os.urandom(3 * 1024 * 1024 + 11)

    async def main():
        server, port, client_ctx = await tls_server(Echo)
        factory = Recorder if app == 'Protocol' else BufferedRecorder
        transport, proto = await tls_connect(port, client_ctx, factory)
        # Many small writes (many records per TCP read), then big ones.
        transport.writelines([payload[i:i + 100] for i in range(0, 100_000, 100)])
        transport.write(payload[100_000:])
        while len(proto.data) < len(payload):
            await asyncio.sleep(0.01)
        assert bytes(proto.data) == payload
        if app == 'BufferedProtocol':
            # The application's buffer is asked for with the size of what
            # the incoming BIO holds (asyncio's _get_read_buffer_size).
            assert all(isinstance(n, int) and n >= 0 for n in proto.sizes_asked)
        transport.close()
        assert await proto.lost is None
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_peer_close_sends_data_then_eof_then_lost(loop):
    async def main():
        closing = []

        class SayAndClose(asyncio.Protocol):
            def connection_made(self, transport):
                transport.write(b'bye' * 1000)
                transport.close()  # close_notify right behind the data
                closing.append(transport.is_closing())

        server, port, client_ctx = await tls_server(SayAndClose)
        transport, proto = await tls_connect(port, client_ctx)
        assert await proto.lost is None
        assert bytes(proto.data) == b'bye' * 1000
        assert proto.events == ['made', 'data', 'eof', 'lost']
        assert closing == [True]
        assert transport.is_closing()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_eof_received_returning_true_is_only_warned_about(loop, caplog):
    async def main():
        class CloseAtOnce(asyncio.Protocol):
            def connection_made(self, transport):
                transport.close()

        server, port, client_ctx = await tls_server(CloseAtOnce)
        transport, proto = await tls_connect(port, client_ctx)
        proto.eof_result = True
        assert await proto.lost is None
        assert proto.events == ['made', 'eof', 'lost']
        server.close()
        await server.wait_closed()

    with caplog.at_level(logging.WARNING, logger='asyncio'):
        run(loop, main())
    assert 'returning true from eof_received() has no effect when using ssl' in caplog.text


def test_writes_after_close_are_dropped_then_warned_about(loop, caplog):
    async def main():
        server, port, client_ctx = await tls_server(Echo)
        transport, proto = await tls_connect(port, client_ctx)
        transport.close()
        for _ in range(8):
            transport.write(b'late')  # no exception, as asyncio
        assert await proto.lost is None
        server.close()
        await server.wait_closed()

    with caplog.at_level(logging.WARNING, logger='asyncio'):
        run(loop, main())
    # asyncio logs from the sixth dropped write on (LOG_THRESHOLD_FOR_CONNLOST_WRITES).
    assert caplog.text.count('SSL connection is closed') == 3


def test_abort_loses_the_connection_on_both_ends(loop):
    async def main():
        peers = []
        server, port, client_ctx = await tls_server(lambda: ServerSide(peers))
        transport, proto = await tls_connect(port, client_ctx)
        transport.write(b'x' * 100_000)
        transport.abort()
        assert transport.is_closing()
        assert await proto.lost is None
        assert proto.events == ['made', 'lost']
        while not peers:
            await asyncio.sleep(0.01)
        await asyncio.wait_for(peers[0].lost, 10)
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_reading_pauses_the_transport_below_and_resumes(loop):
    size = 8 * 1024 * 1024

    async def main():
        class Flood(asyncio.Protocol):
            def connection_made(self, transport):
                transport.write(b'f' * size)

        server, port, client_ctx = await tls_server(Flood)
        transport, proto = await tls_connect(port, client_ctx)
        transport.pause_reading()
        assert not transport.is_reading()
        below = transport._ssl_protocol._transport
        # Data keeps arriving into the incoming BIO until it reaches the
        # read high-water mark (256 KiB), then the socket is paused.
        for _ in range(500):
            if not below.is_reading():
                break
            await asyncio.sleep(0.01)
        assert not below.is_reading()
        received = len(proto.data)
        await asyncio.sleep(0.05)
        assert len(proto.data) == received
        transport.resume_reading()
        assert transport.is_reading()
        while len(proto.data) < size:
            await asyncio.sleep(0.01)
        assert bytes(proto.data) == b'f' * size
        transport.close()
        await proto.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_write_flow_control_pauses_and_resumes_the_application(loop):
    async def main():
        release = loop.create_future()
        received = bytearray()

        class SlowReader(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport
                transport.pause_reading()
                release.add_done_callback(lambda _: transport.resume_reading())

            def data_received(self, data):
                received.extend(data)

        server, port, client_ctx = await tls_server(SlowReader)
        transport, proto = await tls_connect(port, client_ctx)
        transport.set_write_buffer_limits(high=64 * 1024)
        assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        chunk = os.urandom(256 * 1024)
        total = 0
        while 'pause' not in proto.events:
            transport.write(chunk)
            total += len(chunk)
            await asyncio.sleep(0)
        assert transport.get_write_buffer_size() >= 64 * 1024
        release.set_result(None)
        while 'resume' not in proto.events:
            await asyncio.sleep(0.01)
        while len(received) < total:
            await asyncio.sleep(0.01)
        assert proto.events[:3] == ['made', 'pause', 'resume']
        assert received == chunk * (total // len(chunk))
        transport.close()
        await proto.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_a_corrupted_record_is_a_fatal_ssl_error(loop):
    async def main():
        peers = []
        server, port, client_ctx = await tls_server(lambda: ServerSide(peers))
        transport, proto = await tls_connect(port, client_ctx)
        transport.write(b'fine')
        while not peers or not peers[0].data:
            await asyncio.sleep(0.01)
        # An application-data record header, then garbage, under the TLS layer.
        transport._ssl_protocol._transport.write(b'\x17\x03\x03\x00\x40' + b'\xff' * 64)
        exc = await asyncio.wait_for(peers[0].lost, 10)
        assert isinstance(exc, ssl.SSLError)
        assert bytes(peers[0].data) == b'fine'
        await proto.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_handshake_timeout_aborts_the_connection(loop):
    async def main():
        async def silent(reader, writer):
            await reader.read()  # never answers the ClientHello
            writer.close()

        _, client_ctx = tls_contexts()
        server = await asyncio.start_server(silent, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        before = open_fds()
        with pytest.raises(ConnectionAbortedError, match=r'SSL handshake is taking longer than 0\.2 seconds'):
            await tls_connect(port, client_ctx, asyncio.Protocol, ssl_handshake_timeout=0.2)
        await asyncio.sleep(0.05)
        assert open_fds() == before
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_start_tls_rejects_a_bad_timeout_and_a_non_context(loop):
    async def main():
        writers = []
        server = await asyncio.start_server(lambda r, w: writers.append(w), '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(asyncio.Protocol, '127.0.0.1', port)
        _, client_ctx = tls_contexts()
        with pytest.raises(ValueError, match='ssl_handshake_timeout should be a positive number, got -1'):
            await loop.start_tls(transport, asyncio.Protocol(), client_ctx, ssl_handshake_timeout=-1)
        with pytest.raises(ValueError, match='ssl_shutdown_timeout should be a positive number, got 0'):
            await loop.start_tls(transport, asyncio.Protocol(), client_ctx, ssl_shutdown_timeout=0)
        with pytest.raises(TypeError, match='sslcontext is expected to be an instance of ssl.SSLContext'):
            await loop.start_tls(transport, asyncio.Protocol(), object())
        transport.close()
        while not writers:
            await asyncio.sleep(0.01)
        writers[0].close()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_transport_and_protocol_pass_asyncio_isinstance_checks(loop):
    async def main():
        server, port, client_ctx = await tls_server(Echo)
        transport, proto = await tls_connect(port, client_ctx)
        assert isinstance(transport, asyncio.Transport)
        ssl_protocol = transport._ssl_protocol
        assert isinstance(ssl_protocol, sslproto.SSLProtocol)
        assert isinstance(ssl_protocol, asyncio.BufferedProtocol)
        assert ssl_protocol._state is sslproto.SSLProtocolState.WRAPPED
        assert ssl_protocol._app_transport is transport
        assert transport.get_protocol() is proto
        assert transport.get_extra_info('sslcontext') is client_ctx
        assert transport.get_extra_info('peername')[0] == '127.0.0.1'
        assert transport.get_extra_info('nonexistent', 'dflt') == 'dflt'
        assert transport.get_write_buffer_limits() == (128 * 1024, 512 * 1024)
        assert transport.get_read_buffer_limits() == (64 * 1024, 256 * 1024)
        assert not transport.can_write_eof()
        # set_protocol: later data goes to the new protocol.
        other = Recorder()
        transport.set_protocol(other)
        transport.write(b'to the other one')
        while bytes(other.data) != b'to the other one':
            await asyncio.sleep(0.01)
        assert proto.data == b''
        transport.close()
        assert ssl_protocol._state in (sslproto.SSLProtocolState.FLUSHING,
                                       sslproto.SSLProtocolState.SHUTDOWN,
                                       sslproto.SSLProtocolState.UNWRAPPED)
        await other.lost
        assert ssl_protocol._state is sslproto.SSLProtocolState.UNWRAPPED
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_an_sslobject_subclass_from_the_context_is_used(loop):
    calls = {'read': 0, 'write': 0}

    class CountingSSLObject(ssl.SSLObject):
        def read(self, *args):
            calls['read'] += 1
            return super().read(*args)

        def write(self, data):
            calls['write'] += 1
            return super().write(data)

    async def main():
        server_ctx, client_ctx = tls_contexts()
        client_ctx.sslobject_class = CountingSSLObject
        server = await loop.create_server(Echo, '127.0.0.1', 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        transport, proto = await tls_connect(port, client_ctx)
        assert isinstance(transport.get_extra_info('ssl_object'), CountingSSLObject)
        transport.write(b'counted')
        while bytes(proto.data) != b'counted':
            await asyncio.sleep(0.01)
        assert calls['write'] >= 1 and calls['read'] >= 1
        transport.close()
        await proto.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_closed_connections_leave_no_protocol_or_fd_behind(loop):
    async def main():
        server, port, client_ctx = await tls_server(Echo)
        await asyncio.sleep(0.05)
        gc.collect()
        before = open_fds()
        refs = []
        for _ in range(20):
            transport, proto = await tls_connect(port, client_ctx)
            refs.append(weakref.ref(transport._ssl_protocol))
            transport.write(b'ping')
            while bytes(proto.data) != b'ping':
                await asyncio.sleep(0.001)
            transport.close()
            await proto.lost
            del transport, proto
        for _ in range(20):
            await asyncio.sleep(0.01)
            gc.collect()
            if not any(r() for r in refs) and open_fds() == before:
                break
        assert [r for r in refs if r() is not None] == []
        assert open_fds() <= before
        server.close()
        await server.wait_closed()

    run(loop, main())


@pytest.mark.skipif(not on_ferroloop(), reason="ferroloop's native_tls switch")
def test_native_tls_switch_selects_the_ssl_protocol_class():
    import ferroloop
    from ferroloop._tls import SSLProtocol as NativeSSLProtocol

    for native, expected in ((True, NativeSSLProtocol), (False, sslproto.SSLProtocol)):
        loop = ferroloop.new_event_loop(native_tls=native)
        try:
            async def main():
                server, port, client_ctx = await tls_server(Echo)
                transport, proto = await tls_connect(port, client_ctx)
                kind = type(transport._ssl_protocol)
                transport.write(b'both work')
                while bytes(proto.data) != b'both work':
                    await asyncio.sleep(0.01)
                transport.close()
                await proto.lost
                server.close()
                await server.wait_closed()
                return kind

            assert run(loop, main()) is expected
        finally:
            loop.close()


def test_shutdown_timeout_force_closes_with_timeout_error(loop):
    async def main():
        peers = []

        class Deaf(ServerSide):
            def connection_made(self, transport):
                super().connection_made(transport)
                # Paused, the server's TLS layer never reads the client's
                # close_notify, so never answers it.
                transport.pause_reading()

        server, port, client_ctx = await tls_server(lambda: Deaf(peers))
        transport, proto = await tls_connect(port, client_ctx, ssl_shutdown_timeout=0.3)
        while not peers:
            await asyncio.sleep(0.01)
        transport.close()
        exc = await asyncio.wait_for(proto.lost, 10)
        assert isinstance(exc, asyncio.TimeoutError)
        assert str(exc) == 'SSL shutdown timed out'
        assert proto.events == ['made', 'lost']
        peers[0].transport.abort()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_a_server_side_start_tls_with_a_buffered_protocol(loop):
    payload = os.urandom(200_000)

    async def main():
        server_ctx, client_ctx = tls_contexts()
        got = loop.create_future()

        class Upgrader(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                assert data == b'STARTTLS'
                self.transport.pause_reading()  # nothing more in plain text
                loop.create_task(self.upgrade())

            async def upgrade(self):
                self.transport.write(b'OK')
                app = BufferedRecorder(4096)
                tls = await loop.start_tls(self.transport, app, server_ctx, server_side=True)
                assert tls.get_protocol() is app
                while len(app.data) < len(payload):
                    await asyncio.sleep(0.01)
                got.set_result(bytes(app.data))
                tls.close()

        server = await loop.create_server(Upgrader, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        writer.write(b'STARTTLS')
        assert await reader.readexactly(2) == b'OK'
        await writer.start_tls(client_ctx, server_hostname='localhost')
        writer.write(payload)
        await writer.drain()
        assert await got == payload
        assert await reader.read() == b''
        writer.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_reads_and_writes_leak_no_memory(loop):
    # Every TLS read slices the receive buffer; the slice's bounds must be
    # released (pyo3's PySlice::new leaked them: one int per read).
    import sys

    async def main():
        server, port, client_ctx = await tls_server(Echo)
        reader, writer = await asyncio.open_connection(
            '127.0.0.1', port, ssl=client_ctx, server_hostname='localhost')

        async def rounds(n):
            for _ in range(n):
                writer.write(b'x' * 1000)
                await reader.readexactly(1000)

        await rounds(300)
        gc.collect()
        before = sys.getallocatedblocks()
        await rounds(3000)
        gc.collect()
        grown = sys.getallocatedblocks() - before
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return grown

    # 6000 reads (both ends): a leak per read would show as thousands.
    assert run(loop, main()) < 300
