"""RETRO's retrieval index on its own: its build time, size and query speed, what it retrieves, and contamination.

    python3 scripts/bench_retrieval.py --data webmix [--sequences 256] [--out DIR] [train_gpt2_retro.py's flags]

Builds train_gpt2_retro.py's index over the training split as a run would (the same chunk grid,
sketches and FAISS index), on the CPU, then measures:
- query speed: training chunks with their own documents excluded (as while training) and
  validation chunks with nothing excluded, in batches of one baseline step's chunks (8,192), after
  one untimed batch, the median of --repeats timings with their range (one timing of a few thousand
  queries on a busy 2-core machine varies by 10-20%); the seconds per training step that retrieval
  adds, where it is not overlapped with the GPU;
- what the neighbours hand the model: for each chunk, the share of the NEXT chunk's 13-grams found
  in its neighbours (with their continuations). On the validation set this is the contamination
  check (a copy of the validation text in the training split would show here); on training chunks,
  with their own documents excluded, it shows how much near-duplicate text webmix holds across
  documents, the level the validation figure is to be read against.
Prints the figures and writes retrieval.json into --out. FAISS uses every core unless OMP_NUM_THREADS
says otherwise; the build and query times are this machine's.
"""

import argparse
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
from kit.tools.runs import load_script  # noqa: E402

STEP_CHUNKS = 524_288 // 64  # the chunks of one baseline step of 524,288 tokens


def timed_queries(index, chunks: np.ndarray, k: int, exclude_own_document: bool) -> tuple:
    """(ids, queries per second) of searching the chunks in batches of STEP_CHUNKS."""
    t0, ids = time.perf_counter(), []
    for i in range(0, len(chunks), STEP_CHUNKS):
        ids.append(index.search(chunks[i : i + STEP_CHUNKS], k, exclude_own_document))
    return np.concatenate(ids), len(chunks) / (time.perf_counter() - t0)


def query_speed(index, chunks: np.ndarray, k: int, exclude_own_document: bool, repeats: int) -> tuple:
    """(ids, median queries per second, [each timing's]) over `repeats` timings, after one untimed batch (the
    first search of a process also starts FAISS's threads and touches its lists)."""
    timed_queries(index, chunks[:STEP_CHUNKS], k, exclude_own_document)
    timings = [timed_queries(index, chunks, k, exclude_own_document) for _ in range(max(1, repeats))]
    return timings[0][0], float(np.median([qps for _, qps in timings])), [round(qps, 1) for _, qps in timings]


def training_chunks(index, count: int, seed: int) -> tuple:
    """(query chunks, the chunk after each) at `count` random places of the index."""
    pick = np.random.default_rng(seed).choice(len(index.start_of), min(count, len(index.start_of)), replace=False)
    shard, start = index.shard_of[pick], index.start_of[pick]
    return index.tokens_at(shard, start, 64), index.tokens_at(shard, start + 64, 64)


def spread(timings: list) -> str:
    """'median of 3: 4,189-4,615' for a list of queries-per-second figures."""
    return f"median of {len(timings)}: {min(timings):,.0f}-{max(timings):,.0f}"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="other flags: train_gpt2_retro.py's (--data, --neighbours, --nprobe, ...)")
    parser.add_argument("--sequences", type=int, default=256, help="validation sequences whose chunks are queried")
    parser.add_argument("--repeats", type=int, default=3, help="timings of each query set (the median is reported, and the range)")
    parser.add_argument("--out", help="folder for retrieval.json")
    args, script_flags = parser.parse_known_args(argv)
    retro = load_script("train_gpt2_retro.py")
    cfg, _ = parse_config(retro.Hyperparameters, script_flags)
    index = retro.build_index(cfg)
    val_queries, val_following = retro.validation_chunk_pairs(resolve(cfg).val, cfg.seq_len, args.sequences)
    train_queries, train_following = training_chunks(index, len(val_queries), cfg.seed)
    train_ids, train_qps, train_timings = query_speed(index, train_queries, cfg.neighbours, True, args.repeats)
    val_ids, val_qps, val_timings = query_speed(index, val_queries, cfg.neighbours, False, args.repeats)
    result = {
        "index": {k: index.stats[k] for k in ("chunks", "build_s", "loaded_s", "saved_s", "index_bytes", "kind", "dim") if k in index.stats},
        "neighbours": cfg.neighbours, "nprobe": cfg.nprobe, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "queries_per_s_training": train_qps, "queries_per_s_validation": val_qps,
        "timings_queries_per_s_training": train_timings, "timings_queries_per_s_validation": val_timings,
        "retrieval_s_per_baseline_step": STEP_CHUNKS / train_qps,
        "validation": retro.next_chunk_overlap(val_following, index.neighbour_tokens(val_ids)),
        "training_own_documents_excluded": retro.next_chunk_overlap(train_following, index.neighbour_tokens(train_ids)),
    }
    lines = [f"index: {result['index']['chunks']:,} chunks, {result['index']['kind']}, {result['index']['index_bytes'] / 2**20:.0f} MiB, "
             f"{index.origin()} ({os.cpu_count()} cores)",
             f"queries: {train_qps:,.0f}/s on training chunks (own documents excluded; {spread(train_timings)}), "
             f"{val_qps:,.0f}/s on validation chunks ({spread(val_timings)}); "
             f"{result['retrieval_s_per_baseline_step']:.2f} s per baseline step of 8,192 chunks",
             *(f"{name}: {r['chunks']:,} chunks, {r['next_chunk_13gram_share']:.2%} of next-chunk 13-grams in the neighbours, "
               f"{r['chunks_with_a_shared_13gram']:.2%} of chunks with any"
               for name, r in (("validation", result["validation"]), ("training, own documents excluded", result["training_own_documents_excluded"])))]
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "retrieval.json").write_text(json.dumps(result, indent=1))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_cli(main))
