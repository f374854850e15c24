"""Training runs that a tool starts as child processes, stopped with the tool.

A tool stopped by SIGTERM (`kill`, `timeout`, a job scheduler) would leave its runs training, on the
GPU and unseen, beside whatever runs next. Tools start their runs with `start`, wait with `wait` (or
poll and `forget`), and call `stop_with_this_process()` once from the main thread: on SIGTERM every
run still going gets SIGTERM too (a training script then writes its summary), is killed if it is
still there GRACE_S later, and the tool exits with 143 as soon as it next waits for or starts a run.
Ctrl-C needs nothing: the terminal sends SIGINT to the runs as well.
"""

import signal
import subprocess
import sys
import threading

GRACE_S = 30.0  # a run's time to write its summary and stop before it is killed
STOPPED_EXIT = 128 + signal.SIGTERM

_live: set = set()
_lock = threading.Lock()
_stopping = threading.Event()


def start(cmd: list, **popen_kwargs) -> subprocess.Popen:
    """subprocess.Popen, remembered until it ends; refused once the tool is stopping."""
    stop_here_if_stopping()
    proc = subprocess.Popen(cmd, **popen_kwargs)
    with _lock:
        _live.add(proc)
    return proc


def wait(proc: subprocess.Popen) -> int:
    code = proc.wait()
    forget(proc)
    stop_here_if_stopping()
    return code


def forget(proc: subprocess.Popen) -> None:
    """A child seen to end by other means (poll): no longer stopped with the tool."""
    with _lock:
        _live.discard(proc)


def stop_here_if_stopping() -> None:
    if _stopping.is_set():
        raise SystemExit(STOPPED_EXIT)


def stop_all(grace_s: float = GRACE_S) -> None:
    """SIGTERM to every remembered child; a timer kills those still running grace_s later. Safe inside a
    signal handler: nothing here waits for a child (the code the signal interrupted may hold its lock)."""
    _stopping.set()
    with _lock:
        live = list(_live)
    for proc in live:
        proc.terminate()

    def kill_the_rest():
        for proc in live:
            proc.kill()  # no-op for a child already reaped

    timer = threading.Timer(grace_s, kill_the_rest)
    timer.daemon = True  # it still runs while the interpreter joins the tool's other threads at exit
    timer.start()


def stop_with_this_process() -> None:
    """On SIGTERM: stop the children (stop_all); the tool exits 143 at its next wait or start."""
    def on_term(signum, frame):
        print(f"{sys.argv[0]}: stopped (signal {signum}); stopping its runs", file=sys.stderr, flush=True)
        stop_all()

    signal.signal(signal.SIGTERM, on_term)
