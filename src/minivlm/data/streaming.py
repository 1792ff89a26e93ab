"""The streaming dataset: deterministic epochs split by rank and by worker, equal batch counts
on every rank, bad samples skipped and counted, and resumable mid-epoch.

Two ways to draw an epoch (rank r of R, DataLoader worker w of W):

- **exact** (default): the units (shards, or records for JSON data) of all sources are put
  in a seeded order that changes every epoch, their samples laid end to end, and that
  sequence of N samples cut into R equal runs of ⌊N/R⌋ (the last N mod R samples of the
  epoch's order are left out, different ones each epoch), each cut into W near-equal runs.
  Every sample appears at most once per epoch, exactly once when R divides N.
- **resampled** (for data too big for one pass, or to mix sources with `weights`): each
  worker draws units with replacement (a source chosen with probability ∝ its weight) and
  stops after its share of `samples_per_epoch`.

Each worker then shuffles through a buffer, cuts its run into windows of `batch_size`,
decodes and prepares them and yields one `SampleBatch` per window. Bad samples are dropped
from their window (so batches can be smaller) and counted; the number of batches depends
only on the counts, so every rank yields the same number. A window with no good sample at
all borrows the worker's next good sample (or its last one), which then appears twice.
Everything is seeded by (seed, epoch, rank, worker); resuming at window k of each worker
replays the same order and skips the first k windows without decoding them.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch.utils.data import IterableDataset, get_worker_info

from minivlm.data.samples import Prepared, Skipped
from minivlm.data.sources import ShardFailure
from minivlm.processing.batch import Batch
from minivlm.processing.processor import Processor


class Source(Protocol):
    """What the streaming dataset needs from a source (see `minivlm.data.sources`)."""

    @property
    def units(self) -> list[int]: ...

    def read(self, unit: int, lo: int, hi: int | None) -> Iterator[Any]: ...

    def url(self, unit: int) -> str: ...

    def prepare(self, raw: Any, processor: Processor) -> Prepared | Skipped: ...


@dataclass
class SampleBatch:
    """What a worker yields: the collated `Batch` plus bookkeeping the DataModule strips off
    before the batch reaches the model (ids, skipped samples, and the position for resuming)."""

    batch: Batch
    ids: list[str]
    skipped: list[Skipped]
    worker: int
    index: int
    split: str
    repeated: list[str] = field(default_factory=list)


def split_sizes(total: int, parts: int) -> list[int]:
    """`total` cut into `parts` near-equal sizes, the larger ones first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class StreamingDataset(IterableDataset):
    """Batches of prepared samples from one or more sources for one rank (see the module doc).

    `epoch`, `resume` (the first window of each worker) and `worker_offset` are set before each
    iteration by the DataModule's loader; `len()` is the number of batches this rank yields per epoch.
    """

    def __init__(
        self,
        sources: list[Source],
        processor: Processor,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 500,
        resampled: bool = False,
        weights: list[float] | None = None,
        samples_per_epoch: int | None = None,
        seed: int = 0,
        split: str = "train",
    ) -> None:
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        if weights is not None and (len(weights) != len(sources) or min(weights) < 0 or sum(weights) <= 0):
            raise ValueError(f"weights must be {len(sources)} non-negative numbers with a positive sum, got {weights}")
        if weights is not None and not resampled:
            raise ValueError("weights mix sources by sampling: they need resampled=True")
        self.sources = sources
        self.processor = processor
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer if shuffle else 0
        self.resampled = resampled
        self.weights = weights or [1.0] * len(sources)
        self.total = sum(sum(s.units) for s in sources)
        self.samples_per_epoch = samples_per_epoch or self.total
        self.seed = seed
        self.split = split
        self.epoch = 0
        self.resume: list[int] | None = None
        self.worker_offset = 0
        if self.samples_per_epoch // world_size < 1:
            raise ValueError(f"{self.samples_per_epoch} samples per epoch cannot be split over {world_size} ranks")

    def worker_samples(self) -> list[int]:
        """How many samples each worker of this rank reads per epoch (the same on every rank)."""
        return split_sizes(self.samples_per_epoch // self.world_size, max(1, self.num_workers))

    def worker_batches(self) -> list[int]:
        return [math.ceil(n / self.batch_size) for n in self.worker_samples()]

    def __len__(self) -> int:
        return sum(self.worker_batches())

    def _rng(self, *salt: Any) -> random.Random:
        return random.Random("-".join(str(s) for s in (self.seed, self.epoch, *salt)))

    def _exact_slots(self, worker: int, failures: list[Skipped]) -> Iterator[tuple[int, Any] | None]:
        units = [(d, u, n) for d, s in enumerate(self.sources) for u, n in enumerate(s.units) if n > 0]
        if self.shuffle:
            self._rng("units").shuffle(units)
        per_rank = self.samples_per_epoch // self.world_size
        sizes = self.worker_samples()
        start = self.rank * per_rank + sum(sizes[:worker])
        stop = start + sizes[worker]
        offset = 0
        for d, u, n in units:
            lo, hi = max(start, offset) - offset, min(stop, offset + n) - offset
            offset += n
            if lo < hi:
                yield from self._read(d, u, lo, hi, failures)

    def _read(self, d: int, u: int, lo: int, hi: int | None, failures: list[Skipped]) -> Iterator[tuple[int, Any] | None]:
        """Samples lo..hi-1 of a unit (all of it for hi=None); in a planned run (hi given) the
        samples a broken shard loses come out as None (lost slots), so the counts still hold."""
        got = 0
        try:
            for raw in self.sources[d].read(u, lo, hi):
                got += 1
                yield d, raw
        except ShardFailure as failure:
            failures.append(Skipped(failure.url, "unreadable_shard", str(failure)))
        if hi is not None:
            yield from [None] * (hi - lo - got)

    def _resampled_slots(self, worker: int, failures: list[Skipped]) -> Iterator[tuple[int, Any] | None]:
        rng = self._rng("resampled", self.rank, worker)
        readers: dict[int, Iterator[tuple[int, Any] | None]] = {}
        usable = [d for d, s in enumerate(self.sources) if s.units]
        weights = [self.weights[d] for d in usable]
        for _ in range(self.worker_samples()[worker]):
            d = rng.choices(usable, weights)[0]
            units = self.sources[d].units
            item = None
            # A source whose every shard is broken or empty gives lost slots instead of a hang.
            for _attempt in range(2 * len(units) + 10):
                if d not in readers:
                    # Shards are drawn in proportion to their size when it is known, else uniformly.
                    u = rng.choices(range(len(units)), units if any(units) else None)[0]
                    readers[d] = self._read(d, u, 0, None, failures)
                item = next(readers[d], None)
                if item is not None:
                    break
                del readers[d]
            yield item

    def _shuffled(self, slots: Iterator, rng: random.Random) -> Iterator:
        buffer: list = []
        for slot in slots:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(slot)
                continue
            i = rng.randrange(len(buffer))
            buffer[i], slot = slot, buffer[i]
            yield slot
        rng.shuffle(buffer)
        yield from buffer

    def _windows(self, worker: int, failures: list[Skipped]) -> Iterator[list]:
        slots = self._resampled_slots(worker, failures) if self.resampled else self._exact_slots(worker, failures)
        if self.shuffle_buffer > 1:
            slots = self._shuffled(slots, self._rng("buffer", self.rank, worker))
        window: list = []
        for slot in slots:
            window.append(slot)
            if len(window) == self.batch_size:
                yield window
                window = []
        if window:
            yield window

    def _decode(self, window: list) -> list[Prepared | Skipped]:
        return [self.sources[d].prepare(raw, self.processor) for d, raw in (s for s in window if s is not None)]

    def __iter__(self) -> Iterator[SampleBatch]:
        info = get_worker_info()
        if info is not None and info.num_workers != max(1, self.num_workers):
            raise RuntimeError(f"dataset planned for {self.num_workers} workers but runs in {info.num_workers}")
        # The DataLoader takes batches from its workers round-robin starting at worker 0; after a
        # resume, its worker 0 plays the worker whose turn it was, so the order continues unchanged.
        worker = ((info.id if info is not None else 0) + self.worker_offset) % max(1, self.num_workers)
        first = self.resume[worker] if self.resume is not None else 0
        failures: list[Skipped] = []
        windows = self._windows(worker, failures)
        ahead: deque[list[Prepared | Skipped]] = deque()
        last_good: Prepared | None = None
        for index in range(self.worker_batches()[worker]):
            if index < first:
                next(windows, None)  # replayed, not decoded; its losses were counted before the resume
                failures.clear()
                continue
            items = ahead.popleft() if ahead else self._decode(next(windows, []))
            good = [item for item in items if isinstance(item, Prepared)]
            repeated = []
            if not good:
                filler = self._look_ahead(windows, ahead) or last_good
                if filler is None:
                    continue
                good, repeated = [filler], [filler.id]
            last_good = good[-1]
            skipped = [item for item in items if isinstance(item, Skipped)] + failures
            failures.clear()
            yield SampleBatch(
                batch=self.processor.collate_prepared([p.sample for p in good]),
                ids=[p.id for p in good],
                skipped=skipped,
                worker=worker,
                index=index,
                split=self.split,
                repeated=repeated,
            )

    def _look_ahead(self, windows: Iterator[list], ahead: deque) -> Prepared | None:
        """The next good sample of this worker, decoding windows ahead (kept for their own turn)."""
        for items in ahead:
            for item in items:
                if isinstance(item, Prepared):
                    return item
        for window in windows:
            ahead.append(self._decode(window))
            for item in ahead[-1]:
                if isinstance(item, Prepared):
                    return item
        return None
