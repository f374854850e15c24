"""Retrieval-augmented training (RETRO-style): a few layers attend to neighbours retrieved from other documents of the training split.

The idea (Borgeaud et al. 2022, "Improving language models by retrieving from trillions of tokens"):
cut the training split into 64-token chunks and index them. While training and evaluating, each
64-token chunk of a sequence retrieves its k nearest chunks of the index (each with the 64 tokens
that follow it), a small bidirectional encoder reads them, and chunked cross-attention (CCA) in a
few decoder layers lets the tokens after the chunk attend to them. The tokens of chunk u read chunk
u-1's neighbours from the chunk's last token on (RETRO's shift by 63), so no position sees
neighbours retrieved with tokens after it: the model stays causal. Retrieval is a memory the model
reads, not weights it must grow.

The index (ChunkIndex): each chunk's token-weighted bag of words (weights log(total / count), an IDF
over the training split) projected to 64 dimensions with a fixed random matrix and normalised, so
inner products approximate the TF-IDF cosine of two chunks (a random projection keeps inner
products); FAISS (IVF over an inner-product quantiser; exact below 20,000 chunks) searches them.
Why this and not BM25 or a neural encoder: RETRO's frozen BERT is not available offline, BM25 over
millions of chunks is slow to query per training batch, while the sketch takes one embedding_bag
call per batch and FAISS answers thousands of queries per millisecond on a CPU. FAISS is a
maintained library: pip install faiss-cpu.

While training, neighbours from the query's own document (the chunk itself, its document's other
chunks) are excluded, which needs each query's document: the index's chunks lie on the training
stream's 64-token grid, so a training chunk is found in it by a hash of its tokens. Validation
retrieves from the training index only, with nothing excluded; the end of the run reports how much
of the validation text the neighbours contain (shared 13-grams), so a gain cannot be a leaked copy.
Simplifications against RETRO: the encoder does not attend to the decoder's chunk. The index is built
(and timed, as part of the wall clock: summary.json's setup_s) at every start, or with --index-cache DIR
built once and loaded by later runs over the same shards and settings (the log says which; the stats keep
the first build's time beside the load's).

    python train_gpt2_retro.py --data webmix                           # CCA in layers 5, 8, 11; 2 neighbours
    python train_gpt2_retro.py --data webmix --retro-layers 11 --neighbours 1
    python train_gpt2_retro.py --data webmix --index-cache data/retro_index   # build once, load after
"""

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from kit.core.errors import UserError
from kit.data.datasets import resolve
from kit.data.loader import shuffled_order, validation_batches
from kit.data.shards import EOT, open_shard
from kit.loop.train import Recipe, Trainer, main
from kit.modeling.model import GPT, Block, gpt_config

import train_gpt2 as baseline  # the baseline's optimizer, shared

CHUNK = 64
HASH_MULTIPLIERS = np.random.default_rng(20220108).integers(1, 2**62, size=CHUNK, dtype=np.int64) | 1  # odd: a 64-bit polynomial-like hash


def chunk_hashes(chunks: np.ndarray) -> np.ndarray:
    """(N,) uint64 hashes of (N, CHUNK) token chunks (wrapping arithmetic; collisions ~N^2 / 2^64)."""
    return (chunks.astype(np.uint64) * HASH_MULTIPLIERS.astype(np.uint64)).sum(axis=1, dtype=np.uint64)


def load_faiss():
    try:
        import faiss
    except ImportError:
        raise UserError("train_gpt2_retro.py searches its index with FAISS: pip install faiss-cpu") from None
    return faiss


INDEX_ARRAYS = ("shard_of", "start_of", "doc_first", "doc_last", "hash_order", "sorted_hashes")  # what a cached index keeps beside FAISS's


def index_cache_key(files, grid_offset: int, neighbour_len: int, dim: int, max_chunks: int, seed: int, vocab_size: int) -> str:
    """What an index depends on: its shards (path, size, modification time), the grid and its settings (nprobe is
    a search setting, not part of the index)."""
    shards = [(str(Path(f).resolve()), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    what = json.dumps({"version": 1, "chunk": CHUNK, "shards": shards, "grid_offset": grid_offset, "neighbour_len": neighbour_len,
                       "dim": dim, "max_chunks": max_chunks, "seed": seed, "vocab_size": vocab_size})
    return hashlib.sha256(what.encode()).hexdigest()[:24]


class ChunkIndex:
    """The training split's CHUNK-token chunks (on the grid start = grid_offset + CHUNK * i of every shard, as the
    training stream cuts them), their sketches in a FAISS index, and where each chunk and its document lie. With a
    cache_dir, an index built once for these shards and settings is saved there and loaded by later runs."""

    def __init__(self, files, grid_offset: int, neighbour_len: int = 2 * CHUNK, dim: int = 64, nprobe: int = 16,
                 max_chunks: int = 0, seed: int = 0, vocab_size: int = 50257, cache_dir: str = ""):
        t0 = time.perf_counter()
        self.faiss = load_faiss()
        self.neighbour_len, self.nprobe = neighbour_len, nprobe
        self.shards = [open_shard(f) for f in files]
        self.document_ends = [np.flatnonzero(np.asarray(tokens) == EOT) for tokens in self.shards]
        cache = Path(cache_dir) / index_cache_key(files, grid_offset, neighbour_len, dim, max_chunks, seed, vocab_size) if cache_dir else None
        if cache is not None and (cache / "stats.json").exists():
            self.load(cache)
            self.stats.update(loaded_s=round(time.perf_counter() - t0, 2), cache=str(cache), queries=0, query_s=0.0)
            return
        self.build(grid_offset, neighbour_len, dim, max_chunks, seed, vocab_size)
        self.stats["build_s"] = round(time.perf_counter() - t0, 2)
        if cache is not None:
            self.save(cache)
            self.stats.update(saved_s=round(time.perf_counter() - t0 - self.stats["build_s"], 2), cache=str(cache))

    def origin(self) -> str:
        """'built in 73.7s[, saved to DIR]' or 'loaded in 1.0s from DIR (built in 73.7s)'."""
        s = self.stats
        if "loaded_s" in s:
            return f"loaded in {s['loaded_s']:.1f}s from {s['cache']} (built in {s['build_s']:.1f}s)"
        return f"built in {s['build_s']:.1f}s" + (f", saved to {s['cache']}" if "cache" in s else "")

    def setup_s(self) -> float:
        """What this run spent on its index: the load where it came from the cache, else the build (and its save)."""
        return float(self.stats["loaded_s"] if "loaded_s" in self.stats else self.stats["build_s"] + self.stats.get("saved_s", 0.0))

    def save(self, folder: Path) -> None:
        """The arrays, the sketch weights and the FAISS index into folder, written beside it and renamed into place,
        so that runs started together never read half a save (where one got there first, its copy stays)."""
        partial = folder.with_name(f"{folder.name}.partial{os.getpid()}")
        partial.mkdir(parents=True, exist_ok=True)
        np.savez(partial / "arrays.npz", token_weight=self.token_weight.numpy(), projection=self.projection.numpy(),
                 **{name: getattr(self, name) for name in INDEX_ARRAYS})
        self.faiss.write_index(self.index, str(partial / "faiss.index"))
        (partial / "stats.json").write_text(json.dumps(self.stats))
        try:
            os.rename(partial, folder)
        except OSError:  # another run saved it first
            shutil.rmtree(partial, ignore_errors=True)

    def load(self, folder: Path) -> None:
        arrays = np.load(folder / "arrays.npz")
        for name in INDEX_ARRAYS:
            setattr(self, name, arrays[name])
        self.token_weight, self.projection = torch.from_numpy(arrays["token_weight"]), torch.from_numpy(arrays["projection"])
        self.index = self.faiss.read_index(str(folder / "faiss.index"))
        if hasattr(self.index, "nprobe"):
            self.index.nprobe = self.nprobe
        self.stats = json.loads((folder / "stats.json").read_text())

    def build(self, grid_offset: int, neighbour_len: int, dim: int, max_chunks: int, seed: int, vocab_size: int) -> None:
        shard_ids, starts = [], []
        for s, tokens in enumerate(self.shards):
            begin = np.arange(grid_offset, len(tokens) - neighbour_len + 1, CHUNK, dtype=np.int64)
            shard_ids.append(np.full(len(begin), s, dtype=np.int64))
            starts.append(begin)
        self.shard_of, self.start_of = np.concatenate(shard_ids), np.concatenate(starts)
        if max_chunks and len(self.start_of) > max_chunks:  # the first max_chunks of the split
            self.shard_of, self.start_of = self.shard_of[:max_chunks], self.start_of[:max_chunks]
        if len(self.start_of) == 0:
            raise UserError(f"the training shards hold no chunk of {neighbour_len} tokens to index")
        chunks = self.tokens_at(self.shard_of, self.start_of, CHUNK)
        self.doc_first = self.document_keys(self.shard_of, self.start_of)
        self.doc_last = self.document_keys(self.shard_of, self.start_of + neighbour_len - 1)  # the continuation's document too
        hashes = chunk_hashes(chunks)
        self.hash_order = np.argsort(hashes, kind="stable")
        self.sorted_hashes = hashes[self.hash_order]
        counts = np.bincount(chunks.ravel(), minlength=vocab_size).astype(np.float64)
        self.token_weight = torch.from_numpy(np.log(counts.sum() / (1.0 + counts)).astype(np.float32))
        generator = torch.Generator().manual_seed(seed)
        self.projection = torch.randn(vocab_size, dim, generator=generator) / math.sqrt(dim)
        sketches = np.concatenate([self.sketch(chunks[i : i + 65536]) for i in range(0, len(chunks), 65536)])
        self.index = self.build_index(sketches, dim, seed)
        self.stats = {"chunks": int(len(self.start_of)),
                      "index_bytes": int(sketches.nbytes + sum(a.nbytes for a in (self.shard_of, self.start_of, self.doc_first, self.doc_last,
                                                                                   self.hash_order, self.sorted_hashes))),
                      "kind": type(self.index).__name__,
                      "dim": dim, "queries": 0, "query_s": 0.0}

    def tokens_at(self, shard_of: np.ndarray, start_of: np.ndarray, length: int) -> np.ndarray:
        """(N, length) int64 tokens of the spans starting at start_of in shards shard_of."""
        out = np.empty((len(start_of), length), dtype=np.int64)
        offsets = np.arange(length)
        for s in np.unique(shard_of):
            rows = np.flatnonzero(shard_of == s)
            out[rows] = self.shards[s][start_of[rows, None] + offsets[None, :]]
        return out

    def document_keys(self, shard_of: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """A key per (shard, document) for the token at each position: the shard and the 50256s before it."""
        keys = np.empty(len(positions), dtype=np.int64)
        for s in np.unique(shard_of):
            rows = np.flatnonzero(shard_of == s)
            keys[rows] = s * (1 << 40) + np.searchsorted(self.document_ends[s], positions[rows], side="left")
        return keys

    def sketch(self, chunks: np.ndarray) -> np.ndarray:
        """(N, dim) float32 unit vectors: the chunks' IDF-weighted bags of tokens, randomly projected."""
        ids = torch.from_numpy(np.ascontiguousarray(chunks, dtype=np.int64))
        bags = F.embedding_bag(ids, self.projection, per_sample_weights=self.token_weight[ids], mode="sum")
        return F.normalize(bags, dim=1).numpy()

    def build_index(self, sketches: np.ndarray, dim: int, seed: int):
        faiss = self.faiss
        if len(sketches) < 20_000:
            index = faiss.IndexFlatIP(dim)
        else:
            lists = int(4 * math.sqrt(len(sketches)))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
            sample = np.random.default_rng(seed).choice(len(sketches), min(len(sketches), 40 * lists), replace=False)  # FAISS asks for >= 39 per list
            index.train(sketches[np.sort(sample)])
            index.nprobe = self.nprobe
        index.add(sketches)
        return index

    def own_ids(self, chunks: np.ndarray) -> np.ndarray:
        """The index's id of each chunk found in it by its tokens' hash, else -1."""
        hashes = chunk_hashes(chunks)
        at = np.minimum(np.searchsorted(self.sorted_hashes, hashes), len(self.sorted_hashes) - 1)
        return np.where(self.sorted_hashes[at] == hashes, self.hash_order[at], -1)

    def search(self, chunks: np.ndarray, k: int, exclude_own_document: bool) -> np.ndarray:
        """(N, k) ids of each chunk's nearest chunks; with exclude_own_document, none from the document(s) of the
        chunk's own copy in the index (where it is there) or of its continuation. -1 where fewer than k remain."""
        t0 = time.perf_counter()
        extra = 8 if exclude_own_document else 0
        _, found = self.index.search(self.sketch(chunks), k + extra)
        if exclude_own_document:
            own = self.own_ids(chunks)
            valid = found >= 0
            safe = np.where(valid, found, 0)
            mine_first = np.where(own >= 0, self.doc_first[np.maximum(own, 0)], -1)[:, None]
            mine_last = np.where(own >= 0, self.doc_last[np.maximum(own, 0)], -1)[:, None]
            theirs = (self.doc_first[safe], self.doc_last[safe])
            valid &= ~((theirs[0] == mine_first) | (theirs[0] == mine_last) | (theirs[1] == mine_first) | (theirs[1] == mine_last))
            order = np.argsort(~valid, axis=1, kind="stable")[:, :k]  # the first k valid ones, in rank order
            found = np.where(np.take_along_axis(valid, order, 1), np.take_along_axis(found, order, 1), -1)
        self.stats["queries"] += len(chunks)
        self.stats["query_s"] += time.perf_counter() - t0
        return found

    def neighbours(self, idx: torch.Tensor, k: int, exclude_own_document: bool) -> torch.Tensor:
        """(B, T // CHUNK, k, neighbour_len) int64 tokens: each whole chunk's neighbours with their continuations
        (EOT tokens where fewer than k were found)."""
        B, T = idx.shape
        n = T // CHUNK
        chunks = idx[:, : n * CHUNK].reshape(B * n, CHUNK).cpu().numpy()
        return torch.from_numpy(self.neighbour_tokens(self.search(chunks, k, exclude_own_document))).view(B, n, k, self.neighbour_len)

    def neighbour_tokens(self, ids: np.ndarray) -> np.ndarray:
        """(*ids.shape, neighbour_len) int64: each found chunk with its continuation; EOT tokens where the id is -1."""
        flat = ids.reshape(-1)
        tokens = np.full((len(flat), self.neighbour_len), EOT, dtype=np.int64)
        hit = flat >= 0
        tokens[hit] = self.tokens_at(self.shard_of[flat[hit]], self.start_of[flat[hit]], self.neighbour_len)
        return tokens.reshape(*ids.shape, self.neighbour_len)


class NeighbourEncoder(nn.Module):
    """Neighbour tokens (the decoder's token embeddings, their own positions) through bidirectional blocks."""

    def __init__(self, config, layers: int, neighbour_len: int):
        super().__init__()
        self.wpe = nn.Embedding(neighbour_len, config.n_embd)
        bidirectional = dataclasses.replace(config, attn="bidirectional")  # every neighbour token sees the whole neighbour
        self.blocks = nn.ModuleList(Block(bidirectional) for _ in range(layers))
        self.ln = nn.LayerNorm(config.n_embd)

    def forward(self, tokens, wte):
        x = wte(tokens) + self.wpe(torch.arange(tokens.size(-1), device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.ln(x)


class ChunkedCrossAttention(nn.Module):
    """Positions 64u+63 .. 64u+126 attend to the neighbours of chunk u (RETRO's CCA); positions 0..62 get nothing."""

    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.q = nn.Linear(config.n_embd, config.n_embd)
        self.kv = nn.Linear(config.n_embd, 2 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.proj.residual_projection = True

    def forward(self, h, memory):
        """h (B, T, C); memory (B, n, M, C): the encoded neighbours of each whole chunk (n = T // CHUNK)."""
        B, T, C = h.shape
        n, M = memory.shape[1], memory.shape[2]
        if n == 0:
            return torch.zeros_like(h)
        queries = F.pad(h[:, CHUNK - 1 : CHUNK - 1 + n * CHUNK], (0, 0, 0, CHUNK - 1 + n * CHUNK - T))  # row i: position i + 63
        heads = lambda t, L: t.view(B * n, L, self.n_head, C // self.n_head).transpose(1, 2)
        q = heads(self.q(queries).reshape(B * n, CHUNK, C), CHUNK)
        k, v = (heads(t, M) for t in self.kv(memory.reshape(B * n, M, C)).split(C, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, n * CHUNK, C)
        out = F.pad(y, (0, 0, CHUNK - 1, 0))[:, :T]  # back to positions 63 .. 63 + n * 64 - 1, cut at T
        return self.proj(out)


class RetroBlock(Block):
    """Attention, then chunked cross-attention to the neighbours, then the MLP."""

    def __init__(self, config):
        super().__init__(config)
        self.ln_c = nn.LayerNorm(config.n_embd)
        self.cca = ChunkedCrossAttention(config)

    def forward(self, x, memory):
        x = x + self.attn(self.ln_1(x))
        x = x + self.cca(self.ln_c(x), memory)
        return x + self.mlp(self.ln_2(x))


class RetroGPT(GPT):
    """The baseline GPT with RetroBlocks at retro_layers, reading the neighbours an index returns."""

    def __init__(self, config, retro_layers, index: ChunkIndex, neighbours: int = 2, encoder_layers: int = 1):
        super().__init__(config)
        for i in retro_layers:
            self.h[i] = RetroBlock(config)
        self.index, self.k = index, neighbours
        self.encoder = NeighbourEncoder(config, encoder_layers, index.neighbour_len)
        for module in (*(self.h[i] for i in retro_layers), self.encoder):
            module.apply(self._init_weights)
        self.prefetched = None  # (the batch's device tensor: address, shape; training?; its neighbours on the device)
        self.retrievals = {"prefetched": 0, "in_forward": 0}

    def prefetch(self, idx_cpu: torch.Tensor, idx: torch.Tensor) -> None:
        """Search a batch's neighbours from its CPU copy as it is moved to the device (RetroTrainer.to_device), while
        the GPU still works on the steps queued before it; retrieve() hands them over. Searching in the forward
        pass instead first waits for the GPU (the tokens' copy to the CPU), then leaves it idle for the search."""
        tokens = self.index.neighbours(idx_cpu, self.k, exclude_own_document=self.training)
        if idx.is_cuda:
            tokens = tokens.pin_memory()
        self.prefetched = (idx.data_ptr(), tuple(idx.shape), self.training, tokens.to(idx.device, non_blocking=True))

    @torch.compiler.disable  # a CPU search: outside the compiled graph
    def retrieve(self, idx):
        ready, self.prefetched = self.prefetched, None
        if ready is not None and ready[:3] == (idx.data_ptr(), tuple(idx.shape), self.training):  # this very batch, in this mode
            self.retrievals["prefetched"] += 1
            return ready[3]
        self.retrievals["in_forward"] += 1
        tokens = self.index.neighbours(idx, self.k, exclude_own_document=self.training)
        return tokens.to(idx.device, non_blocking=True)

    def memory(self, idx):
        """(B, n, k * neighbour_len, C): each whole chunk's encoded neighbours, side by side."""
        tokens = self.retrieve(idx)
        B, n, k, r = tokens.shape
        encoded = self.encoder(tokens.view(B * n * k, r), self.wte)
        return encoded.view(B, n, k * r, -1)

    def hidden(self, idx):
        memory = self.memory(idx) if any(isinstance(b, RetroBlock) for b in self.h) else None
        x = self.embed(idx)
        for block in self.h:
            x = block(x, memory) if isinstance(block, RetroBlock) else block(x)
        return self.ln_f(x)

    def flops_per_token(self, seq_len: int) -> int:
        """Per decoder token: the decoder's linears and attention as the baseline counts them; the encoder's and
        the CCA keys' work on k * neighbour_len / 64 neighbour tokens per decoder token; CCA's scores over them."""
        from kit.modeling.flops import attention_flops_per_token, linear_weight_count

        d, r = self.config.n_embd, self.index.neighbour_len
        per_token = self.k * r / CHUNK  # neighbour tokens read per decoder token
        retro = [b for b in self.h if isinstance(b, RetroBlock)]
        decoder = linear_weight_count(self) - linear_weight_count(self.encoder) - sum(b.cca.kv.weight.numel() for b in retro)
        encoder = per_token * (6 * linear_weight_count(self.encoder) + attention_flops_per_token(len(self.encoder.blocks), d, r))
        cca = len(retro) * (6 * per_token * 2 * d * d + 12 * d * self.k * r)
        return int(6 * decoder + attention_flops_per_token(self.config.n_layer, d, seq_len) + encoder + cca)


def shared_ngrams(text: np.ndarray, reference: np.ndarray, n: int = 13):
    """(n-grams of text found in reference, n-grams of text): contiguous token n-grams, compared by hash."""
    def grams(tokens):
        windows = np.lib.stride_tricks.sliding_window_view(tokens, n)
        return (windows.astype(np.uint64) * HASH_MULTIPLIERS[:n].astype(np.uint64)).sum(axis=1, dtype=np.uint64)
    if len(text) < n:
        return 0, 0
    ours = grams(text)
    rows = [grams(row) for row in reference if len(row) >= n]
    if not rows:  # no neighbour at all
        return 0, len(ours)
    return int(np.isin(ours, np.unique(np.concatenate(rows))).sum()), len(ours)


def validation_chunk_pairs(val_path, seq_len: int, sequences: int) -> tuple:
    """(query chunks, the chunk after each), both (N, CHUNK), from the whole chunks of the first `sequences` validation sequences."""
    queries, following = [], []
    for x, _ in validation_batches(val_path, sequences * seq_len, seq_len, sequences, strict=False):
        n = x.size(1) // CHUNK
        chunks = x[:, : n * CHUNK].reshape(x.size(0), n, CHUNK).numpy()
        queries.append(chunks[:, :-1].reshape(-1, CHUNK))
        following.append(chunks[:, 1:].reshape(-1, CHUNK))
    return np.concatenate(queries), np.concatenate(following)


def next_chunk_overlap(following: np.ndarray, neighbour_tokens: np.ndarray) -> dict:
    """What each query's neighbours (neighbour_tokens[i]: its k neighbours with their continuations) hand the model of
    the text after it (following[i]): the share of those 13-grams found in them, and the share of queries with any."""
    found = total = with_any = 0
    for text, reference in zip(following, neighbour_tokens):
        hit, count = shared_ngrams(text, reference)
        found, total, with_any = found + hit, total + count, with_any + (hit > 0)
    return {"next_chunk_13gram_share": found / max(1, total), "chunks_with_a_shared_13gram": with_any / max(1, len(following)),
            "chunks": len(following)}


def contamination(index: ChunkIndex, val_path, seq_len: int, k: int, sequences: int = 64) -> dict:
    """How much of the validation text its chunks' neighbours contain (next_chunk_overlap of each whole chunk of the
    first `sequences` validation sequences, retrieved with nothing excluded): what a leaked copy would hand the model."""
    queries, following = validation_chunk_pairs(val_path, seq_len, sequences)
    overlap = next_chunk_overlap(following, index.neighbour_tokens(index.search(queries, k, exclude_own_document=False)))
    return {"val_13gram_share_in_neighbours": overlap["next_chunk_13gram_share"],
            "val_chunks_with_a_shared_13gram": overlap["chunks_with_a_shared_13gram"], "val_chunks_checked": overlap["chunks"]}


@dataclass
class Hyperparameters(baseline.Hyperparameters):
    MODEL_SIZE_PRESETS: ClassVar[dict] = {"tiny": {"retro_layers": "1"}}
    retro_layers: str = field(default="5,8,11", metadata={"help": "decoder layers (0-based, comma-separated) with chunked cross-attention to the neighbours"})
    neighbours: int = field(default=2, metadata={"help": "neighbours retrieved per 64-token chunk"})
    neighbour_len: int = field(default=128, metadata={"help": "tokens of each neighbour: its chunk and what follows it (RETRO: 64 + 64)"})
    encoder_layers: int = field(default=1, metadata={"help": "bidirectional blocks of the neighbour encoder"})
    sketch_dim: int = field(default=64, metadata={"help": "dimensions of the chunks' random-projection sketches"})
    nprobe: int = field(default=16, metadata={"help": "FAISS IVF lists searched per query (recall against speed)"})
    index_chunks: int = field(default=0, metadata={"help": "index only the first N chunks of the training split (0: all)"})
    index_cache: str = field(default="", metadata={"help": "a folder: the index built for these shards and settings is saved there "
                                                            "once and loaded by later runs (empty: built at every start)"})


def retro_layers(cfg: Hyperparameters, n_layer: int) -> tuple:
    try:
        layers = tuple(int(x) for x in cfg.retro_layers.split(",") if x != "")
    except ValueError:
        raise UserError(f"--retro-layers {cfg.retro_layers!r}: layer numbers separated by commas") from None
    if not layers or any(not 0 <= i < n_layer for i in layers):
        raise UserError(f"--retro-layers {cfg.retro_layers}: one or more of the model's layers 0..{n_layer - 1}")
    return layers


def build_model(cfg: Hyperparameters):
    config = gpt_config(cfg.model_size, block_size=cfg.seq_len, attn=cfg.attn)
    layers = retro_layers(cfg, config.n_layer)
    if cfg.seq_len % CHUNK or cfg.align_bos:
        raise UserError(f"train_gpt2_retro.py cuts sequences into {CHUNK}-token chunks on the training stream's grid: "
                        f"--seq-len a multiple of {CHUNK} (not {cfg.seq_len}) and --align-bos 0")
    if cfg.neighbours < 1 or cfg.neighbour_len < CHUNK or cfg.encoder_layers < 0:
        raise UserError(f"--neighbours {cfg.neighbours} (>= 1), --neighbour-len {cfg.neighbour_len} (>= {CHUNK}), --encoder-layers {cfg.encoder_layers} (>= 0)")
    return RetroGPT(config, layers, build_index(cfg), cfg.neighbours, cfg.encoder_layers)


def build_index(cfg: Hyperparameters) -> ChunkIndex:
    """The run's index over its training split, on the grid its training stream cuts (also scripts/bench_retrieval.py's)."""
    files = [str(f) for f in resolve(cfg).train]
    grid_offset = shuffled_order(files, cfg.data_order_seed, cfg.seq_len)[1] % CHUNK  # where the stream's sequences start
    index = ChunkIndex(files, grid_offset, cfg.neighbour_len, cfg.sketch_dim, cfg.nprobe, cfg.index_chunks, cfg.seed, cache_dir=cfg.index_cache)
    print(f"retrieval index: {index.stats['chunks']:,} chunks of {CHUNK} tokens ({index.stats['kind']}, {cfg.sketch_dim}-dim sketches, "
          f"{index.stats['index_bytes'] / 2**20:.0f} MiB), {index.origin()}", flush=True)
    return index


class RetroTrainer(Trainer):
    """The loop, searching each batch's neighbours as the batch goes to the device, and with the index's build and
    query costs and the validation contamination in the run's report."""

    def to_device(self, batch):
        x, y = super().to_device(batch)
        self.model.prefetch(batch[0], x)
        return x, y

    def setup_seconds(self) -> float:
        return self.model.index.setup_s()  # the index, built or loaded: part of the user's wall clock

    def run_report(self) -> dict:
        index = self.model.index
        report = {"index": dict(index.stats, queries_per_s=index.stats["queries"] / max(index.stats["query_s"], 1e-9)),
                  "retrievals": dict(self.model.retrievals)}
        report["contamination"] = contamination(index, self.files.val, self.cfg.seq_len, self.model.k)
        return report


RECIPE = Recipe(Hyperparameters, build_model, baseline.build_optimizers, script=__file__, description=__doc__.splitlines()[0],
                trainer=RetroTrainer)

if __name__ == "__main__":
    sys.exit(main(RECIPE))
