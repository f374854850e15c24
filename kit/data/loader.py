"""Training and validation batches from memory-mapped shards.

The training stream is the same on every rank: each micro-step takes `world * micro_batch`
sequences of seq_len + 1 tokens from it, and rank r keeps sequences [r*B, (r+1)*B). So one
process with A accumulation steps sees exactly the sequences that W processes with A / W
steps see together, and the stream's position (shard, offset) is one small, saveable state.
"""

import numpy as np
import torch

from kit.core.errors import DataError
from kit.data.shards import EOT, open_shard, read_header


def shuffled_order(files, seed: int, seq_len: int):
    """(files in an order drawn with seed, a starting offset in [0, seq_len) drawn with it); seed 0: as given, offset 0."""
    if not seed:
        return list(files), 0
    generator = np.random.default_rng(seed)
    order = generator.permutation(len(files))
    return [files[i] for i in order], int(generator.integers(seq_len))


class TrainStream:
    def __init__(self, files, seq_len: int, micro_batch: int, rank: int = 0, world: int = 1, align_bos: bool = False, order_seed: int = 0):
        if not files:
            raise DataError("no training shards given")
        files, self.start_offset = shuffled_order([str(f) for f in files], order_seed, seq_len)
        self.files = files
        for f in self.files:
            if read_header(f) < world * micro_batch * seq_len + 1:
                raise DataError(f"training shard {f} holds fewer tokens than one micro-step needs ({world} x {micro_batch} x {seq_len})")
        self.seq_len, self.micro_batch, self.rank, self.world = seq_len, micro_batch, rank, world
        self.align_bos = align_bos
        self.shard, self.pos = 0, self.start_offset
        self._tokens = None
        self._bos = None
        self._load(0)

    def _load(self, shard: int) -> None:
        self.shard = shard
        self._tokens = open_shard(self.files[shard])
        self._bos = np.flatnonzero(self._tokens == EOT) if self.align_bos else None

    def _next_shard(self) -> None:
        self._load((self.shard + 1) % len(self.files))
        self.pos = self.start_offset

    def _sequence_starts(self, count: int) -> list[int]:
        """Start offsets of the next `count` sequences in the current shard, advancing the stream."""
        span = self.seq_len + 1
        for _ in range(len(self.files) + 1):
            starts, pos = [], self.pos
            for _ in range(count):
                if self.align_bos:  # begin at the first document start at or after pos
                    i = np.searchsorted(self._bos, pos)
                    if i == len(self._bos):
                        break
                    pos = int(self._bos[i])
                if pos + span > len(self._tokens):
                    break
                starts.append(pos)
                pos += self.seq_len
            if len(starts) == count:
                self.pos = pos
                return starts
            self._next_shard()
        raise DataError(f"no training shard holds {count} sequences of {self.seq_len} tokens starting at document boundaries")

    def next_batch(self):
        """(inputs, targets) int64 tensors of shape (micro_batch, seq_len) for this rank."""
        starts = self._sequence_starts(self.world * self.micro_batch)
        mine = starts[self.rank * self.micro_batch : (self.rank + 1) * self.micro_batch]
        rows = np.stack([self._tokens[s : s + self.seq_len + 1] for s in mine]).astype(np.int64)
        rows = torch.from_numpy(rows)
        # contiguous, like validation batches: a compiled model then sees one memory layout throughout
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    def state_dict(self) -> dict:
        return {"files": self.files, "shard": self.shard, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        if state["files"] != self.files:
            print("warning: resuming with a different list of training shards than the checkpoint was made with")
        self._load(min(state["shard"], len(self.files) - 1))
        self.pos = state["pos"]


def validation_batches(path, val_tokens: int, seq_len: int, micro_batch: int, rank: int = 0, world: int = 1, strict: bool = True,
                       first_seq: int = 0):
    """Batches over the first `val_tokens` tokens of a validation shard, split across ranks.

    strict: fewer tokens than asked is an error (the main set); otherwise the set is cut to what
    the shard holds (a secondary set such as a small FineWeb sample), in whole micro-batches.
    first_seq: start at this sequence (the rest of a set whose first sequences were scored already).
    """
    tokens = open_shard(path)
    available = len(tokens) - 1
    if available < val_tokens:
        if strict:
            raise DataError(f"validation shard {path} holds {len(tokens)} tokens, fewer than --val-tokens {val_tokens} + 1; pass a smaller --val-tokens")
        val_tokens = available
    num_seqs = val_tokens // seq_len - first_seq
    if num_seqs < world:
        raise DataError(f"--val-tokens {val_tokens} gives {num_seqs} sequences of {seq_len}{f' after the first {first_seq}' if first_seq else ''}, fewer than the {world} ranks")
    per_rank = num_seqs // world
    if not strict and per_rank >= micro_batch:
        # whole micro-batches only: a last, smaller batch is a new shape that a compiled model recompiles for
        per_rank -= per_rank % micro_batch
    first = first_seq + rank * per_rank
    for b in range(first, first + per_rank, micro_batch):
        n = min(micro_batch, first + per_rank - b)
        rows = np.asarray(tokens[b * seq_len : (b + n) * seq_len + 1]).astype(np.int64)
        x = torch.from_numpy(rows[:-1].reshape(n, seq_len))
        y = torch.from_numpy(rows[1:].reshape(n, seq_len))
        yield x, y
