"""TLS for ferroloop's transports: the Python half of the native
`SslProtocol` (src/transport/tls.rs), which runs asyncio's SSLProtocol state
machine.  The application's transport is asyncio's own
`_SSLProtocolTransport`, subclassed only to reach the native write backlog.
"""
from asyncio import sslproto

from . import _ferroloop

__all__ = ('SSLProtocol',)


class _SSLProtocolTransport(sslproto._SSLProtocolTransport):
    """asyncio's TLS application transport over the native protocol."""

    def _test__append_write_backlog(self, data):
        # asyncio's reaches into the protocol's deque, which is native here.
        self._ssl_protocol._append_write_backlog(data)


class _SSLProtocolFacade(sslproto.SSLProtocol):
    """What `isinstance()` checks an `SSLProtocol` against after its real
    class (see `SSLProtocol.__class__`).  Never instantiated."""


_SSLProtocolFacade.__name__ = _SSLProtocolFacade.__qualname__ = 'SSLProtocol'


class SSLProtocol(_ferroloop.SslProtocol):
    """asyncio's `sslproto.SSLProtocol`, natively: same constructor, states,
    flow control, timeouts and errors."""

    # A native class cannot derive from asyncio's (a Python class with its
    # own instance layout), so `isinstance(p, asyncio.BufferedProtocol)` and
    # `isinstance(p, sslproto.SSLProtocol)` answer through __class__, as
    # for the socket transports.  type(p) is still this class.
    __class__ = property(lambda self: _SSLProtocolFacade)

    _app_transport_class = _SSLProtocolTransport

    def __init__(self, *args, **kwargs):
        # asyncio creates the application transport in __init__; it needs
        # the Python object, which the native constructor does not have.
        self._get_app_transport()
