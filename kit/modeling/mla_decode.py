"""Multi-latent attention (MLA) decoding against a paged latent cache, as two Triton kernels.

MLA (DeepSeek-V2) caches per token one latent c (DL numbers) and one rotary key k_r (DR numbers)
shared by every head. With the key up-projection absorbed into the query (q_lat,h = W_k,h^T q_h),
every head attends to the same keys [c, k_r] and mixes the same values c:

    o_h = softmax(scale * (q_lat,h . c_j + q_rope,h . k_r,j))_j  @  c_j      (then W_v,h o_h outside)

so one sequence's s_q new tokens x H heads form s_q*H query rows against one key/value head: a
multi-query attention with keys of DL + DR and values of DL numbers, which is what this computes.

- The cache is paged: a sequence's tokens sit in pages of PAGE slots (64 for PagedKVCache; a
  contiguous cache is one page per sequence, of any size), found through its row of the block
  table. Pages need not be in order or contiguous.
- Split-K: each (sequence, block of query rows, slice of the value dimension) is spread over
  SPLITS programs, each taking a run of 64-token tiles with its own running softmax; a second
  kernel combines the partial outputs by their log-sum-exps. Few sequences with long contexts
  then still fill the GPU. The number of splits depends on the table's width only, not on the
  lengths, so a decoding step keeps its shapes and can be captured in a CUDA graph.
- Causal among the new tokens: new token i of a sequence of (now) L tokens sees keys 0..L-s_q+i.

`mla_decode` is the entry point; `reference` is the same computation in PyTorch (gather the pages,
SDPA) and the tests' and benchmark's yardstick. On a CPU the kernels run under Triton's
interpreter (TRITON_INTERPRET=1). Tile choices keep one block's shared memory under the 101,376
bytes of sm86/sm89 (`kernel_builds` lists them for scripts/audit_shared_memory.py).
"""

import functools
import math
import os
import warnings

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # the kit runs without Triton (CPU wheels of PyTorch do not ship it)
    triton = None

TILE = 64  # keys per step of the kernel's loop; a page holds a whole number of tiles
LOG2E = 1.4426950408889634


def available(device) -> bool:
    """Whether the kernels can run on tensors of this device (CUDA, or Triton's CPU interpreter)."""
    if triton is None:
        return False
    return torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def why_not(device, dtype=None, latent_dim: int = 64, rope_dim: int = 0) -> str:
    """'' where the kernel serves this device, dtype and cache geometry, else why not (the fallback's message)."""
    if triton is None:
        return "Triton is not installed"
    if not available(device):
        return f"the kernel needs a CUDA GPU, not {torch.device(device).type}"
    if dtype is not None and dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return f"no kernel for {dtype}"
    return geometry_problem(latent_dim, rope_dim)


def geometry_problem(latent_dim: int, rope_dim: int) -> str:
    """'' where the kernel takes these latent and rotary sizes, else what it takes."""
    if latent_dim % 64 and latent_dim not in (16, 32):
        return f"latent size {latent_dim}: the kernel takes 16, 32 or a multiple of 64"
    if rope_dim and (rope_dim < 16 or rope_dim & (rope_dim - 1)):
        return f"rotary size {rope_dim}: the kernel takes 0 or a power of two >= 16"
    return ""


if triton is not None:
    @triton.jit
    def _mla_partial_kernel(q_ptr, latent_ptr, rope_ptr, table_ptr, lens_ptr, out_ptr, lse_ptr,
                            stride_qb, stride_qs, stride_qh, stride_lp, stride_lt, stride_rp, stride_rt,
                            stride_tb, stride_ob, stride_os, stride_lb, S_Q, H, ROW_BLOCKS, TILES_PER_SPLIT, scale_log2,
                            DL: tl.constexpr, DR: tl.constexpr, PAGE: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, SPLITS: tl.constexpr):
        """One program: BLOCK_M query rows of one sequence, values dv0..dv0+BLOCK_DV, one run of key tiles.
        Writes the normalised partial output (and its log2-sum-exp where SPLITS > 1)."""
        seq = tl.program_id(0) // ROW_BLOCKS
        row_block = tl.program_id(0) % ROW_BLOCKS
        dv0 = tl.program_id(1) * BLOCK_DV
        split = tl.program_id(2)
        length = tl.load(lens_ptr + seq)
        rows = row_block * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < S_Q * H
        token, head = rows // H, rows % H
        visible = length - S_Q + token + 1  # keys 0..visible-1
        q_rows = q_ptr + seq.to(tl.int64) * stride_qb + token * stride_qs + head * stride_qh
        first = split * TILES_PER_SPLIT
        last = tl.minimum(first + TILES_PER_SPLIT, tl.cdiv(length, 64))
        dv = dv0 + tl.arange(0, BLOCK_DV)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
        for tile in range(first, last):
            start = tile * 64
            page = tl.load(table_ptr + seq.to(tl.int64) * stride_tb + start // PAGE).to(tl.int64)
            slots = start % PAGE + tl.arange(0, 64)
            key_ok = start + tl.arange(0, 64) < length
            scores = tl.zeros([BLOCK_M, 64], tl.float32)
            for d0 in tl.static_range(0, DL, BLOCK_D):
                d = d0 + tl.arange(0, BLOCK_D)
                q = tl.load(q_rows[:, None] + d[None, :], mask=row_ok[:, None], other=0.0)
                k = tl.load(latent_ptr + page * stride_lp + slots[None, :] * stride_lt + d[:, None], mask=key_ok[None, :], other=0.0)
                scores += tl.dot(q, k)
            if DR > 0:
                r = tl.arange(0, DR)
                q = tl.load(q_rows[:, None] + DL + r[None, :], mask=row_ok[:, None], other=0.0)
                k = tl.load(rope_ptr + page * stride_rp + slots[None, :] * stride_rt + r[:, None], mask=key_ok[None, :], other=0.0)
                scores += tl.dot(q, k)
            seen = (start + tl.arange(0, 64))[None, :] < visible[:, None]
            scores = tl.where(seen, scores * scale_log2, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(scores, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that sees nothing yet
            p = tl.exp2(scores - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(latent_ptr + page * stride_lp + slots[:, None] * stride_lt + dv[None, :], mask=key_ok[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        out_rows = out_ptr + seq.to(tl.int64) * stride_ob + split * stride_os + rows * DL
        tl.store(out_rows[:, None] + dv[None, :], out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
        if SPLITS > 1:
            if tl.program_id(1) == 0:  # one value slice writes the rows' log2-sum-exp
                lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
                tl.store(lse_ptr + seq.to(tl.int64) * stride_lb + split * (S_Q * H) + rows, lse, mask=row_ok)

    @triton.jit
    def _mla_combine_kernel(part_ptr, lse_ptr, out_ptr, ROWS, stride_pb, stride_ps, stride_lb, stride_ob,
                            DL: tl.constexpr, SPLITS: tl.constexpr, SPLITS_POW2: tl.constexpr, BLOCK_C: tl.constexpr):
        """One program: one query row's output over BLOCK_C values, the splits weighted by exp2(lse - max)."""
        seq = tl.program_id(0) // ROWS
        row = tl.program_id(0) % ROWS
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        splits = tl.arange(0, SPLITS_POW2)
        lse = tl.load(lse_ptr + seq.to(tl.int64) * stride_lb + splits * ROWS + row, mask=splits < SPLITS, other=float("-inf"))
        top = tl.max(lse, 0)
        weights = tl.exp2(lse - tl.where(top == float("-inf"), 0.0, top))
        weights = weights / tl.maximum(tl.sum(weights, 0), 1e-30)
        parts = tl.load(part_ptr + seq.to(tl.int64) * stride_pb + splits[:, None] * stride_ps + row * DL + cols[None, :],
                        mask=(splits < SPLITS)[:, None], other=0.0)
        out = tl.sum(parts * weights[:, None], 0)
        tl.store(out_ptr + seq.to(tl.int64) * stride_ob + row * DL + cols, out.to(out_ptr.dtype.element_ty))


def tile_config(rows: int, latent_dim: int, small_shared_memory: bool = False, element_size: int = 2) -> dict:
    """Tiles for s_q*H query rows: BLOCK_M rows (16/32/64, at least what tl.dot takes), QK^T over
    chunks of BLOCK_D, values in slices of BLOCK_DV. Chosen from the H200 benchmark
    (records/2026-12-02_h200_mla_decode):
    - the whole latent in one slice (512 at the DeepSeek shape; 1.2-1.9x over 256-wide slices,
      which recompute the scores per slice), 256 where shared memory is ~100 KB (sm86/sm89),
      128 for fp32 caches;
    - two pipeline stages only for 16-row blocks of latents <= 256 (the GPT-2 MLA model's decoding:
      up to 1.7x at long contexts); elsewhere two stages prefetch every chunk of the next tile and
      overflow even the H200 (352,256 bytes for 64 rows at the DeepSeek shape);
    - 64-row blocks only on large shared memory: they need 106,496 bytes on sm86 at 256-wide slices.
    A launch that still runs out of shared memory falls back to fallback_tiles."""
    block_m = 16 if rows <= 16 else 32 if rows <= 32 or small_shared_memory else 64
    block_dv = 128 if element_size > 2 else 256 if small_shared_memory else 512
    while latent_dim % block_dv:  # the widest power-of-two slice that divides the latent (192 -> 64)
        block_dv //= 2
    stages = 2 if not small_shared_memory and block_m == 16 and latent_dim <= 256 and element_size <= 2 else 1
    return {"BLOCK_M": block_m, "BLOCK_D": min(latent_dim, 64), "BLOCK_DV": block_dv,
            "num_warps": 8 if block_m * block_dv >= 64 * 256 else 4, "num_stages": stages}


def fallback_tiles(config: dict) -> dict:
    """Smaller tiles after an out-of-shared-memory launch: one stage, 32 rows, 128-wide value slices."""
    return {**config, "BLOCK_M": min(config["BLOCK_M"], 32), "BLOCK_DV": min(config["BLOCK_DV"], 128), "num_warps": 4, "num_stages": 1}


@functools.lru_cache(maxsize=256)
def launch_plan(batch: int, s_q: int, heads: int, latent_dim: int, page: int, width: int, device, element_size: int, tiles: tuple = ()):
    """(tile config, splits, tiles per split) for one call's shapes, worked
    out once per shape: a decoding step's host time is most of its time at small batches."""
    from kit.core import gpus

    device = torch.device(device)
    cap = gpus.capability(device) if device.type == "cuda" else None
    rows = s_q * heads
    config = {**tile_config(rows, latent_dim, gpus.small_shared_memory(cap), element_size), **dict(tiles)}
    if latent_dim % config["BLOCK_DV"] or config["BLOCK_M"] not in (16, 32, 64, 128):
        raise ValueError(f"mla_decode: tiles {config}: BLOCK_DV must divide the latent size {latent_dim}, BLOCK_M be 16, 32, 64 or 128")
    programs = batch * math.ceil(rows / config["BLOCK_M"]) * (latent_dim // config["BLOCK_DV"])
    key_tiles = math.ceil(width * page / TILE)
    return (config, *spread_tiles(key_tiles, split_count(programs, key_tiles, device)))


def spread_tiles(key_tiles: int, splits: int) -> tuple:
    """(splits, tiles per split): the key tiles in runs of equal length, about `splits` of them."""
    tiles_per_split = max(1, math.ceil(key_tiles / splits))
    return math.ceil(key_tiles / tiles_per_split), tiles_per_split


def split_count(programs: int, tiles: int, device) -> int:
    """Splits per (sequence, row block, value slice), so that the GPU gets about two programs per
    SM, each with at least 4 key tiles (256 tokens); 1 on the interpreter unless tiles are many."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if torch.device(device).type == "cuda" else 4
    splits = max(1, min(math.ceil(2 * sms / max(programs, 1)), tiles // 4))
    return splits


def check_shapes(q, latent_cache, rope_cache, block_table, seq_lens):
    batch, s_q, heads, width = q.shape
    latent_dim, rope_dim = latent_cache.size(-1), (rope_cache.size(-1) if rope_cache is not None else 0)
    problems = []
    if width != latent_dim + rope_dim:
        problems.append(f"the query has {width} numbers per head, the cache {latent_dim} + {rope_dim}")
    if geometry := geometry_problem(latent_dim, rope_dim):
        problems.append(geometry)
    page = latent_cache.size(1)
    if page % TILE and block_table.size(-1) != 1:
        problems.append(f"page size {page}: a multiple of {TILE}, or one page per sequence")
    if block_table.dim() != 2 or block_table.size(0) != batch or seq_lens.shape != (batch,):
        problems.append(f"block table {tuple(block_table.shape)} and lengths {tuple(seq_lens.shape)} for {batch} sequences")
    if latent_cache.stride(-1) != 1 or q.stride(-1) != 1 or (rope_cache is not None and rope_cache.stride(-1) != 1):
        problems.append("the last dimension of the query and caches must be contiguous")
    if problems:
        raise ValueError("mla_decode: " + "; ".join(problems))


def mla_decode(q, latent_cache, rope_cache, block_table, seq_lens, scale: float, splits: int = 0, tiles: dict = None):
    """Attention output (B, s_q, H, DL) in q's dtype.

    q: (B, s_q, H, DL + DR) absorbed queries, latent part first, then the rotated rotary part;
    latent_cache: (pages, PAGE, DL) and rope_cache: (pages, PAGE, DR) or None (views of one
    cache of DL + DR per token work too); block_table: (B, max pages) int page ids; seq_lens: (B,)
    each sequence's length including the s_q new tokens (whose keys are in the cache already);
    scale: the softmax scale; splits: 0 picks them from the GPU's size; tiles: tile_config's
    keys to override (the benchmark's sweep; no fallback for them)."""
    check_shapes(q, latent_cache, rope_cache, block_table, seq_lens)
    batch, s_q, heads, _ = q.shape
    latent_dim = latent_cache.size(-1)
    rope_dim = rope_cache.size(-1) if rope_cache is not None else 0
    page = latent_cache.size(1)
    rows = s_q * heads
    config, planned, tiles_per_split = launch_plan(
        batch, s_q, heads, latent_dim, page, block_table.size(1), q.device, q.element_size(), tuple(sorted((tiles or {}).items())))
    if splits:  # asked for: the key tiles spread over about that many
        splits, tiles_per_split = spread_tiles(math.ceil(block_table.size(1) * page / TILE), splits)
    else:
        splits = planned
    out = torch.empty(batch, s_q, heads, latent_dim, device=q.device, dtype=q.dtype)
    if splits > 1:
        parts = torch.empty(batch, splits, rows, latent_dim, device=q.device, dtype=torch.float32)
        lse = torch.empty(batch, splits, rows, device=q.device, dtype=torch.float32)
        target, stride_ob, stride_os = parts, parts.stride(0), parts.stride(1)
    else:
        lse, target, stride_ob, stride_os = out, out, out.stride(0), 0
    rope = rope_cache if rope_dim else latent_cache
    args = (q, latent_cache, rope, block_table, seq_lens, target, lse,
            q.stride(0), q.stride(1), q.stride(2), latent_cache.stride(0), latent_cache.stride(1), rope.stride(0), rope.stride(1),
            block_table.stride(0), stride_ob, stride_os, lse.stride(0) if splits > 1 else 0, s_q, heads)
    shape_key = (s_q, heads, latent_dim, rope_dim, page, q.dtype, q.device)
    config = config if tiles else _SHRUNK.get(shape_key, config)
    try:
        launch_partial(args, config, batch, rows, latent_dim, rope_dim, page, splits, tiles_per_split, scale)
    except triton.runtime.errors.OutOfResources as e:
        if tiles:  # tiles asked for (the benchmark's variants) are timed as asked or not at all
            raise
        smaller = fallback_tiles(config)
        warnings.warn(f"mla_decode: {e}; falling back to tiles {smaller}")
        _SHRUNK[shape_key] = smaller
        launch_partial(args, smaller, batch, rows, latent_dim, rope_dim, page, splits, tiles_per_split, scale)
    if splits > 1:
        block_c = min(latent_dim, 128)
        _mla_combine_kernel[(batch * rows, latent_dim // block_c)](
            parts, lse, out, rows, parts.stride(0), parts.stride(1), lse.stride(0), out.stride(0),
            DL=latent_dim, SPLITS=splits, SPLITS_POW2=triton.next_power_of_2(splits), BLOCK_C=block_c, num_warps=4)
    return out


_SHRUNK = {}  # shapes whose planned tiles ran out of shared memory on this GPU: the tiles that replaced them


def launch_partial(args, config, batch, rows, latent_dim, rope_dim, page, splits, tiles_per_split, scale):
    row_blocks = math.ceil(rows / config["BLOCK_M"])
    _mla_partial_kernel[(batch * row_blocks, latent_dim // config["BLOCK_DV"], splits)](
        *args, row_blocks, tiles_per_split, scale * LOG2E, DL=latent_dim, DR=rope_dim, PAGE=page, SPLITS=splits, **config)


def gather_pages(cache, block_table, length: int):
    """(B, length, D): each sequence's first `length` slots of a paged cache (pages, PAGE, D), in order."""
    page = cache.size(1)
    positions = torch.arange(length, device=cache.device)
    return cache[block_table[:, positions // page].long(), positions % page]


def reference(q, latent_cache, rope_cache, block_table, seq_lens, scale: float):
    """mla_decode in PyTorch: gather each sequence's pages, then SDPA in fp32 with one key/value head
    (keys [c, k_r], values c) and the causal rule for the new tokens."""
    batch, s_q, heads, _ = q.shape
    length = int(seq_lens.max())
    keys = gather_pages(latent_cache, block_table, length)
    values = keys
    if rope_cache is not None and rope_cache.size(-1):
        keys = torch.cat([keys, gather_pages(rope_cache, block_table, length)], dim=-1)
    positions = torch.arange(length, device=q.device)
    last_seen = seq_lens.to(q.device)[:, None] - s_q + torch.arange(s_q, device=q.device)  # (B, s_q)
    allowed = positions[None, None, :] <= last_seen[:, :, None]  # (B, s_q, L)
    allowed = allowed[:, None].expand(batch, heads, s_q, length)
    out = F.scaled_dot_product_attention(q.float().transpose(1, 2), keys.float()[:, None].expand(batch, heads, length, -1),
                                         values.float()[:, None].expand(batch, heads, length, -1), attn_mask=allowed, scale=scale)
    return out.transpose(1, 2).to(q.dtype)


def decode_flops(batch: int, s_q: int, heads: int, seq_len: int, latent_dim: int, rope_dim: int) -> int:
    """FlashMLA's count: b * h * s_q * 2 * s_k * (d_qk + d_v), d_qk = DL + DR, d_v = DL."""
    return batch * heads * s_q * 2 * seq_len * (latent_dim + rope_dim + latent_dim)


def decode_bytes(batch: int, s_q: int, heads: int, seq_len: int, latent_dim: int, rope_dim: int, element: int = 2) -> int:
    """Bytes one decoding call must move: the queries, each sequence's cache and the output."""
    return element * batch * (s_q * heads * (latent_dim + rope_dim) + seq_len * (latent_dim + rope_dim) + s_q * heads * latent_dim)


def kernel_builds(latent_dim: int = 512, rope_dim: int = 64, small_shared_memory: bool = True, element: str = "bf16"):
    """(name, kernel, signature, constexprs, num_warps, num_stages) for the tile choices mla_decode makes, at the
    given latent/rotary sizes: what scripts/audit_shared_memory.py compiles for a smaller card."""
    pointers = {"q_ptr", "latent_ptr", "rope_ptr", "out_ptr"}
    partial = {name: (f"*{element}" if name in pointers else "*i32" if name in ("table_ptr", "lens_ptr")
                      else "*fp32" if name == "lse_ptr" else "fp32" if name == "scale_log2" else "constexpr" if name.isupper() and name not in
                      ("S_Q", "H", "ROW_BLOCKS", "TILES_PER_SPLIT") else "i32") for name in _mla_partial_kernel.arg_names}
    combine = {name: ("*fp32" if name in ("part_ptr", "lse_ptr") else f"*{element}" if name == "out_ptr"
                      else "constexpr" if name in ("DL", "SPLITS", "SPLITS_POW2", "BLOCK_C") else "i32") for name in _mla_combine_kernel.arg_names}
    configs = {tuple(tile_config(rows, latent_dim, small_shared_memory).items()) for rows in (16, 32, 64)}
    for config in sorted(map(dict, configs), key=lambda c: c["BLOCK_M"]):
        warps, stages = config.pop("num_warps"), config.pop("num_stages")
        yield (f"MLA decode partial (DL {latent_dim}, DR {rope_dim}, BLOCK_M {config['BLOCK_M']}, BLOCK_DV {config['BLOCK_DV']}, {warps} warps)",
               _mla_partial_kernel, partial, {**config, "DL": latent_dim, "DR": rope_dim, "PAGE": 64, "SPLITS": 2}, warps, stages)
    block_c = min(latent_dim, 128)
    yield (f"MLA decode combine (DL {latent_dim}, 32 splits)", _mla_combine_kernel, combine,
           {"DL": latent_dim, "SPLITS": 32, "SPLITS_POW2": 32, "BLOCK_C": block_c}, 4, 3)
