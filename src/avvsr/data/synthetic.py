"""The synthetic audio-visual benchmark (``avvsr-synth``): clips whose HR detail needs the audio.

Design (``DATA.md``, "The synthetic audio-visual benchmark"): each object is a disc carrying a
grating whose *profile* is its class's waveform (sine, square, triangle, ...) truncated to
``num_harmonics`` harmonics, all below the HR Nyquist frequency, with a fundamental period of
9-9.5 HR px and the same fundamental amplitude in every class. The x4 bicubic degradation keeps
the fundamental and removes the harmonics, so LR frames look the same for every class. A
sounding object plays a tone with the same harmonic magnitudes and phases ("visual timbre =
audio timbre"), so the audio tells its HR profile. Every object's brightness pulses with its
own smooth envelope; the sounding objects' envelopes also shape the loudness of their tones,
so synchrony, not the frames alone, tells which object sounds. Silent distractors carry class
gratings too. Objects move in straight lines over a panning textured background.

Families (the semantic cue of real video, where a guitar looks like a guitar at LR): the classes
are grouped in table order into families of ``classes_per_family``; with ``family_cue="hue"``
every object of a family takes the family's hue (``FAMILY_HUES``), which survives the x4
degradation, while the classes within a family still differ only in their HR harmonics (and
their sound). ``distractors`` chooses the silent objects' classes relative to the first
sounding object: any class, another family (the hue tells them apart) or the same family
(only the harmonics and the synchrony do). ``pulse_depth = 0`` removes the synchrony cue from
the frames, ``family_cue="none"`` the semantic one, so that each can be ablated.

What tells the classes apart in the HR frames is ``class_detail``. ``"harmonics"`` (above): the
grating's harmonics, which are the tone's ("visual timbre = audio timbre"). ``"lattice"``:
every grating is its fundamental alone, the same for every class, and a class is told by a
*lattice*, a zero-mean pattern repeating every ``lattice_period_px`` (the degradation's scale
factor) in both directions, fixed to the pixel grid (``lattice_pattern``), faded in with the
grating. Its frequencies are the LR sampling frequency's multiples, where the x4 bicubic
kernel (it sums to one at every phase) is zero, so the LR frames keep none of it; and, fixed
to the grid, it is the same at every LR pixel's sub-pixel positions, so a network that knows
the class can draw it as soon as its pixel-shuffle head does. The harmonics take a tiny
network thousands of steps to draw at all (``experiments/av_ablation/NOTES.md``, item 3), so
with them the question of *which object* the audio is about is never reached. The tone is
the class's harmonic tone either way: with a lattice, which detail goes with which sound is
an association to learn, as in real video.

Clips are written as H.264 (near-lossless ``crf``, ``yuv444p``: no chroma smear of the
harmonics) with AAC audio, plus per-frame label maps (``uint8 (T, H, W)``, 0 = background,
``k`` = object id ``k``, the visible object at each pixel) and a ``manifest.json``::

    {"format": "avvsr-synth-v1", "params": {...}, "classes": [...],
     "class_harmonics": {class: [[magnitude, phase_rad], ...]},
     "splits": {"train": [ClipEntry, ...], "val": [...], "test": [...]}}

Coordinates: pixel ``(row y, column x)`` has its centre at ``(x, y)`` HR px; time ``t`` in
seconds, frame ``i`` at ``t = i / fps``; audio sample ``n`` at ``t = n / sample_rate``.
Every clip's randomness derives from ``(seed, split, index)`` only.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avvsr.atomic import atomic_write
from avvsr.errors import DatasetError, MissingFileError

FORMAT = "avvsr-synth-v1"
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val", "test")
PathLike = str | os.PathLike[str]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Classes: waveform shapes, as the Fourier sine-series coefficients of a period-1 waveform


def _odd(k: np.ndarray) -> np.ndarray:
    return (k % 2 == 1).astype(np.float64)


# The class table, in the order classes are taken (``num_classes`` takes the first ones):
# harmonic number k (int array) -> complex c_k of ``f(u) = Im(sum_k c_k e^{2 pi i k u})``, up to
# a common factor (``harmonic_coefficients`` normalises).
CLASS_SERIES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sine": lambda k: (k == 1).astype(np.complex128),
    "square": lambda k: _odd(k) / k + 0j,
    "triangle": lambda k: _odd(k) * (-1.0) ** ((k - 1) // 2) / k**2 + 0j,
    "sawtooth": lambda k: (-1.0) ** (k + 1) / k + 0j,
    # Rectangular pulse, high for the first third of each period.
    "pulse": lambda k: 2j * np.exp(-1j * np.pi * k / 3) * np.sin(np.pi * k / 3) / (np.pi * k),
}


def harmonic_coefficients(class_name: str, num_harmonics: int) -> np.ndarray:
    """Complex ``(K,)`` coefficients ``c_k`` of a class's profile ``Im(sum_k c_k e^{2 pi i k u})``.

    Shifted in phase so the fundamental is ``sin(2 pi u)`` (``c_1 = 1``) and divided by its
    amplitude: every class has the same fundamental, and ``|c_k|`` is the magnitude of
    harmonic ``k`` relative to it (what a log-mel sees); ``arg c_k`` its phase.
    """
    if class_name not in CLASS_SERIES:
        raise ValueError(f"unknown class {class_name!r}; known: {list(CLASS_SERIES)}")
    harmonics = np.arange(1, num_harmonics + 1)
    raw = CLASS_SERIES[class_name](harmonics)
    # Shifting u by -arg(c_1) / (2 pi) multiplies c_k by e^{-i k arg c_1}: a real fundamental.
    return raw * np.exp(-1j * harmonics * np.angle(raw[0])) / abs(raw[0])


def harmonic_series(coefficients: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``Im(sum_k c_k e^{2 pi i k u})`` for phase ``u`` in cycles (any shape); float64."""
    total = np.zeros(np.shape(u), dtype=np.float64)
    for k, coefficient in enumerate(coefficients, start=1):
        angle = 2 * np.pi * k * u
        total += coefficient.real * np.sin(angle) + coefficient.imag * np.cos(angle)
    return total


def _profile_peak(coefficients: np.ndarray, samples: int = 4096) -> float:
    """Largest absolute value of a profile over one period."""
    u = np.arange(samples) / samples
    return float(np.abs(harmonic_series(coefficients, u)).max())


def lattice_frequencies(period_px: int) -> list[tuple[int, int]]:
    """The frequencies (a, b), in cycles per period along x and y, of the lattice patterns of
    period ``period_px``, in class order: each frequency of the period's 2-D grid but DC, one
    of each pair (a, b), (-a, -b) mod P (the same frequency), highest first (the Nyquist
    checkerboard, then stripes), so the first classes differ most. Distinct frequencies make
    the patterns orthogonal over a period."""
    pairs = sorted(
        ((a, b) for a in range(period_px) for b in range(period_px) if (a, b) != (0, 0)),
        key=lambda ab: (-_folded(ab[0], period_px) - _folded(ab[1], period_px), ab[1], ab[0]),
    )
    frequencies: list[tuple[int, int]] = []
    for a, b in pairs:
        if ((-a) % period_px, (-b) % period_px) not in frequencies:
            frequencies.append((a, b))
    return frequencies


def _folded(frequency: int, period_px: int) -> int:
    """A frequency in cycles per period folded to 0 .. period/2 (its distance from DC)."""
    return min(frequency, period_px - frequency)


def lattice_pattern(class_index: int, period_px: int) -> np.ndarray:
    """The lattice of class ``class_index`` (label order): (P, P) float64, ``P = period_px``,
    ``cos(2 pi (a x + b y) / P + pi / 4)`` of its frequency (:func:`lattice_frequencies`)
    scaled to peak 1; zero mean over the period. Pixel (y, x) of a frame takes entry
    ``(y % P, x % P)``. Raises ``ValueError`` past the period's last frequency."""
    frequencies = lattice_frequencies(period_px)
    if class_index >= len(frequencies):
        raise ValueError(
            f"a {period_px} px lattice has {len(frequencies)} distinct patterns, "
            f"class {class_index} has none"
        )
    a, b = frequencies[class_index]
    y, x = np.mgrid[0:period_px, 0:period_px]
    wave = np.cos(2 * np.pi * (a * x + b * y) / period_px + np.pi / 4)
    return wave / np.abs(wave).max()


# --------------------------------------------------------------------------------------------
# Configuration

# Two classes whose harmonic magnitudes are closer than this (relative to the fundamental)
# would be indistinguishable by a log-mel, which cannot see phase.
_MIN_MAGNITUDE_DISTANCE = 0.05
_OBJECT_TINT_MIN = 0.55  # smallest channel gain of an object's colour tint (largest is 1)
_BACKGROUND_BASE_RANGE = (64.0, 192.0)  # grey levels of the background's mean colour
_OBJECT_GAP_PX = 2.0  # least distance between the rims of two objects
_PLACEMENT_TRIES = 1000  # layouts drawn before giving up on a crowded frame

FAMILY_CUES = ("none", "hue")
CLASS_DETAILS = ("harmonics", "lattice")
DISTRACTOR_KINDS = ("any", "other_family", "same_family")
# Channel gains of each family's colour (``family_cue="hue"``), in family order. Every two
# differ by at least 0.45 in some channel: about 58 grey levels at object_level 128, which the
# x4 degradation keeps on a disc (a low frequency); no gain is below 0.4, so the grating keeps
# most of its contrast.
FAMILY_HUES = (
    (1.0, 0.45, 0.45),  # red
    (0.45, 0.65, 1.0),  # blue
    (0.5, 1.0, 0.45),  # green
    (1.0, 0.9, 0.4),  # yellow
    (0.9, 0.45, 1.0),  # magenta
)


def _param(default: Any, description: str) -> Any:
    """A :class:`SynthConfig` field with its description (shown by ``avvsr-synth --help``)."""
    return field(default=default, metadata={"help": description})


@dataclass(frozen=True)
class SynthConfig:
    """Every parameter of a generated set (lengths in HR px, times in s, levels in 0..255)."""

    seed: int = _param(0, "base seed; clip i of a split depends on (seed, split, i) only")
    height: int = _param(96, "HR frame height, px")
    width: int = _param(96, "HR frame width, px")
    num_frames: int = _param(16, "frames per clip")
    fps: float = _param(10.0, "frame rate, frames per second")
    sample_rate: int = _param(16000, "audio sample rate, Hz")
    num_classes: int = _param(4, f"classes, the first of {list(CLASS_SERIES)}")
    num_objects: int = _param(2, "objects per clip")
    num_sounding: int = _param(1, "objects per clip that make sound")
    num_train: int = _param(96, "clips in the train split")
    num_val: int = _param(12, "clips in the val split")
    num_test: int = _param(24, "clips in the test split")
    # Periods of 9-9.5 px (the low end of DATA.md's 9-10) put the 2nd harmonic at <= 4.75 px,
    # which x4 bicubic removes also on diagonal gratings (at 5 px, 12% of it stays).
    grating_period_min_px: float = _param(9.0, "shortest fundamental period of a grating, px")
    grating_period_max_px: float = _param(9.5, "longest fundamental period of a grating, px")
    num_harmonics: int = _param(3, "harmonics of the class profiles and tones")
    grating_amplitude: float = _param(40.0, "amplitude of the grating's fundamental, grey levels")
    texture_fade_px: float = _param(6.0, "width of the rim over which the grating fades, px")
    object_radius_min_px: float = _param(14.0, "smallest object radius, px")
    object_radius_max_px: float = _param(20.0, "largest object radius, px")
    object_speed_min_px: float = _param(0.5, "slowest object speed, px per frame")
    object_speed_max_px: float = _param(2.0, "fastest object speed, px per frame")
    object_level: float = _param(128.0, "mean grey level of an object")
    pulse_depth: float = _param(28.0, "brightness swing with the envelope, +- grey levels")
    envelope_knot_s: float = _param(0.4, "the envelopes take a new random level this often, s")
    background_waves: int = _param(4, "sinusoidal gratings summed into the background")
    background_period_min_px: float = _param(6.0, "shortest background period, px")
    background_period_max_px: float = _param(32.0, "longest background period, px")
    background_contrast: float = _param(48.0, "sum of background wave amplitudes, grey levels")
    background_speed_max_px: float = _param(1.0, "fastest background pan, px per frame")
    tone_f0_min_hz: float = _param(220.0, "lowest tone fundamental, Hz")
    tone_f0_max_hz: float = _param(440.0, "highest tone fundamental, Hz")
    tone_amplitude: float = _param(0.3, "fundamental amplitude of the tone mix (full scale 1)")
    loudness_floor: float = _param(0.2, "tone loudness at envelope 0 (1 at envelope 1)")
    audio_noise_std: float = _param(0.002, "white noise floor of the audio (full scale 1)")
    classes_per_family: int = _param(
        1, "classes per family, grouped in class-table order (families share their LR look)"
    )
    family_cue: str = _param(
        "none", f"what a family looks like at LR, one of {list(FAMILY_CUES)}: none (every "
        "class looks the same, random tints) or hue (each family its own colour)"
    )
    distractors: str = _param(
        "any", f"classes of the silent objects, one of {list(DISTRACTOR_KINDS)}: any, "
        "other_family or same_family (another class of it where it has one) as the first "
        "sounding object"
    )
    class_detail: str = _param(
        "harmonics", f"what tells the classes apart in the HR frames, one of "
        f"{list(CLASS_DETAILS)}: the grating's harmonics, or a lattice fixed to the pixel grid "
        "(the gratings then are their fundamental alone)"
    )
    lattice_period_px: int = _param(4, "period of the class lattices, px (the scale factor)")
    lattice_amplitude: float = _param(24.0, "amplitude of the class lattices, grey levels")
    crf: int = _param(0, "H.264 constant rate factor (0: lossless in the pixel format)")
    pix_fmt: str = _param("yuv444p", "encoded pixel format (yuv444p: no chroma subsampling)")

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise ValueError("invalid SynthConfig: " + "; ".join(problems))

    def _problems(self):
        positive = ("height", "width", "num_frames", "fps", "sample_rate", "num_harmonics",
                    "grating_period_min_px", "object_radius_min_px", "envelope_knot_s",
                    "background_period_min_px", "tone_f0_min_hz")
        for name in positive:
            if not getattr(self, name) > 0:
                yield f"{name} must be positive, got {getattr(self, name)}"
        if self.seed < 0:
            yield f"seed must be >= 0, got {self.seed}"
        for low, high in (("grating_period_min_px", "grating_period_max_px"),
                          ("object_radius_min_px", "object_radius_max_px"),
                          ("object_speed_min_px", "object_speed_max_px"),
                          ("background_period_min_px", "background_period_max_px"),
                          ("tone_f0_min_hz", "tone_f0_max_hz")):
            if getattr(self, low) > getattr(self, high):
                yield f"{low} ({getattr(self, low)}) exceeds {high} ({getattr(self, high)})"
        if not 1 <= self.num_classes <= len(CLASS_SERIES):
            yield f"num_classes must be in 1..{len(CLASS_SERIES)}, got {self.num_classes}"
        if not 0 <= self.num_sounding <= self.num_objects <= 255:
            yield (f"need 0 <= num_sounding ({self.num_sounding}) <= num_objects "
                   f"({self.num_objects}) <= 255")
        if min(self.num_train, self.num_val, self.num_test) < 0:
            yield "split sizes must be >= 0"
        if self.grating_period_min_px / max(self.num_harmonics, 1) <= 2:
            yield (f"harmonic {self.num_harmonics} of a {self.grating_period_min_px} px period "
                   "is at or above the HR Nyquist frequency (period <= 2 px)")
        if 2 * self.object_radius_max_px + 2 > min(self.height, self.width):
            yield "objects of object_radius_max_px do not fit in the frame"
        if self.tone_f0_max_hz * self.num_harmonics >= self.sample_rate / 2:
            yield "the top harmonic of tone_f0_max_hz is at or above the audio Nyquist frequency"
        if not 0 <= self.loudness_floor <= 1:
            yield f"loudness_floor must be in [0, 1], got {self.loudness_floor}"
        yield from self._family_problems()
        yield from self._lattice_problems()
        if self.background_contrast > _BACKGROUND_BASE_RANGE[0]:
            yield f"background_contrast must be <= {_BACKGROUND_BASE_RANGE[0]} (no clipping)"
        if self.num_harmonics > 0 and 1 <= self.num_classes <= len(CLASS_SERIES):
            yield from self._class_problems()

    def _family_problems(self):
        if self.classes_per_family < 1:
            yield f"classes_per_family must be >= 1, got {self.classes_per_family}"
            return
        if self.family_cue not in FAMILY_CUES:
            yield f"family_cue must be one of {list(FAMILY_CUES)}, got {self.family_cue!r}"
        if self.distractors not in DISTRACTOR_KINDS:
            yield f"distractors must be one of {list(DISTRACTOR_KINDS)}, got {self.distractors!r}"
        elif self.distractors == "other_family" and len(self.families) < 2:
            yield (f"distractors='other_family' needs two families, got {len(self.families)} "
                   f"({self.num_classes} classes, {self.classes_per_family} per family)")

    def _lattice_problems(self):
        if self.class_detail not in CLASS_DETAILS:
            yield f"class_detail must be one of {list(CLASS_DETAILS)}, got {self.class_detail!r}"
        elif self.class_detail == "lattice":
            if self.lattice_period_px < 2:
                yield f"lattice_period_px must be >= 2, got {self.lattice_period_px}"
            elif self.num_classes > (count := len(lattice_frequencies(self.lattice_period_px))):
                yield (f"{self.num_classes} classes need as many lattices; a "
                       f"{self.lattice_period_px} px period has {count}")
            if self.lattice_amplitude < 0:
                yield f"lattice_amplitude must be >= 0, got {self.lattice_amplitude}"

    @property
    def grating_harmonics(self) -> int:
        """Harmonics of the gratings: ``num_harmonics``, or 1 (the fundamental) with lattices."""
        return 1 if self.class_detail == "lattice" else self.num_harmonics

    def _class_problems(self):
        coefficients = {name: harmonic_coefficients(name, self.num_harmonics)
                        for name in self.classes}
        names = list(coefficients)
        for i, first in enumerate(names):
            for second in names[i + 1:]:
                distance = np.abs(np.abs(coefficients[first]) - np.abs(coefficients[second]))
                if distance.max() < _MIN_MAGNITUDE_DISTANCE:
                    yield (f"classes {first} and {second} have the same harmonic magnitudes "
                           f"with num_harmonics={self.num_harmonics}")
        peak = max(_profile_peak(c) for c in coefficients.values())
        grating_peak = max(_profile_peak(harmonic_coefficients(name, self.grating_harmonics))
                           for name in self.classes)
        lattice = self.lattice_amplitude if self.class_detail == "lattice" else 0.0
        swing = self.pulse_depth + self.grating_amplitude * grating_peak + lattice
        if self.object_level - swing < 0 or self.object_level + swing > 255:
            yield (f"object levels {self.object_level} +- {swing:.1f} leave 0..255 "
                   "(lower grating_amplitude or pulse_depth)")
        if self.tone_amplitude * peak >= 1:
            yield f"tone_amplitude {self.tone_amplitude} clips (profile peak {peak:.2f})"

    @property
    def classes(self) -> list[str]:
        """The class names of this set, in label order."""
        return list(CLASS_SERIES)[: self.num_classes]

    @property
    def families(self) -> list[list[str]]:
        """The classes of each family, in family order."""
        size = max(self.classes_per_family, 1)
        return [self.classes[i : i + size] for i in range(0, len(self.classes), size)]

    def family_of(self, class_name: str) -> int:
        """Index of the family of ``class_name``."""
        return self.classes.index(class_name) // max(self.classes_per_family, 1)

    def family_colour(self, class_name: str) -> tuple[float, float, float]:
        """Channel gains of a ``class_name`` object with ``family_cue="hue"``."""
        return FAMILY_HUES[self.family_of(class_name)]

    @property
    def split_sizes(self) -> dict[str, int]:
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test}

    @property
    def duration_s(self) -> float:
        """Length of a clip (and of its audio), seconds."""
        return self.num_frames / self.fps

    def frame_times_s(self) -> np.ndarray:
        """``(T,)`` float64 timestamp of each frame, seconds."""
        return np.arange(self.num_frames) / self.fps

    def to_params(self) -> dict[str, Any]:
        """The parameters as plain JSON values."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# Scene description (sampled) and rendering


@dataclass(frozen=True)
class Envelope:
    """A smooth random curve in [0, 1]: smoothstep between knots ``knot_interval_s`` apart."""

    knots: tuple[float, ...]  # level at times 0, interval, 2 * interval, ...
    knot_interval_s: float

    def __call__(self, time_s: np.ndarray) -> np.ndarray:
        """Envelope at ``time_s`` (any shape, seconds); constant beyond the last knot."""
        knots = np.asarray(self.knots)
        position = np.asarray(time_s, dtype=np.float64) / self.knot_interval_s
        index = np.clip(np.floor(position).astype(np.int64), 0, len(knots) - 2)
        fraction = np.clip(position - index, 0.0, 1.0)
        ease = fraction * fraction * (3 - 2 * fraction)
        return knots[index] + (knots[index + 1] - knots[index]) * ease


@dataclass(frozen=True)
class SceneObject:
    """One disc with a class grating; ``id`` is its label value. Objects never overlap."""

    id: int
    class_name: str
    sounding: bool
    radius_px: float
    start_xy_px: tuple[float, float]  # centre at t = 0
    velocity_px_per_s: tuple[float, float]
    grating_period_px: float  # fundamental period
    grating_orientation_rad: float  # direction of the grating's wave vector, from +x
    grating_phase_cycles: float  # profile phase at the centre
    colour_rgb: tuple[float, float, float]  # channel gains, max 1
    envelope: Envelope  # brightness pulse; loudness too when sounding
    tone_f0_hz: float  # fundamental of its tone (heard only when sounding)
    tone_phase_cycles: float

    def centres_xy_px(self, time_s: np.ndarray) -> np.ndarray:
        """``(len(time_s), 2)`` centre ``(x, y)`` at each time."""
        time = np.asarray(time_s, dtype=np.float64)[:, None]
        return np.asarray(self.start_xy_px) + time * np.asarray(self.velocity_px_per_s)


@dataclass(frozen=True)
class Background:
    """Drifting gratings: ``base + sum_j amplitude_j sin(2 pi (k_j . (p - v t) + phi_j))``."""

    base_rgb: tuple[float, float, float]  # grey levels
    wave_vectors: tuple[tuple[float, float], ...]  # (kx, ky) cycles per px
    phases_cycles: tuple[float, ...]
    amplitudes_rgb: tuple[tuple[float, float, float], ...]  # grey levels per channel
    velocity_px_per_s: tuple[float, float]


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip; ``key`` is ``<split>/<index:04d>``."""

    config: SynthConfig
    key: str
    background: Background
    objects: tuple[SceneObject, ...]
    noise_seed: int


def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return SPLITS.index(split)


def _leading_sounding_class(config: SynthConfig, split: str, index: int) -> str:
    """Class of a clip's first sounding object: each block of ``num_classes`` clips of a split
    holds every class once, in an order drawn from ``(seed, split, block)``."""
    block, position = divmod(index, config.num_classes)
    order = np.random.default_rng([config.seed, _split_id(split), 1, block]).permutation(
        config.num_classes
    )
    return config.classes[order[position]]


def _sample_motion(
    rng: np.random.Generator, config: SynthConfig, radius_px: float
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Start centre and velocity (px/s) of a straight path that keeps the disc in the frame."""
    speed_px_per_frame = rng.uniform(config.object_speed_min_px, config.object_speed_max_px)
    direction = rng.uniform(0, 2 * np.pi)
    travel_s = (config.num_frames - 1) / config.fps
    velocity = speed_px_per_frame * config.fps * np.array([np.cos(direction), np.sin(direction)])
    low = np.full(2, radius_px)
    high = np.array([config.width - 1, config.height - 1]) - radius_px
    displacement = velocity * travel_s
    # Shorten paths longer than the room the frame leaves (small frames, fast objects).
    shrink = min(1.0, float(np.min((high - low) / np.maximum(np.abs(displacement), 1e-9))))
    velocity, displacement = velocity * shrink, displacement * shrink
    start_low = low - np.minimum(displacement, 0)
    # A path that fills the room exactly can leave high < low by a rounding error.
    start_high = np.maximum(high - np.maximum(displacement, 0), start_low)
    start = rng.uniform(start_low, start_high)
    return (float(start[0]), float(start[1])), (float(velocity[0]), float(velocity[1]))


def _sample_paths(
    rng: np.random.Generator, config: SynthConfig
) -> list[tuple[float, tuple[float, float], tuple[float, float]]]:
    """Radius, start and velocity of each object, such that no two discs ever overlap.

    Objects never occlude each other: an occluding edge would cut through a grating and show
    its class in the LR frames. Whole layouts are drawn until one fits (``_PLACEMENT_TRIES``).
    """
    time = config.frame_times_s()[:, None]
    for _ in range(_PLACEMENT_TRIES):
        layout = []
        for _ in range(config.num_objects):
            radius = float(rng.uniform(config.object_radius_min_px, config.object_radius_max_px))
            layout.append((radius, *_sample_motion(rng, config, radius)))
        paths = [np.asarray(start) + time * np.asarray(velocity) for _, start, velocity in layout]
        if all(
            np.hypot(*(paths[i] - paths[j]).T).min()
            >= layout[i][0] + layout[j][0] + _OBJECT_GAP_PX
            for i, j in itertools.combinations(range(len(layout)), 2)
        ):
            return layout
    raise ValueError(
        f"cannot place {config.num_objects} non-overlapping objects of radius "
        f"{config.object_radius_min_px}-{config.object_radius_max_px} px in "
        f"{config.width}x{config.height} px frames; use fewer or smaller objects"
    )


def _sample_envelope(rng: np.random.Generator, config: SynthConfig) -> Envelope:
    count = math.ceil(config.duration_s / config.envelope_knot_s) + 2
    return Envelope(tuple(rng.uniform(0, 1, count).tolist()), config.envelope_knot_s)


def _sample_background(rng: np.random.Generator, config: SynthConfig) -> Background:
    count = config.background_waves
    periods = rng.uniform(config.background_period_min_px, config.background_period_max_px, count)
    angles = rng.uniform(0, np.pi, count)
    wave_vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1) / periods[:, None]
    tints = rng.uniform(0.5, 1.0, (count, 3))
    amplitudes = tints * config.background_contrast / max(count, 1)
    speed = rng.uniform(0, config.background_speed_max_px) * config.fps
    direction = rng.uniform(0, 2 * np.pi)
    return Background(
        base_rgb=tuple(rng.uniform(*_BACKGROUND_BASE_RANGE, 3).tolist()),
        wave_vectors=tuple(map(tuple, wave_vectors.tolist())),
        phases_cycles=tuple(rng.uniform(0, 1, count).tolist()),
        amplitudes_rgb=tuple(map(tuple, amplitudes.tolist())),
        velocity_px_per_s=(speed * math.cos(direction), speed * math.sin(direction)),
    )


def _distractor_class(
    rng: np.random.Generator, config: SynthConfig, leading_class: str
) -> str:
    """A silent object's class for ``config.distractors`` other than ``any``: from the families
    other than the leading sounding class's, or another class of its family (itself when the
    family has one class)."""
    family = config.families[config.family_of(leading_class)]
    if config.distractors == "other_family":
        candidates = [name for name in config.classes if name not in family]
    else:
        candidates = [name for name in family if name != leading_class] or [leading_class]
    return candidates[rng.integers(len(candidates))]


def sample_clip(config: SynthConfig, split: str, index: int) -> ClipSpec:
    """Draw clip ``index`` of ``split``; the result depends only on ``(config, split, index)``.

    The distractor classes of ``distractors != "any"`` come from a stream of their own, so
    the layouts, envelopes and tones of a seed stay those of ``distractors="any"``.
    """
    rng = np.random.default_rng([config.seed, _split_id(split), 0, index])
    distractor_rng = np.random.default_rng([config.seed, _split_id(split), 2, index])
    background = _sample_background(rng, config)
    sounding_ids = set((rng.permutation(config.num_objects)[: config.num_sounding] + 1).tolist())
    leading_id = min(sounding_ids, default=None)
    leading_class = _leading_sounding_class(config, split, index)
    objects = []
    for object_id, (radius, start, velocity) in enumerate(_sample_paths(rng, config), start=1):
        tint = rng.uniform(_OBJECT_TINT_MIN, 1.0, 3)
        class_name = config.classes[rng.integers(config.num_classes)]
        if object_id == leading_id:
            class_name = leading_class
        elif (object_id not in sounding_ids and leading_id is not None
              and config.distractors != "any"):
            class_name = _distractor_class(distractor_rng, config, leading_class)
        colour = (config.family_colour(class_name) if config.family_cue == "hue"
                  else tuple((tint / tint.max()).tolist()))
        objects.append(
            SceneObject(
                id=object_id,
                class_name=class_name,
                sounding=object_id in sounding_ids,
                radius_px=float(radius),
                start_xy_px=start,
                velocity_px_per_s=velocity,
                grating_period_px=float(rng.uniform(config.grating_period_min_px,
                                                    config.grating_period_max_px)),
                grating_orientation_rad=float(rng.uniform(0, np.pi)),
                grating_phase_cycles=float(rng.uniform(0, 1)),
                colour_rgb=colour,
                envelope=_sample_envelope(rng, config),
                tone_f0_hz=float(rng.uniform(config.tone_f0_min_hz, config.tone_f0_max_hz)),
                tone_phase_cycles=float(rng.uniform(0, 1)),
            )
        )
    return ClipSpec(
        config=config,
        key=f"{split}/{index:04d}",
        background=background,
        objects=tuple(objects),
        noise_seed=int(rng.integers(2**63)),
    )


def _pixel_grid(config: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``x (1, 1, W)`` and ``y (1, H, 1)``, HR px."""
    x = np.arange(config.width, dtype=np.float64)[None, None, :]
    y = np.arange(config.height, dtype=np.float64)[None, :, None]
    return x, y


def render_background(spec: ClipSpec) -> np.ndarray:
    """``(T, H, W, 3)`` float64 background in grey levels."""
    config, background = spec.config, spec.background
    x, y = _pixel_grid(config)
    time = config.frame_times_s()[:, None, None]
    shifted_x = x - background.velocity_px_per_s[0] * time
    shifted_y = y - background.velocity_px_per_s[1] * time
    image = np.broadcast_to(
        np.asarray(background.base_rgb), (config.num_frames, config.height, config.width, 3)
    ).copy()
    for (kx, ky), phase, amplitude in zip(
        background.wave_vectors, background.phases_cycles, background.amplitudes_rgb,
        strict=True,
    ):
        wave = np.sin(2 * np.pi * (kx * shifted_x + ky * shifted_y + phase))
        image += wave[..., None] * np.asarray(amplitude)
    return image


def render_frames(spec: ClipSpec) -> tuple[np.ndarray, np.ndarray]:
    """Render a clip: uint8 frames ``(T, H, W, 3)`` RGB and uint8 labels ``(T, H, W)``.

    An object's luminance is ``level + pulse_depth (2 e(t) - 1) + w(r) (amplitude p(u) +
    lattice_amplitude L(y, x))``: ``e`` its envelope, ``p`` its grating profile at grating
    phase ``u`` (cycles; the class profile, or its fundamental with lattices), ``L`` the class
    lattice (``class_detail="lattice"`` only), ``w`` a raised-cosine fade from 1 inside to 0 at
    the rim over ``texture_fade_px``; the disc edge is antialiased over one pixel. Labels mark
    pixels whose centre lies inside the disc.
    """
    config = spec.config
    x, y = _pixel_grid(config)
    time = config.frame_times_s()
    image = render_background(spec)
    labels = np.zeros((config.num_frames, config.height, config.width), dtype=np.uint8)
    for obj in spec.objects:
        centres = obj.centres_xy_px(time)
        dx = x - centres[:, 0, None, None]
        dy = y - centres[:, 1, None, None]
        distance = np.hypot(dx, dy)
        coverage = np.clip(obj.radius_px - distance + 0.5, 0.0, 1.0)
        inset = np.clip((obj.radius_px - distance) / config.texture_fade_px, 0.0, 1.0)
        fade = 0.5 - 0.5 * np.cos(np.pi * inset)
        along = dx * math.cos(obj.grating_orientation_rad) + dy * math.sin(
            obj.grating_orientation_rad
        )
        profile = harmonic_series(
            harmonic_coefficients(obj.class_name, config.grating_harmonics),
            along / obj.grating_period_px + obj.grating_phase_cycles,
        )
        texture = config.grating_amplitude * profile
        if config.class_detail == "lattice":
            texture = texture + config.lattice_amplitude * _lattice_image(config, obj.class_name)
        brightness = config.object_level + config.pulse_depth * (2 * obj.envelope(time) - 1)
        luminance = brightness[:, None, None] + fade * texture
        colour = luminance[..., None] * np.asarray(obj.colour_rgb)
        image += coverage[..., None] * (colour - image)
        labels[distance < obj.radius_px] = obj.id
    frames = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return frames, labels


def _lattice_image(config: SynthConfig, class_name: str) -> np.ndarray:
    """The lattice of ``class_name`` over the frame, (H, W) of +-1 (:func:`lattice_pattern`)."""
    period = config.lattice_period_px
    pattern = lattice_pattern(config.classes.index(class_name), period)
    reps = (-(-config.height // period), -(-config.width // period))
    return np.tile(pattern, reps)[: config.height, : config.width]


def synthesize_audio(spec: ClipSpec) -> np.ndarray:
    """Mono float32 ``(N,)`` soundtrack, ``N = round(duration_s * sample_rate)``.

    Sum over sounding objects of ``amplitude g(t) p(f0 t + phase)`` with ``p`` the class
    profile (same harmonics as the grating), ``g = floor + (1 - floor) e(t)`` the loudness
    from the object's envelope and ``amplitude = tone_amplitude / num_sounding``; plus white
    noise of ``audio_noise_std``.
    """
    config = spec.config
    count = round(config.duration_s * config.sample_rate)
    time = np.arange(count) / config.sample_rate
    audio = np.random.default_rng(spec.noise_seed).normal(0.0, config.audio_noise_std, count)
    sounding = [obj for obj in spec.objects if obj.sounding]
    for obj in sounding:
        loudness = config.loudness_floor + (1 - config.loudness_floor) * obj.envelope(time)
        tone = harmonic_series(
            harmonic_coefficients(obj.class_name, config.num_harmonics),
            obj.tone_f0_hz * time + obj.tone_phase_cycles,
        )
        audio += config.tone_amplitude / len(sounding) * loudness * tone
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Manifest records


class _JsonKeys:
    """Read access by the manifest's JSON keys too (``entry["video"]``, ``obj["class"]``)."""

    _renamed: Mapping[str, str] = {}

    def __getitem__(self, key: str) -> Any:
        name = self._renamed.get(key, key)
        if name.startswith("_") or name not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(key)
        return getattr(self, name)

    def to_json(self) -> dict[str, Any]:
        inverse = {name: key for key, name in self._renamed.items()}
        return {inverse.get(f.name, f.name): _json_value(getattr(self, f.name))
                for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]):
        return cls(**{cls._renamed.get(key, key): value for key, value in data.items()})


def _json_value(value: Any) -> Any:
    if isinstance(value, _JsonKeys):
        return value.to_json()
    if isinstance(value, Mapping):
        return {key: _json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(item) for item in value]
    return value


@dataclass(frozen=True)
class ObjectEntry(_JsonKeys):
    """An object as the manifest records it (``class`` in JSON is ``class_name`` here)."""

    _renamed = {"class": "class_name"}
    id: int
    class_name: str
    sounding: bool
    radius_px: float
    centre_xy_px: Sequence[Sequence[float]]  # (T, 2) centre per frame
    envelope: Sequence[float]  # (T,) envelope per frame, in [0, 1]
    grating_period_px: float
    grating_orientation_rad: float
    grating_phase_cycles: float
    colour_rgb: Sequence[float]
    tone_f0_hz: float


@dataclass(frozen=True)
class ClipEntry(_JsonKeys):
    """One clip of the manifest; paths are relative to the set's root."""

    key: str
    video: str
    labels: str
    num_frames: int
    fps: float
    width: int
    height: int
    sample_rate: int  # Hz
    objects: Sequence[ObjectEntry] = field(default_factory=tuple)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClipEntry:
        objects = tuple(ObjectEntry.from_json(obj) for obj in data.get("objects", ()))
        return cls(**{**data, "objects": objects})


@dataclass(frozen=True)
class Manifest(_JsonKeys):
    """The contents of ``manifest.json``."""

    format: str
    params: Mapping[str, Any]
    classes: Sequence[str]
    class_harmonics: Mapping[str, Sequence[Sequence[float]]]  # class -> [[magnitude, phase_rad]]
    splits: Mapping[str, Sequence[ClipEntry]]


def _object_entry(obj: SceneObject, config: SynthConfig) -> ObjectEntry:
    time = config.frame_times_s()
    return ObjectEntry(
        id=obj.id,
        class_name=obj.class_name,
        sounding=obj.sounding,
        radius_px=obj.radius_px,
        centre_xy_px=obj.centres_xy_px(time).tolist(),
        envelope=obj.envelope(time).tolist(),
        grating_period_px=obj.grating_period_px,
        grating_orientation_rad=obj.grating_orientation_rad,
        grating_phase_cycles=obj.grating_phase_cycles,
        colour_rgb=list(obj.colour_rgb),
        tone_f0_hz=obj.tone_f0_hz,
    )


def _class_harmonics(config: SynthConfig) -> dict[str, list[list[float]]]:
    return {
        name: [[abs(c), float(np.angle(c))]
               for c in harmonic_coefficients(name, config.num_harmonics)]
        for name in config.classes
    }


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as temporary, open(temporary, "wb") as handle:
        np.save(handle, array)


def write_clip(spec: ClipSpec, root: PathLike) -> ClipEntry:
    """Render ``spec`` and write ``<root>/<key>.mp4`` and ``<root>/<key>_labels.npy``."""
    from avvsr.data.video_writer import write_video

    config = spec.config
    video = Path(root) / f"{spec.key}.mp4"
    labels_path = Path(root) / f"{spec.key}_labels.npy"
    video.parent.mkdir(parents=True, exist_ok=True)
    frames, labels = render_frames(spec)
    write_video(video, frames, config.fps, synthesize_audio(spec), config.sample_rate,
                codec="libx264", crf=config.crf, pix_fmt=config.pix_fmt, audio_codec="aac")
    _save_npy_atomic(labels_path, labels)
    return ClipEntry(
        key=spec.key,
        video=f"{spec.key}.mp4",
        labels=f"{spec.key}_labels.npy",
        num_frames=config.num_frames,
        fps=config.fps,
        width=config.width,
        height=config.height,
        sample_rate=config.sample_rate,
        objects=tuple(_object_entry(obj, config) for obj in spec.objects),
    )


# --------------------------------------------------------------------------------------------
# Reading a set


def load_manifest(root: PathLike) -> Manifest:
    """Read and check ``<root>/manifest.json``; :class:`DatasetError` naming it if malformed."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise MissingFileError(path, "no synthetic-set manifest (generate one with avvsr-synth)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(path, f"cannot read the manifest as JSON ({error})") from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise DatasetError(path, f"not an {FORMAT} manifest (format {found!r})")
    try:
        splits = data["splits"]
        if set(splits) != set(SPLITS):
            raise DatasetError(path, f"splits must be {list(SPLITS)}, got {sorted(splits)}")
        return Manifest(
            format=data["format"],
            params=data["params"],
            classes=data["classes"],
            class_harmonics=data["class_harmonics"],
            splits={name: [ClipEntry.from_json(entry) for entry in splits[name]]
                    for name in SPLITS},
        )
    except (KeyError, TypeError, AttributeError) as error:
        raise DatasetError(
            path, f"malformed manifest ({type(error).__name__}: {error})"
        ) from error


def sound_source_mask(root: PathLike, entry: ClipEntry | Mapping[str, Any]) -> np.ndarray:
    """Bool ``(T, H, W)`` union of the clip's sounding objects, from its label map."""
    path = Path(root) / entry["labels"]
    if not path.is_file():
        raise MissingFileError(path, "label map missing")
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DatasetError(path, f"cannot read the label map ({error})") from error
    expected = (entry["num_frames"], entry["height"], entry["width"])
    if labels.dtype != np.uint8 or labels.shape != expected:
        raise DatasetError(
            path, f"label map must be uint8 {expected}, got {labels.dtype} {labels.shape}"
        )
    sounding = [obj["id"] for obj in entry["objects"] if obj["sounding"]]
    return np.isin(labels, sounding)


# --------------------------------------------------------------------------------------------
# Generating a set


def _existing_params(out: Path) -> dict[str, Any] | None:
    """Params of a complete set at ``out``; None when ``out`` does not exist or is empty."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return None
    try:
        return dict(load_manifest(out).params)
    except (DatasetError, MissingFileError) as error:
        raise DatasetError(
            out, f"exists but is not a complete synthetic set ({error}); "
            "pass overwrite=True (--overwrite) to replace it"
        ) from error


def _check_reusable(out: Path, params: dict[str, Any]) -> bool:
    """True when ``out`` already holds this set; raise when it holds another one."""
    existing = _existing_params(out)
    if existing is None:
        return False
    if existing == params:
        return True
    differing = sorted(key for key in params.keys() | existing.keys()
                       if params.get(key) != existing.get(key))
    raise DatasetError(
        out, f"holds a synthetic set with other parameters (differing: "
        f"{', '.join(differing)}); pass overwrite=True (--overwrite) to replace it"
    )


def generate(
    config: SynthConfig, out: PathLike, *, overwrite: bool = False, progress: bool = True
) -> Path:
    """Generate the set into ``out`` atomically; returns ``out``.

    Writes into a temporary folder beside ``out`` and renames it when complete
    (:func:`avvsr.atomic.atomic_write`). If ``out`` already holds a complete set with the same
    parameters, does nothing; with other parameters (or other contents) raises
    :class:`DatasetError` unless ``overwrite`` (the old contents are then replaced whole).
    """
    from tqdm import tqdm

    out = Path(out)
    params = config.to_params()
    if not overwrite and _check_reusable(out, params):
        logger.info("%s already holds this synthetic set (same parameters); nothing to do", out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # Without overwrite, another process may finish a set at ``out`` first: kept, and checked
    # below to be this one.
    with atomic_write(out, folder=True, keep_existing=not overwrite) as staging:
        splits: dict[str, list[dict[str, Any]]] = {}
        with tqdm(total=sum(config.split_sizes.values()), desc="avvsr-synth", unit="clip",
                  disable=not progress) as bar:
            for split, size in config.split_sizes.items():
                splits[split] = []
                for index in range(size):
                    entry = write_clip(sample_clip(config, split, index), staging)
                    splits[split].append(entry.to_json())
                    bar.update()
        manifest = {
            "format": FORMAT,
            "params": params,
            "classes": config.classes,
            "class_harmonics": _class_harmonics(config),
            "splits": splits,
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n",
                                             encoding="utf-8")
    if not overwrite:
        _check_reusable(out, params)
    logger.info("wrote %s (%s clips)", out, sum(config.split_sizes.values()))
    return out
