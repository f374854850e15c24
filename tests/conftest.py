"""Shared test helpers: a tiny fast run configuration, in-process runs, a stand-in hub server."""

import contextlib
import ctypes
import http.server
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kit.data.shards import EOT, write_shard  # noqa: E402

TRIM_THRESHOLD = 2**31 - 1  # bytes of free heap glibc keeps before returning any to the system


def keep_freed_memory_in_the_heap() -> None:
    """glibc hands every block over 32 MB to the system on free, so each CPU training step faults its
    logits' buffers in afresh (a 50,257-word head: most of a tiny model's step). Served from the heap
    and kept there, CPU steps run ~2.5x faster with the same numbers. In this process through
    mallopt, in the scripts the tests start through the environment; a no-op without glibc."""
    os.environ.setdefault("MALLOC_MMAP_MAX_", "0")
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(TRIM_THRESHOLD))
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt's parameter numbers (malloc.h)
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


keep_freed_memory_in_the_heap()


def one_core_per_worker() -> None:
    """Under pytest-xdist (-n N: the README's test command) each worker computes on one core, and so do the
    scripts it starts: N workers on N cores, rather than N workers each spreading over every core."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


one_core_per_worker()

# A tiny model on short sequences: a step takes ~0.1 s on two CPU cores.
FAST = ["--model-size", "tiny", "--device", "cpu", "--seq-len", "32", "--batch-tokens", "256",
        "--val-tokens", "512", "--export", "0", "--progress", "lines"]


@pytest.fixture(autouse=True)
def isolated_data_dir(tmp_path_factory, monkeypatch):
    """Datasets (synthetic shards, downloads) go to a per-session folder, never the repo's data/."""
    folder = tmp_path_factory.getbasetemp() / "kit_data"
    folder.mkdir(exist_ok=True)
    monkeypatch.setenv("KIT_DATA_DIR", str(folder))
    return folder


def load_module(relative: str, name: str = None):
    """A file of the repository as a module: training scripts under their own name (registered, as their
    dataclasses need), tools and data scripts under `name` (unregistered, so a tool never shadows a module)."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    if name is None:
        sys.modules.setdefault(path.stem, module)
    spec.loader.exec_module(module)
    return module


def run_baseline(argv, capsys=None):
    """Run train_gpt2.py's recipe in this process; return (exit code, stderr lines)."""
    import train_gpt2
    from kit.loop.train import main

    code = main(train_gpt2.RECIPE, [str(a) for a in argv])
    err = capsys.readouterr().err if capsys else ""
    return code, [line for line in err.splitlines() if line.strip()]


class FinishedProcess:
    """What Popen returns for a script run in this process: it has already ended."""

    def __init__(self, code):
        self.returncode = code

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        return self.returncode

    def kill(self):
        pass


class ScriptsInProcess:
    """Stands in for the `subprocess` module of a tool that launches training scripts (bench, sweep): a
    `python train_gpt2*.py ...` command runs that script's recipe in this process, writes to the console
    file the tool gave, and ends with the exit code the process would have. Torch is then imported once per
    test session instead of once per run (~4 s each on two cores). Any other command runs as a process."""

    STDOUT, PIPE = subprocess.STDOUT, subprocess.PIPE

    def __init__(self):
        self.scripts_run = []

    @staticmethod
    def is_training_script(cmd) -> bool:
        return len(cmd) > 1 and cmd[0] == sys.executable and Path(cmd[1]).name.startswith("train_gpt2") and (REPO / Path(cmd[1]).name).exists()

    def run_script(self, cmd, console) -> int:
        from kit.tools.runs import load_script
        from kit.loop.train import main

        script = Path(cmd[1]).name
        with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
            try:
                code = main(load_script(script).RECIPE, [str(a) for a in cmd[2:]])
            except SystemExit as stop:
                code = stop.code
        console.flush()
        self.scripts_run.append(script)
        return code

    def Popen(self, cmd, **kwargs):
        if not self.is_training_script(cmd):
            return subprocess.Popen(cmd, **kwargs)
        return FinishedProcess(self.run_script(cmd, kwargs["stdout"]))

    def run(self, cmd, **kwargs):
        if not self.is_training_script(cmd):
            return subprocess.run(cmd, **kwargs)
        return subprocess.CompletedProcess(cmd, self.run_script(cmd, kwargs["stdout"]))


@pytest.fixture
def scripts_in_process(monkeypatch):
    """scripts_in_process(tool_module): that tool's training runs happen in this process (ScriptsInProcess)."""
    launcher = ScriptsInProcess()

    def patch(*modules):
        for module in modules:
            monkeypatch.setattr(module, "subprocess", launcher)
        return launcher

    return patch


def read_metrics(run_dir, kind="train"):
    """metrics.jsonl's events of one type (None: all)."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if kind is None or e["type"] == kind]


def make_documents(num_tokens, seed=0, doc_len=(5, 40)):
    """A token stream of documents, each starting with EOT."""
    rng = np.random.default_rng(seed)
    out = []
    while sum(map(len, out)) < num_tokens:
        n = int(rng.integers(*doc_len))
        out.append(np.concatenate([[EOT], rng.integers(0, 1000, size=n - 1)]))
    return np.concatenate(out)[:num_tokens]


def make_shard(path, num_tokens, seed=0):
    tokens = make_documents(num_tokens, seed)
    write_shard(path, tokens)
    return tokens


class FakeHub:
    """Serves files under the hub's URL layout: /{datasets/}<repo>/resolve/<revision>/<path>.

    Honours Range requests, counts requests per file, and records the Range header of each.
    """

    def __init__(self):
        self.files = {}  # "owner/name/path/in/repo" -> bytes
        self.requests = []  # (path, range header or None)
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                m = re.match(r"^/(?:datasets/)?([^/]+/[^/]+)/resolve/[^/]+/(.+)$", self.path)
                key = f"{m.group(1)}/{m.group(2)}" if m else None
                hub.requests.append((key, self.headers.get("Range")))
                if key not in hub.files:
                    self.send_error(404)
                    return
                data = hub.files[key]
                start = 0
                if self.headers.get("Range"):
                    start = int(re.match(r"bytes=(\d+)-", self.headers["Range"]).group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def requests_for(self, key):
        return [r for r in self.requests if r[0] == key]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub(monkeypatch):
    hub = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield hub
    hub.close()


@pytest.fixture
def dead_endpoint(monkeypatch):
    """HF_ENDPOINT pointing at a closed local port: every download fails as with no network."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")


def subprocess_env(**extra):
    env = dict(os.environ)
    env.update({k: str(v) for k, v in extra.items()})
    env["PYTHONPATH"] = str(REPO)
    return env


# Checks under Triton's CPU interpreter run in one child process per test module: TRITON_INTERPRET must be
# set before Triton is imported, and a child's start (importing torch and Triton) is most of a check's time.
_RUN_INTERPRETED = '''
import json, traceback
outcomes = {}
for name, code in CHECKS.items():
    try:
        exec(code)
        outcomes[name] = "ok"
    except Exception:
        outcomes[name] = traceback.format_exc()
print("OUTCOMES " + json.dumps(outcomes))
'''


def run_interpreted(definitions: str, checks: dict) -> dict:
    """{check name: "ok" or its traceback}: `definitions` (Python source) then each check's code, in one child
    process under the interpreter, each check reporting its own outcome."""
    code = definitions + f"\nCHECKS = {checks!r}\n" + _RUN_INTERPRETED
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(TRITON_INTERPRET="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert result.returncode == 0 and "OUTCOMES " in result.stdout, result.stdout[-3000:]
    return json.loads(result.stdout.split("OUTCOMES ", 1)[1])


# The longest tests (7-30 s each on two cores) start first: with one worker per core, a long test that starts last keeps
# one worker busy while the other has nothing left to do. The rest keep their order.
LONG_TESTS = ("test_smoke_command_trains_and_writes_a_valid_summary", "test_equal_time_gives_each_row_the_steps",
              "test_the_record_script_unties_at_its_step", "test_every_flattened_script_runs", "test_ddp_two_processes",
              "test_record_bench_turns_a_sweep", "test_kernels_equal_the_pytorch_reference_and_train_alike",
              "test_bench_seeds_run_at_their_rows", "test_sweep_survives_a_failing_configuration",
              "test_kernel_equals_the_reference_in_the_interpreter", "test_muon_under_torchrun",
              "test_a_rows_file_can_keep_a_rows_weights", "test_compiled_model_does_not_recompile",
              "test_rdrop_script_is_the_baseline", "test_bench_mfu_is_the_hand_count", "test_resume_continues_the_same_loss_curve")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: not item.name.startswith(LONG_TESTS))  # a stable sort: the same order on every worker
