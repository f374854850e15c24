"""The MLA decode kernel (kit/modeling/mla_decode.py) against PyTorch: the absorbed form equals
decompressed keys and values, the kernel equals the gathered-pages reference over ragged lengths,
shuffled pages, s_q 1 and 2, forced splits and the DeepSeek shape, and generation through it equals
recomputation. On a CPU the kernel runs under Triton's interpreter in a child process (TRITON_INTERPRET
is read when the kernels are defined); tests/test_gpu.py runs it on CUDA in bf16."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import run_interpreted
from kit.modeling import mla_decode

triton = pytest.importorskip("triton")

CASES = '''
import torch
from kit.modeling import mla_decode as M

def paged_case(batch, s_q, heads, latent, rope, lengths, page=64, seed=0, dtype=torch.float32):
    """Random queries and caches; each sequence's pages drawn from a shuffled pool (not in order)."""
    g = torch.Generator().manual_seed(seed)
    pages = [-(-n // page) for n in lengths]
    pool = sum(pages) + 3
    order = torch.randperm(pool, generator=g)
    table = torch.zeros(batch, max(pages), dtype=torch.int32)
    taken = 0
    for b, n in enumerate(pages):
        table[b, :n] = order[taken:taken + n]
        taken += n
    latent_cache = torch.randn(pool, page, latent, generator=g).to(dtype)
    rope_cache = torch.randn(pool, page, rope, generator=g).to(dtype) if rope else None
    q = torch.randn(batch, s_q, heads, latent + rope, generator=g).to(dtype)
    return q, latent_cache, rope_cache, table, torch.tensor(lengths, dtype=torch.int32), 1 / (latent + rope) ** 0.5

def check_kernel(**case):
    splits = case.pop("splits", 0)
    args = paged_case(**case)
    out = M.mla_decode(*args, splits=splits)
    ref = M.reference(*args)
    err = (out.float() - ref.float()).abs().max().item()
    assert err < 1e-4, (case, splits, err)
'''

KERNEL_CASES = {
    "ragged_one_new_token": "check_kernel(batch=3, s_q=1, heads=4, latent=64, rope=16, lengths=[1, 70, 200])",
    "two_new_tokens_causal": "check_kernel(batch=3, s_q=2, heads=4, latent=64, rope=16, lengths=[2, 65, 130])",
    "forced_splits_combine": "check_kernel(batch=2, s_q=1, heads=4, latent=64, rope=16, lengths=[190, 129], splits=3)",
    "splits_past_a_short_sequence": "check_kernel(batch=2, s_q=2, heads=3, latent=64, rope=16, lengths=[3, 300], splits=5)",
    "no_rotary_part": "check_kernel(batch=2, s_q=1, heads=4, latent=32, rope=0, lengths=[64, 100])",
    "latent_not_a_power_of_two": "check_kernel(batch=1, s_q=1, heads=4, latent=192, rope=16, lengths=[80])",
    "deepseek_shape": "check_kernel(batch=1, s_q=1, heads=128, latent=512, rope=64, lengths=[100])",
    "gpt2_mla_shape_two_pages_per_tile_row": "check_kernel(batch=2, s_q=1, heads=12, latent=256, rope=32, lengths=[65, 128], page=128)",
    "generation_equals_recomputation": "check_generation()",
    "smaller_tiles_after_out_of_shared_memory": "check_fallback()",
}

GENERATION = '''
import functools
from kit.modeling.attention import MultiLatentAttention
from kit.modeling.model import GPT, Block, gpt_config
from kit.tools import inference

def check_generation():
    torch.manual_seed(0)
    block = functools.partial(Block, attention=functools.partial(MultiLatentAttention, kv_latent=64, rope_dim=16))
    model = GPT(gpt_config("tiny", block_size=96), block=block).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    prompts = [[50256] + list(range(100, 159)), [50256, 5], [7, 8, 9, 10, 11, 12, 13, 14, 15]]  # the first crosses into a second page
    reference = inference.generate(model, prompts, max_new_tokens=8, cache="none")
    cache = inference.make_cache(model, "paged", 3, 80)
    assert inference.mla_decode_path(cache) == "MLA decode: Triton kernel", inference.mla_decode_path(cache)
    calls = []
    kernel = inference.mla_kernel
    inference.mla_kernel = lambda *a: calls.append(1) or kernel(*a)
    for kind in ("paged", "static"):
        assert inference.generate(model, prompts, max_new_tokens=8, cache=kind) == reference, kind
    assert len(calls) > 2 * 8 * model.config.n_layer, len(calls)
'''

FALLBACK = '''
import warnings
import triton

def check_fallback():
    """A launch that runs out of shared memory is retried with fallback_tiles, and the shape keeps them."""
    launch, tried = M.launch_partial, []
    def cramped(args, config, *rest):
        tried.append(dict(config))
        if config["BLOCK_M"] > 32:
            raise triton.runtime.errors.OutOfResources(300000, 232448, "shared memory")
        return launch(args, config, *rest)
    M.launch_partial = cramped
    try:
        args = paged_case(batch=2, s_q=1, heads=40, latent=64, rope=16, lengths=[70, 9])  # 64-row blocks planned
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = M.mla_decode(*args)
        assert (out - M.reference(*args)).abs().max().item() < 1e-4
        assert [c["BLOCK_M"] for c in tried] == [64, 32] and "falling back" in str(caught[0].message), (tried, caught)
        M.mla_decode(*args)
        assert tried[-1]["BLOCK_M"] == 32 and len(tried) == 3  # remembered for the shape
    finally:
        M.launch_partial = launch
'''

@pytest.fixture(scope="module")
def interpreted():
    """{case: "ok" or its traceback}, from one child process under Triton's CPU interpreter."""
    return run_interpreted(CASES + GENERATION + FALLBACK, KERNEL_CASES)


def test_kernel_equals_the_reference_in_the_interpreter(interpreted):
    """Every case of KERNEL_CASES in one test: the interpreter's child process runs once per worker that needs it."""
    failed = {case: interpreted[case] for case in KERNEL_CASES if interpreted[case] != "ok"}
    assert not failed, failed


def test_reference_equals_attention_over_decompressed_keys_and_values():
    """The absorbed form: heads scoring (W_k,h^T q_h) . c + q_r . k_r and mixing c, then W_v,h,
    equal per-head SDPA over keys [W_k,h c, k_r] and values W_v,h c (what MLA trains with)."""
    torch.manual_seed(0)
    batch, s_q, heads, head_dim, latent, rope, length = 2, 2, 3, 8, 16, 16, 70
    w_k, w_v = torch.randn(heads, head_dim, latent), torch.randn(heads, head_dim, latent)
    c, k_r = torch.randn(batch, length, latent), torch.randn(batch, length, rope)
    q_content, q_rope = torch.randn(batch, s_q, heads, head_dim), torch.randn(batch, s_q, heads, rope)
    scale = 1 / math.sqrt(head_dim + rope)
    keys = torch.cat([torch.einsum("hdl,btl->bhtd", w_k, c), k_r[:, None].expand(batch, heads, length, rope)], dim=-1)
    values = torch.einsum("hdl,btl->bhtd", w_v, c)
    queries = torch.cat([q_content, q_rope], dim=-1).transpose(1, 2)
    causal = torch.arange(length)[None, :] <= (length - s_q + torch.arange(s_q))[:, None]
    expected = F.scaled_dot_product_attention(queries, keys, values, attn_mask=causal, scale=scale).transpose(1, 2)

    table = torch.tensor([[0, 1], [3, 2]])  # two 64-slot pages each, the second sequence's in reverse order
    latent_cache, rope_cache = torch.zeros(4, 64, latent), torch.zeros(4, 64, rope)
    for b in range(batch):
        for t in range(length):
            latent_cache[table[b, t // 64], t % 64] = c[b, t]
            rope_cache[table[b, t // 64], t % 64] = k_r[b, t]
    absorbed = torch.cat([torch.einsum("bshd,hdl->bshl", q_content, w_k), q_rope], dim=-1)
    mixed = mla_decode.reference(absorbed, latent_cache, rope_cache, table, torch.tensor([length, length]), scale)
    torch.testing.assert_close(torch.einsum("bshl,hdl->bshd", mixed, w_v), expected, atol=1e-4, rtol=1e-4)


def test_bad_shapes_are_refused_in_one_line():
    q = torch.zeros(1, 1, 2, 64 + 16)
    with pytest.raises(ValueError, match="query has 80 numbers per head, the cache 64 \\+ 8"):
        mla_decode.check_shapes(q, torch.zeros(2, 64, 64), torch.zeros(2, 64, 8), torch.zeros(1, 1, dtype=torch.int32), torch.ones(1))
    with pytest.raises(ValueError, match="page size 48"):
        mla_decode.check_shapes(q, torch.zeros(2, 48, 64), torch.zeros(2, 48, 16), torch.zeros(1, 2, dtype=torch.int32), torch.ones(1))
    assert "CUDA" in mla_decode.why_not("cpu") and "latent size 100" in mla_decode.why_not("cuda", latent_dim=100) or triton is None


def test_flops_and_bytes_follow_flashmla_s_count():
    """b*h*s_q*2*s_k*(d_qk + d_v), and the bytes of queries, the cache and the output."""
    assert mla_decode.decode_flops(2, 1, 128, 1000, 512, 64) == 2 * 128 * 2 * 1000 * (576 + 512)
    assert mla_decode.decode_bytes(2, 1, 128, 1000, 512, 64) == 2 * 2 * (128 * 576 + 1000 * 576 + 128 * 512)


def test_tiles_fit_desktop_shared_memory_and_split_count_fills_the_gpu():
    """64-row blocks only where shared memory is large; the splits give ~2 programs per SM with >= 4 tiles each."""
    desktop, hopper = mla_decode.tile_config(128, 512, small_shared_memory=True), mla_decode.tile_config(128, 512)
    assert (desktop["BLOCK_M"], desktop["BLOCK_DV"], desktop["num_stages"]) == (32, 256, 1)
    assert (hopper["BLOCK_M"], hopper["BLOCK_DV"], hopper["num_stages"]) == (64, 512, 1)
    assert mla_decode.tile_config(12, 256)["num_stages"] == 2 and mla_decode.tile_config(12, 256, small_shared_memory=True)["num_stages"] == 1
    assert mla_decode.tile_config(12, 256, element_size=4)["BLOCK_DV"] == 128
    assert mla_decode.tile_config(12, 192)["BLOCK_DV"] == 64 and mla_decode.tile_config(12, 32)["BLOCK_DV"] == 32
    assert mla_decode.split_count(programs=2, tiles=512, device="cpu") == 4  # 2 x 4 SMs of the interpreter / 2
    assert mla_decode.split_count(programs=1, tiles=6, device="cpu") == 1  # too few tiles to split


def test_generation_says_which_mla_decode_path_runs_and_refuses_the_kernel_where_it_cannot():
    import functools

    from kit.modeling.attention import MultiLatentAttention
    from kit.modeling.model import GPT, Block, gpt_config
    from kit.tools import inference

    block = functools.partial(Block, attention=functools.partial(MultiLatentAttention, kv_latent=64, rope_dim=16))
    model = GPT(gpt_config("tiny", block_size=64), block=block).eval()
    assert inference.model_mla_decode_path(model, "paged") == "MLA decode: PyTorch (the kernel needs a CUDA GPU, not cpu)"
    assert inference.model_mla_decode_path(model, "none") == "" and inference.model_mla_decode_path(GPT(gpt_config("tiny")), "paged") == ""
    inference.MLA_DECODE["path"] = "triton"
    try:
        with pytest.raises(RuntimeError, match="MLA decode kernel cannot run here: the kernel needs a CUDA GPU"):
            inference.generate(model, [[1, 2, 3]], max_new_tokens=2, cache="paged")
    finally:
        inference.MLA_DECODE["path"] = "auto"
