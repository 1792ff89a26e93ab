"""Peak memory and time of a long video's vision side: does memory grow with frames?

    PYTHONPATH=src .venv/bin/python benchmarks/long_video.py [--frames 600 1800 3600 10800] [--eager-frames 600 3600]

What is measured: the public inference path from a video file to the LLM's input sequence,
`open_video` (the lazy path) -> `Processor` -> `MiniVLM.assemble` under `torch.no_grad`,
i.e. every frame decoded, encoded, compressed to K tokens and pre-fused with the prompt, the
prompt's fused text averaged over frames, and the K tokens per frame spliced into the LLM
input. Each frame count runs in a fresh process that loads the model with
`MiniVLM.from_pretrained`, resets the peak-RSS counter (`/proc/self/clear_refs`; without
it the peak includes loading), then runs the path once: peak RSS is that process's VmHWM
(what `getrusage` reports as ru_maxrss) with the model resident, time is wall clock. The
same path with `load_video` (every sampled frame decoded up front) runs at `--eager-frames`
for comparison.

The model: a Qwen2-0.5B-shaped LLM (896 wide, 24 layers, 14 heads / 2 KV heads, MLP 4864,
tied 151,936-token vocabulary; 494 M parameters, float32, random weights), the LLM of small
VLMs such as LLaVA-OneVision-0.5B, so that "the model's size" is a real model's. The vision
side is made cheap so that 16,800 frames run in minutes on a 2-core CPU: a 2-layer, 128-wide
CLIP-style encoder at 64 px (16 patches of 16 px, so a frame is 12 KiB of uint8 pixels), one
query token per frame (K = 1, `QueryCompressor(size=1)`), and ONE pre-fusion layer (LLaVA-Mini
uses four). Pre-fusion depth and encoder size change the time per frame and the memory of one
chunk of `--chunk` frames, which does not depend on the number of frames; they do not change
what grows with frames. The video is synthetic, 96×96 px stored at 1 frame per second and
sampled at 1 fps, so a 10,800-frame video is a 3-hour clip; at 1 fps storage, decoding is a
small part of the time (a 30 fps file decodes 30 frames per sampled frame; time stays linear).

What necessarily grows with frames: the K tokens of every frame, which `assemble` writes
chunk by chunk straight into the LLM input (frames × K × 896 × 4 bytes: 37 MiB at 10,800
frames; 35 MiB, 1.8 % of this model, between 600 and 10,800 frames). That is the floor of
this measurement; for a Vicuna-7B LLaVA-Mini in float16 (4096 × 2 bytes a token, 14.6 GiB)
it is 0.6 %. Not measured here: the LLM itself over that input, whose KV cache grows by
24 KiB per frame for this LLM in float32 (253 MiB at 10,800 frames, 13 % of the model) and
by 0.5 MiB per frame for Vicuna-7B in float16 (see `minivlm profile`).

Prints a table and writes benchmarks/results/long_video.json, with the fits t = a + b·frames
(least squares over the lazy runs, for wall-clock time and for the process's CPU time, the
steadier of the two on a shared machine) and their R².
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "<video> Is there a red circle ?"
LLM = dict(
    model_type="qwen2", vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
    num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32_768, tie_word_embeddings=True,
)
ENCODER = dict(
    model_type="clip_vision_model", hidden_size=128, intermediate_size=512, num_hidden_layers=2,
    num_attention_heads=4, image_size=64, patch_size=16,
)
VIDEO_SIZE = 96


def build_model(directory: Path) -> int:
    """Builds the benchmark model (seed 0) with its processor, saves it; returns its size in bytes."""
    import torch

    from minivlm.compressors import QueryCompressor
    from minivlm.data.synthetic import build_shapes_tokenizer
    from minivlm.encoders import HFVisionEncoder
    from minivlm.fusion import DecoderPreFusion
    from minivlm.llms import HFLanguageModel
    from minivlm.model import MiniVLM
    from minivlm.processing import Processor
    from minivlm.processing.templates import get_template
    from minivlm.projectors import MLPProjector

    torch.manual_seed(0)
    encoder = HFVisionEncoder(config=ENCODER)
    llm = HFLanguageModel(config=LLM)
    compressor = QueryCompressor(ENCODER["hidden_size"], size=1, num_heads=4)
    projector = MLPProjector(ENCODER["hidden_size"], LLM["hidden_size"])
    model = MiniVLM(encoder, compressor, projector, DecoderPreFusion(num_layers=1), llm)
    tokenizer = build_shapes_tokenizer()
    model.processor = Processor(tokenizer, get_template("shapes"), encoder.image_spec, model.tokens_per_image)
    model.save_pretrained(directory)
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def write_video(path: Path, frames: int) -> None:
    """`frames` seconds at 1 fps, 96×96 mpeg4: a grey level and a bar that move every frame."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=1)
        stream.width = stream.height = VIDEO_SIZE
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.full((VIDEO_SIZE, VIDEO_SIZE, 3), (7 * i) % 256, dtype=np.uint8)
            image[:, i % VIDEO_SIZE] = (255, 0, 0)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def memory_kib() -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of this process, KiB."""
    lines = Path("/proc/self/status").read_text().splitlines()
    return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines) if k in ("VmRSS", "VmHWM")}


def child(options: argparse.Namespace) -> None:
    """One run in this fresh process: load, reset the peak, video file -> LLM input. Prints JSON."""
    import gc

    import torch

    from minivlm.model import MiniVLM
    from minivlm.processing.templates import Turn
    from minivlm.processing.video import load_video, open_video

    torch.set_num_threads(options.threads)
    model = MiniVLM.from_pretrained(options.model)
    model.frames_per_chunk = options.chunk
    processor = model.processor
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        peak_source = "VmHWM after clear_refs (peak with the model resident)"
    except OSError:
        peak_source = "ru_maxrss of the whole process (clear_refs unavailable: includes loading)"
    before = memory_kib()
    load_before = os.getloadavg()[0]
    cpu = time.process_time()
    start = time.perf_counter()
    read = open_video if options.path == "lazy" else load_video
    video = read(options.video, fps=1.0, max_frames=options.frames)
    batch = processor([[Turn("user", QUESTION)]], [[video]], add_generation_prompt=True)
    with torch.no_grad():
        inputs = model.assemble(batch)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu
    after = memory_kib()
    print(json.dumps({
        "path": options.path,
        "frames": int(inputs.media_mask.sum()) // model.tokens_per_image,
        "llm_tokens": inputs.embeds.shape[1],
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "rss_before_mib": before["VmRSS"] / 1024,
        "peak_rss_mib": after["VmHWM"] / 1024,
        "peak_source": peak_source,
        "llm_input_mib": inputs.embeds.numel() * inputs.embeds.element_size() / 2**20,
    }))


def fit(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least squares y = a + b·x and its R²."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    residual = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    total = sum((y - my) ** 2 for y in ys)
    return {"a_s": a, "b_ms_per_frame": b * 1e3, "r2": 1 - residual / total if total else 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[600, 1800, 3600, 10_800])
    parser.add_argument("--eager-frames", type=int, nargs="*", default=[600, 3600],
                        help="frame counts also run with load_video (every frame decoded up front)")
    parser.add_argument("--chunk", type=int, default=64, help="frames_per_chunk")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "long_video.json"))
    parser.add_argument("--child", choices=["lazy", "eager"], help=argparse.SUPPRESS, dest="path")
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--video", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.path:
        options.frames = options.frames[0]
        child(options)
        return
    if len(options.frames) < 2:
        parser.error("--frames needs at least two counts (growth and the time fit)")

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    env.setdefault("HF_HUB_OFFLINE", "1")
    runs = []
    with tempfile.TemporaryDirectory(prefix="long_video_") as tmp:
        tmp_path = Path(tmp)
        started = time.perf_counter()
        model_bytes = build_model(tmp_path / "model")
        print(f"model: {model_bytes / 2**20:.0f} MiB float32, built and saved in {time.perf_counter() - started:.0f} s")
        for frames in sorted(set(options.frames) | set(options.eager_frames)):
            started = time.perf_counter()
            write_video(tmp_path / f"{frames}.mp4", frames)
            print(f"wrote a {frames}-frame video in {time.perf_counter() - started:.1f} s")
        plan = [("lazy", n) for n in options.frames] + [("eager", n) for n in options.eager_frames]
        for path, frames in plan:
            command = [sys.executable, __file__, "--child", path, "--frames", str(frames), "--model",
                       str(tmp_path / "model"), "--video", str(tmp_path / f"{frames}.mp4"),
                       "--chunk", str(options.chunk), "--threads", str(options.threads)]
            out = subprocess.run(command, env=env, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{path} run at {frames} frames failed:\n{out.stderr}")
            runs.append(json.loads(out.stdout.splitlines()[-1]))
            print(f"  {path:<5} {frames:>6} frames: peak {runs[-1]['peak_rss_mib']:.0f} MiB, {runs[-1]['seconds']:.1f} s")

    model_mib = model_bytes / 2**20
    lazy = sorted((r for r in runs if r["path"] == "lazy"), key=lambda r: r["frames"])
    first, last = lazy[0], lazy[-1]
    growth = last["peak_rss_mib"] - first["peak_rss_mib"]
    time_fit = fit([r["frames"] for r in lazy], [r["seconds"] for r in lazy])
    cpu_fit = fit([r["frames"] for r in lazy], [r["cpu_seconds"] for r in lazy])
    token_bytes = LLM["hidden_size"] * 4  # K = 1 token per frame, float32
    floor_mib = (last["frames"] - first["frames"]) * token_bytes / 2**20
    print(f"\nmodel {model_mib:.0f} MiB; chunk {options.chunk} frames; torch threads {options.threads}; K = 1")
    print(f"{'path':<6} {'frames':>7} {'LLM tokens':>10} {'peak RSS MiB':>12} {'vs first':>9} {'time s':>7} "
          f"{'ms/frame':>8} {'CPU s':>7} {'load':>9}")
    smallest = {p: min((r for r in runs if r["path"] == p), key=lambda r: r["frames"]) for p in {r["path"] for r in runs}}
    for r in sorted(runs, key=lambda r: (r["path"] != "lazy", r["frames"])):
        base = smallest[r["path"]]
        print(f"{r['path']:<6} {r['frames']:>7} {r['llm_tokens']:>10} {r['peak_rss_mib']:>12.0f} "
              f"{r['peak_rss_mib'] - base['peak_rss_mib']:>+9.0f} {r['seconds']:>7.1f} "
              f"{r['seconds'] / r['frames'] * 1e3:>8.2f} {r['cpu_seconds']:>7.1f} "
              f"{r['load_average_1min'][0]:>4.1f}-{r['load_average_1min'][1]:<4.1f}")
    verdict = "under" if growth < 0.05 * model_mib else "NOT under"
    print(f"lazy peak RSS growth {first['frames']} -> {last['frames']} frames: {growth:.0f} MiB = "
          f"{100 * growth / model_mib:.2f} % of the model ({verdict} 5 %); K-token floor: "
          f"{floor_mib:.0f} MiB = {100 * floor_mib / model_mib:.2f} %")
    for name, f in (("wall-clock", time_fit), ("CPU", cpu_fit)):
        print(f"{name} time fit (lazy): t = {f['a_s']:.2f} s + {f['b_ms_per_frame']:.2f} ms × frames, R² = {f['r2']:.4f}")
    result = {
        "model": {"llm": LLM, "encoder": ENCODER, "prefusion_layers": 1, "tokens_per_frame": 1, "bytes": model_bytes},
        "video": {"size": VIDEO_SIZE, "stored_fps": 1, "sampled_fps": 1},
        "chunk": options.chunk,
        "threads": options.threads,
        "machine": {"cpus": os.cpu_count(), "load_average": list(os.getloadavg()), "python": platform.python_version()},
        "runs": runs,
        "lazy_growth_mib": growth,
        "lazy_growth_pct_of_model": 100 * growth / model_mib,
        "token_floor_mib": floor_mib,
        "time_fit": time_fit,
        "cpu_time_fit": cpu_fit,
    }
    Path(options.out).parent.mkdir(parents=True, exist_ok=True)
    Path(options.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
