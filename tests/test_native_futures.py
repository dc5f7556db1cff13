"""ferroloop's native Future and Task, method by method.

Each test uses the classes the loop under test makes (``loop.create_future()``,
``loop.create_task()``) or, where a class is needed, ``Future``/``Task`` below:
ferroloop's native classes by default, asyncio's own with
FERROLOOP_TEST_TARGET=asyncio -- which is how these tests were checked
against asyncio's real behaviour.
"""
import asyncio
import contextvars
import gc
import io
import pickle
import sys
import types
import weakref

import pytest

from conftest import new_loop, on_ferroloop

if on_ferroloop():
    import ferroloop

    Future, Task = ferroloop.Future, ferroloop.Task
else:
    Future, Task = asyncio.Future, asyncio.Task

PY312 = sys.version_info >= (3, 12)
PY313 = sys.version_info >= (3, 13)


def collect_errors(loop):
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    return errors


# -- Future ------------------------------------------------------------------

def test_create_future_makes_the_native_class(loop):
    fut = loop.create_future()
    assert type(fut) is Future
    assert asyncio.isfuture(fut)
    assert fut.get_loop() is loop
    assert not fut.done() and not fut.cancelled()


def test_result_and_exception_before_done_raise_invalid_state(loop):
    fut = loop.create_future()
    with pytest.raises(asyncio.InvalidStateError):
        fut.result()
    with pytest.raises(asyncio.InvalidStateError):
        fut.exception()


def test_set_result(loop):
    fut = loop.create_future()
    fut.set_result(42)
    assert fut.done() and not fut.cancelled()
    assert fut.result() == 42
    assert fut.exception() is None
    with pytest.raises(asyncio.InvalidStateError):
        fut.set_result(1)
    with pytest.raises(asyncio.InvalidStateError):
        fut.set_exception(ValueError())
    assert not fut.cancel()


def test_set_exception_instance_and_class(loop):
    fut = loop.create_future()
    err = ValueError("bad")
    fut.set_exception(err)
    assert fut.exception() is err
    with pytest.raises(ValueError, match="bad"):
        fut.result()
    fut2 = loop.create_future()
    fut2.set_exception(KeyError)
    assert isinstance(fut2.exception(), KeyError)


def test_set_exception_rejects_non_exceptions(loop):
    fut = loop.create_future()
    with pytest.raises(TypeError, match="invalid exception object"):
        fut.set_exception(42)
    assert not fut.done()


def test_set_exception_stop_iteration(loop):
    fut = loop.create_future()
    if PY313:
        # 3.13 stores a RuntimeError caused by the StopIteration.
        fut.set_exception(StopIteration())
        exc = fut.exception()
        assert isinstance(exc, RuntimeError)
        assert isinstance(exc.__cause__, StopIteration)
    else:
        with pytest.raises(TypeError, match="StopIteration .* cannot be raised"):
            fut.set_exception(StopIteration)
        assert not fut.done()


def test_cancel_with_message(loop):
    fut = loop.create_future()
    assert fut.cancel("stop it")
    assert fut.cancelled() and fut.done()
    assert not fut.cancel()
    with pytest.raises(asyncio.CancelledError) as info:
        fut.result()
    assert info.value.args == ("stop it",)
    with pytest.raises(asyncio.CancelledError):
        fut.exception()


def test_done_callbacks_run_in_order_through_the_loop(loop):
    fut = loop.create_future()
    seen = []
    fut.add_done_callback(lambda f: seen.append(("a", f.result())))
    fut.add_done_callback(lambda f: seen.append(("b", f.result())))
    fut.set_result(7)
    assert seen == []  # scheduled, not called
    loop.run_until_complete(asyncio.sleep(0))
    assert seen == [("a", 7), ("b", 7)]


def test_done_callback_added_after_completion_is_scheduled(loop):
    fut = loop.create_future()
    fut.set_result(1)
    seen = []
    fut.add_done_callback(seen.append)
    assert seen == []
    loop.run_until_complete(asyncio.sleep(0))
    assert seen == [fut]


def test_done_callback_context(loop):
    var = contextvars.ContextVar("var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in ctx")
    fut = loop.create_future()
    seen = []
    fut.add_done_callback(lambda f: seen.append(var.get()), context=ctx)
    var.set("at add time")
    fut.add_done_callback(lambda f: seen.append(var.get()))
    var.set("later")
    fut.set_result(None)
    loop.run_until_complete(asyncio.sleep(0))
    assert seen == ["in ctx", "at add time"]


def test_remove_done_callback_counts_removals(loop):
    fut = loop.create_future()
    seen = []

    def a(f):
        seen.append("a")

    def b(f):
        seen.append("b")

    for cb in (a, b, a, a):
        fut.add_done_callback(cb)
    assert fut.remove_done_callback(a) == 3
    assert fut.remove_done_callback(a) == 0
    fut.set_result(None)
    loop.run_until_complete(asyncio.sleep(0))
    assert seen == ["b"]


def test_done_callback_error_goes_to_the_exception_handler(loop):
    errors = collect_errors(loop)
    fut = loop.create_future()

    def boom(f):
        raise ZeroDivisionError("cb")

    fut.add_done_callback(boom)
    fut.set_result(None)
    loop.run_until_complete(asyncio.sleep(0))
    assert len(errors) == 1
    assert errors[0]["message"].startswith("Exception in callback")
    assert isinstance(errors[0]["exception"], ZeroDivisionError)


class Listener:
    """Bound methods as done callbacks (TaskGroup's pattern)."""

    def __init__(self):
        self.seen = []

    def on_done(self, fut):
        self.seen.append(("done", fut))

    def on_other(self, fut):
        self.seen.append(("other", fut))

    def boom(self, fut):
        raise ZeroDivisionError("method")


@pytest.mark.parametrize("debug", [False, True])
def test_bound_method_done_callbacks(loop, debug):
    loop.set_debug(debug)
    fut = loop.create_future()
    listener, other = Listener(), Listener()
    fut.add_done_callback(listener.on_done)
    fut.add_done_callback(listener.on_other)
    fut.add_done_callback(other.on_done)
    fut.add_done_callback(listener.on_done)
    # What _callbacks shows is equal to the methods added (a fresh bound
    # method compares equal: same function, same instance).
    assert [cb for cb, _ in fut._callbacks] == [
        listener.on_done, listener.on_other, other.on_done, listener.on_done]
    assert all(isinstance(cb, types.MethodType) for cb, _ in fut._callbacks)
    assert "Listener.on_done" in repr(fut)
    # Same function, other instance: not removed.
    assert fut.remove_done_callback(listener.on_done) == 2
    assert fut.remove_done_callback(listener.on_done) == 0
    fut.set_result(1)
    loop.run_until_complete(asyncio.sleep(0))
    assert listener.seen == [("other", fut)]
    assert other.seen == [("done", fut)]


def test_bound_method_done_callback_error_names_the_method(loop):
    errors = collect_errors(loop)
    fut = loop.create_future()
    fut.add_done_callback(Listener().boom)
    fut.set_result(None)
    loop.run_until_complete(asyncio.sleep(0))
    assert len(errors) == 1
    assert isinstance(errors[0]["exception"], ZeroDivisionError)
    assert "Listener.boom" in repr(errors[0]["handle"])


def test_cycle_through_a_bound_method_callback_is_collected(loop):
    # future -> callback's instance -> future: only the collector frees it.
    listener = Listener()
    fut = loop.create_future()
    listener.fut = fut
    fut.add_done_callback(listener.on_done)
    ref = weakref.ref(listener)
    del listener, fut
    gc.collect()
    assert ref() is None


class Holder:
    pass


def test_cycle_through_a_done_callbacks_context_is_collected(loop):
    # The callback's context copy holds a variable whose value holds the
    # pending future: only the collector can free them, and it must see
    # through the copy to do so.
    var = contextvars.ContextVar("holder")
    refs = []

    def make():
        holder = Holder()
        holder.fut = loop.create_future()
        var.set(holder)
        holder.fut.add_done_callback(lambda f: None)
        refs.append(weakref.ref(holder))

    for _ in range(50):
        contextvars.Context().run(make)
    gc.collect()
    assert [r for r in refs if r() is not None] == []


def test_done_callback_context_survives_collections_and_runs(loop):
    var = contextvars.ContextVar("v", default="unset")
    seen = []
    futs = []

    def add(i):
        var.set(i)
        fut = loop.create_future()
        fut.add_done_callback(lambda f: seen.append((var.get(), var.set("cb"))[0]))
        futs.append(fut)

    for i in range(300):
        contextvars.Context().run(add, i)
        if i % 50 == 0:
            gc.collect()
    # The contexts handed out are real, and the callbacks still run in them.
    ctx = futs[7]._callbacks[0][1]
    assert isinstance(ctx, contextvars.Context) and ctx[var] == 7
    assert gc.get_referents(futs[8])  # the traversal walks without error
    gc.collect()
    for fut in futs:
        fut.set_result(None)
    loop.run_until_complete(asyncio.sleep(0))
    gc.collect()
    assert seen == list(range(300))
    # Setting a variable in a callback's context stays in that context.
    assert var.get() == "unset"
    assert ctx[var] == "cb"


@pytest.mark.skipif(not on_ferroloop(), reason="ferroloop keeps a bound method as function + instance")
def test_bound_method_callbacks_keep_no_method_objects(loop):
    listener = Listener()
    futs = [loop.create_future() for _ in range(200)]
    gc.collect()
    before = sum(type(o) is types.MethodType for o in gc.get_objects())
    for fut in futs:
        fut.add_done_callback(listener.on_done)
    after = sum(type(o) is types.MethodType for o in gc.get_objects())
    assert after - before < 10
    for fut in futs:
        fut.set_result(None)
    loop.run_until_complete(asyncio.sleep(0))
    assert len(listener.seen) == 200


def test_await_future(loop):
    async def main():
        fut = loop.create_future()
        loop.call_soon(fut.set_result, "done")
        return await fut

    assert loop.run_until_complete(main()) == "done"


def test_await_done_future_returns_at_once(loop):
    fut = loop.create_future()
    fut.set_result((1, 2))  # a tuple must come back whole

    async def main():
        return await fut

    assert loop.run_until_complete(main()) == (1, 2)


class Result:
    pass


def test_awaited_values_come_back_whole_and_are_not_kept(loop):
    # On 3.12+ a finished await hands its value back in a recycled
    # StopIteration: any value must come back intact, and the exception must
    # not keep the last one alive once the awaiting code lets go of it.
    values = [None, 0, 10**20, "s", (), (1, 2), ((1,),), ValueError("v"),
              StopIteration(5), Result()]

    async def main():
        for value in values:
            fut = loop.create_future()
            loop.call_soon(fut.set_result, value)
            assert (await fut) is value
            done = loop.create_future()
            done.set_result(value)
            assert (await done) is value
        fut = loop.create_future()
        fut.set_result(Result())
        result = await fut
        ref = weakref.ref(result)
        del result, fut
        return ref

    values_ref = loop.run_until_complete(main())
    assert values_ref() is None  # freed the moment the coroutine dropped it


def test_stop_iterations_seen_by_python_code_are_its_own(loop):
    # next() on a finished future's iterator raises a StopIteration that is
    # the caller's to keep: later awaits do not change it.
    fut = loop.create_future()
    fut.set_result((5,))
    with pytest.raises(StopIteration) as first:
        next(iter(fut))
    caught = first.value
    # Exactly StopIteration: debuggers (bdb) skip an await's StopIteration
    # by `type is StopIteration`, and pickle looks the class up by name.
    assert type(caught) is StopIteration
    assert caught.value == (5,) and caught.args == ((5,),)
    assert repr(caught) == "StopIteration((5,))"
    assert pickle.loads(pickle.dumps(caught)).args == ((5,),)
    none = loop.create_future()
    none.set_result(None)
    with pytest.raises(StopIteration) as info:
        next(iter(none))
    assert info.value.args == () and info.value.value is None  # StopIteration()

    async def more():
        total = 0
        for i in range(100):
            f = loop.create_future()
            f.set_result(i)
            total += await f
        return total

    assert loop.run_until_complete(more()) == sum(range(100))
    assert caught.value == (5,) and caught.args == ((5,),)
    other = loop.create_future()
    other.set_result(7)
    try:
        raise KeyError("handled")
    except KeyError:
        with pytest.raises(StopIteration) as second:
            next(iter(other))
    assert second.value is not caught
    assert second.value.value == 7 and second.value.args == (7,)
    assert caught.value == (5,)


def test_awaits_under_constant_garbage_collection(loop):
    # Collections run between every allocation, while awaited values sit in
    # reference cycles: the StopIteration recycled on 3.12+ must neither be
    # cleared by the collector nor keep a value (cycle) alive.
    old = gc.get_threshold()
    gc.set_threshold(1, 1, 1)
    refs = []
    try:
        async def main():
            total = 0
            for i in range(300):
                fut = loop.create_future()
                node = Result()
                node.me, node.i = node, i
                refs.append(weakref.ref(node))
                loop.call_soon(fut.set_result, node)
                total += (await fut).i
                del node
            return total

        assert loop.run_until_complete(main()) == sum(range(300))
    finally:
        gc.set_threshold(*old)
    gc.collect()
    assert all(r() is None for r in refs)


@pytest.mark.skipif(not PY312, reason="sys.monitoring is new in 3.12")
def test_stop_iterations_kept_by_a_monitoring_tool_stay_intact(loop):
    # Coverage and debuggers on 3.12+ see each await's StopIteration through
    # sys.monitoring and may keep it: it must never be reused under them.
    mon = sys.monitoring
    tool = next(t for t in range(6) if mon.get_tool(t) is None)
    mon.use_tool_id(tool, "ferroloop-test")
    kept = []
    try:
        mon.register_callback(tool, mon.events.RAISE, lambda code, offset, exc: kept.append(exc))
        mon.set_events(tool, mon.events.RAISE)

        async def main():
            total = 0
            for i in range(100):
                fut = loop.create_future()
                loop.call_soon(fut.set_result, i)
                total += await fut
            return total

        assert loop.run_until_complete(main()) == sum(range(100))
    finally:
        mon.set_events(tool, 0)
        mon.register_callback(tool, mon.events.RAISE, None)
        mon.free_tool_id(tool)
    stops = [e for e in kept if isinstance(e, StopIteration)][:100]
    assert [e.value for e in stops] == list(range(100))
    assert [e.args for e in stops] == [(i,) for i in range(100)]
    assert len({id(e) for e in stops}) == 100


def test_future_iterator_protocol(loop):
    fut = loop.create_future()
    it = fut.__await__()
    assert next(it) is fut  # pending: yields the future itself
    assert fut._asyncio_future_blocking
    with pytest.raises(RuntimeError, match="await wasn't used with future"):
        next(it)
    fut.set_result(3)
    with pytest.raises(StopIteration) as info:
        next(it)
    assert info.value.value == 3
    it2 = iter(fut)
    with pytest.raises(StopIteration) as info:
        it2.send(None)
    assert info.value.value == 3
    with pytest.raises(ValueError):
        iter(fut).throw(ValueError("x"))


def test_asyncio_future_blocking_attribute(loop):
    fut = loop.create_future()
    assert fut._asyncio_future_blocking is False
    fut._asyncio_future_blocking = True
    assert fut._asyncio_future_blocking is True
    # Any value goes, by its truth (None is not a deletion).
    fut._asyncio_future_blocking = None
    assert fut._asyncio_future_blocking is False
    fut._asyncio_future_blocking = 1
    assert fut._asyncio_future_blocking is True
    with pytest.raises(AttributeError, match="cannot delete attribute"):
        del fut._asyncio_future_blocking


def test_num_cancels_requested_can_be_assigned(loop):
    async def body():
        pass

    task = loop.create_task(body())
    task._num_cancels_requested = 3
    assert task._num_cancels_requested == 3
    loop.run_until_complete(task)


def test_task_factory_returning_an_object_without_set_name(loop):
    # A factory may return any awaitable object; naming it needs set_name(),
    # which 3.11/3.12 only warn about and 3.13 requires.
    loop.set_task_factory(lambda lp, coro: (coro.close(), 42)[1])

    async def body():
        pass

    if sys.version_info >= (3, 13):
        with pytest.raises(AttributeError, match="set_name"):
            loop.create_task(body(), name="n")
    else:
        assert loop.create_task(body()) == 42
        with pytest.warns(DeprecationWarning, match=r"Task.set_name\(\) was added") as caught:
            assert loop.create_task(body(), name="n") == 42
        assert caught[0].filename == __file__


def test_log_traceback_can_only_be_cleared(loop):
    fut = loop.create_future()
    fut.set_exception(ValueError())
    assert fut._log_traceback
    with pytest.raises(ValueError, match="can only be set to False"):
        fut._log_traceback = True
    fut._log_traceback = False
    assert not fut._log_traceback


def test_repr(loop):
    fut = loop.create_future()
    assert repr(fut) == f"<{type(fut).__name__} pending>"
    fut.set_result(5)
    assert repr(fut) == f"<{type(fut).__name__} finished result=5>"
    cancelled = loop.create_future()
    cancelled.cancel()
    assert repr(cancelled) == f"<{type(fut).__name__} cancelled>"


def test_generic_alias():
    alias = Future[int]
    assert alias.__origin__ is Future
    assert alias.__args__ == (int,)


def test_subclass_without_super_init_is_not_initialized(loop):
    class Lazy(Future):
        def __init__(self, *args, **kwargs):
            pass

    fut = Lazy(loop=loop)
    with pytest.raises(RuntimeError, match="Future object is not initialized"):
        fut.get_loop()


def test_subclass_with_super_init(loop):
    class Mine(Future):
        def __init__(self, *, loop):
            super().__init__(loop=loop)
            self.extra = "kept"

    fut = Mine(loop=loop)
    fut.set_result(1)
    assert fut.result() == 1 and fut.extra == "kept"


def test_future_without_loop_uses_the_running_loop(loop):
    async def main():
        return Future().get_loop()

    assert loop.run_until_complete(main()) is loop


def test_unretrieved_exception_is_logged_when_freed(loop):
    errors = collect_errors(loop)
    fut = loop.create_future()
    fut.set_exception(ValueError("lost"))
    del fut
    gc.collect()
    assert len(errors) == 1
    assert errors[0]["message"] == f"{Future.__name__} exception was never retrieved"
    assert isinstance(errors[0]["exception"], ValueError)


def test_retrieved_exception_is_not_logged(loop):
    errors = collect_errors(loop)
    fut = loop.create_future()
    fut.set_exception(ValueError("seen"))
    fut.exception()
    del fut
    gc.collect()
    assert errors == []


def test_unretrieved_exception_of_a_subclass_is_logged(loop):
    class Sub(Future):
        pass

    errors = collect_errors(loop)
    fut = Sub(loop=loop)
    fut.set_exception(ValueError("lost"))
    del fut
    gc.collect()
    assert [e["message"] for e in errors] == ["Sub exception was never retrieved"]


def test_set_result_on_a_closed_loop_raises(loop):
    fut = loop.create_future()
    fut.add_done_callback(lambda f: None)
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        fut.set_result(1)


# -- Task --------------------------------------------------------------------

async def _value(x):
    await asyncio.sleep(0)
    return x


def test_create_task_takes_extra_keywords_only_where_cpython_does(loop):
    async def one():
        return 1

    if sys.version_info >= (3, 13, 3):
        # Passed on to the Task (eager_start is one of its keywords).
        task = loop.create_task(one(), eager_start=False)
        assert loop.run_until_complete(task) == 1
    else:
        coro = one()
        with pytest.raises(TypeError, match="unexpected keyword argument 'eager_start'"):
            loop.create_task(coro, eager_start=False)
        coro.close()


def test_awaited_future_repr_names_the_task_wakeup_as_asyncio(loop):
    async def main():
        fut = loop.create_future()

        async def waiter():
            await fut

        task = loop.create_task(waiter())
        await asyncio.sleep(0)
        shown = repr(fut)
        fut.set_result(None)
        await task
        return shown

    assert "cb=[Task.task_wakeup()]" in loop.run_until_complete(main())


def test_create_task_arguments_as_asyncio_takes_them(loop):
    var = contextvars.ContextVar("where", default="caller")

    async def one():
        return 1

    async def where():
        return var.get()

    ctx = contextvars.copy_context()
    ctx.run(var.set, "given")
    task = loop.create_task(coro=where(), name="kw", context=ctx)
    assert task.get_name() == "kw"
    assert loop.run_until_complete(task) == "given"
    with pytest.raises(TypeError):
        loop.create_task()
    coro, other = one(), one()
    with pytest.raises(TypeError):
        loop.create_task(coro, other)
    with pytest.raises(TypeError):
        loop.create_task(coro, coro=other)
    coro.close()
    other.close()


def test_create_task_makes_the_native_class(loop):
    async def main():
        task = loop.create_task(_value(1))
        assert type(task) is Task
        assert asyncio.isfuture(task)
        return await task

    assert loop.run_until_complete(main()) == 1


def test_task_constructor(loop):
    coro = _value(2)
    task = Task(coro, loop=loop, name="direct")
    assert task.get_coro() is coro
    assert task.get_name() == "direct"
    assert task.get_loop() is loop
    assert loop.run_until_complete(task) == 2
    assert task.done() and task.result() == 2


def test_task_rejects_non_coroutines(loop):
    with pytest.raises(TypeError, match="a coroutine was expected"):
        Task(lambda: None, loop=loop)


def test_task_names(loop):
    async def main():
        t1 = loop.create_task(_value(0))
        t2 = loop.create_task(_value(0))
        n1, n2 = t1.get_name(), t2.get_name()
        assert n1.startswith("Task-") and n2 == f"Task-{int(n1[5:]) + 1}"
        t1.set_name(123)
        assert t1.get_name() == "123"
        await asyncio.gather(t1, t2)

    loop.run_until_complete(main())


def test_task_context(loop):
    var = contextvars.ContextVar("var", default="outer")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "given")

    async def read():
        return var.get()

    async def main():
        t = loop.create_task(read(), context=ctx)
        if PY312:  # Task.get_context() is new in 3.12
            assert t.get_context() is ctx
        return await t

    assert loop.run_until_complete(main()) == "given"


def test_cycles_through_a_task_context_are_collected(loop):
    # context -> (variable's value) holder -> task -> context: the garbage
    # collector must see every edge, whoever holds the context.
    var = contextvars.ContextVar("var")

    class Holder:
        pass

    async def make_cycle():
        holder = Holder()
        holder.task = asyncio.current_task()
        var.set(holder)
        return weakref.ref(holder)

    async def main():
        return await loop.create_task(make_cycle())

    ref = loop.run_until_complete(main())
    gc.collect()
    assert ref() is None


def test_task_set_result_and_set_exception_are_refused(loop):
    task = loop.create_task(_value(0))
    with pytest.raises(RuntimeError, match="Task does not support set_result operation"):
        task.set_result(1)
    with pytest.raises(RuntimeError, match="Task does not support set_exception operation"):
        task.set_exception(ValueError())
    loop.run_until_complete(task)


def test_task_exception_keeps_its_traceback(loop):
    async def fail():
        raise KeyError("k")

    task = loop.create_task(fail())
    loop.run_until_complete(asyncio.wait([task]))
    exc = task.exception()
    assert isinstance(exc, KeyError)
    assert exc.__traceback__ is not None


def test_task_cancel_with_message_reaches_the_coroutine(loop):
    seen = []

    async def sleeper():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError as exc:
            seen.append(exc.args)
            raise

    async def main():
        t = loop.create_task(sleeper())
        await asyncio.sleep(0)
        assert t.cancel("enough")
        assert t.cancelling() == 1
        with pytest.raises(asyncio.CancelledError):
            await t
        assert t.cancelled()

    loop.run_until_complete(main())
    assert seen == [("enough",)]


def test_cancel_before_first_step(loop):
    ran = []

    async def never():
        ran.append(True)

    task = loop.create_task(never())
    assert task.cancel()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)
    assert ran == []


def test_uncancel(loop):
    async def main():
        t = loop.create_task(asyncio.sleep(10))
        await asyncio.sleep(0)
        t.cancel()
        t.cancel()
        assert t.cancelling() == 2
        assert t.uncancel() == 1
        assert t.uncancel() == 0
        assert t.uncancel() == 0
        with pytest.raises(asyncio.CancelledError):
            await t

    loop.run_until_complete(main())


def test_cancel_swallowed_by_the_coroutine(loop):
    async def stubborn():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "kept going"

    async def main():
        t = loop.create_task(stubborn())
        await asyncio.sleep(0)
        t.cancel()
        return await t

    assert loop.run_until_complete(main()) == "kept going"


def test_timeout_and_taskgroup_use_cancelling(loop):
    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await asyncio.sleep(10)
        assert asyncio.current_task().cancelling() == 0
        with pytest.raises(ExceptionGroup):
            async with asyncio.TaskGroup() as tg:
                tg.create_task(asyncio.sleep(10))
                tg.create_task(_raise_later())

    loop.run_until_complete(main())


async def _raise_later():
    await asyncio.sleep(0)
    raise ValueError("in group")


def test_current_task_and_all_tasks_see_native_tasks(loop):
    async def child():
        return asyncio.current_task()

    async def main():
        me = asyncio.current_task()
        assert type(me) is Task
        t = loop.create_task(child())
        assert t in asyncio.all_tasks()
        assert me in asyncio.all_tasks()
        assert await t is t
        assert t not in asyncio.all_tasks()

    loop.run_until_complete(main())
    assert asyncio.all_tasks(loop) == set()


def test_get_stack_and_print_stack(loop):
    async def main():
        t = loop.create_task(asyncio.sleep(10))
        await asyncio.sleep(0)
        frames = t.get_stack()
        assert frames and frames[-1].f_code.co_name == "sleep"
        out = io.StringIO()
        t.print_stack(file=out)
        assert "Stack for" in out.getvalue()
        t.cancel()

    loop.run_until_complete(main())


def test_task_repr(loop):
    async def main():
        t = loop.create_task(_value(1), name="shown")
        r = repr(t)
        assert r.startswith(f"<{type(t).__name__} pending name='shown' coro=<_value()")
        await t
        assert "finished" in repr(t) and "result=1" in repr(t)

    loop.run_until_complete(main())


def test_destroyed_pending_task_is_logged(loop):
    errors = collect_errors(loop)

    async def forever(fut):
        await fut

    fut = loop.create_future()
    loop.create_task(forever(fut))
    loop.run_until_complete(asyncio.sleep(0))
    del fut  # nothing refers to the task any more, except its own cycle
    gc.collect()
    assert [e["message"] for e in errors] == ["Task was destroyed but it is pending!"]


def test_native_task_awaits_asyncio_future_and_task(loop):
    async def inner():
        await asyncio.sleep(0)
        return "inner"

    async def main():
        fut = asyncio.Future(loop=loop)
        loop.call_soon(fut.set_result, "aio future")
        got = [await fut]
        got.append(await asyncio.Task(inner(), loop=loop))
        return got

    assert loop.run_until_complete(main()) == ["aio future", "inner"]


def test_asyncio_task_awaits_native_future(loop):
    async def main():
        fut = loop.create_future()
        loop.call_soon(fut.set_result, "native")
        return await fut

    task = asyncio.Task(main(), loop=loop)
    assert loop.run_until_complete(task) == "native"


def test_generator_based_coroutine(loop):
    @types.coroutine
    def legacy():
        value = yield from asyncio.sleep(0, result="legacy")
        return value

    async def run_legacy():
        # Since 3.12 a Task only takes real coroutines; awaiting a
        # generator-based one works everywhere.
        return await legacy()

    async def main():
        return await loop.create_task(run_legacy())

    assert loop.run_until_complete(main()) == "legacy"


def test_bad_yields_fail_the_task(loop):
    @types.coroutine
    def bad_value():
        yield 42

    @types.coroutine
    def bare_generator():
        yield (x for x in ())

    @types.coroutine
    def non_blocking_future():
        fut = loop.create_future()
        yield fut  # not through `await`: _asyncio_future_blocking is False

    async def awaiting(gen_coro):
        await gen_coro()

    t1 = loop.create_task(awaiting(bad_value))
    t2 = loop.create_task(awaiting(bare_generator))
    t3 = loop.create_task(awaiting(non_blocking_future))
    loop.run_until_complete(asyncio.wait([t1, t2, t3]))
    with pytest.raises(RuntimeError, match="Task got bad yield: 42"):
        t1.result()
    with pytest.raises(RuntimeError, match="yield was used instead of yield from for generator"):
        t2.result()
    with pytest.raises(RuntimeError, match="yield was used instead of yield from in task"):
        t3.result()


def test_task_awaiting_itself_fails(loop):
    async def main():
        return await asyncio.current_task()

    task = loop.create_task(main())
    loop.run_until_complete(asyncio.wait([task]))
    with pytest.raises(RuntimeError, match="Task cannot await on itself"):
        task.result()


def test_future_of_another_loop_fails_the_task(loop):
    other = new_loop()
    try:
        foreign = other.create_future()

        async def main():
            await foreign

        task = loop.create_task(main())
        loop.run_until_complete(asyncio.wait([task]))
        with pytest.raises(RuntimeError, match="attached to a different loop"):
            task.result()
    finally:
        other.close()


def test_asyncio_helpers_work_with_native_tasks(loop):
    async def main():
        a = loop.create_task(_value("a"))
        b = loop.create_task(_value("b"))
        assert await asyncio.gather(a, b) == ["a", "b"]
        assert await asyncio.shield(loop.create_task(_value("s"))) == "s"
        assert await asyncio.wait_for(_value("w"), 1) == "w"
        done, pending = await asyncio.wait([loop.create_task(_value(1))])
        assert not pending and done.pop().result() == 1
        results = [await f for f in asyncio.as_completed([_value(1), _value(2)])]
        assert sorted(results) == [1, 2]
        assert await loop.run_in_executor(None, lambda: "exec") == "exec"
        return "ok"

    assert loop.run_until_complete(main()) == "ok"


def test_run_coroutine_threadsafe(loop):
    import threading

    result = []

    def worker():
        cf = asyncio.run_coroutine_threadsafe(_value("from thread"), loop)
        result.append(cf.result(timeout=10))
        loop.call_soon_threadsafe(loop.stop)

    th = threading.Thread(target=worker)
    th.start()
    loop.run_forever()
    th.join()
    assert result == ["from thread"]


@pytest.mark.skipif(not PY312, reason="eager tasks are new in Python 3.12")
def test_eager_start(loop):
    steps = []

    async def eager():
        steps.append("ran")
        return "eager"

    async def main():
        t = Task(eager(), loop=loop, eager_start=True)
        steps.append("created")
        assert t.done() and t.result() == "eager"
        factory = asyncio.create_eager_task_factory(Task)
        loop.set_task_factory(factory)
        t2 = loop.create_task(_value("later"))
        assert type(t2) is Task and not t2.done()
        assert await t2 == "later"

    loop.run_until_complete(main())
    assert steps == ["ran", "created"]


@pytest.mark.skipif(not PY312, reason="eager tasks are new in Python 3.12")
def test_all_tasks_lists_an_eager_task_while_its_first_step_runs(loop):
    seen = {}

    async def child(key, suspend):
        seen[key] = (asyncio.current_task(), asyncio.all_tasks())
        if suspend:
            await asyncio.sleep(0)

    async def main():
        me = asyncio.current_task()
        done = Task(child("done", False), loop=loop, eager_start=True)
        assert done.done()
        assert done in seen["done"][1] and me in seen["done"][1]
        assert seen["done"][0] is done
        assert done not in asyncio.all_tasks()  # finished in its first step
        pending = Task(child("pending", True), loop=loop, eager_start=True)
        assert pending in seen["pending"][1]
        assert pending in asyncio.all_tasks()  # suspended: listed from now on
        await pending
        assert asyncio.all_tasks() == {me}

    loop.run_until_complete(main())


@pytest.mark.skipif(not PY312, reason="eager tasks are new in Python 3.12")
def test_eager_start_asks_the_loops_own_is_running():
    # asyncio's Task calls loop.is_running(): a subclass that says no gets a
    # task scheduled the ordinary way.
    base = type(new_loop())

    class NeverRunning(base):
        def is_running(self):
            return False

    lp = NeverRunning()
    try:
        ran = []

        async def child():
            ran.append("child")

        async def main():
            t = Task(child(), loop=lp, eager_start=True)
            assert ran == [] and not t.done()
            await t
            assert ran == ["child"]

        lp.run_until_complete(main())
    finally:
        lp.close()


def test_finished_task_is_freed_without_the_garbage_collector(loop):
    async def main():
        t = loop.create_task(_value(1))
        await t
        return weakref.ref(t)

    gc.disable()
    try:
        ref = loop.run_until_complete(main())
        assert ref() is None
    finally:
        gc.enable()


def test_a_million_tasks_leave_no_memory_behind(loop):
    async def tiny(i):
        return i

    async def batch(n):
        create_task = loop.create_task
        return await asyncio.gather(*[create_task(tiny(i)) for i in range(n)])

    loop.run_until_complete(batch(1000))  # warm up free lists and caches
    gc.collect()
    before = sys.getallocatedblocks()
    total = 0
    for _ in range(100):
        total += len(loop.run_until_complete(batch(10_000)))
    gc.collect()
    after = sys.getallocatedblocks()
    assert total == 1_000_000
    # A leak of even one object per task would be a million blocks.
    assert after - before < 2000


def test_task_context_cycles_are_collected(loop):
    # ferroloop keeps a task's own context copy off the GC's list until the
    # task first runs; once code has run in it, a cycle through a context
    # variable (task -> context -> value -> task) must still be collectable.
    var = contextvars.ContextVar("var")
    errors = collect_errors(loop)
    never = loop.create_future()

    async def holds_itself():
        var.set([asyncio.current_task()])
        await never

    task = loop.create_task(holds_itself())
    loop.run_until_complete(asyncio.sleep(0))
    assert not task.done()
    if hasattr(task, "get_context"):  # asyncio's Task has it from 3.12
        ctx = task.get_context()
        assert gc.is_tracked(ctx)
        assert ctx[var] == [task]
        del ctx
    gone = weakref.ref(task)
    del task
    never = None
    loop.run_until_complete(asyncio.sleep(0))
    gc.collect()
    assert gone() is None
    assert [e["message"] for e in errors] == ["Task was destroyed but it is pending!"]


def test_pending_task_context_cycle_is_collected_when_nobody_took_the_context(loop):
    # As above, but nobody takes the context (no get_context()), the task
    # takes a second step in it, and a collection runs while a step does.
    var = contextvars.ContextVar("var")
    errors = collect_errors(loop)
    never = loop.create_future()

    async def holds_itself():
        var.set([asyncio.current_task()])
        await asyncio.sleep(0)  # a second step in the same context
        gc.collect()  # a collection while the step runs in that context
        await never

    task = loop.create_task(holds_itself())
    for _ in range(3):
        loop.run_until_complete(asyncio.sleep(0))
    assert not task.done()
    gone = weakref.ref(task)
    del task
    never = None
    gc.collect()
    assert gone() is None
    assert [e["message"] for e in errors] == ["Task was destroyed but it is pending!"]


def test_values_a_kept_token_reaches_survive_the_tasks_collection(loop):
    # ContextVar.set() returns a Token holding the context it ran in (the
    # task's own copy), so the copy outlives the task here.  A collection
    # that takes the finished task's cycle must leave what the copy holds
    # alone (a review found an untracked copy's contents cleared: the GC
    # counted the task as its only holder).
    var = contextvars.ContextVar("var")
    tokens = []
    live = weakref.WeakValueDictionary()

    class Conn:
        pass

    async def handler(n):
        conn = Conn()
        conn.n = n
        conn.task = asyncio.current_task()  # a cycle back to the task
        live[n] = conn
        tokens.append(var.set(conn))

    async def main():
        for n in range(50):
            loop.create_task(handler(n))
        for _ in range(3):
            await asyncio.sleep(0)

    loop.run_until_complete(main())
    gc.collect()
    assert sorted(live) == list(range(50))
    assert all(live[n].n == n for n in range(50))
    tokens.clear()
    gc.collect()
    assert len(live) == 0


def test_task_context_variables_survive_collections_between_steps(loop):
    var = contextvars.ContextVar("var")

    async def worker(i):
        var.set([i] * 3)
        for _ in range(5):
            await asyncio.sleep(0)
            gc.collect()
            assert var.get() == [i] * 3
        return var.get()

    async def main():
        return await asyncio.gather(*[worker(i) for i in range(20)])

    assert loop.run_until_complete(main()) == [[i] * 3 for i in range(20)]


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
def test_unstarted_task_context_cycle_is_collected_after_close():
    # The task never runs: its context copy (still off the GC's list on
    # ferroloop) holds a list that holds the task.  Closing the loop lets go
    # of the task; the cycle must then be collectable.
    var = contextvars.ContextVar("var")
    lp = new_loop()
    errors = collect_errors(lp)

    async def never_runs():
        pass

    def make():
        holder = []
        var.set(holder)
        task = lp.create_task(never_runs())
        holder.append(task)
        return weakref.ref(task)

    gone = contextvars.Context().run(make)
    lp.close()
    gc.collect()
    assert gone() is None
    assert [e["message"] for e in errors] == ["Task was destroyed but it is pending!"]


def test_finished_task_context_cycle_is_collected(loop):
    var = contextvars.ContextVar("var")

    async def holds_itself():
        var.set(asyncio.current_task())
        return 1

    task = loop.create_task(holds_itself())
    assert loop.run_until_complete(task) == 1
    gone = weakref.ref(task)
    del task
    gc.collect()
    assert gone() is None


# -- switching back to asyncio's classes --------------------------------------

@pytest.mark.skipif(not on_ferroloop(), reason="ferroloop's switch")
def test_native_futures_false_uses_asyncios_classes():
    lp = ferroloop.new_event_loop(native_futures=False)
    try:
        fut = lp.create_future()
        assert isinstance(fut, asyncio.Future)

        async def main():
            return type(asyncio.current_task())

        assert issubclass(lp.run_until_complete(main()), asyncio.Task)
    finally:
        lp.close()


@pytest.mark.skipif(not on_ferroloop(), reason="ferroloop's switch")
def test_switch_through_run_and_the_policy():
    async def main():
        return type(asyncio.current_task())

    assert issubclass(ferroloop.run(main(), native_futures=False), asyncio.Task)
    assert ferroloop.run(main()) is ferroloop.Task
    policy = ferroloop.EventLoopPolicy(native_futures=False)
    lp = policy.new_event_loop()
    try:
        assert issubclass(type(lp.create_future()), asyncio.Future)
    finally:
        lp.close()


@pytest.mark.skipif(not on_ferroloop(), reason="ferroloop's native classes")
def test_native_classes_pass_asyncios_isinstance_checks(loop):
    async def coro():
        return isinstance(asyncio.current_task(), asyncio.Task)

    fut = loop.create_future()
    assert type(fut) is ferroloop.Future
    assert isinstance(fut, asyncio.Future) and not isinstance(fut, asyncio.Task)
    assert fut.__class__ is asyncio.Future
    task = loop.create_task(coro())
    assert isinstance(task, asyncio.Task) and isinstance(task, asyncio.Future)
    assert type(task) is ferroloop.Task
    assert loop.run_until_complete(task) is True
    assert isinstance(task, ferroloop.Task) and isinstance(fut, ferroloop.Future)

    class Sub(ferroloop.Future):
        pass

    sub = Sub(loop=loop)
    assert sub.__class__ is Sub and not isinstance(sub, asyncio.Future)
    with pytest.raises(AttributeError):
        fut.__class__ = Sub


def test_reference_cycles_through_futures_are_collected(loop):
    class Sub(Future):
        pass

    refs = []
    for cls in (Future, Sub):
        fut = cls(loop=loop)
        fut.add_done_callback(lambda f, fut=fut: None)  # cycle through a callback
        fut.me = fut  # and through the instance dict
        refs.append(weakref.ref(fut))
        del fut

    async def waiter(fut):
        await fut

    fut = loop.create_future()
    task = loop.create_task(waiter(fut))
    loop.run_until_complete(asyncio.sleep(0))
    task.cycle = task
    refs.append(weakref.ref(task))
    task._log_destroy_pending = False
    del task, fut
    gc.collect()
    assert [r() for r in refs] == [None, None, None]


def test_remove_done_callback_checks_identity_first(loop):
    class NeverEqual:
        def __eq__(self, other):
            return False

        __hash__ = object.__hash__

        def __call__(self, fut):
            pass

    cb = NeverEqual()
    fut = loop.create_future()
    fut.add_done_callback(cb)
    assert fut.remove_done_callback(cb) == 1


def test_await_uninitialized_future_fails(loop):
    class Lazy(Future):
        def __init__(self, *args, **kwargs):
            pass

    with pytest.raises(RuntimeError, match="not initialized"):
        iter(Lazy(loop=loop))


@pytest.mark.skipif(not PY312, reason="eager tasks are new in Python 3.12")
def test_eager_start_takes_any_truthy_value(loop):
    async def main():
        t = Task(_value_now(), loop=loop, eager_start=1)
        return t.done()

    assert loop.run_until_complete(main()) is True


async def _value_now():
    return 1


@pytest.mark.skipif(not on_ferroloop(), reason="ferroloop's native callback queue")
def test_future_callbacks_skip_call_soon_on_a_plain_loop(loop):
    # Only an overriding call_soon (below) routes them through call_soon;
    # the loop class's own copy of the native method is not an override.
    assert loop._native_callbacks_enabled()

    class Overriding(type(loop)):
        def call_soon(self, *args, **kwargs):
            return super().call_soon(*args, **kwargs)

    other = Overriding()
    try:
        assert not other._native_callbacks_enabled()
    finally:
        other.close()


def test_future_callbacks_go_through_an_overridden_call_soon(loop_factory):
    probe = loop_factory()
    base = type(probe)
    probe.close()
    calls = []

    class Counting(base):
        def call_soon(self, callback, *args, context=None):
            calls.append(callback)
            return super().call_soon(callback, *args, context=context)

    loop = Counting()
    try:
        fut = loop.create_future()
        fut.add_done_callback(lambda f: None)
        fut.set_result(1)
        assert len(calls) == 1
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()


def test_futures_and_tasks_duck_type_like_asyncios(loop):
    import collections.abc
    import inspect

    async def main():
        fut = loop.create_future()
        task = loop.create_task(_value(0))
        for obj in (fut, task):
            assert inspect.isawaitable(obj)
            assert isinstance(obj, collections.abc.Awaitable)
            assert not isinstance(obj, collections.abc.Coroutine)
            assert not isinstance(obj, collections.abc.Iterator)
            assert not asyncio.iscoroutine(obj)
            assert asyncio.ensure_future(obj) is obj
            assert hash(obj) == hash(obj) and obj == obj
        assert fut != loop.create_future()
        fut.cancel()
        await task

    loop.run_until_complete(main())


def test_future_callbacks_go_through_a_replaced_call_soon(loop):
    calls = []
    original = loop.call_soon

    def counting(callback, *args, context=None):
        calls.append(callback)
        return original(callback, *args, context=context)

    fut = loop.create_future()  # made before the replacement
    fut.add_done_callback(lambda f: None)
    loop.call_soon = counting
    fut.set_result(1)
    assert len(calls) == 1
    loop.run_until_complete(asyncio.sleep(0))
    assert len(calls) > 1  # the task steps of run_until_complete too


def test_futures_and_tasks_take_attributes_and_weak_references(loop):
    async def coro():
        return 1

    fut = loop.create_future()
    task = loop.create_task(coro())
    for obj in (fut, task):
        # No instance dict until an attribute is set (asyncio's C classes
        # make theirs lazily too): nothing for the collector to visit.
        assert not any(isinstance(r, dict) for r in gc.get_referents(obj))
        with pytest.raises(AttributeError):
            obj.label
        obj.label = "x"
        assert obj.label == "x"
        assert any(r == {"label": "x"} for r in gc.get_referents(obj))
        del obj.label
        with pytest.raises(AttributeError):
            obj.label
        assert weakref.ref(obj)() is obj
    loop.run_until_complete(task)
    fut.cancel()
    refs = [weakref.ref(fut), weakref.ref(task)]
    del fut, task, obj
    assert [r() for r in refs] == [None, None]


def test_a_step_that_finds_another_task_current_is_an_error(loop):
    errors = collect_errors(loop)
    intruder = loop.create_future()
    seen = []

    async def main():
        # Swap the current task behind the loop's back: when this step
        # ends, leaving this task finds the intruder instead.
        asyncio.tasks._leave_task(loop, asyncio.current_task())
        asyncio.tasks._enter_task(loop, intruder)
        await asyncio.sleep(0)

    def restore():
        # The intruder stayed current; take it out.
        seen.append(asyncio.tasks._current_tasks.get(loop))
        asyncio.tasks._leave_task(loop, intruder)

    loop.create_task(main())
    loop.call_soon(restore)  # queued after main's first step
    loop.call_soon(loop.call_soon, loop.stop)
    loop.run_forever()
    messages = [str(ctx.get("exception")) for ctx in errors]
    assert any("Leaving task" in m and "does not match the current task" in m for m in messages), messages
    assert seen == [intruder]


def test_a_step_while_another_task_is_current_is_an_error(loop):
    errors = collect_errors(loop)
    intruder = loop.create_future()

    async def main():
        return 1

    asyncio.tasks._enter_task(loop, intruder)  # outside of any step
    task = loop.create_task(main())
    loop.call_soon(asyncio.tasks._leave_task, loop, intruder)  # after the step
    loop.call_soon(loop.stop)
    loop.run_forever()
    messages = [str(ctx.get("exception")) for ctx in errors]
    assert any("Cannot enter into task" in m and "while another task" in m for m in messages), messages
    assert asyncio.tasks._current_tasks.get(loop) is None
    # The failed step never ran the coroutine.
    assert not task.done()
    task._log_destroy_pending = False
    task.get_coro().close()
