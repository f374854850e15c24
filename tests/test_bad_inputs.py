"""Every training script against a table of bad inputs: each ends with one line on stderr, a non-zero exit
code, and no file of an existing run changed (checksums before and after), in the process (fast: every
case fails before any training)."""

import hashlib
import json
import sys
from pathlib import Path

import pytest

from conftest import REPO, load_module

SCRIPTS = sorted(p.name for p in REPO.glob("train_gpt2*.py"))

# (flags, exit code, a fragment of the line), for every script
COMMON_CASES = [
    (["--bogus", "1"], 2, "unrecognized arguments: --bogus"),
    (["--max-step", "5"], 2, "unrecognized arguments: --max-step"),  # no prefix matching
    (["--max-steps", "0"], 2, "--max-steps must be positive"),
    (["--model-size", "huge"], 2, "invalid choice: 'huge'"),
    (["--compile", "maybe"], 2, "expected 0 or 1"),
    (["--memory-cap-gib", "20"], 2, "--memory-cap-gib caps a GPU's memory"),
    (["--batch-tokens", "1000"], 2, "is not a multiple of --seq-len"),
    (["OUT_DIR_OF_A_RUN"], 2, "holds another run"),
    (["--resume", "GARBAGE_CHECKPOINT"], 2, "cannot read the checkpoint"),
    (["--resume", "RUN_WITHOUT_CHECKPOINTS"], 2, "the run directory has no checkpoints"),
]

# a script's own flags, where they can contradict each other or the model
OWN_CASES = {
    "train_gpt2.py": [(["--attn", "foo"], 2, "invalid choice: 'foo'"), (["--lr", "-1"], 2, "--lr -1.0: must not be negative"),
                      (["--beta2", "1.5"], 2, "--beta2 1.5: between 0 and 1")],
    "train_gpt2_moe.py": [(["--top-k", "8", "--experts", "4"], 2, "top-k 8 must be between 1 and the number of experts (4)")],
    "train_gpt2_rtx4090_optim.py": [(["--attn", "gqa", "--kv-heads", "3"], 2, "--kv-heads 3 must divide the 2 heads")],
    "train_gpt2_curriculum.py": [(["--curriculum-start", "100"], 2, "both powers of 2")],
    "train_gpt2_lightrnn_afno.py": [(["--hybrid-attn-layers", "9"], 2, "between 0 and the model's 2 layers")],
    "train_gpt2_speedrun.py": [(["--seq-len", "100", "--batch-tokens", "1000"], 2, "multiple of 128"),
                               (["--lr", "0.01"], 2, "--lr: this script does not read it (its learning rates are --muon-lr"),
                               (["--warmup-steps", "10"], 2, "--warmup-steps: this script does not read it"),
                               (["--beta1", "0.5"], 2, "--beta1: this script does not read it"),
                               (["--paired-head-layers", "7"], 2, "the model has layers 0..1"),
                               (["--xsa-layers", "a"], 2, "give layer numbers")],
}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A folder with a finished run in it (the files a run writes), a garbage checkpoint and a run without checkpoints."""
    root = tmp_path_factory.mktemp("sandbox")
    run = root / "finished_run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"max_steps": 5}))
    (run / "summary.json").write_text(json.dumps({"status": "completed", "steps": 5}))
    (run / "metrics.jsonl").write_text('{"type": "train", "step": 1, "loss": 9.0}\n')
    (run / "log.txt").write_text("command: ...\n")
    (run / "checkpoints" / "ckpt_step000005.pt").write_bytes(b"not a checkpoint")
    (root / "garbage.pt").write_bytes(b"\x00garbage\nsecond line")
    empty = root / "no_checkpoints"
    empty.mkdir()
    (empty / "log.txt").write_text("command: ...\n")
    return root


def checksums(folder: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def substituted(flags: list, sandbox: Path) -> list:
    names = {"OUT_DIR_OF_A_RUN": ["--out-dir", str(sandbox / "finished_run")], "GARBAGE_CHECKPOINT": [str(sandbox / "garbage.pt")],
             "RUN_WITHOUT_CHECKPOINTS": [str(sandbox / "no_checkpoints")]}
    return [word for flag in flags for word in names.get(flag, [flag])]


@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_inputs_end_in_one_line_and_touch_nothing(script, sandbox, capsys):
    from kit.loop.train import main

    recipe = load_module(script).RECIPE
    before = checksums(sandbox)
    base = ["--model-size", "tiny", "--device", "cpu", "--data", "synthetic", "--export", "0"]
    for flags, code, fragment in COMMON_CASES + OWN_CASES.get(script, []):
        argv = substituted(flags, sandbox)
        if "--out-dir" not in argv:
            argv += ["--out-dir", str(sandbox / "fresh")]
        got = main(recipe, [*base, *argv])
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert got == code and len(err) == 1 and fragment in err[0], (script, flags, got, err)
        assert err[0].startswith(f"{script}: error: "), err
        assert not (sandbox / "fresh").exists(), (script, flags)  # a refused run leaves no folder behind
    assert checksums(sandbox) == before


@pytest.mark.parametrize("script, flags", [(s, []) for s in SCRIPTS] + [("train_gpt2_rtx4090_optim.py", ["--attn", "gqa"]),
                                                                       ("train_gpt2_rtx4090_optim.py", ["--attn", "mla"])])
def test_every_scripts_tiny_preset_builds_its_model_and_optimizers(script, flags):
    """The tiny preset is a working configuration of every script (the script's own presets fit its flags to
    the tiny model: a shorter curriculum, one attention layer of two, one key/value head of two)."""
    from kit.core.config import parse_config

    recipe = load_module(script).RECIPE
    cfg, _ = parse_config(recipe.config_cls, ["--model-size", "tiny", "--device", "cpu", "--data", "synthetic", *flags])
    model = recipe.build_model(cfg)
    assert recipe.build_optimizers(model, cfg)


def test_help_says_what_a_size_preset_sets(capsys):
    from kit.loop.train import main

    with pytest.raises(SystemExit):
        main(load_module("train_gpt2_curriculum.py").RECIPE, ["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "tiny sets --seq-len 128," in text and "--lr 0.003" in text  # (argparse wraps lines inside some flag names)
    assert "--curriculum-start 32" in text  # the script's own preset for the tiny model
    assert "on --resume: the run's settings come from its checkpoint" in text


def load_tool(relative: str):
    return load_module(relative, Path(relative).stem + "_tool")


def test_tools_refuse_bad_inputs_in_one_line(tmp_path, capsys):
    from kit.core.errors import run_cli

    def one_line(code, expected, fragment):
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert code == expected and len(err) == 1 and fragment in err[0], (code, err)

    one_line(load_tool("scripts/compare.py").main([str(tmp_path / "typo")]), 2, "no summary.json there")
    one_line(load_tool("data/webmix.py").main(["--source", str(tmp_path), "--dest", str(tmp_path / "d")]), 2, "no MANIFEST.json there")
    one_line(run_cli(lambda: load_tool("scripts/generate.py").main([str(tmp_path), "--prompt", "hi", "--max-new-tokens", "0"])), 2,
             "--max-new-tokens 0: at least 1")
    with pytest.raises(SystemExit, match="nope.py: no such script"):
        load_tool("scripts/bench.py").main(["--row", "x=nope.py", "--out", str(tmp_path / "b")])
    with pytest.raises(SystemExit, match="nope.py: no such script"):
        load_tool("scripts/sweep.py").main(["nope.py", "--grid", "a=1", "--out", str(tmp_path / "s")])
    assert not (tmp_path / "b").exists() and not (tmp_path / "s").exists() and not (tmp_path / "d").exists()


def names_read(script: str) -> set:
    """Every attribute name and string constant in the script and the project modules it imports: where a
    config field is read (cfg.name, getattr(cfg, "name"), a preset's "name": value)."""
    import ast

    flatten = load_tool("scripts/flatten.py")
    names = set()
    for path in [REPO / script, *flatten.project_modules(REPO / script).values()]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.add(node.value)
    return names


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_is_read_somewhere_or_refused(script):
    """A flag a script accepts is read by the script or a project module it imports, or is one the script
    refuses (NOT_READ); a field nobody reads would be a flag that silently does nothing."""
    import dataclasses

    config_cls = load_module(script).RECIPE.config_cls
    read, refused = names_read(script), set(getattr(config_cls, "NOT_READ", ()))
    unread = [f.name for f in dataclasses.fields(config_cls) if f.name not in read and f.name not in refused]
    assert not unread, f"{script} accepts flags that nothing reads: {', '.join('--' + n.replace('_', '-') for n in unread)}"
