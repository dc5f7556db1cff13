"""Datagram transports (create_datagram_endpoint): UDP over IPv4 and IPv6,
Unix datagram sockets, flow control, errors and closing.  Native on
ferroloop; every test also passes on stock asyncio
(FERROLOOP_TEST_TARGET=asyncio) unless it says otherwise.
"""
import asyncio
import errno
import logging
import os
import socket
import sys
import tempfile

import pytest

from conftest import has_ipv6_loopback, on_ferroloop, open_fds


def run(loop, coro, timeout=20):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))



class Collect(asyncio.DatagramProtocol):
    """Records datagrams, errors and the connection's end."""

    def __init__(self, loop, want=1):
        self.loop = loop
        self.want = want
        self.got = []
        self.errors = []
        self.events = []
        self.done = loop.create_future()
        self.lost = loop.create_future()
        self.transport = None

    def connection_made(self, transport):
        self.events.append('made')
        self.transport = transport

    def datagram_received(self, data, addr):
        assert type(data) is bytes
        self.got.append((data, addr))
        if len(self.got) >= self.want and not self.done.done():
            self.done.set_result(None)

    def error_received(self, exc):
        self.errors.append(exc)
        if not self.done.done():
            self.done.set_result(None)

    def pause_writing(self):
        self.events.append('pause')

    def resume_writing(self):
        self.events.append('resume')

    def connection_lost(self, exc):
        self.events.append(('lost', exc))
        self.lost.set_result(exc)


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data.upper(), addr)


def plain_recvfrom(family, bind_to, send):
    """What the socket module's recvfrom() returns as the sender's address
    when `send(dest)` sends to a socket bound to `bind_to`."""
    with socket.socket(family, socket.SOCK_DGRAM) as r:
        r.bind(bind_to)
        send(r.getsockname())
        return r.recvfrom(100)[1]


def test_udp_echo_ipv4_addresses_as_the_socket_module_gives_them(loop):
    async def main():
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=('127.0.0.1', 0))
        addr = server.get_extra_info('sockname')
        client, proto = await loop.create_datagram_endpoint(
            lambda: Collect(loop, 3), local_addr=('127.0.0.1', 0))
        client.sendto(b'one', addr)
        client.sendto(bytearray(b'two'), addr)
        client.sendto(memoryview(b'xthreex')[1:-1], addr)
        await proto.done
        server.close()
        client.close()
        await proto.lost
        return proto.got, addr

    got, peer = run(loop, main())
    assert got == [(b'ONE', peer), (b'TWO', peer), (b'THREE', peer)]
    addr = got[0][1]
    assert type(addr) is tuple and type(addr[0]) is str and type(addr[1]) is int


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_udp_echo_ipv6_four_tuples(loop):
    async def main():
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=('::1', 0))
        addr = server.get_extra_info('sockname')
        client, proto = await loop.create_datagram_endpoint(
            lambda: Collect(loop, 2), local_addr=('::1', 0))
        client.sendto(b'six', addr)
        client.sendto(b'two', addr[:2])  # (host, port) is enough
        await proto.done
        server.close()
        client.close()
        return proto.got, addr

    got, peer = run(loop, main())
    assert got == [(b'SIX', peer), (b'TWO', peer)]
    assert len(peer) == 4


def test_sendto_host_names_and_odd_addresses_go_through_the_socket_module(loop):
    async def main():
        server, sproto = await loop.create_datagram_endpoint(
            lambda: Collect(loop, 2), local_addr=('127.0.0.1', 0))
        port = server.get_extra_info('sockname')[1]
        client, cproto = await loop.create_datagram_endpoint(
            lambda: Collect(loop), local_addr=('127.0.0.1', 0))
        client.sendto(b'by name', ('localhost', port))

        class Port(int):
            pass
        client.sendto(b'int subclass', ('127.0.0.1', Port(port)))
        await sproto.done
        # The socket module's own errors: a bad port is fatal to the
        # transport, as in asyncio (not an OSError).
        handler_calls = []
        loop.set_exception_handler(lambda lp, ctx: handler_calls.append(ctx))
        client.sendto(b'x', ('127.0.0.1', 70000))
        await cproto.lost
        server.close()
        return [d for d, _ in sproto.got], handler_calls

    got, calls = run(loop, main())
    assert got == [b'by name', b'int subclass']
    assert len(calls) == 1
    assert calls[0]['message'] == 'Fatal write error on datagram transport'
    assert isinstance(calls[0]['exception'], OverflowError)


def test_many_peers_each_get_their_own_replies(loop):
    # More peers than any small address cache holds, interleaved.
    async def main():
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=('127.0.0.1', 0))
        addr = server.get_extra_info('sockname')
        clients = []
        for _ in range(100):
            clients.append(await loop.create_datagram_endpoint(
                lambda: Collect(loop, 3), local_addr=('127.0.0.1', 0)))
        for rnd in range(3):
            for i, (tr, _) in enumerate(clients):
                tr.sendto(b'c%d-%d' % (i, rnd), addr)
            await asyncio.sleep(0.01)
        await asyncio.gather(*(p.done for _, p in clients))
        out = [[d for d, _ in p.got] for _, p in clients]
        for tr, _ in clients:
            tr.close()
        server.close()
        return out

    out = run(loop, main())
    for i, got in enumerate(out):
        assert sorted(got) == [b'C%d-%d' % (i, r) for r in range(3)]


def test_connected_endpoint_checks_the_address(loop):
    async def main():
        server, sproto = await loop.create_datagram_endpoint(
            lambda: Collect(loop, 3), local_addr=('127.0.0.1', 0))
        addr = server.get_extra_info('sockname')
        client, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=addr)
        assert client.get_extra_info('peername') == addr
        client.sendto(b'a')
        client.sendto(b'b', addr)
        client.sendto(b'c', list(addr)[0:1] and (addr[0], addr[1]))  # equal, not identical
        with pytest.raises(ValueError, match=r"Invalid address: must be None or \('127\.0\.0\.1', \d+\)"):
            client.sendto(b'd', ('127.0.0.1', 9))
        with pytest.raises(TypeError, match="data argument must be a bytes-like object, not 'str'"):
            client.sendto('e')
        await sproto.done
        client.close()
        server.close()
        return [d for d, _ in sproto.got]

    assert run(loop, main()) == [b'a', b'b', b'c']


def test_empty_datagrams_follow_the_python_version(loop):
    async def main():
        server, sproto = await loop.create_datagram_endpoint(
            lambda: Collect(loop), local_addr=('127.0.0.1', 0))
        addr = server.get_extra_info('sockname')
        client, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=addr)
        client.sendto(b'')
        client.sendto(b'end')
        await sproto.done
        await asyncio.sleep(0.01)
        client.close()
        server.close()
        return [d for d, _ in sproto.got]

    got = run(loop, main())
    # asyncio 3.11/3.12 drop an empty datagram; 3.13 sends it.
    assert got == ([b'', b'end'] if sys.version_info >= (3, 13) else [b'end'])


def test_error_received_for_a_refused_destination(loop):
    async def main():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(('127.0.0.1', 0))
            dead = probe.getsockname()  # closed below: nobody listens there
        client, proto = await loop.create_datagram_endpoint(
            lambda: Collect(loop), remote_addr=dead)
        for _ in range(3):
            client.sendto(b'anyone?')
            await asyncio.sleep(0.01)
        await proto.done
        assert not client.is_closing()
        client.close()
        await proto.lost
        return proto.errors

    errors = run(loop, main())
    assert errors and all(isinstance(e, ConnectionRefusedError) for e in errors)


def test_datagram_received_raising_is_reported_and_reading_goes_on(loop):
    class Flaky(Collect):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data == b'bad':
                raise ZeroDivisionError('boom')

    async def main():
        calls = []
        loop.set_exception_handler(lambda lp, ctx: calls.append(ctx))
        server, proto = await loop.create_datagram_endpoint(
            lambda: Flaky(loop, 3), local_addr=('127.0.0.1', 0))
        addr = server.get_extra_info('sockname')
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for d in (b'ok', b'bad', b'after'):
                s.sendto(d, addr)
            await proto.done
        assert not server.is_closing()
        server.close()
        return [d for d, _ in proto.got], calls

    got, calls = run(loop, main())
    assert got == [b'ok', b'bad', b'after']
    assert len(calls) == 1 and isinstance(calls[0]['exception'], ZeroDivisionError)


def test_pause_and_resume_reading(loop):
    async def main():
        server, proto = await loop.create_datagram_endpoint(
            lambda: Collect(loop, 3), local_addr=('127.0.0.1', 0))
        addr = server.get_extra_info('sockname')
        await asyncio.sleep(0)
        server.pause_reading()
        assert not server.is_reading()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for d in (b'1', b'2', b'3'):
                s.sendto(d, addr)
            await asyncio.sleep(0.05)
            assert proto.got == []
            server.resume_reading()
            assert server.is_reading()
            await proto.done
        server.close()
        return [d for d, _ in proto.got]

    assert run(loop, main()) == [b'1', b'2', b'3']


def bound_unix_sink(path):
    """A Unix datagram socket bound to `path` that nobody reads from."""
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)
    return sink


def unix_endpoint(loop, path):
    """A datagram endpoint bound to the Unix path `path`, with a Collect."""
    return loop.create_datagram_endpoint(
        lambda: Collect(loop), local_addr=path, family=socket.AF_UNIX)


@pytest.fixture
def unix_dir():
    with tempfile.TemporaryDirectory() as d:
        yield d


def test_unix_datagram_paths_and_unbound_senders(loop, unix_dir):
    server_path = os.path.join(unix_dir, 'srv')
    bound_path = os.path.join(unix_dir, 'cli')

    def unbound_send(dest):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as u:
            u.sendto(b'q', dest)

    expected_unbound = plain_recvfrom(socket.AF_UNIX, os.path.join(unix_dir, 'probe'), unbound_send)

    async def main():
        server, proto = await loop.create_datagram_endpoint(
            lambda: Collect(loop, 2), local_addr=server_path, family=socket.AF_UNIX)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as b:
            b.bind(bound_path)
            b.sendto(b'bound', server_path)
            unbound_send(server_path)
            await proto.done
            server.sendto(b'reply', proto.got[0][1])
            reply = await loop.run_in_executor(None, b.recvfrom, 100)
        server.close()
        return proto.got, reply

    got, reply = run(loop, main())
    assert got == [(b'bound', bound_path), (b'q', expected_unbound)]
    assert reply == (b'reply', server_path)


@pytest.mark.skipif(not on_ferroloop(), reason="asyncio's sendto(data) on a socket without a peer name "
                    "is a fatal TypeError (uvloop sends it; see README)")
def test_socketpair_sendto_without_address_reaches_the_peer(loop):
    # A Unix socketpair's peer has no name (getpeername() is ''), so asyncio
    # takes the socket as unconnected; sendto(data) with no address then
    # send()s to the peer, as uvloop does.  On a socket with no peer at all
    # it is the kernel's OSError, for error_received().
    s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    lone = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    async def main():
        tr, proto = await loop.create_datagram_endpoint(lambda: Collect(loop), sock=s1)
        s2.send(b'hello, socketpair')
        await proto.done
        tr.sendto(b'from the transport')
        got = await loop.run_in_executor(None, s2.recv, 100)
        tr2, proto2 = await loop.create_datagram_endpoint(lambda: Collect(loop), sock=lone)
        tr2.sendto(b'nowhere')
        await proto2.done
        tr.close()
        tr2.close()
        await proto.lost
        await proto2.lost
        return proto.got, got, proto2.errors, tr2.is_closing()

    with s2:
        got, reply, errors, closing = run(loop, main())
    assert got == [(b'hello, socketpair', None)]
    assert reply == b'from the transport'
    assert len(errors) == 1 and isinstance(errors[0], OSError)
    assert errors[0].errno in (errno.ENOTCONN, errno.EDESTADDRREQ)


def test_unix_datagram_abstract_namespace(loop):
    name = b'\0ferroloop-test-%d' % os.getpid()

    async def main():
        # (create_datagram_endpoint takes str paths only.)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(name)
        server, proto = await loop.create_datagram_endpoint(lambda: Collect(loop), sock=sock)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.bind(name + b'-client')
            s.sendto(b'hi', name)
            await proto.done
            server.sendto(b'back', proto.got[0][1])
            reply = await loop.run_in_executor(None, s.recvfrom, 100)
        server.close()
        return proto.got, reply

    got, reply = run(loop, main())
    assert got == [(b'hi', name + b'-client')]
    assert reply == (b'back', name)


def test_full_peer_queues_datagrams_with_flow_control_and_close_flushes(loop, unix_dir):
    # A Unix datagram socket whose peer's queue is full makes sendto()
    # wait (EAGAIN): the transport queues whole datagrams, pauses the
    # protocol over the high-water mark, and delivers all of them, in
    # order, once the peer reads.
    server_path = os.path.join(unix_dir, 'slow')
    sink = bound_unix_sink(server_path)
    sink.setblocking(False)

    async def main():
        tr, proto = await unix_endpoint(loop, os.path.join(unix_dir, 'fast'))
        tr.set_write_buffer_limits(high=4000, low=1000)
        for i in range(300):
            tr.sendto(b'%04d' % i + b'.' * 96, server_path)
        queued = tr.get_write_buffer_size()
        assert queued > 4000
        assert proto.events == ['made', 'pause']
        tr.close()  # flushes first
        assert not proto.lost.done()
        got = []
        while len(got) < 300:
            try:
                got.append(sink.recv(200))
            except BlockingIOError:
                await asyncio.sleep(0.001)
        await proto.lost
        return got, proto.events, queued

    try:
        got, events, queued = run(loop, main())
    finally:
        sink.close()
    assert [g[:4] for g in got] == [b'%04d' % i for i in range(300)]
    if not on_ferroloop() and sys.version_info[:3] == (3, 13, 0):
        # 3.13.0 counts 8 header bytes per datagram in but not out, so its
        # count never falls to the low-water mark (fixed later in 3.13).
        events = [e for e in events if e != 'resume']
        assert events == ['made', 'pause', ('lost', None)]
    else:
        assert events == ['made', 'pause', 'resume', ('lost', None)]


def test_abort_drops_queued_datagrams(loop, unix_dir):
    server_path = os.path.join(unix_dir, 'slow')
    sink = bound_unix_sink(server_path)

    async def main():
        tr, proto = await unix_endpoint(loop, os.path.join(unix_dir, 'fast'))
        for i in range(200):
            tr.sendto(b'x' * 100, server_path)
        assert tr.get_write_buffer_size() > 0
        tr.abort()
        if on_ferroloop():  # asyncio leaves its byte count stale
            assert tr.get_write_buffer_size() == 0
        assert tr.is_closing()
        return await proto.lost

    try:
        assert run(loop, main()) is None
    finally:
        sink.close()


def test_sendto_after_close_is_counted_then_logged(loop, caplog):
    async def main():
        server, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=('127.0.0.1', 0))
        addr = server.get_extra_info('sockname')
        client, proto = await loop.create_datagram_endpoint(
            lambda: Collect(loop), remote_addr=addr)
        client.close()
        await proto.lost
        with caplog.at_level(logging.WARNING, logger='asyncio'):
            for _ in range(10):
                client.sendto(b'late')
        server.close()

    run(loop, main())
    warnings = [r for r in caplog.records if r.getMessage() == 'socket.send() raised exception.']
    # conn_lost is 1 after closing; each late call counts, and logs from 5 on.
    assert len(warnings) == 6


def test_transport_api_and_closing_leaves_no_fd(loop):
    before = open_fds()

    async def main():
        for _ in range(30):
            tr, proto = await loop.create_datagram_endpoint(
                lambda: Collect(loop), local_addr=('127.0.0.1', 0))
            assert isinstance(tr, asyncio.BaseTransport)
            if on_ferroloop() or sys.version_info >= (3, 13):
                assert isinstance(tr, asyncio.DatagramTransport)
            assert tr.get_protocol() is proto
            assert isinstance(tr.get_extra_info('socket'), asyncio.trsock.TransportSocket)
            assert tr.get_extra_info('peername') is None
            assert tr.get_extra_info('nonexistent', 'dflt') == 'dflt'
            assert 'read=polling' in repr(tr) and 'bufsize=0' in repr(tr)
            assert tr.get_write_buffer_limits() == (16384, 65536)
            with pytest.raises(NotImplementedError):
                tr.write(b'x')
            with pytest.raises(NotImplementedError):
                tr.write_eof()
            with pytest.raises(NotImplementedError):
                tr.can_write_eof()
            tr.close()
            tr.close()
            assert tr.is_closing()
            assert await proto.lost is None
            assert proto.events == ['made', ('lost', None)]
            assert 'closed' in repr(tr)

    run(loop, main())
    assert open_fds() == before


def test_set_protocol_switches_receiver(loop):
    async def main():
        tr, first = await loop.create_datagram_endpoint(
            lambda: Collect(loop), local_addr=('127.0.0.1', 0))
        second = Collect(loop)
        tr.set_protocol(second)
        assert tr.get_protocol() is second
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b'to second', tr.get_extra_info('sockname'))
            await second.done
        tr.close()
        await second.lost
        return first.got, second.got

    first, second = run(loop, main())
    assert first == [] and [d for d, _ in second] == [b'to second']


def test_socket_subclass_gets_its_own_methods_called(loop):
    calls = []

    class Traced(socket.socket):
        def recvfrom(self, *args):
            calls.append('recvfrom')
            return super().recvfrom(*args)

        def sendto(self, *args):
            calls.append('sendto')
            return super().sendto(*args)

    async def main():
        sock = Traced(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(('127.0.0.1', 0))
        server, _ = await loop.create_datagram_endpoint(Echo, sock=sock)
        client, proto = await loop.create_datagram_endpoint(
            lambda: Collect(loop), local_addr=('127.0.0.1', 0))
        client.sendto(b'sub', sock.getsockname())
        await proto.done
        server.close()
        client.close()
        return [d for d, _ in proto.got]

    assert run(loop, main()) == [b'SUB']
    assert 'recvfrom' in calls and 'sendto' in calls


def test_udp_closed_loop_keeps_no_fd(loop_factory):
    before = open_fds()
    lp = loop_factory()
    try:
        async def main():
            tr, _ = await lp.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=('127.0.0.1', 0))
            tr.close()
            await asyncio.sleep(0)
        lp.run_until_complete(main())
    finally:
        lp.close()
    assert open_fds() == before


def test_udp_echo_in_debug_mode(loop):
    # Debug mode delivers readiness through loop.call_soon (with source
    # tracebacks); the transport behaves the same.
    loop.set_debug(True)

    async def main():
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=('127.0.0.1', 0))
        client, proto = await loop.create_datagram_endpoint(
            lambda: Collect(loop, 2), remote_addr=server.get_extra_info('sockname'))
        client.sendto(b'dbg')
        client.sendto(b'again')
        await proto.done
        client.close()
        server.close()
        await proto.lost
        return [d for d, _ in proto.got]

    assert run(loop, main()) == [b'DBG', b'AGAIN']


def test_queued_datagrams_to_a_vanished_peer_each_get_an_error(loop, unix_dir):
    # Datagrams queued for a peer that then goes away: each send fails,
    # error_received() hears of it, the rest go on being tried (one per
    # iteration, as asyncio's writer does), and close() completes.
    sink_path = os.path.join(unix_dir, 'gone')
    sink = bound_unix_sink(sink_path)

    async def main():
        tr, proto = await unix_endpoint(loop, os.path.join(unix_dir, 'src'))
        n = 0
        while tr.get_write_buffer_size() == 0:
            tr.sendto(b'x' * 100, sink_path)
            n += 1
        for _ in range(20):
            tr.sendto(b'y' * 100, sink_path)
        sink.close()
        os.unlink(sink_path)
        tr.close()
        assert await proto.lost is None
        return proto.errors

    errors = run(loop, main())
    assert errors and all(isinstance(e, (ConnectionRefusedError, FileNotFoundError)) for e in errors)


@pytest.mark.skipif(not on_ferroloop(), reason="asyncio's resume_reading raises on a closed fd instead")
def test_fd_closed_under_the_transport_ends_it(loop):
    # Reading resumes on an fd someone closed behind the transport's back:
    # a fatal error (connection_lost with the OSError), not error_received
    # over and over.
    async def main():
        tr, proto = await loop.create_datagram_endpoint(
            lambda: Collect(loop), local_addr=('127.0.0.1', 0))
        await asyncio.sleep(0)
        tr.pause_reading()
        os.close(tr.get_extra_info('socket').fileno())
        tr.resume_reading()
        exc = await proto.lost
        sock = tr._sock
        return exc, proto.errors, sock

    exc, errors, sock = run(loop, main())
    assert isinstance(exc, OSError) and exc.errno == errno.EBADF
    assert errors == []
    assert sock is None
