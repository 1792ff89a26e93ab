"""Video decoding and frame sampling with PyAV."""

import numpy as np
import pytest

from conftest import write_video
from minivlm.processing.video import Video, load_video, segment_midpoints


def test_segment_midpoints():
    assert segment_midpoints(8, 4) == [1, 3, 5, 7]
    assert segment_midpoints(10, 1) == [5]
    assert segment_midpoints(3, 8) == [0, 1, 2]
    with pytest.raises(ValueError):
        segment_midpoints(0, 1)


def test_load_video_samples_one_frame_per_second(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, frames=12, fps=4)  # 3 seconds
    clip = load_video(path, fps=1.0)
    assert len(clip.frames) == 3
    values = [int(np.asarray(f).mean().round()) for f in clip.frames]
    assert all(abs(v - 10 * i) <= 3 for v, i in zip(values, segment_midpoints(12, 3)))
    assert len(load_video(path, num_frames=8).frames) == 8
    assert len(load_video(path, fps=1.0, max_frames=2).frames) == 2


def test_bad_video_is_named(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"not a video")
    with pytest.raises(ValueError, match="broken.mp4"):
        load_video(path)
    with pytest.raises(ValueError, match="at least one frame"):
        Video(())
