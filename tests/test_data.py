"""Shard format and the training/validation loaders."""

import numpy as np
import pytest
import torch

from conftest import make_shard
from kit.core.errors import DataError
from kit.data.loader import TrainStream, validation_batches
from kit.data.shards import EOT, HEADER_BYTES, MAGIC, open_shard, read_header, write_shard


def test_shard_round_trip(tmp_path):
    tokens = np.array([EOT, 1, 2, 65535, 0, EOT, 7], dtype=np.int64)
    write_shard(tmp_path / "a.bin", tokens)
    header = np.fromfile(tmp_path / "a.bin", dtype=np.int32, count=3)
    assert list(header) == [MAGIC, 1, len(tokens)]
    assert read_header(tmp_path / "a.bin") == len(tokens)
    assert np.array_equal(open_shard(tmp_path / "a.bin"), tokens)
    assert not list(tmp_path.glob("*.tmp"))  # written through a temporary file


def test_write_rejects_tokens_outside_uint16(tmp_path):
    with pytest.raises(ValueError):
        write_shard(tmp_path / "a.bin", [1, 70000])


def test_wrong_magic_is_rejected(tmp_path):
    path = tmp_path / "bad.bin"
    make_shard(path, 100)
    raw = bytearray(path.read_bytes())
    raw[0:4] = np.int32(12345).tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="magic number 12345"):
        read_header(path)


def test_truncated_shard_is_rejected(tmp_path):
    path = tmp_path / "short.bin"
    make_shard(path, 100)
    path.write_bytes(path.read_bytes()[: HEADER_BYTES + 50])
    with pytest.raises(DataError, match="truncated"):
        read_header(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="shorter than the header"):
        read_header(path)


def test_batches_are_shifted_windows_of_the_stream(tmp_path):
    tokens = make_shard(tmp_path / "t.bin", 1000)
    stream = TrainStream([tmp_path / "t.bin"], seq_len=8, micro_batch=2)
    x, y = stream.next_batch()
    assert x.shape == y.shape == (2, 8)
    assert np.array_equal(x.numpy().ravel(), tokens[:16])
    assert np.array_equal(y.numpy().ravel(), tokens[1:17])
    x2, _ = stream.next_batch()
    assert np.array_equal(x2.numpy().ravel(), tokens[16:32])


def test_stream_moves_to_the_next_shard_and_wraps(tmp_path):
    a = make_shard(tmp_path / "a.bin", 40, seed=1)
    b = make_shard(tmp_path / "b.bin", 40, seed=2)
    stream = TrainStream([tmp_path / "a.bin", tmp_path / "b.bin"], seq_len=8, micro_batch=2)
    firsts = [stream.next_batch()[0][0, 0].item() for _ in range(5)]
    # a holds 40 tokens: 2 batches of 16 (+1) fit, then b's 2 batches, then a again
    assert firsts == [a[0], a[16], b[0], b[16], a[0]]


def test_bos_alignment_starts_every_sequence_at_a_document(tmp_path):
    make_shard(tmp_path / "t.bin", 5000)
    stream = TrainStream([tmp_path / "t.bin"], seq_len=16, micro_batch=4, align_bos=True)
    for _ in range(20):
        x, y = stream.next_batch()
        assert (x[:, 0] == EOT).all()
        assert (x[:, 1:] == y[:, :-1]).all()


@pytest.mark.parametrize("align_bos", [False, True])
def test_ranks_split_what_one_process_reads(tmp_path, align_bos):
    make_shard(tmp_path / "t.bin", 20000)
    files = [tmp_path / "t.bin"]
    single = TrainStream(files, seq_len=16, micro_batch=2, align_bos=align_bos)
    ranks = [TrainStream(files, seq_len=16, micro_batch=1, rank=r, world=2, align_bos=align_bos) for r in range(2)]
    for _ in range(10):
        x_single, _ = single.next_batch()
        x_ranks = [s.next_batch()[0] for s in ranks]
        assert np.array_equal(x_single.numpy(), np.concatenate([x.numpy() for x in x_ranks]))


def test_stream_state_restores_the_position(tmp_path):
    make_shard(tmp_path / "a.bin", 300, seed=1)
    make_shard(tmp_path / "b.bin", 300, seed=2)
    files = [tmp_path / "a.bin", tmp_path / "b.bin"]
    stream = TrainStream(files, seq_len=8, micro_batch=4)
    for _ in range(11):
        stream.next_batch()
    state = stream.state_dict()
    expected = [stream.next_batch()[0] for _ in range(5)]
    other = TrainStream(files, seq_len=8, micro_batch=4)
    other.load_state_dict(state)
    assert all(np.array_equal(a, other.next_batch()[0]) for a in expected)


def test_too_small_shard_for_one_micro_step(tmp_path):
    make_shard(tmp_path / "t.bin", 20)
    with pytest.raises(DataError, match="fewer tokens than one micro-step"):
        TrainStream([tmp_path / "t.bin"], seq_len=16, micro_batch=2)


def test_validation_batches_cover_the_first_tokens_split_across_ranks(tmp_path):
    tokens = make_shard(tmp_path / "v.bin", 1000)
    seen = []
    for rank in range(2):
        for x, y in validation_batches(tmp_path / "v.bin", val_tokens=640, seq_len=32, micro_batch=3, rank=rank, world=2):
            assert np.array_equal(x[:, 1:].numpy(), y[:, :-1].numpy())
            seen.append(x.numpy().ravel())
    assert np.array_equal(np.concatenate(seen), tokens[:640])


def test_validation_from_a_later_sequence_covers_the_rest_split_across_ranks(tmp_path):
    """A screen's first sequences, then the rest from first_seq: together the whole set, once each."""
    tokens = make_shard(tmp_path / "v.bin", 1000)
    screen = [x for x, _ in validation_batches(tmp_path / "v.bin", val_tokens=128, seq_len=32, micro_batch=2, strict=False)]
    rest = [x for rank in range(2) for x, _ in validation_batches(tmp_path / "v.bin", val_tokens=640, seq_len=32, micro_batch=3,
                                                                   rank=rank, world=2, first_seq=4)]
    assert np.array_equal(torch.cat(screen + rest).numpy().ravel(), tokens[:640])


def test_validation_needs_enough_tokens(tmp_path):
    make_shard(tmp_path / "v.bin", 1000)
    with pytest.raises(DataError, match="fewer than --val-tokens 2000"):
        list(validation_batches(tmp_path / "v.bin", val_tokens=2000, seq_len=32, micro_batch=4))
    # a secondary set is cut to what it holds instead, in whole micro-batches (31 sequences -> 28)
    batches = list(validation_batches(tmp_path / "v.bin", val_tokens=2000, seq_len=32, micro_batch=4, strict=False))
    assert [x.shape[0] for x, _ in batches] == [4] * 7



def test_synthetic_validation_set_holds_a_bench_default_validation(isolated_data_dir):
    """scripts/bench.py validates 65,536 tokens by default: the synthetic set holds them and the last target."""
    from kit.data import datasets
    from kit.data.loader import validation_batches

    files = datasets.synthetic_files(True)
    batches = list(validation_batches(files.val, 65_536, 1024, 8, 0, 1, True))
    assert sum(y.numel() for _, y in batches) == 65_536
