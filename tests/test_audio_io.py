"""Streaming a soundtrack (``avvsr.data.audio_io.AudioReader``): the windows the chunked
upscaler asks for are those of the whole decoded track, bit for bit, and only the samples the
windows need are held. Clean files are written with the project's writer
(``avvsr.data.video_writer.write_video``); damaged ones with ``tests/media.py``. The repairs
themselves are tested on whole tracks in ``tests/test_io.py``."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from avvsr.data.audio_io import RESAMPLE_BLOCK, AudioReader, audio_windows, read_audio
from avvsr.data.io import probe_video
from avvsr.data.video_writer import write_video
from avvsr.inference import window_starts
from media import (
    corrupt_audio_packets,
    moving_pattern,
    onset,
    tone,
    truncate_tail,
    write_av,
    write_retimed_audio,
)

SAMPLE_RATE = 16000
WINDOW_S = 0.32  # the default feature window (avvsr.data.audio_features)
AAC_FRAME = 1024  # samples per AAC frame


def write_clip(path: Path, duration_s: float, fps: float, sample_rate: int = SAMPLE_RATE) -> Path:
    """A clip of 16 x 16 frames at ``fps`` and a 440 Hz tone whose loudness swells and fades
    (so every window differs), ``duration_s`` seconds of both, written by the project's
    writer."""
    times = np.arange(round(duration_s * sample_rate)) / sample_rate
    swell = 0.5 + 0.4 * np.sin(2 * np.pi * 0.3 * times)
    audio = (swell * np.sin(2 * np.pi * 440.0 * times)).astype(np.float32)
    frames = moving_pattern(round(duration_s * fps), 16, 16)
    return write_video(path, frames, fps, audio, sample_rate)


def chunked_requests(num_frames: int, chunk: int = 8, overlap: int = 2) -> list[tuple[int, int]]:
    """The runs of frames ``(first, last)`` ``avvsr-upscale`` asks the audio of, in order: the
    planner's probe of the first frames, then each overlapping window."""
    windows = [(start, min(start + chunk, num_frames))
               for start in window_starts(num_frames, chunk, overlap)]
    return [(0, min(4, num_frames)), *windows]


def gap_of_half_a_second(number: int, pts: int) -> int:
    return pts + (500 if pts >= 1000 else 0)  # packets from 1 s on stamped 0.5 s late (ms)


def damaged_packets(path: Path) -> Path:
    corrupt_audio_packets(write_clip(path, 3.0, fps=10), [5, 6, 40])
    return path


FILES: dict[str, Callable[[Path], Path]] = {
    "mp4-16k": lambda folder: write_clip(folder / "clip.mp4", 6.0, fps=10),
    "mkv-44k": lambda folder: write_clip(folder / "clip.mkv", 6.0, fps=10, sample_rate=44100),
    "late-start": lambda folder: write_av(
        folder / "late.mkv", moving_pattern(20), fps=10, audio=onset(0.3, 1.5, 44100),
        sample_rate=44100, audio_start_s=0.5,
    ),
    "gap": lambda folder: write_retimed_audio(
        folder / "gap.mkv", tone(440.0, 3.0, 48000), gap_of_half_a_second
    ),
    "overlap": lambda folder: write_retimed_audio(
        folder / "slow.mkv", tone(440.0, 3.0, 48000), lambda number, pts: pts // 2
    ),
    "damaged-packets": lambda folder: damaged_packets(folder / "damaged.mp4"),
    "truncated": lambda folder: truncate_tail(write_clip(folder / "cut.mkv", 3.0, fps=10), 0.8),
}


@pytest.mark.parametrize("kind", FILES)
def test_streamed_windows_are_the_whole_tracks_bit_for_bit_and_damage_is_reported(
    tmp_path: Path, kind: str
) -> None:
    path = FILES[kind](tmp_path)
    times = probe_video(path).timestamps_s
    with warnings.catch_warnings(record=True) as whole_warnings:
        warnings.simplefilter("always")
        track = read_audio(path, SAMPLE_RATE)
    with warnings.catch_warnings(record=True) as streamed_warnings:
        warnings.simplefilter("always")
        with AudioReader(path, SAMPLE_RATE) as reader:
            assert reader.start_s == track.start_s
            for first, last in chunked_requests(len(times)):
                expected = audio_windows(track, times[first:last], WINDOW_S)
                np.testing.assert_array_equal(reader.windows(times[first:last], WINDOW_S), expected)
            assert reader.rewinds == 0
    assert len(streamed_warnings) == len(whole_warnings) <= 1
    for warning in streamed_warnings:
        assert str(warning.message).startswith(f"{path}: damaged audio")


def test_a_run_starting_inside_the_previous_one_is_served_from_the_samples_kept(
    tmp_path: Path,
) -> None:
    path = write_clip(tmp_path / "clip.mp4", 6.0, fps=10)
    track = read_audio(path, SAMPLE_RATE)
    times = probe_video(path).timestamps_s
    with AudioReader(path, SAMPLE_RATE) as reader:
        for first, last in [(10, 20), (14, 30), (29, 31), (29, 40)]:
            expected = audio_windows(track, times[first:last], WINDOW_S)
            np.testing.assert_array_equal(reader.windows(times[first:last], WINDOW_S), expected)
        assert reader.rewinds == 0
        earlier = reader.windows(times[2:6], WINDOW_S)  # before the samples kept
        assert reader.rewinds == 1
        np.testing.assert_array_equal(earlier, audio_windows(track, times[2:6], WINDOW_S))
        end = len(track.samples)
        past_the_end = reader.samples(end - 5, end + 5)
        np.testing.assert_array_equal(past_the_end[:5], track.samples[-5:])
        np.testing.assert_array_equal(past_the_end[5:], np.zeros(5, np.float32))
    early = AudioReader(path, SAMPLE_RATE)
    early.close()
    with pytest.raises(ValueError, match=r"clip\.mp4: the audio reader is closed"):
        early.samples(0, SAMPLE_RATE)


def test_the_reader_keeps_only_the_samples_its_windows_need(tmp_path: Path) -> None:
    duration_s, fps = 60.0, 5.0
    path = write_clip(tmp_path / "long.mp4", duration_s, fps)
    times = probe_video(path).timestamps_s
    window = round(WINDOW_S * SAMPLE_RATE)
    # Decoding stops within one resampling block (native rate = output rate here) and an AAC
    # frame or two past the samples asked for.
    slack = RESAMPLE_BLOCK + 4 * AAC_FRAME
    most_kept = 0
    with AudioReader(path, SAMPLE_RATE) as reader:
        for first, last in chunked_requests(len(times)):
            reader.windows(times[first:last], WINDOW_S)
            needed = round((times[last - 1] - times[first]) * SAMPLE_RATE) + window
            assert reader.kept <= needed + slack, (first, last)
            most_kept = max(most_kept, reader.kept)
    assert most_kept < duration_s * SAMPLE_RATE / 8  # the whole track would be 8 times more


def test_the_encoders_end_padding_is_cut_before_a_window_reaches_it(tmp_path: Path) -> None:
    """The mp4 records where the AAC padding after the last sample starts, and the track ends
    there. Here the last frame completes a resampling block, so its samples, padding included,
    come out before the reader sees the stream end: it must not hand out the padding."""
    import av

    # FFmpeg's AAC encoder adds a frame of priming and pads the last frame: 2 * 64 frames.
    num_samples = 2 * RESAMPLE_BLOCK - AAC_FRAME + 100
    times = np.arange(num_samples) / SAMPLE_RATE
    audio = (0.5 * np.sin(2 * np.pi * 440.0 * times)).astype(np.float32)
    path = write_video(tmp_path / "padded.mp4", moving_pattern(10, 16, 16),
                       10 * SAMPLE_RATE / num_samples, audio, SAMPLE_RATE)
    with av.open(str(path)) as container:
        decoded = sum(frame.samples for frame in container.decode(audio=0))
    assert decoded % RESAMPLE_BLOCK == 0, "the encoder's framing changed: pick another length"
    track = read_audio(path, SAMPLE_RATE)
    assert len(track.samples) < decoded  # the padding is cut
    end = len(track.samples)
    with AudioReader(path, SAMPLE_RATE) as reader:
        np.testing.assert_array_equal(reader.samples(end - 500, end + 500),
                                      np.concatenate([track.samples[-500:], np.zeros(500)]))
