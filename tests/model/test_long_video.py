"""Long videos decoded chunk by chunk (`open_video` -> `VideoFrames` -> `LazyPixels`) give
the eager path's tokens, and nothing of a chunk but its K tokens per frame outlives it."""

import gc
import pickle
import weakref

import numpy as np
import pytest
import torch

from conftest import shapes_processor, tiny_vlm, write_video
from minivlm.processing.batch import LazyPixels
from minivlm.processing.processor import SampleError
from minivlm.processing.templates import Turn
from minivlm.processing.video import VideoFile, VideoFrames, load_video, open_video

ANSWER = Turn("assistant", "yes")


def ask(tags: str, question: str = "Is there a red circle ?") -> list[Turn]:
    return [Turn("user", f"{tags} {question}")]


@pytest.fixture
def clips(tmp_path):
    """Two different videos (sizes, lengths and grey ramps differ) and a third, short one."""
    paths = [tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "c.mp4"]
    write_video(paths[0], frames=28, fps=4, size=40, step=9)  # 7 s
    write_video(paths[1], frames=20, fps=4, size=24, step=12)  # 5 s
    write_video(paths[2], frames=6, fps=2, size=32, step=40)  # 3 s
    return paths


def test_open_video_picks_the_frames_load_video_keeps(clips):
    for path, seconds in zip(clips, (7, 5, 3)):
        video = open_video(path, fps=1.0)
        assert len(video) == seconds
        frames = list(video.decode())
        eager = load_video(path, fps=1.0).frames
        assert len(frames) == len(eager) == seconds
        assert all(np.array_equal(a, b) for a, b in zip(frames, eager))
    assert open_video(clips[0], num_frames=8).indices == (1, 5, 8, 12, 15, 19, 22, 26)
    assert len(open_video(clips[0], fps=2.0, max_frames=10)) == 10


def test_video_frames_read_in_chunks_equal_the_eager_pixels(clips):
    model = tiny_vlm()
    processor = shapes_processor(model)
    eager = processor([ask("<video>")], [[load_video(clips[0])]], add_generation_prompt=True).pixel_values
    frames = VideoFrames(open_video(clips[0]), processor.image_spec, processor.square)
    assert torch.equal(torch.cat([frames.take([0, 1, 2]), frames.take([3, 4]), frames.take([5, 6])]), eager)
    # Earlier frames start the decoder over; out-of-order positions come back in the order asked.
    assert torch.equal(frames.take([4, 1]), eager[[4, 1]])
    # A pickled copy (a DataLoader worker's) starts over too.
    frames.take([2])
    assert torch.equal(pickle.loads(pickle.dumps(frames)).take([0, 6]), eager[[0, 6]])
    with pytest.raises(IndexError, match="out of range"):
        frames.take([7])


def test_lazy_batch_gives_the_eager_embeddings_logits_and_tokens(clips):
    model = tiny_vlm(frames_per_chunk=3).eval()
    processor = shapes_processor(model)
    picture = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    conversations = [
        ask("<video>"),
        ask("<video> <image>", "How many red shapes are there ?"),
        ask("<video>", "Is there a blue square ?"),
    ]
    # An image between the videos: one batch mixes in-memory passes and three files.
    extra = [[], [picture], []]
    eager = processor(conversations, [[load_video(p), *e] for p, e in zip(clips, extra)], add_generation_prompt=True)
    lazy = processor(conversations, [[open_video(p), *e] for p, e in zip(clips, extra)], add_generation_prompt=True)
    assert isinstance(lazy.pixel_values, LazyPixels) and isinstance(eager.pixel_values, torch.Tensor)
    assert len(lazy.pixel_values) == len(eager.pixel_values) == 7 + 1 + 5 + 3
    assert torch.equal(lazy.media_passes, eager.media_passes) and torch.equal(lazy.input_ids, eager.input_ids)
    with torch.no_grad():
        want, got = model.assemble(eager), model.assemble(lazy)
        assert torch.equal(want.attention_mask, got.attention_mask)
        assert torch.allclose(want.embeds, got.embeds, atol=1e-6)
        assert torch.allclose(model(eager).logits, model(lazy).logits, atol=1e-5)
        # Chunking does not change the lazy result either.
        model.frames_per_chunk = None
        assert torch.allclose(model.assemble(lazy).embeds, want.embeds, atol=1e-5)
        model.frames_per_chunk = 2
        tokens = model.generate(eager, max_new_tokens=4)
        assert torch.equal(model.generate(lazy, max_new_tokens=4), tokens)
    # The three samples differ, so the comparison is not between copies of one sample.
    media = want.embeds[want.media_mask]
    assert not torch.allclose(media[0], media[7])


def test_lazy_batch_trains_like_the_eager_one(clips):
    conversations = [ask("<video>") + [ANSWER], ask("<video>", "Is there a blue square ?") + [ANSWER]]
    grads = []
    for lazy in (False, True):
        model = tiny_vlm(frames_per_chunk=2)
        processor = shapes_processor(model)
        videos = [open_video(p) if lazy else load_video(p) for p in clips[:2]]
        out = model(processor(conversations, [[v] for v in videos]))
        out.loss.backward()
        grads.append((out.loss, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (eager_loss, eager_grads), (lazy_loss, lazy_grads) = grads
    assert torch.allclose(eager_loss, lazy_loss, atol=1e-6)
    assert eager_grads.keys() == lazy_grads.keys() and any("encoder" in n for n in lazy_grads)
    for name, grad in eager_grads.items():
        assert torch.allclose(grad, lazy_grads[name], atol=1e-6), name


def test_frames_are_decoded_chunk_by_chunk_while_they_are_encoded(clips, monkeypatch):
    model = tiny_vlm(frames_per_chunk=3).eval()
    processor = shapes_processor(model)
    events: list = []
    opened: list = []
    take, decode = VideoFrames.take, VideoFile.decode

    def spy_take(self, positions):
        events.append(("read", self.video.path.name, list(positions)))
        return take(self, positions)

    def spy_decode(self, strict=True):
        opened.append(self.path.name)
        return decode(self, strict)

    monkeypatch.setattr(VideoFrames, "take", spy_take)
    monkeypatch.setattr(VideoFile, "decode", spy_decode)
    model.encoder.register_forward_pre_hook(lambda m, args: events.append(("encode", args[0].shape[0])))
    conversations = [ask("<video>"), ask("<video>", "Is there a blue square ?")]
    batch = processor(conversations, [[open_video(p)] for p in clips[:2]], add_generation_prompt=True)
    assert events == [] and opened == []  # the processor decodes nothing
    with torch.no_grad():
        model.assemble(batch)
    # Frames 0-6 of a.mp4, then 0-4 of b.mp4, in chunks of 3 across the two videos.
    assert events == [
        ("read", "a.mp4", [0, 1, 2]), ("encode", 3),
        ("read", "a.mp4", [3, 4, 5]), ("encode", 3),
        ("read", "a.mp4", [6]), ("read", "b.mp4", [0, 1]), ("encode", 3),
        ("read", "b.mp4", [2, 3, 4]), ("encode", 3),
    ]
    assert opened == ["a.mp4", "b.mp4"]  # each file decoded once, front to back


def test_no_chunk_output_outlives_the_next_chunk(clips):
    """Only K tokens per frame are kept: a chunk's pre-fusion sequence (and its rows, of which
    the K tokens are a view) is freed by the time the chunk after next runs. One frame per
    chunk is the case where a slice of K rows counts as contiguous and copying must be forced."""
    model = tiny_vlm(frames_per_chunk=1).eval()
    processor = shapes_processor(model)
    alive: list[list[weakref.ref]] = []
    leaks: list[int] = []

    def on_prefusion(module, args, out):
        gc.collect()
        leaks.extend(i for i, refs in enumerate(alive[:-1]) if any(ref() is not None for ref in refs))
        alive.append([weakref.ref(t._base if t._base is not None else t) for t in out])

    model.prefusion.register_forward_hook(on_prefusion)
    conversations = [ask("<video>"), ask("<video>", "Is there a blue square ?")]
    batch = processor(conversations, [[open_video(p)] for p in clips[:2]], add_generation_prompt=True)
    with torch.no_grad():
        model.assemble(batch)
    assert len(alive) == 7 + 5 and leaks == []


def test_lazy_pixels_read_across_segments_in_the_order_asked(clips):
    spec = shapes_processor(tiny_vlm()).image_spec
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.int32).reshape(2, 3, 32, 32).to(torch.uint8)
    frames = VideoFrames(open_video(clips[2]), spec)
    eager = VideoFrames(open_video(clips[2]), spec).take([0, 1, 2])
    pixels = LazyPixels([images[:1], frames, images[1:]])
    assert len(pixels) == 5
    assert torch.equal(pixels.take([0, 1, 2, 3, 4]), torch.cat([images[:1], eager, images[1:]]))
    assert torch.equal(pixels.take([4, 2]), torch.stack([images[1], eager[1]]))
    with pytest.raises(IndexError, match="out of range for 5 passes"):
        pixels.take([5])
    with pytest.raises(ValueError, match="uint8"):
        LazyPixels([images.float()])


def test_video_file_errors_are_named(clips, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    with pytest.raises(ValueError, match="broken.mp4"):
        open_video(broken)
    # A file whose stream ends before a sampled frame (e.g. a header that over-counts).
    short = VideoFile(clips[2], (0, 2, 9))
    with pytest.raises(ValueError, match=r"c.mp4: the stream ended after 2 of 3 sampled frames \(frame 9"):
        list(short.decode())
    assert len(list(short.decode(strict=False))) == 2
    with pytest.raises(ValueError, match="ascending"):
        VideoFile(clips[2], (2, 1))
    processor = shapes_processor(tiny_vlm())
    with pytest.raises(SampleError, match="<image> got a VideoFile"):
        processor([ask("<image>")], [[open_video(clips[2])]], add_generation_prompt=True)


def test_media_page_long_video_example_streams_the_file():
    from test_docs import run_python_blocks

    ns = run_python_blocks("media.md")
    model = tiny_vlm(frames_per_chunk=16).eval()
    processor = shapes_processor(model)
    assert len(ns["long_video"]) == 40
    lazy = processor(ns["prompt"], [[ns["long_video"]]], add_generation_prompt=True)
    eager = processor(ns["prompt"], [[load_video(ns["clip"], max_frames=20_000)]], add_generation_prompt=True)
    assert isinstance(lazy.pixel_values, LazyPixels)
    with torch.no_grad():
        assert torch.allclose(model.assemble(lazy).embeds, model.assemble(eager).embeds, atol=1e-6)
