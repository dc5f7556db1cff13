#!/usr/bin/env python3
"""Run uvloop's own test suite on ferroloop and compare with stock asyncio.

Usage
-----
    python conformance/uvloop_suite.py            # with the interpreter ferroloop is in
    python conformance/uvloop_suite.py -v         # also list tests that pass on ferroloop only

uvloop's tests (shipped in its source distribution, not in its wheels) run
most of their cases twice: ``Test_UV_*`` classes on uvloop and
``Test_AIO_*`` classes on ``asyncio.new_event_loop()``, both through
``uvloop._testbase``.  This script downloads the sdist of the uvloop version
installed here (pip, from PyPI; cached in ``.cache/uvloop-tests``), and runs
the AIO classes twice in fresh pytest processes: as they are (the
baseline), and with ``AIOTestCase.new_loop``/``new_policy`` returning
ferroloop's loop and policy.  The tests then see a loop whose module is not
``asyncio``, so they also check the behaviours uvloop adds where asyncio
falls short (``is_asyncio_loop()`` is false).

A test that passes on asyncio but fails, errors or does not run on ferroloop
is a regression: exit status 1.  Tests failing on stock asyncio here are
ignored.  Nothing of uvloop's is copied into this repository.

Needs, besides ferroloop: uvloop (for ``_testbase``), pytest, pytest-timeout,
and the suite's own imports (psutil, pyOpenSSL; aiohttp is optional).
"""
import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(os.path.dirname(HERE), ".cache", "uvloop-tests")

# Written next to the extracted tests: in ferroloop mode, uvloop's AIO test
# base class makes ferroloop loops and policies.
CONFTEST = '''\
import os
from uvloop import _testbase as tb

if os.environ.get("FERROLOOP_UVLOOP_SUITE") == "ferroloop":
    import ferroloop
    tb.AIOTestCase.new_loop = lambda self: ferroloop.new_event_loop()
    tb.AIOTestCase.new_policy = lambda self: ferroloop.EventLoopPolicy()
'''


def uvloop_version() -> str:
    try:
        import uvloop
    except ImportError:
        sys.exit("uvloop_suite: uvloop is not installed (pip install uvloop)")
    return uvloop.__version__


def fetch_tests(version: str) -> str:
    """The extracted tests/ folder of uvloop `version`'s sdist."""
    root = os.path.join(CACHE, version)
    tests = os.path.join(root, "tests")
    if not os.path.isdir(tests):
        os.makedirs(root, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                            "--no-binary", ":all:", "-d", tmp,
                            f"uvloop=={version}"], check=True)
            sdists = [f for f in os.listdir(tmp) if f.endswith(".tar.gz")]
            if not sdists:
                sys.exit(f"uvloop_suite: no sdist of uvloop {version} downloaded")
            with tarfile.open(os.path.join(tmp, sdists[0])) as tar:
                prefix = f"uvloop-{version}/tests/"
                members = [m for m in tar.getmembers()
                           if m.name.startswith(prefix) and (m.isfile() or m.isdir())]
                for m in members:
                    m.name = m.name[len(f"uvloop-{version}/"):]
                tar.extractall(root, members=members, filter="data")
    with open(os.path.join(tests, "conftest.py"), "w") as f:
        f.write(CONFTEST)
    # Its own rootdir: pytest must not take this repository's settings.
    with open(os.path.join(tests, "pytest.ini"), "w") as f:
        f.write("[pytest]\n")
    return tests


def outcomes(junit_path: str) -> dict:
    """test id -> 'passed' | 'failed' | 'skipped' from a junit XML file."""
    result = {}
    for case in ET.parse(junit_path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            result[name] = "failed"
        elif "skipped" in kinds:
            result[name] = result.get(name, "skipped")
        else:
            result.setdefault(name, "passed")
    return result


def run_suite(tests: str, target: str, workdir: str, timeout: int, extra: list) -> dict:
    junit = os.path.join(workdir, f"{target}.xml")
    env = dict(os.environ, FERROLOOP_UVLOOP_SUITE=target)
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            f"--timeout={timeout}", "-k", "AIO or aio", f"--junitxml={junit}", *extra, "."]
    proc = subprocess.run(argv, cwd=tests, env=env, capture_output=True, text=True)
    # pytest: 0 all passed, 1 some failed; anything else (no tests, usage,
    # internal error) means the run itself did not work.
    if proc.returncode not in (0, 1) or not os.path.exists(junit):
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        sys.exit(f"uvloop_suite: pytest on {target} exited with {proc.returncode}")
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    print(f"  {target}: {tail[0]}")
    return outcomes(junit)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="also list tests that pass on ferroloop only")
    ap.add_argument("--timeout", type=int, default=60, help="seconds per test (default 60)")
    ap.add_argument("pytest_args", nargs="*", help="more arguments for pytest (after --)")
    args = ap.parse_args(argv)

    version = uvloop_version()
    tests = fetch_tests(version)
    print(f"uvloop {version}'s test suite, AIO classes: stock asyncio vs ferroloop "
          f"(Python {sys.version.split()[0]})")
    with tempfile.TemporaryDirectory() as workdir:
        base = run_suite(tests, "asyncio", workdir, args.timeout, args.pytest_args)
        ferro = run_suite(tests, "ferroloop", workdir, args.timeout, args.pytest_args)

    compared = [t for t, o in base.items() if o == "passed"]
    if not compared:
        print("uvloop_suite: no test passed on stock asyncio: nothing was compared")
        return 1
    regressions = sorted(t for t in compared if ferro.get(t) != "passed")
    better = sorted(t for t, o in base.items() if o == "failed" and ferro.get(t) == "passed")
    for t in regressions:
        print(f"  REGRESSION {t}: {ferro.get(t, 'did not run')} on ferroloop")
    if args.verbose:
        for t in better:
            print(f"  passes on ferroloop only: {t}")
    print(f"{len(compared)} tests compared; {len(regressions)} regression(s); "
          f"{len(better)} pass on ferroloop only")
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
