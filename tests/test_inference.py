"""Inference: KV caches (contiguous and paged) agree with full recomputation; the block pool
never leaks or double-books; sampling keeps to its top-k / top-p sets."""

import random
import re

import pytest
import torch

from kit.tools.inference import BlockAllocator, ContiguousKVCache, PagedKVCache, forward_cached, generate, sample
from kit.modeling.model import GPT, gpt_config


def tiny_model():
    torch.manual_seed(0)
    model = GPT(gpt_config("tiny", block_size=64)).eval()
    with torch.no_grad():  # spread the logits so greedy choices are well separated
        model.lm_head.weight.mul_(20)
    return model


PROMPTS = [[50256, 11, 22, 33, 44], [50256, 5], [7, 8, 9, 10, 11, 12, 13, 14, 15]]


@pytest.mark.parametrize("cache", ["paged", "contiguous", "static"])
def test_greedy_generation_with_a_cache_equals_recomputation(cache):
    model = tiny_model()
    reference = generate(model, PROMPTS, max_new_tokens=12, cache="none")
    assert generate(model, PROMPTS, max_new_tokens=12, cache=cache, block_size=4) == reference
    assert len({tuple(r) for r in reference}) > 1 and all(len(r) == 12 for r in reference)


def test_paged_and_contiguous_caches_give_the_same_logits():
    model = tiny_model()
    cfg = model.config
    paged = PagedKVCache(cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, num_blocks=16, block_size=4)
    contiguous = ContiguousKVCache(cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, max_batch=2, max_len=32)
    idx = torch.randint(0, 50257, (2, 7))
    outs = []
    for kv in (paged, contiguous):
        sids = [kv.add_sequence(), kv.add_sequence()]
        first = forward_cached(model, idx, kv, sids)
        second = forward_cached(model, idx[:, :3], kv, sids)  # three more tokens each, across a block boundary
        outs.append((first, second))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    full = model(torch.cat([idx, idx[:, :3]], dim=1))  # and both equal one full pass
    torch.testing.assert_close(outs[0][1], full[:, 7:], atol=1e-4, rtol=1e-4)


def test_a_stopped_sequence_returns_its_blocks_and_the_others_go_on():
    model = tiny_model()
    reference = generate(model, PROMPTS, max_new_tokens=10, cache="none")
    stop = reference[1][2]  # the third token sequence 1 generates
    outputs = generate(model, PROMPTS, max_new_tokens=10, cache="paged", block_size=4, stop_token=stop)
    assert outputs[1] == reference[1][: reference[1].index(stop) + 1]
    for out, ref in zip(outputs, reference):
        assert out == ref[: len(out)]
    assert any(len(o) == 10 for o in outputs)
    assert generate(model, PROMPTS, max_new_tokens=10, cache="static", stop_token=stop) == outputs  # its row decodes on, unread


def test_static_decoding_equals_the_full_pass_and_leaves_finished_rows_alone():
    from kit.tools.inference import StaticDecoder, make_cache

    model = tiny_model()
    idx = torch.randint(0, 50257, (2, 10))
    cache = make_cache(model, "static", sequences=2, max_len=10)
    sids = [cache.add_sequence(), cache.add_sequence()]
    forward_cached(model, idx[:, :6], cache, sids)
    decoder = StaticDecoder(model, cache, graph=False)
    steps = [decoder(idx[:, t].tolist(), sids) for t in range(6, 9)]
    with torch.no_grad():
        full = model(idx)
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 6:9], atol=1e-4, rtol=1e-4)
    kept = cache.k[:, 0, :, :9].clone()
    decoder([int(idx[1, 9])], [1])  # row 0 finished: computed at fixed shape, but its slots and length stay
    assert torch.equal(cache.k[:, 0, :, :9], kept) and cache.lengths == {0: 9, 1: 10}
    with pytest.raises(RuntimeError, match="pass the cache's 10 slots"):
        decoder([1], [1])


def test_block_pool_never_leaks_or_overlaps():
    rng = random.Random(0)
    cache = PagedKVCache(n_layer=1, n_head=1, head_dim=2, num_blocks=40, block_size=4)
    live = {}
    for _ in range(500):
        op = rng.random()
        if op < 0.3 or not live:
            sid = cache.add_sequence()
            live[sid] = 0
        elif op < 0.8:
            sid = rng.choice(list(live))
            n = rng.randint(1, 9)
            try:
                cache.reserve([sid], n)
            except RuntimeError:  # the pool is exhausted: a clean error, nothing half-allocated that leaks
                pass
            else:
                cache.advance([sid], n)
                live[sid] += n
        else:
            sid = rng.choice(list(live))
            cache.free_sequence(sid)
            del live[sid]
        owned = [b for sid in live for b in cache.tables[sid]]
        assert len(owned) == len(set(owned))  # no block in two sequences
        assert set(owned) == cache.allocator.used and len(owned) + len(cache.allocator.free) == 40
        for sid, length in live.items():
            assert len(cache.tables[sid]) * 4 >= length > (len(cache.tables[sid]) - 1) * 4 or length == len(cache.tables[sid]) == 0
    for sid in list(live):
        cache.free_sequence(sid)
    assert not cache.allocator.used and len(cache.allocator.free) == 40
    with pytest.raises(RuntimeError, match="released twice"):
        BlockAllocator(2).release([0])


def test_sampling_keeps_to_top_k_and_top_p():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert sample(logits, temperature=0).unique().tolist() == [0]
    assert set(sample(logits, 1.0, top_k=2, generator=g).unique().tolist()) == {0, 1}
    p = logits[0].softmax(-1)  # 0.64, 0.24, 0.09, ...: top_p 0.8 keeps the first two (0.64 < 0.8 <= 0.88)
    assert p[0] < 0.8 <= p[:2].sum()
    assert set(sample(logits, 1.0, top_p=0.8, generator=g).unique().tolist()) == {0, 1}
    assert set(sample(logits, 1.0, generator=g).unique().tolist()) == {0, 1, 2, 3, 4}


def test_generation_refuses_more_positions_than_the_model_has():
    with pytest.raises(ValueError, match="more than the model's 64 positions"):
        generate(tiny_model(), [[1] * 60], max_new_tokens=10)


# ----- from a run directory: generation and Hugging Face export -----

@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory):
    import train_gpt2
    from conftest import FAST
    from kit.loop.train import main

    run = tmp_path_factory.mktemp("run")
    flags = [*FAST, "--data", "synthetic", "--max-steps", "2", "--val-every", "2", "--export", "1", "--out-dir", str(run)]
    assert main(train_gpt2.RECIPE, flags) == 0
    return run


def load_script(name):
    from conftest import load_module

    return load_module(f"scripts/{name}.py", name)


def test_generate_cli_streams_and_the_cache_changes_nothing(baseline_run, capsys):
    generate_cli = load_script("generate")
    outputs = {}
    for cache in ("paged", "static", "none"):
        line = generate_cli.main([str(baseline_run), "--prompt", "The city", "--max-new-tokens", "8", "--temperature", "0",
                                  "--cache", cache, "--device", "cpu"])
        outputs[cache] = capsys.readouterr().out
        assert re.match(rf"\d+ tokens in [\d.]+ s \([\d.]+ tokens/s, cache: {cache}, device: cpu\)$", line), line
    assert outputs["paged"] == outputs["static"] == outputs["none"] and outputs["paged"].startswith("The city")
    line = generate_cli.main([str(baseline_run), "--prompt", "A", "--prompt", "Longer prompt here", "--max-new-tokens", "4", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert printed.count("--- ") == 2 and "cache: paged" in line  # auto, the default, is paged off CUDA


def test_auto_cache_takes_the_cuda_graph_only_where_it_applies(baseline_run):
    from kit.tools.runs import load_model

    from kit.tools.inference import auto_cache

    model, _, _ = load_model(str(baseline_run), "cpu")
    assert (auto_cache(model, "cuda"), auto_cache(model, "cuda:1"), auto_cache(model, "cpu")) == ("static", "static", "paged")
    assert auto_cache(modern_model(1), "cuda") == "paged"  # the speedrun's model has no static decoder


def test_speedrun_run_generates_with_its_cache_and_stays_in_the_kit_format(tmp_path, capsys):
    import train_gpt2_speedrun as speedrun
    from conftest import FAST
    from kit.loop.train import main

    flags = [*FAST, "--seq-len", "128", "--batch-tokens", "256", "--data", "synthetic", "--max-steps", "1", "--val-every", "1",
             "--export", "1", "--out-dir", str(tmp_path)]
    assert main(speedrun.RECIPE, flags) == 0
    capsys.readouterr()
    generate_cli = load_script("generate")
    printed = {}
    for cache in ("paged", "none"):
        line = generate_cli.main([str(tmp_path), "--prompt", "Hi there", "--max-new-tokens", "6", "--temperature", "0",
                                  "--cache", cache, "--device", "cpu"])
        assert f"cache: {cache}" in line
        printed[cache] = capsys.readouterr().out
    assert printed["paged"] == printed["none"]
    line = generate_cli.main([str(tmp_path), "--prompt", "Hi there", "--max-new-tokens", "6", "--temperature", "0",
                              "--cache", "static", "--device", "cpu"])
    assert "cache: contiguous" in line and "using the contiguous cache" in capsys.readouterr().err
    with pytest.raises(Exception, match="kit format"):
        load_script("export_hf").main([str(tmp_path), "--out", str(tmp_path / "hf")])


def test_generate_falls_back_without_a_cache_for_unsupported_models(tmp_path, capsys):
    import train_gpt2_long_context as long_context
    from kit.loop.train import main

    flags = ["--model-size", "tiny", "--device", "cpu", "--seq-len", "128", "--batch-tokens", "256", "--val-tokens", "256",
             "--progress", "lines", "--data", "synthetic", "--max-steps", "1", "--val-every", "1", "--out-dir", str(tmp_path)]
    assert main(long_context.RECIPE, flags) == 0
    capsys.readouterr()
    line = load_script("generate").main([str(tmp_path), "--prompt", "Hi", "--max-new-tokens", "3", "--device", "cpu"])
    assert "cache: none" in line and "generating without a cache" in capsys.readouterr().err


def test_hugging_face_export_loads_in_transformers_with_the_same_logits(baseline_run, tmp_path):
    from safetensors.torch import load_file

    from kit.tools.runs import load_model

    export_hf = load_script("export_hf")
    export_hf.main([str(baseline_run), "--out", str(tmp_path / "hf")])
    model, _, _ = load_model(baseline_run)
    tensors = load_file(tmp_path / "hf" / "model.safetensors")
    c = model.config
    assert tensors["transformer.h.0.attn.c_attn.weight"].shape == (c.n_embd, 3 * c.n_embd)  # Conv1D layout
    assert tensors["transformer.wte.weight"].shape == (c.vocab_size, c.n_embd) and "lm_head.weight" not in tensors
    assert len(tensors) == 2 + 12 * c.n_layer + 2
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    idx = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx), atol=1e-4, rtol=1e-4)
    from kit.data.tokenizer import gpt2_encoding

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    text = "Hello world, the speedrun's tokenizer.<|endoftext|>"
    assert tokenizer(text)["input_ids"] == gpt2_encoding().encode(text, allowed_special="all")
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text and tokenizer.eos_token_id == 50256


# ----- GQA and MLA caches -----

def variant_model(kind):
    import functools

    from kit.modeling.attention import GroupedQueryAttention, MultiLatentAttention
    from kit.modeling.model import Block

    attention = {"gqa": functools.partial(GroupedQueryAttention, n_kv_head=1),
                 "mla": functools.partial(MultiLatentAttention, kv_latent=16, rope_dim=8)}[kind]
    torch.manual_seed(0)
    model = GPT(gpt_config("tiny", block_size=64), block=functools.partial(Block, attention=attention)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    return model


@pytest.mark.parametrize("kind", ["gqa", "mla"])
@pytest.mark.parametrize("cache", ["paged", "contiguous", "static"])
def test_gqa_and_mla_caches_generate_what_recomputation_generates(kind, cache):
    model = variant_model(kind)
    reference = generate(model, PROMPTS, max_new_tokens=10, cache="none")
    assert generate(model, PROMPTS, max_new_tokens=10, cache=cache, block_size=4) == reference


def test_mla_absorbed_decoding_equals_the_full_pass():
    from kit.tools.inference import make_cache

    model = variant_model("mla")
    idx = torch.randint(0, 50257, (2, 12))
    cache = make_cache(model, "paged", sequences=2, max_len=12, block_size=4)
    sids = [cache.add_sequence(), cache.add_sequence()]
    prefill = forward_cached(model, idx[:, :7], cache, sids)
    steps = [forward_cached(model, idx[:, t:t + 1], cache, sids) for t in range(7, 12)]  # one token at a time
    with torch.no_grad():
        full = model(idx)
    torch.testing.assert_close(torch.cat([prefill, *steps], dim=1), full, atol=1e-4, rtol=1e-4)
    assert cache.k.shape[2:] == (1, 4, 16) and cache.v.shape[2:] == (1, 4, 8)  # one latent of 16 and one rotary key of 8 per token


def test_cache_bytes_per_token_mha_gqa_mla():
    from kit.tools.inference import make_cache

    caches = {kind: make_cache(model, "paged", 1, 8) for kind, model in
              (("mha", tiny_model()), ("gqa", variant_model("gqa")), ("mla", variant_model("mla")))}
    layers, width = 2, 64  # tiny: 2 layers, 2 heads of 32, fp32
    assert caches["mha"].bytes_per_token() == 2 * layers * width * 4
    assert caches["gqa"].bytes_per_token() == 2 * layers * 32 * 4  # one key/value head of 32
    assert caches["mla"].bytes_per_token() == layers * (16 + 8) * 4


# ----- the speedrun's model: rotary, windows, documents, value embeddings, output gates, U-net -----

def modern_model(window_blocks, **parts):
    from kit.modeling.modern import MODERN_SIZES, ModernConfig, ModernGPT

    torch.manual_seed(0)
    model = ModernGPT(ModernConfig(**{**MODERN_SIZES["tiny"], "n_layer": 4}, max_seq_len=512, attn="dense", value_embeds=1,
                                   no_attn_layers=(2,), attn_gate_dims=8, bigram_buckets=97, **parts)).eval()
    with torch.no_grad():  # the zero-initialised projections and head would hide every dependency
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.set_window(window_blocks)
    return model


@pytest.mark.parametrize("window_blocks", [1, 3])
@pytest.mark.parametrize("cache", ["paged", "contiguous"])
@pytest.mark.parametrize("parts", [{}, {"no_mlp_layers": (0, 2), "bigram_sign_rows": 16}])  # layer 2 then has neither attention nor MLP
def test_speedrun_model_cache_generates_what_recomputation_generates(window_blocks, cache, parts):
    from kit.modeling.modern import EOT

    g = torch.Generator().manual_seed(1)
    long_prompt = torch.randint(0, 50000, (150,), generator=g).tolist()
    long_prompt[40] = EOT  # a document boundary inside the prompt
    prompts = [long_prompt, [EOT, 5, 6, 7]]
    model = modern_model(window_blocks, **parts)
    reference = generate(model, prompts, max_new_tokens=20, cache="none")  # crosses from block 1 into block 2 (128 tokens each)
    assert generate(model, prompts, max_new_tokens=20, cache=cache, block_size=16) == reference


def test_static_decoding_refuses_the_speedrun_model():
    with pytest.raises(ValueError, match="static decoding serves kit.modeling.model.GPT"):
        generate(modern_model(1), [[5, 6, 7]], max_new_tokens=2, cache="static")


def test_speedrun_model_window_shapes_what_is_generated():
    from kit.modeling.modern import EOT

    long_prompt = torch.randint(0, 50000, (150,), generator=torch.Generator().manual_seed(1)).tolist()
    long_prompt[40] = EOT
    narrow, wide = (generate(modern_model(w), [long_prompt], max_new_tokens=10, cache="paged")[0] for w in (1, 3))
    assert narrow != wide and len(set(narrow)) > 5


def test_inference_benchmark_runs_and_its_validation_losses_agree(tmp_path, capsys):
    import json

    bench = load_script("bench_inference")
    assert bench.main(["--model-size", "tiny", "--device", "cpu", "--batches", "1,2", "--new-tokens", "4", "--prompt-len", "8",
                       "--gqa-heads", "1", "--mla-latent", "16", "--eval-tokens", "128", "--eval-seq-len", "32",
                       "--eval-speed-tokens", "256", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "bench_inference.json").read_text())["rows"]
    generation = [r for r in rows if r["part"] == "generation"]
    assert len(generation) == 8  # 2 batches x none, contiguous, paged, static
    for r in generation:  # the median of 3 timed runs, inside their range
        assert len(r["seconds"]) == 3 and r["tokens_per_s_range"][0] <= r["tokens_per_s"] <= r["tokens_per_s_range"][1]
    validation = next(r for r in rows if r["part"] == "validation")
    assert validation["cached_loss"] == pytest.approx(validation["teacher_forced_loss"], abs=1e-4)
    speed = [r for r in rows if r["part"] == "validation_speed"]
    assert [r["setting"] for r in speed] == ["fp32, eager"] and speed[0]["tokens"] == 256 and speed[0]["batch"] == 8 and speed[0]["tokens_per_s"] > 0  # CPU: the plain loop only
    assert "validation pass" in (tmp_path / "bench_inference.md").read_text()
    from kit.modeling.model import gpt_config

    c = gpt_config("tiny")
    memory = {r["attention"]: r["bytes_per_token"] for r in rows if r["part"] == "cache_memory"}
    assert memory["mha"] == 2 * c.n_layer * c.n_embd * 4  # keys and values of every layer, fp32 on the CPU: the measured model's shape
    out = capsys.readouterr().out
    assert out.startswith("model: random weights, tiny") and "generation batch   1 cache none      : warming up" in out  # progress as it goes
