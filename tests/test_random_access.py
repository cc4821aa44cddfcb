"""Random access into videos (``io.read_clip``): the frames it returns are the frames in-order
decoding gives, for every container and codec PyAV writes here, with each reader; decord's
seek is used only where it is verified right, and this shows why."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from avvsr.data import io
from media import DIVX_SETTINGS, write_test_video

GOP = {"gop_size": 6}  # a key frame every 6 frames, so seeks land on several of them
# (extension, video codec, encoder settings, audio codec, sample rate Hz)
FILES = [
    pytest.param("mp4", "libx264", GOP, "aac", 16000, id="mp4-h264"),
    pytest.param("mkv", "libx264", GOP, "aac", 16000, id="mkv-h264"),
    pytest.param("mov", "libx264", GOP, "aac", 16000, id="mov-h264"),
    pytest.param("avi", "libx264", GOP, "ac3", 48000, id="avi-h264"),
    pytest.param("avi", "mpeg4", DIVX_SETTINGS, "ac3", 48000, id="avi-mpeg4-bframes"),
    pytest.param("mp4", "mpeg4", DIVX_SETTINGS, "aac", 16000, id="mp4-mpeg4-bframes"),
    pytest.param("mkv", "mpeg4", DIVX_SETTINGS, "aac", 16000, id="mkv-mpeg4-bframes"),
    pytest.param("ts", "libx264", GOP, "mp2", 48000, id="ts-h264"),
    pytest.param("webm", "libvpx-vp9", GOP, "libopus", 48000, id="webm-vp9"),
]
# Ranges (first, stop) that start on, just after and between key frames, and at the ends.
RANGES = [(0, 5), (5, 6), (7, 12), (13, 28), (20, 21), (35, 40)]
NUM_FRAMES = 40


def write(folder: Path, extension: str, codec: str, settings: dict, audio: str, rate: int) -> Path:
    try:
        av.Codec(codec, "w")
        av.Codec(audio, "w")
    except av.FFmpegError:
        pytest.skip(f"this FFmpeg build cannot encode {codec} + {audio}")
    return write_test_video(
        folder / f"clip.{extension}", num_frames=NUM_FRAMES, video_codec=codec,
        video_settings=settings, audio_codec=audio, sample_rate=rate,
    )


@pytest.mark.parametrize("reader", io.STREAM_READERS)
@pytest.mark.parametrize(("extension", "codec", "settings", "audio", "rate"), FILES)
def test_read_clip_matches_in_order_decoding(
    tmp_path, extension, codec, settings, audio, rate, reader
) -> None:
    path = write(tmp_path, extension, codec, settings, audio, rate)
    info = io.probe_video(path)
    assert info.index is not None and len(info.index.keyframes) > 3
    in_order = io.read_frames(path)
    for first, stop in RANGES:
        np.testing.assert_array_equal(
            io.read_clip(path, first, stop, info.index, reader), in_order[first:stop],
            err_msg=f"frames {first}..{stop - 1}",
        )


@pytest.mark.parametrize(("extension", "codec", "settings", "audio", "rate"), FILES)
def test_decord_seeks_only_where_its_seek_is_right(
    tmp_path, extension, codec, settings, audio, rate
) -> None:
    """Where decord's own seek gives wrong frames, the file is outside DECORD_SEEKABLE (the
    converse, that every listed pair seeks right, is the test above)."""
    import decord

    path = write(tmp_path, extension, codec, settings, audio, rate)
    in_order = io.read_frames(path)
    reader = decord.VideoReader(str(path), num_threads=1)
    decord_right = all(
        np.array_equal(reader.get_batch(list(range(first, stop))).asnumpy(), in_order[first:stop])
        for first, stop in [(13, 18), (7, 12), (35, 40), (21, 22)]
    )
    if not decord_right:
        assert not io.probe_video(path).index.decord_seeks_right


def test_h264_in_mp4_and_mkv_is_read_with_decords_seek(tmp_path) -> None:
    for extension in ("mp4", "mkv"):
        path = write_test_video(tmp_path / f"c.{extension}", video_settings=GOP)
        assert io.probe_video(path).index.decord_seeks_right


def test_read_clip_without_an_index_decodes_in_order(tmp_path) -> None:
    path = write_test_video(tmp_path / "c.mp4", num_frames=20, video_settings=GOP)
    np.testing.assert_array_equal(io.read_clip(path, 8, 12, None), io.read_frames(path)[8:12])
    with pytest.raises(IndexError, match="out of range"):
        io.read_clip(path, 18, 21, io.probe_video(path).index)
    with pytest.raises(ValueError, match="reader"):
        io.read_clip(path, 0, 2, None, "ffmpeg")
