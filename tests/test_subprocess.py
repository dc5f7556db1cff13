"""Subprocesses: loop.subprocess_exec/subprocess_shell and asyncio's
create_subprocess_* on top of them, with asyncio's behaviour.  On ferroloop
the pipes are native transports and the loop reaps its own children.

Every test also passes on stock asyncio (FERROLOOP_TEST_TARGET=asyncio),
except those marked as ferroloop-only.
"""
import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import on_ferroloop, open_fds

PIPE = asyncio.subprocess.PIPE


def run(loop, coro, timeout=60):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def gone(pid, within=5.0):
    """True once `pid` no longer exists -- not even as a zombie."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.01)
    return False


def test_communicate_and_returncode(loop):
    async def main():
        p = await asyncio.create_subprocess_exec(
            sys.executable, '-c',
            'import sys; data = sys.stdin.buffer.read(); '
            'sys.stdout.buffer.write(data.upper()); sys.stderr.write("err"); sys.exit(3)',
            stdin=PIPE, stdout=PIPE, stderr=PIPE)
        out, err = await p.communicate(b'hello child')
        assert (out, err, p.returncode) == (b'HELLO CHILD', b'err', 3)
        assert await p.wait() == 3

    before = open_fds()
    run(loop, main())
    assert open_fds() == before


def test_shell_and_transport_api(loop):
    class Proto(asyncio.SubprocessProtocol):
        def __init__(self):
            self.events = []
            self.out = bytearray()
            self.done = loop.create_future()

        def connection_made(self, transport):
            self.events.append('made')

        def pipe_data_received(self, fd, data):
            assert fd == 1
            self.out += data

        def pipe_connection_lost(self, fd, exc):
            self.events.append(('pipe_lost', fd, exc))

        def process_exited(self):
            self.events.append('exited')

        def connection_lost(self, exc):
            self.events.append('lost')
            self.done.set_result(exc)

    async def main():
        tr, proto = await loop.subprocess_shell(Proto, 'read x; echo "got $x"; exit 7',
                                                stdin=PIPE, stdout=PIPE, stderr=None)
        assert isinstance(tr, asyncio.SubprocessTransport)
        assert tr.get_pid() > 0 and tr.get_returncode() is None
        stdin = tr.get_pipe_transport(0)
        assert isinstance(stdin, asyncio.WriteTransport)
        assert isinstance(tr.get_pipe_transport(1), asyncio.ReadTransport)
        assert tr.get_pipe_transport(2) is None
        stdin.write(b'line\n')
        assert await proto.done is None
        assert tr.get_returncode() == 7
        assert proto.out == b'got line\n'
        assert proto.events[0] == 'made' and proto.events[-1] == 'lost'
        assert 'exited' in proto.events and ('pipe_lost', 1, None) in proto.events
        tr.close()

    run(loop, main())


def test_large_output_arrives_intact(loop):
    size = 256 * 1024 * 1024
    line = b'0123456789abcdef\n'
    reference = line * ((1 << 20) // len(line) + 2)

    async def main():
        p = await asyncio.create_subprocess_exec(
            'sh', '-c', f'yes 0123456789abcdef | head -c {size}', stdout=PIPE)
        offset = 0
        while True:
            chunk = await p.stdout.read(1 << 20)
            if not chunk:
                break
            start = offset % len(line)
            assert chunk == reference[start:start + len(chunk)], f'corrupt at {offset}'
            offset += len(chunk)
        assert await p.wait() == 0
        return offset

    assert run(loop, main(), timeout=120) == size


def test_large_input_and_output_both_ways(loop):
    payload = os.urandom(1 << 20) * 48  # 48 MiB

    async def main():
        p = await asyncio.create_subprocess_exec('cat', stdin=PIPE, stdout=PIPE)
        out, _ = await p.communicate(payload)
        return out, p.returncode

    out, rc = run(loop, main(), timeout=120)
    assert rc == 0 and len(out) == len(payload) and out == payload


def test_many_concurrent_children(loop):
    async def one(i):
        p = await asyncio.create_subprocess_exec('sh', '-c', f'echo {i}; exit {i % 50}',
                                                 stdout=PIPE)
        out, _ = await p.communicate()
        return int(out), p.returncode

    async def main():
        return await asyncio.gather(*(one(i) for i in range(100)))

    before = open_fds()
    results = run(loop, main())
    assert results == [(i, i % 50) for i in range(100)]
    assert open_fds() == before


@pytest.mark.parametrize('how, expected', [
    ('terminate', -signal.SIGTERM),
    ('kill', -signal.SIGKILL),
    ('send_signal', -signal.SIGUSR1),
])
def test_signals_to_children(loop, how, expected):
    async def main():
        p = await asyncio.create_subprocess_exec('sleep', '30', stdout=PIPE)
        if how == 'send_signal':
            p.send_signal(signal.SIGUSR1)
        else:
            getattr(p, how)()
        assert await p.wait() == expected
        assert await p.stdout.read() == b''  # the pipe closed with the child

    run(loop, main())


def test_missing_executable_raises_and_leaks_nothing(loop):
    async def main():
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec('/nonexistent/ferroloop-test', stdout=PIPE)
        with pytest.raises(FileNotFoundError):
            await loop.subprocess_exec(asyncio.SubprocessProtocol, 'no-such-cmd-ferroloop')

    before = open_fds()
    run(loop, main())
    assert open_fds() == before


def test_child_closing_stdin_early(loop):
    async def main():
        p = await asyncio.create_subprocess_exec(
            'sh', '-c', 'exec 0<&-; echo closed', stdin=PIPE, stdout=PIPE)
        # communicate() swallows the broken pipe, as asyncio's does.
        out, _ = await p.communicate(b'x' * (4 << 20))
        assert out == b'closed\n' and p.returncode == 0

        p = await asyncio.create_subprocess_exec(
            'sh', '-c', 'exec 0<&-; sleep 0.2', stdin=PIPE)
        await asyncio.sleep(0.05)
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(100):
                p.stdin.write(b'y' * 65536)
                await p.stdin.drain()
        assert await p.wait() == 0

    run(loop, main())


def test_kill_with_pipes_open(loop):
    async def main():
        p = await asyncio.create_subprocess_exec(
            'sh', '-c', 'echo started; exec sleep 30', stdin=PIPE, stdout=PIPE, stderr=PIPE)
        assert await p.stdout.readline() == b'started\n'
        p.kill()
        assert await p.wait() == -signal.SIGKILL
        assert await p.stdout.read() == b''
        p.stdin.close()
        await p.stdin.wait_closed()

    before = open_fds()
    run(loop, main())
    assert open_fds() == before


def test_stdio_arguments(loop, tmp_path):
    target = tmp_path / 'out.txt'

    async def main():
        # stderr=STDOUT merges; DEVNULL discards.
        p = await asyncio.create_subprocess_exec(
            'sh', '-c', 'echo out; echo err >&2', stdout=PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        out, err = await p.communicate()
        assert sorted(out.split()) == [b'err', b'out'] and err is None
        # A file object and a raw fd.
        with open(target, 'wb') as f:
            p = await asyncio.create_subprocess_exec('echo', 'to file', stdout=f)
            assert await p.wait() == 0
        assert target.read_bytes() == b'to file\n'
        r, w = os.pipe()
        p = await asyncio.create_subprocess_exec('echo', 'to fd', stdout=w)
        os.close(w)
        assert await p.wait() == 0
        assert os.read(r, 100) == b'to fd\n'
        os.close(r)

    run(loop, main())


def test_popen_keywords(loop, tmp_path):
    r, w = os.pipe()

    async def main():
        p = await asyncio.create_subprocess_exec(
            sys.executable, '-c',
            'import os, sys; os.write(int(sys.argv[1]), b"passed"); '
            'print(os.getcwd(), os.environ["FERRO_TEST"], os.getsid(0) == os.getpid(), '
            'oct(os.umask(0)))',
            str(w), cwd=str(tmp_path), env={'FERRO_TEST': 'yes', 'PATH': os.environ['PATH']},
            pass_fds=(w,), start_new_session=True,
            preexec_fn=lambda: os.umask(0o027),
            stdout=PIPE)
        out, _ = await p.communicate()
        assert p.returncode == 0
        assert out.split() == [str(tmp_path).encode(), b'yes', b'True', b'0o27']

    run(loop, main())
    os.close(w)
    assert os.read(r, 100) == b'passed'
    os.close(r)


def test_wait_without_pipes_and_returncode_property(loop):
    async def main():
        p = await asyncio.create_subprocess_exec('sh', '-c', 'exit 42')
        assert await p.wait() == 42
        assert p.returncode == 42
        assert await p.wait() == 42  # again

    run(loop, main())


@pytest.mark.skipif(not on_ferroloop() and sys.version_info >= (3, 12),
                    reason="asyncio 3.12+'s pidfd child watcher leaves this child a zombie")
def test_loop_closed_with_child_running_leaves_no_zombie(loop_factory):
    before = open_fds()
    loop = loop_factory()
    asyncio.set_event_loop(loop)

    async def main():
        p = await asyncio.create_subprocess_exec('sleep', '0.3')
        return p.pid, p

    try:
        pid, proc = run(loop, main())
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    # asyncio's transport warns when collected unclosed; close it instead.
    proc._transport.close()
    del proc
    assert gone(pid), f'child {pid} was not reaped'
    assert open_fds() == before


def test_subprocess_in_a_thread(loop_factory):
    # Children are reaped whichever thread the loop runs in.
    result = []

    def thread_main():
        loop = loop_factory()
        try:
            async def main():
                p = await asyncio.create_subprocess_exec('sh', '-c', 'exit 5')
                return await p.wait()
            result.append(loop.run_until_complete(main()))
        finally:
            loop.close()

    import threading
    t = threading.Thread(target=thread_main)
    t.start()
    t.join(30)
    assert result == [5]


@pytest.mark.skipif(not on_ferroloop(), reason='ferroloop-only: its reaper without pidfds')
def test_reaper_fallback_without_pidfd(loop):
    loop._children.use_pidfd = False

    async def main():
        procs = [await asyncio.create_subprocess_exec('sh', '-c', f'exit {i}') for i in range(5)]
        return [await p.wait() for p in procs]

    assert run(loop, main()) == [0, 1, 2, 3, 4]
    assert loop._children._pidfds == {}


@pytest.mark.skipif(not on_ferroloop(), reason='ferroloop-only: its native pipe transports')
def test_subprocess_pipes_are_native(loop):
    import ferroloop._transports as ft

    async def main():
        tr, _ = await loop.subprocess_exec(asyncio.SubprocessProtocol, 'cat',
                                           stdin=PIPE, stdout=PIPE)
        assert type(tr.get_pipe_transport(0)) is ft.WritePipeTransport
        assert type(tr.get_pipe_transport(1)) is ft.ReadPipeTransport
        tr.close()
        await tr._wait()

    run(loop, main())
