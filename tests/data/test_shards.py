"""`minivlm shards`: LLaVA JSON + media -> WebDataset shards and a manifest."""

import io
import json
import os
import subprocess
import sys

import pytest
from llava_data import colour, make_llava, processor, record, write_image
from PIL import Image

from minivlm.data.samples import Prepared, VideoOptions
from minivlm.data.shards import ShardOptions, write_shards
from minivlm.data.sources import ShardSource, iter_shard


def read_all(out) -> dict[str, dict[str, bytes]]:
    manifest = json.loads((out / "manifest.json").read_text())
    samples = {}
    for shard in manifest["shards"]:
        for s in iter_shard(str(out / shard["name"])):
            samples[json.loads(s.files["json"])["id"]] = s.files
    return samples


def test_command_writes_capped_shards_and_a_manifest_with_skips(tmp_path):
    annotations = make_llava(tmp_path, 30)
    records = json.loads(annotations.read_text())
    records[3]["image"] = "images/nowhere.png"  # missing media
    records[4]["conversations"] = []  # no conversations
    records[5]["conversations"][0]["value"] = "no tag here"  # placeholder mismatch
    annotations.write_text(json.dumps(records))
    out = tmp_path / "shards"
    result = subprocess.run(
        [sys.executable, "-m", "minivlm", "shards", "--annotations", str(annotations), "--media-root", str(tmp_path),
         "--out", str(out), "--max-count", "8", "--progress", "false"],
        capture_output=True, text=True, env=os.environ,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 27 samples of 30 records in 4 shards" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["samples"] for s in manifest["shards"]] == [5, 8, 8, 6]
    assert manifest["skipped"] == {"bad_record": 1, "missing_media": 1, "placeholder_mismatch": 1}
    assert manifest["records"] == 30 and manifest["options"]["max_count"] == 8
    samples = read_all(out)
    assert set(samples) == {f"s{i:03d}" for i in range(30)} - {"s003", "s004", "s005"}
    # Images are passed through byte for byte.
    assert samples["s007"]["m0.png"] == (tmp_path / "images" / "007.png").read_bytes()


def test_size_cap_splits_a_block(tmp_path):
    annotations = make_llava(tmp_path, 10)
    manifest = write_shards(annotations, tmp_path, tmp_path / "out", ShardOptions(max_count=10, max_size=600),
                            progress=False)
    assert len(manifest["shards"]) > 1 and sum(s["samples"] for s in manifest["shards"]) == 10
    assert manifest["shards"][1]["name"] == "data-000000_1.tar"


def test_rerun_skips_complete_blocks_and_finishes_incomplete_ones(tmp_path):
    annotations = make_llava(tmp_path, 20)
    out = tmp_path / "out"
    options = ShardOptions(max_count=5)
    first = write_shards(annotations, tmp_path, out, options, progress=False)
    # Simulate a run killed while writing block 2: its marker never got written.
    (out / "data-000002.done.json").unlink()
    (out / "data-000002.tar").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    second = write_shards(annotations, tmp_path, out, options, progress=False)
    assert second == first
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert all(after[name] == before[name] for name in before)  # complete blocks untouched
    assert "data-000002.tar" in after
    with pytest.raises(ValueError, match="other options"):
        write_shards(annotations, tmp_path, out, ShardOptions(max_count=5, images="jpeg"), progress=False)


def test_parallel_processes_write_the_same_shards(tmp_path):
    annotations = make_llava(tmp_path, 20)
    one = write_shards(annotations, tmp_path, tmp_path / "one", ShardOptions(max_count=6), progress=False)
    two = write_shards(annotations, tmp_path, tmp_path / "two", ShardOptions(max_count=6), processes=2, progress=False)
    assert one["shards"] == two["shards"]
    for shard in one["shards"]:
        assert (tmp_path / "one" / shard["name"]).read_bytes() == (tmp_path / "two" / shard["name"]).read_bytes()


def test_reencoded_images_and_presampled_video_frames(tmp_path):
    annotations = make_llava(tmp_path, 6, videos=2)
    write_image(tmp_path / "images" / "000.png", 0, size=64)
    records = json.loads(annotations.read_text())
    records.append(record(6))  # an image file that is not an image: caught now, not when training
    (tmp_path / "images" / "006.png").write_bytes(b"not a png")
    annotations.write_text(json.dumps(records))
    options = ShardOptions(images="jpeg", max_image_side=32, videos="frames", fps=1.0)
    manifest = write_shards(annotations, tmp_path, tmp_path / "out", options, progress=False)
    assert manifest["skipped"] == {"unreadable_image": 1}
    samples = read_all(tmp_path / "out")
    image = Image.open(io.BytesIO(samples["s000"]["m0.jpg"]))
    assert image.format == "JPEG" and image.size == (32, 32)
    assert max(abs(a - b) for a, b in zip(image.getpixel((10, 10)), colour(0))) <= 3
    # 8 frames at 4 fps = 2 s -> 2 frames at 1 fps.
    frames = sorted(name for name in samples["s005"] if name.startswith("m0.f"))
    assert frames == ["m0.f0000.jpg", "m0.f0001.jpg"]
    source = ShardSource(str(tmp_path / "out"), VideoOptions())
    prepared = [source.prepare(raw, processor()) for raw in source.read(0, 0, None)]
    assert all(isinstance(p, Prepared) for p in prepared) and len(prepared) == 6
    assert {p.id for p in prepared} == {f"s{i:03d}" for i in range(6)}


def test_whole_videos_are_stored_and_sampled_when_read(tmp_path):
    annotations = make_llava(tmp_path, 3, videos=1)
    write_shards(annotations, tmp_path, tmp_path / "out", ShardOptions(), progress=False)
    samples = read_all(tmp_path / "out")
    assert samples["s002"]["m0.mp4"] == (tmp_path / "videos" / "002.mp4").read_bytes()
    source = ShardSource(str(tmp_path / "out"), VideoOptions(num_frames=3))
    prepared = {p.id: p for p in (source.prepare(raw, processor()) for raw in source.read(0, 0, None))}
    assert prepared["s002"].sample.passes == [3] and prepared["s002"].sample.kinds == ["video"]
    assert prepared["s000"].sample.kinds == ["image"]
    # The three frames are the segment midpoints of 8 grey frames (values 10·i): 1, 4, 6.
    means = [float(p.float().mean()) for p in prepared["s002"].sample.pixels]
    assert means[0] < means[1] < means[2]
