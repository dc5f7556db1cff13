"""ferroloop's socket transport: the Python half of the native
`StreamTransport` (src/transport/stream.rs), which does the reading,
writing, flow control and closing.  What is here runs once per connection
or on errors: construction, extra info, repr, the fatal-error report and
the unclosed-transport warning -- the same code paths as asyncio's
`_SelectorSocketTransport`.
"""
import socket
import sys
import warnings
from asyncio import base_events, constants, futures, selector_events, transports, trsock
from asyncio.log import logger

from . import _ferroloop

__all__ = ('SocketTransport', 'DatagramTransport')

_SERVER_ATTACH_TAKES_TRANSPORT = sys.version_info >= (3, 13)


class _SocketTransportFacade(transports._FlowControlMixin, transports.Transport):
    """What `isinstance()` checks a `SocketTransport` against after its real
    class (see `SocketTransport.__class__`).  Never instantiated."""
    __slots__ = ()


_SocketTransportFacade.__name__ = _SocketTransportFacade.__qualname__ = 'SocketTransport'


class SocketTransport(_ferroloop.StreamTransport):
    """A TCP or Unix stream socket transport (asyncio.Transport's API)."""

    # A native class cannot derive from asyncio.Transport (its __slots__
    # layout conflicts), so `isinstance(t, asyncio.Transport)` -- and
    # asyncio's own check for `_FlowControlMixin` in sendfile's fallback --
    # would be false.  isinstance() also consults `obj.__class__` when it
    # differs from `type(obj)` (as for unittest.mock's spec objects): it
    # names a class deriving from both, so those checks pass.  type(t) is
    # still this class; nothing on a hot path looks at __class__.
    __class__ = property(lambda self: _SocketTransportFacade)

    max_size = 256 * 1024  # asyncio's recv() size; the native reader's too
    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None):
        if extra is None:
            extra = {}
        self._extra = extra
        extra['socket'] = trsock.TransportSocket(sock)
        try:
            extra['sockname'] = sock.getsockname()
        except OSError:
            extra['sockname'] = None
        if 'peername' not in extra:
            try:
                extra['peername'] = sock.getpeername()
            except OSError:
                extra['peername'] = None
        self._attach(loop, sock, protocol, server)
        if server is not None:
            if _SERVER_ATTACH_TAKES_TRANSPORT:
                server._attach(self)
            else:
                server._attach()
        loop._transports[sock.fileno()] = self
        # Disable Nagle: small writes go out without waiting for an ACK.
        base_events._set_nodelay(sock)
        loop.call_soon(protocol.connection_made, self)
        # Only start reading once connection_made() has run.
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def get_extra_info(self, name, default=None):
        """Information about the transport: 'socket', 'sockname',
        'peername', and what the caller passed as extra."""
        return self._extra.get(name, default)

    def __repr__(self):
        info = [type(self).__name__]
        if self._sock is None:
            info.append('closed')
        elif self._closing:
            info.append('closing')
        info.append(f'fd={self._sock_fd}')
        loop = self._loop
        if loop is not None and not loop.is_closed():
            info.append('read=polling' if self._reader_polling else 'read=idle')
            state = 'polling' if self._writer_polling else 'idle'
            info.append(f'write=<{state}, bufsize={self.get_write_buffer_size()}>')
        return '<{}>'.format(' '.join(info))

    def _fatal_error(self, exc, message='Fatal error on transport'):
        if isinstance(exc, OSError):
            loop = self._loop
            if loop is not None and loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=exc)
        else:
            self._loop.call_exception_handler({
                'message': message,
                'exception': exc,
                'transport': self,
                'protocol': self._protocol,
            })
        self._force_close(exc)

    def __del__(self, _warn=warnings.warn):
        if self._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._release_unclosed()



class DatagramTransport(selector_events._SelectorDatagramTransport,
                        transports.DatagramTransport):
    """asyncio's UDP transport (until a native one lands), reading every
    queued datagram a readiness report finds -- up to `max_reads` -- where
    asyncio reads one per loop iteration.  With many peers on one socket,
    asyncio spends a whole iteration (an epoll wait, here also a re-arm) per
    datagram.  datagram_received() is called in the same order; other
    callbacks run after the batch instead of between datagrams.  It is an
    `asyncio.DatagramTransport` on every Python (asyncio's is from 3.13)."""

    max_reads = 32

    def _read_ready(self):
        protocol = self._protocol
        for _ in range(self.max_reads):
            if self._conn_lost or not self.is_reading():
                return
            try:
                data, addr = self._sock.recvfrom(self.max_size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                protocol.error_received(exc)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, 'Fatal read error on datagram transport')
                return
            else:
                protocol.datagram_received(data, addr)
