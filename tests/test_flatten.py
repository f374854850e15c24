"""scripts/flatten.py: every training script as one self-contained file that trains exactly like the script."""

import json
import subprocess
import sys

import pytest

from conftest import FAST, REPO, load_module, read_metrics, subprocess_env

SCRIPTS = sorted(p.name for p in REPO.glob("train_gpt2*.py"))
# trained flat and modular: the baseline, the record script (its own model, optimizer and kernels), the attention
# variants' script and one built on kit/ideas; every other script's flattened file is imported and parses its flags
TRAINED = ["train_gpt2.py", "train_gpt2_speedrun.py", "train_gpt2_rtx4090_optim.py", "train_gpt2_lightrnn_cocont_mtp.py"]
TINY_RUN = [*FAST, "--data", "synthetic", "--seq-len", "128", "--val-tokens", "256", "--max-steps", "2", "--val-every", "0"]  # 128: the block-masked scripts' unit

# Runs each flattened script in turn in one child process (its start, importing torch, is most of a tiny
# run's time), forgetting the previous one's modules and loader first; the child starts in a folder
# without the project, so any import of it that the flattened file does not serve fails.
RUN_FLATTENED = """
import importlib.util, json, runpy, sys
jobs = json.loads(sys.argv[1])
codes = {}
for name, path, flags in jobs:
    for module in [m for m in sys.modules if m == "kit" or m.startswith(("kit.", "train_gpt2"))]:
        del sys.modules[module]
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "_EmbeddedModules"]
    assert importlib.util.find_spec("kit") is None, "the project is importable from the child"
    sys.argv = [path, *flags]
    try:
        runpy.run_path(path, run_name="__main__")
        codes[name] = 0
    except SystemExit as stop:
        codes[name] = stop.code
print("CODES " + json.dumps(codes))
"""


def flatten_main():
    return load_module("scripts/flatten.py", "flatten_tool")


def test_flattened_file_embeds_each_project_module_verbatim_once():
    flatten = flatten_main()
    text = flatten.flatten(REPO / "train_gpt2_checkpointing.py")
    namespace = {}
    exec(compile(text.split("# ----- the project modules this script uses")[0], "flat", "exec"), namespace)
    sources = namespace["_EMBEDDED_SOURCES"]
    assert {"kit", "kit.loop.train", "kit.modeling.model", "train_gpt2", "train_gpt2_chunked_ce"} <= set(sources)  # the scripts it builds on too
    assert "train_gpt2_checkpointing" not in sources and "kit.modeling.modern" not in sources  # itself; what it never imports
    for name, source in sources.items():
        path = REPO.joinpath(*name.split("."))
        assert source == ((path / "__init__.py") if path.is_dir() else path.with_suffix(".py")).read_text(), name
    start = text.index("\n# Flattened from")
    end = text.index("# ----- end of the embedded modules; the script follows -----\n") + len("# ----- end of the embedded modules; the script follows -----\n\n")
    assert text[:start] + text[end:] == (REPO / "train_gpt2_checkpointing.py").read_text()  # around the embedded block: the script, unchanged


def test_flatten_refuses_a_missing_script_and_an_output_beside_the_project(tmp_path, capsys):
    flatten = flatten_main()
    assert flatten.main(["train_gpt2_nothing.py", "-o", str(tmp_path / "x.py")]) == 2
    assert flatten.main(["train_gpt2.py", "-o", str(REPO / "flat_baseline.py")]) == 2
    assert not (REPO / "flat_baseline.py").exists()
    errors = capsys.readouterr().err.splitlines()
    assert "no such script" in errors[0] and "beside the project's own modules" in errors[1]


def test_every_flattened_script_runs_where_the_project_is_not_and_trains_exactly_like_the_script(tmp_path, isolated_data_dir):
    """Every script flattened, run where the project cannot be imported: its imports resolve and it parses its flags
    (--help); for TRAINED, two steps of the tiny model on CPU log the same losses and validation as the modular
    script (run in this process)."""
    from kit.tools.runs import load_script
    from kit.loop.train import main

    flatten = flatten_main()
    flat_dir = tmp_path / "standalone"
    jobs = []
    for script in SCRIPTS:
        path = flat_dir / script
        assert flatten.main([str(REPO / script), "-o", str(path)]) == 0
        flags = [*TINY_RUN, "--out-dir", str(tmp_path / "flat_runs" / script)] if script in TRAINED else ["--help"]
        jobs.append((script, str(path), flags))
    env = {k: v for k, v in subprocess_env(KIT_DATA_DIR=isolated_data_dir).items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", RUN_FLATTENED, json.dumps(jobs)],
                            cwd=flat_dir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "CODES " in result.stdout, result.stderr[-3000:]
    codes = json.loads(result.stdout.split("CODES ", 1)[1])
    assert all(codes[script] == 0 for script in SCRIPTS), (codes, result.stderr[-3000:])
    assert result.stdout.count("usage: ") == len(SCRIPTS) - len(TRAINED)
    for script, flat_path, _ in jobs:
        if script not in TRAINED:
            continue
        assert main(load_script(script).RECIPE, [*TINY_RUN, "--out-dir", str(tmp_path / "runs" / script)]) == 0
        for kind in ("train", "val"):
            flat = [(e["step"], e.get("loss", e.get("val_loss"))) for e in read_metrics(tmp_path / "flat_runs" / script, kind)]
            modular = [(e["step"], e.get("loss", e.get("val_loss"))) for e in read_metrics(tmp_path / "runs" / script, kind)]
            assert flat and [step for step, _ in flat] == [step for step, _ in modular], (script, kind)
            assert [loss for _, loss in flat] == pytest.approx([loss for _, loss in modular], rel=1e-6), (script, kind, flat, modular)
        flat_log = (tmp_path / "flat_runs" / script / "log.txt").read_text()
        assert f"----- source of {flat_path} -----" in flat_log  # the run logs the flattened file as its source
