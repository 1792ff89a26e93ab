"""Where samples come from: WebDataset shards (local paths, brace patterns, `pipe:` commands,
or a `minivlm shards` output folder / manifest) and LLaVA JSON + a media folder (map-style).

A source is a list of units (a shard, or one record) with known sample counts; it reads
samples `lo..hi-1` of a unit without decoding them, and prepares one raw sample with the
Processor. The streaming dataset plans epochs over units and counts alone.
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import braceexpand
from torch.utils.data import Dataset
from webdataset.gopen import gopen

from minivlm.data.records import BadSample, parse_llava, parse_shard_record, read_annotations
from minivlm.data.samples import Prepared, Skipped, VideoOptions, folder_reader, member_reader, prepare_record
from minivlm.data.shards import MANIFEST
from minivlm.processing.processor import Processor

log = logging.getLogger(__name__)


class ShardFailure(Exception):
    """A shard that could not be opened or read to its end; reported by URL and skipped."""

    def __init__(self, url: str, error: BaseException) -> None:
        super().__init__(f"cannot read shard {url}: {type(error).__name__}: {error}")
        self.url = url


@dataclass
class ShardSample:
    """The undecoded members of one sample of a shard, keyed by what follows the sample key."""

    url: str
    key: str
    files: dict[str, bytes]


def _split_name(name: str) -> tuple[str, str]:
    directory, _, base = name.rpartition("/")
    key, _, suffix = base.partition(".")
    return (f"{directory}/{key}" if directory else key), suffix


def iter_shard(url: str, lo: int = 0, hi: int | None = None) -> Iterator[ShardSample]:
    """Samples lo..hi-1 of a tar shard, members grouped by key; raises ShardFailure on a read error.

    Samples before `lo` are read past without being kept (the tar stream has no index).
    """
    index, current = -1, None
    try:
        with gopen(url, "rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                key, suffix = _split_name(member.name)
                if current is None or key != current.key:
                    if current is not None and index >= lo:
                        yield current
                    index += 1
                    if hi is not None and index >= hi:
                        return
                    current = ShardSample(url, key, {})
                if index >= lo:
                    current.files[suffix] = tar.extractfile(member).read()
            if current is not None and index >= lo and (hi is None or index < hi):
                yield current
    except (OSError, tarfile.TarError, ValueError, EOFError) as error:
        raise ShardFailure(url, error) from error


def count_samples(url: str) -> int:
    """Number of samples in a shard (reads it through once); 0 if it cannot be read."""
    try:
        return sum(1 for _ in iter_shard(url))
    except ShardFailure as failure:
        log.warning("%s", failure)
        return 0


class ShardSource:
    """One data set of WebDataset shards. `spec` is a `minivlm shards` folder, its manifest.json,
    a path or brace pattern (`data-{000000..000009}.tar`), or a `pipe:` command; several
    specs can be joined with `::`. Without a manifest, shards are counted by reading them once."""

    def __init__(self, spec: str, options: VideoOptions, count: bool = True) -> None:
        self.spec = spec
        self.options = options
        self.urls: list[str] = []
        self.counts: list[int] = []
        for part in spec.split("::"):
            self._add(part, count)
        if not self.urls:
            raise ValueError(f"shard spec {spec!r} names no shard")

    def _add(self, spec: str, count: bool) -> None:
        path = Path(spec)
        manifest = path / MANIFEST if path.is_dir() else path if path.name == MANIFEST else None
        if manifest is not None:
            if not manifest.is_file():
                raise FileNotFoundError(f"{manifest} does not exist (is {spec} a `minivlm shards` output?)")
            data = json.loads(manifest.read_text())
            for shard in data["shards"]:
                self.urls.append(str(manifest.parent / shard["name"]))
                self.counts.append(int(shard["samples"]))
            return
        urls = list(braceexpand.braceexpand(spec))
        self.urls += urls
        self.counts += [count_samples(url) for url in urls] if count else [0] * len(urls)

    @property
    def units(self) -> list[int]:
        return self.counts

    def read(self, unit: int, lo: int, hi: int | None) -> Iterator[ShardSample]:
        return iter_shard(self.urls[unit], lo, hi)

    def url(self, unit: int) -> str:
        return self.urls[unit]

    def prepare(self, raw: ShardSample, processor: Processor) -> Prepared | Skipped:
        where = f"{raw.url} sample {raw.key}"
        try:
            record = parse_shard_record(raw.files.get("json", b""), where) if "json" in raw.files else None
        except BadSample as error:
            return Skipped(raw.key, error.reason, str(error))
        if record is None:
            return Skipped(raw.key, "bad_record", f"{where}: no .json member")
        return prepare_record(record, member_reader(raw.files, where), processor, self.options, where)


class LlavaJsonDataset(Dataset):
    """Map-style dataset straight from a LLaVA JSON/JSONL file and its media folder (for small data).

    `dataset[i]` is a `Prepared` (id + the Processor's prepared sample) or a `Skipped` (id,
    reason, message); nothing is zero-filled. Also a streaming source of one-record units.
    """

    def __init__(self, annotations: str | Path, media_root: str | Path, processor: Processor | None,
                 options: VideoOptions = VideoOptions()) -> None:
        self.annotations = Path(annotations)
        self.media_root = Path(media_root)
        if not self.media_root.is_dir():
            raise FileNotFoundError(f"media root {self.media_root} is not a directory")
        self.records: list[Any] = read_annotations(self.annotations)
        self.processor = processor
        self.options = options

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Prepared | Skipped:
        if self.processor is None:
            raise RuntimeError("LlavaJsonDataset needs a processor to prepare samples")
        return self.prepare(index, self.processor)

    @property
    def units(self) -> list[int]:
        return [1] * len(self.records)

    def read(self, unit: int, lo: int, hi: int | None) -> Iterator[int]:
        if lo == 0 and (hi is None or hi >= 1):
            yield unit

    def url(self, unit: int) -> str:
        return f"{self.annotations} record {unit}"

    def prepare(self, index: int, processor: Processor) -> Prepared | Skipped:
        obj = self.records[index]
        where = f"{self.annotations} record {index}"
        try:
            if isinstance(obj, BadSample):
                raise obj
            record = parse_llava(obj, where)
        except BadSample as error:
            record_id = obj.get("id", str(index)) if isinstance(obj, dict) else str(index)
            return Skipped(str(record_id), error.reason, str(error))
        return prepare_record(record, folder_reader(self.media_root, where), processor, self.options, where)
