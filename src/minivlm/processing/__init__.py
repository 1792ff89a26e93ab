"""Processing: conversations and media -> `Batch`. Used by data/ and model/ alike; imports
neither (only the encoders' `ImageSpec`)."""

from minivlm.processing.batch import IGNORE_INDEX, PLACEHOLDER_ID, Batch, LazyPixels
from minivlm.processing.processor import Processor
from minivlm.processing.templates import ChatTemplate, Turn
from minivlm.processing.video import Video, VideoFile, load_video, open_video

__all__ = [
    "IGNORE_INDEX", "PLACEHOLDER_ID", "Batch", "ChatTemplate", "LazyPixels", "Processor", "Turn", "Video", "VideoFile",
    "load_video", "open_video",
]
