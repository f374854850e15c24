"""The harness: bench.py, sweep.py and compare.py (tables, plots, results pages)."""

import json
import statistics

import pytest
import torch

from conftest import FAST, REPO, load_module
from kit.tools import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_script(name):
    return load_module(f"scripts/{name}.py", name)


def fake_run(folder, *, reached, time_s, tokens_per_s, val_curve, target=3.64, script="train_gpt2.py", flags=("--data", "webmix")):
    """A run directory as kit.loop.train writes it, with chosen numbers."""
    folder.mkdir(parents=True)
    events = [{"type": "val", "step": 100 * i, "tokens": 100 * i * 524288, "train_time_ms": 1000.0 * time_s * i / (len(val_curve) - 1), "val_loss": v}
              for i, v in enumerate(val_curve)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    last = events[-1]
    summary = {"script": script, "flags": [*flags, "--out-dir", str(folder)], "target_loss": target, "reached_target": reached,
               "time_to_target_s": time_s if reached else None, "wall_time_s": time_s + 30, "tokens_to_target": last["tokens"] if reached else None,
               "final_val_loss": val_curve[-1], "final_val_loss_fineweb_sample": val_curve[-1] + 0.4, "steady_tokens_per_s": tokens_per_s,
               "steady_mfu": 0.25, "peak_mem_gib": 20.5, "median_step_ms": 524288 / tokens_per_s * 1000, "micro_batch": 32, "status": "reached_target" if reached else "completed"}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture
def two_runs(tmp_path):
    base = fake_run(tmp_path / "base", reached=True, time_s=400.0, tokens_per_s=500_000, val_curve=[10.9, 4.0, 3.6])
    fast = fake_run(tmp_path / "fast", reached=True, time_s=100.0, tokens_per_s=1_000_000, val_curve=[10.9, 3.8, 3.5], flags=("--data", "webmix", "--attn", "sdpa"))
    slow = fake_run(tmp_path / "slow", reached=False, time_s=50.0, tokens_per_s=250_000, val_curve=[10.9, 5.0])
    return base, fast, slow


def test_a_record_of_runs_lists_its_verdicts_beside_the_table(two_runs, tmp_path):
    (tmp_path / "record.json").write_text(json.dumps({"title": "Runs", "table": "throughput", "baseline": "base",
                                                      "runs": {"base": "base", "fast": "fast"}, "verdicts": {"base": "reference", "fast": "2x"}}))
    section = report.record_section(report.load_record(tmp_path))
    assert "| run | verdict |" in section and "| fast | 2x |" in section and "| base | reference |" in section
    assert "| fast |" in report.throughput_table(report.load_record(tmp_path)["loaded"])  # the measured table stays


def test_training_table_rows_and_ratios(two_runs):
    runs = [report.load_run(p) for p in two_runs]
    lines = report.training_table(runs).splitlines()
    assert len(lines) == 2 + 3
    base, fast, slow = lines[2:]
    assert "| base | train_gpt2.py | `--data webmix` | 3.64 | yes | 400.0 s / 430.0 s |" in base
    assert "--out-dir" not in fast and "`--data webmix --attn sdpa`" in fast
    assert fast.endswith("| 2.00x | 4.00x |")  # twice the tokens/s, a quarter of the time to target
    assert "| no | - / 80.0 s |" in slow and slow.endswith("| 0.50x | - |")
    assert "| 3.6000 | 4.0000 | 500,000 |" in base  # final val loss, fineweb_sample (final + 0.4 here), tokens/s


def test_equal_budget_table_takes_the_last_validation_within_the_baselines_budget(two_runs):
    base, fast, slow = (report.load_run(p) for p in two_runs)
    lines = report.equal_budget_table([base, fast, slow], base).splitlines()
    assert "104,857,600 tokens" in lines[0] and "400.0 s" in lines[0]  # the baseline's last validation: step 200, 400 s
    assert lines[2] == "| base | 3.6000 (104,857,600) | 3.6000 (400.0) | none |"
    assert lines[3] == "| fast | 3.5000 (104,857,600) | 3.5000 (100.0) | none |"
    assert lines[4] == "| slow | 5.0000 (52,428,800) | 5.0000 (50.0) | none |"
    late = report.load_run(two_runs[0])
    late.vals = [dict(e, train_time_ms=e["train_time_ms"] * 10) for e in late.vals]  # every validation after 400 s but the first
    assert report.equal_budget_table([base, late], base).splitlines()[3] == "| base | 3.6000 (104,857,600) | 10.9000 (0.0) | none |"


def train_events(losses):
    return [{"type": "train", "step": step, "loss": loss} for step, loss in enumerate(losses, 1)]


def test_loss_spikes_are_rises_above_the_lowest_loss_so_far_one_per_episode():
    losses = [11.0, 10.0, 9.0, 8.0, 7.6, 7.5, 14.3, 8.2, 7.7, 7.5, 7.4, 7.9, 7.3]
    assert report.loss_spikes(train_events(losses)) == [(7, 14.3), (12, 7.9)]  # 8.2 is the same episode as 14.3; 7.7 is within 0.3
    assert report.loss_spikes(train_events([11.0, 10.0, 10.5, 9.0])) == []  # the first steps are left out
    assert report.loss_spikes(train_events([11.0, 10.0, 9.0, 8.0, 8.29, 8.31])) == [(6, 8.31)]
    assert report.spikes_cell([]) == "none" and report.spikes_cell([(7, 14.3)]) == "7: 14.30"


def test_verdict_table_names_the_spikes_of_each_bench(tmp_path):
    folder = tmp_path / "record"
    write_bench(folder / "bench.json", [{"label": "baseline", "val_loss": 7.0}, {"label": "long", "val_loss": 6.9}])
    write_bench(folder / "eq" / "bench.json", [{"label": "baseline", "val_loss": 7.0}, {"label": "long", "val_loss": 7.2}])
    spiky, smooth = [11.0, 10.0, 9.0, 8.0, 12.0, 7.5], [11.0, 10.0, 9.0, 8.0, 7.8, 7.5]
    for bench, label, losses in (("", "baseline", smooth), ("", "long", smooth), ("eq", "long", spiky)):
        (folder / bench / label).mkdir(parents=True)
        (folder / bench / label / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in train_events(losses)))
    (folder / "record.json").write_text(json.dumps({"title": "t", "table": "bench", "runs": {}, "baseline": "baseline",
                                                    "extra_benches": {"at equal time": "eq/bench.json"}, "verdicts": {"baseline": "ref", "long": "v"}}))
    lines = report.verdict_table(report.load_record(folder)).splitlines()
    assert "training-loss spikes" in lines[0]
    assert lines[2].endswith("| none | ref |")  # no run of it in the extra bench: only the main bench is named
    assert lines[3].endswith("| none; at equal time: 5: 12.00 | v |")


def test_verdict_table_shows_no_speed_for_rows_that_shared_the_gpu(tmp_path):
    folder = tmp_path / "record"
    rows = [{"label": "baseline", "tokens_per_s": 150_000.0, "mfu": 0.11, "peak_mem_gib": 29.4, "val_loss": 7.0},
            {"label": "seed1", "tokens_per_s": 160_000.0, "mfu": 0.12, "peak_mem_gib": 29.4, "val_loss": 6.9}]
    (folder).mkdir()
    (folder / "bench.json").write_text(json.dumps({"device": "test", "steps": 3, "warmup_steps": 1, "parallel": 3, "rows": rows}))
    (folder / "record.json").write_text(json.dumps({"title": "t", "table": "bench", "runs": {}, "baseline": "baseline",
                                                    "verdicts": {"baseline": "ref", "seed1": "v", "missing": "not run"}}))
    lines = report.verdict_table(report.load_record(folder)).splitlines()
    assert lines[3].startswith("| seed1 | shared GPU | shared GPU | 29.4 | 6.9000 (-0.100) |")  # memory under its cap still counts
    assert lines[4].startswith("| missing | - | - | - |")


def test_compare_writes_table_and_plots(two_runs, tmp_path, capsys):
    compare = load_script("compare")
    assert compare.main([*map(str, two_runs), "--out", str(tmp_path / "cmp")]) == 0
    assert "| fast |" in (tmp_path / "cmp" / "compare.md").read_text()
    for name in ("loss_vs_time.png", "loss_vs_tokens.png"):
        assert (tmp_path / "cmp" / name).read_bytes()[:8] == PNG_MAGIC
    assert "| base |" in capsys.readouterr().out
    assert compare.main([str(two_runs[0]), str(tmp_path / "typo")]) == 2  # a missing run folder is an error, not a quietly shorter table
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "typo: no summary.json there" in err[0]


def test_compare_paired_averages_the_step_differences_and_lines_up_the_shared_screens(tmp_path, capsys):
    """--paired: runs on the base run's batches (a cut-short one without summary.json too): the mean per-step
    training-loss difference in each window, and the validation screens at the steps every run checked."""
    compare = load_script("compare")

    def write_run(name, loss, screens, last=10):
        run = tmp_path / name
        run.mkdir()
        events = [{"type": "train", "step": i, "loss": loss(i)} for i in range(1, last + 1)]
        events += [{"type": "val_screen", "step": step, "screen_loss": value} for step, value in screens.items()]
        events.append({"type": "val", "step": last, "val_loss": 3.0, "screen_loss": screens.get(last, 3.1)})
        (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
        return str(run)

    base = write_run("base", lambda i: 10.0 - 0.5 * i, {4: 4.0, 8: 3.5})
    lower = write_run("lower", lambda i: 10.0 - 0.5 * i - (0.01 if i > 5 else 0.0), {4: 4.0, 8: 3.49}, last=8)  # cut short at step 8
    assert compare.main(["--paired", base, lower, "--windows", "1-5,6-10"]) == 0
    out = capsys.readouterr().out
    assert "| lower | 8 | +0.0000 (5) | -0.0100 (3) |" in out  # steps 6-8: the only ones both logged
    assert "| 4 | 4.0000 | 4.0000 (+0.0000) |" in out and "| 8 | 3.5000 | 3.4900 (-0.0100) |" in out
    assert compare.even_windows(10) == [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10)]
    assert compare.main(["--paired", base]) == 2
    with pytest.raises(SystemExit, match="FIRST-LAST"):
        compare.parse_windows("5-1")


def test_compare_screen_margins_counts_what_each_margin_would_skip(tmp_path, capsys):
    """--screen-margins: the screen's excess over the full loss, and per margin the full validations it skips where
    the loss was above the target (misses) and where it was not (crossings it would delay)."""
    compare = load_script("compare")
    run = tmp_path / "run"
    run.mkdir()
    checks = [(10, 3.6450, 3.6430), (14, 3.6425, 3.6395), (18, 3.6410, 3.6390)]  # (step, screen, full): +0.0020, +0.0030, +0.0020
    events = [{"type": "val_screen", "step": s, "screen_loss": screen} for s, screen, _ in checks]
    events += [{"type": "val", "step": s, "val_loss": full, "screen_loss": screen} for s, screen, full in checks]
    events.append({"type": "val", "step": 20, "val_loss": 3.63})  # a regular validation, no screen: not counted
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    assert compare.main(["--screen-margins", "--target", "3.64", "--margins", "0.002,0.004", str(run)]) == 0
    out = capsys.readouterr().out
    assert "3 full validations after a screen in 1 runs: the screen read +0.0020 to +0.0030" in out
    assert "| 0.002 | 1 | 1 |" in out  # step 10 (a miss) and step 14 (a crossing: 3.6395) read above 3.642
    assert "| 0.004 | 1 | 0 |" in out  # only step 10's screen is above 3.644
    with pytest.raises(SystemExit):
        compare.main(["--screen-margins", str(run)])  # no target


def test_compare_wall_splits_each_runs_wall_time_into_its_parts(tmp_path, capsys):
    """--wall: imports, start-up, each warm-up part with its compile phases, training, the screens and full validations
    from metrics.jsonl, and the rest, which adds up to wall_time_s; a part a run did not record is '-'."""
    compare = load_script("compare")

    def write_run(name, summary, events):
        run = tmp_path / name
        run.mkdir()
        (run / "summary.json").write_text(json.dumps(summary))
        (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
        return str(run)

    new = write_run("new", {"imports_s": 6.0, "startup_s": 11.0, "warmup_s": 20.0, "warmup_parts_s": {"training graph": 15.0, "evaluation graph": 5.0},
                            "warmup_compile_phases_s": {"training graph": {"Dynamo's trace": 2.5, "guards": 0.0, "running": 7.0}},
                            "train_time_s": 200.0, "steps": 824, "eval_time_s": 25.0, "wall_time_s": 256.5},
                    [{"type": "val_screen", "step": 820, "eval_s": 1.5}, {"type": "val_screen", "step": 824, "eval_s": 1.5},
                     {"type": "val", "step": 824, "eval_s": 20.0}, {"type": "train", "step": 824, "loss": 3.0}])
    old = write_run("old", {"startup_s": 5.0, "warmup_s": 19.0, "train_time_s": 197.0, "steps": 828, "eval_time_s": 24.0, "wall_time_s": 246.0}, [])
    assert compare.main(["--wall", new, old]) == 0
    out = capsys.readouterr().out
    parted = write_run("parted", {"imports_s": 6.0, "startup_s": 11.0, "startup_parts_s": {"data": 0.5, "model": 4.0, "log, checkpoint, compile set-up": 0.5},
                                  "setup_s": 3.0, "warmup_s": 20.0, "train_time_s": 200.0, "steps": 824, "eval_time_s": 25.0, "wall_time_s": 256.5}, [])
    assert compare.main(["--wall", parted]) == 0  # a run that recorded its start-up by part: a row each, the variant's set-up beside its model
    parted_out = capsys.readouterr().out
    assert "| start-up: data | 0.5 |" in parted_out and "| start-up: model | 4.0 (3.0 s of it the variant's own set-up) |" in parted_out
    assert "| start-up |" not in parted_out
    for row in ("| Python and imports | 6.0 | - |", "| start-up | 5.0 | 5.0 |", "| warm-up: training graph | 15.0 (Dynamo's trace 2.5, running 7.0) | - |",
                "| warm-up | - | 19.0 |", "| training | 200.0 (824) | 197.0 (828) |", "| evaluation: screens | 3.0 (2) | 0.0 (0) |",
                "| evaluation: full validations | 20.0 (1) | 0.0 (0) |", "| evaluation: other | 2.0 | 24.0 |",
                "| the rest (the loop's own work, saving, the end) | 0.5 | 1.0 |", "| wall time: the process's start to summary.json | 256.5 | 246.0 |"):
        assert row in out, row
    assert compare.main(["--wall", str(tmp_path / "nothing")]) == 2  # not a finished run: refused, as for the plain table


def test_replayed_checks_skip_as_the_loop_does_and_show_a_crossing_a_longer_skip_would_measure_later(tmp_path, capsys):
    """kit/loop/checks.py's replay: the loop's skips over interpolated screens (a loss falling faster late, so that
    skipping all the steps the early fall rate asks for passes the crossing), and compare.py's table of it."""
    from kit.loop.checks import interpolated, replay_checks

    screens = {100: 3.70, 104: 3.69, 112: 3.66, 116: 3.645, 120: 3.630}
    steps = [*range(100, 129, 4), 130]
    assert interpolated(screens, 108) == pytest.approx(3.675) and interpolated(screens, 124) == pytest.approx(3.615)
    # 0.5: from 104 (falling 0.0025 a step, 0.047 above 3.643) 9 steps pass; 116 is 0.002 above, 120 below: validated
    assert replay_checks(screens, {}, steps, 3.64, 0.003, 0.5, 0.0017) == (4, 1, 120)
    # 1.0: from 104, 18 steps pass: the next check is 124, the crossing is measured 4 steps later
    assert replay_checks(screens, {}, steps, 3.64, 0.003, 1.0, 0.0017) == (3, 1, 124)
    assert replay_checks(screens, {120: 3.6405}, steps, 3.64, 0.003, 0.5, 0.0017)[2] == 124  # a recorded full loss counts

    compare = load_script("compare")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"max_steps": 130, "val_every": 0, "late_val_frac": 0.25, "late_val_every": 4}))
    events = [{"type": "val_screen", "step": s, "screen_loss": v} for s, v in screens.items()] + [{"type": "val", "step": 120, "val_loss": 3.628, "screen_loss": 3.630}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    assert compare.main(["--screen-margins", "--target", "3.64", "--margins", "0.003", "--skips", "0.5,1", str(run)]) == 0
    out = capsys.readouterr().out
    assert "| 0.003 | 0.5 | 4 | 1 | 0 (0) |" in out and "| 0.003 | 1.0 | 3 | 1 | 1 (4) |" in out


def test_training_loss_plot_only_for_runs_with_training_steps(two_runs, tmp_path):
    runs = [report.load_run(p) for p in two_runs]
    assert all(not r.train for r in runs) and len(report.plot_curves(runs, tmp_path / "val_only", training=True)) == 2
    steps = [{"type": "train", "step": i, "tokens": i * 524288, "loss": 11.0 - i} for i in range(1, 6)]
    with open(two_runs[0] / "metrics.jsonl", "a") as f:
        f.write("".join(json.dumps(e) + "\n" for e in steps))
    runs = [report.load_run(p) for p in two_runs]
    assert len(report.plot_curves(runs, tmp_path / "not_asked")) == 2  # records ask for it (train_loss_plot)
    written = report.plot_curves(runs, tmp_path / "with_train", training=True)
    assert written[-1].name == "train_loss_vs_tokens.png" and written[-1].read_bytes()[:8] == PNG_MAGIC


def test_a_clipped_plot_axis_says_what_it_hides():
    assert report.clipped_note([10.9, 4.1, 3.7], 4.2) == " (axis clipped: 1 point(s) above, up to 10.90)"
    assert report.clipped_note([4.1, 3.7], 4.2) == ""


def test_compare_throughput_table(two_runs):
    runs = [report.load_run(p) for p in two_runs]
    rows = report.throughput_table(runs, reference_steps=1000).splitlines()[2:]
    assert "| 1048.6 | 500,000 | 25.0% | 20.5 | 0.29 h | 1.00x |" in rows[0]  # 524288 / 500k tokens/s = 1048.6 ms
    assert rows[1].endswith("| 2.00x |")


def test_records_regenerate_results_and_readme(two_runs, tmp_path):
    records = tmp_path / "records"
    folder = records / "2026-01-01_example"
    folder.mkdir(parents=True)
    for p in two_runs[:2]:
        p.rename(folder / p.name)
    (folder / "record.json").write_text(json.dumps({"title": "Example record", "gpu": "NVIDIA H200", "commit": "abc123", "command": "python x.py",
                                                   "runs": {"baseline": "base", "variant": "fast"}, "plot": True, "notes": "One run each."}))
    readme = tmp_path / "README.md"
    readme.write_text(f"# Kit\n\nintro\n\n{report.README_START}\nstale table\n{report.README_END}\n\n## Layout\n")
    out = report.write_results(records, readme)
    results = out.read_text()
    assert "## Example record" in results and "commit `abc123`" in results and "| variant |" in results and "One run each." in results
    assert (folder / "loss_vs_time.png").read_bytes()[:8] == PNG_MAGIC
    text = readme.read_text()
    assert "stale table" not in text and "| Example record | [2026-01-01_example](records/2026-01-01_example/) |" in text  # a row of the index
    assert "### Example record" not in text and text.startswith("# Kit\n\nintro") and text.rstrip().endswith("## Layout")
    record = json.loads((folder / "record.json").read_text())
    (folder / "record.json").write_text(json.dumps({**record, "headline": True}))
    report.write_results(records, readme)  # a headline record: its row, and its section in full
    text = readme.read_text()
    assert "| Example record (below) |" in text and "### Example record" in text and "records/2026-01-01_example/loss_vs_time.png" in text
    (folder / "record.json").write_text(json.dumps({**record, "readme": False}))
    report.write_results(records, readme)
    assert "Example record" not in readme.read_text() and "Example record" in out.read_text()  # RESULTS.md only
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="no results markers"):
        report.write_results(records, readme)


def test_bench_mfu_is_the_hand_count(tmp_path, scripts_in_process):
    bench = load_script("bench")
    scripts_in_process(bench)
    common = " ".join(FAST[:-4]) + " --data synthetic"  # FAST without its --export/--progress (bench sets them)
    code = bench.main(["--row", "tiny=train_gpt2.py", "--common", common, "--steps", "3", "--warmup-steps", "1",
                       "--val-tokens", "512", "--peak-flops", "1e12", "--out", str(tmp_path)])
    assert code == 0
    row = json.loads((tmp_path / "bench.json").read_text())["rows"][0]
    d, layers, vocab, seq = 64, 2, 50257, 32
    by_hand = 6 * (layers * 12 * d * d + d * vocab) + 12 * layers * d * seq
    assert row["flops_per_token"] == by_hand
    times = [e["step_ms"] for e in report.load_run(tmp_path / "tiny").train][1:4]
    assert row["ms_per_step"] == pytest.approx(statistics.median(times))
    assert row["tokens_per_s"] == pytest.approx(256 / (row["ms_per_step"] / 1000))
    assert row["mfu"] == pytest.approx(row["tokens_per_s"] * by_hand / 1e12)
    summary = json.loads((tmp_path / "tiny" / "summary.json").read_text())
    assert row["tokens"] == 4 * 256 and row["val_loss"] == summary["final_val_loss"]  # the loss at this row's token budget
    table = (tmp_path / "bench.md").read_text()
    assert "| tiny |" in table and f"| 1,024 | {summary['final_val_loss']:.4f} |" in table
    # started again (a sweep cut short): the measured row is read back, not run again
    (tmp_path / "tiny.console.txt").write_text("kept\n")
    assert bench.main(["--row", "tiny=train_gpt2.py", "--common", common, "--steps", "3", "--warmup-steps", "1",
                       "--val-tokens", "512", "--peak-flops", "1e12", "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "bench.json").read_text())["rows"][0]
    assert (tmp_path / "tiny.console.txt").read_text() == "kept\n" and again["ms_per_step"] == row["ms_per_step"]


def test_bench_only_keeps_the_named_rows_in_file_order(tmp_path):
    import argparse

    bench = load_script("bench")
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"label": "a"}, {"label": "b", "flags": "--attn sdpa"}, {"label": "c"}]))
    labels = lambda only: [r["label"] for r in bench.load_rows(argparse.Namespace(rows=str(rows), row=None, only=only))]
    assert labels("c,a") == ["a", "c"] and labels(None) == ["a", "b", "c"]
    with pytest.raises(SystemExit, match="no row labelled x"):
        labels("a,x")


def test_bench_seeds_copy_each_row_and_report_the_spread(tmp_path):
    import argparse

    bench = load_script("bench")
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"label": "a"}, {"label": "b", "flags": "--attn sdpa"}]))
    loaded = bench.load_rows(argparse.Namespace(rows=str(rows), row=None, only="b", seeds=3))
    assert [(r["label"], r["flags"], r.get("seed_of")) for r in loaded] == [
        ("b", ["--attn", "sdpa"], None), ("b_seed1", ["--attn", "sdpa", "--seed", "1"], "b"), ("b_seed2", ["--attn", "sdpa", "--seed", "2"], "b")]
    with pytest.raises(SystemExit, match="already sets --seed"):
        bench.with_seeds([{"label": "x", "flags": ["--seed", "4"]}], 2)
    with pytest.raises(SystemExit, match="two rows are labelled x_seed1"):
        bench.with_seeds([{"label": "x", "flags": []}, {"label": "x_seed1", "flags": []}], 2)
    results = [{"label": "a", "val_loss": 7.0}, {"label": "b", "val_loss": 7.1}, {"label": "b_seed1", "seed_of": "b", "val_loss": 7.3},
               {"label": "b_seed2", "seed_of": "b", "val_loss": None}]  # a failed seed is left out
    assert bench.seed_spread(results).splitlines()[2] == "| b | 2 | 7.1000 / 7.3000 | 7.2000 | 0.2000 |"
    assert bench.seed_spread(results[:1]) == ""


def test_bench_seeds_run_at_their_rows_equal_time_steps(tmp_path, scripts_in_process):
    bench = load_script("bench")
    scripts_in_process(bench)
    common = " ".join(FAST[:-4]) + " --data synthetic"
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps({"steps": 3, "warmup_steps": 1, "rows": [{"label": "tiny", "ms_per_step": 10.0, "train_s": 0.02, "steps": 2}]}))
    assert bench.main(["--row", "tiny=train_gpt2.py", "--common", common, "--seeds", "2", "--equal-time", str(reference),
                       "--val-tokens", "512", "--out", str(tmp_path / "b")]) == 0
    rows = {r["label"]: r for r in json.loads((tmp_path / "b" / "bench.json").read_text())["rows"]}
    assert rows["tiny"]["steps"] == rows["tiny_seed1"]["steps"] == 2
    assert json.loads((tmp_path / "b" / "tiny_seed1" / "config.json").read_text())["seed"] == 1
    assert "| tiny | 2 |" in (tmp_path / "b" / "bench.md").read_text()  # the spread table


def test_sweep_survives_a_failing_configuration_and_resumes(tmp_path, capsys):
    sweep = load_script("sweep")
    argv = ["train_gpt2.py", "--grid", "seq-len=32,40", "--out", str(tmp_path), "--", *FAST, "--data", "synthetic", "--max-steps", "2"]
    assert sweep.main(argv) == 1  # seq-len 40 does not divide the batch: that run fails, the sweep goes on
    manifest = json.loads((tmp_path / "sweep.json").read_text())
    codes = {r["label"]: r["exit_code"] for r in manifest["runs"]}
    assert codes["seq-len=32"] == 0 and codes["seq-len=40"] == 2
    assert json.loads((tmp_path / "seq-len=32" / "summary.json").read_text())["steps"] == 2
    assert "| seq-len=32 |" in (tmp_path / "sweep.md").read_text()
    capsys.readouterr()
    sweep.main(argv)
    assert "seq-len=32: finished before, skipped" in capsys.readouterr().out


def test_sweep_grid_is_the_product():
    sweep = load_script("sweep")
    runs = sweep.combinations(sweep.parse_grid(["seq-len=1024,2048,4096,8192,16384", "attn=manual,sdpa"]))
    assert len(runs) == 10
    assert runs[0] == {"label": "seq-len=1024_attn=manual", "flags": ["--seq-len", "1024", "--attn", "manual"]}


@pytest.mark.parametrize("rows_file", sorted((REPO / "scripts" / "rows").glob("*.json")), ids=lambda p: p.name)
def test_bench_rows_name_existing_scripts_and_valid_flags(rows_file):
    """Every row's script exists and takes the row's flags (a typo would waste a GPU call)."""
    import shlex

    from kit.core.config import parse_config

    for row in json.loads(rows_file.read_text()):
        module = load_module(row.get("script", "train_gpt2.py"))
        parse_config(module.RECIPE.config_cls, shlex.split(row.get("flags", "")))


def test_speedrun_webmix_runs_take_valid_flags():
    """Every named run of scripts/speedrun_webmix.sh gives the speedrun flags it accepts."""
    import shlex
    import subprocess

    from kit.core.config import parse_config

    script = (REPO / "scripts" / "speedrun_webmix.sh").read_text()
    names = set(script.split('COMPARED="', 1)[1].split('"', 1)[0].split()) | {"fit_24gb"}
    speedrun = load_module("train_gpt2_speedrun.py")
    start = script.index("flags_for() {")
    define = script[start:script.index("\n}\n", start) + 3]
    for name in sorted(names):
        flags = subprocess.run(["bash", "-c", define + f"flags_for {name}"], capture_output=True, text=True, check=True).stdout
        parse_config(speedrun.RECIPE.config_cls, shlex.split(flags))


def write_bench(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"device": "test", "steps": 3, "warmup_steps": 1, "rows": rows}))


def test_verdict_table_reads_each_bench_against_its_own_base_row(tmp_path):
    folder = tmp_path / "records" / "2026-01-01_variants"
    write_bench(folder / "bench.json", [
        {"label": "baseline", "tokens_per_s": 500_000.0, "mfu": 0.4, "peak_mem_gib": 100.0, "val_loss": 7.0, "val_loss_fineweb_sample": 7.5},
        {"label": "cheap", "tokens_per_s": 750_000.0, "mfu": 0.45, "peak_mem_gib": 40.0, "val_loss": 7.25, "val_loss_fineweb_sample": 7.6},
        {"label": "broken", "exit_code": 1},
        {"label": "annealed", "tokens_per_s": 500_000.0, "tokens": 1_000_000, "train_s": 4.0, "mfu": 0.4, "peak_mem_gib": 100.0,
         "val_loss": 7.0, "val_loss_fineweb_sample": 7.5}])
    write_bench(folder / "lr3" / "bench.json", [{"label": "baseline", "val_loss": 6.5}, {"label": "cheap", "val_loss": 7.5}])
    for bench, lr in (("", 6e-4), ("lr3", 1.8e-3)):  # each row's learning rate, from its run's config.json
        for label in ("baseline", "cheap"):
            (folder / bench / label).mkdir(parents=True)
            (folder / bench / label / "config.json").write_text(json.dumps({"lr": lr}))
    (folder / "record.json").write_text(json.dumps({
        "title": "Variants", "table": "bench", "runs": {}, "baseline": "baseline", "extra_benches": {"at 3x LR": "lr3/bench.json"},
        "verdicts": {"baseline": "reference", "cheap": "faster, worse", "broken": "failed", "annealed": "slow early"}, "notes": "how it was measured"}))
    (folder / "bench.md").write_text("| full bench table |")
    record = report.load_record(folder)
    lines = report.verdict_table(record).splitlines()
    assert "val loss at 3x LR (vs its base)" in lines[0]
    assert "best over the benches (vs the base's best)" in lines[0]
    # best against best: cheap's best (7.25 at 6e-4) against the baseline's (6.5 at 1.8e-3), not against 7.0
    assert lines[2] == "| baseline | 500,000 (1.00x) | 40.0% | 100.0 | 7.0000 (+0.000) | 6.5000 (+0.000) | 6.5000 @0.0018 (+0.000) | 7.5000 (+0.000) | - | reference |"
    assert lines[3] == "| cheap | 750,000 (1.50x) | 45.0% | 40.0 | 7.2500 (+0.250) | 7.5000 (+1.000) | 7.2500 @0.0006 (+0.750) | 7.6000 (+0.100) | - | faster, worse |"
    assert lines[4] == "| broken | - | - | - | - | - | - | - | - | failed |"
    assert lines[5].startswith("| annealed | 250,000 (0.50x) |")  # its tokens over its whole training time, not its median step
    points = report.speed_loss_points(record)  # the plot's points: broken has none
    assert points["baseline"] == (1.0, 0.0) and points["cheap"] == pytest.approx((1.5, 0.25)) and set(points) == {"baseline", "cheap", "annealed"}
    record["speed_loss_plot"] = True
    assert report.plot_speed_vs_loss(record).exists() and "(records/2026-01-01_variants/speed_vs_loss.png)" in report.record_section(record, link_prefix="records/")
    full, brief = report.record_section(record), report.record_section(record, brief=True)
    assert "| full bench table |" in full and "| cheap |" in full
    assert "| full bench table |" not in brief and "| cheap |" in brief  # the README shows the verdicts only
    assert "how it was measured" in full and "how it was measured" not in brief and "RESULTS.md" in brief  # and points to the notes


def test_a_record_can_show_a_markdown_table_its_benchmark_wrote(tmp_path):
    folder = tmp_path / "2026-01-01_inference"
    folder.mkdir()
    (folder / "bench_inference.md").write_text("| batch | tokens/s |\n|---|---|\n| 1 | 492.8 |\n")
    (folder / "record.json").write_text(json.dumps({"title": "Inference", "table": "file", "table_file": "bench_inference.md", "runs": {}, "notes": "n"}))
    assert "| 1 | 492.8 |" in report.record_section(report.load_record(folder))


def test_equal_time_gives_each_row_the_steps_that_fit_in_the_base_rows_time(tmp_path, scripts_in_process):
    bench = load_script("bench")
    scripts_in_process(bench)
    reference = {"steps": 8, "warmup_steps": 2, "rows": [{"label": "base", "ms_per_step": 100.0, "train_s": 1.0},
                                                        {"label": "fast", "ms_per_step": 40.0}, {"label": "broken", "exit_code": 1}]}
    assert bench.equal_time_steps(reference) == {"base": 10, "fast": 25}
    # a row whose early steps cost more (annealed MTP heads): its mean step (50 ms), not its median (40 ms), sets its steps
    annealed = {"label": "annealed", "ms_per_step": 40.0, "train_s": 0.5, "steps": 10}
    assert bench.equal_time_steps({**reference, "rows": reference["rows"] + [annealed]})["annealed"] == 20
    assert bench.equal_time_steps({**reference, "rows": [dict(reference["rows"][0], train_s=None), reference["rows"][1]]}) == {"base": 10, "fast": 25}
    assert bench.equal_time_steps(reference, "fast") == {"base": 4, "fast": 10}  # fast's budget: 40 ms x (8 + 2) steps
    # a row with a one-time setup (RETRO's index, 0.6 s) spends it from the base row's 1 s when asked: equal wall time
    indexed = {**reference, "rows": [dict(reference["rows"][0], setup_s=0.0), dict(reference["rows"][1], setup_s=0.6)]}
    assert bench.equal_time_steps(indexed) == {"base": 10, "fast": 25}
    assert bench.equal_time_steps(indexed, charge_setup=True) == {"base": 10, "fast": 10}
    assert bench.equal_time_steps({**indexed, "rows": [indexed["rows"][0], dict(indexed["rows"][1], setup_s=5.0)]}, charge_setup=True)["fast"] == 1
    # end to end, on a smaller budget (0.5 s: 5 and 10 steps)
    small = {**reference, "rows": [dict(reference["rows"][0], train_s=0.5), dict(reference["rows"][1], ms_per_step=50.0)]}
    (tmp_path / "reference.json").write_text(json.dumps(small))
    common = " ".join(FAST[:-4]) + " --data synthetic"
    assert bench.main(["--row", "base=train_gpt2.py", "--row", "fast=train_gpt2.py --attn sdpa", "--common", common, "--steps", "3",
                       "--warmup-steps", "1", "--val-tokens", "512", "--equal-time", str(tmp_path / "reference.json"), "--out", str(tmp_path / "b")]) == 0
    rows = {r["label"]: r for r in json.loads((tmp_path / "b" / "bench.json").read_text())["rows"]}
    assert (rows["base"]["steps"], rows["fast"]["steps"]) == (5, 10)
    assert rows["fast"]["tokens"] == 10 * 256 and rows["fast"]["train_s"] > 0
    with pytest.raises(SystemExit, match="no measured ms/step for other"):
        bench.main(["--row", "other=train_gpt2.py", "--equal-time", str(tmp_path / "reference.json"), "--out", str(tmp_path / "c")])


WAIT_FOR_EACH_OTHER = """import pathlib, sys, time
me, other = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
me.touch()
deadline = time.time() + 30
while not other.exists():
    if time.time() > deadline:
        sys.exit(3)
    time.sleep(0.05)
"""


def test_parallel_rows_run_at_the_same_time(tmp_path):
    bench = load_script("bench")
    script = tmp_path / "wait_for_each_other.py"
    script.write_text(WAIT_FOR_EACH_OTHER)
    a, b = tmp_path / "a", tmp_path / "b"
    rows = [f"a={script} {a} {b}", f"b={script} {b} {a}"]
    assert bench.main([*(f"--row={r}" for r in rows), "--parallel", "2", "--row-timeout", "60", "--out", str(tmp_path / "together")]) == 1  # no summaries: not training runs
    together = json.loads((tmp_path / "together" / "bench.json").read_text())
    assert [r["exit_code"] for r in together["rows"]] == [0, 0] and together["parallel"] == 2  # each saw the other running
    a.unlink(), b.unlink()
    bench.main([*(f"--row={r}" for r in rows), "--row-timeout", "2", "--out", str(tmp_path / "in_turn")])
    assert json.loads((tmp_path / "in_turn" / "bench.json").read_text())["rows"][0]["exit_code"] == 124  # one at a time: the first waits in vain
    with pytest.raises(SystemExit, match="ran rows in parallel"):
        bench.equal_time_steps(together)


def test_rows_that_shared_the_gpu_show_no_speed():
    bench = load_script("bench")
    row = {"label": "r", "flags": [], "micro_batch": 8, "ms_per_step": 10.0, "tokens_per_s": 1000.0, "mfu": 0.5, "peak_mem_gib": 1.0,
           "train_s": 2.0, "tokens": 4096, "val_loss": 7.0, "val_loss_fineweb_sample": 7.5}
    assert bench.markdown([row], "cpu").splitlines()[-1] == "| r | `` | 8 | 10.0 | 1,000 | 50.0% | 1.0 | 2,048 | 1.00x | 2.0 | 4,096 | 7.0000 | 7.5000 |"
    assert bench.markdown([row], "cpu", shared_gpu=True).splitlines()[-1] == "| r | `` | 8 | shared | shared | shared | 1.0 | shared | shared | shared | 4,096 | 7.0000 | 7.5000 |"


def test_bench_speed_ratio_counts_every_step_not_the_median_one():
    bench = load_script("bench")
    base = {"label": "base", "flags": [], "micro_batch": 8, "ms_per_step": 10.0, "tokens_per_s": 1000.0, "mfu": 0.5, "peak_mem_gib": 1.0,
            "train_s": 4.0, "tokens": 4000, "val_loss": 7.0, "val_loss_fineweb_sample": 7.5}
    annealed = {**base, "label": "annealed", "train_s": 8.0}  # same median step, but its early steps cost more
    last = bench.markdown([base, annealed], "cpu").splitlines()[-1]
    assert "| 1,000 | 50.0% | 1.0 | 500 | 0.50x | 8.0 |" in last


def test_a_rows_file_can_keep_a_rows_weights(tmp_path, scripts_in_process):
    bench = load_script("bench")
    scripts_in_process(bench)
    (tmp_path / "rows.json").write_text(json.dumps([{"label": "kept", "script": "train_gpt2.py", "export": True},
                                                    {"label": "dropped", "script": "train_gpt2.py"}]))
    common = " ".join(FAST[:-4]) + " --data synthetic"
    assert bench.main(["--rows", str(tmp_path / "rows.json"), "--common", common, "--steps", "1", "--warmup-steps", "1",
                       "--val-tokens", "512", "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "kept" / "model.safetensors").exists()  # for an analysis after the bench (moe_routing.py)
    assert not (tmp_path / "b" / "dropped" / "model.safetensors").exists()


def fake_bench(folder, labels, commit="abc123"):
    write_bench(folder / "bench.json", [{"label": label, "val_loss": 7.0} for label in labels])
    (folder / "bench.md").write_text("| table |\n")
    for label in labels:
        run = folder / label
        run.mkdir()
        (run / "summary.json").write_text(json.dumps({"git_commit": commit}))
        (run / "log.txt").write_text("command: x\nversions: python 3.12.3 | torch 2.11.0+cu130 (cuda 13.0)\ndevice: NVIDIA H200 (sm90, 139.8 GiB) | dtype: bf16\n")
        (run / "model.safetensors").write_bytes(b"weights")
        (folder / f"{label}.console.txt").write_text("console\n")


def test_record_bench_turns_a_sweep_into_a_record_of_its_runs(tmp_path, scripts_in_process):
    sweep, record_bench = load_script("sweep"), load_script("record_bench")
    assert scripts_in_process(sweep).scripts_run == []  # (test_sweep_survives... runs the sweep's processes for real)
    common = [*FAST[:-4], "--data", "synthetic", "--max-steps", "2", "--val-every", "2", "--export", "0", "--batch-tokens", "512"]
    assert sweep.main(["train_gpt2_long_context.py", "--grid", "seq-len=128,256", "--out", str(tmp_path / "ctx"), "--", *common]) == 0
    target = tmp_path / "records" / "2026-01-01_ctx"
    assert record_bench.main([str(tmp_path / "ctx"), str(target), "--title", "Context sweep", "--command", "sweep it"]) == 0
    record = report.load_record(target)
    assert record["runs"] == {"seq-len=128": "seq-len=128", "seq-len=256": "seq-len=256"} and record["plot"]
    section = report.record_section(record)
    assert "| seq-len=256 |" in section and "sweep it" in section


def test_record_bench_copies_a_fetched_bench_into_a_record(tmp_path):
    record_bench = load_script("record_bench")
    fake_bench(tmp_path / "fetched", ["baseline", "variant"])
    fake_bench(tmp_path / "fetched_lr3", ["baseline", "variant"])
    target = tmp_path / "records" / "2026-01-01_variants"
    assert record_bench.main([str(tmp_path / "fetched"), str(target), "--title", "Variants", "--command", "bench it",
                              "--extra", f"at 3x LR={tmp_path / 'fetched_lr3'}"]) == 0
    record = json.loads((target / "record.json").read_text())
    assert record["gpu"] == "NVIDIA H200 (sm90), torch 2.11.0+cu130" and record["commit"] == "abc123"
    assert record["baseline"] == "baseline" and record["extra_benches"] == {"at 3x LR": "at_3x_lr/bench.json"}
    assert (target / "variant" / "log.txt").exists() and (target / "at_3x_lr" / "variant.console.txt").exists()
    assert not list(target.rglob("*.safetensors"))  # weights stay behind
    assert "| table |" in report.record_section(report.load_record(target))
    with pytest.raises(SystemExit, match="not overwritten"):
        record_bench.main([str(tmp_path / "fetched"), str(target), "--title", "t", "--command", "c"])
    fake_bench(tmp_path / "other_commit", ["baseline"], commit="def456")
    with pytest.raises(SystemExit, match="2 commits"):
        record_bench.main([str(tmp_path / "fetched"), str(tmp_path / "mixed"), "--title", "t", "--command", "c", "--extra", f"x={tmp_path / 'other_commit'}"])
    # a later pass joins the record: its folder, its column, its commit and command noted
    assert record_bench.main(["--add-to", str(target), "--extra", f"at equal time={tmp_path / 'other_commit'}", "--command", "time it"]) == 0
    record = json.loads((target / "record.json").read_text())
    assert record["extra_benches"]["at equal time"] == "at_equal_time/bench.json" and (target / "at_equal_time" / "bench.json").exists()
    assert record["commit"] == "abc123 (at_equal_time/: def456)" and record["command"] == "bench it; at equal time: time it"
    assert "val loss at equal time (vs its base)" in report.verdict_table({**report.load_record(target), "verdicts": {"baseline": "ref"}})
    with pytest.raises(SystemExit, match="already has an extra bench"):
        record_bench.main(["--add-to", str(target), "--extra", f"at equal time={tmp_path / 'other_commit'}", "--command", "again"])


def test_best_over_benches_leaves_out_equal_time_passes(tmp_path):
    folder = tmp_path / "2026-01-01_ideas"
    write_bench(folder / "bench.json", [{"label": "base", "val_loss": 7.0, "tokens": 100}, {"label": "slow", "val_loss": 6.9, "tokens": 100}])
    write_bench(folder / "equal_time" / "bench.json", [{"label": "base", "val_loss": 7.0, "tokens": 100}, {"label": "slow", "val_loss": 7.1, "tokens": 60}])
    write_bench(folder / "lr3" / "bench.json", [{"label": "base", "val_loss": 6.8, "tokens": 100}, {"label": "slow", "val_loss": 6.95, "tokens": 100}])
    record = {"folder": folder, "baseline": "base", "verdicts": {"base": "ref", "slow": "v"},
              "extra_benches": {"at equal time": "equal_time/bench.json"}}
    lines = report.verdict_table(record).splitlines()
    assert "best over the benches" not in lines[0] and "| 7.1000 (+0.100) |" in lines[3]  # an equal-time loss is no LR's best
    record["extra_benches"]["at 3x LR"] = "lr3/bench.json"
    lines = report.verdict_table(record).splitlines()
    assert "best over the benches" in lines[0] and "| 6.9000 (+0.100) |" in lines[3]  # 6.9 (6e-4 bench) against the base's 6.8


STOPPED_TOOL = """
import sys, time
sys.path.insert(0, sys.argv[1])
from kit.tools import children
children.stop_with_this_process()
child = children.start([sys.executable, "-c", "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)", sys.argv[2]])
children.wait(child)
"""


def test_a_tool_stopped_by_sigterm_stops_the_runs_it_started(tmp_path):
    """kit/tools/children.py (bench, sweep, check_desktop_fit): SIGTERM to the tool ends its child too, so no
    run keeps training unseen after a `kill` or `timeout`; the tool exits 143."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    pid_file = tmp_path / "child.pid"
    tool = subprocess.Popen([sys.executable, "-c", STOPPED_TOOL, str(REPO), str(pid_file)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    os.kill(child, 0)  # running
    tool.send_signal(signal.SIGTERM)
    assert tool.wait(timeout=30) == 143 and "stopping its runs" in tool.stderr.read()
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # ended and reaped by the tool


def test_the_tools_that_start_runs_stop_them_with_themselves():
    for tool in ("bench.py", "sweep.py", "check_desktop_fit.py"):
        text = (REPO / "scripts" / tool).read_text()
        main_block = text.split('if __name__ == "__main__":', 1)[1]
        assert "children.stop_with_this_process()" in main_block and "subprocess.Popen(" not in text and "subprocess.call(" not in text, tool


def test_evaluate_scores_a_run_at_its_own_window_as_its_last_validation_did_and_at_others(tmp_path, capsys):
    """A YaRN run of windows 1 then 2 blocks (256-token sequences): at window 2, its last window, the script's loss
    equals the run's own final validation; at window 1 (other tables, other mask) it differs."""
    import torch
    from safetensors.torch import load_file, save_file

    import train_gpt2_speedrun as sr
    from kit.loop.train import main

    run = tmp_path / "run"
    assert main(sr.RECIPE, ["--model-size", "tiny", "--data", "synthetic", "--device", "cpu", "--seq-len", "256", "--batch-tokens", "512",
                            "--val-tokens", "512", "--max-steps", "4", "--val-every", "0", "--window-stages", "1,2", "--yarn", "1",
                            "--progress", "lines", "--out-dir", str(run)]) == 0
    final = json.loads((run / "summary.json").read_text())["final_val_loss"]
    evaluate = load_script("evaluate")
    rows = evaluate.main([str(run), "--window-blocks", "2", "--device", "cpu", "--out", str(tmp_path / "rows.json")])
    assert [(r["window_blocks"], r["set"], r["tokens"]) for r in rows] == [(2, "val", 512)] and rows[0]["loss"] == pytest.approx(final, abs=1e-5)
    assert json.loads((tmp_path / "rows.json").read_text())["rows"] == rows
    assert "| 2 | val |" in capsys.readouterr().out
    weights = load_file(run / "model.safetensors")  # 4 steps leave the zero-started projections near zero: perturb, so attention matters
    save_file({name: w + 0.3 * torch.randn_like(w) for name, w in weights.items()}, run / "model.safetensors")
    wide, narrow = evaluate.main([str(run), "--window-blocks", "2,1", "--device", "cpu"])
    assert (wide["window_blocks"], narrow["window_blocks"]) == (2, 1) and abs(wide["loss"] - narrow["loss"]) > 1e-3
    with pytest.raises(SystemExit):
        evaluate.main([str(run), "--window-blocks", "x"])


def test_compare_step_cost_puts_each_speed_run_against_the_defaults_mean(tmp_path, capsys):
    """--step-cost: each run's switch (its flags beyond the shared ones), median step, window medians and first step,
    and steady tokens/s against the mean of the runs with no switch of their own, whose spread it states."""
    compare = load_script("compare")

    def write_run(name, extra, rate, step_ms):
        run = tmp_path / name
        run.mkdir()
        summary = {"flags": ["--max-steps", "830", "--export", "0", *extra, "--out-dir", f"logs/{name}"], "steady_tokens_per_s": rate,
                   "median_step_ms": step_ms, "fp8_flops_share": 0.312, "peak_mem_gib": 38.1, "warmup_s": 7.0, "steps": 4}
        (run / "summary.json").write_text(json.dumps(summary))
        events = [{"type": "train", "step": i, "step_ms": ms} for i, ms in enumerate([250.0, step_ms, step_ms + 2, step_ms + 4], start=1)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
        return str(run)

    runs = [write_run("a", [], 100_000, 120.0), write_run("b", ["--adam-every", "2"], 103_000, 117.0), write_run("c", [], 102_000, 119.0),
            write_run("d", ["--yarn", "0"], 99_000, 121.0)]
    assert compare.main(["--step-cost", *runs, "--windows", "2-3,4-4"]) == 0
    out = capsys.readouterr().out
    assert "| a `(none)` | 120.0 ms | 121.0 / 124.0 ms | 250 ms | 100,000 | -0.99% |" in out
    assert "| b `--adam-every 2` | 117.0 ms | 118.0 / 121.0 ms | 250 ms | 103,000 | +1.98% |" in out
    assert "| d `--yarn 0` |" in out  # a switch's value counts even where another flag shares it (--export 0)
    assert "The defaults' mean: 101,000 tokens/s; their spread 100,000 to 102,000 (1.98%)." in out


def test_flex_attention_bench_times_each_candidate_per_micro_step_and_compares_it_with_the_default():
    """scripts/bench_flex_attention.py's bookkeeping on a CPU (FlexAttention has no CPU backward: plain causal attention
    stands in): each mask's time counts once per layer of its window (4 long, 7 short), random documents end at 50256s,
    and a candidate is compared with the first one, output and gradients."""
    import sys

    import torch.nn.functional as F

    sys.path.insert(0, str(REPO / "scripts"))
    bench = load_module("scripts/bench_flex_attention.py", "bench_flex_attention_tool")
    from kit.modeling.modern import document_ids, flex_block_mask

    args = type("Args", (), {"tokens": "", "doc_len": 40})()
    tokens = bench.document_tokens(args, 512)
    assert 4 <= int((tokens == 50256).sum()) <= 30  # ~512 / 40 documents
    docs = document_ids(tokens.view(2, 256))
    masks = [(flex_block_mask(docs, 2), bench.LONG_LAYERS), (flex_block_mask(docs, 1), bench.SHORT_LAYERS)]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 256, 16, generator=g).requires_grad_() for _ in range(3))
    times = iter(range(1, 100))
    shift = {"default": 0.0, "again": 0.0, "off": 0.5}

    def stand_in(q, k, v, block_mask, scale, kernel_options):
        return F.scaled_dot_product_attention(q, k, v, scale=scale, is_causal=True) + shift[kernel_options["name"]]

    candidates = {name: {"name": name} for name in shift}
    rows = list(bench.attention_rows(q, k, v, masks, 0.25, candidates, timer=lambda fn: (fn(), next(times))[1], attention=stand_in))
    assert [name for name, *_ in rows] == ["default", "again", "off"]
    (_, forward, backward, difference), (_, _, _, again), (_, _, _, off) = rows
    assert (forward, backward) == (4 * 1 + 7 * 3, 4 * 2 + 7 * 4)  # long: timings 1 and 2, short: 3 and 4
    assert difference == 0 and again == 0 and off == pytest.approx(0.5)  # a candidate whose output differs shows by how much


def test_compare_spread_gives_median_and_range_over_the_repeats_that_reached(tmp_path, capsys):
    """--spread: each measure's median, lowest, highest and range over the runs that reached the target; a run that
    did not is named and left out (its time would only flatter the median)."""
    compare = load_script("compare")
    runs = [fake_run(tmp_path / f"s{i}", reached=True, time_s=t, tokens_per_s=550_000, val_curve=[10.9, 4.0, v])
            for i, (t, v) in enumerate([(198.0, 3.639), (195.0, 3.637), (201.0, 3.640)], start=1)]
    missed = fake_run(tmp_path / "s4", reached=False, time_s=150.0, tokens_per_s=550_000, val_curve=[10.9, 3.9])
    assert compare.main(["--spread", *map(str, runs), str(missed)]) == 0
    out = capsys.readouterr().out
    assert "| training time to the target (s) | 198.0 | 195.0 | 201.0 | 6.0 | s1 198.0, s2 195.0, s3 201.0 |" in out
    assert "| validation loss at the crossing | 3.6390 | 3.6370 | 3.6400 | 0.0030 |" in out and "3 of 4 reached 3.64" in out
    assert "Not reached: s4" in out and "s4 150.0" not in out
