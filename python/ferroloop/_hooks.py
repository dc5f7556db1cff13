"""Cold-path helpers the native core calls: formatting, debug-mode stack
capture, argument checks and error reporting.  They reuse asyncio's own
formatting helpers so ferroloop's messages read exactly like asyncio's.
"""
import sys
from asyncio import base_events, coroutines, format_helpers
from asyncio.log import logger

_DEBUG_KWARG = sys.version_info >= (3, 13)


def _callback_source(handle):
    func, args = handle._callback, handle._args
    if _DEBUG_KWARG:
        return format_helpers._format_callback_source(
            func, args, debug=handle._loop.get_debug())
    return format_helpers._format_callback_source(func, args)


def handle_repr(handle):
    saved = handle._repr
    if saved is not None:
        return saved
    info = [type(handle).__name__]
    if handle._cancelled:
        info.append('cancelled')
    if handle._callback is not None:
        info.append(_callback_source(handle))
    tb = handle._source_traceback
    if tb:
        frame = tb[-1]
        info.append(f'created at {frame[0]}:{frame[1]}')
    when = getattr(handle, '_when', None)
    if when is not None:
        info.insert(1, f'when={when}')
    return '<{}>'.format(' '.join(info))


def extract_stack():
    # Frame 0 is this function; the native call adds no frame, so frame 1 is
    # the Python code that called loop.call_soon() & co.
    return format_helpers.extract_stack(sys._getframe(1))


def check_callback(callback, method):
    if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
        raise TypeError(f"coroutines cannot be used with {method}()")
    if not callable(callback):
        raise TypeError(
            f'a callable object was expected by {method}(), got {callback!r}')


def report_callback_error(handle, exc):
    """What asyncio's Handle._run does when a callback raises."""
    context = {
        'message': f'Exception in callback {_callback_source(handle)}',
        'exception': exc,
        'handle': handle,
    }
    tb = handle._source_traceback
    if tb:
        context['source_traceback'] = tb
    handle._loop.call_exception_handler(context)


def warn_slow_callback(handle, seconds):
    """Debug mode: a callback ran longer than loop.slow_callback_duration."""
    logger.warning('Executing %s took %.3f seconds',
                   base_events._format_handle(handle), seconds)
