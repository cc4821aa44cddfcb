"""avvsr-upscale on real video files: chunked inference, audio, frame times, bad input.

The models are the session fixture ``tiny_checkpoints`` (``tests/conftest.py``): Lightning
checkpoints of the repository's tiny model config, the fusion one trained on a moving texture.
"""

from __future__ import annotations

import os
import signal
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avvsr.checkpoint import load_model
from avvsr.cli import upscale as upscale_cli
from avvsr.data.audio_io import read_audio
from avvsr.data.io import probe_video, read_frames
from avvsr.errors import MemoryBudgetError, MissingAudioError, NotAVideoError
from avvsr.inference import InferenceSettings, blend_weights, window_starts
from avvsr.upscaling import upscale_video
from helpers.models import FPS, moving_texture, single_thread, tone_log_mel
from media import (
    frame_level,
    moving_pattern,
    onset,
    tone,
    truncate_tail,
    write_av,
    write_garbage,
    write_test_video,
    write_vfr_video,
    write_video_without_audio,
)

PSNR_TOLERANCE_DB = 0.05  # the requirement: chunking costs at most this much


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """``(T, 3, H, W)`` in [0, 1] -> uint8 ``(T, H, W, 3)``."""
    return (video.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def psnr(output: np.ndarray, reference: np.ndarray) -> float:
    error = np.mean((output.astype(np.float64) - reference.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / error))


@pytest.fixture(scope="module")
def fusion_model(tiny_checkpoints):
    return load_model(tiny_checkpoints["msavf"])


@pytest.fixture(scope="module")
def plain_model(tiny_checkpoints):
    return load_model(tiny_checkpoints["none"])


# Several windows on a short clip; every size fixed, so no memory plan (and no probe forward).
FAST = InferenceSettings(chunk=8, overlap=2, tile=0, tile_overlap=0)


# --------------------------------------------------------------------------------------------
# Windows and blending


@pytest.mark.parametrize(("length", "window", "overlap"), [(80, 32, 8), (70, 32, 8), (5, 32, 8),
                                                           (33, 8, 0), (19, 8, 7), (9, 8, 2)])
def test_windows_cover_everything_and_weights_cross_fade_to_one(length, window, overlap):
    starts = window_starts(length, window, overlap)
    weights = blend_weights(starts, window, length)
    coverage = torch.zeros(length)
    for start, weight in zip(starts, weights, strict=True):
        assert len(weight) == min(window, length)  # every window is full
        coverage[start : start + len(weight)] += weight
        assert (weight > 0).all()
    for previous, following in zip(starts[:-1], starts[1:], strict=True):
        assert previous + window - following >= overlap
    torch.testing.assert_close(coverage, torch.ones(length))


# --------------------------------------------------------------------------------------------
# Quality of chunked inference


def test_chunked_output_within_tolerance_of_whole_sequence(fusion_model):
    from avvsr.data.degradations import degrade
    from avvsr.inference import ChunkedUpscaler

    num_frames = 80  # three windows at the default chunk and overlap
    hr = moving_texture(num_frames, 64, 96, seed=1)
    lq_frames = to_uint8(degrade(hr, fusion_model.scale))
    gt = to_uint8(hr)
    audio = tone_log_mel(fusion_model.audio_features, num_frames)
    lq = torch.from_numpy(lq_frames).permute(0, 3, 1, 2)[None] / 255
    with torch.inference_mode():
        whole = to_uint8(fusion_model.net(lq, audio[None]).sr[0])

    def chunked(settings: InferenceSettings) -> np.ndarray:
        upscaler = ChunkedUpscaler(fusion_model.net, settings)
        chunks = (lq_frames[i : i + 10] for i in range(0, num_frames, 10))
        frames = upscaler.upscale(chunks, num_frames, lambda first, last: audio[first:last])
        return np.concatenate(list(frames))

    default = chunked(InferenceSettings())
    assert default.shape == gt.shape
    assert abs(psnr(default, gt) - psnr(whole, gt)) <= PSNR_TOLERANCE_DB
    # The trained model does use its temporal context: frame by frame it loses more than that.
    single_frames = chunked(InferenceSettings(chunk=1, overlap=0))
    assert psnr(whole, gt) - psnr(single_frames, gt) > PSNR_TOLERANCE_DB


def test_tiles_blend_to_the_untiled_output(fusion_model, tmp_path):
    from avvsr.inference import ChunkedUpscaler

    lq = torch.from_numpy(to_uint8(moving_texture(6, 40, 36, seed=2))).permute(0, 3, 1, 2) / 255
    audio = tone_log_mel(fusion_model.audio_features, 6)
    whole = ChunkedUpscaler(fusion_model.net).upscale_window(lq, audio)
    tiled = ChunkedUpscaler(fusion_model.net, InferenceSettings(tile=16, tile_overlap=6))
    tiled_output = tiled.upscale_window(lq, audio)
    assert tiled_output.shape == whole.shape
    bicubic = F.interpolate(lq, scale_factor=fusion_model.scale, mode="bicubic").clamp(0, 1)
    reference = to_uint8(whole)
    assert psnr(to_uint8(tiled_output), reference) > psnr(to_uint8(bicubic), reference)


def test_audio_features_of_a_chunk_are_those_of_its_frames(fusion_model, tmp_path):
    from avvsr.inference import frame_audio_for

    video = write_test_video(tmp_path / "in.mp4", num_frames=30, fps=FPS)
    info = probe_video(video)
    frame_audio = frame_audio_for(fusion_model, video, True, info.timestamps_s, False)
    everything = frame_audio.features(0, info.num_frames)
    torch.testing.assert_close(frame_audio.features(11, 23), everything[11:23])
    # Different frames hear different audio (the windows move with the frames).
    assert not torch.equal(everything[0], everything[15])


def test_streamed_audio_features_are_those_of_the_whole_track_bit_for_bit(fusion_model, tmp_path):
    from avvsr.data.audio_io import audio_windows
    from avvsr.inference import frame_audio_for

    video = write_test_video(tmp_path / "in.mp4", num_frames=40, fps=FPS)
    info = probe_video(video)
    settings = fusion_model.audio_features
    track = read_audio(video, settings.sample_rate)
    with frame_audio_for(fusion_model, video, True, info.timestamps_s, False) as frame_audio:
        for first, last in [(0, 4), (0, 16), (12, 28), (24, 40)]:  # as the upscaler asks
            windows = audio_windows(track, info.timestamps_s[first:last], settings.window_s)
            expected = frame_audio.log_mel(torch.from_numpy(windows))
            assert torch.equal(frame_audio.features(first, last), expected)


def test_a_long_soundtrack_is_never_held_whole(fusion_model, tmp_path):
    """Two minutes of sound under frames at 5 fps, its features asked for window by window as
    the upscaler asks: the arrays allocated at the peak are a fraction of the decoded track."""
    from avvsr.inference import frame_audio_for

    duration_s, fps, chunk, overlap = 120.0, 5.0, 8, 2
    num_frames = round(duration_s * fps)
    video = write_av(tmp_path / "long.mp4", moving_pattern(num_frames, 16, 16), fps=fps,
                     audio=tone(440.0, duration_s))
    info = probe_video(video)
    track_bytes = 4 * duration_s * fusion_model.audio_features.sample_rate  # float32 samples
    tracemalloc.start()
    try:
        with frame_audio_for(fusion_model, video, True, info.timestamps_s, False) as frame_audio:
            for start in window_starts(num_frames, chunk, overlap):
                frame_audio.features(start, min(start + chunk, num_frames))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < track_bytes / 3


def test_an_upscale_that_fails_after_opening_the_soundtrack_closes_it(fusion_model, tmp_path,
                                                                     monkeypatch):
    """A budget too small for any plan fails after the soundtrack is open: the reader is
    closed on the way out (not left to the garbage collector) and nothing is written."""
    from avvsr.data.audio_io import AudioReader

    readers, original_open = [], AudioReader._open

    def recording_open(reader):
        readers.append(reader)
        original_open(reader)

    monkeypatch.setattr(AudioReader, "_open", recording_open)
    # Ten seconds of sound: the plan's probe reads only its first frames' windows, so the
    # reader is still open (not at the end of the stream) when the plan fails.
    source = write_av(tmp_path / "in.mp4", moving_pattern(50, 16, 16), fps=5.0,
                      audio=tone(440.0, 10.0))
    out = tmp_path / "out.mp4"
    with pytest.raises(MemoryBudgetError):
        upscale_video(source, out, fusion_model, InferenceSettings(max_memory=1 << 20),
                      progress=False)
    assert readers and all(reader._container is None for reader in readers)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_each_window_gets_the_audio_of_its_frames(fusion_model, tmp_path, monkeypatch):
    from avvsr.inference import frame_audio_for

    num_frames = 20
    source = write_av(tmp_path / "in.mp4", moving_pattern(num_frames, 16, 24), fps=FPS,
                      audio=onset(0.3, num_frames / FPS))  # silence, then a tone
    info = probe_video(source)
    everything = frame_audio_for(fusion_model, source, True, info.timestamps_s, False).features(
        0, num_frames
    )
    levels = torch.tensor([frame_level(i) for i in range(num_frames)], dtype=torch.float32)
    forward, seen = fusion_model.net.forward, set()

    def check_audio(lq, audio):
        # Which frames these are, from each frame's background grey level (media.frame_level).
        frames = (lq[0, :, :, 0, 0].mean(1)[:, None] * 255 - levels).abs().argmin(1)
        torch.testing.assert_close(audio[0], everything[frames])
        seen.update(frames.tolist())
        return forward(lq, audio)

    monkeypatch.setattr(fusion_model.net, "forward", check_audio)
    upscale_video(source, tmp_path / "out.mp4", fusion_model, FAST, progress=False)
    assert seen == set(range(num_frames))
    assert not torch.equal(everything[0], everything[-1])  # the audio does change over time


# --------------------------------------------------------------------------------------------
# Whole files


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(packet) for packet in container.demux(audio=0) if packet.size]


def test_upscale_copies_audio_packets_and_keeps_frame_times(fusion_model, tmp_path):
    source = write_test_video(tmp_path / "in.mp4", num_frames=20, fps=FPS, height=16, width=24)
    report = upscale_video(source, tmp_path / "out.mp4", fusion_model, FAST, progress=False)
    assert report.audio == "copied"
    src, out = probe_video(source), probe_video(report.path)
    assert out.num_frames == src.num_frames
    assert (out.width, out.height) == (4 * src.width, 4 * src.height)
    np.testing.assert_array_equal(out.timestamps_s, src.timestamps_s)
    assert audio_packets(report.path) == audio_packets(source)
    assert read_audio(report.path).start_s == read_audio(source).start_s
    assert not list(tmp_path.glob(".*partial*"))


def test_audio_reencoded_when_the_container_cannot_hold_it(fusion_model, tmp_path):
    source = write_test_video(tmp_path / "in.mp4", num_frames=20, fps=FPS, height=16, width=24)
    report = upscale_video(source, tmp_path / "out.webm", fusion_model, FAST, progress=False)
    assert report.audio == "re-encoded"
    with av.open(str(report.path)) as container:
        assert container.streams.audio[0].codec_context.name == "opus"  # webm takes Opus

    def peak_hz(path: Path) -> float:
        track = read_audio(path)
        spectrum = np.abs(np.fft.rfft(track.samples))
        return np.fft.rfftfreq(len(track.samples), 1 / track.sample_rate)[spectrum.argmax()]

    bin_hz = 16000 / len(read_audio(source).samples)
    assert abs(peak_hz(report.path) - peak_hz(source)) <= bin_hz


def test_fusion_model_refuses_video_without_audio_unless_allowed(fusion_model, tmp_path):
    source = write_video_without_audio(tmp_path / "silent.mp4", height=16, width=24)
    with pytest.raises(MissingAudioError, match="silent.mp4.*--allow-silent"):
        upscale_video(source, tmp_path / "out.mp4", fusion_model, FAST, progress=False)
    assert not (tmp_path / "out.mp4").exists()
    report = upscale_video(
        source, tmp_path / "out.mp4", fusion_model, FAST, allow_silent=True, progress=False
    )
    assert report.audio == "none"
    assert not probe_video(report.path).has_audio
    assert probe_video(report.path).num_frames == probe_video(source).num_frames


def test_plain_model_upscales_video_without_audio(plain_model, tmp_path):
    source = write_video_without_audio(tmp_path / "silent.mp4", height=16, width=24)
    report = upscale_video(source, tmp_path / "out.mkv", plain_model, FAST, progress=False)
    out = probe_video(report.path)
    assert not out.has_audio
    assert (out.num_frames, out.width, out.height) == (20, 4 * 24, 4 * 16)


def test_odd_frame_size_gives_scale_times_input_size(fusion_model, tmp_path):
    source = write_test_video(
        tmp_path / "odd.mkv", num_frames=12, height=13, width=19, pix_fmt="yuv444p"
    )
    report = upscale_video(source, tmp_path / "out.mkv", fusion_model, FAST, progress=False)
    out = probe_video(report.path)
    assert (out.width, out.height) == (4 * 19, 4 * 13)
    assert out.num_frames == 12


def test_variable_frame_rate_keeps_input_frame_times(fusion_model, tmp_path):
    times = np.cumsum([0.0, 0.04, 0.04, 0.1, 0.02, 0.04, 0.3, 0.04, 0.05, 0.04, 0.04, 0.07])
    source = write_vfr_video(tmp_path / "vfr.mkv", times, audio=tone(440.0, 1.0))
    report = upscale_video(source, tmp_path / "out.mp4", fusion_model, FAST, progress=False)
    with av.open(str(report.path)) as container:
        tick = float(container.streams.video[0].time_base)
    out_times = probe_video(report.path).timestamps_s
    np.testing.assert_allclose(out_times, probe_video(source).timestamps_s, rtol=0, atol=tick)
    np.testing.assert_allclose(out_times, times, rtol=0, atol=tick + 1e-3)  # ms in the source


def test_cut_off_file_upscales_what_remains(plain_model, tmp_path):
    source = truncate_tail(write_test_video(tmp_path / "cut.mkv", height=16, width=24), 0.9)
    report = upscale_video(source, tmp_path / "out.mkv", plain_model, FAST, progress=False)
    assert probe_video(report.path).num_frames == probe_video(source).num_frames
    assert audio_packets(report.path) == audio_packets(source)


def test_unreadable_input_is_reported_and_nothing_written(tmp_path, tiny_checkpoints):
    import subprocess
    import sys

    source = write_garbage(tmp_path / "broken.mp4")
    out = tmp_path / "out" / "up.mp4"
    finished = subprocess.run(
        [sys.executable, "-m", "avvsr.cli.upscale", str(source), str(out),
         "--ckpt", str(tiny_checkpoints["none"])],
        capture_output=True, text=True,
    )
    assert finished.returncode == 2
    assert "broken.mp4" in finished.stderr and "Traceback" not in finished.stderr
    with pytest.raises(NotAVideoError, match="broken.mp4"):
        upscale_video(source, out, load_model(tiny_checkpoints["none"]), progress=False)
    assert list(tmp_path.rglob("*")) == [source]


def test_existing_output_refused_without_overwrite(tmp_path, tiny_checkpoints, capsys):
    source = write_test_video(tmp_path / "in.mp4", num_frames=6, height=16, width=24)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"keep me")
    args = [str(source), str(out), "--ckpt", str(tiny_checkpoints["none"]), "--quiet"]
    with pytest.raises(SystemExit) as exit_info:
        upscale_cli.main(args)
    assert exit_info.value.code == 2
    assert "out.mp4" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert upscale_cli.main([*args, "--overwrite"]) == 0
    assert probe_video(out).num_frames == 6


def test_failure_midway_leaves_no_output(plain_model, tmp_path, monkeypatch):
    source = write_test_video(tmp_path / "in.mp4", num_frames=20, height=16, width=24)
    forward = plain_model.net.forward
    calls = []

    def fail_on_second_window(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("model failed mid-way")
        return forward(*args, **kwargs)

    monkeypatch.setattr(plain_model.net, "forward", fail_on_second_window)
    with pytest.raises(RuntimeError, match="mid-way"):
        upscale_video(source, tmp_path / "out.mp4", plain_model, FAST, progress=False)
    assert len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_cli_bf16_on_cpu_with_tiles(tmp_path, tiny_checkpoints):
    source = write_test_video(tmp_path / "in.mp4", num_frames=10, height=16, width=24)
    common = ["--ckpt", str(tiny_checkpoints["msavf"]), "--chunk", "6", "--overlap", "2",
              "--tile", "12", "--tile-overlap", "4", "--quiet", "--crf", "0"]
    for precision in ("bf16", "fp32"):
        out = tmp_path / f"{precision}.mp4"
        assert upscale_cli.main([str(source), str(out), *common, "--precision", precision]) == 0
    bf16, fp32 = read_frames(tmp_path / "bf16.mp4"), read_frames(tmp_path / "fp32.mp4")
    assert bf16.shape == fp32.shape == (10, 64, 96, 3)
    lq = torch.from_numpy(read_frames(source)).permute(0, 3, 1, 2).float()
    nearest = F.interpolate(lq, scale_factor=4, mode="nearest").permute(0, 2, 3, 1).numpy()
    assert psnr(bf16, fp32) > psnr(nearest, fp32)


def test_cli_speed_levers_keep_the_output(tmp_path, tiny_checkpoints, capsys):
    source = write_test_video(tmp_path / "in.mp4", num_frames=6, height=16, width=24)
    common = ["--ckpt", str(tiny_checkpoints["msavf"]), "--chunk", "6", "--overlap", "2",
              "--quiet", "--crf", "0"]
    plain, levers = tmp_path / "plain.mkv", tmp_path / "levers.mkv"
    assert upscale_cli.main([str(source), str(plain), *common, "--no-channels-last"]) == 0
    assert upscale_cli.main([str(source), str(levers), *common,  # channels_last: the default
                             "--cudnn-benchmark", "--inference-group", "3"]) == 0
    assert psnr(read_frames(levers), read_frames(plain)) > 50
    defaults = upscale_cli.build_parser().parse_args([str(source), str(levers), *common])
    assert defaults.channels_last is True  # what the plain run above turned off
    with pytest.raises(SystemExit) as exit_info:
        upscale_cli.main([str(source), str(tmp_path / "x.mkv"), *common, "--inference-group", "0"])
    assert exit_info.value.code == 2 and "inference_group" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Audio packets whose times do not increase


def write_repeated_audio_timestamps(path: Path, num_frames: int = 20) -> Path:
    """A Matroska clip (which stores them) whose AAC packets repeat the timestamp of the packet
    before them every third packet, as some cameras and remuxers write."""
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=int(FPS))
        video.width, video.height, video.pix_fmt = 24, 16, "yuv420p"
        audio = container.add_stream("aac", rate=16000, layout="mono")
        sound = av.AudioFrame.from_ndarray(tone(440.0, num_frames / FPS), format="fltp",
                                           layout="mono")
        sound.sample_rate, sound.pts = 16000, 0
        packets = [*audio.encode(sound), *audio.encode(None)]
        for index, image in enumerate(moving_pattern(num_frames, 16, 24)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = index, 1 / video.codec_context.framerate
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        previous = None
        for index, packet in enumerate(packets):
            if index % 3 == 2:
                packet.pts = packet.dts = previous
            previous = packet.pts
            container.mux(packet)
    return path


def test_audio_packets_with_repeated_timestamps_are_retimed(tmp_path, tiny_checkpoints, capsys):
    source = write_repeated_audio_timestamps(tmp_path / "repeated.mkv")
    with av.open(str(source)) as container:
        source_dts = [packet.dts for packet in container.demux(audio=0) if packet.size]
    assert len(set(source_dts)) < len(source_dts)  # the file does hold repeated timestamps
    out = tmp_path / "out.mp4"  # MP4 takes only increasing decoding times
    args = [str(source), str(out), "--ckpt", str(tiny_checkpoints["none"]), "--quiet",
            "--chunk", "8", "--overlap", "2", "--tile", "0"]
    assert upscale_cli.main(args) == 0
    assert "audio copied (timestamps of" in capsys.readouterr().err
    with av.open(str(out)) as container:
        dts = [packet.dts for packet in container.demux(audio=0) if packet.size]
    assert all(later > earlier for earlier, later in zip(dts, dts[1:], strict=False))
    assert audio_packets(out) == audio_packets(source)  # copied unchanged, only retimed
    assert probe_video(out).num_frames == 20


# --------------------------------------------------------------------------------------------
# Memory plan and progress


def test_plan_keeps_1080p_within_the_budget(plain_model):
    from avvsr.inference import ChunkedUpscaler
    from avvsr.memory_plan import plan_inference

    upscaler = ChunkedUpscaler(plain_model.net)
    default = plan_inference(upscaler, InferenceSettings(), 1920, 1080, 300)
    assert default.fits and default.estimate.host <= default.budget
    whole = plan_inference(upscaler, InferenceSettings(chunk=32, tile=0), 1920, 1080, 300)
    assert whole.settings.chunk == 32 and whole.settings.tile == 0  # fixed sizes win
    assert not whole.fits and "over the budget" in whole.describe()
    # A budget below what whole frames need gives a plan within it, with tiles or a shorter
    # window; below the smallest plan, a clear error.
    budget = int(0.6 * whole.estimate.host)
    tight = plan_inference(upscaler, InferenceSettings(max_memory=budget), 1920, 1080, 300)
    assert tight.fits and tight.estimate.host <= budget
    assert tight.settings.tile > 0 or tight.settings.chunk < 32
    with pytest.raises(MemoryBudgetError, match="--max-memory"):
        plan_inference(upscaler, InferenceSettings(max_memory=1 << 20), 1920, 1080, 300)


def test_plan_estimate_grows_with_window_tile_and_frame(plain_model):
    from avvsr.memory_plan import estimate_peak

    def host(chunk=32, tile=0, width=640, height=360):
        settings = InferenceSettings(chunk=chunk, tile=tile).with_defaults()
        return estimate_peak(settings, width, height, 1000, 4, 1000.0, 0).host

    assert host(chunk=16) < host(chunk=32)
    assert host(tile=128) < host(tile=0)
    assert host(width=320, height=180) < host()


def test_progress_moves_from_the_first_tile(fusion_model):
    from avvsr.inference import ChunkedUpscaler

    num_frames = 12
    lq_frames = to_uint8(moving_texture(num_frames, 40, 36, seed=3))
    audio = tone_log_mel(fusion_model.audio_features, num_frames)
    settings = InferenceSettings(chunk=8, overlap=2, tile=16, tile_overlap=4)
    events: list[tuple[str, float]] = []
    upscaler = ChunkedUpscaler(fusion_model.net, settings)
    for frames in upscaler.upscale(
        [lq_frames], num_frames, lambda first, last: audio[first:last],
        progress=lambda done: events.append(("progress", done)),
    ):
        events.append(("frames", len(frames)))
    assert events[0][0] == "progress" and 0 < events[0][1] < 1  # a tile, before any frame
    progress = sum(value for kind, value in events if kind == "progress")
    assert progress == pytest.approx(num_frames)
    assert sum(value for kind, value in events if kind == "frames") == num_frames


def test_cli_prints_the_memory_plan(tmp_path, tiny_checkpoints, capsys):
    source = write_test_video(tmp_path / "in.mp4", num_frames=6, height=16, width=24)
    out = tmp_path / "out.mp4"
    args = [str(source), str(out), "--ckpt", str(tiny_checkpoints["none"]), "--quiet"]
    assert upscale_cli.main([*args, "--max-memory", "6GiB"]) == 0
    err = capsys.readouterr().err
    assert "plan: chunk 32 frames (overlap 8), whole frames, encoder lookahead 40 frames, " \
        "estimated peak" in err
    assert "of 6.0 GiB" in err
    with pytest.raises(SystemExit) as exit_info:
        upscale_cli.main([*args, "--overwrite", "--max-memory", "lots"])
    assert exit_info.value.code == 2
    assert "not a size" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Outputs refused before anything is loaded


def refuse_model_loading(monkeypatch) -> None:
    import avvsr.checkpoint

    def load_model(path):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(avvsr.checkpoint, "load_model", load_model)


@pytest.mark.parametrize("link", ["same path", "hard link", "symbolic link"])
def test_output_that_is_the_input_is_refused(tmp_path, tiny_checkpoints, capsys, monkeypatch,
                                             link):
    refuse_model_loading(monkeypatch)
    source = write_test_video(tmp_path / "in.mp4", num_frames=6, height=16, width=24)
    original = source.read_bytes()
    out = tmp_path / "out.mp4"
    if link == "same path":
        out = source
    elif link == "hard link":
        out.hardlink_to(source)
    else:
        out.symlink_to(source)
    with pytest.raises(SystemExit) as exit_info:
        upscale_cli.main([str(source), str(out), "--ckpt", str(tiny_checkpoints["none"]),
                          "--overwrite", "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "is the input" in err and "Traceback" not in err
    assert source.read_bytes() == original


@pytest.mark.parametrize(
    ("name", "message"),
    [("out.foo", "knows no container"), ("out", "no suffix"), ("folder", "is a folder"),
     ("out.wav", "cannot hold video"), ("file.txt/out.mp4", "is a file, not a folder")],
)
def test_unusable_output_is_refused_before_loading(tmp_path, tiny_checkpoints, capsys,
                                                   monkeypatch, name, message):
    refuse_model_loading(monkeypatch)
    source = write_test_video(tmp_path / "in.mp4", num_frames=6, height=16, width=24)
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        upscale_cli.main([str(source), str(tmp_path / name), "--ckpt",
                          str(tiny_checkpoints["none"]), "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and name.split("/")[-1] in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder", "in.mp4"]


# --------------------------------------------------------------------------------------------
# Signals


def dead_process_id() -> int:
    """The id of a process that has just ended (not reused within a test)."""
    import subprocess
    import sys

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    return int(finished.stdout)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_run_leaves_nothing_and_says_so(tmp_path, tiny_checkpoints, signum, status):
    import socket
    import subprocess
    import sys
    import time

    source = write_test_video(tmp_path / "in.mp4", num_frames=400, height=32, width=32)
    out = tmp_path / "out" / "up.mp4"
    out.parent.mkdir()
    # A partial file as avvsr.atomic names them, of a run on this host that was killed.
    stale = out.parent / f".up.{dead_process_id()}-0123abcd@{socket.gethostname()}.partial.mp4"
    stale.write_bytes(b"left by a killed run")
    process = subprocess.Popen(
        [sys.executable, "-m", "avvsr.cli.upscale", str(source), str(out),
         "--ckpt", str(tiny_checkpoints["none"]), "--chunk", "4", "--overlap", "1",
         "--tile", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        # SIGINT as a terminal leaves it: a test run started in the background (`make test &`)
        # ignores SIGINT, and its children would inherit that and finish instead.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not list(out.parent.glob(f".up.{process.pid}-*.partial.mp4")):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.05)
    assert not stale.exists()  # the dead run's partial file went when the writer started
    time.sleep(0.5)  # mid-run: frames are being written
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == status
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"avvsr-upscale: interrupted by {signal.Signals(signum).name}; nothing was written to "
        f"{out}"
    )
    assert list(out.parent.iterdir()) == []


def test_a_video_that_ends_before_its_probe_says_is_a_decode_error_naming_it(plain_model):
    from avvsr.errors import VideoDecodeError
    from avvsr.inference import ChunkedUpscaler

    upscaler = ChunkedUpscaler(plain_model.net, FAST)
    frames = np.zeros((3, 8, 8, 3), np.uint8)  # the probe promised 6
    with pytest.raises(VideoDecodeError, match="clip.mp4: the video ends after 3 frames"):
        list(upscaler.upscale([frames], 6, source="clip.mp4"))
