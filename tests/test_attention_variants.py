"""GQA and MLA: causal, and able to express plain multi-head attention."""

import functools

import pytest
import torch

from kit.modeling.attention import GroupedQueryAttention, MultiLatentAttention
from kit.modeling.model import GPT, Block, CausalSelfAttention, gpt_config

CONFIG = gpt_config("tiny", block_size=48, n_head=4)  # width 64, 4 heads of 16


def variants(attn):
    cfg = gpt_config("tiny", block_size=48, n_head=4, attn=attn)
    return {
        "gqa": GroupedQueryAttention(cfg, n_kv_head=2),
        "mla": MultiLatentAttention(cfg, kv_latent=24, rope_dim=8),
    }


@pytest.mark.parametrize("attn", ["manual", "sdpa"])
@pytest.mark.parametrize("name", ["gqa", "mla"])
def test_variants_are_causal(name, attn):
    torch.manual_seed(0)
    layer = variants(attn)[name]
    x = torch.randn(2, 48, 64)
    t = 20
    changed = x.clone()
    changed[:, t + 1:] = torch.randn(2, 48 - t - 1, 64)
    with torch.no_grad():
        a, b = layer(x), layer(changed)
    torch.testing.assert_close(a[:, :t + 1], b[:, :t + 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])


def mha_reference():
    torch.manual_seed(1)
    mha = CausalSelfAttention(CONFIG)
    with torch.no_grad():
        for p in mha.parameters():
            p.normal_(0, 0.1)
    return mha


def test_gqa_with_as_many_kv_heads_as_query_heads_is_mha():
    mha = mha_reference()
    gqa = GroupedQueryAttention(CONFIG, n_kv_head=4)
    d = 64
    with torch.no_grad():
        gqa.q.weight.copy_(mha.c_attn.weight[:d]), gqa.q.bias.copy_(mha.c_attn.bias[:d])
        gqa.kv.weight.copy_(mha.c_attn.weight[d:]), gqa.kv.bias.copy_(mha.c_attn.bias[d:])
        gqa.c_proj.load_state_dict(mha.c_proj.state_dict())
    x = torch.randn(2, 48, 64)
    torch.testing.assert_close(gqa(x), mha(x), atol=1e-5, rtol=1e-5)


def test_mla_at_full_rank_without_rotary_part_is_mha():
    """Latent = width, W_down = identity, W_up = MHA's key and value weights (MHA's k/v biases zero)."""
    mha = mha_reference()
    d = 64
    with torch.no_grad():
        mha.c_attn.bias[d:].zero_()
    mla = MultiLatentAttention(CONFIG, kv_latent=d, rope_dim=0)
    with torch.no_grad():
        mla.q.weight.copy_(mha.c_attn.weight[:d]), mla.q.bias.copy_(mha.c_attn.bias[:d])
        mla.kv_down.weight.copy_(torch.eye(d)), mla.kv_down.bias.zero_()
        mla.k_up.weight.copy_(mha.c_attn.weight[d:2 * d]), mla.v_up.weight.copy_(mha.c_attn.weight[2 * d:])
        mla.c_proj.load_state_dict(mha.c_proj.state_dict())
    x = torch.randn(2, 48, 64)
    torch.testing.assert_close(mla(x), mha(x), atol=1e-5, rtol=1e-5)


def test_cache_sizes_per_token():
    v = variants("sdpa")
    assert v["gqa"].cache_numbers_per_token() == 2 * 2 * 16  # MHA would hold 2 x 4 x 16 = 128
    assert v["mla"].cache_numbers_per_token() == 24 + 8


@pytest.mark.parametrize("name", ["gqa", "mla"])
def test_variant_plugs_into_the_gpt(name):
    attention = {"gqa": functools.partial(GroupedQueryAttention, n_kv_head=2),
                 "mla": functools.partial(MultiLatentAttention, kv_latent=24, rope_dim=8)}[name]
    model = GPT(CONFIG, block=functools.partial(Block, attention=attention))
    x = torch.randint(0, 50257, (2, 48))
    loss = model(x, x)
    loss.backward()
    assert torch.isfinite(loss) and model.h[0].attn.c_proj.weight.grad is not None
