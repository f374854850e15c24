"""The training loop end to end on CPU: smoke run, resume, DDP equivalence, bad input."""

import json
import math
import re
import subprocess
import sys
import time

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import FAST, REPO, make_shard, read_metrics, run_baseline, subprocess_env
from kit.core import checkpoint, config
from kit.tools import runs

SUMMARY_KEYS = {"script", "git_commit", "device_name", "target_loss", "reached_target", "time_to_target_s", "wall_time_s",
                "tokens_to_target", "final_val_loss", "steps", "tokens_per_s", "mfu", "peak_mem_gib"}


def test_smoke_command_trains_and_writes_a_valid_summary(tmp_path, isolated_data_dir):
    out = tmp_path / "run"
    cmd = [sys.executable, "train_gpt2.py", "--model-size", "tiny", "--data", "synthetic", "--device", "cpu", "--max-steps", "20", "--out-dir", str(out)]
    launched = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, env=subprocess_env(KIT_DATA_DIR=isolated_data_dir), capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - launched
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    # the run's wall clock starts with its process: Python and the imports (torch's alone takes a while) are in it
    assert 0.2 < summary["imports_s"] < summary["startup_s"] < summary["wall_time_s"] <= elapsed
    assert summary["steps"] == 20 and summary["status"] == "completed" and summary["script"] == "train_gpt2.py"
    train = read_metrics(out)
    assert [e["step"] for e in train] == list(range(1, 21))
    assert {"step", "tokens", "train_time_ms", "loss", "lr", "tokens_per_s"} <= set(train[0])
    assert train[-1]["loss"] < train[0]["loss"] - 1.0
    vals = read_metrics(out, "val")
    assert vals[-1]["val_loss"] < vals[0]["val_loss"] - 1.0
    assert summary["final_val_loss"] == vals[-1]["val_loss"]
    log = (out / "log.txt").read_text()
    assert log.startswith("command: ") and "git commit:" in log and "versions:" in log and "class Hyperparameters" in log
    assert "step 20/20 | loss" in log
    # the source of every project file the run imported, and of none it did not (a fresh process: the baseline's own set)
    logged = re.findall(r"^----- source of (.+) -----$", log, flags=re.M)
    assert Path(logged[0]).name == "train_gpt2.py" and {"kit/loop/train.py", "kit/modeling/model.py", "kit/loop/runlog.py"} <= set(logged[1:])
    assert "kit/modeling/modern.py" not in logged and not any(name.startswith("train_gpt2_") for name in logged)
    train_source = log.split("----- source of kit/loop/train.py -----\n", 1)[1].split("\n----- end of source -----", 1)[0]
    assert train_source == (REPO / "kit" / "loop" / "train.py").read_text()
    assert (out / "model.safetensors").exists() and json.loads((out / "config.json").read_text())["max_steps"] == 20


def test_stops_at_the_target(tmp_path):
    code, _ = run_baseline([*FAST, "--data", "synthetic", "--max-steps", "30", "--val-every", "5", "--target-loss", "9.5", "--out-dir", tmp_path])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    vals = read_metrics(tmp_path, "val")
    assert summary["reached_target"] and summary["status"] == "reached_target"
    assert vals[-1]["val_loss"] <= 9.5 < vals[-2]["val_loss"]
    assert summary["steps"] == vals[-1]["step"] < 30
    assert summary["tokens_to_target"] == summary["steps"] * 256
    assert summary["time_to_target_s"] == pytest.approx(vals[-1]["train_time_ms"] / 1000)


def test_resume_continues_the_same_loss_curve(tmp_path):
    flags = [*FAST, "--data", "synthetic", "--max-steps", "20", "--val-every", "0"]
    assert run_baseline([*flags, "--save-every", "10", "--out-dir", tmp_path / "full"])[0] == 0
    ckpt = tmp_path / "full" / "checkpoints" / "ckpt_step000010.pt"
    assert ckpt.exists() and not list(ckpt.parent.glob("*.tmp"))
    assert run_baseline([*flags, "--resume", ckpt, "--out-dir", tmp_path / "resumed"])[0] == 0
    full = {e["step"]: e["loss"] for e in read_metrics(tmp_path / "full")}
    resumed = {e["step"]: e["loss"] for e in read_metrics(tmp_path / "resumed")}
    assert sorted(resumed) == list(range(11, 21))
    for step, loss in resumed.items():
        assert abs(loss - full[step]) <= 1e-6, (step, loss, full[step])
    final = [json.loads((tmp_path / d / "summary.json").read_text())["final_val_loss"] for d in ("full", "resumed")]
    assert abs(final[0] - final[1]) <= 1e-6


def interrupt_at(forward: int):
    """A model wrapper's action that sends this process SIGINT at a training forward (as Ctrl-C would)."""
    import os
    import signal

    def action(loss):
        os.kill(os.getpid(), signal.SIGINT)
        return loss

    return forward, action


def resume_sabotaged(argv, capsys, **recipe_fields):
    """Resume a run of the wrapped model (its weights are named inner.*) with the wrapper doing nothing."""
    return run_sabotaged(argv, 10**9, lambda loss: loss, capsys, **recipe_fields)


def constant_then_decay(step, cfg):
    """An LR schedule constant over the first half of the run, then falling linearly (its length matters there only)."""
    return 1.0 if step < cfg.max_steps / 2 else 2 * (1 - step / cfg.max_steps)


def file_checksums(folder) -> dict:
    import hashlib

    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_sigint_saves_a_checkpoint_and_the_run_directory_alone_resumes_it(tmp_path, capsys):
    """Ctrl-C: a checkpoint at the step boundary, status interrupted, one line with the resume command; then
    --resume DIR alone brings back the run's settings (here a non-default LR and schedule) and continues
    the loss curve of an uninterrupted run, with no step twice in metrics.jsonl and the wall time of both parts."""
    flags = [*FAST, "--data", "synthetic", "--max-steps", "8", "--val-every", "4", "--lr", "0.002", "--warmup-steps", "3"]
    assert run_baseline([*flags, "--out-dir", tmp_path / "full"])[0] == 0
    code, err = run_sabotaged([*flags, "--out-dir", tmp_path / "cut"], *interrupt_at(4), capsys=capsys)  # forward 4 is step 3
    assert_one_line_error(code, err, 130, "interrupted at step 3 of 8")
    assert f"--resume {tmp_path / 'cut'}" in err[0] and checkpoint.latest(tmp_path / "cut").name == "ckpt_step000003.pt"
    first = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert first["status"] == "interrupted" and first["steps"] == 3
    assert resume_sabotaged(["--resume", tmp_path / "cut"], capsys)[0] == 0
    full, cut = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "cut")
    assert [e["step"] for e in cut] == list(range(1, 9))
    for a, b in zip(full, cut):
        assert abs(a["loss"] - b["loss"]) <= 1e-6 and a["lr"] == pytest.approx(b["lr"])
    assert [e["step"] for e in read_metrics(tmp_path / "cut", "val")] == [0, 4, 8]
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_at_steps"] == [3]
    assert summary["wall_time_s"] > first["wall_time_s"] and summary["wall_time_s"] >= summary["train_time_s"]
    assert summary["final_val_loss"] == pytest.approx(json.loads((tmp_path / "full" / "summary.json").read_text())["final_val_loss"], abs=1e-6)


def test_a_second_signal_stops_at_once():
    import signal

    from kit.core.errors import Interrupted
    from kit.loop.train import StopSignals

    stop = StopSignals("; resume with ...")
    stop.handle(signal.SIGTERM, None)
    assert stop.requested == "SIGTERM" and stop.agreed(False, None)
    with pytest.raises(Interrupted, match="stopped at once by a second SIGINT; resume with"):
        stop.handle(signal.SIGINT, None)


def test_a_new_run_refuses_a_folder_that_holds_another_run(tmp_path, capsys):
    flags = [*FAST, "--data", "synthetic", "--val-every", "0"]
    assert run_baseline([*flags, "--max-steps", "4", "--save-every", "2", "--out-dir", tmp_path])[0] == 0
    before = file_checksums(tmp_path)
    code, err = run_baseline([*flags, "--max-steps", "3", "--save-every", "1", "--out-dir", tmp_path], capsys)
    assert_one_line_error(code, err, 2, "holds another run; continue it with --resume")
    assert file_checksums(tmp_path) == before


def test_resume_keeps_the_runs_settings_and_its_length_unless_the_schedule_allows(tmp_path, capsys):
    flags = [*FAST, "--data", "synthetic", "--val-every", "0", "--save-every", "1"]
    code, _ = run_sabotaged([*flags, "--max-steps", "6", "--out-dir", tmp_path], *interrupt_at(3), capsys=capsys,
                            lr_schedule=constant_then_decay)  # stops at step 2
    assert code == 130
    before = file_checksums(tmp_path)
    for bad, fragment in ((["--data", "webmix"], "--data webmix: the resumed run has 'synthetic'"), (["--lr", "0.1"], "a resumed run keeps its settings"),
                          (["--max-steps", "1"], "at step 2 already")):
        code, err = resume_sabotaged(["--resume", tmp_path, *bad], capsys, lr_schedule=constant_then_decay)
        assert_one_line_error(code, err, 2, fragment)
    assert file_checksums(tmp_path) == before
    # at step 2 the LR is in its constant part under 6 or 9 steps, so the run may grow
    assert resume_sabotaged(["--resume", tmp_path, "--max-steps", "9"], capsys, lr_schedule=constant_then_decay)[0] == 0
    assert [e["step"] for e in read_metrics(tmp_path)] == list(range(1, 10))
    # at step 9 the decay depends on the length (and the baseline's warm-up and cosine always do)
    code, err = resume_sabotaged(["--resume", tmp_path, "--max-steps", "12"], capsys, lr_schedule=constant_then_decay)
    assert_one_line_error(code, err, 2, "the run would jump")
    (checkpoint.latest(tmp_path)).unlink()  # a finished run whose newest checkpoint is older than its end: resuming would train again
    before = file_checksums(tmp_path)
    code, err = resume_sabotaged(["--resume", tmp_path], capsys, lr_schedule=constant_then_decay)
    assert_one_line_error(code, err, 2, "finished at step 9")
    assert file_checksums(tmp_path) == before


def test_checkpoint_rotation_never_deletes_a_newer_checkpoint(tmp_path):
    import train_gpt2
    from kit.core.config import parse_config
    from kit.data.loader import TrainStream

    cfg, _ = parse_config(train_gpt2.Hyperparameters, [*FAST, "--data", "synthetic"])
    model = train_gpt2.build_model(cfg)
    folder = tmp_path / checkpoint.CHECKPOINT_DIR
    folder.mkdir()
    for step in (15, 20):
        (folder / f"ckpt_step{step:06d}.pt").write_bytes(b"newer")
    make_shard(tmp_path / "t.bin", 5000)
    stream = TrainStream([tmp_path / "t.bin"], 32, 1)
    for step in (3, 4, 5):
        checkpoint.save(tmp_path, step, 0, model, [], stream, 0.0, {}, keep=2)
    assert sorted(p.name for p in folder.iterdir()) == ["ckpt_step000004.pt", "ckpt_step000005.pt", "ckpt_step000015.pt", "ckpt_step000020.pt"]


def test_ddp_two_processes_equal_one_with_twice_the_accumulation(tmp_path, isolated_data_dir):
    flags = [*FAST, "--data", "synthetic", "--max-steps", "3", "--val-every", "0", "--micro-batch", "2", "--export", "1"]
    env = subprocess_env(KIT_DATA_DIR=isolated_data_dir)
    ddp = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train_gpt2.py", *flags,
                            "--out-dir", str(tmp_path / "two")], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert run_baseline([*flags, "--out-dir", tmp_path / "one"])[0] == 0  # the one-process reference, here, while the ranks start
    _, ddp_err = ddp.communicate(timeout=300)
    assert ddp.returncode == 0, ddp_err[-3000:]
    one, two = json.loads((tmp_path / "one" / "summary.json").read_text()), json.loads((tmp_path / "two" / "summary.json").read_text())
    assert (one["world_size"], one["accum_steps"]) == (1, 4) and (two["world_size"], two["accum_steps"]) == (2, 2)
    for a, b in zip(read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    from safetensors.torch import load_file

    w1, w2 = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert w1.keys() == w2.keys()
    for name in w1:  # Adam divides by the gradient's running size: a rounding difference in a near-zero gradient moves
        # its weight by a fair share of the step (lr 3e-3), here up to ~1e-5; a missing average would move every weight by ~lr
        torch.testing.assert_close(w1[name], w2[name], atol=1e-4, rtol=1e-4)


def test_exported_weights_load_into_the_model(tmp_path):
    assert run_baseline([*FAST, "--data", "synthetic", "--max-steps", "2", "--val-every", "0", "--export", "1", "--out-dir", tmp_path])[0] == 0
    import train_gpt2
    from kit.core.config import parse_config
    from safetensors.torch import load_model

    cfg, _ = parse_config(train_gpt2.Hyperparameters, FAST)
    model = train_gpt2.build_model(cfg)
    load_model(model, str(tmp_path / "model.safetensors"))
    assert model.lm_head.weight is model.wte.weight


# ----- bad input: one line, a non-zero exit, nothing lost -----

def assert_one_line_error(code, err, expected_code, fragment):
    assert code == expected_code, err
    assert len(err) == 1, err
    assert fragment in err[0], err


@pytest.mark.parametrize("flags, fragment", [
    (["--bogus", "1"], "unrecognized arguments: --bogus"),
    (["--model-size", "huge"], "invalid choice: 'huge'"),
    (["--compile", "maybe"], "expected 0 or 1"),
    (["--data", "webmix", "--train-files", "a*", "--val-files", "b*"], "--train-files replaces --data"),
    (["--train-files", "a*"], "--train-files and --val-files go together"),
    (["--batch-tokens", "1000"], "is not a multiple of --seq-len 32"),
    (["--micro-batch", "3"], "--micro-batch 3 does not divide the 8 sequences"),
    (["--max-steps", "0"], "--max-steps must be positive"),
    (["--val-tokens", "16"], "shorter than one sequence"),
    (["--max-step", "5"], "unrecognized arguments: --max-step 5"),  # no prefix matching: a typo is not taken for --max-steps
])
def test_bad_flags(flags, fragment, capsys):
    data = [] if "--train-files" in flags else ["--data", "synthetic"]
    code, err = run_baseline([*FAST, *data, *flags], capsys)
    assert_one_line_error(code, err, 2, fragment)


def shard_pair(tmp_path, val_tokens=2000):
    make_shard(tmp_path / "train.bin", 20000)
    make_shard(tmp_path / "val.bin", val_tokens, seed=5)
    return tmp_path / "train.bin", tmp_path / "val.bin"


def test_wrong_magic(tmp_path, capsys):
    train, val = shard_pair(tmp_path)
    raw = bytearray(train.read_bytes())
    raw[0] = 7
    train.write_bytes(bytes(raw))
    code, err = run_baseline([*FAST, "--train-files", train, "--val-files", val, "--max-steps", "2"], capsys)
    assert_one_line_error(code, err, 3, "magic number")


def test_truncated_shard(tmp_path, capsys):
    train, val = shard_pair(tmp_path)
    train.write_bytes(train.read_bytes()[:-100])
    code, err = run_baseline([*FAST, "--train-files", train, "--val-files", val, "--max-steps", "2"], capsys)
    assert_one_line_error(code, err, 3, "truncated")


def test_too_few_validation_tokens(tmp_path, capsys):
    train, val = shard_pair(tmp_path, val_tokens=300)
    code, err = run_baseline([*FAST, "--train-files", train, "--val-files", val, "--max-steps", "2"], capsys)
    assert_one_line_error(code, err, 3, "fewer than --val-tokens 512")


def test_glob_matching_nothing(tmp_path, capsys):
    code, err = run_baseline([*FAST, "--train-files", tmp_path / "none*.bin", "--val-files", tmp_path / "v*.bin"], capsys)
    assert_one_line_error(code, err, 3, "matches no file")


def test_missing_webmix(capsys):
    code, err = run_baseline([*FAST, "--data", "webmix"], capsys)
    assert_one_line_error(code, err, 3, "python data/webmix.py")


def test_fineweb_without_network(dead_endpoint, capsys):
    code, err = run_baseline([*FAST, "--data", "fineweb", "--max-steps", "2"], capsys)
    assert_one_line_error(code, err, 3, "cannot download fineweb_val_000000.bin")


def test_fineweb_says_what_it_fetches_and_refuses_a_disk_without_room(dead_endpoint, monkeypatch, capsys):
    """Before downloading: shards, tokens and gigabytes, printed first; a disk without the room stops it in one line."""
    import collections
    import shutil

    import train_gpt2
    from kit.loop.train import main

    assert main(train_gpt2.RECIPE, [*FAST, "--data", "fineweb", "--max-steps", "2"]) == 3  # the dead endpoint, after the plan
    out = capsys.readouterr().out
    assert "FineWeb: this run reads 1 train shard(s) and the validation shard" in out and "fetching 2 of them, 0.4 GB" in out
    monkeypatch.setattr(shutil, "disk_usage", lambda path: collections.namedtuple("Usage", "total used free")(10**12, 0, 3 * 10**8))
    code, err = run_baseline([*FAST, "--data", "fineweb", "--max-steps", "2"], capsys)
    assert_one_line_error(code, err, 3, "fetching 2 FineWeb shard(s) needs 0.4 GB")
    assert "KIT_DATA_DIR" in err[0]


def test_resume_from_missing_or_foreign_checkpoint(tmp_path, capsys):
    code, err = run_baseline([*FAST, "--data", "synthetic", "--resume", tmp_path / "nope.pt"], capsys)
    assert_one_line_error(code, err, 2, "no such checkpoint")
    assert run_baseline([*FAST, "--data", "synthetic", "--max-steps", "2", "--save-every", "2", "--out-dir", tmp_path / "a"])[0] == 0
    code, err = run_baseline([*FAST, "--data", "synthetic", "--model-size", "124m", "--micro-batch", "1", "--resume", tmp_path / "a"], capsys)
    assert_one_line_error(code, err, 2, "--model-size 124m: the resumed run has 'tiny'")
    torn = tmp_path / "torn.pt"
    torn.write_bytes(checkpoint.latest(tmp_path / "a").read_bytes()[:1000])
    code, err = run_baseline([*FAST, "--data", "synthetic", "--resume", torn], capsys)
    assert_one_line_error(code, err, 2, "cannot read the checkpoint")


class Sabotaged(torch.nn.Module):
    """Wraps the baseline model; from training forward number `at` on, applies `action`."""

    def __init__(self, inner, at, action):
        super().__init__()
        self.inner, self.at, self.action, self.calls = inner, at, action, 0
        self.config = inner.config

    def forward(self, x, y=None):
        out = self.inner(x, y)
        if self.training:
            self.calls += 1
            if self.calls >= self.at:
                return self.action(out)
        return out


def run_sabotaged(argv, at, action, capsys, **recipe_fields):
    import train_gpt2
    from kit.loop.train import Recipe, main

    recipe = Recipe(train_gpt2.Hyperparameters, lambda cfg: Sabotaged(train_gpt2.build_model(cfg), at, action),
                    train_gpt2.build_optimizers, script=train_gpt2.__file__, **recipe_fields)
    code = main(recipe, [str(a) for a in argv])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    # training forward 1 is the warm-up; forward k + 1 is step k (one micro-step per step)
    code, err = run_sabotaged([*FAST, "--data", "synthetic", "--max-steps", "10", "--save-every", "1", "--out-dir", tmp_path],
                              at=4, action=lambda loss: loss * float("nan"), capsys=capsys)
    assert_one_line_error(code, err, 4, "loss became nan at step 3")
    assert "ckpt_step000002.pt" in err[0]
    good = checkpoint.latest(tmp_path)
    assert good.name == "ckpt_step000002.pt"
    state = torch.load(good, weights_only=False)
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["steps"] == 2


def test_a_nan_between_syncs_stops_at_its_own_step(tmp_path, capsys):
    """Steps are read back every --sync-every steps: a NaN at step 3 is found at the sync after step 5,
    and the run still names step 3 and keeps step 2 as its last good one."""
    code, err = run_sabotaged([*FAST, "--data", "synthetic", "--max-steps", "10", "--val-every", "0", "--sync-every", "5", "--out-dir", tmp_path],
                              at=4, action=lambda loss: loss * float("nan"), capsys=capsys)
    assert_one_line_error(code, err, 4, "loss became nan at step 3")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["steps"] == 2 and summary["tokens"] == 2 * 256
    assert [e["step"] for e in read_metrics(tmp_path)] == [1, 2]


def test_sync_every_changes_when_the_loop_waits_not_what_it_trains(tmp_path, monkeypatch):
    """The same run synced after every step and every 4th: the same losses and step times that add up to
    the training time; the loop waits once per stretch of 4 steps (and at each validation)."""
    from kit.loop.train import StepClock

    stops = []
    real_stop = StepClock.stop
    monkeypatch.setattr(StepClock, "stop", lambda self: stops.append(len(self.marks) - 1) or real_stop(self))
    flags = [*FAST, "--data", "synthetic", "--max-steps", "10", "--val-every", "5"]
    results = {}
    for every in (1, 4):
        stops.clear()
        assert run_baseline([*flags, "--sync-every", str(every), "--out-dir", tmp_path / str(every)])[0] == 0
        results[every] = (read_metrics(tmp_path / str(every)), list(stops))
    (train_1, stops_1), (train_4, stops_4) = results[1], results[4]
    assert [e["loss"] for e in train_1] == [e["loss"] for e in train_4] and len(train_4) == 10
    assert stops_1 == [0, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 0]  # steps per stretch; the empty ones end at a validation
    assert stops_4 == [0, 4, 1, 3, 2]  # steps 1-4, step 5 at its validation, steps 6-8 (to step 8), steps 9-10 at the last validation
    summary = json.loads((tmp_path / "4" / "summary.json").read_text())
    assert summary["train_time_s"] * 1000 == pytest.approx(sum(e["step_ms"] for e in train_4), abs=5.0)


def test_step_clock_shares_add_up_to_the_wall_time():
    from kit.loop.train import StepClock
    import time

    clock = StepClock(torch.device("cpu"))
    clock.start()
    for pause in (0.01, 0.03):
        time.sleep(pause)
        clock.mark()
    time.sleep(0.02)  # after the last mark: booked to the first step
    wall_ms, shares = clock.stop()
    assert sum(shares) == pytest.approx(wall_ms, rel=1e-9) and wall_ms >= 60
    assert shares[1] == pytest.approx(30, abs=15) and shares[0] >= 30


def test_out_of_memory_names_a_smaller_micro_batch(tmp_path, capsys):
    def out_of_memory(_):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    code, err = run_sabotaged([*FAST, "--data", "synthetic", "--max-steps", "10", "--save-every", "1", "--out-dir", tmp_path],
                              at=3, action=out_of_memory, capsys=capsys)
    assert_one_line_error(code, err, 5, "out of memory at micro-batch 8")
    assert "try --micro-batch 4" in err[0]
    assert checkpoint.latest(tmp_path).name == "ckpt_step000001.pt"
    assert math.isfinite(json.loads((tmp_path / "summary.json").read_text())["train_time_s"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_run_uses_bf16_and_reports_memory(tmp_path):
    code, _ = run_baseline(["--model-size", "tiny", "--data", "synthetic", "--device", "cuda", "--max-steps", "3",
                            "--export", "0", "--out-dir", tmp_path])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dtype"] == "bfloat16" and summary["peak_mem_gib"] > 0 and summary["micro_batch"] >= 1
    assert "attention: manual" in (tmp_path / "log.txt").read_text()


def test_batch_schedule_counts_the_tokens_it_trains_on(tmp_path):
    import train_gpt2
    from kit.loop.train import Recipe, Trainer, main

    class HalfBatchFirst(Trainer):
        def batch_share(self, step, cfg):
            return 0.5 if step < 2 else 1.0

    recipe = Recipe(train_gpt2.Hyperparameters, train_gpt2.build_model, train_gpt2.build_optimizers, script=train_gpt2.__file__,
                    lr_schedule=lambda step, cfg: 1.0, trainer=HalfBatchFirst)  # a constant LR: the run may grow
    flags = [*FAST, "--data", "synthetic", "--micro-batch", "2", "--val-every", "0"]  # 4 micro-steps of 64 tokens per full step
    assert main(recipe, [*flags, "--max-steps", "3", "--save-every", "3", "--out-dir", str(tmp_path)]) == 0
    assert [e["tokens"] for e in read_metrics(tmp_path)] == [128, 256, 512]
    assert main(recipe, [*flags, "--max-steps", "4", "--resume", str(tmp_path)]) == 0
    assert [e["tokens"] for e in read_metrics(tmp_path)] == [128, 256, 512, 768]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["tokens"] == 768 and read_metrics(tmp_path, "val")[-1]["tokens"] == 768


@pytest.mark.parametrize("step, loss, due", [
    (100, 4.0, True),    # a regular validation
    (430, 4.0, False),   # a late check between regular ones: main set only
    (430, 3.5, True),    # the target is reached here
    (440, 4.0, True),    # the last step
])
def test_further_validation_sets_run_at_regular_checks_the_target_and_the_end(step, loss, due):
    from types import SimpleNamespace

    from kit.loop.train import Trainer

    trainer = SimpleNamespace(cfg=SimpleNamespace(val_every=100, max_steps=440), step=step, target=3.64)
    trainer.on_val_every = lambda: Trainer.on_val_every(trainer)
    trainer.regular_validation = lambda: Trainer.regular_validation(trainer)
    assert Trainer.extra_val_due(trainer, loss) is due


def screened_recipe(every: int = 1):
    """The baseline's recipe with a check every `every` steps (0 and the last are regular validations)."""
    import train_gpt2
    from kit.loop.train import Recipe, Trainer

    class Checks(Trainer):
        def validate_at(self, step):
            return step % every == 0

    return Recipe(train_gpt2.Hyperparameters, train_gpt2.build_model, train_gpt2.build_optimizers, script=train_gpt2.__file__, trainer=Checks)


def scripted_validation(monkeypatch, screen_loss, rest_loss):
    """Replace the model's validation losses: screen_loss(step) over the first 64 tokens (2 sequences of
    FAST's 32), rest_loss(step) over every other sequence of FAST's 512 validation tokens."""
    from kit.loop.train import Trainer

    def loss_sums(self, path, strict, tokens=None, first_seq=0):
        if tokens:
            assert tokens == 64 and first_seq == 0
            return torch.tensor([screen_loss(self.step) * 64, 64.0], dtype=torch.float64)
        assert first_seq in (0, 2)  # the full set after a screen skips the screen's two sequences
        n = 512 - 32 * first_seq
        return torch.tensor([rest_loss(self.step) * n, float(n)], dtype=torch.float64)

    monkeypatch.setattr(Trainer, "loss_sums", loss_sums)


def test_a_screened_check_validates_in_full_only_near_the_target(tmp_path, monkeypatch):
    from kit.loop.train import main

    screens = {1: 9.0, 2: 5.02, 3: 5.02}  # the first --val-screen-tokens at each late check
    rest = {2: 5.12, 3: 4.875}  # the other sequences
    scripted_validation(monkeypatch, screens.get, lambda step: rest.get(step, 10.0))
    flags = [*FAST, "--data", "synthetic", "--max-steps", "6", "--val-every", "0", "--target-loss", "5.0", "--val-screen-tokens", "64"]
    assert main(screened_recipe(), [*flags, "--out-dir", str(tmp_path)]) == 0
    events = read_metrics(tmp_path, kind=None)
    assert [e["step"] for e in events if e["type"] == "val_screen"] == [1, 2, 3]
    vals = [e for e in events if e["type"] == "val"]
    assert [e["step"] for e in vals] == [0, 2, 3]  # step 1: 9.0 > 5.0 + 0.03, no full validation
    assert "screen_loss" not in vals[0] and vals[1]["screen_loss"] == 5.02
    assert vals[1]["val_loss"] == pytest.approx((5.02 * 64 + 5.12 * 448) / 512)  # the screen's sums and the rest's
    assert vals[2]["val_loss"] == pytest.approx((5.02 * 64 + 4.875 * 448) / 512) and vals[2]["val_loss"] <= 5.0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["reached_target"] and summary["tokens_to_target"] == vals[2]["tokens"] and summary["final_val_loss"] == vals[2]["val_loss"]
    assert "screen step 1/6" in (tmp_path / "log.txt").read_text()
    assert main(screened_recipe(), [*flags[:-1], "16", "--out-dir", str(tmp_path / "bad")]) == 2  # shorter than one sequence


@pytest.mark.parametrize("skip, screened", [(0.5, [1, 2, 10]), (0.0, list(range(1, 12)))])
def test_a_screen_far_above_the_target_skips_the_next_checks(tmp_path, monkeypatch, skip, screened):
    """The screen falls 0.05 a step; at step 2 it is 0.87 above target + margin, 17.4 steps at that rate:
    --val-screen-skip 0.5 lets the checks of the next 8 steps pass unscreened."""
    from kit.loop.train import main

    scripted_validation(monkeypatch, lambda step: 6.0 - 0.05 * step, lambda step: 6.0)
    flags = [*FAST, "--data", "synthetic", "--max-steps", "12", "--val-every", "0", "--target-loss", "5.0", "--val-screen-tokens", "64",
             "--val-screen-skip", str(skip), "--out-dir", str(tmp_path)]
    assert main(screened_recipe(), flags) == 0
    events = read_metrics(tmp_path, kind=None)
    assert [e["step"] for e in events if e["type"] == "val_screen"] == screened
    assert [e["step"] for e in events if e["type"] == "val"] == [0, 12]
    if skip:
        assert "no full validation; next screen from step 10" in (tmp_path / "log.txt").read_text()


def test_a_full_validation_after_a_screen_equals_one_without(tmp_path):
    """The screen's sequences are not scored again: its sums plus the rest's give the plain full loss."""
    from kit.loop.train import main

    recipe = screened_recipe(every=2)
    flags = [*FAST, "--data", "synthetic", "--max-steps", "5", "--val-every", "0", "--target-loss", "0.1"]
    assert main(recipe, [*flags, "--out-dir", str(tmp_path / "plain")]) == 0
    assert main(recipe, [*flags, "--val-screen-tokens", "128", "--val-screen-margin", "100", "--out-dir", str(tmp_path / "screened")]) == 0
    plain, screened = (read_metrics(tmp_path / name, kind="val") for name in ("plain", "screened"))
    assert [e["step"] for e in plain] == [e["step"] for e in screened] == [0, 2, 4, 5]
    assert [("screen_loss" in e) for e in screened] == [False, True, True, False]
    # equal to the float32 rounding of each batch's mean (the screen's 4 sequences make other batches than 8 + 8)
    assert [e["val_loss"] for e in screened] == pytest.approx([e["val_loss"] for e in plain], rel=1e-6)


@pytest.mark.parametrize("script", sorted(p.name for p in REPO.glob("train_gpt2*.py")))
def test_every_training_script_prints_its_help(script):
    """`--help` formats every flag's help text (argparse %-formats it: a bare '%' once broke the record script's)."""
    recipe = runs.load_script(script).RECIPE
    text = config.build_parser(recipe.config_cls, recipe.description).format_help()
    assert "--max-steps" in text and "--data" in text


def test_the_micro_batch_probe_warns_when_other_processes_crowd_the_gpu():
    from kit.loop.train import crowded_gpu_note

    gib = 2**30
    # 140 GiB card, this process may use 43: others hold 100 GiB, so it could only reach 40 + its 5 reserved
    note = crowded_gpu_note(8, free=35 * gib, card=140 * gib, own_reserved=5 * gib, usable=43 * gib)
    assert note is not None and "micro-batch 8" in note and "100.0 GiB" in note
    assert crowded_gpu_note(8, free=100 * gib, card=140 * gib, own_reserved=39 * gib, usable=140 * gib) is None  # alone: its own OOM
    assert crowded_gpu_note(8, free=60 * gib, card=140 * gib, own_reserved=5 * gib, usable=43 * gib) is None  # others hold memory, but it can reach its cap


def test_cpu_micro_batch_follows_the_ram_and_a_model_that_cannot_fit_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    import kit.loop.train

    monkeypatch.setattr(kit.loop.train, "available_ram", lambda: 1 * 2**30)
    code, err = run_baseline(["--model-size", "124m", "--device", "cpu", "--data", "synthetic", "--max-steps", "2", "--out-dir", tmp_path / "big"], capsys)
    assert_one_line_error(code, err, 2, "GiB of RAM on the CPU for one sequence, and 1.0 GiB is available: use --model-size tiny")
    assert not (tmp_path / "big").exists()  # nothing left behind
    monkeypatch.setattr(kit.loop.train, "available_ram", lambda: 3 * 2**30)  # 124M at 1,024 tokens: ~2 GiB of weights and state, ~2.5 GiB a sequence
    model = SimpleNamespace(config=SimpleNamespace(n_layer=12, n_embd=768, n_head=12, vocab_size=50304))
    assert kit.loop.train.cpu_bytes_per_sequence(model, 1024) == 4 * 1024 * (12 * (24 * 768 + 2 * 12 * 1024) + 3 * 50304)
    assert run_baseline([*FAST, "--data", "synthetic", "--max-steps", "1", "--out-dir", tmp_path / "tiny"])[0] == 0  # tiny fits
    assert json.loads((tmp_path / "tiny" / "summary.json").read_text())["micro_batch"] == 8


def test_a_tool_sets_an_earlier_attempt_aside():
    from kit.loop.runlog import holds_run, set_aside

    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "row"
        run.mkdir()
        (run / "console.txt").write_text("not a run file")
        assert not holds_run(run) and set_aside(run) is None
        (run / "metrics.jsonl").write_text("{}")
        assert holds_run(run) and set_aside(run) == Path(folder) / "row.attempt1" and not run.exists()
        run.mkdir()
        (run / "summary.json").write_text("{}")
        assert set_aside(run).name == "row.attempt2"


def test_resuming_an_older_checkpoint_in_place_is_refused_while_newer_ones_exist(tmp_path, capsys):
    flags = [*FAST, "--data", "synthetic", "--val-every", "0", "--max-steps", "3", "--save-every", "1"]
    assert run_baseline([*flags, "--out-dir", tmp_path / "run"])[0] == 0
    older = tmp_path / "run" / "checkpoints" / "ckpt_step000002.pt"
    before = file_checksums(tmp_path / "run")
    code, err = run_baseline(["--resume", older], capsys)
    assert_one_line_error(code, err, 2, "the run has newer checkpoints (ckpt_step000003.pt)")
    assert file_checksums(tmp_path / "run") == before
    assert run_baseline(["--resume", older, "--out-dir", tmp_path / "branch"])[0] == 0  # a branch into a fresh folder
    assert [e["step"] for e in read_metrics(tmp_path / "branch")] == [3]


def test_config_json_records_the_target_the_run_used(tmp_path, monkeypatch):
    from kit.data import datasets

    monkeypatch.setitem(datasets.TARGET_LOSS, "synthetic", 9.9)  # a dataset's own target, as webmix's 3.64
    assert run_baseline([*FAST, "--data", "synthetic", "--max-steps", "1", "--out-dir", tmp_path])[0] == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["target_loss"] == 9.9 == json.loads((tmp_path / "summary.json").read_text())["target_loss"]
    flags = [*FAST, "--data", "synthetic", "--max-steps", "3", "--val-every", "0", "--save-every", "1", "--target-loss", "0.5"]
    assert run_baseline([*flags, "--out-dir", tmp_path / "own"])[0] == 0
    (tmp_path / "own" / "checkpoints" / "ckpt_step000003.pt").unlink()
    (tmp_path / "own" / "summary.json").unlink()  # as if stopped after step 2's checkpoint
    assert run_baseline(["--resume", tmp_path / "own"])[0] == 0  # the resumed run keeps its own target, not the dataset's
    assert json.loads((tmp_path / "own" / "summary.json").read_text())["target_loss"] == 0.5


def test_training_time_excludes_evaluation_and_warm_up(tmp_path, monkeypatch):
    """Half a second added to the warm-up and to each validation shows in warmup_s and eval_time_s and
    nowhere in the training time, which is the sum of the steps' own times (the stretches between syncs)."""
    import time

    from kit.loop.train import Trainer

    from kit.loop import train as loop

    slow_warm_up, slow_evaluate, slow_resolve = Trainer.warm_up, Trainer.evaluate, loop.datasets.resolve
    monkeypatch.setattr(Trainer, "warm_up", lambda self: slow_warm_up(self) + (time.sleep(0.5) or 0.5))
    monkeypatch.setattr(loop.datasets, "resolve", lambda *a, **k: time.sleep(0.3) or slow_resolve(*a, **k))
    monkeypatch.setattr(Trainer, "evaluate", lambda self, *a, **k: time.sleep(0.5) or slow_evaluate(self, *a, **k))
    assert run_baseline([*FAST, "--data", "synthetic", "--max-steps", "4", "--val-every", "2", "--out-dir", tmp_path])[0] == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    train, vals = read_metrics(tmp_path), read_metrics(tmp_path, "val")
    assert len(vals) == 3 and summary["eval_time_s"] >= 3 * 0.5 and summary["warmup_s"] >= 0.5
    # the steps' own times, plus the microseconds before a validation in which no step ran (a recipe's hook would run there)
    assert summary["train_time_s"] * 1000 == pytest.approx(sum(e["step_ms"] for e in train), abs=5.0)
    assert summary["train_time_s"] < summary["wall_time_s"] - summary["eval_time_s"] - summary["warmup_s"]
    # the warm-up's own split (the added half second is outside it) and the start-up before it
    parts = summary["warmup_parts_s"]
    assert set(parts) == {"training graph", "optimizers", "evaluation graph"}
    assert sum(parts.values()) <= summary["warmup_s"] - 0.5 + 0.05 and 0 < summary["startup_s"] < summary["wall_time_s"]
    assert summary["imports_s"] == 0.0  # called in-process: the clock starts with the trainer, not with the test process
    # the start-up by part: the 0.3 s added to finding the data shows in its part, and the parts add up to the start-up
    startup = summary["startup_parts_s"]
    assert list(startup) == ["flags and device", "data", "model", "model to the device", "batches and optimizers", "log, checkpoint, compile set-up"]
    assert 0.3 <= startup["data"] < 0.3 + 0.2 and sum(startup.values()) == pytest.approx(summary["startup_s"], abs=0.01)


def test_the_warm_up_says_what_it_found_in_the_compile_caches(tmp_path, monkeypatch):
    """Each warm-up part's hits and misses in Inductor's and AOTAutograd's caches (torch's own counters) reach the
    log and summary.json; a part that met neither cache says nothing (an uncompiled run here: the counters are
    moved by hand in the evaluation pass)."""
    from torch._dynamo.utils import counters

    from kit.loop import train as loop

    real = loop.compile_cache_counts
    calls = []

    def counting():  # the fourth reading, at the end of the evaluation graph's part: as though it loaded 2 graphs and compiled 1
        calls.append(1)
        if len(calls) == 4:
            counters["inductor"]["fxgraph_cache_hit"] += 2
            counters["inductor"]["fxgraph_cache_miss"] += 1
        return real()

    monkeypatch.setattr(loop, "compile_cache_counts", counting)
    assert run_baseline([*FAST, "--data", "synthetic", "--max-steps", "1", "--val-every", "0", "--out-dir", tmp_path])[0] == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["warmup_compile_cache"] == {"evaluation graph": {"fxgraph_cache_hit": 2, "fxgraph_cache_miss": 1}}
    assert "evaluation graph" in (tmp_path / "log.txt").read_text().split("[Inductor cache 2 hit 1 missed]")[0].splitlines()[-1]
    assert loop.cache_note({}) == "" and loop.cache_note({"autograd_cache_hit": 3}) == " [AOTAutograd cache 3 hit 0 missed]"
    assert loop.cache_note({"autograd_cache_bypass": 1}) == " [AOTAutograd cache 0 hit 0 missed 1 bypassed]"


def test_the_warm_up_names_the_parameters_no_step_gives_a_gradient(tmp_path):
    """A parameter that none of the warm-up's states gives a gradient never trains (a lost gradient, or a part left
    out of the graph): the log names it and summary.json lists it; the baseline itself has none."""
    import dataclasses

    import train_gpt2
    from kit.loop.train import main

    def with_an_unused_parameter(cfg):
        model = train_gpt2.RECIPE.build_model(cfg)
        model.unused_gate = torch.nn.Parameter(torch.ones(3))
        return model

    recipe = dataclasses.replace(train_gpt2.RECIPE, build_model=with_an_unused_parameter)
    flags = [*FAST, "--data", "synthetic", "--max-steps", "1", "--val-every", "0", "--export", "0"]
    assert main(recipe, [*flags, "--out-dir", str(tmp_path / "unused")]) == 0
    assert json.loads((tmp_path / "unused" / "summary.json").read_text())["params_without_grad"] == ["unused_gate"]
    assert "parameters that no warm-up step gave a gradient (they will not train): unused_gate" in (tmp_path / "unused" / "log.txt").read_text()
    assert run_baseline([*flags, "--out-dir", tmp_path / "plain"])[0] == 0
    assert json.loads((tmp_path / "plain" / "summary.json").read_text())["params_without_grad"] == []


def test_the_warm_up_collects_why_a_graph_bypassed_a_compile_cache():
    """torch says why a graph cannot be cached at INFO, which nobody sees; during the warm-up those lines go to a list
    (once each, nothing else), and the loggers are as they were afterwards."""
    import logging

    from kit.loop import train as loop

    aot = logging.getLogger("torch._functorch._aot_autograd.autograd_cache")
    level, propagate, handlers = aot.level, aot.propagate, list(aot.handlers)
    with loop.compile_cache_bypass_reasons() as reasons:
        for _ in range(2):
            aot.info("Bypassing autograd cache due to: %s", "Unsupported call_function target flex_attention")
        aot.info("Autograd cache hit for key %s", "abc")
        logging.getLogger("torch._inductor.codecache").info("Bypassing FX Graph Cache because '%s'", "user-defined triton kernel")
    assert reasons == ["Bypassing autograd cache due to: Unsupported call_function target flex_attention",
                       "Bypassing FX Graph Cache because 'user-defined triton kernel'"]
    assert (aot.level, aot.propagate, aot.handlers) == (level, propagate, handlers)


def test_a_graph_with_the_kits_autograd_functions_can_use_aotautograds_compile_cache():
    """torch bypasses AOTAutograd's cache for any graph that calls a custom autograd Function (the record script's FP8
    head and fused loss are ones), so such a training graph was traced again by every run; the trainer lets these be
    cached before it compiles. Judged by torch's own cacheability check on the graph Dynamo captures."""
    import torch._functorch.config as functorch_config
    from torch._functorch._aot_autograd.autograd_cache import BypassAOTAutogradCache, check_cacheable

    from kit.modeling.losses import softcapped_cross_entropy
    from kit.modeling.model import cache_custom_autograd_graphs

    verdicts = []

    def judging_backend(graph, example_inputs):
        try:
            check_cacheable(graph)
            verdicts.append("cacheable")
        except BypassAOTAutogradCache as why:
            verdicts.append(f"bypassed: {why}")
        return graph.forward

    def capture():
        torch._dynamo.reset()
        x, w, targets = torch.randn(16, 8), torch.randn(8, 32, requires_grad=True), torch.randint(0, 32, (16,))
        torch.compile(lambda x, w, t: softcapped_cross_entropy(x @ w, t, 15.0), backend=judging_backend)(x, w, targets).backward()

    with functorch_config.patch(autograd_cache_allow_custom_autograd_functions=False):  # torch's default, restored after
        capture()
        cache_custom_autograd_graphs()
        capture()
    torch._dynamo.reset()
    assert verdicts[0].startswith("bypassed: Unsupported call_function target autograd_function_apply") and verdicts[1] == "cacheable"


def test_a_step_line_says_the_time_left_to_the_last_step_by_the_tokens_the_schedule_still_holds(tmp_path):
    """A batch schedule's later steps are longer: the time left is the tokens still to train on at the step's
    tokens/s, not the steps left at its step time (which, after step 2 of the record script, said 1m53s for 3m16s)."""
    from kit.loop.runlog import RunLog, time_left, tokens_after_each_step

    assert time_left(151.0) == " | ~2m31s to the last step" and time_left(0.6) == " | ~1s to the last step" and time_left(0) == ""
    assert tokens_after_each_step([1, 1, 2, 3]) == [7, 6, 5, 3, 0]
    event = {"step_ms": 100.0, "tokens_per_s": 1000.0}  # a 100-token first step
    staged = RunLog(tmp_path / "staged", total_steps=4, step_tokens=[100, 100, 200, 300])
    assert staged.seconds_left(1, event) == 0.6  # 600 tokens at 1000 a second
    assert RunLog(tmp_path / "unknown", total_steps=4).seconds_left(1, event) == pytest.approx(0.3)  # 3 steps at 100 ms
    staged.step(1, {**event, "loss": 5.0, "lr": 1e-3, "grad_norm": 1.0, "train_time_ms": 100.0})
    staged.close()
    assert (tmp_path / "staged" / "log.txt").read_text().rstrip().endswith("| ~1s to the last step")


def test_stop_at_step_ends_the_run_there_on_the_long_schedules_learning_rates(tmp_path):
    """--stop-at-step: the steps so far of a --max-steps run (its learning rates, not a short schedule's), status
    'stopped', no model exported; a stop outside the schedule is one line."""
    import json

    from kit.core.config import TrainConfig, parse_config
    from kit.core.errors import UserError

    flags = [*FAST, "--data", "synthetic", "--max-steps", "12", "--val-every", "0"]
    assert run_baseline([*flags, "--out-dir", tmp_path / "full"])[0] == 0
    assert run_baseline([*flags, "--stop-at-step", "4", "--export", "1", "--out-dir", tmp_path / "stopped"])[0] == 0
    full, stopped = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "stopped")
    assert [e["lr"] for e in stopped] == [e["lr"] for e in full[:4]] and len(stopped) == 4
    summary = json.loads((tmp_path / "stopped" / "summary.json").read_text())
    assert (summary["status"], summary["steps"]) == ("stopped", 4) and not (tmp_path / "stopped" / "model.safetensors").exists()
    assert "stopped at step 4 of 12 (--stop-at-step)" in (tmp_path / "stopped" / "log.txt").read_text()
    full_summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert "evaluation graph" in full_summary["warmup_parts_s"] and "evaluation graph" not in summary["warmup_parts_s"]  # no check before the stop
    assert run_baseline([*flags[:-1], "4", "--stop-at-step", "4", "--out-dir", tmp_path / "checked"])[0] == 0
    checked = json.loads((tmp_path / "checked" / "summary.json").read_text())
    assert "evaluation graph" in checked["warmup_parts_s"] and len(read_metrics(tmp_path / "checked", "val")) == 2  # steps 0 and 4
    with pytest.raises(UserError, match="--stop-at-step 13: a step of the schedule"):
        parse_config(TrainConfig, ["--max-steps", "12", "--stop-at-step", "13"])  # parse_config checks the settings


def test_the_trainer_gives_its_log_every_steps_tokens(tmp_path, monkeypatch):
    """The schedule the time left is read from: each step's tokens as queue_step counts them, here in the record
    script's batch stages (a third, two thirds, all of 768 tokens)."""
    import train_gpt2_speedrun as speedrun
    from kit.loop import runlog
    from kit.loop.train import main

    seen = {}
    real = runlog.RunLog.__init__

    def spy(self, *args, step_tokens=None, **kwargs):
        seen["step_tokens"] = step_tokens
        real(self, *args, step_tokens=step_tokens, **kwargs)

    monkeypatch.setattr(runlog.RunLog, "__init__", spy)
    flags = ["--model-size", "tiny", "--data", "synthetic", "--device", "cpu", "--compile", "0", "--batch-tokens", "768", "--val-tokens", "512",
             "--max-steps", "3", "--micro-batch", "1", "--val-every", "0", "--export", "0", "--out-dir", str(tmp_path)]
    assert main(speedrun.RECIPE, flags) == 0
    tokens = [e["tokens"] for e in read_metrics(tmp_path)]
    assert seen["step_tokens"] == [256, 512, 768] and [sum(seen["step_tokens"][:i + 1]) for i in range(3)] == tokens


def test_tensorboard_gets_every_metric_as_scalars_and_its_absence_is_one_line(tmp_path, monkeypatch):
    """--tensorboard DIR: each metrics event's numbers go to a SummaryWriter at the event's step; where the
    package is missing the run stops before training with the install line."""
    import sys
    import types

    from kit.core.errors import UserError
    from kit.loop.runlog import RunLog

    written, closed = [], []

    class FakeWriter:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def close(self):
            closed.append(self.log_dir)

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    log = RunLog(tmp_path / "run", progress="lines", total_steps=10, tensorboard=str(tmp_path / "tb"))
    log.step(3, {"type": "train", "step": 3, "loss": 5.5, "lr": 1e-3, "grad_norm": 0.2, "step_ms": 100.0, "tokens_per_s": 1000.0, "train_time_ms": 300.0})
    log.metric({"type": "val", "step": 3, "val_loss": 5.25, "tokens": 4096, "reached": True})
    log.close()
    assert ("train/loss", 5.5, 3) in written and ("val/val_loss", 5.25, 3) in written and ("val/tokens", 4096, 3) in written
    assert not any(tag.endswith(("/type", "/step", "/reached")) for tag, _, _ in written) and closed == [str(tmp_path / "tb")]

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as where the package is missing
    with pytest.raises(UserError, match="TensorBoard is not installed \\(pip install tensorboard\\)"):
        RunLog(tmp_path / "run2", tensorboard=str(tmp_path / "tb2"))


def test_the_warm_up_splits_compiling_by_torchs_own_timers(tmp_path, monkeypatch):
    """What a compiled part spent in Dynamo's trace, guards, the backend (loading or building code within it) and the backward,
    read from torch's compile timers, and the rest as running; a part that compiled nothing says nothing. The timers are
    moved through torch's own dynamo_timed in the evaluation pass of an uncompiled run, as though it traced and loaded."""
    import time

    from torch._dynamo.utils import dynamo_timed

    from kit.loop import train as loop

    before = loop.compile_phase_seconds()
    with dynamo_timed("_compile.compile_inner"), dynamo_timed("bytecode_tracing"):
        time.sleep(0.03)
    after = loop.compile_phase_seconds()
    assert after["bytecode_tracing"] - before.get("bytecode_tracing", 0.0) >= 0.03  # the reading follows torch's timers
    phases = loop.compile_phases({"_compile.compile_inner": 1.0, "bytecode_tracing": 0.5},
                                 {"_compile.compile_inner": 4.0, "bytecode_tracing": 2.5, "OutputGraph.call_user_compiler": 1.0,
                                  "PyCodeCache.load_by_key_path": 0.75, "backward._backward_impl": 0.5,
                                  "CachingAutotuner.benchmark_all_configs": 0.25}, part_s=5.0)
    assert phases == {"Dynamo's trace": 2.0, "guards": 0.0, "backend": 1.0, "loading or building code": 0.75, "backward": 0.5, "running": 1.5,
                      "Inductor's autotuning": 0.25}  # a kernel timed its configurations at its first launch: part of running
    assert loop.phase_note(phases) == ("Dynamo's trace 2.0s, guards 0.0s, backend 1.0s (loading or building code 0.8s), "
                                       "backward 0.5s, running 1.5s (Inductor's autotuning 0.2s)")
    assert "autotuning" not in loop.phase_note({**phases, "Inductor's autotuning": 0.0})
    assert loop.compile_phases(after, after, part_s=2.0) == {}

    real, calls = loop.compile_phase_seconds, []

    def timed():  # the fourth reading closes the evaluation graph's part
        calls.append(1)
        if len(calls) == 4:
            with dynamo_timed("_compile.compile_inner"), dynamo_timed("bytecode_tracing"):
                time.sleep(0.02)
        return real()

    monkeypatch.setattr(loop, "compile_phase_seconds", timed)
    assert run_baseline([*FAST, "--data", "synthetic", "--max-steps", "1", "--val-every", "0", "--out-dir", tmp_path])[0] == 0
    phases = json.loads((tmp_path / "summary.json").read_text())["warmup_compile_phases_s"]
    assert list(phases) == ["evaluation graph"] and phases["evaluation graph"]["Dynamo's trace"] >= 0.02
    assert "warm-up by phase: evaluation graph: Dynamo's trace" in (tmp_path / "log.txt").read_text()


@pytest.mark.parametrize("at_loop, at_end, says", [(3, 3, "retried 3 times before training"), (3, 5, "warning: the CUDA allocator ran out and retried 2 times in the training loop")])
def test_allocator_retries_warn_only_where_the_training_loop_met_them(tmp_path, monkeypatch, at_loop, at_end, says):
    """A capped card's allocator may retry while compiling, which slows no step: the warning speaks of the loop's retries
    only, and summary.json keeps both counts (the CUDA counter stood in for by readings 3 at the loop's start, then at_end)."""
    from kit.loop.train import Trainer

    readings = iter([at_loop])
    monkeypatch.setattr(Trainer, "alloc_retries", lambda self: next(readings, at_end))
    assert run_baseline([*FAST, "--data", "synthetic", "--max-steps", "1", "--val-every", "0", "--out-dir", tmp_path])[0] == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["alloc_retries"], summary["alloc_retries_in_loop"]) == (at_end, at_end - at_loop)
    lines = [line for line in (tmp_path / "log.txt").read_text().splitlines() if line.startswith(("the CUDA allocator", "warning: the CUDA allocator"))]
    assert len(lines) == 1 and says in lines[0]


def test_a_script_run_as_a_program_ends_its_process_with_mains_code_and_its_message(tmp_path):
    """main() ends a script's own process at once (os._exit, no interpreter teardown), so what it prints first must
    reach the streams and the exit code must be the error's (here a UserError: 2); a completed run's files are checked
    by the smoke test above, which takes the same road."""
    result = subprocess.run([sys.executable, "train_gpt2.py", "--model-size", "tiny", "--device", "cpu", "--data", "synthetic",
                             "--resume", str(tmp_path / "absent.pt"), "--out-dir", str(tmp_path / "run")],
                            cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "error: --resume" in result.stderr and "no such checkpoint" in result.stderr


def test_only_a_process_started_for_the_script_is_ended_by_it(monkeypatch):
    """end_process runs only where the interpreter was started with the script (python [-u] script.py), never where
    other code runs the script as __main__ inside its own process (runpy from python -c: a harness that runs several)."""
    from types import ModuleType

    from kit.loop import train as loop

    script = str(REPO / "train_gpt2.py")
    main_module = ModuleType("__main__")
    main_module.__file__ = script
    monkeypatch.setitem(sys.modules, "__main__", main_module)
    for orig_argv, started in ((["python", "-u", script, "--x"], True), (["python", "-X", "importtime", script], True),
                               (["python", "-c", "import runpy", script], False), (["python", "other.py"], False)):
        monkeypatch.setattr(sys, "orig_argv", orig_argv)
        assert loop.started_as_program(script) is started, orig_argv
