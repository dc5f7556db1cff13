"""The networking loop methods around the transports: connection options
(happy eyeballs, all_errors), servers (several hosts, reuse_port,
keep_alive, cleanup_socket, abort_clients), TLS (create_connection /
create_server with ssl=, start_tls, extra info), sendfile, the datagram
sock_* methods and DNS.  Every test also passes on stock asyncio
(FERROLOOP_TEST_TARGET=asyncio).
"""
import asyncio
import contextvars
import errno
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import warnings

import pytest

from conftest import has_ipv6_loopback, needs_certs, open_fds, tls_contexts


def run(loop, coro, timeout=20):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))



class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def echo_once(reader, writer, payload=b'ping'):
    writer.write(payload)
    await writer.drain()
    return await reader.readexactly(len(payload))


# ------------------------------------------------------------ connecting

def test_happy_eyeballs_falls_over_to_the_next_address(loop):
    # The first address never answers (a listener whose backlog is full
    # drops SYNs); with happy_eyeballs_delay the second attempt starts
    # meanwhile and wins.
    async def main():
        black_hole = socket.socket()
        black_hole.bind(('127.0.0.1', 0))
        black_hole.listen(0)
        fillers = []
        for _ in range(4):  # fill the accept queue
            f = socket.socket()
            f.setblocking(False)
            try:
                f.connect(black_hole.getsockname())
            except BlockingIOError:
                pass
            fillers.append(f)
        server = await loop.create_server(Echo, '127.0.0.1', 0)
        good = server.sockets[0].getsockname()
        infos = [(socket.AF_INET, socket.SOCK_STREAM, 6, '', black_hole.getsockname()),
                 (socket.AF_INET, socket.SOCK_STREAM, 6, '', good)]

        async def fake_getaddrinfo(*args, **kwargs):
            return infos
        loop.getaddrinfo = fake_getaddrinfo
        try:
            reader, writer = await asyncio.open_connection(
                'example.invalid', 1, happy_eyeballs_delay=0.05, interleave=1)
            assert writer.get_extra_info('peername') == good
            assert await echo_once(reader, writer) == b'ping'
            writer.close()
            await writer.wait_closed()
        finally:
            del loop.getaddrinfo
            for f in fillers:
                f.close()
            black_hole.close()
            server.close()
            await server.wait_closed()

    run(loop, main())


@pytest.mark.skipif(sys.version_info < (3, 12), reason="all_errors is new in 3.12")
def test_all_errors_raises_an_exception_group(loop):
    async def main():
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]  # closed: refused
        with pytest.raises(ExceptionGroup) as info:
            await loop.create_connection(asyncio.Protocol, '127.0.0.1', port, all_errors=True)
        assert all(isinstance(e, ConnectionRefusedError) for e in info.value.exceptions)
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, '127.0.0.1', port)

    run(loop, main())


def test_connection_refused_leaves_no_fd(loop):
    before = open_fds()

    async def main():
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        for _ in range(20):
            with pytest.raises(ConnectionRefusedError):
                await loop.create_connection(asyncio.Protocol, '127.0.0.1', port)

    run(loop, main())
    assert open_fds() == before


# --------------------------------------------------------------- servers

@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_server_on_several_hosts_ipv4_and_ipv6(loop):
    async def main():
        server = await asyncio.start_server(
            lambda r, w: echo_client(r, w), ['127.0.0.1', '::1'], 0)
        assert isinstance(server, asyncio.AbstractServer)
        families = sorted(s.family for s in server.sockets)
        assert families == sorted([socket.AF_INET, socket.AF_INET6])
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]
            reader, writer = await asyncio.open_connection(host, port)
            assert await echo_once(reader, writer, host.encode()) == host.encode()
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()

    async def echo_client(reader, writer):
        while data := await reader.read(100):
            writer.write(data)
        writer.close()

    run(loop, main())


def test_reuse_port_lets_two_servers_share_a_port(loop):
    if not hasattr(socket, 'SO_REUSEPORT'):
        pytest.skip("no SO_REUSEPORT")

    async def main():
        first = await loop.create_server(Echo, '127.0.0.1', 0, reuse_port=True)
        port = first.sockets[0].getsockname()[1]
        second = await loop.create_server(Echo, '127.0.0.1', port, reuse_port=True)
        assert second.sockets[0].getsockname()[1] == port
        for s in (first, second):
            assert s.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
            s.close()
            await s.wait_closed()

    run(loop, main())


def test_server_api_start_serving_later_and_serve_forever(loop):
    async def main():
        server = await loop.create_server(Echo, '127.0.0.1', 0, start_serving=False)
        assert not server.is_serving()
        assert server.get_loop() is loop
        await server.start_serving()
        assert server.is_serving()
        port = server.sockets[0].getsockname()[1]
        forever = asyncio.ensure_future(server.serve_forever())
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        assert await echo_once(reader, writer) == b'ping'
        writer.close()
        forever.cancel()
        with pytest.raises(asyncio.CancelledError):
            await forever
        assert not server.is_serving()
        await server.wait_closed()

    run(loop, main())


@pytest.mark.skipif(sys.version_info < (3, 13), reason="keep_alive is new in 3.13")
def test_keep_alive_is_set_on_accepted_sockets(loop):
    async def main():
        made = loop.create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport):
                sock = transport.get_extra_info('socket')
                made.set_result(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))
                transport.close()

        server = await loop.create_server(Probe, '127.0.0.1', 0, keep_alive=True)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection('127.0.0.1', port)
        assert await made
        writer.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_a_burst_of_connections_is_accepted_whole(loop):
    # All connect before the server runs: one readiness report for many
    # connections, and the listener must report the ones that follow.
    async def main():
        server = await loop.create_server(Echo, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        clients = []
        for i in range(40):
            c = socket.create_connection(('127.0.0.1', port))
            c.setblocking(False)
            clients.append(c)
        for i, c in enumerate(clients):
            await loop.sock_sendall(c, b'%d;' % i)
        for i, c in enumerate(clients):
            want = b'%d;' % i
            got = b''
            while len(got) < len(want):
                got += await loop.sock_recv(c, 100)
            assert got == want
            c.close()
        server.close()
        await server.wait_closed()

    fds = open_fds()
    run(loop, main())
    assert open_fds() == fds


def test_accepted_connections_are_set_up_as_asyncio_does(loop):
    var = contextvars.ContextVar('var', default='server')

    async def main():
        seen = []

        class Probe(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport
                sock = transport.get_extra_info('socket')
                seen.append((var.get(), sock.gettimeout(), sock.family, sock.type,
                             sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0,
                             transport.get_extra_info('peername'),
                             transport.get_extra_info('sockname')))
                # Callbacks run in copies of the server's context: this
                # reaches neither data_received nor the next connection.
                var.set('connection %d' % len(seen))

            def data_received(self, data):
                self.transport.write(var.get().encode())

        var.set('create_server')
        server = await loop.create_server(Probe, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        var.set('main')
        replies = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection('127.0.0.1', port)
            writer.write(b'?')
            replies.append(await reader.read(100))
            assert (seen[-1][5][:2]) == writer.get_extra_info('sockname')[:2]
            writer.close()
        server.close()
        await server.wait_closed()
        return seen, replies

    seen, replies = run(loop, main())
    assert replies == [b'create_server', b'create_server']
    for ctx_value, timeout, family, type_, nodelay, peer, sockname in seen:
        assert ctx_value == 'create_server'
        assert timeout == 0.0  # non-blocking
        assert family == socket.AF_INET and type_ == socket.SOCK_STREAM
        assert nodelay
        assert sockname[0] == '127.0.0.1'


def test_a_failing_protocol_factory_drops_only_that_connection(loop):
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

    async def main():
        calls = 0

        def factory():
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ValueError("no protocol")
            return Echo()

        server = await loop.create_server(factory, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        # The first connection is dropped (its socket closed when freed).
        try:
            assert await reader.read(10) == b''
        except ConnectionResetError:
            pass
        writer.close()
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        assert await echo_once(reader, writer) == b'ping'
        writer.close()
        server.close()
        await server.wait_closed()

    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ResourceWarning)  # the dropped socket
        run(loop, main())
    # asyncio reports it in debug mode only.
    assert errors == []


EMFILE_SCRIPT = r'''
import asyncio, os, resource, socket, sys
if os.environ.get("FERROLOOP_TEST_TARGET") == "asyncio":
    loop = asyncio.new_event_loop()
else:
    import ferroloop
    loop = ferroloop.new_event_loop()
errors, made = [], []
loop.set_exception_handler(lambda lp, ctx: errors.append((ctx['message'], ctx['exception'].errno)))

class Probe(asyncio.Protocol):
    def connection_made(self, transport):
        made.append(1)
        transport.close()

async def main():
    server = await loop.create_server(Probe, '127.0.0.1', 0)
    client = socket.create_connection(server.sockets[0].getsockname())
    hog = []
    try:
        while True:
            hog.append(os.dup(0))  # no descriptor left for accept()
    except OSError:
        pass
    await asyncio.sleep(0.1)
    for fd in hog:
        os.close(fd)
    for _ in range(300):  # accepting resumes after ACCEPT_RETRY_DELAY (1 s)
        if made:
            break
        await asyncio.sleep(0.01)
    client.close()
    server.close()
    await server.wait_closed()

resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
loop.run_until_complete(main())
print(len(made), sorted(set(errors)))
'''


def test_out_of_descriptors_is_logged_and_accepting_resumes():
    # In a child process: the descriptor limit is lowered there only.
    out = subprocess.run([sys.executable, '-c', EMFILE_SCRIPT], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    made, errors = out.stdout.split(' ', 1)
    assert made == '1'
    assert errors.strip() == repr([('socket.accept() out of system resource', errno.EMFILE)])


def test_unix_server_peername_of_an_unbound_client(loop):
    async def main(path):
        peer = loop.create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport):
                peer.set_result(transport.get_extra_info('peername'))
                transport.close()

        server = await loop.create_unix_server(Probe, path)
        _, writer = await asyncio.open_unix_connection(path)
        got = await peer
        writer.close()
        server.close()
        await server.wait_closed()
        return got

    with tempfile.TemporaryDirectory() as d:
        assert run(loop, main(os.path.join(d, 's'))) == ''


@pytest.mark.skipif(sys.version_info < (3, 13), reason="abort_clients is new in 3.13")
def test_abort_clients_drops_connections(loop):
    async def main():
        server = await loop.create_server(Echo, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        assert await echo_once(reader, writer) == b'ping'
        server.close()
        server.abort_clients()
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await reader.readexactly(1)
        writer.close()
        await server.wait_closed()

    run(loop, main())


@pytest.mark.skipif(sys.version_info < (3, 13), reason="cleanup_socket is new in 3.13")
@pytest.mark.parametrize('cleanup', [True, False])
def test_unix_server_cleanup_socket(loop, cleanup):
    async def main(path):
        server = await loop.create_unix_server(Echo, path, cleanup_socket=cleanup)
        reader, writer = await asyncio.open_unix_connection(path)
        assert await echo_once(reader, writer) == b'ping'
        writer.close()
        server.close()
        await server.wait_closed()
        return os.path.exists(path)

    with tempfile.TemporaryDirectory() as d:
        assert run(loop, main(os.path.join(d, 's'))) is (not cleanup)


def test_unix_server_replaces_a_stale_socket_file(loop):
    async def main(path):
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(path)
        stale.close()  # the file stays behind
        assert os.path.exists(path)
        server = await loop.create_unix_server(Echo, path)
        reader, writer = await asyncio.open_unix_connection(path)
        assert await echo_once(reader, writer) == b'ping'
        writer.close()
        server.close()
        await server.wait_closed()

    with tempfile.TemporaryDirectory() as d:
        run(loop, main(os.path.join(d, 's')))


# ------------------------------------------------------------------- TLS

@needs_certs
def test_tls_connection_and_extra_info(loop):
    async def main():
        server_ctx, client_ctx = tls_contexts()
        server = await asyncio.start_server(tls_echo, '127.0.0.1', 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            '127.0.0.1', port, ssl=client_ctx, server_hostname='localhost')
        payload = os.urandom(300_000)
        assert await echo_once(reader, writer, payload) == payload
        cert = writer.get_extra_info('peercert')
        assert dict(x[0] for x in cert['subject'])['commonName'] == 'localhost'
        assert writer.get_extra_info('cipher')[1].startswith('TLS')
        assert isinstance(writer.get_extra_info('ssl_object'), ssl.SSLObject)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    async def tls_echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    run(loop, main())


@needs_certs
def test_tls_wrong_hostname_fails_the_handshake(loop):
    async def main():
        server_ctx, client_ctx = tls_contexts()
        server = await loop.create_server(Echo, '127.0.0.1', 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection('127.0.0.1', port, ssl=client_ctx,
                                          server_hostname='not-localhost')
        server.close()
        await server.wait_closed()

    run(loop, main())


@needs_certs
def test_start_tls_upgrades_a_plain_connection(loop):
    async def main():
        server_ctx, client_ctx = tls_contexts()
        upgraded = loop.create_future()

        async def handle(reader, writer):
            assert await reader.readline() == b'STARTTLS\n'
            writer.write(b'GO\n')
            await writer.drain()
            await writer.start_tls(server_ctx)
            line = await reader.readline()
            writer.write(line.upper())
            await writer.drain()
            upgraded.set_result(writer.get_extra_info('ssl_object') is not None)
            writer.close()

        server = await asyncio.start_server(handle, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        writer.write(b'STARTTLS\n')
        assert await reader.readline() == b'GO\n'
        await writer.start_tls(client_ctx, server_hostname='localhost')
        writer.write(b'secret\n')
        assert await reader.readline() == b'SECRET\n'
        assert await upgraded
        writer.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


# -------------------------------------------------------------- sendfile

def test_sendfile_over_a_transport_and_sock_sendfile(loop, tmp_path):
    payload = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / 'data.bin'
    path.write_bytes(payload)

    async def main():
        received = bytearray()
        done = loop.create_future()

        class Sink(asyncio.Protocol):
            def data_received(self, data):
                received.extend(data)

            def eof_received(self):
                done.set_result(None)

        server = await loop.create_server(Sink, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(asyncio.Protocol, '127.0.0.1', port)
        with open(path, 'rb') as f:
            sent = await loop.sendfile(transport, f, offset=17, count=2 * 1024 * 1024)
            assert sent == 2 * 1024 * 1024
            assert f.tell() == 17 + sent
        transport.write_eof()
        await done
        assert bytes(received) == payload[17:17 + sent]
        transport.close()

        # sock_sendfile on a plain socket.
        received.clear()
        done2 = loop.create_future()

        class Sink2(Sink):
            def eof_received(self):
                done2.set_result(None)

        server.close()
        await server.wait_closed()
        server = await loop.create_server(Sink2, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ('127.0.0.1', port))
        with open(path, 'rb') as f:
            assert await loop.sock_sendfile(sock, f) == len(payload)
        sock.shutdown(socket.SHUT_WR)
        await done2
        sock.close()
        assert bytes(received) == payload
        server.close()
        await server.wait_closed()

    run(loop, main())


# -------------------------------------------------- datagram sock_* and DNS

def test_sock_sendto_recvfrom_and_recvfrom_into(loop):
    async def main():
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (a, b):
            s.bind(('127.0.0.1', 0))
            s.setblocking(False)
        try:
            waiting = asyncio.ensure_future(loop.sock_recvfrom(b, 100))
            await asyncio.sleep(0.01)
            assert not waiting.done()
            assert await loop.sock_sendto(a, b'hello', b.getsockname()) == 5
            assert await waiting == (b'hello', a.getsockname())
            buf = bytearray(10)
            await loop.sock_sendto(a, b'into', b.getsockname())
            assert await loop.sock_recvfrom_into(b, buf) == (4, a.getsockname())
            assert bytes(buf[:4]) == b'into'
            # Cancelling a waiting receive leaves the socket usable.
            waiting = asyncio.ensure_future(loop.sock_recvfrom(b, 100))
            await asyncio.sleep(0.01)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await loop.sock_sendto(a, b'again', b.getsockname())
            assert await loop.sock_recvfrom(b, 100) == (b'again', a.getsockname())
        finally:
            a.close()
            b.close()

    run(loop, main())


def test_getaddrinfo_and_getnameinfo_match_the_socket_module(loop):
    async def main():
        got = await loop.getaddrinfo('127.0.0.1', 80, type=socket.SOCK_STREAM)
        assert got == socket.getaddrinfo('127.0.0.1', 80, type=socket.SOCK_STREAM)
        flags = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
        assert await loop.getnameinfo(('127.0.0.1', 8080), flags) == ('127.0.0.1', '8080')
        with pytest.raises(socket.gaierror):
            await loop.getaddrinfo('no-such-host.invalid', 80)

    run(loop, main())


def test_allow_broadcast_sets_so_broadcast(loop):
    async def main():
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=('127.0.0.1', 0), allow_broadcast=True)
        sock = transport.get_extra_info('socket')
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
        transport.close()

    run(loop, main())
