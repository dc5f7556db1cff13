"""`python -m ferroloop`: the founding notes' examples, run on ferroloop.

Each section prints what the notes say it prints, then the loop-based
examples run on a ferroloop loop side by side with stock asyncio.
"""
import asyncio
import threading
import time
import types

import ferroloop


def generators():
    print("-- generators: next() and send()")

    def echo():
        while True:
            r = yield
            print(r)

    g = echo()
    next(g)
    for i in range(5):
        g.send(i)

    print("-- yield from as a data channel")

    def running_sum(num):
        res = 0
        while True:
            if num is None:
                break
            for i in range(1, num + 1):
                res += i
            num = yield res
            res = 0

    def proxy():
        while True:
            yield from running_sum(0)
            print("代理结束")

    p = proxy()
    p.send(None)
    for i in range(5, 10):
        print(p.send(i))
    p.send(None)


@types.coroutine
def hello_generator(out):
    # asyncio.coroutine was removed in Python 3.11; types.coroutine is the
    # generator-based equivalent the notes' example needs today.
    out.append('Hello world! (%s)' % threading.current_thread().name)
    yield from asyncio.sleep(0.2)
    out.append('Hello again! (%s)' % threading.current_thread().name)


async def hello_async(out):
    out.append("Hello world!")
    await asyncio.sleep(0.2)
    out.append("Hello again!")


def hellos(new_loop, name):
    out = []
    loop = new_loop()
    try:
        t0 = time.perf_counter()
        tasks = [loop.create_task(hello_generator(out)) for _ in range(2)]
        loop.run_until_complete(asyncio.wait(tasks))
        tasks = [loop.create_task(hello_async(out)) for _ in range(2)]
        loop.run_until_complete(asyncio.wait(tasks))
        elapsed = time.perf_counter() - t0
    finally:
        loop.close()
    print(f"-- hello coroutines on {name}: both coroutines sleep concurrently "
          f"({elapsed:.2f} s for two rounds of two 0.2 s sleeps)")
    for line in out:
        print("  ", line)


async def task_api():
    async def work(x):
        await asyncio.sleep(0.01)
        return x * 2

    loop = asyncio.get_running_loop()
    task = loop.create_task(work(21), name="work")
    fut = loop.create_future()
    loop.call_later(0.01, fut.set_result, "future done")
    print("-- Task and Future API on", type(loop).__name__)
    print("   task name:", task.get_name(), "| result:", await task)
    print("   future:", await fut)
    print("   gather:", await asyncio.gather(work(1), work(2), work(3)))
    try:
        await asyncio.wait_for(asyncio.sleep(10), 0.01)
    except asyncio.TimeoutError:
        print("   wait_for: timed out as asked")


def main():
    print(f"ferroloop {ferroloop.__version__}")
    generators()
    hellos(ferroloop.new_event_loop, "ferroloop")
    hellos(asyncio.new_event_loop, "asyncio")
    ferroloop.run(task_api())


if __name__ == "__main__":
    main()
