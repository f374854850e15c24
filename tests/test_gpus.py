"""Per-GPU choices and --emulate-gpu, on a CPU: CUDA's device queries answer as an H200 would."""

import copy
import json

import pytest
import torch

from conftest import FAST, REPO
from kit.core import gpus
from kit.core.errors import UserError

CUDA = torch.device("cuda", 0)


@pytest.fixture
def h200(monkeypatch):
    """torch.cuda answers as one H200 would; the memory fractions asked for are kept in the list returned."""
    fractions = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: type("Props", (), {"total_memory": 140 * 2**30})())
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda fraction, device=None: fractions.append(fraction))
    yield fractions
    gpus.stop_emulating()


@pytest.mark.parametrize("card, fp8", [("rtx3090", False), ("rtx4090", True)])
def test_an_emulated_card_decides_the_kernel_paths_and_caps_the_memory(h200, card, fp8):
    from kit.modeling.fp8 import gpu_has_fp8
    from kit.modeling.modern import flex_kernel_options

    assert gpu_has_fp8(CUDA) and flex_kernel_options(CUDA) is None and "GPU profile: h200 |" in gpus.describe_profile(CUDA)
    gpus.emulate(card, CUDA)
    assert gpus.capability(CUDA) == gpus.PROFILES[card].capability and h200 == [pytest.approx(22.5 / 140)]
    assert gpu_has_fp8(CUDA) is fp8
    assert flex_kernel_options(CUDA)["BLOCK_M"] == 64  # tiles that fit ~100 KB of shared memory
    assert gpus.describe_profile(CUDA).startswith(f"GPU profile: emulated {card} on NVIDIA H200 (its speed is not the card's)")
    gpus.stop_emulating()
    assert gpus.capability(CUDA) == (9, 0) and gpu_has_fp8(CUDA)


def test_flex_options_lie_over_the_gpus_own_and_reach_flexattention(h200, monkeypatch):
    """--flex-options (JSON) is laid over the GPU's own kernel options (none on an H200, the small tiles on an
    emulated 4090), reaches every FlexAttention call of the model, and names itself in the kernel paths; what is not a
    JSON object stops the run in one line."""
    import train_gpt2_speedrun as sr
    from kit.core.config import parse_config
    from kit.modeling import modern

    assert modern.flex_kernel_options(CUDA, {"USE_TMA": True}) == {"USE_TMA": True}
    gpus.emulate("rtx4090", CUDA)
    assert modern.flex_kernel_options(CUDA, {"BLOCK_M": 32})["BLOCK_M"] == 32 and modern.flex_kernel_options(CUDA)["BLOCK_N1"] == 64
    gpus.stop_emulating()
    cfg, _ = parse_config(sr.Hyperparameters, ["--model-size", "tiny", "--device", "cpu", "--attn", "flex", "--flex-options", '{"USE_TMA": true}'])
    model = sr.build_model(cfg)
    seen = []

    def flex_stand_in(q, k, v, block_mask, scale, kernel_options):
        seen.append(kernel_options)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale, is_causal=True)

    monkeypatch.setattr(modern, "flex_attention_fn", lambda q: flex_stand_in)
    idx = torch.randint(0, 100, (1, cfg.seq_len))
    model(idx, idx)
    attention_layers = sum(block.attn is not None for block in model.blocks)
    assert seen == [{"USE_TMA": True}] * attention_layers and 'kernel options {"USE_TMA": true}' in model.describe_paths()
    for bad in ("USE_TMA", "[1, 2]"):
        cfg, _ = parse_config(sr.Hyperparameters, ["--model-size", "tiny", "--device", "cpu", "--flex-options", bad])
        with pytest.raises(UserError, match="flex_options"):
            sr.build_model(cfg)


def test_emulation_needs_a_larger_nvidia_gpu(h200, monkeypatch):
    with pytest.raises(UserError, match="on the cpu"):
        gpus.emulate("rtx4090", torch.device("cpu"))
    with pytest.raises(UserError, match="one of rtx3090, rtx4090"):
        gpus.emulate("rtx2080", CUDA)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: type("Props", (), {"total_memory": 16 * 2**30})())
    with pytest.raises(UserError, match="no more than the card's 22.5 GiB"):
        gpus.emulate("rtx3090", CUDA)
    assert gpus.emulated() is None


def test_an_unknown_gpu_is_served_by_its_compute_capability(h200, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA RTX A6000")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    assert gpus.profile_of(CUDA) is None
    assert gpus.describe_profile(CUDA) == "GPU profile: unknown GPU, chosen by its sm86 | bf16 head (no FP8) | small FlexAttention tiles (64/64)"


def test_the_readme_shows_the_table_of_what_each_gpu_gets():
    assert gpus.profile_table() in (REPO / "README.md").read_text()


def test_a_cpu_run_refuses_emulation_in_one_line(capsys):
    import train_gpt2
    from kit.loop.train import main

    assert main(train_gpt2.RECIPE, [*FAST, "--data", "synthetic", "--max-steps", "1", "--emulate-gpu", "rtx4090"]) == 2
    assert "runs as that card on a larger NVIDIA GPU, and this run is on the cpu" in capsys.readouterr().err
    assert gpus.emulated() is None


try:
    import triton
    import triton.language as tl
except ImportError:  # CPU wheels of PyTorch do not ship Triton; requirements-dev.txt installs it
    triton = None
needs_triton = pytest.mark.skipif(triton is None, reason="needs Triton (pip install triton)")

if triton is not None:
    @triton.jit
    def _one_tile_matmul(a_ptr, b_ptr, c_ptr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        """One product of a BM x BK and a BK x BN bf16 tile, both staged in shared memory."""
        rm, rn, rk = tl.arange(0, BM), tl.arange(0, BN), tl.arange(0, BK)
        a = tl.load(a_ptr + rm[:, None] * BK + rk[None, :])
        b = tl.load(b_ptr + rk[:, None] * BN + rn[None, :])
        tl.store(c_ptr + rm[:, None] * BN + rn[None, :], tl.dot(a, b))


@needs_triton
def test_a_kernel_compiled_for_a_3090_can_need_more_shared_memory_than_the_card_has():
    """128 x 256 and 256 x 128 bf16 tiles (128 KB): over the 101,376 bytes of sm86, within sm90's 232,448."""
    signature = {"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*fp32", "BM": "constexpr", "BN": "constexpr", "BK": "constexpr"}
    need = {cap: gpus.shared_memory_need(_one_tile_matmul, signature, {"BM": 128, "BN": 128, "BK": 256}, 4, cap) for cap in ((8, 6), (9, 0))}
    assert need[(8, 6)] > gpus.PROFILES["rtx3090"].shared_memory_per_block
    assert need[(9, 0)] <= gpus.PROFILES["h200"].shared_memory_per_block


@needs_triton
def test_the_kits_loss_kernels_fit_the_desktop_cards():
    """Every autotuning configuration of the loss kernels, compiled for the 4090 (sm89, the FP8 gradient), fits its
    shared memory (scripts/audit_shared_memory.py does the 3090 too)."""
    from conftest import load_module

    from kit.modeling import triton_loss

    audit = load_module("scripts/audit_shared_memory.py", "audit_shared_memory")
    rows = audit.audit(["rtx4090"], builds=list(triton_loss.kernel_builds(fp8=True)))
    assert len(rows) == 2 * 4 + 6 and all(r["fits"] for r in rows), audit.table(rows)  # statistics and the one-pass kernel: 4 configs each
    assert "| rtx4090 | loss stats and gradient in one pass (BLOCK_V 8192, 16 warps) |" in audit.table(rows)
    assert "| rtx4090 | loss gradient (BLOCK_N 128, BLOCK_V 64, 4 warps) |" in audit.table(rows)


@needs_triton
def test_the_mla_decode_kernels_largest_desktop_tiles_fit_and_the_hopper_ones_would_not():
    """The MLA decode kernel at the DeepSeek shape: its largest tiles for sm86 (32 rows) fit 101,376 bytes;
    the 64-row, 512-wide tiles it takes on Hopper would not, which is why tile_config asks."""
    from kit.modeling import mla_decode

    desktop = list(mla_decode.kernel_builds(512, 64, small_shared_memory=True))[-2]
    hopper = list(mla_decode.kernel_builds(512, 64, small_shared_memory=False))[-2]
    assert "BLOCK_M 32" in desktop[0] and "BLOCK_M 64" in hopper[0]
    limit = gpus.PROFILES["rtx3090"].shared_memory_per_block
    for (name, fn, signature, constexprs, warps, stages), fits in ((desktop, True), (hopper, False)):
        assert (gpus.shared_memory_need(fn, signature, constexprs, warps, (8, 6), stages) <= limit) == fits, name


@needs_triton
def test_an_emulated_run_stops_in_one_line_on_a_kernel_over_the_cards_shared_memory():
    """gpus.audit_kernels, which an --emulate-gpu run calls on the kernels it launches itself before training:
    a build over the card's limit stops it with the kernel's name and need; builds that fit give one log line."""
    from kit.core.errors import UserError

    signature = {"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*fp32", "BM": "constexpr", "BN": "constexpr", "BK": "constexpr"}
    small = ("16 x 16 tiles", _one_tile_matmul, signature, {"BM": 16, "BN": 16, "BK": 16}, 4)
    oversized = ("128 x 256 tiles", _one_tile_matmul, signature, {"BM": 128, "BN": 128, "BK": 256}, 4)
    line = gpus.audit_kernels(gpus.PROFILES["rtx3090"], [small])
    assert line.startswith("shared-memory audit (rtx3090, compiled for sm86): 1 kernel builds fit, the largest needs ") and "of 101,376 bytes" in line
    with pytest.raises(UserError, match=r"--emulate-gpu rtx3090: the kernel 128 x 256 tiles needs [\d,]+ bytes of shared memory per block, over the 101,376"):
        gpus.audit_kernels(gpus.PROFILES["rtx3090"], [small, oversized])
    assert "no Triton kernel" in gpus.audit_kernels(gpus.PROFILES["rtx4090"], [])


def test_the_record_script_audits_its_loss_kernels_where_it_takes_them(monkeypatch):
    import train_gpt2_speedrun as sr
    from conftest import FAST

    trainer = sr.SpeedrunTrainer(sr.RECIPE, [*FAST, "--data", "synthetic"])
    assert trainer.own_kernel_builds() == []  # on a CPU the fused loss runs PyTorch's kernels
    monkeypatch.setattr(sr, "loss_kernel", lambda cfg: "triton")
    names = [build[0] for build in trainer.own_kernel_builds()]
    assert len(names) == 10 and all(name.startswith("loss ") for name in names)
    assert {build[3]["K"] for build in trainer.own_kernel_builds()} == {3}  # the next token and two ahead (--v2's multi-token prediction)
    one_pass = sr.SpeedrunTrainer(sr.RECIPE, [*FAST, "--data", "synthetic", "--loss-one-pass", "1"])
    monkeypatch.setattr(gpus, "fp8_capable", lambda cap: True)  # as on a 4090 or an H200
    assert sum("one pass" in build[0] for build in one_pass.own_kernel_builds()) == 4  # where the run takes it: with the FP8 gradient
    with_prefix = sr.SpeedrunTrainer(sr.RECIPE, [*FAST, "--data", "synthetic", "--prefix-target", "0.25"])
    assert {build[3]["K"] for build in with_prefix.own_kernel_builds()} == {4}  # and the prefix token: the kernels audited as they run


def _inductor_kernel(launched: dict, candidates: list, host_shared: int):
    """A real Inductor CachingAutotuner around _one_tile_matmul as a run on an H200 leaves it: the candidate configs
    (tile sizes as config kwargs, as Inductor's templates pass them) and one launcher, the config that ran."""
    from torch._inductor.runtime.hints import DeviceProperties, HeuristicType
    from torch._inductor.runtime.triton_heuristics import CachingAutotuner

    h200 = DeviceProperties(type="cuda", index=0, multi_processor_count=132, cc=90, major=9, regs_per_multiprocessor=65536,
                            max_threads_per_multi_processor=2048, max_threads_per_block=1024, warp_size=32)
    signature = {"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*fp32", "BM": "constexpr", "BN": "constexpr", "BK": "constexpr"}
    config = lambda tiles: triton.Config(tiles, num_warps=4, num_stages=1)
    autotuner = CachingAutotuner(_one_tile_matmul, {"device": h200, "signature": signature, "constants": {}, "configs": [{}]},
                                 [config(c) for c in candidates], None, [], False, HeuristicType.TEMPLATE,
                                 inductor_meta={"kernel_name": "triton_tem_fused_0"})
    launcher = lambda *args, **kwargs: None
    launcher.config, launcher.shared = config(launched), host_shared
    autotuner.launchers = [launcher]
    return autotuner


@needs_triton
def test_inductors_kernels_are_compiled_again_for_the_card_and_a_run_stops_on_one_that_fits_no_config(monkeypatch, tmp_path):
    """InductorAudit, which an --emulate-gpu run calls after the warm-up and at the end: each new kernel's config
    that ran is compiled for sm86 with Inductor's own compile arguments; one over the card's limit passes where
    another candidate config fits (Inductor tunes among those that compile), and stops the run where none does."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    small, big = {"BM": 16, "BN": 16, "BK": 16}, {"BM": 128, "BN": 128, "BK": 256}
    limit = gpus.PROFILES["rtx3090"].shared_memory_per_block
    kernels = [_inductor_kernel(small, [small], 512), _inductor_kernel(big, [big, small], 131_072), _inductor_kernel(small, [small], 0)]
    stripped = copy.copy(kernels[0].fn)  # as a kernel compiled in a worker process comes back: no Python function
    stripped.fn, kernels[0].fn, kernels[0]._reload_kernel = None, stripped, lambda: _inductor_kernel(small, [small], 512)
    audit = gpus.InductorAudit(gpus.PROFILES["rtx3090"], workers=2)
    verdicts = {v.host_bytes: v for v in audit.check()}
    assert len(verdicts) == 3 and all(v.fits for v in verdicts.values())
    assert 0 < verdicts[512].card_bytes <= limit and verdicts[512].note == ""
    assert verdicts[131_072].card_bytes > limit and verdicts[131_072].note.startswith("the config that ran needs")
    assert verdicts[0].card_bytes is None and verdicts[0].note == "no shared memory on the host"
    summary = audit.summary()
    assert (summary["kernels"], summary["compiled_for_card"], summary["no_shared_memory_on_host"], len(summary["retuned"])) == (3, 2, 1, 1)
    assert "3 kernels, 2 using shared memory compiled for the card, all fit" in audit.line() and "1 would tune to a smaller config" in audit.line()
    assert audit.check() == []  # each kernel once
    hopeless = _inductor_kernel(big, [big], 131_072)
    with pytest.raises(UserError, match=r"--emulate-gpu rtx3090: Inductor's kernel triton_tem_fused_0 \(template\) needs [\d,]+ bytes .* every config it has, over the 101,376"):
        audit.check()
    del kernels, hopeless


def test_the_desktop_fit_check_runs_each_script_as_each_card_and_tabulates_its_run(tmp_path):
    """scripts/check_desktop_fit.py: the command a run gets (compiled, emulated, the record script at its own batch),
    and its table row read back from the run's summary.json and log.txt."""
    from conftest import load_module

    fit = load_module("scripts/check_desktop_fit.py", "check_desktop_fit")
    assert "train_gpt2.py" in fit.training_scripts() and "train_gpt2_speedrun.py" in fit.training_scripts()
    baseline = fit.command("train_gpt2.py", "rtx3090", 20, tmp_path / "r", ["--data", "webmix"])
    assert baseline[1:3] == ["train_gpt2.py", "--data"] and "--emulate-gpu" in baseline and baseline[baseline.index("--compile") + 1] == "1"
    assert "--batch-tokens" in baseline and "--batch-tokens" not in fit.command("train_gpt2_speedrun.py", "rtx4090", 20, tmp_path / "r", [])
    run = tmp_path / "train_gpt2_rtx3090"
    run.mkdir()
    (run / "summary.json").write_text('{"status": "completed", "peak_mem_gib": 12.345, "steps": 20, "micro_batch": 8, '
                                      '"inductor_kernel_audit": {"kernels": 40, "largest": {"name": "k", "kind": "template", "card_bytes": 65536, "host_bytes": 98304}, '
                                      '"retuned": [], "not_compilable": []}}')
    (run / "log.txt").write_text("[0.0s] command: train_gpt2.py\n----- source of kit/loop/train.py -----\n"
                                 '        self.log.print(f"kernel paths: {paths}")\n        self.log.print(f"device: {name}")\n'
                                 "----- end of source -----\n"  # a run's log quotes its sources, print calls and all: not its lines
                                 "[0.1s] device: NVIDIA H200 (sm90) | dtype: bf16 autocast | attention: flex (FlexAttention)\n"
                                 "[0.15s] kernel paths: attention: flex | head: fp8 (torch._scaled_mm)\n"
                                 "[0.2s] shared-memory audit (rtx3090, compiled for sm86): 10 kernel builds fit, the largest needs 8,192 of 101,376 bytes per block\n")
    row = {"script": "train_gpt2.py", "card": "rtx3090", "rc": 0, "wall_s": 61.0, **fit.read_run(run, tmp_path / "absent.txt")}
    assert (row["status"], row["peak_mem_gib"], row["own_kernels_largest_bytes"]) == ("completed", 12.35, 8192)
    assert fit.table([row]).splitlines()[-1] == ("| train_gpt2.py | rtx3090 | completed | 12.35 GiB | 8 | flex (FlexAttention); head: fp8 (torch._scaled_mm) | "
                                                 "65,536 B Inductor (template) of 40 kernels; 8,192 B own Triton | 61 s |")
    args = type("Args", (), {"out": str(tmp_path), "steps": 20, "common": "--data webmix"})()
    kept = fit.run_one("train_gpt2.py", "rtx3090", args)  # called again: the finished run is read, not repeated (no GPU here to repeat it)
    assert (kept["status"], kept["rc"], kept["peak_mem_gib"]) == ("completed", 0, 12.35)


def test_a_step_profile_projects_each_part_by_the_rate_that_bounds_it(tmp_path):
    """scripts/profile_step.py: kernels sorted into parts by name, and each part's time scaled by the host's over
    the card's datasheet rate (bf16 or FP8 tensor throughput, memory bandwidth; FP8 work in bf16 on a 3090)."""
    from conftest import load_module

    profile = load_module("scripts/profile_step.py", "profile_step")
    from types import SimpleNamespace

    # names as an H200 profile of the record script shows them: cuBLASLt's FP8 kernels (nvjet_sm90_qq...) do not say FP8,
    # the op that launched them does; a pointwise kernel that merely fuses a cast for _scaled_mm stays memory-bound
    fp8_name, bf16_name = "nvjet_sm90_qqtst_192x192_128x4_2x1_v_bz_coopB_TNN", "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT"
    events = [SimpleNamespace(name="aten::_scaled_mm", kernels=[SimpleNamespace(name=fp8_name)]),
              SimpleNamespace(name="aten::mm", kernels=[SimpleNamespace(name=bf16_name)])]
    fp8_kernels = profile.fp8_kernel_names(events)
    assert fp8_kernels == {fp8_name}
    kernels = [("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn", 3e6), (bf16_name, 1e6), (fp8_name, 0.5e6), ("sm90_gemm_e4m3e4m3_f32", 0.5e6),
               ("triton_tem_fused__to_copy_flex_attention_3", 2e6), ("triton_red_fused__log_softmax__to_copy_mm_nll_loss_4", 1e6),
               ("triton_tem_fused_mm_7", 1e6), ("triton_poi_fused__fused_rms_norm__scaled_mm__to_copy_clamp_5", 0.5e6),
               ("void at::native::elementwise_kernel", 0.5e6)]
    parts = profile.split_kernel_times(kernels, fp8_kernels)
    assert parts == {"matmul_bf16": 5.0, "matmul_fp8": 1.0, "attention": 2.0, "memory": 2.0}
    assert profile.split_kernel_times(kernels)["matmul_fp8"] == 0.5  # without the ops, only the kernel that says FP8
    h200, rtx4090, rtx3090 = (gpus.PROFILES[k].name for k in ("h200", "rtx4090", "rtx3090"))
    on_4090 = profile.project(parts, h200, rtx4090)
    assert on_4090["matmul_bf16"] == pytest.approx(5 * 989 / 165.2) and on_4090["matmul_fp8"] == pytest.approx(1979 / 330.3)
    assert on_4090["memory"] == pytest.approx(2 * 4.8 / 1.008) and on_4090["total"] == pytest.approx(sum(v for k, v in on_4090.items() if k != "total"))
    assert profile.project(parts, h200, rtx3090)["matmul_fp8"] == pytest.approx(1979 / 71)  # no FP8: in bf16
    table = profile.projection_table(parts, h200, tokens_per_step=100_000, steps=2)
    assert "| h200 (profiled) | 5.000 | 20,000 |" in table and "| rtx3090 |" in table
    record = {"script": "train_gpt2.py", "flags": [], "host": h200, "emulated": "rtx4090", "tokens_per_step": 100_000, "parts_s_per_2_steps": parts}
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "profile.json").write_text(json.dumps(record))
    profile.main(["--table", str(tmp_path / "p" / "profile.json")])  # the projection again from the saved parts
    assert table in (tmp_path / "p" / "profile.md").read_text() and "as rtx4090" in (tmp_path / "p" / "profile.md").read_text()


def test_the_desktop_fit_check_merges_earlier_runs_into_one_table_of_scripts_by_cards(tmp_path):
    """--merge: the latest audited run of each script as each card across folders, oldest first; a later run without the
    Inductor audit does not replace an audited one; a failure is marked and a missing pair says "not run" (exit 1)."""
    from conftest import load_module

    fit = load_module("scripts/check_desktop_fit.py", "check_desktop_fit")

    def row(script, card, peak, largest=None, rc=0):
        audit = {"card_bytes": largest, "kind": "reduction"} if largest else None
        return {"script": script, "card": card, "rc": rc, "status": "completed" if rc == 0 else "failed", "peak_mem_gib": peak,
                "inductor_kernels": 50 if largest else None, "inductor_largest": audit}

    old, new = tmp_path / "2026-01-01_fit", tmp_path / "2026-01-02_fit"
    for folder, rows in ((old, [row("a.py", "rtx3090", 10.0, 16384), row("b.py", "rtx3090", 11.0, 8192), row("a.py", "rtx4090", 9.0)]),
                         (new, [row("a.py", "rtx3090", 12.0, 32768), row("b.py", "rtx3090", 13.0), row("a.py", "rtx4090", 9.5, 4096, rc=1)])):
        folder.mkdir()
        (folder / "desktop_fit.json").write_text(json.dumps(rows))
    merged = fit.merged_rows([old, new])
    assert merged[("a.py", "rtx3090")][0]["peak_mem_gib"] == 12.0 and merged[("a.py", "rtx3090")][1] == new  # the later audited run
    assert merged[("b.py", "rtx3090")][0]["peak_mem_gib"] == 11.0  # the later one had no audit: the earlier stays
    table = fit.merged_table([old, new], ["a.py", "b.py"], ["rtx3090", "rtx4090"]).splitlines()
    assert table[0] == "| script | as rtx3090 | as rtx4090 |"
    assert table[2].startswith(f"| a.py | completed, 12.0 GiB, 32,768 B ([2026-01-02_fit]({new.as_posix()}/)) | **failed**")
    assert table[3].endswith("| not run |")
    assert fit.main(["--merge", str(old), str(new), "--scripts", "a.py,b.py", "--out", str(tmp_path / "out")]) == 1
    assert (tmp_path / "out" / "desktop_fit_all.md").read_text().splitlines()[2] == table[2]
    # a file among the paths (the glob *desktop_fit* names the merged table too) is passed over; a folder without a table is an error
    assert fit.main(["--merge", str(old), str(new), str(tmp_path / "out" / "desktop_fit_all.md"), "--scripts", "a.py,b.py", "--out", str(tmp_path / "out")]) == 1
    with pytest.raises(SystemExit):
        fit.main(["--merge", str(tmp_path / "out"), "--out", str(tmp_path / "out")])
