"""Retrieval-augmented training (train_gpt2_retro.py): the index finds a chunk's copies and never, while training,
its own document; chunked cross-attention reads chunk u's neighbours only from position 64u + 63 on, so the
model with retrieval in the loop is causal; the contamination check counts copied text; the script trains."""

import numpy as np
import pytest
import torch

from kit.data.shards import EOT, write_shard

pytest.importorskip("faiss")

from train_gpt2_retro import CHUNK, ChunkedCrossAttention, ChunkIndex, RetroGPT, chunk_hashes, contamination, shared_ngrams  # noqa: E402


def documents(lengths, seed):
    """A stream of documents of the given lengths (each starting with EOT), random tokens below 1000."""
    rng = np.random.default_rng(seed)
    return np.concatenate([np.concatenate([[EOT], rng.integers(0, 1000, size=n - 1)]) for n in lengths])


@pytest.fixture
def corpus(tmp_path):
    """Two shards of 300-token documents; the second document of shard 0 appears again (copied) in shard 1, placed
    so that the chunk at 320 of shard 0 lies on shard 1's 64-token grid too (at 3072)."""
    first = documents([300] * 20, seed=1)
    copy = first[300:600]
    second = np.concatenate([documents([300] * 10 + [52], seed=2), copy, documents([300] * 9, seed=3)])
    paths = [tmp_path / "train_0.bin", tmp_path / "train_1.bin"]
    write_shard(paths[0], first)
    write_shard(paths[1], second)
    return [str(p) for p in paths], first, second


def test_a_chunk_finds_itself_and_its_copy_but_while_training_only_the_copy_in_another_document(corpus):
    files, first, second = corpus
    index = ChunkIndex(files, grid_offset=0, neighbour_len=2 * CHUNK, dim=64)
    assert index.stats["chunks"] == sum(len(range(0, len(t) - 2 * CHUNK + 1, CHUNK)) for t in (first, second))
    assert index.stats["kind"] == "IndexFlatIP"
    query = first[320:320 + CHUNK][None]  # inside document 1 of shard 0, on the 64-token grid
    own = index.own_ids(query)[0]
    assert own >= 0 and (index.shard_of[own], index.start_of[own]) == (0, 320)
    top = index.search(query, 2, exclude_own_document=False)[0]
    places = {(int(index.shard_of[i]), int(index.start_of[i])) for i in top}
    assert (0, 320) in places  # itself
    kept = index.search(query, 2, exclude_own_document=True)[0]
    assert all(index.doc_first[i] not in (index.doc_first[own], index.doc_last[own]) for i in kept if i >= 0)
    copy_start = 10 * 300 + 52 + 20  # the same text in shard 1, another document
    assert (int(index.shard_of[kept[0]]), int(index.start_of[kept[0]])) == (1, copy_start)
    tokens = index.neighbours(torch.from_numpy(first[320:320 + 2 * CHUNK][None].astype(np.int64)), 1, exclude_own_document=True)
    assert tokens.shape == (1, 2, 1, 2 * CHUNK)
    np.testing.assert_array_equal(tokens[0, 0, 0].numpy(), second[copy_start:copy_start + 2 * CHUNK])


def test_an_index_saved_once_is_loaded_for_the_same_shards_and_settings_and_finds_the_same_neighbours(corpus, tmp_path):
    """--index-cache: the first run builds and saves, the next loads (its stats keep the build's time beside the load's)
    and searches alike; other settings or a changed shard get an index of their own."""
    files, first, _ = corpus
    cache = tmp_path / "cache"
    built = ChunkIndex(files, 0, max_chunks=0, seed=3, cache_dir=str(cache))
    assert "loaded_s" not in built.stats and built.setup_s() == built.stats["build_s"] + built.stats["saved_s"]
    loaded = ChunkIndex(files, 0, seed=3, cache_dir=str(cache))
    assert loaded.stats["loaded_s"] >= 0 and loaded.stats["build_s"] == built.stats["build_s"] and loaded.setup_s() == loaded.stats["loaded_s"]
    queries = first[: 8 * CHUNK].reshape(8, CHUNK)
    for exclude in (False, True):
        assert np.array_equal(loaded.search(queries, 3, exclude), built.search(queries, 3, exclude))
    assert np.array_equal(loaded.neighbour_tokens(loaded.search(queries, 2, True)), built.neighbour_tokens(built.search(queries, 2, True)))
    assert len(list(cache.iterdir())) == 1
    ChunkIndex(files, 0, seed=4, cache_dir=str(cache))  # another sketch: another index
    write_shard(files[1], np.concatenate([[EOT], np.arange(4000) % 1000]))  # the shard changed
    assert "loaded_s" not in ChunkIndex(files, 0, seed=3, cache_dir=str(cache)).stats
    assert len([p for p in cache.iterdir() if ".partial" not in p.name]) == 3 and not [p for p in cache.iterdir() if ".partial" in p.name]


def test_sketches_are_unit_vectors_and_identical_chunks_match_exactly(corpus):
    files, first, _ = corpus
    index = ChunkIndex(files, grid_offset=0)
    chunks = np.stack([first[0:CHUNK], first[0:CHUNK], first[700:700 + CHUNK]])
    s = index.sketch(chunks)
    np.testing.assert_allclose(np.linalg.norm(s, axis=1), 1.0, rtol=1e-5)
    assert s[0] @ s[1] == pytest.approx(1.0, abs=1e-5) and abs(s[0] @ s[2]) < 0.6
    assert chunk_hashes(chunks[:2])[0] == chunk_hashes(chunks[:2])[1] != chunk_hashes(chunks[2:])[0]


def test_chunked_cross_attention_gives_position_t_only_the_neighbours_of_chunks_ending_by_t():
    """Output at position t depends on chunk u's memory iff 64u + 63 <= t < 64u + 127; positions 0..62 get zeros."""
    torch.manual_seed(0)
    from kit.modeling.model import gpt_config

    cca = ChunkedCrossAttention(gpt_config("tiny", block_size=256)).eval()
    h = torch.randn(1, 200, cca.q.in_features)  # 3 whole chunks and a partial one
    memory = torch.randn(1, 3, 10, cca.q.in_features)
    base = cca(h, memory)
    torch.testing.assert_close(base[:, :CHUNK - 1], cca.proj.bias.expand(1, CHUNK - 1, -1))
    for u in range(3):
        changed = memory.clone()
        changed[:, u] = torch.randn(10, cca.q.in_features)
        moved = (cca(h, changed) - base).abs().amax(-1)[0] > 1e-6
        expected = torch.zeros(200, dtype=torch.bool)
        expected[CHUNK * u + CHUNK - 1 : min(200, CHUNK * u + 2 * CHUNK - 1)] = True
        assert torch.equal(moved, expected), u


def test_the_model_with_retrieval_in_the_loop_is_causal(corpus):
    """Changing token p changes chunk p // 64, hence its neighbours: no logit before p may move."""
    from kit.modeling.model import gpt_config

    files, first, _ = corpus
    torch.manual_seed(3)
    index = ChunkIndex(files, grid_offset=0)
    model = RetroGPT(gpt_config("tiny", block_size=256), (0, 1), index, neighbours=2).eval()
    x = torch.from_numpy(first[:256][None].astype(np.int64)).clone()
    retrieved_other = []
    with torch.no_grad():
        base = model(x)
        for p in (10, 64, 130, 200):
            changed = x.clone()
            changed[0, p:] = torch.randint(0, 1000, (256 - p,))
            retrieved_other.append(not torch.equal(model.retrieve(changed)[:, p // CHUNK], model.retrieve(x)[:, p // CHUNK]))
            torch.testing.assert_close(model(changed)[:, :p], base[:, :p], atol=1e-5, rtol=1e-5)
    assert any(retrieved_other)  # the changed chunks did retrieve other neighbours


def test_contamination_counts_validation_text_found_in_the_neighbours(corpus, tmp_path):
    files, first, _ = corpus
    index = ChunkIndex(files, grid_offset=0)
    copied, fresh = tmp_path / "val_copied.bin", tmp_path / "val_fresh.bin"
    write_shard(copied, first[:1025])  # the training text itself
    write_shard(fresh, documents([300] * 4, seed=9)[:1025])
    leak = contamination(index, copied, seq_len=256, k=1, sequences=4)
    clean = contamination(index, fresh, seq_len=256, k=1, sequences=4)
    assert leak["val_chunks_checked"] == 4 * 3 and leak["val_13gram_share_in_neighbours"] > 0.9
    assert clean["val_13gram_share_in_neighbours"] == 0.0 and clean["val_chunks_with_a_shared_13gram"] == 0.0
    assert shared_ngrams(np.arange(20), [np.arange(5, 40)]) == (3, 8)  # 13-grams starting at 5, 6, 7 of 0..7
    assert shared_ngrams(np.arange(20), np.empty((0, 0), np.int64)) == (0, 8)  # no neighbour: nothing shared


def test_retro_script_trains_reports_its_index_and_refuses_what_it_cannot_do(tmp_path):
    import json

    import train_gpt2_retro as script
    from conftest import FAST, read_metrics
    from kit.core.config import parse_config
    from kit.core.errors import UserError
    from kit.loop.train import main

    flags = [*FAST, "--seq-len", "128", "--batch-tokens", "512", "--data", "synthetic"]
    assert main(script.RECIPE, [*flags, "--max-steps", "2", "--val-every", "2", "--out-dir", str(tmp_path)]) == 0
    assert len(read_metrics(tmp_path)) == 2 and read_metrics(tmp_path, "val")[-1]["val_loss"] < 11
    summary = json.loads((tmp_path / "summary.json").read_text())
    report = summary["run_report"]
    assert report["index"]["chunks"] > 1000 and report["index"]["queries"] > 0 and report["index"]["build_s"] >= 0
    assert summary["setup_s"] == report["index"]["build_s"]  # the one-time cost an equal-wall-time comparison charges
    # searched as they went to the device: the 2 steps' batches, the 2 validations' and the warm-up's; in the forward
    # pass only the warm-up's evaluation pass, which reuses the warm-up's batch
    assert report["retrievals"] == {"prefetched": 5, "in_forward": 1}
    assert 0 <= report["contamination"]["val_13gram_share_in_neighbours"] <= 1
    cfg, _ = parse_config(script.Hyperparameters, flags)
    model = script.build_model(cfg)
    cached, _ = parse_config(script.Hyperparameters, [*flags, "--index-cache", str(tmp_path / "index_cache")])
    assert "loaded_s" not in script.build_index(cached).stats and "loaded_s" in script.build_index(cached).stats
    assert [type(b).__name__ for b in model.h] == ["Block", "RetroBlock"]  # tiny: the top layer of two
    for bad, message in ((["--seq-len", "96", "--batch-tokens", "384"], "multiple of 64"), (["--retro-layers", "2"], "layers 0..1"), (["--neighbours", "0"], "--neighbours 0")):
        with pytest.raises(UserError, match=message):
            script.build_model(parse_config(script.Hyperparameters, [*flags, *bad])[0])


def test_the_retrieval_benchmark_measures_the_index_and_what_its_neighbours_hold(corpus, tmp_path, isolated_data_dir):
    """scripts/bench_retrieval.py with train_gpt2_retro.py's next_chunk_overlap: a chunk whose document was copied into another hands the model its next chunk
    (every 13-gram of it) through the copy's continuation, even with its own document excluded; a chunk of a
    document found nowhere else hands it nothing; and the whole benchmark runs on a tiny synthetic split."""
    import json

    from conftest import load_module

    bench = load_module("scripts/bench_retrieval.py", "bench_retrieval")
    import train_gpt2_retro as retro

    files, first, _ = corpus
    index = ChunkIndex(files, grid_offset=0)
    queries = np.stack([first[320:320 + CHUNK], first[960:960 + CHUNK]])  # on the grid: in the copied document; in document 3
    following = np.stack([first[384:384 + CHUNK], first[1024:1024 + CHUNK]])
    ids, queries_per_s = bench.timed_queries(index, queries, 1, exclude_own_document=True)
    assert queries_per_s > 0
    tokens = index.neighbour_tokens(ids)
    assert retro.next_chunk_overlap(following[:1], tokens[:1]) == {"next_chunk_13gram_share": 1.0, "chunks_with_a_shared_13gram": 1.0, "chunks": 1}
    assert retro.next_chunk_overlap(following[1:], tokens[1:]) == {"next_chunk_13gram_share": 0.0, "chunks_with_a_shared_13gram": 0.0, "chunks": 1}
    lines = bench.main(["--model-size", "tiny", "--data", "synthetic", "--seq-len", "128", "--sequences", "4", "--out", str(tmp_path / "b")])
    result = json.loads((tmp_path / "b" / "retrieval.json").read_text())
    assert result["validation"]["chunks"] == 4 * 1 and result["training_own_documents_excluded"]["chunks"] == 4
    assert result["index"]["chunks"] > 1000 and result["queries_per_s_training"] > 0 and "chunks with any" in lines
    timings = result["timings_queries_per_s_training"]  # the default 3 timings, the median reported
    assert len(timings) == 3 and min(timings) <= result["queries_per_s_training"] <= max(timings) and "median of 3" in lines
    cached = ["--model-size", "tiny", "--data", "synthetic", "--seq-len", "128", "--sequences", "4", "--index-cache", str(tmp_path / "cache")]
    assert "MiB, built in" in bench.main([*cached, "--out", str(tmp_path / "c1")]).splitlines()[0]
    assert "MiB, loaded in" in bench.main([*cached, "--out", str(tmp_path / "c2")]).splitlines()[0]  # the second run loads it


def test_neighbours_searched_as_a_batch_goes_to_the_device_train_exactly_like_those_searched_in_the_forward_pass(tmp_path, monkeypatch):
    import train_gpt2_retro as script
    from conftest import FAST, read_metrics
    from kit.loop.train import Trainer, main

    flags = [*FAST, "--seq-len", "128", "--batch-tokens", "512", "--data", "synthetic", "--max-steps", "3", "--val-every", "3"]
    assert main(script.RECIPE, [*flags, "--out-dir", str(tmp_path / "prefetched")]) == 0
    monkeypatch.setattr(script.RetroTrainer, "to_device", Trainer.to_device)  # no prefetch: every search in the forward pass
    assert main(script.RECIPE, [*flags, "--out-dir", str(tmp_path / "in_forward")]) == 0
    for kind in ("train", "val"):
        assert [e.get("loss", e.get("val_loss")) for e in read_metrics(tmp_path / "prefetched", kind)] == \
               [e.get("loss", e.get("val_loss")) for e in read_metrics(tmp_path / "in_forward", kind)]
