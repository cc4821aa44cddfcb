"""``make bench-data``: how fast the data pipeline is, measured on this machine.

Prints, all measured here:

1. decode speed (frames/s) of decord and of PyAV, one thread each, on the default synthetic
   set (generated into ``data/synth_av`` if absent) and on a 1280x720 H.264 clip made here;
2. content hashing speed (MB/s), the price of the decode cache's keys;
3. DataModule throughput (training clips/s) cold (empty cache: decoding) and warm (cache),
   and their ratio;
4. the loader with 2 workers delivering tiny-model training batches (s/batch) against one
   training step of the tiny BasicVSR (``model/backbone=basicvsr_tiny``) with one
   and with two torch threads, the ratio, and the step time when the loader feeds it;
5. AVE scale: ``--ave-clips`` clips of 10 s at 640x360, 25 fps, H.264 (a key frame every
   ``--gop`` frames) + AAC, laid out as AVE with random event windows; per clip: setup time
   and disk of the cached and the stream decode paths, loader throughput (clips/s, 2 workers,
   256x256 HR crops, 5- and 15-frame clips) of each, extrapolated to AVE's 4,143 clips and
   compared with what a paper-size training step consumes (``--step-*``: by default
   BasicVSR's recipe, mmagic's ``basicvsr_2xb4_reds4``: 2 GPUs x 4 clips of 15 frames,
   300,000 iterations, at a reported 4 days on 2 GPUs, ckkelvinchan/BasicVSR-IconVSR#13).

Usage: ``python benchmarks/bench_data.py [--data-root data/synth_av] [--steps 10]
[--sections basic ave] [--ave-clips 20]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # media.py: the tests' writers of media files


def timed(function: Callable[[], object]) -> float:
    """Seconds ``function()`` takes."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def synthetic_set(root: Path) -> Path:
    """The default synthetic set at ``root``, generated first if absent."""
    from avvsr.data.synthetic import SynthConfig, generate

    if not (root / "manifest.json").is_file():
        print(f"generating the default synthetic set into {root} ...", flush=True)
        print(f"  took {timed(lambda: generate(SynthConfig(), root)):.1f} s")
    return root


def hd_clip(folder: Path, num_frames: int = 60) -> Path:
    """A 1280x720 H.264 clip (moving waves and grain, 30 fps) with a tone (write_video)."""
    from avvsr.data.video_writer import write_video

    rows, cols = np.mgrid[0:720, 0:1280].astype(np.float32)
    grain = np.random.default_rng(0).normal(0.0, 12.0, (720 + 4 * num_frames, 1280, 3))
    frames = np.empty((num_frames, 720, 1280, 3), dtype=np.uint8)
    for index in range(num_frames):
        shift = 4.0 * index
        wave = np.sin((cols + shift) / 23.0) * np.cos((rows - shift) / 17.0)
        moving_grain = grain[4 * index : 4 * index + 720]  # scrolls 4 px a frame
        frames[index] = np.clip(127 + 90 * wave[..., None] + moving_grain, 0, 255)
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(num_frames * 16000 // 30) / 16000)
    return write_video(folder / "hd.mp4", frames, 30.0, tone.astype(np.float32), 16000)


def decord_frames(path: Path) -> int:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    return len(reader.get_batch(list(range(len(reader)))).asnumpy())


def pyav_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        count = 0
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            count += 1
        return count


def decode_rate(decoder: Callable[[Path], int], paths: list[Path]) -> float:
    """Frames per second decoding every file of ``paths`` to RGB arrays."""
    decoder(paths[0])  # warm-up: libraries loaded, file in the page cache
    start = time.perf_counter()
    frames = sum(decoder(path) for path in paths)
    return frames / (time.perf_counter() - start)


def hash_rate(paths: list[Path]) -> float:
    """MB/s of SHA-256 over the files (the cache key), bypassing the per-process memo."""
    import hashlib

    start = time.perf_counter()
    size = 0
    for path in paths:
        with open(path, "rb") as file:
            hashlib.file_digest(file, "sha256")
        size += path.stat().st_size
    return size / 1e6 / (time.perf_counter() - start)


def data_module(root: Path, cache_dir: Path, **options):
    from avvsr.data.datamodule import AVVSRDataModule
    from avvsr.data.sources import SyntheticSource

    return AVVSRDataModule(SyntheticSource(root, "train"), scale=4, cache_dir=cache_dir,
                           **options)


def epoch_throughput(root: Path, cache_dir: Path) -> tuple[float, float, int]:
    """(setup s, first-epoch s, clips) of a DataModule on ``cache_dir``, no workers."""
    module = data_module(root, cache_dir, num_workers=0)
    setup_s = timed(lambda: module.setup("fit"))
    epoch_s = timed(lambda: sum(1 for _ in module.train_dataloader()))
    return setup_s, epoch_s, len(module.datasets["train"])


def tiny_backbone():
    """The tiny BasicVSR (``model/backbone=basicvsr_tiny``) at scale 4, composed as the
    command line composes it."""
    from hydra.utils import instantiate

    from avvsr.config import compose

    return instantiate(compose("train", ["model/backbone=basicvsr_tiny"]).model.backbone)


def train_step_factory() -> Callable[[dict], None]:
    """One optimisation step of the tiny BasicVSR (Charbonnier loss, Adam) on a batch."""
    import torch

    model = tiny_backbone()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)

    def step(batch: dict) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.sqrt((model(batch["lq"]) - batch["gt"]) ** 2 + 1e-6).mean()
        loss.backward()
        optimizer.step()

    return step


def cycle(loader) -> Iterator[dict]:
    while True:
        yield from loader


# ---------------------------------------------------------------------------- AVE scale
AVE_CLIPS = 4143  # videos in AVE (Tian et al., ECCV 2018)
AVE_SIZE, AVE_FPS, AVE_SECONDS, AVE_RATE = (360, 640), 25, 10, 44100


def ave_clip_writer(gop: int, seed: int) -> Callable[[Path], Path]:
    """A writer of AVE-like clips: textured content panning 3 px a frame with moving grain,
    stereo noise plus a tone, H.264 (``gop`` frames between key frames, CRF 23) + AAC."""
    from media import write_av

    height, width = AVE_SIZE
    num = AVE_FPS * AVE_SECONDS
    rng = np.random.default_rng(seed)
    grain = rng.normal(0.0, 10.0, (height, width + 3 * num + 64, 3))
    rows, cols = np.mgrid[0:height, 0 : grain.shape[1]].astype(np.float32)
    texture = 127 + 80 * np.sin(cols / 19.0) * np.cos(rows / 13.0)
    scene = np.clip(texture[..., None] + grain, 0, 255).astype(np.uint8)
    times = np.arange(AVE_RATE * AVE_SECONDS) / AVE_RATE

    def write(path: Path) -> Path:
        offset = int(rng.integers(0, 64))
        frames = np.stack([scene[:, 3 * i + offset : 3 * i + offset + width] for i in range(num)])
        audio = 0.1 * rng.normal(size=(2, len(times))) + 0.3 * np.sin(2 * np.pi * 440 * times)
        return write_av(path, frames, fps=AVE_FPS, audio=np.clip(audio, -1, 1),
                        sample_rate=AVE_RATE, video_settings={"gop_size": gop})

    return write


def ave_set(root: Path, clips: int, gop: int) -> Path:
    """An AVE-shaped set of ``clips`` videos, every one in the train split, each with an event
    window of whole seconds drawn at random (start 0-4 s, at least 3 s long)."""
    from media import write_ave_folder

    rng = np.random.default_rng(0)
    records = []
    for index in range(clips):
        start = int(rng.integers(0, 5))
        end = int(rng.integers(start + 3, AVE_SECONDS + 1))
        records.append(f"Event&clip{index:04d}&good&{start}&{end}")
    return write_ave_folder(root, {"train": records}, write=ave_clip_writer(gop, seed=1))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def ave_module(root: Path, cache_dir: Path, decode: str, clip_len: int = 5, **options):
    from avvsr.data.datamodule import AVVSRDataModule
    from avvsr.data.sources import AVESource

    return AVVSRDataModule(
        AVESource(root, "train"), scale=4, cache_dir=cache_dir, decode=decode,
        clip_len=clip_len, crop_size=256, batch_size=4, num_workers=2, cache_workers=2,
        persistent_workers=True, progress=False, **options,
    )


def loader_rate(module, batches: int) -> float:
    """Training clips/s of ``module``'s loader after its first batch (workers started)."""
    loader = cycle(module.train_dataloader())
    next(loader)
    start = time.perf_counter()
    clips = sum(len(next(loader)["key"]) for _ in range(batches))
    return clips / (time.perf_counter() - start)


def ave_section(args, scratch: Path) -> None:
    print(f"\n5. AVE scale: {args.ave_clips} clips of {AVE_SECONDS} s at {AVE_SIZE[1]}x"
          f"{AVE_SIZE[0]}, {AVE_FPS} fps, H.264 (key frame every {args.gop} frames) + AAC")
    root = scratch / "AVE_Dataset"
    made_s = timed(lambda: ave_set(root, args.ave_clips, args.gop))
    video_mb = folder_bytes(root / "AVE") / 1e6 / args.ave_clips
    from avvsr.data.sources import AVESource

    windows = [(r.end_s - r.start_s) for r in AVESource(root, "train")]
    print(f"  generated in {made_s:.0f} s; {video_mb:.2f} MB of video per clip; event windows "
          f"{min(windows):.0f}-{max(windows):.0f} s, mean {np.mean(windows):.1f} s")
    rows = {}
    for decode in ("cached", "stream"):
        cache_dir = scratch / f"cache-{decode}"
        setup_s = timed(lambda d=decode, c=cache_dir: ave_module(root, c, d).setup("fit"))
        again_s = timed(lambda d=decode, c=cache_dir: ave_module(root, c, d).setup("fit"))
        rows[decode] = {"setup": setup_s / args.ave_clips, "again": again_s / args.ave_clips,
                        "disk": folder_bytes(cache_dir) / 1e6 / args.ave_clips}
    variants = [("cached", "cached", "pyav"), ("stream", "stream", "pyav"),
                ("stream (decord seek)", "stream", "decord")]
    for label, decode, reader in variants:
        rates = []
        for clip_len in (5, 15):
            module = ave_module(root, scratch / f"cache-{decode}", decode, clip_len,
                                stream_reader=reader)
            module.setup("fit")
            rates.append(loader_rate(module, args.ave_batches))
        rows.setdefault(label, dict(rows[decode]))["rates"] = rates

    step_rate = args.step_iterations / (args.step_days * 86400)
    needed = step_rate * args.step_batch
    print(f"  paper-size step (assumed): {args.step_iterations:,} iterations in "
          f"{args.step_days:g} days = {step_rate:.2f} steps/s x {args.step_batch} clips of 15 "
          f"frames = {needed:.1f} clips/s to keep the GPUs fed")
    print(f"\n  | path | setup s/clip (again) | cache MB/clip | clips/s, 5 frames | clips/s, "
          f"15 frames | {AVE_CLIPS:,} clips: setup h | disk GB | workers for {needed:.1f} "
          "clips/s of 15 frames |")
    print("  |---|---|---|---|---|---|---|---|")
    for label, _, _ in variants:
        row = rows[label]
        hours = row["setup"] * AVE_CLIPS / 3600
        disk_gb = row["disk"] * AVE_CLIPS / 1e3
        five, fifteen = row["rates"]
        print(f"  | {label} | {row['setup']:.2f} ({row['again']:.3f}) | {row['disk']:.1f} | "
              f"{five:.1f} | {fifteen:.1f} | {hours:.2f} | {disk_gb:.1f} | "
              f"{2 * needed / fifteen:.0f} |")
    print("  setup: 2 processes here (data.cache_workers); 'again': the same setup with the "
          "cache built; loaders: 2 workers, batch 4, HR crops 256x256 at x4; workers: loader "
          "workers at this machine's speed per worker")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, default=REPO / "data" / "synth_av")
    parser.add_argument("--steps", type=int, default=10, help="batches and training steps timed")
    parser.add_argument("--sections", nargs="+", choices=("basic", "ave"),
                        default=["basic", "ave"], help="basic: sections 1-4; ave: section 5")
    parser.add_argument("--ave-clips", type=int, default=20, help="AVE-shaped clips generated")
    parser.add_argument("--ave-batches", type=int, default=6, help="batches of 4 timed a path")
    parser.add_argument("--gop", type=int, default=50, help="frames between key frames")
    parser.add_argument("--step-iterations", type=int, default=300_000,
                        help="iterations of the assumed training (BasicVSR: 300,000)")
    parser.add_argument("--step-days", type=float, default=4.0,
                        help="days they take (4: BasicVSR on REDS, 2 GPUs, "
                        "ckkelvinchan/BasicVSR-IconVSR#13)")
    parser.add_argument("--step-batch", type=int, default=8,
                        help="clips per step (8: mmagic basicvsr_2xb4_reds4, 2 GPUs x 4)")
    args = parser.parse_args(argv)
    if "ave" in args.sections and "basic" not in args.sections:
        with tempfile.TemporaryDirectory(prefix="avvsr-bench-") as scratch:
            ave_section(args, Path(scratch))
        return

    import torch

    torch.manual_seed(0)
    root = synthetic_set(args.data_root)
    from avvsr.data.synthetic import load_manifest

    manifest = load_manifest(root)
    videos = [root / entry.video for split in manifest.splits.values() for entry in split]
    print(f"synthetic set: {root} ({len(videos)} videos, "
          f"{manifest.params['width']}x{manifest.params['height']}, "
          f"{manifest.params['num_frames']} frames each)")
    print(f"torch threads: {torch.get_num_threads()}")

    with tempfile.TemporaryDirectory(prefix="avvsr-bench-") as scratch:
        scratch = Path(scratch)
        print("\n1. decode speed (RGB frames/s, one decoder thread)")
        hd = hd_clip(scratch)
        for name, paths in ((f"synthetic set ({len(videos)} files)", videos),
                            ("1280x720 clip (60 frames)", [hd])):
            print(f"  {name}: decord {decode_rate(decord_frames, paths):8.1f}   "
                  f"PyAV {decode_rate(pyav_frames, paths):8.1f}")

        print("\n2. cache key: SHA-256 of the file bytes")
        size_mb = sum(p.stat().st_size for p in videos) / 1e6
        print(f"  synthetic set ({size_mb:.1f} MB): {hash_rate(videos):.0f} MB/s; "
              f"1280x720 clip ({hd.stat().st_size / 1e6:.1f} MB): {hash_rate([hd]):.0f} MB/s")

        print("\n3. DataModule throughput, train split, batch 4, no workers")
        cache_dir = scratch / "cache"
        cold_setup, cold_epoch, clips = epoch_throughput(root, cache_dir)
        warm_setup, warm_epoch, _ = epoch_throughput(root, cache_dir)
        cold = clips / (cold_setup + cold_epoch)
        warm = clips / (warm_setup + warm_epoch)
        print(f"  cold (decode into an empty cache): setup {cold_setup:.2f} s + epoch "
              f"{cold_epoch:.2f} s for {clips} clips = {cold:.1f} clips/s")
        print(f"  warm (read the cache):             setup {warm_setup:.2f} s + epoch "
              f"{warm_epoch:.2f} s for {clips} clips = {warm:.1f} clips/s")
        print(f"  warm / cold = {warm / cold:.1f}x (target >= 10x)")

        print(f"\n4. loader (2 workers) vs a tiny BasicVSR training step, {args.steps} batches")
        module = data_module(root, cache_dir, num_workers=2, persistent_workers=True)
        module.setup("fit")
        batches = cycle(module.train_dataloader())
        next(batches)  # workers started
        start = time.perf_counter()
        held = [next(batches) for _ in range(args.steps)]
        loader_s = (time.perf_counter() - start) / args.steps
        print(f"  loader alone: {loader_s * 1000:.1f} ms/batch "
              f"(lq {tuple(held[0]['lq'].shape)}, gt {tuple(held[0]['gt'].shape)})")
        step = train_step_factory()
        for threads in (1, 2):
            torch.set_num_threads(threads)
            step(held[0])  # warm-up
            step_s = timed(lambda: [step(batch) for batch in held]) / args.steps
            fed_s = timed(lambda: [step(next(batches)) for _ in range(args.steps)]) / args.steps
            print(f"  torch threads {threads}: training step {step_s * 1000:.1f} ms "
                  f"(batches in memory) = {step_s / loader_s:.1f}x the loader's time per "
                  f"batch; fed by the loader {fed_s * 1000:.1f} ms/step "
                  f"({fed_s / step_s:.2f}x)")
        if "ave" in args.sections:
            ave_section(args, scratch)

if __name__ == "__main__":
    main()
