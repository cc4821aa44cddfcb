"""Real media files for tests, written directly with PyAV (independently of ``avvsr.data.io``).

Import from tests as ``from media import ...`` (pytest puts ``tests/`` on ``sys.path``).
Every writer returns the path it wrote. Frames are uint8 ``(T, H, W, 3)`` RGB; audio is float32
``(C, N)`` (or ``(N,)`` for mono) in [-1, 1]; times are seconds, rates Hz.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# Encoded time base of the variable-frame-rate writer: timestamps are whole milliseconds.
VFR_TIME_BASE = Fraction(1, 1000)
# FFmpeg's layout for each channel count used here.
LAYOUTS = {1: "mono", 2: "stereo", 4: "quad", 6: "5.1"}
# Codec settings of a DivX/Xvid-style film file: MPEG-4 Part 2 with B-frames, a keyframe every
# 6 frames (so seeking has keyframes to land on) and a bit rate that keeps frame levels apart.
DIVX_SETTINGS = {"max_b_frames": 2, "gop_size": 6, "bit_rate": 2_000_000}


def frame_level(index: int) -> int:
    """Grey level that identifies frame ``index``: distinct and 11 levels apart for any 20
    consecutive frames, so compression keeps them apart."""
    return 16 + (index * 11) % 220


def moving_pattern(num_frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    """uint8 ``(T, H, W, 3)``: a flat background at :func:`frame_level` plus a bright square
    that moves 2 px right per frame, so frames are identifiable and motion is visible."""
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    side = max(4, min(height, width) // 4)
    for index in range(num_frames):
        frames[index] = frame_level(index)
        left = (2 * index) % max(1, width - side)
        frames[index, height // 2 - side // 2 : height // 2 + side // 2, left : left + side] = 250
    return frames


def tone(
    frequency_hz: float,
    duration_s: float,
    sample_rate: int = 16000,
    amplitude: float = 0.5,
    channels: int = 1,
) -> np.ndarray:
    """float32 ``(channels, N)`` sine, the same on every channel."""
    times = np.arange(round(duration_s * sample_rate)) / sample_rate
    wave = (amplitude * np.sin(2 * np.pi * frequency_hz * times)).astype(np.float32)
    return np.repeat(wave[None, :], channels, axis=0)


def onset(
    onset_s: float, duration_s: float, sample_rate: int = 16000, frequency_hz: float = 1000.0
) -> np.ndarray:
    """float32 ``(1, N)``: silence until ``onset_s`` seconds, then a tone (amplitude 0.5)."""
    wave = tone(frequency_hz, duration_s, sample_rate)
    wave[:, : round(onset_s * sample_rate)] = 0.0
    return wave


def write_av(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    *,
    fps: float = 10.0,
    frame_times_s: Sequence[float] | None = None,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    audio_start_s: float = 0.0,
    video_codec: str = "libx264",
    audio_codec: str = "aac",
    pix_fmt: str = "yuv420p",
    container_options: dict[str, str] | None = None,
    video_settings: dict[str, int] | None = None,
    audio_layout: str | None = None,
) -> Path:
    """Write frames (and audio) with PyAV.

    ``frame_times_s`` gives each frame's presentation time (variable frame rate, stored in
    whole milliseconds); otherwise frames are ``1 / fps`` apart from 0. The audio's first
    sample is presented at ``audio_start_s`` (audio that starts late). ``video_settings``
    are attributes of the video encoder (e.g. :data:`DIVX_SETTINGS`); ``audio_layout``
    defaults to :data:`LAYOUTS` for the audio's channel count.
    """
    path = Path(path)
    with av.open(str(path), mode="w", options=container_options or {}) as container:
        video = container.add_stream(video_codec, rate=Fraction(fps).limit_denominator(1000))
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for name, value in (video_settings or {}).items():
            setattr(video.codec_context, name, value)
        if frame_times_s is not None:
            video.codec_context.time_base = VFR_TIME_BASE
        audio_stream = None
        if audio is not None:
            audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
            audio_layout = audio_layout or LAYOUTS[audio.shape[0]]
            audio_stream = container.add_stream(audio_codec, rate=sample_rate, layout=audio_layout)
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if frame_times_s is None:
                frame.pts, frame.time_base = index, 1 / video.codec_context.framerate
            else:
                frame.pts = round(frame_times_s[index] / VFR_TIME_BASE)
                frame.time_base = VFR_TIME_BASE
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio_stream is not None:
            sound = av.AudioFrame.from_ndarray(audio, format="fltp", layout=audio_layout)
            sound.sample_rate = sample_rate
            sound.pts = round(audio_start_s * sample_rate)
            sound.time_base = Fraction(1, sample_rate)
            container.mux(audio_stream.encode(sound))
            container.mux(audio_stream.encode(None))
    return path


def write_test_video(
    path: str | os.PathLike[str],
    *,
    num_frames: int = 20,
    fps: float = 10.0,
    height: int = 48,
    width: int = 64,
    tone_hz: float | None = 440.0,
    sample_rate: int = 16000,
    channels: int = 1,
    **options,
) -> Path:
    """A clip of :func:`moving_pattern` frames with a tone as long as the video (or no audio
    when ``tone_hz`` is None). Other keywords go to :func:`write_av`."""
    frames = moving_pattern(num_frames, height, width)
    audio = None
    if tone_hz is not None:
        audio = tone(tone_hz, num_frames / fps, sample_rate, channels=channels)
    return write_av(path, frames, fps=fps, audio=audio, sample_rate=sample_rate, **options)


def write_video_without_audio(path: str | os.PathLike[str], **options) -> Path:
    """A clip with a video stream only."""
    return write_test_video(path, tone_hz=None, **options)


def write_surround_video(path: str | os.PathLike[str], **options) -> Path:
    """A clip whose soundtrack is a 440 Hz tone in 5.1 at 48 kHz."""
    return write_test_video(path, sample_rate=48000, channels=6, **options)


def write_vfr_video(
    path: str | os.PathLike[str],
    frame_times_s: Sequence[float],
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    **options,
) -> Path:
    """A variable-frame-rate clip: frame ``i`` presented at ``frame_times_s[i]`` seconds."""
    frames = moving_pattern(len(frame_times_s))
    return write_av(
        path,
        frames,
        frame_times_s=frame_times_s,
        audio=audio,
        sample_rate=sample_rate,
        **options,
    )


def write_divx_avi(path: str | os.PathLike[str], num_frames: int = 20, **options) -> Path:
    """An AVI film file as DivX/Xvid write them: MPEG-4 Part 2 with B-frames (at 10 fps) and
    a 440 Hz stereo AC3 tone at 48 kHz. Other keywords go to :func:`write_test_video`."""
    settings = dict(video_codec="mpeg4", video_settings=DIVX_SETTINGS, audio_codec="ac3")
    settings.update(sample_rate=48000, channels=2)
    return write_test_video(path, num_frames=num_frames, **{**settings, **options})


def encode_audio_packets(
    audio: np.ndarray, sample_rate: int, codec: str
) -> tuple[list[bytes], int]:
    """Encode float32 ``(C, N)`` audio (layout from :data:`LAYOUTS`) without a container:
    the packets' payloads and the samples each holds."""
    encoder = av.CodecContext.create(codec, "w")
    layout = LAYOUTS[audio.shape[0]]
    encoder.sample_rate, encoder.layout, encoder.format = sample_rate, layout, "fltp"
    encoder.open()
    sound = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio), format="fltp", layout=layout)
    sound.sample_rate, sound.pts, sound.time_base = sample_rate, 0, Fraction(1, sample_rate)
    packets = [bytes(packet) for packet in [*encoder.encode(sound), *encoder.encode(None)]]
    return packets, encoder.frame_size


def write_retimed_audio(
    path: str | os.PathLike[str],
    audio: np.ndarray | Sequence[np.ndarray],
    retime: Callable[[int, int], int] = lambda number, pts: pts,
    *,
    sample_rate: int = 48000,
    codec: str = "ac3",
    per_packet: int = 1,
    fps: float = 10.0,
) -> Path:
    """A clip whose audio packets carry the timestamps ``retime(packet number, true pts)``
    says, in the audio stream's time base, instead of their own (true pts: in that time base
    too, counting the samples before the packet). ``per_packet`` encoded frames are joined into
    each packet, as some AVI muxers pack audio chunks while the header counts one frame per
    chunk (pass ``retime=lambda number, pts: number`` to count chunks). A sequence of ``(C, N)``
    arrays is encoded piece by piece into one stream (a splice: the channel count may change;
    the stream declares the first piece's). The video is :func:`moving_pattern` frames, as
    long as the audio."""
    pieces = [audio] if isinstance(audio, np.ndarray) else list(audio)
    encoded: list[bytes] = []
    for piece in pieces:
        payloads, frame_size = encode_audio_packets(piece, sample_rate, codec)
        encoded.extend(payloads)
    num_frames = max(1, round(sum(p.shape[1] for p in pieces) / sample_rate * fps))
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        layout = LAYOUTS[pieces[0].shape[0]]
        stream = container.add_stream(codec, rate=sample_rate, layout=layout)
        for index, image in enumerate(moving_pattern(num_frames)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = index, 1 / video.codec_context.framerate
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        for number, first in enumerate(range(0, len(encoded), per_packet)):
            packet = av.Packet(b"".join(encoded[first : first + per_packet]))
            packet.stream, packet.time_base = stream, stream.time_base
            true_pts = round(first * frame_size / sample_rate / stream.time_base)
            packet.pts = packet.dts = retime(number, true_pts)
            container.mux(packet)
    return Path(path)


def write_retimed_video(
    path: str | os.PathLike[str], num_frames: int, retime: Callable[[int], float]
) -> Path:
    """A clip of :func:`moving_pattern` frames (H.264 without B-frames, 10 fps, no audio) whose
    packet ``i`` carries the timestamp ``retime(i)`` seconds (stored in whole milliseconds)
    instead of its own (use an .mkv name)."""
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.codec_context.max_b_frames = 0
        packets = []
        for index, image in enumerate(moving_pattern(num_frames)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 10)
            packets.extend(video.encode(frame))
        packets.extend(video.encode(None))
        for index, packet in enumerate(packets):
            packet.time_base = VFR_TIME_BASE
            packet.pts = packet.dts = round(retime(index) / VFR_TIME_BASE)
            container.mux(packet)
    return Path(path)


def write_audio_only(
    path: str | os.PathLike[str], duration_s: float = 1.0, sample_rate: int = 16000
) -> Path:
    """An AAC file without a video stream (use an .m4a or .mka name)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=sample_rate, layout="mono")
        sound = av.AudioFrame.from_ndarray(
            tone(440.0, duration_s, sample_rate), format="fltp", layout="mono"
        )
        sound.sample_rate, sound.pts = sample_rate, 0
        container.mux(stream.encode(sound))
        container.mux(stream.encode(None))
    return Path(path)


def write_empty_video(path: str | os.PathLike[str]) -> Path:
    """A Matroska file (use an .mkv name) with an H.264 video stream but not one frame, and
    one second of audio."""
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=16000, layout="mono")
        sound = av.AudioFrame.from_ndarray(tone(440.0, 1.0), format="fltp", layout="mono")
        sound.sample_rate, sound.pts = 16000, 0
        container.mux(audio.encode(sound))
        container.mux(audio.encode(None))
        container.mux(video.encode(None))
    return Path(path)


def write_garbage(path: str | os.PathLike[str], num_bytes: int = 4096, seed: int = 0) -> Path:
    """A file of random bytes (not media, whatever its name says)."""
    Path(path).write_bytes(np.random.default_rng(seed).bytes(num_bytes))
    return Path(path)


def truncate_tail(path: str | os.PathLike[str], keep_fraction: float) -> Path:
    """Cut the file to ``keep_fraction`` of its bytes, as an interrupted download leaves it."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "r+b") as file:
        file.truncate(int(size * keep_fraction))
    return path


def audio_packet_spans(path: str | os.PathLike[str]) -> list[tuple[int, int, float]]:
    """``(byte offset, size, pts seconds)`` of every non-empty audio packet, in file order."""
    with av.open(str(path)) as container:
        return [
            (packet.pos, packet.size, float(packet.pts * packet.time_base))
            for packet in container.demux(audio=0)
            if packet.size and packet.pos is not None and packet.pos >= 0
        ]


def corrupt_audio_packets(path: str | os.PathLike[str], packet_numbers: Sequence[int]) -> Path:
    """Overwrite the payload of the chosen audio packets with 0xFF bytes, so that those
    packets fail to decode. A packet's ``pos`` is its payload in mp4 and the chunk header
    before it in AVI (``<id> <size>``, 8 bytes): the payload is found as the packet's bytes."""
    with av.open(str(path)) as container:
        wanted = set(packet_numbers)
        payloads = [
            (packet.pos, bytes(packet))
            for number, packet in enumerate(
                p for p in container.demux(audio=0) if p.size and p.pos is not None and p.pos >= 0
            )
            if number in wanted
        ]
    with open(path, "r+b") as file:
        for position, payload in payloads:
            file.seek(position)
            offset = position + file.read(len(payload) + 8).index(payload)
            file.seek(offset)
            file.write(b"\xff" * len(payload))
    return Path(path)


def write_ave_folder(
    root: str | os.PathLike[str],
    splits: dict[str, list[str]],
    write: Callable[[Path], Path] | None = None,
    **video_options,
) -> Path:
    """An AVE-shaped data set at ``root``: ``AVE/<VideoID>.mp4`` videos, Annotations.txt
    and one ``<split>Set.txt`` per entry of ``splits`` (``"train"``, ``"val"``, ``"test"``),
    whose records are ``Category&VideoID&Quality&StartTime&EndTime`` lines, e.g.
    ``"Dog&v1&good&0&3"``. Each video is written by ``write(path)``, by default
    :func:`write_test_video` with the other keywords."""
    from avvsr.data.sources import AVE_HEADER

    root = Path(root)
    (root / "AVE").mkdir(parents=True, exist_ok=True)
    records = list(dict.fromkeys(r for lines in splits.values() for r in lines))
    for record in records:
        path = root / "AVE" / f"{record.split('&')[1]}.mp4"
        if write is None:
            write_test_video(path, **video_options)
        else:
            write(path)
    (root / "Annotations.txt").write_text("\n".join([AVE_HEADER, *records]) + "\n")
    for split, lines in splits.items():
        (root / f"{split}Set.txt").write_text("".join(f"{line}\n" for line in lines))
    return root
