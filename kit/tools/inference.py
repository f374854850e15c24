"""Inference for the kit's GPT: key/value caches (contiguous and paged), a cached forward pass,
sampling, and a generation loop.

Both caches hold, per layer, the keys and values of every token a sequence has seen, so a new
token's attention reads them instead of recomputing the prefix. They share one interface
(add/free a sequence, reserve room, write a layer's new keys and values, read them back):
- ContiguousKVCache: one fixed row of max_len slots per sequence (simple; wastes what a short
  sequence does not use).
- PagedKVCache: a pool of fixed blocks of `block_size` (64) token slots; each sequence has a
  block table (its blocks, in order), a block is taken from the free list when a sequence
  crosses into it and all of a sequence's blocks return when it ends, so sequences of any
  lengths share one pool. Reading gathers a sequence's blocks through its table (the paged-
  attention idea; here with a gather and a standard attention kernel, not a fused one).
- "static": the contiguous cache decoded at fixed shapes (every row, all max_len slots, a mask
  for what each row has), so one decoding step is the same kernels every time: on CUDA it is
  captured once as a CUDA graph and replayed, which removes the per-kernel launch cost that
  bounds batch-1 decoding (records/2026-11-29_h200_inference_cache_fix: ~8 ms a token).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from kit.modeling.sampling import sample  # generate's sampler; callers import it from here too

# Cached reads are padded to a multiple of this many slots (the paged block size): a new key length
# at every decoding step made cuDNN's attention build a new plan per call (~4.5-7 ms of host time
# per layer on an H200, records/2026-11-29_h200_inference)
READ_QUANTUM = 64
# the kernels for attention against the cache: flash takes no mask, and cuDNN plans per shape
MASKED_ATTENTION_BACKENDS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@dataclass
class CacheSlots:
    """Where one forward call's new tokens go in the cache and what they read back, worked out
    once for all layers (each index tensor built on the host is a copy the GPU waits for)."""
    positions: torch.Tensor  # (B, n) position of each new token in its sequence
    write_blocks: torch.Tensor  # (B, n) block of each new token
    write_offsets: torch.Tensor  # (B, n) its slot in that block
    read_blocks: torch.Tensor  # (B, L) block of each position up to the longest sequence; None: every slot of rows 0..B-1
    read_offsets: torch.Tensor  # (L,)
    lengths: list  # each sequence's length after the new tokens (None in static decoding, where they stay on the GPU)
    mask: torch.Tensor  # (B, n, L): causal, and padding beyond a sequence's length masked
    table: torch.Tensor = None  # (B, blocks) each sequence's blocks in order (a fused kernel walks it instead of read_blocks)


class BlockAllocator:
    """A free list of block ids 0..num_blocks-1."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.free = list(range(num_blocks - 1, -1, -1))
        self.used = set()

    def allocate(self) -> int:
        if not self.free:
            raise RuntimeError(f"the KV cache's {self.num_blocks} blocks are all in use; give it more blocks or fewer sequences")
        block = self.free.pop()
        self.used.add(block)
        return block

    def release(self, blocks) -> None:
        for block in blocks:
            if block not in self.used:
                raise RuntimeError(f"block {block} released twice or never allocated")
            self.used.remove(block)
            self.free.append(block)


class PagedKVCache:
    """Per layer and token: n_head keys of head_dim numbers and n_head values of value_dim
    (default head_dim). MLA stores its latent as the 'key' and its rotary key as the 'value'."""

    def __init__(self, n_layer: int, n_head: int, head_dim: int, num_blocks: int, block_size: int = 64,
                 device="cpu", dtype=torch.float32, value_dim: int = None):
        self.k = torch.zeros(n_layer, num_blocks, n_head, block_size, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros(n_layer, num_blocks, n_head, block_size, value_dim or head_dim, device=device, dtype=dtype)
        self.block_size = block_size
        self.allocator = BlockAllocator(num_blocks)
        self.tables, self.lengths = {}, {}
        self.documents = {}  # sequence -> document number of each cached token (models that attend within documents)
        self.last_tokens = {}  # sequence -> its last token (models with a bigram embedding)
        self.last_keys = {}  # sequence -> {layer: its last token's key before the key offset} (the speedrun model's long-window layers)
        self._next_id = 0

    def add_sequence(self) -> int:
        sid, self._next_id = self._next_id, self._next_id + 1
        self.tables[sid], self.lengths[sid] = [], 0
        return sid

    def free_sequence(self, sid: int) -> None:
        self.allocator.release(self.tables.pop(sid))
        del self.lengths[sid]
        self.documents.pop(sid, None)
        self.last_tokens.pop(sid, None)
        self.last_keys.pop(sid, None)

    def reserve(self, sids, n: int) -> None:
        """Blocks for n more tokens of each sequence: all of them, or none and an error."""
        missing = {sid: math.ceil((self.lengths[sid] + n) / self.block_size) - len(self.tables[sid]) for sid in sids}
        if sum(max(0, m) for m in missing.values()) > len(self.allocator.free):
            raise RuntimeError(f"the KV cache's {self.allocator.num_blocks} blocks are all in use; give it more blocks or fewer sequences")
        for sid, m in missing.items():
            self.tables[sid].extend(self.allocator.allocate() for _ in range(m))

    def block_table(self, sids, device) -> torch.Tensor:
        """(B, most blocks) block ids of these sequences, padded with block 0 (read, then masked)."""
        width = max(len(self.tables[sid]) for sid in sids)
        return torch.tensor([self.tables[sid] + [0] * (width - len(self.tables[sid])) for sid in sids], device=device)

    def slots(self, sids, n: int, device) -> CacheSlots:
        """The addresses for n new tokens of each sequence (after reserve(sids, n)). Reads cover
        whole blocks of READ_QUANTUM slots (the mask hides the unused ones), so the attention
        meets a new key length once per block instead of at every decoding step."""
        table = self.block_table(sids, device)
        starts = [self.lengths[sid] for sid in sids]
        lengths = [start + n for start in starts]
        new = torch.tensor(starts, device=device)[:, None] + torch.arange(n, device=device)
        width = min(math.ceil(max(lengths) / READ_QUANTUM) * READ_QUANTUM, table.size(1) * self.block_size)
        read = torch.arange(width, device=device)
        return CacheSlots(new, table.gather(1, new // self.block_size), new % self.block_size, table[:, read // self.block_size],
                          read % self.block_size, lengths, cache_mask(lengths, n, device, width), table)

    def write(self, layer: int, slots: CacheSlots, k, v) -> None:
        """k, v: (B, H, n, D), the n new tokens of each sequence, into their slots."""
        self.k[layer][slots.write_blocks, :, slots.write_offsets] = k.permute(0, 2, 1, 3).to(self.k.dtype)  # (B, n, H, D)
        self.v[layer][slots.write_blocks, :, slots.write_offsets] = v.permute(0, 2, 1, 3).to(self.v.dtype)

    def read(self, layer: int, slots: CacheSlots):
        """Keys and values of each sequence's tokens so far, the new ones included: (B, H, L, D)
        each, L the longest; shorter sequences read padding there (slots.mask hides it)."""
        if slots.read_blocks is None:  # static decoding: the contiguous rows themselves, no copy
            return self.k[layer], self.v[layer]
        k = self.k[layer][slots.read_blocks, :, slots.read_offsets]  # (B, L, H, D): one gather through the block table
        v = self.v[layer][slots.read_blocks, :, slots.read_offsets]
        return k.transpose(1, 2), v.transpose(1, 2)

    def advance(self, sids, n: int) -> None:
        for sid in sids:
            self.lengths[sid] += n

    def bytes_per_token(self) -> int:
        """Cache memory one token of one sequence takes (keys + values, all layers)."""
        per_slot = lambda t: t.size(0) * t.size(2) * t.size(4) * t.element_size()  # noqa: E731
        return per_slot(self.k) + per_slot(self.v)


class ContiguousKVCache(PagedKVCache):
    """One row of max_len slots per sequence: a paged cache whose sequences each own max_len /
    block_size fixed blocks from the start (so reading needs no table walk beyond a slice)."""

    def __init__(self, n_layer, n_head, head_dim, max_batch: int, max_len: int, device="cpu", dtype=torch.float32, value_dim: int = None):
        super().__init__(n_layer, n_head, head_dim, num_blocks=max_batch, block_size=max_len, device=device, dtype=dtype, value_dim=value_dim)

    def add_sequence(self) -> int:
        sid = super().add_sequence()
        self.tables[sid].append(self.allocator.allocate())  # the whole row at once
        return sid

    def reserve(self, sids, n: int) -> None:
        for sid in sids:
            if self.lengths[sid] + n > self.block_size:
                raise RuntimeError(f"sequence {sid} would pass the cache's {self.block_size} slots")


# ----- the cached forward pass of kit.modeling.model.GPT -----

def cached_attention(attn, x, cache, layer: int, slots: CacheSlots):
    """The attention of kit.modeling.model.CausalSelfAttention or kit.modeling.attention.GroupedQueryAttention for x
    (B, n, C), the n new tokens of each sequence: their keys and values (a GQA layer's n_kv_head
    heads) go to the cache, and they attend to the cached tokens and causally among themselves."""
    from kit.modeling.attention import share_heads

    q, k, v = attn.heads(x)
    cache.write(layer, slots, k, v)
    keys, values = cache.read(layer, slots)
    return attn.merge(attend_cached(q, *share_heads(keys, values, q.size(1)), slots.mask))


def attend_cached(q, keys, values, allowed, scale=None):
    """Attention of the new tokens' queries over the cached keys and values, allowed (B, n, L)
    saying which of them each query sees (causal, padding, windows, documents)."""
    with sdpa_kernel(MASKED_ATTENTION_BACKENDS):
        return F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=allowed[:, None], scale=scale)


# How MLA layers decode: "auto" (the Triton kernel of kit.modeling.mla_decode where it runs, else
# PyTorch), "triton" (the kernel, or an error saying why not) or "torch"
MLA_DECODE = {"path": "auto"}


def mla_kernel_refusal(cache) -> str:
    """'' where cached_mla runs the Triton kernel for this cache, else why it does not."""
    return mla_kernel_refusal_for(cache.k.device, cache.k.dtype, cache.k.size(-1), cache.v.size(-1), cache.block_size,
                                  isinstance(cache, ContiguousKVCache))


def mla_kernel_refusal_for(device, dtype, latent_dim: int, rope_dim: int, block_size: int, contiguous: bool) -> str:
    from kit.modeling import mla_decode

    if MLA_DECODE["path"] == "torch":
        return "PyTorch asked for"
    why = mla_decode.why_not(device, dtype, latent_dim, rope_dim)
    if not why and block_size % mla_decode.TILE and not contiguous:
        why = f"paged blocks of {block_size} slots: the kernel takes multiples of {mla_decode.TILE}"
    if why and MLA_DECODE["path"] == "triton":
        raise RuntimeError(f"the MLA decode kernel cannot run here: {why}")
    return why


def mla_decode_path(cache) -> str:
    """Which code decodes MLA layers from this cache, in words (generation's closing line)."""
    return describe_mla_path(mla_kernel_refusal(cache))


def describe_mla_path(refusal: str) -> str:
    return "MLA decode: PyTorch (" + refusal + ")" if refusal else "MLA decode: Triton kernel"


def model_mla_decode_path(model, cache_kind: str, block_size: int = 64) -> str:
    """mla_decode_path for the cache generate() makes for this model; '' for a model without MLA."""
    if is_modern(model) or cache_kind == "none" or attention_kind(model.h[0].attn) != "mla":
        return ""
    attn, weight = model.h[0].attn, next(model.parameters())
    return describe_mla_path(mla_kernel_refusal_for(weight.device, weight.dtype, attn.kv_down.out_features, attn.rope_dim, block_size,
                                                    cache_kind != "paged"))


def cached_mla(attn, x, cache, layer: int, slots: CacheSlots, positions):
    """MultiLatentAttention decoding from its compressed cache (latent c and rotated key part k_r
    per token), with the up-projections absorbed: head h scores token j by
    (W_k_up,h^T q_h) . c_j + q_rope,h . k_r,j, and outputs W_v_up,h (sum_j a_hj c_j), so full
    keys and values are never rebuilt. The Triton kernel (kit.modeling.mla_decode) walks the
    block table itself; the PyTorch path gathers the blocks first."""
    B, n, _ = x.shape
    H, D, R = attn.n_head, attn.head_dim, attn.rope_dim
    latent_dim = attn.kv_down.out_features
    latent = attn.kv_down(x)  # (B, n, latent)
    q = attn.q(x).view(B, n, H, D + R)
    q_content, q_rope = q.split([D, R], dim=-1)
    k_rope = attn.rotary(attn.k_rope(x).view(B, n, 1, R), positions) if R else latent.new_zeros(B, n, 1, 0)
    cache.write(layer, slots, latent[:, None], k_rope.transpose(1, 2))
    w_k = attn.k_up.weight.view(H, D, latent_dim)  # k_h = w_k[h] @ c
    q_absorbed = torch.einsum("bnhd,hdl->bnhl", q_content, w_k)  # (B, n, H, latent)
    q_rotated = attn.rotary(q_rope, positions) if R else q_rope
    if slots.table is not None and not mla_kernel_refusal(cache):
        mixed_latent = mla_kernel(q_absorbed, q_rotated, cache, layer, slots, 1 / math.sqrt(D + R)).to(q.dtype)  # (B, n, H, latent)
    else:
        latents, rope_keys = cache.read(layer, slots)  # (B, 1, L, latent), (B, 1, L, R)
        scores = q_absorbed.transpose(1, 2) @ latents.to(q.dtype).transpose(-1, -2)
        if R:
            scores = scores + q_rotated.transpose(1, 2) @ rope_keys.to(q.dtype).transpose(-1, -2)
        scores = scores / math.sqrt(D + R)
        scores = scores.masked_fill(~slots.mask[:, None], float("-inf"))
        mixed_latent = (scores.softmax(-1) @ latents.to(q.dtype)).transpose(1, 2)  # (B, n, H, latent)
    y = torch.einsum("bnhl,hdl->bnhd", mixed_latent, attn.v_up.weight.view(H, D, latent_dim))
    return attn.c_proj(y.reshape(B, n, H * D))


def mla_kernel(q_absorbed, q_rotated, cache, layer: int, slots: CacheSlots, scale: float):
    """kit.modeling.mla_decode over this layer's blocks: latents in cache.k, rotary keys in cache.v."""
    from kit.modeling.mla_decode import mla_decode

    query = torch.cat([q_absorbed, q_rotated], dim=-1).to(cache.k.dtype).contiguous()
    rope = cache.v[layer][:, 0] if cache.v.size(-1) else None
    return mla_decode(query, cache.k[layer][:, 0], rope, slots.table, slots.positions[:, -1] + 1, scale)


def cache_mask(lengths, n: int, device, width: int):
    """(B, n, width): new token i of a sequence of (then) `length` tokens sees positions <= length - n + i
    (width: the slots read, at least the longest length)."""
    kv_pos = torch.arange(width, device=device)
    q_pos = torch.tensor([length - n for length in lengths], device=device)[:, None] + torch.arange(n, device=device)
    return kv_pos[None, None, :] <= q_pos[:, :, None]


def attention_kind(attn) -> str:
    from kit.modeling.attention import GroupedQueryAttention, MultiLatentAttention
    from kit.modeling.model import CausalSelfAttention

    kinds = {CausalSelfAttention: "mha", GroupedQueryAttention: "gqa", MultiLatentAttention: "mla"}
    return kinds.get(type(attn), "unsupported")


def offset_cached_keys(attn, k, cache, layer: int, sids, doc_starts):
    """kit.modeling.modern.offset_keys for the new tokens k (B, heads, n, head_dim): the first one's predecessor is
    the sequence's last cached token, whose key before the offset the cache keeps per layer."""
    from kit.modeling.modern import offset_keys

    before = torch.stack([cache.last_keys.get(sid, {}).get(layer, k[b, :, 0]) for b, sid in enumerate(sids)])[:, :, None]
    for b, sid in enumerate(sids):
        cache.last_keys.setdefault(sid, {})[layer] = k[b, :, -1].clone()
    return offset_keys(k, attn.position_free_dims, doc_starts, before)


def cached_modern_attention(attn, x, value_embed, cache, layer: int, slots: CacheSlots, positions, window_blocks: int, docs,
                            sids=(), doc_starts=None, v_extra=None):
    """kit.modeling.modern.ModernAttention's math for the new tokens, against the cache: rotary at each
    token's own position, value embeddings mixed in, the key offset where the layer has it,
    attention within the token's document and its window (in blocks of 128), as
    kit.modeling.modern.mask_allows says; ModernAttention's own projections and output gate before and after it."""
    from kit.modeling.modern import BLOCK

    cfg = attn.cfg
    q, k, v = attn.project(x, value_embed, positions, v_extra)
    if attn.key_offset:
        k = offset_cached_keys(attn, k, cache, layer, sids, doc_starts)
    cache.write(layer, slots, k, v)
    keys, values = cache.read(layer, slots)
    allowed = slots.mask.clone()
    kv_pos = torch.arange(allowed.size(-1), device=x.device)
    allowed &= (positions[:, :, None] // BLOCK - kv_pos[None, None, :] // BLOCK) < window_blocks
    allowed &= docs.gather(1, positions)[:, :, None] == docs[:, None, :]  # docs: (B, L) document of every cached token
    return attn.output(attend_cached(q, keys, values, allowed, cfg.attn_scale), x, v)


@torch.no_grad()
def forward_cached_modern(model, idx, cache, sids):
    """ModernGPT.forward (kit/modeling/modern.py) for new tokens against the cache: the same embedding,
    value embeddings, U-net skips and soft-capped head, attention from cached_modern_attention."""
    from kit.modeling.modern import EOT

    cache.reserve(sids, idx.size(1))
    slots = cache.slots(sids, idx.size(1), idx.device)
    positions = slots.positions
    previous_first = torch.tensor([cache.last_tokens.get(sid, -1) for sid in sids], device=idx.device)
    host_idx = idx.cpu()  # one copy for all rows (a copy per row was a wait per row at every decoding step)
    for row, sid in enumerate(sids):  # document number of every token so far (a 50256 starts one), and the last token
        tokens = host_idx[row]
        previous = cache.documents.get(sid, torch.zeros(0, dtype=torch.long))
        offset = previous[-1] if len(previous) else 0
        cache.documents[sid] = torch.cat([previous, offset + (tokens == EOT).cumsum(0)])
        cache.last_tokens[sid] = int(tokens[-1])
    docs = torch.nn.utils.rnn.pad_sequence([cache.documents[sid] for sid in sids], batch_first=True, padding_value=-1)
    docs = F.pad(docs, (0, slots.mask.size(-1) - docs.size(1)), value=-1).to(idx.device)  # as wide as the slots read
    long_window = model.window_blocks_on_host
    short_window = max(1, long_window // 2)
    x0, value_embeds, bigram = model.embed_tokens(idx, previous_first)

    def cached_block(i, block, x, v_extra=None, attn_source=None):  # ModernBlock.forward with the cached attention
        window = long_window if model.long_window[i] else short_window
        return block.run(x, x0, bigram, lambda h: cached_modern_attention(block.attn, h, value_embeds[i], cache, i, slots, positions,
                                                                           window, docs, sids, idx == EOT, v_extra), attn_source)

    x = model.through_blocks(x0, cached_block)
    cache.advance(sids, idx.size(1))
    return model.logits(x)


def is_modern(model) -> bool:
    from kit.modeling.modern import ModernGPT

    return isinstance(model, ModernGPT)


def check_supported(model) -> None:
    from kit.modeling.model import GPT, Block

    if is_modern(model):
        if any(model.paired):
            raise ValueError("the KV cache does not decode paired-head attention (layers "
                             f"{[i for i, p in enumerate(model.paired) if p]} of this model)")
        return
    blocks_ok = all(type(b) is Block and attention_kind(b.attn) != "unsupported" for b in getattr(model, "h", []))
    if not isinstance(model, GPT) or not blocks_ok or len({attention_kind(b.attn) for b in model.h}) != 1:
        raise ValueError("the KV cache supports kit.modeling.model.GPT with standard blocks and one attention kind (MHA, GQA or MLA): "
                         "the baseline and the variants built on it")


def check_static(model) -> None:
    check_supported(model)
    if is_modern(model):
        raise ValueError("static decoding serves kit.modeling.model.GPT (the baseline and the variants built on it); "
                         "the speedrun's model decodes with the paged or contiguous cache")


def refusal(check, model):
    """Why check (check_static, check_supported) refuses the model, or None where it does not."""
    try:
        check(model)
    except ValueError as e:
        return str(e)
    return None


def auto_cache(model, device: str) -> str:
    """The fastest cache measured for this model and device: static (a CUDA graph) on CUDA, else paged."""
    return "static" if device.startswith("cuda") and refusal(check_static, model) is None else "paged"


def cache_geometry(model) -> dict:
    """Heads and numbers per head the cache keeps per layer and token, for the model's attention."""
    if is_modern(model):
        return {"n_head": model.config.n_head, "head_dim": model.config.head_dim}
    attn = model.h[0].attn
    kind = attention_kind(attn)
    if kind == "mha":
        return {"n_head": attn.n_head, "head_dim": model.config.n_embd // attn.n_head}
    if kind == "gqa":
        return {"n_head": attn.n_kv_head, "head_dim": attn.head_dim}
    return {"n_head": 1, "head_dim": attn.kv_down.out_features, "value_dim": attn.rope_dim}  # mla: latent + rotary key


@torch.no_grad()
def forward_cached(model, idx, cache, sids):
    """Logits (B, n, V) for the n new tokens idx (B, n) of sequences sids, extending the cache."""
    if is_modern(model):
        return forward_cached_modern(model, idx, cache, sids)
    cache.reserve(sids, idx.size(1))
    logits = forward_through_slots(model, idx, cache, cache.slots(sids, idx.size(1), idx.device))
    cache.advance(sids, idx.size(1))
    return logits


def forward_through_slots(model, idx, cache, slots: CacheSlots):
    """kit.modeling.model.GPT's forward for new tokens whose cache addresses are worked out already."""
    positions = slots.positions
    x = model.embed(idx, positions)
    for layer, block in enumerate(model.h):
        kind, h = attention_kind(block.attn), block.ln_1(x)
        if kind == "mla":
            x = x + cached_mla(block.attn, h, cache, layer, slots, positions)
        else:
            x = x + cached_attention(block.attn, h, cache, layer, slots)
        x = x + block.mlp(block.ln_2(x))
    return model.logits(model.ln_f(x))


def static_slots(lengths, max_len: int) -> CacheSlots:
    """Addresses for one new token in each row of a contiguous cache, from the rows' lengths
    (B,) on the device: row b writes slot lengths[b] and reads all max_len slots, masked."""
    positions = lengths[:, None]
    rows = torch.arange(lengths.size(0), device=lengths.device)[:, None]
    mask = torch.arange(max_len, device=lengths.device)[None, None, :] <= positions[:, :, None]
    return CacheSlots(positions, rows, positions, None, None, None, mask, rows)


class StaticDecoder:
    """One decoding step for every row of a ContiguousKVCache (sequence i in row i) at fixed
    shapes. On CUDA the step is captured once as a CUDA graph (graph=None: where CUDA is) and
    each call replays it; elsewhere it runs eagerly, the same arithmetic."""

    def __init__(self, model, cache, graph=None):
        check_static(model)
        self.model, self.cache = model, cache
        if any(cache.tables.get(row) != [row] for row in range(cache.k.size(1))):
            raise ValueError("static decoding needs a fresh contiguous cache whose sequence i owns row i")
        device = cache.k.device
        batch, self.max_len = cache.k.size(1), cache.k.size(3)
        self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.graph = None
        if graph if graph is not None else device.type == "cuda":
            self._capture()

    def _step(self):
        return forward_through_slots(self.model, self.tokens, self.cache, static_slots(self.lengths, self.max_len))[:, -1]

    def _capture(self):
        """Warm up on a side stream (kernel choice, allocations), then record the step. The
        warm-up writes keys and values at each row's next slot, which the first real step
        overwrites before anything reads it. Autocast's weight cache cannot live in a graph."""
        autocast = torch.is_autocast_enabled("cuda")
        dtype = torch.get_autocast_dtype("cuda")
        self._load_lengths()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.autocast("cuda", dtype=dtype, enabled=autocast, cache_enabled=False):
            for _ in range(2):
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.autocast("cuda", dtype=dtype, enabled=autocast, cache_enabled=False):
            self.logits = self._step()

    def _load_lengths(self):
        """Every row's length onto the device; a full row (finished) writes its last slot, unread."""
        self.lengths.copy_(torch.tensor([min(self.cache.lengths[row], self.max_len - 1) for row in range(self.lengths.size(0))]))

    @torch.no_grad()
    def __call__(self, tokens, rows):
        """Logits (len(rows), V) for one new token of each of these rows; the other rows are
        computed too (fixed shapes) but neither advance nor change anything they will read."""
        for row in rows:
            if self.cache.lengths[row] >= self.max_len:
                raise RuntimeError(f"sequence {row} would pass the cache's {self.max_len} slots")
        self.tokens[rows, 0] = torch.tensor(tokens, device=self.tokens.device)
        self._load_lengths()
        if self.graph is not None:
            self.graph.replay()
            logits = self.logits
        else:
            logits = self._step()
        self.cache.advance(rows, 1)
        return logits[rows]


def make_cache(model, kind: str, sequences: int, max_len: int, block_size: int = 64):
    """A cache for the model's attention with room for `sequences` sequences of max_len tokens."""
    check_supported(model)
    geometry = dict(cache_geometry(model), device=next(model.parameters()).device, dtype=next(model.parameters()).dtype)
    if kind == "paged":
        return PagedKVCache(model.config.n_layer, num_blocks=sequences * math.ceil(max_len / block_size), block_size=block_size, **geometry)
    if kind in ("contiguous", "static"):
        return ContiguousKVCache(model.config.n_layer, max_batch=sequences, max_len=max_len, **geometry)
    raise ValueError(f"cache must be paged, contiguous, static or none, not {kind!r}")


# ----- generation -----

@torch.no_grad()
def generate(model, prompts, max_new_tokens: int, cache: str = "paged", temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, stop_token=None, seed: int = 0, block_size: int = 64, on_token=None):
    """Continue each prompt (a list of token ids) by up to max_new_tokens tokens.

    cache: "paged", "contiguous", "static" (contiguous, decoded at fixed shapes: a CUDA graph
    on CUDA; kit.modeling.model.GPT only), or "none" (recompute the whole sequence every step: the
    reference). A sequence stops early at stop_token (kept in its output); with the paged cache
    its blocks return to the pool then. on_token(i, token) is called for every new token.
    """
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    outputs = [[] for _ in prompts]
    longest = max(len(p) for p in prompts) + max_new_tokens
    positions = getattr(model.config, "block_size", None) or model.config.max_seq_len  # learned positions, or rotary's table
    if longest > positions:
        raise ValueError(f"prompt + {max_new_tokens} new tokens = {longest} tokens, more than the model's {positions} positions")

    def emit(i, token):
        outputs[i].append(token)
        if on_token:
            on_token(i, token)
        return token == stop_token or len(outputs[i]) == max_new_tokens

    if cache == "none":
        active = list(range(len(prompts)))
        while active:
            sequences = [prompts[i] + outputs[i] for i in active]
            if len({len(seq) for seq in sequences}) == 1:  # equal lengths: one batched pass
                logits = model(torch.tensor(sequences, device=device))[:, -1]
            else:
                logits = torch.cat([model(torch.tensor([seq], device=device))[:, -1] for seq in sequences])
            tokens = sample(logits, temperature, top_k, top_p, generator).tolist()
            active = [i for i, t in zip(active, tokens) if not emit(i, t)]
        return outputs

    if cache == "static":
        check_static(model)
    kv = make_cache(model, cache, len(prompts), longest, block_size)
    sid_of = {i: kv.add_sequence() for i in range(len(prompts))}
    decoder = None
    last = {}
    for i, prompt in enumerate(prompts):  # prefill one by one: prompts differ in length
        last[i] = forward_cached(model, torch.tensor([prompt], device=device), kv, [sid_of[i]])[:, -1]
    active = list(range(len(prompts)))
    while active:
        tokens = sample(torch.cat([last[i] for i in active]), temperature, top_k, top_p, generator).tolist()
        still = []
        for i, token in zip(active, tokens):
            if not emit(i, token):
                still.append(i)
            elif cache != "static":  # a static decoder keeps every row to the end
                kv.free_sequence(sid_of[i])
        active = still
        if active and cache == "static":
            decoder = decoder or StaticDecoder(model, kv)
            logits = decoder([outputs[i][-1] for i in active], [sid_of[i] for i in active])
            last = {i: logits[j:j + 1] for j, i in enumerate(active)}
        elif active:
            step = torch.tensor([[outputs[i][-1]] for i in active], device=device)
            logits = forward_cached(model, step, kv, [sid_of[i] for i in active])[:, -1]
            last = {i: logits[j:j + 1] for j, i in enumerate(active)}
    return outputs
