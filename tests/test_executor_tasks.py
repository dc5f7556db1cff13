"""Executors, async generators, and Futures/Tasks created through the loop."""
import asyncio
import concurrent.futures
import contextvars
import sys
import threading

import pytest

from conftest import TASK_CLASSES, WATCHDOG, new_loop



PY312 = sys.version_info >= (3, 12)


class Boom(Exception):
    pass


async def with_watchdog(aw, seconds=WATCHDOG):
    # asyncio.wait_for rather than asyncio.timeout so that 3.11 behaves the same
    return await asyncio.wait_for(aw, seconds)


# ---------------------------------------------------------------- executors


def test_run_in_executor_default_returns_result(loop):
    def work(a, b):
        return a + b, threading.current_thread() is not threading.main_thread()

    async def main():
        return await with_watchdog(loop.run_in_executor(None, work, 2, 3))

    assert loop.run_until_complete(main()) == (5, True)
    loop.run_until_complete(loop.shutdown_default_executor())


def test_run_in_executor_propagates_exception(loop):
    def work():
        raise KeyError("from thread")

    async def main():
        with pytest.raises(KeyError):
            await with_watchdog(loop.run_in_executor(None, work))

    loop.run_until_complete(main())
    loop.run_until_complete(loop.shutdown_default_executor())


def test_run_in_executor_returns_an_asyncio_future(loop):
    async def main():
        fut = loop.run_in_executor(None, lambda: 7)
        assert asyncio.isfuture(fut)
        return await with_watchdog(fut)

    assert loop.run_until_complete(main()) == 7
    loop.run_until_complete(loop.shutdown_default_executor())


def test_run_in_executor_with_custom_executor(loop):
    with concurrent.futures.ThreadPoolExecutor(max_workers=2,
                                               thread_name_prefix="custom-pool") as pool:
        async def main():
            return await with_watchdog(
                loop.run_in_executor(pool, lambda: threading.current_thread().name))

        name = loop.run_until_complete(main())
    assert name.startswith("custom-pool")


def test_run_in_executor_many_calls(loop):
    async def main():
        futs = [loop.run_in_executor(None, pow, i, 2) for i in range(50)]
        return await with_watchdog(asyncio.gather(*futs))

    assert loop.run_until_complete(main()) == [i * i for i in range(50)]
    loop.run_until_complete(loop.shutdown_default_executor())


def test_set_default_executor(loop):
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dflt-pool")
    loop.set_default_executor(pool)

    async def main():
        return await with_watchdog(
            loop.run_in_executor(None, lambda: threading.current_thread().name))

    try:
        assert loop.run_until_complete(main()).startswith("dflt-pool")
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        pool.shutdown(wait=True)


def test_set_default_executor_rejects_non_thread_pool(loop):
    class NotAThreadPool(concurrent.futures.Executor):
        def submit(self, fn, *args, **kwargs):
            raise AssertionError("must not be used")

    with pytest.raises(TypeError):
        loop.set_default_executor(NotAThreadPool())
    with pytest.raises(TypeError):
        loop.set_default_executor(None)


def test_run_in_executor_after_shutdown_default_executor_raises(loop):
    async def main():
        await with_watchdog(loop.run_in_executor(None, int))
        await with_watchdog(loop.shutdown_default_executor())
        with pytest.raises(RuntimeError):
            loop.run_in_executor(None, int)

    loop.run_until_complete(main())


def test_shutdown_default_executor_before_any_use(loop):
    loop.run_until_complete(loop.shutdown_default_executor())
    with pytest.raises(RuntimeError):
        loop.run_in_executor(None, int)


def test_shutdown_default_executor_does_not_block_custom_executors(loop):
    loop.run_until_complete(loop.shutdown_default_executor())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        async def main():
            return await with_watchdog(loop.run_in_executor(pool, lambda: "ok"))

        assert loop.run_until_complete(main()) == "ok"


def test_shutdown_default_executor_joins_threads(loop):
    before = set(threading.enumerate())

    async def main():
        await with_watchdog(asyncio.gather(
            *[loop.run_in_executor(None, threading.get_ident) for _ in range(8)]))
        await with_watchdog(loop.shutdown_default_executor())

    loop.run_until_complete(main())
    after = set(threading.enumerate())
    assert after <= before, f"leaked threads: {after - before}"


def test_run_in_executor_on_closed_loop_raises():
    lp = new_loop()
    lp.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        lp.run_in_executor(None, int)


def test_run_in_executor_rejects_coroutine_function_in_debug_mode(loop):
    loop.set_debug(True)

    async def coro_fn():
        pass

    with pytest.raises(TypeError):
        loop.run_in_executor(None, coro_fn)


def test_asyncio_to_thread(loop):
    async def main():
        return await with_watchdog(asyncio.to_thread(lambda x: x * 3, 5))

    assert loop.run_until_complete(main()) == 15
    loop.run_until_complete(loop.shutdown_default_executor())


# ---------------------------------------------------------------- async generators


def test_shutdown_asyncgens_finalizes_unfinished_generators(loop):
    events = []

    async def agen():
        try:
            events.append("started")
            yield 1
            yield 2
        finally:
            events.append("finalized")

    gens = []

    async def main():
        g = agen()
        gens.append(g)  # keep it alive so that only shutdown_asyncgens closes it
        assert await g.__anext__() == 1

    loop.run_until_complete(main())
    assert events == ["started"]
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert events == ["started", "finalized"]


def test_shutdown_asyncgens_reports_errors_in_finalizers(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def agen():
        try:
            yield 1
        finally:
            raise ZeroDivisionError("in finally")

    gens = []

    async def main():
        g = agen()
        gens.append(g)
        await g.__anext__()

    loop.run_until_complete(main())
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], ZeroDivisionError)
    assert contexts[0]["asyncgen"] is gens[0]


def test_abandoned_asyncgen_is_closed_by_the_loop(loop):
    events = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            events.append("finalized")

    async def main():
        g = agen()
        await g.__anext__()
        del g  # the finalizer hook schedules aclose() on the loop
        for _ in range(5):
            await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert events == ["finalized"]


def test_asyncgen_hooks_are_restored_after_run(loop):
    before = sys.get_asyncgen_hooks()
    inside = []

    async def main():
        inside.append(sys.get_asyncgen_hooks())

    loop.run_until_complete(main())
    assert inside[0].firstiter is not None
    assert sys.get_asyncgen_hooks() == before


# ---------------------------------------------------------------- futures and tasks


def test_create_future(loop):
    fut = loop.create_future()
    assert asyncio.isfuture(fut)
    assert fut.get_loop() is loop
    assert not fut.done()
    loop.call_soon(fut.set_result, "value")
    assert loop.run_until_complete(fut) == "value"


def test_create_task_runs_coroutine(loop):
    async def work(x):
        await asyncio.sleep(0)
        return x + 1

    task = loop.create_task(work(1))
    assert isinstance(task, TASK_CLASSES)
    assert task.get_loop() is loop
    assert loop.run_until_complete(task) == 2


def test_create_task_name(loop):
    async def work():
        return asyncio.current_task().get_name()

    task = loop.create_task(work(), name="the-name")
    assert task.get_name() == "the-name"
    assert loop.run_until_complete(task) == "the-name"

    unnamed = loop.create_task(work())
    assert unnamed.get_name().startswith("Task-")
    loop.run_until_complete(unnamed)


def test_create_task_context(loop):
    var = contextvars.ContextVar("task_var", default="unset")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in-ctx")

    async def work():
        seen = var.get()
        var.set("written-by-task")
        return seen

    task = loop.create_task(work(), context=ctx)
    assert loop.run_until_complete(task) == "in-ctx"
    assert ctx[var] == "written-by-task"
    assert var.get() == "unset"


def test_task_runs_in_a_copy_of_the_current_context(loop):
    var = contextvars.ContextVar("task_var2", default="unset")

    async def work():
        seen = var.get()
        var.set("changed")
        return seen

    token = var.set("outer")
    try:
        task = loop.create_task(work())
    finally:
        var.reset(token)
    assert loop.run_until_complete(task) == "outer"
    assert var.get() == "unset"


def test_create_task_rejects_non_coroutines(loop):
    with pytest.raises(TypeError):
        loop.create_task(42)


def test_task_factory(loop):
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append((lp, kwargs))
        return asyncio.Task(coro, loop=lp, **kwargs)

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def work():
        return "w"

    task = loop.create_task(work(), name="factory-made")
    assert loop.run_until_complete(task) == "w"
    assert task.get_name() == "factory-made"
    assert calls[0][0] is loop
    assert "context" not in calls[0][1]

    ctx = contextvars.copy_context()
    task2 = loop.create_task(work(), context=ctx)
    assert loop.run_until_complete(task2) == "w"
    assert calls[1][1].get("context") is ctx

    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    loop.run_until_complete(loop.create_task(work()))
    assert len(calls) == 2


def test_task_factory_used_by_ensure_future_and_run_until_complete(loop):
    made = []

    def factory(lp, coro, **kwargs):
        t = asyncio.Task(coro, loop=lp, **kwargs)
        made.append(t)
        return t

    loop.set_task_factory(factory)

    async def work():
        return 1

    assert loop.run_until_complete(work()) == 1
    assert len(made) == 1


def test_set_task_factory_rejects_non_callable(loop):
    with pytest.raises(TypeError):
        loop.set_task_factory(42)


def test_current_task_and_all_tasks(loop):
    async def child():
        await asyncio.sleep(0.01)

    async def main():
        me = asyncio.current_task()
        assert me is not None
        assert asyncio.current_task(loop) is me
        c = loop.create_task(child())
        tasks = asyncio.all_tasks()
        assert me in tasks and c in tasks
        assert asyncio.all_tasks(loop) == tasks
        await c
        assert c not in asyncio.all_tasks()
        return me

    task = loop.create_task(main())
    assert loop.run_until_complete(task) is task
    assert asyncio.current_task(loop) is None


def test_task_cancellation(loop):
    started = loop.create_future()

    async def sleeper():
        started.set_result(None)
        await asyncio.sleep(60)

    async def main():
        t = loop.create_task(sleeper())
        await started
        t.cancel("stop it")
        with pytest.raises(asyncio.CancelledError):
            await t
        return t.cancelled()

    assert loop.run_until_complete(with_watchdog(main())) is True


def test_gather_and_wait_for(loop):
    async def value(v, d):
        await asyncio.sleep(d)
        return v

    async def main():
        res = await asyncio.gather(value(1, 0.01), value(2, 0), value(3, 0.005))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(value(4, 10), 0.01)
        return res

    assert loop.run_until_complete(with_watchdog(main())) == [1, 2, 3]


def test_asyncio_timeout(loop):
    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await asyncio.sleep(10)
        async with asyncio.timeout(5):
            await asyncio.sleep(0)
        return "ok"

    assert loop.run_until_complete(with_watchdog(main())) == "ok"


def test_task_group(loop):
    async def ok(v):
        await asyncio.sleep(0)
        return v

    async def fails():
        await asyncio.sleep(0.005)
        raise Boom("in group")

    cancelled = []

    async def slow():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        async with asyncio.TaskGroup() as tg:
            t1 = tg.create_task(ok(1))
            t2 = tg.create_task(ok(2))
        assert (t1.result(), t2.result()) == (1, 2)

        with pytest.raises(ExceptionGroup) as info:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(slow())
                tg.create_task(fails())
        assert [type(e) for e in info.value.exceptions] == [Boom]
        return "done"

    assert loop.run_until_complete(with_watchdog(main())) == "done"
    assert cancelled == [True]


@pytest.mark.skipif(not PY312, reason="eager_task_factory is new in 3.12")
def test_eager_task_factory(loop):
    loop.set_task_factory(asyncio.eager_task_factory)
    order = []

    async def no_await():
        order.append("ran eagerly")
        return "eager"

    async def awaits():
        order.append("started eagerly")
        await asyncio.sleep(0)
        order.append("resumed")
        return "later"

    async def main():
        t1 = loop.create_task(no_await())
        order.append("after create 1")
        assert t1.done() and t1.result() == "eager"
        t2 = loop.create_task(awaits())
        order.append("after create 2")
        assert not t2.done()
        return await t2

    assert loop.run_until_complete(main()) == "later"
    assert order == ["ran eagerly", "after create 1", "started eagerly",
                     "after create 2", "resumed"]


@pytest.mark.skipif(not PY312, reason="eager_task_factory is new in 3.12")
def test_eager_task_factory_name_context_and_current_task(loop):
    # The eager step runs inside create_task with the task as current task
    # and in the given context; the name is set after it (asyncio sets a
    # factory-made task's name once the factory returned).
    loop.set_task_factory(asyncio.eager_task_factory)
    var = contextvars.ContextVar('var', default='unset')
    seen = {}

    async def child():
        seen['current'] = asyncio.current_task()
        seen['var'] = var.get()
        seen['name'] = asyncio.current_task().get_name()
        await asyncio.sleep(0)
        seen['name later'] = asyncio.current_task().get_name()
        return 'done'

    async def main():
        ctx = contextvars.copy_context()
        ctx.run(var.set, 'in ctx')
        t = loop.create_task(child(), name='given', context=ctx)
        assert seen['current'] is t
        assert asyncio.current_task() is not t  # restored after the step
        assert not t.done() and t in asyncio.all_tasks()
        assert t.get_name() == 'given'
        assert isinstance(t, asyncio.Task)
        return await t

    assert loop.run_until_complete(main()) == 'done'
    assert seen['var'] == 'in ctx'
    assert seen['name'] != 'given' and seen['name later'] == 'given'


# ---------------------------------------------------------------- runners


def test_asyncio_runner_with_loop_factory(loop_factory):
    async def main():
        return asyncio.get_running_loop()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        lp = runner.get_loop()
        assert runner.run(main()) is lp
        assert runner.run(main()) is lp
    assert lp.is_closed()


def test_asyncio_runner_debug_flag(loop_factory):
    async def main():
        return asyncio.get_running_loop().get_debug()

    with asyncio.Runner(debug=True, loop_factory=loop_factory) as runner:
        assert runner.run(main()) is True


def test_asyncio_runner_context(loop_factory):
    var = contextvars.ContextVar("runner_var", default="unset")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "runner-ctx")

    async def main():
        return var.get()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        assert runner.run(main(), context=ctx) == "runner-ctx"


@pytest.mark.skipif(not PY312, reason="asyncio.run(loop_factory=) is new in 3.12")
def test_asyncio_run_with_loop_factory(loop_factory):
    made = []

    def factory():
        lp = loop_factory()
        made.append(lp)
        return lp

    async def main():
        await asyncio.sleep(0)
        return asyncio.get_running_loop()

    assert asyncio.run(main(), loop_factory=factory) is made[0]
    assert made[0].is_closed()


def test_asyncio_runner_cancels_leftover_tasks(loop_factory):
    cancelled = []

    async def background():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        asyncio.get_running_loop().create_task(background())
        await asyncio.sleep(0)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    assert cancelled == [True]


def test_runner_leaves_no_threads_behind(loop_factory):
    before = set(threading.enumerate())

    async def main():
        await asyncio.to_thread(int)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    after = set(threading.enumerate())
    assert after <= before, f"leaked threads: {after - before}"
