"""loop.sock_recv, sock_recv_into and sock_sendall: native coroutines on
ferroloop, asyncio's `async def` methods elsewhere.  Every test passes on
stock asyncio too (FERROLOOP_TEST_TARGET=asyncio).
"""
import asyncio
import socket
import threading

import pytest

from conftest import on_ferroloop, open_fds


def run(loop, coro, timeout=20):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def test_recv_waits_for_data_and_sees_eof(loop, sockpair):
    a, b = sockpair

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        assert not task.done()
        b.send(b'hello')
        assert await task == b'hello'
        b.send(b'x' * 50)
        assert await loop.sock_recv(a, 10) == b'x' * 10  # at most n
        assert await loop.sock_recv(a, 0) == b''
        assert await loop.sock_recv(a, 1000) == b'x' * 40
        b.shutdown(socket.SHUT_WR)
        assert await loop.sock_recv(a, 100) == b''

    run(loop, main())


def test_recv_into(loop, sockpair):
    a, b = sockpair

    async def main():
        buf = bytearray(8)
        task = asyncio.ensure_future(loop.sock_recv_into(a, buf))
        await asyncio.sleep(0.01)
        b.send(b'0123456789')
        assert await task == 8 and buf == b'01234567'
        view = memoryview(buf)[2:4]
        assert await loop.sock_recv_into(a, view) == 2 and buf == b'01894567'

    run(loop, main())


def test_sendall_big_data_to_a_slow_reader(loop, sockpair):
    a, b = sockpair
    payload = bytes(range(256)) * (32 * 1024)  # 8 MiB
    got = bytearray()

    def reader():
        b.setblocking(True)
        while len(got) < len(payload):
            chunk = b.recv(65536)
            if not chunk:
                break
            got.extend(chunk)

    async def main():
        t = threading.Thread(target=reader)
        t.start()
        await loop.sock_sendall(a, bytearray(payload))
        assert await loop.sock_sendall(a, b'') is None
        await loop.run_in_executor(None, t.join)

    run(loop, main())
    assert got == payload


def test_cancelled_recv_leaves_the_socket_usable(loop, sockpair):
    a, b = sockpair

    async def main():
        task = loop.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)
        assert not loop.remove_reader(a.fileno())  # no reader left behind
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loop.sock_recv(a, 100), 0.02)
        b.send(b'after')
        assert await loop.sock_recv(a, 100) == b'after'

    run(loop, main())


def test_cancelled_sendall_removes_its_writer(loop, sockpair):
    a, b = sockpair

    async def main():
        task = loop.create_task(loop.sock_sendall(a, b'z' * (16 << 20)))
        await asyncio.sleep(0.01)
        assert not task.done()  # nobody reads: it waits
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)
        assert not loop.remove_writer(a.fileno())

    run(loop, main())


def test_they_are_coroutines(loop, sockpair):
    a, b = sockpair
    coro = loop.sock_recv(a, 1)
    assert asyncio.iscoroutine(coro)
    coro.close()  # never started: nothing to clean up

    fresh = loop.sock_recv(a, 1)
    with pytest.raises(ZeroDivisionError):
        fresh.throw(ZeroDivisionError)

    async def main():
        b.send(b'!')
        task = loop.create_task(loop.sock_recv(a, 1))
        assert await task == b'!'
        again = loop.sock_recv(a, 1)
        b.send(b'?')
        assert await again == b'?'
        with pytest.raises(RuntimeError, match='cannot reuse already awaited coroutine'):
            await again

    run(loop, main())


def test_errors_are_raised_when_awaited(loop, sockpair):
    a, b = sockpair
    ssl = pytest.importorskip('ssl')
    blocking = socket.socket()

    async def main():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        tls = ctx.wrap_socket(socket.socket(), do_handshake_on_connect=False)
        try:
            coro = loop.sock_recv(tls, 10)  # no error yet
            with pytest.raises(TypeError, match='SSLSocket'):
                await coro
        finally:
            tls.close()
        loop.set_debug(True)
        try:
            coro = loop.sock_sendall(blocking, b'x')
            with pytest.raises(ValueError, match='must be non-blocking'):
                await coro
        finally:
            loop.set_debug(False)
        b.close()
        with pytest.raises(OSError):
            for _ in range(100):
                await loop.sock_sendall(a, b'y' * 65536)

    try:
        run(loop, main())
    finally:
        blocking.close()


def test_fd_of_a_transport_is_refused_only_when_waiting(loop):
    async def main():
        peers = []  # keep the server's writers (3.12+ closes them when collected)
        server = await asyncio.start_server(lambda r, w: peers.append(w), '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        sock = writer.get_extra_info('socket')._sock
        with pytest.raises(RuntimeError, match='is used by transport'):
            await loop.sock_recv(sock, 10)
        writer.close()
        for w in peers:
            w.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_reset_by_peer(loop):
    async def main():
        srv = socket.socket()
        srv.bind(('127.0.0.1', 0))
        srv.listen()
        srv.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, srv.getsockname())
        conn, _ = await loop.sock_accept(srv)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\x01\x00\x00\x00\x00\x00\x00\x00')
        task = loop.create_task(loop.sock_recv(client, 10))
        await asyncio.sleep(0.01)
        conn.close()  # RST
        with pytest.raises(ConnectionResetError):
            await task
        client.close()
        srv.close()

    before = open_fds()
    run(loop, main())
    assert open_fds() == before


def test_blocking_socket_and_subclass_use_the_socket_methods(loop, sockpair):
    a, b = sockpair
    calls = []

    class Traced(socket.socket):
        def recv(self, n):
            calls.append(n)
            return super().recv(n)

    async def main():
        b.setblocking(True)
        a.send(b'ping')
        assert await loop.sock_recv(b, 10) == b'ping'  # data there: no wait
        s1, s2 = socket.socketpair()
        traced = Traced(fileno=s1.detach())
        traced.setblocking(False)
        s2.send(b'pong')
        assert await loop.sock_recv(traced, 7) == b'pong'
        assert calls == [7]
        traced.close()
        s2.close()
        with pytest.raises(OSError):
            await loop.sock_sendall(traced, b'')  # closed socket: EBADF

    run(loop, main())


@pytest.mark.skipif(not on_ferroloop(),
                    reason="asyncio's stale reader, removed on cancel, takes the reused fd's transport with it")
def test_cancelled_waiter_does_not_disturb_a_transport_on_the_reused_fd(loop):
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        waiter = loop.create_task(loop.sock_recv(a, 10))
        await asyncio.sleep(0.01)
        a.close()  # closed while a sock_recv waits on it (fd may be reused)
        c, d = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=c)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        d.sendall(b'still works\n')
        assert await asyncio.wait_for(reader.readline(), 5) == b'still works\n'
        writer.close()
        b.close()
        d.close()

    run(loop, main())
