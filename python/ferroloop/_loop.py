"""`ferroloop.Loop`: the Python half of the event loop.

The hot paths (call_soon, timers, the run loop, fd readiness, signals
wake-up) are native, in `LoopCore`.  This class adds the cold paths:

* lifecycle around the native run loop (run_forever setup/cleanup, close);
* signal handlers, on the native signal wake-up pipe;
* create_task with keyword pass-through to task factories;
* stream sockets (TCP, Unix) and pipes get native transports
  (`_transports.py`): asyncio's own create_connection/create_server/
  start_tls/streams/connect_*_pipe/subprocess code makes them through the
  `_make_*_transport` methods;
* subprocesses: children are reaped by the loop itself (`_children.py`),
  not by asyncio's child watchers;
* a plain server's listener callback: native accepts, no task per
  connection (`_accept_connection`);
* everything else -- run_until_complete, exception handling, executors,
  async generator hooks, DNS, connection setup, the Server object, UDP
  setup, subprocess setup -- is inherited from asyncio's own
  `SelectorEventLoop`, whose methods run unchanged on top of the native
  `_add_reader`/`_add_writer`/`call_soon` primitives.
"""
import collections.abc
import contextvars
import errno
import os
import selectors
import signal
import socket
import ssl
import sys
import threading
import weakref
from asyncio import (base_events, constants, coroutines, events, futures, selector_events,
                     sslproto, tasks, trsock, unix_events)
from asyncio.log import logger

from . import _ferroloop
from ._children import ChildReaper
from ._tls import SSLProtocol
from ._transports import (DatagramTransport, ReadPipeTransport, SocketTransport,
                          WritePipeTransport)

__all__ = ('Loop',)

# Listening sockets whose connections ferroloop accepts itself (the native
# address conversion knows these families).
_NATIVE_ACCEPT_FAMILIES = frozenset({socket.AF_INET, socket.AF_INET6, socket.AF_UNIX})

# asyncio.iscoroutine() (create_task, ensure_future) accepts the native
# sock_* coroutines.
collections.abc.Coroutine.register(_ferroloop.SockOp)


def _noop_signal_handler(signum, frame):
    """Installed for signals with an asyncio handler: the C-level handler
    writes the signal number to the wake-up fd, which is all we need."""


class _SelectorView(collections.abc.Mapping):
    """A read-only view of the native fd registry shaped like the
    `selectors` object asyncio's transports inspect (in their repr)."""

    def __init__(self, loop):
        self._loop = weakref.ref(loop)

    def _key(self, fd):
        loop = self._loop()
        if loop is None or loop.is_closed():
            return None
        reader, writer = loop._fd_handlers(fd)
        if reader is None and writer is None:
            return None
        events_mask = ((selectors.EVENT_READ if reader is not None else 0)
                       | (selectors.EVENT_WRITE if writer is not None else 0))
        return selectors.SelectorKey(fd, fd, events_mask, (reader, writer))

    def get_key(self, fileobj):
        loop = self._loop()
        if loop is None or loop.is_closed():
            raise KeyError(f"{fileobj!r} is not registered")
        # An int, else fileno(), else (a socket closed since) the fd the
        # object was registered under, as selectors looks it up.
        fd = loop._lookup_fd(fileobj)
        key = self._key(fd)
        if key is None:
            raise KeyError(f"{fileobj!r} is not registered")
        return key

    def get_map(self):
        return self

    def __getitem__(self, fd):
        key = self._key(fd)
        if key is None:
            raise KeyError(fd)
        return key

    def __iter__(self):
        loop = self._loop()
        return iter(loop._fds() if loop is not None and not loop.is_closed() else ())

    def __len__(self):
        loop = self._loop()
        return len(loop._fds()) if loop is not None and not loop.is_closed() else 0

    def close(self):
        pass


class Loop(_ferroloop.LoopCore, unix_events.SelectorEventLoop):
    """An asyncio event loop whose scheduler and I/O polling run in Rust."""

    def __init__(self, *, native_futures=True, native_tls=True):
        # create_future()/create_task() make ferroloop's native Future and
        # Task; native_futures=False switches back to asyncio's own classes.
        self._native_futures = bool(native_futures)
        # TLS connections run the native SSLProtocol; native_tls=False
        # switches back to asyncio's sslproto.
        self._ssl_protocol_class = SSLProtocol if native_tls else sslproto.SSLProtocol
        # BaseEventLoop's attributes (debug flag, executor, asyncgen set,
        # task factory, exception handler...).  _closed, _stopping, _debug
        # and _thread_id are native properties it writes through.
        base_events.BaseEventLoop.__init__(self)
        self._selector = _SelectorView(self)
        # asyncio counts its self-pipe here; ours is the poller's waker.
        self._internal_fds = 1
        self._ssock = self._csock = None
        self._transports = weakref.WeakValueDictionary()
        self._signal_handlers = {}
        self._unix_server_sockets = {}
        self._claimed_wakeup_fd = False
        self._old_agen_hooks = None
        self._children = ChildReaper(self)
        self._follow_clock()

    def __setattr__(self, name, value):
        if name == 'call_soon':
            # Native futures queue their callbacks without calling
            # call_soon; a replacement (a wrapper, a mock) must see them, as
            # it would with asyncio's futures.
            self._route_callbacks_through_call_soon()
        super().__setattr__(name, value)
        if name == 'time':
            self._follow_clock()

    def __delattr__(self, name):
        super().__delattr__(name)
        if name == 'time':
            self._follow_clock()

    def _follow_clock(self):
        # A replaced clock (mock.patch.object(loop, 'time'), or a subclass's
        # time()) decides which timers are due, as with asyncio's loop.
        self._custom_clock = 'time' in vars(self) or type(self).time is not Loop.time

    # -- running ---------------------------------------------------------

    def _run_forever_setup(self):
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self._debug)
        self._old_agen_hooks = sys.get_asyncgen_hooks()
        self._thread_id = threading.get_ident()
        sys.set_asyncgen_hooks(firstiter=self._asyncgen_firstiter_hook,
                               finalizer=self._asyncgen_finalizer_hook)
        events._set_running_loop(self)
        self._claim_signal_wakeup()

    def _run_forever_cleanup(self):
        self._release_signal_wakeup()
        self._stopping = False
        self._thread_id = None
        events._set_running_loop(None)
        self._set_coroutine_origin_tracking(False)
        if self._old_agen_hooks is not None:
            sys.set_asyncgen_hooks(*self._old_agen_hooks)
            self._old_agen_hooks = None

    def run_forever(self):
        """Run until stop() is called."""
        self._run_forever_setup()
        try:
            self._run_forever_native()
        finally:
            self._run_forever_cleanup()

    def close(self):
        """Close the loop: drop pending callbacks, timers and fd watches,
        remove signal handlers and shut the default executor down (without
        waiting for it).  The loop must not be running."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self._closed:
            return
        if not sys.is_finalizing():
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)
        elif self._signal_handlers:
            import warnings
            warnings.warn(f"Closing the loop {self!r} on interpreter shutdown "
                          f"stage, skipping signal handlers removal",
                          ResourceWarning, source=self)
            self._signal_handlers.clear()
        self._children.close()
        base_events.BaseEventLoop.close(self)
        self._close_native()
        # Like asyncio's selector loop: no selector (transports' repr then
        # says "open"/"closed" only) and no internal fds once closed.
        self._selector = None
        self._internal_fds = 0

    # -- tasks -----------------------------------------------------------

    # create_future() and create_task() are native (LoopCore); these are
    # their slow paths.

    def _create_future_py(self):
        return futures.Future(loop=self)

    def _create_task_py(self, coro, *, name=None, context=None, **kwargs):
        """create_task with a task factory, in debug mode, with asyncio's
        classes, or with keywords other than name and context (eager_start,
        ...), which go to the Task or the task factory as CPython 3.13.3+
        passes them."""
        self._check_closed()
        if self._task_factory is None:
            task_class = _ferroloop.Task if self._native_futures else tasks.Task
            task = task_class(coro, loop=self, name=name, context=context, **kwargs)
            if task._source_traceback:
                del task._source_traceback[-1]
            return task
        if context is not None:
            kwargs['context'] = context
        task = self._task_factory(self, coro, **kwargs)
        if name is not None:
            if sys.version_info >= (3, 13):
                task.set_name(name)
            else:  # 3.11/3.12 only warn about a task without set_name()
                tasks._set_task_name(task, name)
        return task

    # -- transports ------------------------------------------------------

    @staticmethod
    def _socket_transport_class(sock):
        # The native transport makes its system calls on the fd.  A socket
        # subclass may override recv/send (instrumented or wrapped sockets,
        # test doubles); asyncio calls those, so it gets asyncio's own
        # transport, which runs on this loop's add_reader/add_writer.
        if type(sock) is socket.socket:
            return SocketTransport
        return selector_events._SelectorSocketTransport

    def _make_socket_transport(self, sock, protocol, waiter=None, *,
                               extra=None, server=None):
        self._ensure_fd_no_transport(sock)
        return self._socket_transport_class(sock)(self, sock, protocol, waiter, extra, server)

    def _make_ssl_transport(self, rawsock, protocol, sslcontext, waiter=None,
                            *, server_side=False, server_hostname=None,
                            extra=None, server=None,
                            ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
                            ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT):
        # asyncio's TLS state machine (natively, unless native_tls=False)
        # over a native transport.
        self._ensure_fd_no_transport(rawsock)
        ssl_protocol = self._ssl_protocol_class(
            self, protocol, sslcontext, waiter, server_side, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout)
        self._socket_transport_class(rawsock)(self, rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    async def start_tls(self, transport, protocol, sslcontext, *,
                        server_side=False,
                        server_hostname=None,
                        ssl_handshake_timeout=None,
                        ssl_shutdown_timeout=None):
        """Upgrade transport to TLS; return the transport protocol must use
        from now on (asyncio's start_tls, with this loop's SSLProtocol)."""
        if not isinstance(sslcontext, ssl.SSLContext):
            raise TypeError(
                f'sslcontext is expected to be an instance of ssl.SSLContext, '
                f'got {sslcontext!r}')
        if not getattr(transport, '_start_tls_compatible', False):
            raise TypeError(
                f'transport {transport!r} is not supported by start_tls()')

        waiter = self.create_future()
        ssl_protocol = self._ssl_protocol_class(
            self, protocol, sslcontext, waiter, server_side, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
            call_connection_made=False)
        # No read may reach the new protocol before its connection_made().
        transport.pause_reading()
        transport.set_protocol(ssl_protocol)
        connection_made = self.call_soon(ssl_protocol.connection_made, transport)
        resume = self.call_soon(transport.resume_reading)
        try:
            await waiter
        except BaseException:
            transport.close()
            connection_made.cancel()
            resume.cancel()
            raise
        return ssl_protocol._app_transport

    def _make_datagram_transport(self, sock, protocol, address=None,
                                 waiter=None, extra=None):
        self._ensure_fd_no_transport(sock)
        return DatagramTransport(self, sock, protocol, address, waiter, extra)

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None,
                                  extra=None):
        return ReadPipeTransport(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None,
                                   extra=None):
        return WritePipeTransport(self, pipe, protocol, waiter, extra)

    async def _make_subprocess_transport(self, protocol, args, shell,
                                         stdin, stdout, stderr, bufsize,
                                         extra=None, **kwargs):
        # asyncio's, minus the child watcher: this loop reaps its own
        # children (_children.py).
        waiter = self.create_future()
        transp = unix_events._UnixSubprocessTransport(
            self, protocol, args, shell, stdin, stdout, stderr, bufsize,
            waiter=waiter, extra=extra, **kwargs)
        self._children.watch(transp.get_pid(), transp._process_exited)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transp.close()
            await transp._wait()
            raise
        return transp

    # -- servers ----------------------------------------------------------

    def _accept_connection(self, protocol_factory, sock, sslcontext=None, server=None,
                           backlog=100, ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
                           ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT):
        """asyncio's listener callback, for plain TCP and Unix connections:
        each is accepted non-blocking in one system call and set up at once,
        in a copy of the context, instead of in a task per connection.  TLS,
        debug mode (which logs every connection), a task factory (which may
        want to see those tasks) and socket subclasses keep asyncio's own
        way."""
        family = sock.family
        if (sslcontext is not None or self._debug or self._task_factory is not None
                or type(sock) is not socket.socket or family not in _NATIVE_ACCEPT_FAMILIES):
            return super()._accept_connection(
                protocol_factory, sock, sslcontext, server, backlog,
                ssl_handshake_timeout, ssl_shutdown_timeout)
        sock_type, proto = sock.type | socket.SOCK_NONBLOCK, sock.proto
        listen_fd = sock.fileno()
        for _ in range(backlog):
            try:
                fd, addr = self._accept_connection_fd(listen_fd)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return None
            except OSError as exc:
                # As asyncio: log, and stop accepting for a while when out
                # of resources (Linux keeps reporting the listener ready).
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.call_exception_handler({
                        'message': 'socket.accept() out of system resource',
                        'exception': exc,
                        'socket': trsock.TransportSocket(sock),
                    })
                    self._remove_reader(listen_fd)
                    self.call_later(constants.ACCEPT_RETRY_DELAY, self._start_serving,
                                    protocol_factory, sock, sslcontext, server, backlog,
                                    ssl_handshake_timeout, ssl_shutdown_timeout)
                else:
                    raise  # the loop logs it and goes on
            else:
                # SOCK_NONBLOCK in the type: the socket object starts in
                # non-blocking mode without another system call.
                try:
                    conn = socket.socket(family, sock_type, proto, fileno=fd)
                except BaseException:
                    os.close(fd)
                    raise
                contextvars.copy_context().run(self._serve_connection, protocol_factory, conn,
                                               {'peername': addr}, server)
                if sock.fileno() != listen_fd:
                    return None  # the protocol factory closed the server

    def _serve_connection(self, protocol_factory, conn, extra, server):
        try:
            protocol = protocol_factory()
            self._make_socket_transport(conn, protocol, extra=extra, server=server)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            # asyncio's accept task drops these silently outside debug mode
            # (which takes asyncio's own path, and reports them); the
            # socket is closed when it is freed.
            pass

    # -- sock_* methods ---------------------------------------------------

    # Native coroutines (src/transport/sock_ops.rs), awaited and wrapped in
    # tasks like the `async def` methods of asyncio they replace; checks
    # and errors happen when they start, as asyncio's do.

    def sock_recv(self, sock, n):
        """Receive up to n bytes from the non-blocking socket sock."""
        return _ferroloop.SockOp.recv(self, sock, n)

    def sock_recv_into(self, sock, buf):
        """Receive data from sock into buf; return the number of bytes."""
        return _ferroloop.SockOp.recv_into(self, sock, buf)

    def sock_sendall(self, sock, data):
        """Send all of data to the non-blocking socket sock."""
        return _ferroloop.SockOp.sendall(self, sock, data)

    def sock_recvfrom(self, sock, bufsize):
        """Receive a datagram: (bytes, address)."""
        return _ferroloop.SockOp.recvfrom(self, sock, bufsize)

    def sock_recvfrom_into(self, sock, buf, nbytes=0):
        """Receive a datagram into buf: (nbytes, address)."""
        return _ferroloop.SockOp.recvfrom_into(self, sock, buf, nbytes)

    def sock_sendto(self, sock, data, address):
        """Send a datagram to address; return the number of bytes sent."""
        return _ferroloop.SockOp.sendto(self, sock, data, address)

    def sock_accept(self, sock):
        """Accept a connection: (conn, address), conn non-blocking."""
        return _ferroloop.SockOp.accept(self, sock)

    async def sock_connect(self, sock, address):
        """Connect sock to address (resolved first, as asyncio does)."""
        base_events._check_ssl_socket(sock)
        if self._debug and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        if sock.family == socket.AF_INET or (
                base_events._HAS_IPv6 and sock.family == socket.AF_INET6):
            resolved = await self._ensure_resolved(
                address, family=sock.family, type=sock.type, proto=sock.proto,
                loop=self)
            _, _, _, _, address = resolved[0]
        return await _ferroloop.SockOp.connect(self, sock, address)

    async def _sendfile_native(self, transp, file, offset, count):
        if not isinstance(transp, SocketTransport):
            return await super()._sendfile_native(transp, file, offset, count)
        # As asyncio: pause the transport, wait for its buffer to drain, then
        # let sock_sendfile (os.sendfile, zero-copy) use the socket.  The
        # native transport stops watching the fd meanwhile, since
        # sock_sendfile watches it itself.
        fd = transp._sock_fd
        del self._transports[fd]
        resume_reading = transp.is_reading()
        transp.pause_reading()
        await transp._make_empty_waiter()
        transp._suspend_watch()
        try:
            return await self.sock_sendfile(transp._sock, file, offset, count,
                                            fallback=False)
        finally:
            transp._resume_watch()
            transp._reset_empty_waiter()
            if resume_reading:
                transp.resume_reading()
            self._transports[fd] = transp

    # -- signals ---------------------------------------------------------

    def _claim_signal_wakeup(self):
        """Point CPython's signal wake-up fd at our poller while we run in the
        main thread, so Ctrl-C wakes the loop at once even if the kernel
        delivered the signal to another thread.  Someone else's wake-up fd is
        left alone."""
        self._claimed_wakeup_fd = False
        fd = self._signal_wakeup_fd()
        try:
            old = signal.set_wakeup_fd(fd)
        except (ValueError, OSError):
            return  # not the main thread
        if old == -1:
            self._claimed_wakeup_fd = True
        elif old != fd:
            signal.set_wakeup_fd(old)

    def _release_signal_wakeup(self):
        if self._claimed_wakeup_fd:
            self._claimed_wakeup_fd = False
            if not self._signal_handlers:
                try:
                    signal.set_wakeup_fd(-1)
                except (ValueError, OSError):
                    pass

    def add_signal_handler(self, sig, callback, *args):
        """Add a handler for a signal.  Main thread only.

        Raise ValueError if the signal number is invalid or uncatchable.
        Raise RuntimeError if there is a problem setting up the handler.
        """
        if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        try:
            # Raises ValueError outside the main thread: fail early, before
            # anything is registered.
            signal.set_wakeup_fd(self._signal_wakeup_fd())
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc))

        handle = _ferroloop.Handle(callback, args, self, None)
        self._signal_handlers[sig] = handle
        self._watch_signals(True)
        try:
            signal.signal(sig, _noop_signal_handler)
            # SA_RESTART: fewer EINTRs for the rest of the program.
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            self._watch_signals(bool(self._signal_handlers))
            if not self._signal_handlers and not self._claimed_wakeup_fd:
                try:
                    signal.set_wakeup_fd(-1)
                except (ValueError, OSError) as nexc:
                    logger.info('set_wakeup_fd(-1) failed: %s', nexc)
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f'sig {sig} cannot be caught')
            raise

    def remove_signal_handler(self, sig):
        """Remove a handler for a signal.  Return True if one was removed."""
        self._check_signal(sig)
        try:
            del self._signal_handlers[sig]
        except KeyError:
            return False
        self._watch_signals(bool(self._signal_handlers))
        handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f'sig {sig} cannot be caught')
            raise
        if not self._signal_handlers and not self._claimed_wakeup_fd:
            try:
                signal.set_wakeup_fd(-1)
            except (ValueError, OSError) as exc:
                logger.info('set_wakeup_fd(-1) failed: %s', exc)
        return True

    def _handle_signal(self, sig):
        """Called by the native loop for each signal number read from the
        wake-up fd."""
        handle = self._signal_handlers.get(sig)
        if handle is None:
            return
        if handle._cancelled:
            self.remove_signal_handler(sig)
        else:
            self._queue_handle(handle)

    def _read_from_self(self):
        """asyncio's self-pipe reader; ferroloop has no self-pipe (the native
        poller reads the signal pipe and calls _handle_signal)."""


# The loop's native methods, as Loop's own (CPython specialises a C method
# call only on an instance of exactly the class holding the descriptor).
_ferroloop._bind_native_methods(Loop)
