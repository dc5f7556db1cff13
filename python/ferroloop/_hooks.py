"""Cold-path helpers the native core calls: formatting, debug-mode stack
capture, argument checks and error reporting.  They reuse asyncio's own
formatting helpers so ferroloop's messages read exactly like asyncio's.
"""
import sys
from asyncio import base_events, base_futures, base_tasks, coroutines, format_helpers
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
        # After 'cancelled', as asyncio's TimerHandle._repr_info puts it.
        info.insert(2 if handle._cancelled else 1, f'when={when}')
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


# -- native Future and Task ------------------------------------------------

def future_repr_info(future):
    return base_futures._future_repr_info(future)


def task_repr_info(task):
    return base_tasks._task_repr_info(task)


def _repr(obj, info):
    # 3.11 formats through the overridable _repr_info(); 3.12+ does not.
    if sys.version_info < (3, 12):
        info = obj._repr_info
    return '<{} {}>'.format(obj.__class__.__name__, ' '.join(info()))


def future_repr(future):
    return _repr(future, lambda: base_futures._future_repr_info(future))


def task_repr(task):
    return _repr(task, lambda: base_tasks._task_repr_info(task))


def task_get_stack(task, limit):
    return base_tasks._task_get_stack(task, limit)


def task_print_stack(task, limit, file):
    return base_tasks._task_print_stack(task, limit, file)


def report_never_retrieved(future):
    """A failed future was freed before anyone asked for its exception."""
    context = {
        'message': f'{future.__class__.__name__} exception was never retrieved',
        'exception': future._exception,
        'future': future,
    }
    if future._source_traceback:
        context['source_traceback'] = future._source_traceback
    future._loop.call_exception_handler(context)


def report_destroyed_pending(task):
    """A task was freed while still pending."""
    context = {
        'task': task,
        'message': 'Task was destroyed but it is pending!',
    }
    if task._source_traceback:
        context['source_traceback'] = task._source_traceback
    task._loop.call_exception_handler(context)


def transport_debug(transport, message):
    """Debug-mode transport events ("%r pauses reading", ...)."""
    logger.debug(message, transport)


def transport_info(transport, message):
    """Debug-mode transport events logged at INFO ("%r was closed by peer")."""
    logger.info(message, transport)


def warn_lost_write(pipe):
    """write() keeps being called after the connection was lost."""
    if pipe:
        logger.warning('pipe closed by peer or os.write(pipe, data) raised exception.')
    else:
        logger.warning('socket.send() raised exception.')
