"""Video/audio I/O on real files written with PyAV: decode, errors, alignment, writing."""

from __future__ import annotations

import re
import tracemalloc
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from avvsr.data.audio_io import AudioTrack, audio_windows, read_audio
from avvsr.data.io import (
    iter_frame_chunks,
    probe_video,
    read_frames,
)
from avvsr.data.video_writer import VideoWriter, write_video
from avvsr.errors import (
    EmptyVideoError,
    MediaError,
    MissingAudioError,
    MissingFileError,
    NotAVideoError,
    NoVideoStreamError,
    VideoDecodeError,
)
from media import (
    DIVX_SETTINGS,
    audio_packet_spans,
    corrupt_audio_packets,
    frame_level,
    moving_pattern,
    onset,
    tone,
    truncate_tail,
    write_audio_only,
    write_av,
    write_divx_avi,
    write_empty_video,
    write_garbage,
    write_retimed_audio,
    write_retimed_video,
    write_surround_video,
    write_test_video,
    write_vfr_video,
    write_video_without_audio,
)

SAMPLE_RATE = 16000
# AAC's encoder delay is compensated by the containers to well under a millisecond here; the
# contract is frame-level alignment (frames are 40-100 ms apart in these tests).
ONSET_TOLERANCE_S = 0.002
# AVI cannot record an audio encoder's delay (AC3: 256 samples, 5.3 ms at 48 kHz), so its
# sound plays that much late, as in any player.
ENCODER_DELAY_TOLERANCE_S = 0.006


def has_encoder(name: str) -> bool:
    try:
        av.Codec(name, "w")
    except Exception:
        return False
    return True


needs_vp9_opus = pytest.mark.skipif(
    not (has_encoder("libvpx-vp9") and has_encoder("libopus")),
    reason="this FFmpeg build has no VP9 or Opus encoder",
)
# Every container PyAV writes, each with a codec pair usual in it: (extension, video codec,
# audio codec, native audio rate).
CONTAINERS = [
    pytest.param("mp4", "libx264", "aac", SAMPLE_RATE, id="mp4-h264-aac"),
    pytest.param("mkv", "libx264", "aac", SAMPLE_RATE, id="mkv-h264-aac"),
    pytest.param("mov", "libx264", "aac", SAMPLE_RATE, id="mov-h264-aac"),
    pytest.param("avi", "mpeg4", "ac3", 48000, id="avi-mpeg4-ac3"),
    pytest.param("ts", "libx264", "mp2", 48000, id="ts-h264-mp2"),
    pytest.param("webm", "libvpx-vp9", "libopus", 48000, id="webm-vp9-opus", marks=needs_vp9_opus),
]


def peak_frequency_hz(samples: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / sample_rate)[spectrum.argmax()])


def onset_time_s(track: AudioTrack, threshold: float = 0.25) -> float:
    """Time (seconds, video clock) of the first sample louder than ``threshold``."""
    loud = np.flatnonzero(np.abs(track.samples) > threshold)
    assert loud.size, "no onset found"
    return track.start_s + loud[0] / track.sample_rate


def identify_frames(frames: np.ndarray, candidates: int) -> list[int]:
    """Frame indices recovered from the background level of the top-left pixel."""
    levels = np.array([frame_level(i) for i in range(candidates)])
    observed = frames[:, 0, 0, :].astype(float).mean(axis=1)
    return [int(np.abs(levels - value).argmin()) for value in observed]


# ------------------------------------------------------------------------------------------
# Frames and metadata (decord)


@pytest.mark.parametrize("extension", ["mp4", "mkv"])
def test_probe_reports_frames_rate_size_timestamps_and_audio(tmp_path, extension) -> None:
    path = write_test_video(tmp_path / f"clip.{extension}", num_frames=20, fps=25, width=64)
    info = probe_video(path)
    assert (info.num_frames, info.fps, info.width, info.height) == (20, 25.0, 64, 48)
    assert info.path == str(path)
    assert info.timestamps_s.dtype == np.float64 and info.timestamps_s.shape == (20,)
    np.testing.assert_allclose(info.timestamps_s, np.arange(20) / 25, atol=1e-6)
    assert (info.has_audio, info.audio_sample_rate, info.audio_channels) == (True, SAMPLE_RATE, 1)


def test_probe_without_audio(tmp_path) -> None:
    info = probe_video(write_video_without_audio(tmp_path / "silent.mp4"))
    assert (info.has_audio, info.audio_sample_rate, info.audio_channels) == (False, None, None)


def test_probe_surround_reports_native_rate_and_channels(tmp_path) -> None:
    info = probe_video(write_surround_video(tmp_path / "surround.mp4"))
    assert (info.audio_sample_rate, info.audio_channels) == (48000, 6)


@pytest.mark.parametrize("extension", ["mp4", "mkv"])
def test_variable_frame_rate_timestamps(tmp_path, extension) -> None:
    times = [0.0, 0.1, 0.15, 0.4, 0.45, 0.5, 1.0, 1.03, 1.5]
    path = write_vfr_video(tmp_path / f"vfr.{extension}", times)
    info = probe_video(path)
    assert info.num_frames == len(times)
    np.testing.assert_allclose(info.timestamps_s, times, atol=1e-6)
    assert info.fps > 0
    assert identify_frames(read_frames(path), len(times)) == list(range(len(times)))


# Encoder settings for the round trips: keyframes every 6 frames, so that reading out of order
# crosses keyframes; B-frames where the codec has them (x264 has them by default).
ENCODER_SETTINGS = {
    "libx264": {"gop_size": 6},
    "mpeg4": DIVX_SETTINGS,
    "libvpx-vp9": {"gop_size": 6},
}
OUT_OF_ORDER = [7, 2, 2, 19, 0, 15, 11, 12, 3, 13]


def assert_regular_frame_times(times_s: np.ndarray, fps: float) -> None:
    """Frames exactly ``1 / fps`` apart, the first within one frame of the stream's start
    (FFmpeg presents the first frame of an AVI with B-frames one frame late: the decoder's
    reorder delay)."""
    assert times_s.dtype == np.float64
    np.testing.assert_allclose(np.diff(times_s), 1 / fps, atol=1e-6)
    assert -1e-6 <= times_s[0] <= 1 / fps + 1e-6


@pytest.mark.parametrize("extension, video_codec, audio_codec, native_rate", CONTAINERS)
def test_every_container_reads_back_frames_times_and_audio(
    tmp_path, extension, video_codec, audio_codec, native_rate
) -> None:
    fps, num_frames = 10.0, 20
    path = write_test_video(
        tmp_path / f"clip.{extension}",
        num_frames=num_frames,
        fps=fps,
        sample_rate=native_rate,
        video_codec=video_codec,
        audio_codec=audio_codec,
        video_settings=ENCODER_SETTINGS[video_codec],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an intact file reads without a repair or a warning
        info = probe_video(path)
        frames, picked = read_frames(path), read_frames(path, OUT_OF_ORDER)
        track = read_audio(path, SAMPLE_RATE)
    assert (info.num_frames, info.fps, info.width, info.height) == (num_frames, fps, 64, 48)
    assert (info.audio_sample_rate, info.audio_channels) == (native_rate, 1)
    assert_regular_frame_times(info.timestamps_s, fps)
    assert identify_frames(frames, num_frames) == list(range(num_frames))
    assert identify_frames(picked, num_frames) == OUT_OF_ORDER
    assert abs(onset_time_s(track)) < ENCODER_DELAY_TOLERANCE_S
    assert -0.05 < track.start_s < ONSET_TOLERANCE_S  # TS: starts early, with the encoder delay
    assert abs(track.duration_s - num_frames / fps) <= 1 / fps
    assert abs(peak_frequency_hz(track.samples, SAMPLE_RATE) - 440.0) <= 2.0


@pytest.mark.parametrize("extension", ["avi", "mp4", "mkv", "mov"])
def test_mpeg4_with_b_frames_has_true_frame_times_and_frames(tmp_path, extension) -> None:
    """DivX/Xvid-style video: decord reports about -3.7e17 s for most frames of such an AVI,
    and its seeking lands on the wrong frames in every container."""
    fps, num_frames, onset_s = 10.0, 20, 1.05
    path = write_av(
        tmp_path / f"divx.{extension}",
        moving_pattern(num_frames),
        fps=fps,
        audio=onset(onset_s, num_frames / fps, 48000),
        sample_rate=48000,
        video_codec="mpeg4",
        audio_codec="ac3",
        video_settings=DIVX_SETTINGS,
    )
    info = probe_video(path)
    assert_regular_frame_times(info.timestamps_s, fps)
    assert identify_frames(read_frames(path), num_frames) == list(range(num_frames))
    for index in OUT_OF_ORDER:
        assert identify_frames(read_frames(path, [index]), num_frames) == [index]
    windows = audio_windows(read_audio(path, SAMPLE_RATE), info.timestamps_s, window_s=0.1)
    assert_onset_where_expected(windows, info.timestamps_s, onset_s, SAMPLE_RATE)


def test_repeated_frame_times_are_repaired_with_a_warning(tmp_path) -> None:
    path = write_retimed_video(tmp_path / "repeats.mkv", 12, lambda index: index // 2 * 0.2)
    with pytest.warns(UserWarning, match=r"repeats\.mkv: frame times repaired \(.*repeat"):
        info = probe_video(path)
    np.testing.assert_allclose(info.timestamps_s, np.arange(12) / 10, atol=1e-9)
    assert identify_frames(read_frames(path), 12) == list(range(12))


def test_read_frames_by_index_in_any_order(tmp_path) -> None:
    path = write_test_video(tmp_path / "clip.mp4", num_frames=20)
    indices = [7, 2, 2, 19, 0]
    frames = read_frames(path, indices)
    assert frames.dtype == np.uint8 and frames.shape == (5, 48, 64, 3)
    assert identify_frames(frames, 20) == indices


def test_read_all_frames_and_empty_selection(tmp_path) -> None:
    path = write_test_video(tmp_path / "clip.mp4", num_frames=12)
    frames = read_frames(path)
    assert frames.shape == (12, 48, 64, 3)
    assert identify_frames(frames, 12) == list(range(12))
    assert read_frames(path, []).shape == (0, 48, 64, 3)


def test_read_frames_refuses_out_of_range_indices(tmp_path) -> None:
    path = write_test_video(tmp_path / "clip.mp4", num_frames=12)
    with pytest.raises(IndexError, match=r"clip\.mp4.*\[12\].*12 frames"):
        read_frames(path, [0, 12])
    with pytest.raises(IndexError, match=r"\[-1\]"):
        read_frames(path, [-1])


def test_frame_chunks_cover_the_video_in_order(tmp_path) -> None:
    path = write_test_video(tmp_path / "clip.mp4", num_frames=23)
    chunks = list(iter_frame_chunks(path, 5))
    assert [len(chunk) for chunk in chunks] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate(chunks), read_frames(path))
    with pytest.raises(ValueError, match="chunk"):
        next(iter_frame_chunks(path, 0))


def test_frame_chunks_stream_in_bounded_memory(tmp_path) -> None:
    num_frames, height, width = 60, 96, 128
    path = write_test_video(
        tmp_path / "long.mp4", num_frames=num_frames, height=height, width=width, tone_hz=None
    )
    whole_video_bytes = num_frames * height * width * 3
    tracemalloc.start()
    try:
        count = sum(len(chunk) for chunk in iter_frame_chunks(path, 4))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == num_frames
    assert peak < whole_video_bytes / 4  # a few 4-frame chunks at most, never the whole video


# ------------------------------------------------------------------------------------------
# Errors


FRAME_READERS = [probe_video, read_frames, lambda path: next(iter_frame_chunks(path, 4))]


@pytest.mark.parametrize("reader", FRAME_READERS, ids=["probe", "read", "chunks"])
def test_bad_files_raise_our_errors_with_the_path(tmp_path, reader, capfd) -> None:
    cases = [
        (tmp_path / "missing.mp4", MissingFileError),
        (write_garbage(tmp_path / "garbage.mp4"), NotAVideoError),
        (tmp_path, NotAVideoError),  # a folder
        (write_audio_only(tmp_path / "sound.m4a"), NoVideoStreamError),
        (write_empty_video(tmp_path / "empty.mkv"), EmptyVideoError),
    ]
    for path, error_type in cases:
        with pytest.raises(error_type) as caught:
            reader(path)
        assert isinstance(caught.value, MediaError)
        assert str(caught.value).startswith(f"{path}: ")
    assert isinstance(MissingFileError("x", "y"), FileNotFoundError)
    # Nothing reaches the process's stderr (decord's C++ and FFmpeg logging stay quiet).
    assert capfd.readouterr().err == ""


def test_truncated_mp4_without_index_is_not_a_video(tmp_path) -> None:
    path = truncate_tail(write_test_video(tmp_path / "cut.mp4"), 0.9)  # moov atom at the end
    with pytest.raises(NotAVideoError, match="cut.mp4"):
        probe_video(path)


@pytest.mark.parametrize("reader", FRAME_READERS, ids=["probe", "read", "chunks"])
def test_truncated_faststart_mp4_says_what_is_wrong(tmp_path, reader) -> None:
    """The index (moov atom) is at the front and intact; the frames it lists are cut off."""
    path = write_test_video(
        tmp_path / "cut.mp4", num_frames=20, container_options={"movflags": "faststart"}
    )
    truncate_tail(path, 0.6)
    with pytest.raises(VideoDecodeError) as caught:
        reader(path)
    message = str(caught.value)
    assert re.fullmatch(
        rf"{re.escape(str(path))}: truncated or damaged video: the container's index promises "
        r"20 frames, only \d+ decode",
        message,
    ), message


def test_decord_failures_read_without_its_clock_time_and_source_location(tmp_path) -> None:
    """A raw H.264 stream (no container timing): decord cannot count its frames."""
    path = write_video_without_audio(tmp_path / "raw.h264")
    with pytest.raises(VideoDecodeError) as caught:
        probe_video(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: decord cannot read the video stream (")
    assert "[" not in message and ".cc:" not in message, message


def test_read_audio_errors(tmp_path) -> None:
    with pytest.raises(MissingFileError, match="nowhere.mp4: no such file"):
        read_audio(tmp_path / "nowhere.mp4")
    silent = write_video_without_audio(tmp_path / "silent.mp4")
    with pytest.raises(MissingAudioError, match="silent.mp4: .*no audio stream"):
        read_audio(silent)
    with pytest.raises(NotAVideoError, match="garbage"):
        read_audio(write_garbage(tmp_path / "garbage.mkv"))


# ------------------------------------------------------------------------------------------
# Audio (PyAV)


@pytest.mark.parametrize("extension, video_codec, audio_codec, native_rate", CONTAINERS)
def test_audio_decodes_as_a_tone_of_the_right_pitch_and_length(
    tmp_path, extension, video_codec, audio_codec, native_rate
) -> None:
    fps, num_frames = 10.0, 20
    path = write_test_video(
        tmp_path / f"tone.{extension}",
        num_frames=num_frames,
        fps=fps,
        sample_rate=native_rate,
        video_codec=video_codec,
        audio_codec=audio_codec,
    )
    track = read_audio(path, SAMPLE_RATE)
    assert track.sample_rate == SAMPLE_RATE
    assert track.samples.dtype == np.float32 and track.samples.ndim == 1
    assert np.abs(track.samples).max() <= 1.0
    assert abs(onset_time_s(track)) < ENCODER_DELAY_TOLERANCE_S
    assert -0.05 < track.start_s < ONSET_TOLERANCE_S  # TS: starts early, with the encoder delay
    assert abs(track.duration_s - num_frames / fps) <= 1 / fps
    assert abs(peak_frequency_hz(track.samples, SAMPLE_RATE) - 440.0) <= 2.0


def test_aac_end_padding_is_trimmed_where_the_container_records_it(tmp_path) -> None:
    written = tone(440.0, 1.5, SAMPLE_RATE)  # 24,000 samples: not a multiple of 1024
    aac_frame = 1024
    lengths = {}
    for extension in ("mp4", "mkv"):
        path = write_av(tmp_path / f"pad.{extension}", moving_pattern(15), audio=written)
        lengths[extension] = len(read_audio(path, SAMPLE_RATE).samples)
    assert lengths["mp4"] == written.shape[1]  # mp4 packet durations give the true end
    assert written.shape[1] <= lengths["mkv"] < written.shape[1] + aac_frame  # mkv does not


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


@pytest.mark.parametrize(
    "codec, layout",
    [("flac", name) for name in ("stereo", "4.0", "quad", "5.1", "6.1")] + [("ac3", "5.1")],
)
def test_downmix_keeps_the_level_of_a_tone_and_never_clips(tmp_path, codec, layout) -> None:
    """The same loud tone on every channel reads back as loud as in mono, in every layout
    (FLAC decodes to integers, AC3 to planar floats)."""
    amplitude, channels = 0.9, len(av.AudioLayout(layout).channels)
    levels = {}
    for name, count in (("mono", 1), (layout, channels)):
        path = write_av(
            tmp_path / f"{name}.mkv",
            moving_pattern(10),
            audio=tone(440.0, 1.0, 48000, amplitude, channels=count),
            sample_rate=48000,
            audio_codec=codec,
            audio_layout=name,
        )
        track = read_audio(path, SAMPLE_RATE)
        assert np.abs(track.samples).max() < 0.99, f"{name} clips"
        middle = track.samples[round(0.1 * SAMPLE_RATE) : round(0.9 * SAMPLE_RATE)]
        levels[name] = rms(middle)
    assert levels[layout] == pytest.approx(levels["mono"], rel=0.01)


def test_surround_48k_is_downmixed_and_resampled_to_16k_mono(tmp_path) -> None:
    path = write_surround_video(tmp_path / "surround.mp4", num_frames=20, fps=10)
    track = read_audio(path, SAMPLE_RATE)
    assert track.sample_rate == SAMPLE_RATE and track.samples.ndim == 1
    assert abs(track.duration_s - 2.0) <= 0.1
    assert abs(peak_frequency_hz(track.samples, SAMPLE_RATE) - 440.0) <= 2.0
    assert np.sqrt(np.mean(track.samples**2)) > 0.05  # the downmix kept the tone audible


@pytest.mark.parametrize("rate", [8000, 22050, 44100])
def test_audio_is_resampled_to_the_requested_rate(tmp_path, rate) -> None:
    path = write_test_video(tmp_path / "tone.mp4", num_frames=20, fps=10, sample_rate=48000)
    track = read_audio(path, rate)
    assert track.sample_rate == rate
    assert abs(len(track.samples) - 2.0 * rate) <= 0.1 * rate
    assert abs(peak_frequency_hz(track.samples, rate) - 440.0) <= 2.0


@pytest.mark.parametrize("extension", ["mp4", "mkv"])
@pytest.mark.parametrize("native_rate", [16000, 44100])
def test_late_audio_keeps_its_start_time(tmp_path, extension, native_rate) -> None:
    audio_start_s, onset_s = 0.5, 0.8  # the tone sounds 0.3 s into a track that starts late
    path = write_av(
        tmp_path / f"late.{extension}",
        moving_pattern(20),
        fps=10,
        audio=onset(onset_s - audio_start_s, 2.0 - audio_start_s, native_rate),
        sample_rate=native_rate,
        audio_start_s=audio_start_s,
    )
    track = read_audio(path, SAMPLE_RATE)
    assert audio_start_s - 0.1 < track.start_s <= audio_start_s + ONSET_TOLERANCE_S
    assert abs(onset_time_s(track) - onset_s) < ONSET_TOLERANCE_S


def test_damaged_audio_packets_are_skipped_with_a_warning_and_time_is_kept(tmp_path) -> None:
    onset_s = 1.2
    path = write_av(
        tmp_path / "damaged.mp4", moving_pattern(20), audio=onset(onset_s, 2.0, SAMPLE_RATE)
    )
    spans = audio_packet_spans(path)
    damaged = [3, 4]  # well before the onset
    assert spans[damaged[-1]][2] < onset_s - 0.2
    corrupt_audio_packets(path, damaged)
    with pytest.warns(UserWarning, match=r"damaged\.mp4: damaged audio: .*skipped"):
        track = read_audio(path, SAMPLE_RATE)
    assert abs(onset_time_s(track) - onset_s) < ONSET_TOLERANCE_S
    assert abs(track.duration_s - 2.0) <= 0.1


def decoded_duration_s(path: Path) -> float:
    """Seconds of audio PyAV decodes from the first audio stream (the samples, not the
    timestamps)."""
    with av.open(str(path)) as container:
        frames = list(container.decode(audio=0))
    return sum(frame.samples for frame in frames) / frames[0].sample_rate


def test_packed_ac3_chunks_in_avi_keep_every_decoded_sample(tmp_path) -> None:
    """Five AC3 frames per AVI chunk while the header counts one per chunk: the packets'
    timestamps cover a fifth of the audio."""
    audio = tone(440.0, 3.0, 48000, channels=2)
    path = write_retimed_audio(
        tmp_path / "packed.avi", audio, lambda number, pts: number, per_packet=5
    )
    with pytest.warns(UserWarning, match=r"packed\.avi: damaged audio: timestamps go back"):
        track = read_audio(path, SAMPLE_RATE)
    assert abs(track.duration_s - decoded_duration_s(path)) < 1 / SAMPLE_RATE * 2
    assert abs(track.duration_s - 3.0) < 0.05
    assert abs(peak_frequency_hz(track.samples, SAMPLE_RATE) - 440.0) <= 2.0


@pytest.mark.parametrize("extension", ["mkv", "mp4"])
def test_timestamps_running_slow_lose_no_audio(tmp_path, extension) -> None:
    """Every packet stamped at half its true time: the stream overlaps itself."""
    audio = tone(440.0, 2.0, 48000)
    path = write_retimed_audio(tmp_path / f"slow.{extension}", audio, lambda _, pts: pts // 2)
    with pytest.warns(UserWarning, match=rf"slow\.{extension}: damaged audio: .*go back"):
        track = read_audio(path, SAMPLE_RATE)
    assert abs(track.duration_s - decoded_duration_s(path)) < 0.05
    assert abs(track.duration_s - 2.0) < 0.05


def test_timestamp_gap_becomes_reported_silence(tmp_path) -> None:
    audio = tone(440.0, 2.0, 48000)
    jump_s = 0.5

    def retime(number, pts):  # packets from 1 s on are stamped 0.5 s late
        return pts + (round(jump_s * 1000) if pts >= 1000 else 0)

    path = write_retimed_audio(tmp_path / "gap.mkv", audio, retime)
    with pytest.warns(UserWarning, match=r"gap\.mkv: damaged audio: timestamps jump forward 1"):
        track = read_audio(path, SAMPLE_RATE)
    assert abs(track.duration_s - (2.0 + jump_s)) < 0.05

    def loudest(from_s: float, to_s: float) -> float:
        span = track.samples[round(from_s * SAMPLE_RATE) : round(to_s * SAMPLE_RATE)]
        return float(np.abs(span).max())

    assert loudest(1.05, 1.0 + jump_s - 0.05) < 0.01  # the gap is silence
    assert loudest(0.5, 0.6) > 0.4 and loudest(1.6, 1.7) > 0.4  # the tone around it


def test_implausible_timestamp_jump_is_ignored(tmp_path) -> None:
    audio = tone(440.0, 2.0, 48000)
    far_ms = 100_000 * 1000  # 100,000 s: far beyond AUDIO_MAX_GAP_S

    path = write_retimed_audio(
        tmp_path / "far.mkv", audio, lambda _, pts: pts + (far_ms if pts >= 1000 else 0)
    )
    with pytest.warns(UserWarning, match=r"far\.mkv: damaged audio: .*implausibly far"):
        track = read_audio(path, SAMPLE_RATE)
    assert abs(track.duration_s - 2.0) < 0.05


def test_channel_layout_changing_mid_stream_keeps_every_frame_at_its_level(tmp_path) -> None:
    """A spliced AC3 track (stereo, then mono, then 5.1): FFmpeg's resampler, set up by the
    first frame, refuses the others."""
    pieces = [tone(440.0, 1.0, 48000, channels=channels) for channels in (2, 1, 6)]
    path = write_retimed_audio(tmp_path / "spliced.mkv", pieces)
    track = read_audio(path, SAMPLE_RATE)
    assert abs(track.duration_s - decoded_duration_s(path)) < 0.01
    piece_length = SAMPLE_RATE  # each piece is 1 s; measure its middle 0.8 s
    middles = [
        track.samples[start + piece_length // 10 : start + piece_length * 9 // 10]
        for start in range(0, 3 * piece_length, piece_length)
    ]
    levels = [rms(middle) for middle in middles]
    assert levels == pytest.approx([rms(pieces[1][0])] * 3, rel=0.02)


def test_damaged_first_ac3_packet_in_avi_is_skipped_and_time_kept(tmp_path) -> None:
    path = write_divx_avi(tmp_path / "film.avi", num_frames=20)
    intact = read_audio(path, SAMPLE_RATE)
    corrupt_audio_packets(path, [0])
    with pytest.warns(UserWarning, match=r"film\.avi: damaged audio: packet at 0\.000 s skipped"):
        track = read_audio(path, SAMPLE_RATE)
    assert abs(track.start_s - intact.start_s) < ONSET_TOLERANCE_S
    assert abs(track.duration_s - intact.duration_s) < ONSET_TOLERANCE_S
    first_frame = round(1536 / 48000 * SAMPLE_RATE)  # one AC3 frame of silence, then the tone
    np.testing.assert_allclose(
        track.samples[2 * first_frame :], intact.samples[2 * first_frame :], atol=0.02
    )


def test_truncated_tail_keeps_what_decodes_with_a_warning(tmp_path) -> None:
    path = write_test_video(tmp_path / "cut.mkv", num_frames=20, fps=10)
    intact = read_audio(path, SAMPLE_RATE)
    truncate_tail(path, 0.8)
    with pytest.warns(UserWarning, match=r"cut\.mkv: damaged audio: .*ends at"):
        track = read_audio(path, SAMPLE_RATE)
    assert 0 < len(track.samples) < len(intact.samples)
    np.testing.assert_array_equal(track.samples[:1000], intact.samples[:1000])
    assert 0 < probe_video(path).num_frames < 20


def test_intact_files_read_without_warnings(tmp_path) -> None:
    path = write_test_video(tmp_path / "clip.mkv")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_audio(path)


# ------------------------------------------------------------------------------------------
# Alignment of audio windows to frames


def ramp_track(num_samples: int, sample_rate: int = 100, start_s: float = 0.0) -> AudioTrack:
    """Samples whose value says their index: sample k holds (k + 1) / num_samples (never 0)."""
    values = ((np.arange(num_samples) + 1) / num_samples).astype(np.float32)
    return AudioTrack(samples=values, sample_rate=sample_rate, start_s=start_s)


@pytest.mark.parametrize("start_s", [0.0, 0.37, -0.2])
def test_windows_are_centred_on_timestamps_and_zero_padded(start_s) -> None:
    track = ramp_track(200, sample_rate=100, start_s=start_s)
    timestamps = np.array([0.0, 0.33, 1.0, 1.95, 2.5])
    windows = audio_windows(track, timestamps, window_s=0.3)
    length = 30
    assert windows.shape == (5, length) and windows.dtype == np.float32
    for row, time_s in zip(windows, timestamps, strict=True):
        centre = round((time_s - start_s) * 100)
        for j in range(length):
            index = centre - length // 2 + j
            expected = track.samples[index] if 0 <= index < 200 else 0.0
            assert row[j] == expected


def test_window_length_is_rounded_from_seconds() -> None:
    windows = audio_windows(ramp_track(1000, sample_rate=16000), np.zeros(3), window_s=0.01234)
    assert windows.shape == (3, round(0.01234 * 16000))
    with pytest.raises(ValueError, match="window_s"):
        audio_windows(ramp_track(10), np.zeros(1), window_s=0)


def assert_onset_where_expected(windows, timestamps_s, onset_s, sample_rate) -> None:
    """Each window is quiet before the onset's position in it and loud from there on."""
    length = windows.shape[1]
    for window, time_s in zip(windows, timestamps_s, strict=True):
        position = round((onset_s - time_s) * sample_rate) + length // 2
        margin = round(ONSET_TOLERANCE_S * sample_rate)
        quiet = window[: max(0, min(length, position - margin))]
        loud = window[max(0, position + margin) :]
        assert np.abs(quiet).max(initial=0) < 0.1, f"sound before the onset at t={time_s}"
        if loud.size > 100:
            assert np.abs(loud).max() > 0.25, f"no sound after the onset at t={time_s}"


def test_onset_lands_in_the_expected_windows_with_variable_frame_rate(tmp_path) -> None:
    times = [0.0, 0.1, 0.15, 0.4, 0.45, 0.5, 0.9, 1.0, 1.03, 1.5]
    onset_s = 1.0
    path = write_vfr_video(tmp_path / "vfr.mp4", times, audio=onset(onset_s, 1.8, SAMPLE_RATE))
    info = probe_video(path)
    windows = audio_windows(read_audio(path, SAMPLE_RATE), info.timestamps_s, window_s=0.2)
    assert_onset_where_expected(windows, info.timestamps_s, onset_s, SAMPLE_RATE)
    assert np.abs(windows[5]).max() < 0.1  # t=0.5: its window ends at 0.6 s, before the onset
    assert np.abs(windows[9]).min() == 0.0 or np.abs(windows[9]).max() > 0.25


@pytest.mark.parametrize("extension", ["mp4", "mkv"])
def test_onset_lands_in_the_expected_windows_with_late_audio(tmp_path, extension) -> None:
    audio_start_s, onset_s = 0.6, 1.05
    path = write_av(
        tmp_path / f"late.{extension}",
        moving_pattern(20),
        fps=10,
        audio=onset(onset_s - audio_start_s, 2.0 - audio_start_s, SAMPLE_RATE),
        audio_start_s=audio_start_s,
    )
    info = probe_video(path)
    windows = audio_windows(read_audio(path, SAMPLE_RATE), info.timestamps_s, window_s=0.1)
    assert_onset_where_expected(windows, info.timestamps_s, onset_s, SAMPLE_RATE)
    frame_with_onset = int(np.argmin(np.abs(info.timestamps_s - onset_s)))
    assert np.abs(windows[:frame_with_onset]).max() < 0.1
    assert np.abs(windows[frame_with_onset + 1 :]).max(axis=1).min() > 0.25


# ------------------------------------------------------------------------------------------
# Writing


@pytest.mark.parametrize("extension, video_codec, audio_codec, native_rate", CONTAINERS)
def test_write_video_round_trip(tmp_path, extension, video_codec, audio_codec, native_rate):
    fps, num_frames = 10.0, 20
    frames = moving_pattern(num_frames)
    audio = tone(440.0, num_frames / fps, native_rate)[0]
    path = write_video(
        tmp_path / f"out.{extension}",
        frames,
        fps,
        audio,
        native_rate,
        codec=video_codec,
        audio_codec=audio_codec,
    )
    assert path == tmp_path / f"out.{extension}"
    info = probe_video(path)
    assert (info.num_frames, info.fps, info.width, info.height) == (20, fps, 64, 48)
    assert (info.audio_sample_rate, info.audio_channels) == (native_rate, 1)
    assert identify_frames(read_frames(path), num_frames) == list(range(num_frames))
    track = read_audio(path, SAMPLE_RATE)
    assert abs(track.duration_s - num_frames / fps) <= 1 / fps
    assert abs(peak_frequency_hz(track.samples, SAMPLE_RATE) - 440.0) <= 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left


@pytest.mark.parametrize("channels, layout", [(1, "mono"), (2, "stereo"), (6, "5.1")])
def test_write_channel_layouts(tmp_path, channels, layout) -> None:
    audio = tone(440.0, 1.0, 48000, channels=channels)
    path = write_video(tmp_path / "out.mp4", moving_pattern(10), 10, audio, 48000)
    with av.open(str(path)) as container:
        context = container.streams.audio[0].codec_context
        assert (context.channels, context.layout.name, context.sample_rate) == (
            channels,
            layout,
            48000,
        )
    track = read_audio(path, SAMPLE_RATE)
    assert abs(peak_frequency_hz(track.samples, SAMPLE_RATE) - 440.0) <= 2.0


@pytest.mark.parametrize("rate", sorted(av.Codec("aac", "w").audio_rates))
def test_write_every_rate_aac_takes(tmp_path, rate) -> None:
    path = write_video(tmp_path / "out.mp4", moving_pattern(5), 10, tone(440, 0.5, rate), rate)
    assert probe_video(path).audio_sample_rate == rate


def test_write_refuses_a_rate_the_codec_cannot_take(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"out\.mp4: aac cannot encode 10000 Hz"):
        write_video(tmp_path / "out.mp4", moving_pattern(5), 10, tone(440, 0.5, 10000), 10000)
    assert list(tmp_path.iterdir()) == []


def test_lossless_yuv444_keeps_frames_up_to_the_colour_conversion(tmp_path) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (4, 33, 45, 3), dtype=np.uint8)
    path = write_video(tmp_path / "lossless.mkv", frames, 10, crf=0, pix_fmt="yuv444p")
    assert probe_video(path).width == 45  # odd sizes are fine without chroma subsampling
    converted_only = np.stack(
        [
            av.VideoFrame.from_ndarray(image, format="rgb24")
            .reformat(format="yuv444p")
            .reformat(format="rgb24")
            .to_ndarray()
            for image in frames
        ]
    )
    np.testing.assert_array_equal(read_frames(path), converted_only)


def test_lossless_grey_is_exact(tmp_path) -> None:
    grey = np.random.default_rng(1).integers(0, 256, (4, 32, 48, 1), dtype=np.uint8)
    frames = np.repeat(grey, 3, axis=3)
    path = write_video(tmp_path / "grey.mp4", frames, 10, crf=0, pix_fmt="gray")
    np.testing.assert_array_equal(read_frames(path), frames)


def test_odd_frame_size_is_refused_for_yuv420(tmp_path) -> None:
    frames = np.zeros((3, 33, 44, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"odd\.mp4: yuv420p needs .*height of 2.*44x33"):
        write_video(tmp_path / "odd.mp4", frames, 10)
    assert list(tmp_path.iterdir()) == []


def test_write_from_an_iterable_of_chunks(tmp_path) -> None:
    frames = moving_pattern(18)
    audio = tone(440.0, 1.8, SAMPLE_RATE)
    chunks = (frames[i : i + 5] for i in range(0, 18, 5))  # the last chunk is short
    path = write_video(tmp_path / "chunks.mp4", chunks, 10, audio, SAMPLE_RATE)
    assert identify_frames(read_frames(path), 18) == list(range(18))
    assert abs(read_audio(path).duration_s - 1.8) <= 0.1


def test_writer_renames_on_success_and_deletes_on_error(tmp_path) -> None:
    final = tmp_path / "out.mp4"
    with VideoWriter(final, 10, 64, 48, audio_sample_rate=SAMPLE_RATE) as writer:
        writer.write_frames(moving_pattern(5))
        writer.write_audio(tone(440, 0.5, SAMPLE_RATE)[0])
        assert not final.exists()
        assert len(list(tmp_path.iterdir())) == 1  # the temporary file, same folder
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
    assert probe_video(final).num_frames == 5

    failed = tmp_path / "failed.mp4"
    with pytest.raises(RuntimeError, match="boom"), VideoWriter(failed, 10, 64, 48) as writer:
        writer.write_frames(moving_pattern(5))
        raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_writer_refuses_bad_frames_audio_and_empty_output(tmp_path) -> None:
    path = tmp_path / "bad.mp4"
    with pytest.raises(ValueError, match=r"bad\.mp4: frames must be uint8 \(T, 48, 64, 3\)"):
        with VideoWriter(path, 10, 64, 48) as writer:
            writer.write_frames(np.zeros((2, 48, 64, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="without audio_sample_rate"):
        with VideoWriter(path, 10, 64, 48) as writer:
            writer.write_audio(np.zeros(100, dtype=np.float32))
    with pytest.raises(ValueError, match=r"audio must be \(N,\) or \(2, N\)"):
        with VideoWriter(path, 10, 64, 48, audio_sample_rate=16000, audio_channels=2) as writer:
            writer.write_audio(np.zeros((3, 100), dtype=np.float32))
    with pytest.raises(ValueError, match="no frames were written"):
        with VideoWriter(path, 10, 64, 48):
            pass
    with pytest.raises(ValueError, match=r"bad\.mp4: frames must be \(T, H, W, 3\)"):
        write_video(path, np.zeros((48, 64, 3), dtype=np.uint8), 10)
    with pytest.raises(FileNotFoundError, match="folder does not exist"):
        VideoWriter(tmp_path / "no" / "such" / "folder.mp4", 10, 64, 48)
    assert list(tmp_path.iterdir()) == []


def test_streaming_writer_interleaves_frames_and_audio(tmp_path) -> None:
    frames, audio = moving_pattern(20), tone(440.0, 2.0, 48000, channels=2)
    path = tmp_path / "stream.mkv"
    with VideoWriter(path, 10, 64, 48, audio_sample_rate=48000, audio_channels=2) as writer:
        for first in range(0, 20, 4):
            writer.write_frames(frames[first : first + 4])
            writer.write_audio(audio[:, first * 4800 : (first + 4) * 4800])
    assert identify_frames(read_frames(path), 20) == list(range(20))
    track = read_audio(path)
    assert abs(track.duration_s - 2.0) <= 0.1
    assert abs(peak_frequency_hz(track.samples, SAMPLE_RATE) - 440.0) <= 2.0


def audio_packet_bytes(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(packet) for packet in container.demux(audio=0) if packet.size]


@pytest.mark.parametrize(("extension", "mode"), [("mkv", "copied"), ("webm", "re-encoded")])
def test_writer_carries_a_source_files_audio_at_given_frame_times(tmp_path, extension, mode):
    source = write_video(tmp_path / "source.mp4", moving_pattern(20), 10,
                         tone(440.0, 2.0, SAMPLE_RATE), SAMPLE_RATE)
    times_s = np.cumsum([0.0, 0.1, 0.05, 0.3, 0.1, 0.1, 0.2, 0.05, 0.1, 0.5])
    pts = np.rint(times_s * 1000).astype(np.int64)
    path = tmp_path / f"out.{extension}"
    with VideoWriter(path, 10, 64, 48, pts=pts, time_base=Fraction(1, 1000),
                     audio_source=source) as writer:
        for first in range(0, 10, 3):
            writer.write_frames(moving_pattern(10)[first : first + 3])
        assert writer.audio_mode == mode
    np.testing.assert_allclose(probe_video(path).timestamps_s, times_s, atol=1e-3)
    if mode == "copied":
        assert audio_packet_bytes(path) == audio_packet_bytes(source)
    track = read_audio(path, SAMPLE_RATE)
    assert abs(peak_frequency_hz(track.samples, SAMPLE_RATE) - 440.0) <= 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, source.name]


def test_writer_refuses_what_it_cannot_write_and_leaves_nothing(tmp_path) -> None:
    silent = write_video(tmp_path / "silent.mp4", moving_pattern(2), 10)
    path = tmp_path / "bad.mp4"
    with pytest.raises(ValueError, match=r"bad\.mp4: audio from samples or from a source"):
        VideoWriter(path, 10, 64, 48, audio_sample_rate=SAMPLE_RATE, audio_source=silent)
    with pytest.raises(ValueError, match=r"bad\.mp4: pts and time_base go together"):
        VideoWriter(path, 10, 64, 48, pts=np.arange(3))
    with pytest.raises(ValueError, match=r"bad\.mp4: 4 frames written, but pts gives .* of 3"):
        with VideoWriter(path, 10, 64, 48, pts=np.arange(3), time_base=Fraction(1, 10)) as writer:
            writer.write_frames(moving_pattern(4))
    with pytest.raises(MissingAudioError, match=r"silent\.mp4: has no audio stream"):
        VideoWriter(path, 10, 64, 48, audio_source=silent)
    assert [p.name for p in tmp_path.iterdir()] == [silent.name]


def test_media_helpers_are_importable_by_other_tests() -> None:
    import media

    assert Path(media.__file__).parent == Path(__file__).parent


def decode_with_pyav(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.mark.parametrize("width", [16, 24, 48, 72, 64])
def test_frames_of_widths_whose_rows_decord_pads(tmp_path, width) -> None:
    """decord 0.6 fails ``get_batch`` for these widths (padded RGB rows); 64 is the control."""
    frames = np.random.default_rng(width).integers(0, 256, (7, 30, width, 3), dtype=np.uint8)
    path = write_av(tmp_path / "narrow.mkv", frames, pix_fmt="yuv444p")
    reference = decode_with_pyav(path)
    np.testing.assert_array_equal(read_frames(path), reference)
    np.testing.assert_array_equal(read_frames(path, [5, 1, 1, 6]), reference[[5, 1, 1, 6]])
    np.testing.assert_array_equal(np.concatenate(list(iter_frame_chunks(path, 3))), reference)
