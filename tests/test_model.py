"""The GPT-2 model parts: attention equivalence, causality, initial loss, FLOP count, schedule."""

import math

import pytest
import torch

from kit.core.config import TrainConfig
from kit.modeling.flops import flops_per_token, mfu
from kit.modeling.model import GPT, MODEL_SIZES, flex_causal_attention, gpt_config, manual_causal_attention, sdpa_causal_attention
from kit.modeling.optim import adamw, scaled_warmup_steps, warmup_cosine


def random_qkv(B=2, H=3, T=17, D=8, device="cpu", dtype=torch.float32):
    g = torch.Generator(device="cpu").manual_seed(0)
    return [torch.randn(B, H, T, D, generator=g).to(device=device, dtype=dtype) for _ in range(3)]


ATTENTIONS = {"manual": manual_causal_attention, "sdpa": sdpa_causal_attention, "flex": flex_causal_attention}


@pytest.mark.parametrize("attn", ["sdpa", "flex"])
def test_attention_kernels_equal_the_manual_one(attn):
    q, k, v = random_qkv(T=160)  # flex works in blocks of 128: T crosses one block edge
    torch.testing.assert_close(ATTENTIONS[attn](q, k, v), manual_causal_attention(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ["manual", "sdpa", "flex"])
def test_model_is_causal(attn):
    torch.manual_seed(0)
    model = GPT(gpt_config("tiny", block_size=32, attn=attn)).eval()
    x = torch.randint(0, 50257, (2, 32))
    t = 13
    changed = x.clone()
    changed[:, t + 1 :] = torch.randint(0, 50257, (2, 32 - t - 1))
    with torch.no_grad():
        a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])  # the change does reach later positions


@pytest.mark.parametrize("attn", ["manual", "sdpa", "flex"])
def test_attention_kernels_are_causal(attn):
    fn = ATTENTIONS[attn]
    q, k, v = random_qkv()
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 9:] += 1.0
    v2[:, :, 9:] -= 2.0
    torch.testing.assert_close(fn(q, k, v)[:, :, :9], fn(q, k2, v2)[:, :, :9])


def test_initial_loss_of_124m_is_near_uniform():
    """ln(V) plus the spread of the initial logits: the final LayerNorm gives unit-variance
    features, the tied head has std 0.02, so logits have variance s2 = 768 * 0.02**2 and the
    expected loss is about ln(V) + s2 / 2 = 10.825 + 0.154."""
    torch.manual_seed(0)
    model = GPT(gpt_config("124m", block_size=64))
    x = torch.randint(0, 50257, (2, 64))
    y = torch.randint(0, 50257, (2, 64))
    with torch.no_grad():
        loss = model(x, y).item()
    assert loss == pytest.approx(math.log(50257) + 768 * 0.02**2 / 2, abs=0.05)


def test_124m_has_gpt2_small_parameter_count():
    model = GPT(gpt_config("124m"))
    unique = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert unique == 124_439_808  # GPT-2 small with vocab 50257 and 1024 positions
    assert model.lm_head.weight is model.wte.weight


def test_loss_matches_direct_cross_entropy():
    torch.manual_seed(0)
    model = GPT(gpt_config("tiny", block_size=16))
    x, y = torch.randint(0, 50257, (2, 16)), torch.randint(0, 50257, (2, 16))
    logits = model(x)
    expected = -torch.log_softmax(logits.double(), -1).gather(-1, y.unsqueeze(-1)).mean()
    torch.testing.assert_close(model(x, y).double(), expected, atol=1e-5, rtol=1e-5)


def test_flops_per_token_by_hand_for_tiny():
    n_layer, _, d = MODEL_SIZES["tiny"]
    T, V = 128, 50257
    model = GPT(gpt_config("tiny", block_size=T))
    per_layer_weights = 3 * d * d + d * d + 4 * d * d + 4 * d * d  # qkv, attention proj, MLP up, MLP down
    by_hand = 6 * (n_layer * per_layer_weights + d * V) + 12 * n_layer * d * T
    assert flops_per_token(model, n_layer, d, T) == by_hand


def test_mfu_of_a_torchrun_run_is_against_every_device():
    """A torchrun run's tokens/s counts every rank, so its MFU is against all the GPUs' peak."""
    assert mfu(1000, 10**9, 1e12) == pytest.approx(1.0)
    assert mfu(1000, 10**9, 1e12, devices=2) == pytest.approx(0.5)
    assert mfu(1000, 10**9, None, devices=2) is None


def test_weight_decay_only_on_matrices():
    model = GPT(gpt_config("tiny", block_size=16))
    opt = adamw(model, 6e-4, (0.9, 0.95), 1e-8, 0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len({id(p) for p in model.parameters()})


def test_schedule_at_reference_length_and_scaled():
    cfg = TrainConfig()
    assert scaled_warmup_steps(cfg) == 700
    assert warmup_cosine(0, cfg) == pytest.approx(1 / 700)
    assert warmup_cosine(699, cfg) == pytest.approx(1.0)
    assert warmup_cosine(4768, cfg) == pytest.approx(0.1)
    short = TrainConfig(max_steps=333)
    assert scaled_warmup_steps(short) == round(700 * 333 / 4768)
    mid = (scaled_warmup_steps(short) + 333) / 2
    assert warmup_cosine(int(mid), short) == pytest.approx(0.55, abs=0.01)  # half way down the cosine
    assert warmup_cosine(333, short) == pytest.approx(0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("attn", ["sdpa", "flex"])
def test_attention_kernels_equal_the_manual_one_on_gpu_bf16(attn):
    q, k, v = random_qkv(B=4, H=12, T=1024, D=64, device="cuda", dtype=torch.bfloat16)
    out, ref = ATTENTIONS[attn](q, k, v).float(), manual_causal_attention(q, k, v).float()
    assert ((out - ref).norm() / ref.norm()).item() < 1e-2
