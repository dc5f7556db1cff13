"""Helpers shared by the benchmark scripts (imported from the scripts'
own directory, which Python puts first on sys.path)."""
import signal


def describe_exit(rc: int) -> str:
    """A subprocess's return code in words ("killed by SIGKILL", ...)."""
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"
