"""Model parts of the modern GPT-2 speedrun recipe (the public modded-nanogpt line of records).

What differs from kit.modeling.model's GPT-2:
  - RMS norm without gains; QK-norm; rotary positions instead of learned ones;
  - ReLU^2 MLP; zero-initialised output projections;
  - value embeddings: extra token embeddings mixed into the attention values of the first and
    last layers;
  - U-net skips: outputs of the first half of the layers are added, with learned weights, to
    the inputs of the second half (or only listed pairs: skip_pairs); every block also mixes in
    the embedding x0;
  - attention within documents only (token 50256 starts a document) and within a sliding
    window counted in blocks of 128 tokens: long windows in some layers, half-length in the
    others, the length set from outside (it grows during training); optionally YaRN at each change
    of the window (rotary frequencies and attention scale: yarn_state);
  - untied output head with logit soft-capping;
  - optionally, a bigram hash embedding: each (previous token, token) pair hashed into one of
    `bigram_buckets` rows of an extra, zero-initialised embedding table, added with a learned
    weight to every block's input (the public record of 2026-01-19 found it saves ~9% of steps).

Attention runs through FlexAttention with a block-sparse mask built from the batch itself
(fully masked blocks are skipped), or through a dense reference path (`attn="dense"`: the
same mask, materialised, given to SDPA) that the tests and CPU runs use.
"""

import json
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from kit.core import gpus
from kit.modeling import triton_mlp
from kit.modeling.fp8 import FP8ForwardLinear, FP8Head, FP8SoftcappedHeadLoss
from kit.modeling.losses import CAP_FORMS, softcap, softcapped_cross_entropy
from kit.modeling.model import raise_recompile_limit

EOT = 50256
BLOCK = 128  # tokens per attention block: windows and the block-sparse mask count in these
MAX_WINDOW_BLOCKS = 14  # the long window's final length: 14 blocks = 1792 tokens


@dataclass
class ModernConfig:
    vocab_size: int = 50304  # 50257 padded to a multiple of 128 for faster matmuls
    n_layer: int = 12
    n_head: int = 6
    head_dim: int = 128
    n_embd: int = 768
    max_seq_len: int = 16384
    value_embeds: int = 3
    attn: str = "flex"  # flex (GPU) | dense (the reference; FlexAttention has no backward on the CPU)
    attn_scale: float = 0.12  # with QK-norm, a fixed scale instead of 1/sqrt(head_dim)
    softcap: float = 15.0
    long_window_layers: tuple = ()  # empty: every 4th layer and the last
    unet: bool = True  # U-net skips from the first half of the layers to the second
    skip_pairs: tuple = ()  # (source, target) layers: source's output added, weighted, to target's input, instead of the U-net's (the public record of 2025-11-18: (4, 7))
    residual_start: float = 1.0  # each block's weight on the stream (x = a x + b x0) starts here (the public record of 2025-11-18: 1.1)
    fp8_head: bool = False  # the output head's matmul in FP8 (sm89+ GPUs; kit/modeling/fp8.py)
    fp8_mlp: str = "off"  # the MLPs' forward products in FP8 while training: off, up (the up projections) or both (kit/modeling/fp8.py)
    flex_options: str = ""  # JSON of FlexAttention kernel_options laid over the GPU's own (flex_kernel_options), e.g. {"USE_TMA": true}
    mlp_kernel: str = "torch"  # the MLP while training: torch (two Linears around relu^2), or triton (kit/modeling/triton_mlp.py: relu^2 inside the products)
    compile_mode: str = "regional"  # regional (blocks and head compiled one by one) | whole
    mtp_offsets: int = 0  # multi-token prediction: also predict tokens t+2 .. t+1+mtp_offsets while training
    rope: str = "half"  # half: rotary on half the dimensions, frequencies 1 .. 1/1024 (the public record's); full: all, base 10000
    no_attn_layers: tuple = ()  # layers that keep only their MLP (the public record drops layer 7's attention)
    no_mlp_layers: tuple = ()  # layers that keep only their attention (the public record of 2025-09-05 drops layer 0's MLP)
    fused_loss: bool = False  # training loss through kit.modeling.losses / kit.modeling.fp8's soft-capped cross-entropy (keeps only bf16 logits)
    loss_one_pass: bool = False  # with the FP8 head: the loss's e5m2 gradient computed in the forward, with its statistics, kept instead of the logits
    loss_kernel: str = "torch"  # the fused loss's kernels: kit.modeling.losses' PyTorch code (compiled with the model) or kit.modeling.triton_loss's
    bigram_buckets: int = 0  # >0: a hashed embedding of each (previous, current) token pair, added to every block's input
    bigram_sign_rows: int = 0  # >0: each bigram row read times a fixed random +-1 vector, one of this many picked by the pair (bigram_signs)
    attn_gate_dims: int = 0  # >0: each head's output scaled by a sigmoid gate read from this many leading dimensions of the block input
    softcap_form: str = "tanh"  # tanh: softcap * tanh(z / softcap); sigmoid: softcap * sigmoid((z + 5) / 7.5) (kit.modeling.losses)
    logit_mtp_weights: tuple = ()  # multi-token prediction from the same logits: starting weights of targets t+2, t+3, ... (t+1 has 1)
    smear: bool = False  # each token's embedding takes a gated share of the previous token's (within a document)
    backout_layer: int = -1  # >=0: a learned share of this layer's output is subtracted from the final state before the head
    key_offset: bool = False  # long-window layers: the keys' position-free dimensions come from the previous token
    value_embed_layers: tuple = ()  # non-empty: each of these layers gets its own value embedding (replaces the tied first/last layout)
    value_embed_gate: bool = False  # a value embedding enters each head through 2 sigmoid(W [x[:6], ve[:6]]) instead of one learned weight
    attn_out_init: str = "zero"  # zero | uniform: the attention output projection starts like the other matrices (the public record of 2026-01-30)
    xsa_layers: tuple = ()  # layers whose heads remove a learned share tanh(a) of their output along their own value (gated XSA)
    paired_head_layers: tuple = ()  # layers whose heads attend in pairs: both heads' keys of a pair interleaved into one sequence
    sublayer_scales: bool = False  # learned weights on the stream and each branch of every block, the stream's from sqrt(1.1)
    tie_embed: bool = False  # the token embedding starts as the output head's weight (shared until untie_embed; the head then starts normal(0, 0.005))
    prefix_target_weight: float = 0.0  # >0: the logits also score the next token's prefix token (kit.data.tokenizer.prefix_tokens) at this starting weight
    yarn_windows: tuple = ()  # the long windows (blocks) the run's schedule moves through, in order: YaRN at each change (yarn_state)
    mudd: bool = False  # dynamic dense connections into the last two layers (MUDD, the public record of 2026-04-22; ModernGPT.mudd_mix)
    attn_from_backout: bool = False  # the attention of every layer after backout_layer reads that layer's output, not the stream (the public record of 2026-03-06)


MODERN_SIZES = {"tiny": dict(n_layer=2, n_head=2, head_dim=32, n_embd=64), "124m": {}}


def rms_norm(x):
    return F.rms_norm(x, (x.size(-1),))


# ----- attention masks -----

def document_ids(idx):
    """Document number of every token: it counts the 50256 tokens up to and including it."""
    return (idx == EOT).cumsum(-1)


def mask_allows(q, kv, doc_q, doc_kv, window_blocks):
    """The attention rule: causal, same document, and fewer than window_blocks blocks back."""
    return (q >= kv) & (doc_q == doc_kv) & ((q // BLOCK - kv // BLOCK) < window_blocks)


def dense_mask(docs, window_blocks):
    """The rule materialised: a (B, 1, T, T) bool mask (True: may attend)."""
    pos = torch.arange(docs.size(-1), device=docs.device)
    return mask_allows(pos[:, None], pos[None, :], docs[:, :, None], docs[:, None, :], window_blocks)[:, None]


def ordered_blocks(dense):
    """(B, n, n) block flags -> (counts (B, 1, n), kv block indices (B, 1, n, n)), listed ones first."""
    counts = dense.sum(-1, dtype=torch.int32)
    indices = dense.to(torch.int8).argsort(dim=-1, descending=True, stable=True).to(torch.int32)
    return counts[:, None].contiguous(), indices[:, None].contiguous()


def flex_block_mask(docs, window_blocks):
    """A FlexAttention BlockMask for mask_allows, built from block-level document ranges.

    Documents are contiguous, so blocks q and kv share a document iff their document ranges
    overlap, and every pair inside lies in one document iff both blocks are inside the same one.
    Pairs that are all allowed are 'full' (no per-element check); partly allowed ones check the
    rule per element. (The window is whole blocks, so the compiled kernel would not need it in
    the element check, but the eager CPU path applies the element check everywhere.)
    """
    from torch.nn.attention.flex_attention import BlockMask

    B, T = docs.shape
    n = T // BLOCK
    first, last = docs.view(B, n, BLOCK)[..., 0], docs.view(B, n, BLOCK)[..., -1]
    qb = torch.arange(n, device=docs.device)[:, None]
    kb = torch.arange(n, device=docs.device)[None, :]
    within = (qb >= kb) & ((qb - kb) < window_blocks)
    shares_doc = (first[:, :, None] <= last[:, None, :]) & (last[:, :, None] >= first[:, None, :])
    one_doc = (first[:, :, None] == last[:, None, :]) & (last[:, :, None] == first[:, None, :])
    full = within & (qb > kb) & one_doc
    partial = within & shares_doc & ~full

    def element_rule(b, h, q, kv):
        return mask_allows(q, kv, docs[b, q], docs[b, kv], window_blocks)

    return BlockMask.from_kv_blocks(*ordered_blocks(partial), *ordered_blocks(full), BLOCK_SIZE=BLOCK, mask_mod=element_rule)


def flex_kernel_options(device, extra: dict = None):
    """Smaller tiles on GPUs with less shared memory per SM than Ampere/Hopper datacenter parts
    (sm86/sm89: ~100 KB), where the default tiles for head_dim 128 do not fit; `extra` (a config's
    flex_options, parsed) laid over them. None: FlexAttention's own choice."""
    options = {}
    if gpus.small_shared_memory(gpus.capability(device)):  # the GPU's, or the card's that --emulate-gpu runs as
        options = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_M1": 32, "BLOCK_N1": 64, "BLOCK_M2": 64, "BLOCK_N2": 32}
    return {**options, **(extra or {})} or None


def parse_flex_options(text: str) -> dict:
    """A config's flex_options: a JSON object of FlexAttention kernel options, or empty."""
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"flex_options {text!r}: not JSON ({error})") from None
    if not isinstance(options, dict):
        raise ValueError(f"flex_options {text!r}: a JSON object of FlexAttention kernel options, e.g. '{{\"USE_TMA\": true}}'")
    return options


def flex_attention_fn(q):
    from torch.nn.attention.flex_attention import flex_attention

    from kit.modeling.model import compiled_flex_attention

    return compiled_flex_attention() if q.is_cuda else flex_attention


def idx_targets_with_future(targets, extra_weights):
    """(B, T, 1 + K) targets: the next token, then the tokens 2 .. K+1 ahead, -1 where that token lies
    beyond the row or past the end of the current document (a 50256 among the tokens before it)."""
    ends = (targets == EOT).long().cumsum(-1)  # ends[t]: 50256s among targets 0..t
    ends_before = F.pad(ends[:, :-1], (1, 0))  # among targets 0..t-1
    columns = [targets]
    for k in range(1, len(extra_weights) + 1):
        ahead = F.pad(targets[:, k:], (0, k), value=-1)
        crossed = F.pad(ends[:, k - 1:], (0, k - 1), value=-1)[:, : targets.size(1)] != ends_before  # a 50256 among targets t..t+k-1
        columns.append(ahead.masked_fill(crossed, -1))
    return torch.stack(columns, dim=-1)


# ----- layers -----

def bigram_ids(idx, previous_first, buckets: int):
    """Row of the bigram table for each position of idx (B, T): a hash of (previous token, token)
    into buckets - 1 rows; the last row where there is no previous token of the same document:
    at a document's first token (50256) and where previous_first (B,), the token before
    idx[:, 0], is -1. (The public record hashes across documents; here documents stay apart,
    as the attention keeps them.)"""
    previous, alone = previous_tokens(idx, previous_first)
    mixed = torch.bitwise_xor(idx.long() * 1_000_003, previous * 998_244_353)
    ids = torch.remainder(mixed, buckets - 1)
    return torch.where(alone, torch.full_like(ids, buckets - 1), ids)


def previous_tokens(idx, previous_first):
    """((B, T) int64 the token before each position, previous_first (B,) before idx[:, 0] (-1: none); (B, T) bool
    where no token of the same document comes before: none, or a document's first token (50256))."""
    previous = torch.cat([previous_first[:, None].to(idx.dtype), idx[:, :-1]], dim=1).long()
    return previous, (previous < 0) | (idx == EOT)


def bigram_sign_table(rows: int, width: int) -> torch.Tensor:
    """(rows, width) fixed random +-1 entries, the same for every run (their own generator: the model's
    other weights start as they would without them)."""
    return torch.randn(rows, width, generator=torch.Generator().manual_seed(0)).sign()


def bigram_signs(idx, previous_first, table):
    """(B, T, width) the sign vector of each position, picked by (previous token XOR token) modulo the table's
    rows (the public record of 2026-05-20): two pairs that share a row of the hashed table read it with different
    signs, so their updates interfere less. Row 0 where bigram_ids has no previous token (none, or a document's first
    token), so documents stay apart here too."""
    previous, alone = previous_tokens(idx, previous_first)
    rows = torch.where(alone, torch.zeros_like(previous), torch.bitwise_xor(previous, idx.long()) % table.size(0))
    return table[rows]


def rotary_frequencies(head_dim: int, style: str = "full", base: float = 10000.0) -> torch.Tensor:
    """Angular frequency of each of the head_dim / 2 rotated pairs.

    full: base^(-2i/head_dim), every pair rotates. half: head_dim / 4 frequencies spaced
    geometrically from 1 to 1/1024 and head_dim / 4 zeros, so half the dimensions carry no
    position at all (free for content), and the slowest rotating pair still turns within the
    windows used here (1/1024 rad per token).
    """
    if style == "full":
        return 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    if style == "half":
        rotating = (1 / 1024) ** torch.linspace(0, 1, steps=head_dim // 4, dtype=torch.float32)
        return torch.cat([rotating, rotating.new_zeros(head_dim // 2 - head_dim // 4)])
    raise ValueError(f"unknown rotary style {style!r} (full or half)")


YARN_ALPHA, YARN_BETA = 1.0, 32.0  # YaRN's ramp: pairs turning under alpha times in the old window are interpolated, over beta kept
YARN_SCALE_SLOPE = 0.2  # the attention scale grows by 0.2 ln(new / old) + 1 at each change (the public record's 0.2; YaRN's paper has 0.1)


def yarn_state(frequencies: torch.Tensor, windows, target: int):
    """(frequencies, attention-scale multiplier) of YaRN (Peng et al. 2023, arXiv 2309.00071) as the public record of
    2025-09-10 applies it while the window grows: from windows[0] through each listed window below target, then to
    target (all in blocks). At each change old -> new, a rotary pair that turns r = old tokens * frequency / 2 pi
    times within the old window keeps its frequency if r >= beta, is slowed by old / new if r <= alpha (so its angles
    stay within those it trained on) and in between blends the two; the attention scale is multiplied by
    0.2 ln(new / old) + 1, since with QK-norm the attention flattens as a window takes more keys.
    A function of the window alone, so a resumed or loaded model gets the same state from set_window."""
    frequencies = frequencies.clone()
    if not windows or target <= windows[0]:
        return frequencies, 1.0
    path = [windows[0], *sorted({w for w in windows if windows[0] < w < target}), target]
    multiplier = 1.0
    for old, new in zip(path[:-1], path[1:]):
        turns = old * BLOCK * frequencies / (2 * math.pi)
        kept = torch.clamp((turns - YARN_ALPHA) / (YARN_BETA - YARN_ALPHA), 0, 1)
        frequencies *= old / new + kept * (1 - old / new)
        multiplier *= YARN_SCALE_SLOPE * math.log(new / old) + 1
    return frequencies, multiplier


class Rotary(nn.Module):
    def __init__(self, head_dim: int, max_seq_len: int, base: float = 10000.0, style: str = "full"):
        super().__init__()
        self.base_frequencies = rotary_frequencies(head_dim, style, base)  # on the host: YaRN's starting point
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), self.base_frequencies)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    @torch.no_grad()
    def set_frequencies(self, frequencies: torch.Tensor) -> None:
        """Rebuild the tables in place (a compiled graph reads the same buffers) for these frequencies."""
        positions = torch.arange(self.cos.size(0), dtype=torch.float32, device=self.cos.device)
        angles = torch.outer(positions, frequencies.to(self.cos.device))
        self.cos.copy_(angles.cos())
        self.sin.copy_(angles.sin())

    def forward(self, x, positions=None):
        """x (B, T, H, D) rotated by position: 0..T-1 by default; positions (B, T) gives each token's
        own (a KV-cached decode), (B, T, H) each head's (paired heads)."""
        if positions is None:
            T = x.size(1)
            cos, sin = self.cos[None, :T, None, :], self.sin[None, :T, None, :]
        elif positions.dim() == 3:
            cos, sin = self.cos[positions], self.sin[positions]
        else:
            cos, sin = self.cos[positions][:, :, None, :], self.sin[positions][:, :, None, :]
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1).type_as(x)


def hidden_linear(fan_in: int, fan_out: int, zero: bool = False, fp8_forward: bool = False) -> nn.Linear:
    """Bias-free Linear, uniform init with std 0.5 / sqrt(fan_in), or zeros for output projections; with
    fp8_forward its forward product runs in FP8 while training (kit.modeling.fp8.FP8ForwardLinear)."""
    layer = FP8ForwardLinear(fan_in, fan_out, fp8=True) if fp8_forward else nn.Linear(fan_in, fan_out, bias=False)
    with torch.no_grad():
        if zero:
            layer.weight.zero_()
        else:
            bound = math.sqrt(3) * 0.5 / math.sqrt(fan_in)
            layer.weight.uniform_(-bound, bound)
    return layer


class ModernAttention(nn.Module):
    """QK-normed rotary attention whose values can take a value embedding, optionally with an
    output gate per head: sigmoid(W x[:, :g]) for the first g dimensions of the block's (normed)
    input, zero-initialised (every gate starts at 0.5), so a head can switch itself off for a
    token instead of parking its attention on a sink token (the public record of 2025-08-23).

    Later records' parts, each off unless the config asks: a gated value embedding, gated XSA,
    paired heads (see interleave_pairs), the output projection's non-zero start.

    project() and output() are the two halves around the attention itself; kit.tools.inference
    reuses them with a KV cache in between."""

    def __init__(self, cfg: ModernConfig, key_offset: bool = False, paired: bool = False, xsa: bool = False):
        super().__init__()
        self.cfg = cfg
        self.flex_options = parse_flex_options(cfg.flex_options)  # parsed once: the compiled forward reads a dict
        self.key_offset = key_offset
        self.paired = paired
        if paired and (key_offset or cfg.n_head % 2):
            raise ValueError("paired heads need an even number of heads and a layer without the key offset "
                             "(the key offset is on the long-window layers: pair short-window ones, or turn the key offset off)")
        if key_offset:
            self.register_buffer("position_free_dims", position_free_dims(cfg.head_dim, cfg.rope), persistent=False)
        inner = cfg.n_head * cfg.head_dim
        self.qkv = hidden_linear(cfg.n_embd, 3 * inner)
        if cfg.attn_out_init not in ("zero", "uniform"):
            raise ValueError(f"attn_out_init {cfg.attn_out_init!r}: zero or uniform")
        self.proj = hidden_linear(inner, cfg.n_embd, zero=cfg.attn_out_init == "zero")
        # paired heads sit at positions 2t and 2t + 1 of the interleaved sequence, and rotate by those
        self.rotary = Rotary(cfg.head_dim, cfg.max_seq_len * (2 if paired else 1), style=cfg.rope)
        self.value_mix = nn.Parameter(torch.tensor([0.5, 0.5]))  # (own values, value embedding)
        self.gate = hidden_linear(cfg.attn_gate_dims, cfg.n_head, zero=True) if cfg.attn_gate_dims else None
        # gated value embedding (the public record of 2025-12-29): 2 sigmoid(W [x[:6], ve[:6]]) per head, 1 at the start
        self.value_gate = hidden_linear(2 * VALUE_GATE_DIMS, cfg.n_head, zero=True) if cfg.value_embed_gate else None
        # gated XSA (arXiv 2603.09078; the public record of 2026-04-29): tanh(a) per head, 0 at the start
        self.xsa_alpha = nn.Parameter(torch.zeros(cfg.n_head)) if xsa else None
        # YaRN's attention-scale multiplier, applied to the queries (set with the window: ModernGPT.set_window)
        self.register_buffer("yarn_scale", torch.tensor(1.0) if cfg.yarn_windows else None, persistent=False)

    def rotary_positions(self, T: int, device, positions=None):
        """Rotary positions: None (0..T-1) or the given (B, T) ones; with paired heads (.., T, heads):
        the first head of a pair at 2t, the second at 2t + 1."""
        if not self.paired:
            return positions
        if positions is None:
            positions = torch.arange(T, device=device)[None]
        second = torch.arange(self.cfg.n_head, device=device) % 2
        return 2 * positions[..., None] + second

    def project(self, x, value_embed, positions=None, v_extra=None):
        """(q, k, v), each (B, heads, T, head_dim) in the projection's dtype (bf16 under autocast,
        where the norms would otherwise hand fp32 to the attention kernel); v_extra (B, T, width) is
        added to the values (MUDD's value channel)."""
        B, T, _ = x.shape
        qkv = self.qkv(x)
        q, k, v = qkv.view(B, T, 3, self.cfg.n_head, self.cfg.head_dim).unbind(2)
        positions = self.rotary_positions(T, x.device, positions)
        q, k = (self.rotary(rms_norm(t), positions) for t in (q, k))
        if self.yarn_scale is not None:
            q = q * self.yarn_scale
        q, k = q.to(qkv.dtype), k.to(qkv.dtype)
        v = self.value_mix[0] * v
        if value_embed is not None:
            value_embed = value_embed.view_as(v).to(v.dtype)
            v = v + self.value_embed_weight(x, value_embed) * value_embed
        if v_extra is not None:
            v = v + v_extra.view_as(v).to(v.dtype)
        return tuple(t.transpose(1, 2) for t in (q, k, v))

    def value_embed_weight(self, x, value_embed):
        """The value embedding's weight: one learned number, or each head's gate (B, T, heads, 1)."""
        if self.value_gate is None:
            return self.value_mix[1]
        gate_in = torch.cat([x[..., :VALUE_GATE_DIMS], value_embed.flatten(-2)[..., :VALUE_GATE_DIMS]], dim=-1)
        return 2 * torch.sigmoid(self.value_gate(gate_in)).unsqueeze(-1).to(value_embed.dtype)

    def output(self, y, x, v=None):
        """The heads' results y (B, heads, T, head_dim), gated, merged and projected (v, the
        heads' values at the same positions, for XSA)."""
        B, _, T, _ = y.shape
        if self.xsa_alpha is not None:  # remove a learned share of each head's output along its own value
            along = (y * v).sum(-1, keepdim=True) / v.square().sum(-1, keepdim=True).clamp_min(1e-8)
            y = y - torch.tanh(self.xsa_alpha).to(y.dtype)[:, None, None] * along * v
        y = y.transpose(1, 2)
        if self.gate is not None:
            y = y * torch.sigmoid(self.gate(x[..., : self.cfg.attn_gate_dims])).unsqueeze(-1).to(y.dtype)
        return self.proj(y.reshape(B, T, -1))

    def forward(self, x, value_embed, mask, doc_starts=None, v_extra=None):
        q, k, v = self.project(x, value_embed, v_extra=v_extra)
        if self.key_offset:
            k = offset_keys(k, self.position_free_dims, doc_starts)
        if self.paired:
            q, k, pairs_v = (interleave_pairs(t) for t in (q, k, v))
            y = split_pairs(self.attend(q, k, pairs_v, mask))
        else:
            y = self.attend(q, k, v, mask)
        return self.output(y, x, v)

    def attend(self, q, k, v, mask):
        if self.cfg.attn == "flex":
            return flex_attention_fn(q)(q, k, v, block_mask=mask, scale=self.cfg.attn_scale, kernel_options=flex_kernel_options(q.device, self.flex_options))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.cfg.attn_scale)


VALUE_GATE_DIMS = 6  # leading dimensions of the block input and of the value embedding the value gate reads


def interleave_pairs(t):
    """(B, heads, T, D) -> (B, heads / 2, 2T, D): heads 2j and 2j + 1 take turns along the sequence
    (the public record of 2026-01-07, "paired head attention"), so each query scores both heads'
    keys of every earlier position in one softmax: the first head's query at t sees the pair's
    keys up to its own, the second's also the first head's key at t. A window counted in tokens
    then spans half the time."""
    B, H, T, D = t.shape
    return t.view(B, H // 2, 2, T, D).transpose(2, 3).reshape(B, H // 2, 2 * T, D)


def split_pairs(t):
    """interleave_pairs undone: (B, heads / 2, 2T, D) -> (B, heads, T, D)."""
    B, pairs, T2, D = t.shape
    return t.view(B, pairs, T2 // 2, 2, D).transpose(2, 3).reshape(B, 2 * pairs, T2 // 2, D)


def position_free_dims(head_dim: int, rope: str) -> torch.Tensor:
    """(head_dim,) bool: the dimensions whose rotary frequency is 0 (they carry no position)."""
    if rope != "half":
        raise ValueError("the key offset moves the position-free key dimensions, which only --rope half has")
    free_pairs = rotary_frequencies(head_dim, rope) == 0  # pair i rotates dimensions i and i + head_dim / 2
    return torch.cat([free_pairs, free_pairs])


def offset_keys(k, free_dims, doc_starts=None, key_before=None):
    """k (B, heads, T, head_dim) with its position-free dimensions taken from the previous position:
    a query can then match "the token before this key", which lets one layer do what an induction
    head needs two for (the public record of 2025-12-14). The first position takes key_before
    (B, heads, 1, head_dim: the token before the row, in a cached decode) or keeps its own, and so
    does a document's first token where doc_starts (B, T) says so. Only past tokens of the same
    document move forward, so attention stays causal and documents stay apart."""
    previous = torch.cat([k[:, :, :1] if key_before is None else key_before, k[:, :, :-1]], dim=2)
    if doc_starts is not None:
        previous = torch.where(doc_starts[:, None, :, None], k, previous)
    return torch.where(free_dims, previous, k)


FP8_MLP_CHOICES = ("off", "up", "both")


class ReluSquaredMLP(nn.Module):
    def __init__(self, cfg: ModernConfig):
        super().__init__()
        self.up = hidden_linear(cfg.n_embd, 4 * cfg.n_embd, fp8_forward=cfg.fp8_mlp != "off")
        self.down = hidden_linear(4 * cfg.n_embd, cfg.n_embd, zero=True, fp8_forward=cfg.fp8_mlp == "both")
        self.fused = cfg.mlp_kernel == "triton"  # training only, as FP8: evaluation and generation take the Linears

    def forward(self, x):
        if self.fused and self.training:
            return triton_mlp.relu2_mlp(x, self.up.weight, self.down.weight)
        return self.down(F.relu(self.up(x)).square())


class ModernBlock(nn.Module):
    def __init__(self, cfg: ModernConfig, attention: bool = True, key_offset: bool = False, paired: bool = False, xsa: bool = False,
                 mlp: bool = True):
        super().__init__()
        # with neither attention nor MLP (the public record of 2025-09-21's layer 0) the block only mixes its input (mix_in)
        self.attn = ModernAttention(cfg, key_offset, paired, xsa) if attention else None
        self.mlp = ReluSquaredMLP(cfg)  # built even where dropped: the random draws, and so the other weights' start, stay the full model's
        if not mlp:
            del self.mlp  # no submodule of that name, so a state dict that holds one is refused, not silently taken
            self.mlp = None
        # (stream, embedding x0); with sublayer scales the stream starts at sqrt(1.1) before each branch (the public record's)
        self.residual_mix = nn.Parameter(torch.tensor([1.1 ** 0.5 if cfg.sublayer_scales else cfg.residual_start, 0.0]))
        self.bigram_mix = nn.Parameter(torch.tensor(0.1)) if cfg.bigram_buckets else None
        # (attention's output, the stream before the MLP, the MLP's output)
        self.branch_scales = nn.Parameter(torch.tensor([1.0, 1.1 ** 0.5, 1.0])) if cfg.sublayer_scales else None

    def mix_in(self, x, x0, bigram=None):
        """The block's input: the stream and the token embedding x0 mixed, plus the bigram embedding."""
        x = self.residual_mix[0] * x + self.residual_mix[1] * x0
        if bigram is not None:
            x = x + self.bigram_mix * bigram
        return x

    def forward(self, x, x0, value_embed, mask, bigram=None, doc_starts=None, v_extra=None, attn_source=None):
        return self.run(x, x0, bigram, lambda h: self.attn(h, value_embed, mask, doc_starts, v_extra), attn_source)

    def run(self, x, x0, bigram, attend, attn_source=None):
        """The block around attend(normed input) -> the attention's output (kit.tools.inference passes a cached one);
        the attention reads attn_source where given (an earlier layer's output: attn_from_backout), else the mixed stream."""
        x = self.mix_in(x, x0, bigram)
        if self.attn is not None:
            out = attend(rms_norm(x if attn_source is None else attn_source))
            x = x + (out if self.branch_scales is None else self.branch_scales[0] * out)
        if self.mlp is None:
            return x
        out = self.mlp(rms_norm(x))
        if self.branch_scales is None:
            return x + out
        return self.branch_scales[1] * x + self.branch_scales[2] * out


class ModernGPT(nn.Module):
    """model(idx) -> logits; model(idx, targets) -> mean cross-entropy (fp32)."""

    def __init__(self, cfg: ModernConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        # at most one per layer pair (first and last layers), so that every embedding is used (DDP requires it)
        n_value_embeds = len(cfg.value_embed_layers) or min(cfg.value_embeds, cfg.n_layer // 2)
        self.value_embeds = nn.ModuleList(nn.Embedding(cfg.vocab_size, cfg.n_head * cfg.head_dim) for _ in range(n_value_embeds))
        long_layers = cfg.long_window_layers or tuple(range(0, cfg.n_layer, 4)) + (cfg.n_layer - 1,)
        self.long_window = [i in long_layers for i in range(cfg.n_layer)]
        for name in ("value_embed_layers", "xsa_layers", "paired_head_layers", "no_mlp_layers"):
            if any(not 0 <= i < cfg.n_layer for i in getattr(cfg, name)):
                raise ValueError(f"{name} {getattr(cfg, name)}: the model has layers 0..{cfg.n_layer - 1}")
        self.paired = [i in cfg.paired_head_layers for i in range(cfg.n_layer)]
        if cfg.sublayer_scales and cfg.residual_start != 1.0:
            raise ValueError("sublayer scales start the stream's weight themselves (sqrt(1.1)): leave residual_start at 1")
        if cfg.no_mlp_layers and cfg.sublayer_scales:  # a block without MLP would leave its MLP's scales untrained
            raise ValueError("sublayer scales weigh every block's MLP: they cannot go with layers that have none")
        self.blocks = nn.ModuleList(ModernBlock(cfg, attention=i not in cfg.no_attn_layers, key_offset=cfg.key_offset and self.long_window[i],
                                                paired=self.paired[i], xsa=i in cfg.xsa_layers, mlp=i not in cfg.no_mlp_layers)
                                    for i in range(cfg.n_layer))
        # a layer without attention leaves its value embedding unread; each embedding must still feed an attending layer
        attending = {slot for slot, block in zip(self.value_embed_slots(), self.blocks) if slot is not None and block.attn is not None}
        if len(attending) < len(self.value_embeds):
            raise ValueError(f"layers {cfg.no_attn_layers} lose their attention, and with them value embeddings "
                             f"{sorted(set(range(len(self.value_embeds))) - attending)} would feed no attention: take other --value-embed-layers")
        if any(not 0 <= source < target < cfg.n_layer for source, target in cfg.skip_pairs):
            raise ValueError(f"skip_pairs {cfg.skip_pairs}: (source, target) layers with source < target < {cfg.n_layer}")
        half = cfg.n_layer // 2  # the U-net: layer half-1 feeds layer half, half-2 feeds half+1, ...
        self.skip_pairs = cfg.skip_pairs or (tuple((half - 1 - k, half + k) for k in range(half)) if cfg.unet else ())
        self.skip_weights = nn.Parameter(torch.ones(len(self.skip_pairs))) if self.skip_pairs else None
        self.bigram_embed = nn.Embedding(cfg.bigram_buckets, cfg.n_embd) if cfg.bigram_buckets else None
        if self.bigram_embed is not None:
            nn.init.zeros_(self.bigram_embed.weight)
        if cfg.bigram_sign_rows and not cfg.bigram_buckets:
            raise ValueError("bigram_sign_rows signs the bigram embedding's rows: it needs bigram_buckets")
        if cfg.bigram_sign_rows:  # rebuilt from its fixed seed, so not saved with the weights
            self.register_buffer("bigram_sign_table", bigram_sign_table(cfg.bigram_sign_rows, cfg.n_embd), persistent=False)
        self.lm_head = FP8Head(cfg.n_embd, cfg.vocab_size, fp8=cfg.fp8_head)
        nn.init.zeros_(self.lm_head.weight)
        self.init_tied_embedding(cfg)
        self.init_mudd(cfg)
        # one small residual adapter per extra offset, sharing the output head
        self.mtp_adapters = nn.ModuleList(hidden_linear(cfg.n_embd, cfg.n_embd, zero=True) for _ in range(cfg.mtp_offsets))
        self.register_buffer("mtp_weight", torch.tensor(0.0), persistent=False)
        self.register_buffer("window_blocks", torch.tensor(1, dtype=torch.int32), persistent=False)
        self.window_blocks_on_host = 1  # the same number, for cached decoding (no device-to-host wait per call)
        self._yarn_window = None  # the window the rotary tables and attention scale were last set for (yarn_windows)
        self.init_v2_parts(cfg)
        self._linear_weights = None  # Linear weights, for the FLOP count (flops_per_token)
        # the MLP weights whose forward product runs in FP8 (2 of their 6 training FLOPs per token: flops_now)
        self._fp8_forward_weights = sum(m.weight.numel() for m in self.modules() if isinstance(m, FP8ForwardLinear))

    def init_v2_parts(self, cfg: ModernConfig) -> None:
        """The parts of the public record line after 2025-08 (each off unless its config asks)."""
        if cfg.softcap_form not in CAP_FORMS:
            raise ValueError(f"softcap_form {cfg.softcap_form!r}: one of {CAP_FORMS}")
        if cfg.fp8_mlp not in FP8_MLP_CHOICES:
            raise ValueError(f"fp8_mlp {cfg.fp8_mlp!r}: one of {FP8_MLP_CHOICES}")
        if cfg.mlp_kernel not in ("torch", "triton"):
            raise ValueError(f"mlp_kernel {cfg.mlp_kernel!r}: torch or triton")
        if cfg.mlp_kernel == "triton" and cfg.fp8_mlp != "off":
            raise ValueError(f"mlp_kernel triton computes the up projection in bf16; fp8_mlp {cfg.fp8_mlp!r} computes it in FP8: choose one")
        # smear: the gate reads the token's first 12 embedding dimensions; both start at 0 (no smear)
        self.smear_gate = hidden_linear(min(12, cfg.n_embd), 1, zero=True) if cfg.smear else None
        self.smear_lambda = nn.Parameter(torch.zeros(())) if cfg.smear else None
        if not -1 <= cfg.backout_layer < cfg.n_layer:
            raise ValueError(f"backout_layer {cfg.backout_layer}: the model has layers 0..{cfg.n_layer - 1} (-1: off)")
        self.backout_lambda = nn.Parameter(torch.tensor(0.5)) if cfg.backout_layer >= 0 else None
        if cfg.attn_from_backout and cfg.backout_layer < 0:
            raise ValueError("attn_from_backout feeds the later attentions the backout layer's output: it needs backout_layer")
        # weights of targets t+1, t+2, ... and of the prefix target, for the loss from the same logits (set each step by the script's schedule)
        prefix = (cfg.prefix_target_weight,) if cfg.prefix_target_weight else ()
        self.register_buffer("logit_mtp_now", torch.tensor([1.0, *cfg.logit_mtp_weights, *prefix]), persistent=False)
        if cfg.prefix_target_weight:
            from kit.data.tokenizer import prefix_tokens

            self.register_buffer("prefix_table", torch.tensor(prefix_tokens(cfg.vocab_size)), persistent=False)

    def init_tied_embedding(self, cfg: ModernConfig) -> None:
        """With tie_embed the embedding lookups read the head's weight (the public records of 2025-12-19 and -22: tied, then
        apart from 2/3 of the run); a zero head cannot serve as an embedding, so it starts as theirs, normal(0, 0.005).
        embed_is_tied is saved with the weights (checkpoints, model.safetensors), so a loaded model reads the right table;
        embed_tied, its copy on the host, is what the forward pass branches on (a compiled graph for each)."""
        self.embed_tied = cfg.tie_embed
        if cfg.tie_embed:
            nn.init.normal_(self.lm_head.weight, std=0.005)
            self.register_buffer("embed_is_tied", torch.tensor(True))
            self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "embed_tied", bool(module.embed_is_tied)))

    MUDD_HIDDEN = 64  # width of the small MLP that reads each position's weights

    def init_mudd(self, cfg: ModernConfig) -> None:
        """MUDD (Xiao et al. 2025, "MUDDFormer", arXiv 2502.12170) as the public record of 2026-04-22 trimmed it: after
        layer N-2 and after layer N-1, a small MLP of the block's output gives each position weights over a few earlier
        states of that position (N-2: the first block's input, the output of layer mudd_ref_layer and its own output;
        N-1: the first block's input and layer N-2's output). Weighted sums of them go into the residual stream
        and, from layer N-2, into layer N-1's attention values. W2 and the biases start at zero, so MUDD starts as a no-op."""
        self.mudd_layers = (cfg.n_layer - 2, cfg.n_layer - 1) if cfg.mudd else ()
        if not cfg.mudd:
            return
        if cfg.n_layer < 3 or cfg.n_layer - 1 in cfg.no_attn_layers:
            raise ValueError("mudd needs 3 layers or more and attention in the last layer (its value channel feeds it)")
        # the middle source: the backout layer's output, as the public record's (its layer 7 of 11), or two thirds in
        self.mudd_ref_layer = cfg.backout_layer if 0 <= cfg.backout_layer < cfg.n_layer - 2 else min((2 * cfg.n_layer) // 3, cfg.n_layer - 3)
        self.mudd_w1 = nn.Parameter(torch.empty(2, self.MUDD_HIDDEN, cfg.n_embd))
        for w in self.mudd_w1:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        self.mudd_w2 = nn.Parameter(torch.zeros(2, self.MUDD_HIDDEN, 2, 3))  # (layer, hidden, channel: values | residual, source)
        self.mudd_bias = nn.Parameter(torch.zeros(2, 2, 3))

    def mudd_mix(self, j: int, x, sources):
        """(value term, residual term), each sum_l w[channel, l] * sources[l] with per-position weights
        w = (gelu(x W1) W2 + b) * 0.2 / sqrt(L) read from x, the block's output (the public record's scale)."""
        L = len(sources)
        hidden = F.gelu(F.linear(x, self.mudd_w1[j].to(x.dtype)))
        w = (torch.einsum("btd,dcl->btcl", hidden, self.mudd_w2[j, :, :, :L].to(x.dtype)) + self.mudd_bias[j, :, :L].to(x.dtype)) * (0.2 / math.sqrt(L))
        mixed = [sum(w[..., c, l, None] * h for l, h in enumerate(sources)) for c in range(2)]
        return 1.15 * mixed[0], mixed[1]  # the value channel's 1.15: the public record's

    def token_table(self) -> torch.Tensor:
        """The weight the token embedding reads: the head's while tied, its own after."""
        return self.lm_head.weight if self.embed_tied else self.embed.weight

    @torch.no_grad()
    def untie_embed(self, optimizers=()) -> None:
        """From now on the embedding trains apart from the head, starting from a copy of the head's weight and of its state in
        every optimizer that holds both (Adam's moments and step count), as the public record of 2025-12-22 does."""
        self.embed.weight.copy_(self.lm_head.weight)
        for opt in optimizers:
            state = getattr(opt, "state", {})
            if self.lm_head.weight in state and any(self.embed.weight is p for group in opt.param_groups for p in group["params"]):
                state[self.embed.weight] = {k: v.clone() if torch.is_tensor(v) else v for k, v in state[self.lm_head.weight].items()}
        self.embed_is_tied.fill_(False)
        self.embed_tied = False

    def set_logit_mtp_weights(self, weights) -> None:
        """The extra targets' weights for the coming steps (t+2, t+3, ...); t+1 keeps 1. The weights are
        filled on the device (a copy from a host tensor would wait for the GPU at every step)."""
        for j, weight in enumerate(weights, start=1):
            self.logit_mtp_now[j].fill_(float(weight))

    def set_prefix_target_weight(self, weight: float) -> None:
        """The prefix target's weight for the coming steps (filled on the device, as the extra targets' are)."""
        self.logit_mtp_now[-1].fill_(float(weight))

    def training_targets(self, targets):
        """(B, T, K) targets of the loss from the same logits: the next token, the tokens further ahead, and the next
        token's prefix token; -1 where there is none."""
        columns = idx_targets_with_future(targets, self.config.logit_mtp_weights)
        if not self.config.prefix_target_weight:
            return columns
        prefix = torch.where(targets >= 0, self.prefix_table[targets.clamp(min=0)], -1)
        return torch.cat([columns, prefix[..., None]], dim=-1)

    def set_window(self, long_blocks: int) -> None:
        """Attention span of the long-window layers, in blocks of 128 tokens (the others get half); with
        yarn_windows, the rotary frequencies and attention scale YaRN gives for it (rebuilt only when it changes)."""
        self.window_blocks_on_host = max(1, int(long_blocks))
        self.window_blocks.fill_(self.window_blocks_on_host)
        if self.config.yarn_windows and self.window_blocks_on_host != self._yarn_window:
            self._yarn_window = self.window_blocks_on_host
            attentions = [block.attn for block in self.blocks if block.attn is not None]
            # every layer's rotary starts from the same frequencies (the model's rope style and head size)
            frequencies, multiplier = yarn_state(attentions[0].rotary.base_frequencies, self.config.yarn_windows, self._yarn_window)
            for attn in attentions:
                attn.rotary.set_frequencies(frequencies)
                attn.yarn_scale.fill_(multiplier)

    def value_embed_slots(self) -> list:
        """For each layer, which value embedding it takes: with value_embed_layers, the j-th listed
        layer the j-th embedding; else the first and the last `value_embeds` layers get embeddings
        0, 1, 2, ... in that order (each embedding shared by two layers); None in between."""
        n, L = len(self.value_embeds), self.config.n_layer
        if self.config.value_embed_layers:
            return [self.config.value_embed_layers.index(i) if i in self.config.value_embed_layers else None for i in range(L)]
        return [i if i < n else i - (L - n) if i >= L - n else None for i in range(L)]

    def layer_value_embeds(self, idx, dtype=None):
        ve = [embed(idx) if dtype is None else embed(idx).to(dtype) for embed in self.value_embeds]
        return [ve[j] if j is not None else None for j in self.value_embed_slots()]

    def activation_dtype(self, device) -> torch.dtype:
        """bf16 under autocast (the residual stream is then kept in bf16, as in the public record,
        halving its memory traffic), else the weights' dtype."""
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
        return self.embed.weight.dtype

    def embed_tokens(self, idx, previous_first=None):
        """(x0: the normed token embedding, the value embedding of every layer, the bigram
        embedding or None), in the activation dtype. previous_first (B,): the token before each
        row's first one, -1 (the default) where there is none."""
        dtype = self.activation_dtype(idx.device)
        if previous_first is None:
            previous_first = torch.full((idx.size(0),), -1, dtype=torch.long, device=idx.device)
        bigram = None
        if self.bigram_embed is not None:
            bigram = self.bigram_embed(bigram_ids(idx, previous_first, self.config.bigram_buckets))
            if self.config.bigram_sign_rows:
                bigram = bigram * bigram_signs(idx, previous_first, self.bigram_sign_table)
            bigram = bigram.to(dtype)
        table = self.token_table()
        return rms_norm(self.smeared(F.embedding(idx, table), idx, table, previous_first)).to(dtype), self.layer_value_embeds(idx, dtype), bigram

    def smeared(self, e, idx, table, previous_first):
        """e (B, T, width) with a gated share of the previous token's embedding added (the public record
        of 2025-09-18: a one-token look-back before any attention). Not at a document's first token, nor
        at a row's first one unless previous_first (B,) gives the token before it (-1: none; a cached decode gives it)."""
        if self.smear_gate is None:
            return e
        first = F.embedding(previous_first.clamp(min=0), table)[:, None]
        previous = torch.cat([first, e[:, :-1]], dim=1)
        _, alone = previous_tokens(idx, previous_first)  # the bigram table's rule: no token of the same document before
        gate = self.smear_lambda * torch.sigmoid(self.smear_gate(e[..., : self.smear_gate.in_features]))
        return e + gate * previous * ~alone[..., None]

    @torch.compiler.disable
    def masks(self, idx):
        """Built eagerly even in a compiled model: a new BlockMask each batch is an input to the
        compiled graph, not something to trace (tracing it ties the graph to the window length)."""
        docs = document_ids(idx)
        long, short = self.window_blocks, torch.clamp(self.window_blocks // 2, min=1)
        build = flex_block_mask if self.config.attn == "flex" else dense_mask
        masks = {}
        for i in range(self.config.n_layer):  # (long window, paired heads) -> the mask; paired layers attend over 2T interleaved tokens
            kind = (self.long_window[i], self.paired[i])
            if kind not in masks:
                masks[kind] = build(docs.repeat_interleave(2, dim=1) if kind[1] else docs, long if kind[0] else short)
        return masks

    def forward(self, idx, targets=None):
        masks = self.masks(idx)
        x0, value_embeds, bigram = self.embed_tokens(idx)
        doc_starts = idx == EOT if self.config.key_offset else None
        x = self.through_blocks(x0, lambda i, block, x, v_extra=None, attn_source=None: block(x, x0, value_embeds[i], masks[self.long_window[i], self.paired[i]],
                                                                                               bigram, doc_starts, v_extra, attn_source))
        return self.head(x, targets)

    def through_blocks(self, x, apply_block):
        """The blocks in order, with the skips (skip_pairs; by default the U-net's: the outputs of the first half,
        last first, added with learned weights to the inputs of the second half); with MUDD, its mixes after the last two (init_mudd).
        apply_block(i, block, x) -> x runs one block, and takes keyword arguments where the model has their parts:
        v_extra, MUDD's value term, for the last one; attn_source, the backout layer's output, after it (attn_from_backout)
        (kit.tools.inference passes one that attends through a KV cache)."""
        outputs, backout = {}, None
        first_input, reference, v_extra = x, None, None
        for i, block in enumerate(self.blocks):
            for j, (source, target) in enumerate(self.skip_pairs):
                if target == i:
                    x = x + self.skip_weights[j] * outputs[source]
            parts = {} if v_extra is None else {"v_extra": v_extra}
            if backout is not None and self.config.attn_from_backout:
                parts["attn_source"] = backout
            x = apply_block(i, block, x, **parts)
            if any(source == i for source, _ in self.skip_pairs):
                outputs[i] = x
            if i == self.config.backout_layer:
                backout = x
            if self.mudd_layers:
                if i == self.mudd_ref_layer:
                    reference = x
                if i == self.mudd_layers[0]:  # layer N-2: values for layer N-1, and its share of the stream
                    v_extra, residual = self.mudd_mix(0, x, [first_input, reference, x])
                    own_output, x = x, x + residual
                elif i == self.mudd_layers[1]:
                    x = x + self.mudd_mix(1, x, [first_input, own_output])[1]
        if backout is not None:  # "backout" (the public record of 2025-10-04): take back part of what the first layers wrote, which later layers needed as context but the prediction does not
            x = x - self.backout_lambda * backout
        return x

    def logits(self, x):
        logits = self.lm_head(rms_norm(x)).float()
        return softcap(logits, self.config.softcap, self.config.softcap_form)

    def head(self, x, targets=None):
        """Soft-capped logits, or the mean cross-entropy against targets (fp32).

        While training with multi-token prediction, adds mtp_weight x the cross-entropy of each
        extra offset k: the state at t, through adapter k, predicts token t+1+k (targets[t+k]).
        Evaluation is always the plain next-token loss.
        """
        if targets is None:
            return self.logits(x)
        if self.training and (self.config.logit_mtp_weights or self.config.prefix_target_weight):
            loss = self.same_logits_mtp_loss(x, self.training_targets(targets))
        elif self.training and self.config.fused_loss:
            loss = self.fused_next_token_loss(x, targets)
        else:
            logits = self.logits(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        if self.training:
            for k, adapter in enumerate(self.mtp_adapters, start=1):
                h = x[:, :-k]
                future = self.logits(h + adapter(rms_norm(h)))
                loss = loss + self.mtp_weight * F.cross_entropy(future.reshape(-1, future.size(-1)), targets[:, k:].reshape(-1))
        return loss

    def fused_next_token_loss(self, x, targets, weights=None):
        """The same loss as logits() + cross-entropy, through functions whose backward keeps only the
        bf16 logits (and, with the FP8 head, quantises the logits' gradient with a known scale).
        targets (B, T), or (B, T, K) with weights (K,) for several targets per position."""
        cfg = self.config
        h = rms_norm(x).reshape(-1, x.size(-1))
        flat = targets.reshape(h.size(0), -1) if weights is not None else targets.reshape(-1)
        if self.lm_head.fp8:
            bound = 1.0 + sum(cfg.logit_mtp_weights) + cfg.prefix_target_weight  # the weights only fall from their starting values
            return FP8SoftcappedHeadLoss.apply(h, self.lm_head.weight, flat, cfg.softcap, cfg.loss_kernel, cfg.softcap_form, weights, bound,
                                               cfg.loss_one_pass and torch.is_grad_enabled())
        return softcapped_cross_entropy(self.lm_head(h), flat, cfg.softcap, cfg.loss_kernel, cfg.softcap_form, weights)

    def same_logits_mtp_loss(self, x, targets):
        """Multi-token prediction from the next-token logits themselves (the public record of 2025-12-22):
        the state at t also scores tokens t+2, t+3, ... (targets (B, T, K), -1 where there is none) with the
        weights in logit_mtp_now; the fused loss does it in one pass over the logits."""
        weights = self.logit_mtp_now
        if self.config.fused_loss:
            return self.fused_next_token_loss(x, targets, weights)
        logits = self.logits(x).view(-1, self.config.vocab_size)
        flat = targets.view(logits.size(0), -1)
        terms = [F.cross_entropy(logits, flat[:, k], ignore_index=-1, reduction="sum") for k in range(flat.size(1))]
        return (torch.stack(terms) * weights).sum() / logits.size(0)

    def compile_regions(self):
        """Compile each block and the head separately, in place ("regional compilation"): the 12
        blocks share one compiled graph (two: with and without value embeddings), so compiling
        costs about one block instead of the whole unrolled model; masks stay eager."""
        raise_recompile_limit()  # the default limit was reached on an H200 (TORCH_LOGS=recompiles names each variant)
        for block in self.blocks:
            block.compile()
        self.head = torch.compile(self.head)
        return self

    def describe_paths(self) -> str:
        """The kernel paths this model takes, for the run log."""
        device = self.embed.weight.device
        attention = {"flex": "FlexAttention (block-sparse, compiled)", "dense": "dense reference (SDPA + materialised mask)"}[self.config.attn]
        if self.config.attn == "flex" and flex_kernel_options(device):
            attention += ", small tiles for ~100 KB shared memory (sm86/sm89)"
        if self.config.attn == "flex" and self.config.flex_options:
            attention += f", kernel options {self.config.flex_options}"
        head = "FP8 in training (e4m3 inputs, e5m2 gradients, torch._scaled_mm), bf16 in evaluation" if self.config.fp8_head else "bf16/fp32 (no FP8)"
        mlp = {"off": "bf16", "up": "FP8 forward product of the up projection (e4m3), bf16 backward",
               "both": "FP8 forward products of both projections (e4m3), bf16 backward"}[self.config.fp8_mlp]
        if self.config.mlp_kernel == "triton":
            mlp += (f", relu^2 inside the up projection's Triton product and its gradient's ({triton_mlp.describe_loads(device)}; only relu(h)^2 kept) while training"
                    if triton_mlp.available(device) else ", the same products in PyTorch (Triton cannot run here), only relu(h)^2 kept, while training")
        kernels = {"torch": "PyTorch, compiled with the model", "triton": "Triton kernels"}[self.config.loss_kernel]
        kept = "bf16 logits kept"
        if self.config.loss_one_pass:
            kept = ("e5m2 gradient computed with the statistics in one pass and kept instead of the logits" if self.config.fp8_head
                    else "bf16 logits kept: the one-pass gradient needs the FP8 head")
        loss = f"fused soft-capped cross-entropy ({kept}; {kernels})" if self.config.fused_loss else "soft-cap + F.cross_entropy"
        cap = f"{self.config.softcap:g} tanh(z/{self.config.softcap:g})" if self.config.softcap_form == "tanh" else f"{self.config.softcap:g} sigmoid((z+5)/7.5)"
        loss += f", cap {cap}"
        if self.config.logit_mtp_weights:
            loss += f", tokens 2..{1 + len(self.config.logit_mtp_weights)} ahead from the same logits while training"
        if self.config.prefix_target_weight:
            loss += f", the next token's prefix token from the same logits while training (weight from {self.config.prefix_target_weight:g})"
        return f"attention: {attention} | head: {head} | MLP: {mlp} | loss: {loss}"

    def flops_per_token(self, seq_len: int, window_blocks: int = MAX_WINDOW_BLOCKS) -> int:
        """Training FLOPs per token (kit.modeling.flops' count), each attention layer charged the keys its window
        spans when the long window is window_blocks blocks (the short layers half of it): the blocks the
        kernel runs, documents not subtracted. The default is the run's final windows."""
        from kit.modeling.flops import linear_weight_count

        if self._linear_weights is None:  # counted once: the trainer asks every step (MUDD's first matrices are products too)
            self._linear_weights = linear_weight_count(self) + (self.mudd_w1.numel() if self.mudd_layers else 0)
        spans = [min(seq_len, (window_blocks if long else max(1, window_blocks // 2)) * BLOCK)
                 for block, long in zip(self.blocks, self.long_window) if block.attn is not None]
        return 6 * self._linear_weights + 12 * self.config.n_head * self.config.head_dim * sum(spans)

    def flops_now(self, seq_len: int) -> tuple:
        """(training FLOPs per token at the current windows, the part of them run in FP8: the head's products and
        the forward products of the MLP projections that take FP8)."""
        fp8 = 6 * self.lm_head.weight.numel() if self.lm_head.fp8 else 0
        fp8 += 2 * self._fp8_forward_weights
        return self.flops_per_token(seq_len, self.window_blocks_on_host), fp8
