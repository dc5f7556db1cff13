"""loop.sock_recv, sock_recv_into, sock_sendall, sock_recvfrom,
sock_recvfrom_into, sock_sendto, sock_accept and sock_connect: native
coroutines on ferroloop, asyncio's `async def` methods elsewhere.  Every
test passes on stock asyncio too (FERROLOOP_TEST_TARGET=asyncio).
"""
import array
import contextlib
import gc
import errno as errno_mod
import asyncio
import os
import re
import socket
import tempfile
import threading
import warnings

import pytest

from conftest import has_ipv6_loopback, on_ferroloop, open_fds


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


def test_a_sock_call_never_awaited_warns_like_a_coroutine(loop, sockpair):
    a, _ = sockpair

    async def main():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            loop.sock_recv(a, 10)  # the forgotten await
            loop.sock_sendall(a, b'x').close()  # closed unstarted: fine
            await loop.sock_sendall(a, b'y')
            gc.collect()
        return [str(w.message) for w in caught if w.category is RuntimeWarning]

    messages = run(loop, main())
    assert len(messages) == 1
    assert re.fullmatch(r"coroutine '\w+\.sock_recv' was never awaited", messages[0])


@pytest.mark.parametrize('method', ['sock_recv_into', 'sock_recvfrom_into'])
@pytest.mark.parametrize('buf', [b'abc', 'abc', None])
def test_into_a_read_only_buffer_is_the_socket_modules_type_error(loop, sockpair, method, buf):
    a, _ = sockpair
    name = method[len('sock_'):]
    what = 'None' if buf is None else type(buf).__name__
    expected = rf'{name}\(\) argument 1 must be read-write bytes-like object, not {what}$'
    if buf is None and method == 'sock_recvfrom_into':
        expected = r"object of type 'NoneType' has no len\(\)"  # asyncio sizes it first
    with pytest.raises(TypeError, match=expected):
        run(loop, getattr(loop, method)(a, buf))


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


# -- datagrams: sock_recvfrom, sock_recvfrom_into, sock_sendto ---------------

@contextlib.contextmanager
def _udp_pair(family=socket.AF_INET, host='127.0.0.1', cls=socket.socket):
    """Two bound non-blocking datagram sockets, closed afterwards."""
    with cls(family, socket.SOCK_DGRAM) as a, cls(family, socket.SOCK_DGRAM) as b:
        for s in (a, b):
            s.bind((host, 0))
            s.setblocking(False)
        yield a, b


def test_udp_datagrams_and_the_addresses_the_socket_module_gives(loop):
    async def main():
        waiting = loop.create_task(loop.sock_recvfrom(b, 100))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        assert await loop.sock_sendto(a, b'hello', b.getsockname()) == 5
        data, addr = await waiting
        assert (data, addr) == (b'hello', a.getsockname())
        assert type(addr) is tuple and type(addr[0]) is str and type(addr[1]) is int
        # At most bufsize bytes; the rest of the datagram is dropped.
        await loop.sock_sendto(a, bytearray(b'0123456789'), b.getsockname())
        assert await loop.sock_recvfrom(b, 4) == (b'0123', a.getsockname())
        # Empty datagrams, both ways.
        assert await loop.sock_sendto(a, b'', b.getsockname()) == 0
        assert await loop.sock_recvfrom(b, 10) == (b'', a.getsockname())
        # recvfrom_into: nbytes 0 is the whole buffer, else at most nbytes.
        buf = bytearray(6)
        await loop.sock_sendto(a, memoryview(b'abcdefgh'), b.getsockname())
        assert await loop.sock_recvfrom_into(b, buf) == (6, a.getsockname())
        assert buf == b'abcdef'
        await loop.sock_sendto(a, b'xyz', b.getsockname())
        assert await loop.sock_recvfrom_into(b, buf, 2) == (2, a.getsockname())
        assert buf == b'xycdef'
        # A typed buffer: asyncio passes len(buf) -- items, not bytes.
        ints = array.array('i', [0, 0])
        await loop.sock_sendto(a, b'\x01' * 8, b.getsockname())
        assert await loop.sock_recvfrom_into(b, ints) == (2, a.getsockname())
        # A host name goes through the socket module's resolution.
        await loop.sock_sendto(a, b'named', ('localhost', b.getsockname()[1]))
        assert await loop.sock_recvfrom(b, 10) == (b'named', a.getsockname())

    with _udp_pair() as (a, b):
        run(loop, main())


@pytest.mark.skipif(not has_ipv6_loopback(), reason='no IPv6 loopback on this machine')
def test_udp_ipv6_addresses_are_4_tuples(loop):
    async def main():
        await loop.sock_sendto(a, b'six', b.getsockname())
        data, addr = await loop.sock_recvfrom(b, 10)
        assert data == b'six' and addr == a.getsockname() and len(addr) == 4
        await loop.sock_sendto(a, b'two', b.getsockname()[:2])  # a 2-tuple is fine too
        assert await loop.sock_recvfrom(b, 10) == (b'two', a.getsockname())

    with _udp_pair(socket.AF_INET6, '::1') as (a, b):
        run(loop, main())


def test_unix_datagram_addresses(loop):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'dgram')
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(path)
        unbound = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        abstract.bind(b'\0ferroloop-sock-test-%d' % os.getpid())
        for s in (server, unbound, abstract):
            s.setblocking(False)
        ref_a, ref_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)

        async def main():
            assert await loop.sock_sendto(unbound, b'anon', path) == 4
            data, addr = await loop.sock_recvfrom(server, 10)
            ref_a.send(b'x')
            expected_unbound = ref_b.recvfrom(10)[1]  # what the socket module says
            assert (data, addr) == (b'anon', expected_unbound)
            await loop.sock_sendto(abstract, b'abs', path)
            assert await loop.sock_recvfrom(server, 10) == (b'abs', abstract.getsockname())
            await loop.sock_sendto(server, b'back', abstract.getsockname())
            assert await loop.sock_recvfrom(abstract, 10) == (b'back', path)

        try:
            run(loop, main())
        finally:
            for s in (server, unbound, abstract, ref_a, ref_b):
                s.close()


def test_datagram_errors_come_when_awaited(loop):
    async def main():
        coro = loop.sock_recvfrom(b, -1)
        with pytest.raises(ValueError, match='negative buffersize in recvfrom'):
            await coro
        with pytest.raises(ValueError, match='negative buffersize in recvfrom_into'):
            await loop.sock_recvfrom_into(b, bytearray(4), -1)
        with pytest.raises(ValueError, match='nbytes is greater than the length of the buffer'):
            await loop.sock_recvfrom_into(b, bytearray(4), 5)
        with pytest.raises(TypeError, match='bytes-like object is required'):
            await loop.sock_sendto(a, 'text', b.getsockname())
        with pytest.raises(OverflowError, match='port must be 0-65535'):
            await loop.sock_sendto(a, b'x', ('127.0.0.1', 70000))
        with pytest.raises(TypeError, match='must be tuple'):
            await loop.sock_sendto(a, b'x', 'not an address')
        with pytest.raises(TypeError):
            await loop.sock_recvfrom(b, 'ten')
        # sock_recv's size too is checked when awaited (by sock.recv).
        coro = loop.sock_recv(b, -1)
        with pytest.raises(ValueError, match='negative buffersize in recv'):
            await coro
        coro = loop.sock_recv(b, 'ten')
        with pytest.raises(TypeError):
            await coro
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.close()
        with pytest.raises(OSError):
            await loop.sock_sendto(closed, b'x', b.getsockname())

    with _udp_pair() as (a, b):
        run(loop, main())


def test_sendto_waits_for_room_and_cancelled_recvfrom_leaves_no_reader(loop):
    with tempfile.TemporaryDirectory() as tmp:
        a = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        a.bind(os.path.join(tmp, 'a'))
        b.bind(os.path.join(tmp, 'b'))
        a.setblocking(False)
        b.setblocking(False)

        async def main():
            sent = 0
            while True:  # fill the receiver's queue
                try:
                    a.sendto(b'f' * 1000, b.getsockname())
                    sent += 1
                except BlockingIOError:
                    break
            writer = loop.create_task(loop.sock_sendto(a, b'last', b.getsockname()))
            await asyncio.sleep(0.01)
            assert not writer.done()
            for _ in range(sent):
                assert await loop.sock_recvfrom(b, 2000) == (b'f' * 1000, a.getsockname())
            assert await writer == 4
            assert await loop.sock_recvfrom(b, 10) == (b'last', a.getsockname())
            await asyncio.sleep(0)
            assert not loop.remove_writer(a.fileno())

            reader = loop.create_task(loop.sock_recvfrom(b, 10))
            into = loop.create_task(loop.sock_recvfrom_into(b, bytearray(10)))
            await asyncio.sleep(0.01)
            reader.cancel()
            into.cancel()
            for t in (reader, into):
                with pytest.raises(asyncio.CancelledError):
                    await t
            await asyncio.sleep(0)
            assert not loop.remove_reader(b.fileno())
            a.sendto(b'after', b.getsockname())
            assert (await loop.sock_recvfrom(b, 10))[0] == b'after'

        try:
            run(loop, main())
        finally:
            a.close()
            b.close()


def test_datagram_socket_subclass_uses_its_methods(loop):
    calls = []

    class Traced(socket.socket):
        def recvfrom(self, n):
            calls.append(('recvfrom', n))
            return super().recvfrom(n)

        def sendto(self, *args):
            calls.append(('sendto', len(args)))
            return super().sendto(*args)

    async def main():
        waiting = loop.create_task(loop.sock_recvfrom(b, 10))
        await asyncio.sleep(0.01)
        assert await loop.sock_sendto(a, b'sub', b.getsockname()) == 3
        assert await waiting == (b'sub', a.getsockname())
        # The first try and the retry when the fd became readable.
        assert calls == [('recvfrom', 10), ('sendto', 2), ('recvfrom', 10)]

    with _udp_pair(cls=Traced) as (a, b):
        run(loop, main())


# -- sock_accept and sock_connect ---------------------------------------------

def test_accept_and_connect(loop):
    srv = socket.socket()
    srv.bind(('127.0.0.1', 0))
    srv.listen()
    srv.setblocking(False)

    async def main():
        accepting = loop.create_task(loop.sock_accept(srv))
        await asyncio.sleep(0.01)
        assert not accepting.done()
        client = socket.socket()
        client.setblocking(False)
        # A host name is resolved first, as asyncio does.
        assert await loop.sock_connect(client, ('localhost', srv.getsockname()[1])) is None
        conn, addr = await accepting
        assert addr == client.getsockname() and conn.getpeername() == addr
        assert conn.gettimeout() == 0  # non-blocking, as asyncio leaves it
        await loop.sock_sendall(client, b'hi')
        assert await loop.sock_recv(conn, 10) == b'hi'
        conn.close()
        client.close()

        # Cancelled while waiting: no reader left, the socket still accepts.
        accepting = loop.create_task(loop.sock_accept(srv))
        await asyncio.sleep(0.01)
        accepting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await accepting
        await asyncio.sleep(0)
        assert not loop.remove_reader(srv.fileno())
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, srv.getsockname())
        conn, _ = await loop.sock_accept(srv)
        conn.close()
        client.close()

    before = open_fds()
    try:
        run(loop, main())
    finally:
        srv.close()
    assert open_fds() == before - 1


def test_connect_refused_names_the_address(loop):
    free = socket.socket()
    free.bind(('127.0.0.1', 0))
    addr = free.getsockname()
    free.close()  # nobody listens there now

    async def main():
        client = socket.socket()
        client.setblocking(False)
        try:
            with pytest.raises(ConnectionRefusedError) as info:
                await loop.sock_connect(client, addr)
        finally:
            client.close()
        # Refused at once (the errno of connect) or while in progress
        # (SO_ERROR, with asyncio's message naming the address).
        assert info.value.errno == errno_mod.ECONNREFUSED
        if 'Connect call failed' in str(info.value):
            assert str(addr) in str(info.value)

    run(loop, main())


def test_unix_connect_and_accept(loop):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'sock')
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(path)
        srv.listen()
        srv.setblocking(False)

        async def main():
            client = socket.socket(socket.AF_UNIX)
            client.setblocking(False)
            await loop.sock_connect(client, path)
            conn, addr = await loop.sock_accept(srv)
            assert addr == ''  # an unbound client, as the socket module says
            await loop.sock_sendall(conn, b'unix')
            assert await loop.sock_recv(client, 10) == b'unix'
            conn.close()
            client.close()
            missing = socket.socket(socket.AF_UNIX)
            missing.setblocking(False)
            with pytest.raises(FileNotFoundError):
                await loop.sock_connect(missing, os.path.join(tmp, 'nothing'))
            missing.close()

        try:
            run(loop, main())
        finally:
            srv.close()


def test_connect_in_progress_then_cancelled_leaves_no_writer(loop):
    # A listener with a full backlog drops further SYNs: that connect stays
    # in progress (the fd not writable) until it is cancelled.
    srv = socket.socket()
    srv.bind(('127.0.0.1', 0))
    srv.listen(0)
    clients = []

    async def main():
        first = socket.socket()
        first.setblocking(False)
        clients.append(first)
        await loop.sock_connect(first, srv.getsockname())  # fills the backlog
        stuck = socket.socket()
        stuck.setblocking(False)
        clients.append(stuck)
        task = loop.create_task(loop.sock_connect(stuck, srv.getsockname()))
        await asyncio.sleep(0.05)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)
        assert not loop.remove_writer(stuck.fileno())

    try:
        run(loop, main())
    finally:
        for c in clients:
            c.close()
        srv.close()


def test_new_methods_are_coroutines_with_asyncio_checks(loop):
    ssl = pytest.importorskip('ssl')
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv = socket.socket()
    for coro in (loop.sock_recvfrom(udp, 1), loop.sock_recvfrom_into(udp, bytearray(1)),
                 loop.sock_sendto(udp, b'', ('127.0.0.1', 9)), loop.sock_accept(srv),
                 loop.sock_connect(srv, ('127.0.0.1', 9))):
        assert asyncio.iscoroutine(coro)
        coro.close()

    async def main():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls = ctx.wrap_socket(socket.socket(), do_handshake_on_connect=False, server_hostname='x')
        try:
            for coro in (loop.sock_accept(tls), loop.sock_connect(tls, ('127.0.0.1', 9)),
                         loop.sock_recvfrom(tls, 1), loop.sock_sendto(tls, b'', ('127.0.0.1', 9))):
                with pytest.raises(TypeError, match='SSLSocket'):
                    await coro
        finally:
            tls.close()
        loop.set_debug(True)
        try:
            for coro in (loop.sock_accept(srv), loop.sock_recvfrom(udp, 1),
                         loop.sock_connect(srv, ('127.0.0.1', 9))):
                with pytest.raises(ValueError, match='must be non-blocking'):
                    await coro
        finally:
            loop.set_debug(False)

    try:
        run(loop, main())
    finally:
        udp.close()
        srv.close()


def test_closing_a_waiting_sock_coroutine_after_the_loop_closed_is_silent(sockpair):
    # A task left waiting in sock_recv when its loop closes: closing its
    # coroutine later (garbage collection does) raises nothing, as asyncio's
    # coroutine does not.
    from conftest import new_loop

    a, _ = sockpair
    lp = new_loop()
    try:
        async def reader():
            return await lp.sock_recv(a, 10)

        coro = reader()
        task = lp.create_task(coro)
        lp.run_until_complete(asyncio.sleep(0.01))
        assert not task.done()
        task._log_destroy_pending = False
    finally:
        lp.close()
    coro.close()


def test_sock_sendall_on_a_socket_subclass_leaks_no_memory(loop):
    # Partial sends through a subclass's send() slice what is left; the
    # slice's bounds must be released (pyo3's PySlice::new leaked them).
    import sys

    class MySock(socket.socket):
        pass

    async def main():
        a, b = socket.socketpair()
        a = MySock(fileno=a.detach())
        a.setblocking(False)
        b.setblocking(False)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

        async def exchange(n):
            async def drain():
                got = 0
                while got < n * 100_000:
                    got += len(await loop.sock_recv(b, 4096))

            async def send():
                for _ in range(n):
                    await loop.sock_sendall(a, b'x' * 100_000)

            await asyncio.gather(send(), drain())

        await exchange(20)
        gc.collect()
        before = sys.getallocatedblocks()
        await exchange(200)  # thousands of partial sends
        gc.collect()
        a.close()
        b.close()
        return sys.getallocatedblocks() - before

    assert loop.run_until_complete(main()) < 300

