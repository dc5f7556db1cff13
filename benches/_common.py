"""Helpers shared by the benchmark scripts (imported from the scripts'
own directory, which Python puts first on sys.path)."""
import asyncio
import importlib
import os
import platform
import signal
import sys


def describe_exit(rc: int) -> str:
    """A subprocess's return code in words ("killed by SIGKILL", ...)."""
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def make_loop(name):
    """A new event loop of the named kind ("asyncio", "uvloop", "rloop",
    "ferroloop")."""
    if name == "asyncio":
        # What asyncio.new_event_loop() gives on Linux, taken directly so an
        # installed policy cannot swap it.
        return asyncio.SelectorEventLoop()
    return importlib.import_module(name).new_event_loop()


def available_loops(names):
    """The named loops that import (asyncio always does), and a note for
    each one that does not."""
    out, notes = [], []
    for name in names:
        if name == "asyncio":
            out.append(name)
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            notes.append(f"{name}: not installed ({exc})")
            continue
        out.append(name)
    return out, notes


def machine():
    """The interpreter and machine a report was measured on."""
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
