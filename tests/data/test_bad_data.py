"""Bad input never stops a run and is never zero-filled: each kind is skipped and counted."""

import io
import json
from collections import Counter

import pytest
import torch
import webdataset as wds
from llava_data import SPEC, colour, fit, processor, record
from PIL import Image
from torch.utils.data import DataLoader

from minivlm.data.llava import LlavaDataModule
from minivlm.data.quality import DataQuality, DataQualityCallback, TooMuchBadData
from minivlm.data.records import BadSample, parse_llava, read_annotations
from minivlm.data.samples import VideoOptions
from minivlm.data.sources import ShardSource
from minivlm.data.streaming import StreamingDataset
from minivlm.processing.images import image_to_pixels

GOOD = 40
EXPECTED = Counter({
    "unreadable_image": 2, "missing_media": 1, "no_video_frames": 1, "bad_record": 1,
    "placeholder_mismatch": 1, "bad_text": 1, "too_long": 1, "unreadable_shard": 1,
})


def png(i: int, size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour(i)).save(buffer, format="PNG")
    return buffer.getvalue()


def sample(key: str, rec: dict, media: list[tuple[str, str]], members: dict[str, bytes], raw_json: bytes | None = None):
    header = {"id": rec.get("id"), "conversations": rec.get("conversations"), "media": [
        {"kind": kind, "names": [name]} for kind, name in media]}
    return {"__key__": key, "json": raw_json or json.dumps(header).encode(), **members}


def bad_samples() -> list[dict]:
    no_conversations = {"id": "bad_record"}
    two_tags = record(0)
    two_tags["id"] = "placeholder_mismatch"
    two_tags["conversations"][0]["value"] = "<image> <image> What colour?"
    too_long = record(0)
    too_long["id"] = "too_long"
    too_long["conversations"][0]["value"] = "<image> " + "What colour is the shape ? " * 20
    non_utf8 = json.dumps({"id": "bad_text", "conversations": record(0)["conversations"],
                           "media": [{"kind": "image", "names": ["m0.png"]}]}).encode().replace(b"What", b"Wh\xff\xfet")
    image = [("image", "m0.png")]
    return [
        sample("b1", {**record(0), "id": "truncated"}, image, {"m0.png": png(1)[:40]}),
        sample("b2", {**record(0), "id": "not_an_image"}, image, {"m0.png": b"hello"}),
        sample("b3", {**record(0), "id": "missing_media"}, image, {}),
        sample("b4", {**record(0, "video"), "id": "no_frames"}, [("video", "m0.mp4")], {"m0.mp4": b"\x00" * 500}),
        sample("b5", no_conversations, [], {}),
        sample("b6", two_tags, image, {"m0.png": png(2)}),
        sample("b7", {}, image, {"m0.png": png(3)}, raw_json=non_utf8),
        sample("b8", too_long, image, {"m0.png": png(4)}),
    ]


@pytest.fixture
def bad_shards(tmp_path):
    """Two readable shards mixing GOOD good samples with one of each bad kind, plus a broken shard."""
    samples = [sample(f"g{i:02d}", record(i), [("image", "m0.png")], {"m0.png": png(i)}) for i in range(GOOD)]
    samples[5:5] = bad_samples()[:4]
    samples[30:30] = bad_samples()[4:]
    shards = []
    for name, part in (("a.tar", samples[:25]), ("b.tar", samples[25:])):
        with wds.TarWriter(str(tmp_path / name), encoder=False) as writer:
            for s in part:
                writer.write(s)
        shards.append({"name": name, "samples": len(part)})
    (tmp_path / "broken.tar").write_bytes(b"this is not a tar file" * 50)
    shards.append({"name": "broken.tar", "samples": 6})
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": shards}))
    return tmp_path


def test_each_bad_kind_is_counted_and_every_good_sample_arrives(bad_shards):
    dataset = StreamingDataset([ShardSource(str(bad_shards), VideoOptions())], processor(max_length=40),
                               batch_size=4, num_workers=2)
    batches = list(DataLoader(dataset, batch_size=None, num_workers=2))
    assert len(batches) == len(dataset)
    ids = Counter(i for b in batches for i in b.ids if i not in b.repeated)
    assert ids == Counter(f"s{i:03d}" for i in range(GOOD))
    assert Counter(s.reason for b in batches for s in b.skipped) == EXPECTED
    broken = [s for b in batches for s in b.skipped if s.reason == "unreadable_shard"]
    assert "broken.tar" in broken[0].message
    # Every pixel row is the image of its own record (nothing zero-filled or shifted).
    for b in batches:
        assert b.batch.pixel_values.shape[0] == len(b.ids)
        for row, sample_id in enumerate(b.ids):
            expected = image_to_pixels(Image.open(io.BytesIO(png(int(sample_id[1:])))), SPEC)
            assert torch.equal(b.batch.pixel_values[row], expected)


def test_annotation_problems_are_named(tmp_path):
    path = tmp_path / "data.jsonl"
    good = json.dumps(record(0)).encode()
    path.write_bytes(good + b"\n" + good.replace(b"What", b"Wh\xffat") + b"\n{not json\n")
    records = read_annotations(path)
    assert parse_llava(records[0], "r0").id == "s000"
    with pytest.raises(BadSample, match="UTF-8") as bad_text:
        parse_llava(records[1], "r1")
    assert bad_text.value.reason == "bad_text"
    assert isinstance(records[2], BadSample) and f"{path}:3" in str(records[2])


def test_a_run_over_bad_shards_finishes_and_logs_each_count(bad_shards, capsys):
    trainer = fit(LlavaDataModule(shards=str(bad_shards), batch_size=16, num_workers=2, max_bad_fraction=0.5))
    metrics = trainer.callback_metrics
    assert metrics["data/good"] == GOOD
    for reason, count in EXPECTED.items():
        assert metrics[f"data/skipped_{reason}"] == count, reason
    assert metrics["data/skipped_other"] == 0
    assert sum(isinstance(c, DataQualityCallback) for c in trainer.callbacks) == 1


def test_too_much_bad_data_stops_the_run_naming_the_worst_reasons(bad_shards):
    with pytest.raises(TooMuchBadData, match=r"over max_bad_fraction=1.0%.*unreadable_image 2"):
        fit(LlavaDataModule(shards=str(bad_shards), batch_size=16, num_workers=0))


def test_an_all_bad_batch_borrows_the_next_good_sample_so_the_batch_count_holds(tmp_path):
    good = [sample(f"g{i}", record(i), [("image", "m0.png")], {"m0.png": png(i)}) for i in range(8)]
    bad = [sample(f"b{i}", {**record(0), "id": f"bad{i}"}, [("image", "m0.png")], {"m0.png": b"junk"}) for i in range(4)]
    with wds.TarWriter(str(tmp_path / "a.tar"), encoder=False) as writer:
        for s in good[:4] + bad + good[4:]:
            writer.write(s)
    dataset = StreamingDataset([ShardSource(str(tmp_path / "a.tar"), VideoOptions())], processor(), batch_size=4,
                               shuffle=False)
    batches = list(DataLoader(dataset, batch_size=None))
    assert len(batches) == len(dataset) == 3
    assert [b.ids for b in batches] == [["s000", "s001", "s002", "s003"], ["s004"], ["s004", "s005", "s006", "s007"]]
    assert [b.repeated for b in batches] == [[], ["s004"], []]
    quality = DataQuality()
    for b in batches:
        quality.add(b)
    assert quality.vector()[0] == 8 and quality.skipped == Counter({"unreadable_image": 4})


def test_missing_configured_paths_fail_at_setup_before_any_step(bad_shards):
    datamodule = LlavaDataModule(shards=str(bad_shards / "nowhere"), batch_size=4)
    with pytest.raises(FileNotFoundError, match="nowhere not found"):
        fit(datamodule)
