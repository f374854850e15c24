"""RETRO's retrieval index on its own: its build time, size and query speed, what it retrieves, and contamination.

    python3 scripts/bench_retrieval.py --data webmix [--sequences 256] [--out DIR] [train_gpt2_retro.py's flags]

Builds train_gpt2_retro.py's index over the training split as a run would (the same chunk grid,
sketches and FAISS index), on the CPU, then measures:
- query speed: training chunks with their own documents excluded (as while training) and
  validation chunks with nothing excluded, in batches of one baseline step's chunks (8,192); the
  seconds per training step that retrieval adds, where it is not overlapped with the GPU;
- what the neighbours hand the model: for each chunk, the share of the NEXT chunk's 13-grams found
  in its neighbours (with their continuations). On the validation set this is the contamination
  check (a copy of the validation text in the training split would show here); on training chunks,
  with their own documents excluded, it shows how much near-duplicate text webmix holds across
  documents, the level the validation figure is to be read against.
Prints the figures and writes retrieval.json into --out. FAISS uses every core unless OMP_NUM_THREADS
says otherwise; the build and query times are this machine's.
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kit.core.config import parse_config  # noqa: E402
from kit.core.errors import run_cli  # noqa: E402
from kit.data.datasets import resolve  # noqa: E402
from kit.data.loader import validation_batches  # noqa: E402
from kit.tools.runs import load_script  # noqa: E402

STEP_CHUNKS = 524_288 // 64  # the chunks of one baseline step of 524,288 tokens


def timed_queries(index, chunks: np.ndarray, k: int, exclude_own_document: bool) -> tuple:
    """(ids, queries per second) of searching the chunks in batches of STEP_CHUNKS."""
    t0, ids = time.perf_counter(), []
    for i in range(0, len(chunks), STEP_CHUNKS):
        ids.append(index.search(chunks[i : i + STEP_CHUNKS], k, exclude_own_document))
    return np.concatenate(ids), len(chunks) / (time.perf_counter() - t0)


def next_chunk_share(retro, index, following: np.ndarray, ids: np.ndarray) -> dict:
    """For each query: the share of its next chunk's 13-grams found in its neighbours (with continuations);
    the mean share over all 13-grams and the share of queries with any."""
    found = total = with_any = 0
    for row, neighbour_ids in zip(following, ids):
        hits = neighbour_ids[neighbour_ids >= 0]
        tokens = index.tokens_at(index.shard_of[hits], index.start_of[hits], index.neighbour_len) if len(hits) else np.empty((0, 0), np.int64)
        hit, count = retro.shared_ngrams(row, tokens)
        found, total, with_any = found + hit, total + count, with_any + (hit > 0)
    return {"next_chunk_13gram_share": found / max(1, total), "chunks_with_a_shared_13gram": with_any / max(1, len(following))}


def validation_chunks(retro, path, seq_len: int, sequences: int) -> tuple:
    """(query chunks, the chunk after each) from the first `sequences` validation sequences."""
    queries, following = [], []
    for x, _ in validation_batches(path, sequences * seq_len, seq_len, sequences, strict=False):
        n = x.size(1) // retro.CHUNK
        chunks = x[:, : n * retro.CHUNK].reshape(x.size(0), n, retro.CHUNK).numpy()
        queries.append(chunks[:, :-1].reshape(-1, retro.CHUNK))
        following.append(chunks[:, 1:].reshape(-1, retro.CHUNK))
    return np.concatenate(queries), np.concatenate(following)


def training_chunks(index, count: int, seed: int) -> tuple:
    """(query chunks, the chunk after each) at `count` random places of the index."""
    pick = np.random.default_rng(seed).choice(len(index.start_of), min(count, len(index.start_of)), replace=False)
    shard, start = index.shard_of[pick], index.start_of[pick]
    return index.tokens_at(shard, start, 64), index.tokens_at(shard, start + 64, 64)


def main(argv=None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    out = None
    if "--out" in argv:
        i = argv.index("--out")
        out, argv = Path(argv[i + 1]), argv[:i] + argv[i + 2:]
    sequences = 256
    if "--sequences" in argv:
        i = argv.index("--sequences")
        sequences, argv = int(argv[i + 1]), argv[:i] + argv[i + 2:]
    retro = load_script("train_gpt2_retro.py")
    cfg, _ = parse_config(retro.Hyperparameters, argv)
    index = retro.build_index(cfg)
    val_queries, val_following = validation_chunks(retro, resolve(cfg).val, cfg.seq_len, sequences)
    train_queries, train_following = training_chunks(index, len(val_queries), cfg.seed)
    train_ids, train_qps = timed_queries(index, train_queries, cfg.neighbours, exclude_own_document=True)
    val_ids, val_qps = timed_queries(index, val_queries, cfg.neighbours, exclude_own_document=False)
    result = {
        "index": {k: index.stats[k] for k in ("chunks", "build_s", "index_bytes", "kind", "dim")},
        "neighbours": cfg.neighbours, "nprobe": cfg.nprobe, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "queries_per_s_training": train_qps, "queries_per_s_validation": val_qps,
        "retrieval_s_per_baseline_step": STEP_CHUNKS / train_qps,
        "validation": {"chunks": len(val_queries), **next_chunk_share(retro, index, val_following, val_ids)},
        "training_own_documents_excluded": {"chunks": len(train_queries), **next_chunk_share(retro, index, train_following, train_ids)},
    }
    lines = [f"index: {result['index']['chunks']:,} chunks, {result['index']['kind']}, {result['index']['index_bytes'] / 2**20:.0f} MiB, "
             f"built in {result['index']['build_s']:.1f} s ({os.cpu_count()} cores)",
             f"queries: {train_qps:,.0f}/s on training chunks (own documents excluded), {val_qps:,.0f}/s on validation chunks; "
             f"{result['retrieval_s_per_baseline_step']:.2f} s per baseline step of 8,192 chunks",
             *(f"{name}: {r['chunks']:,} chunks, {r['next_chunk_13gram_share']:.2%} of next-chunk 13-grams in the neighbours, "
               f"{r['chunks_with_a_shared_13gram']:.2%} of chunks with any"
               for name, r in (("validation", result["validation"]), ("training, own documents excluded", result["training_own_documents_excluded"])))]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "retrieval.json").write_text(json.dumps(result, indent=1))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_cli(main))
