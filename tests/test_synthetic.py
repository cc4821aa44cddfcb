"""The synthetic benchmark, checked on the written and decoded files (not the rendered arrays).

References are computed here independently of the generator: class harmonics from an FFT of
the ideal waveform shapes, object geometry from the manifest, encoding behaviour from a second
encode of the same background.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging

import numpy as np
import pytest
import torch

from avvsr.cli import synth as synth_cli
from avvsr.data import synthetic
from avvsr.data.audio_features import LogMel
from avvsr.data.audio_io import AudioTrack, audio_windows, read_audio
from avvsr.data.degradations import degrade
from avvsr.data.io import probe_video, read_frames
from avvsr.data.synthetic import (
    ClipEntry,
    ObjectEntry,
    SynthConfig,
    generate,
    load_manifest,
    sample_clip,
    sound_source_mask,
    write_clip,
)
from avvsr.errors import DatasetError, MissingFileError
from helpers.synthetic import FULL_LENGTH_SET

# DATA.md: with this design the LR frames of different classes differ by "at most 0.1-3 grey
# levels"; each decoded uint8 image adds up to 0.5 of rounding, so two differ by up to 1 more.
LR_CLASS_DIFFERENCE_MAX = 3.0 + 1.0
# Harmonic coefficients fitted on decoded frames (relative to the fundamental) must match the
# class table to this precision: rounding to uint8 and the RGB/YUV round trip stay below
# 2 grey levels on a grating of 40 grey levels, averaged over hundreds of pixels.
HARMONIC_TOLERANCE = 0.05

# The ideal waveform shapes of period 1 that the classes are named after.
IDEAL_WAVEFORMS = {
    "sine": lambda u: np.sin(2 * np.pi * u),
    "square": lambda u: np.sign(np.sin(2 * np.pi * u)),
    "triangle": lambda u: 2 / np.pi * np.arcsin(np.sin(2 * np.pi * u)),
    "sawtooth": lambda u: 2 * (u - np.floor(u + 0.5)),
    "pulse": lambda u: (u - np.floor(u) < 1 / 3).astype(float),
}


def reference_coefficients(class_name: str, num_harmonics: int) -> np.ndarray:
    """Complex c_k / c_1 of ``Im(sum c_k e^{2 pi i k u})`` from an FFT of the ideal shape,
    shifted so the fundamental is a sine of phase 0."""
    samples = 2**16
    u = (np.arange(samples) + 0.5) / samples  # midpoints: no sample on a discontinuity
    spectrum = np.fft.fft(IDEAL_WAVEFORMS[class_name](u)) / samples
    # Coefficient of e^{2 pi i k u} is spectrum[k] e^{-i pi k / samples} (the half-sample shift);
    # f = sum_k 2 Re(X_k e^{2 pi i k u}) = Im(sum_k 2i X_k e^{2 pi i k u}).
    k = np.arange(1, num_harmonics + 1)
    sine_coefficients = 2j * spectrum[k] * np.exp(-1j * np.pi * k / samples)
    aligned = sine_coefficients * np.exp(-1j * k * np.angle(sine_coefficients[0]))
    return aligned / abs(sine_coefficients[0])


def nearest_class(estimate: np.ndarray, use_phase: bool) -> str:
    """The class of IDEAL_WAVEFORMS whose reference coefficients are closest to ``estimate``."""
    def distance(name: str) -> float:
        reference = reference_coefficients(name, len(estimate))
        if not use_phase:
            return float(np.abs(np.abs(reference) - np.abs(estimate)).sum())
        return float(np.abs(reference - estimate).sum())

    return min(IDEAL_WAVEFORMS, key=distance)


def object_coordinates(obj: ObjectEntry, height: int, width: int):
    """Distance from the object's centre and grating phase (cycles), each ``(T, H, W)``."""
    centres = np.asarray(obj.centre_xy_px)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    dx = x[None] - centres[:, 0, None, None]
    dy = y[None] - centres[:, 1, None, None]
    along = dx * np.cos(obj.grating_orientation_rad) + dy * np.sin(obj.grating_orientation_rad)
    return np.hypot(dx, dy), along / obj.grating_period_px + obj.grating_phase_cycles


def object_luminance(frames: np.ndarray, obj: ObjectEntry) -> np.ndarray:
    """``(T, H, W)`` luminance of an object's pixels (RGB = luminance * colour)."""
    colour = np.asarray(obj.colour_rgb)
    return frames.astype(np.float64) @ colour / (colour @ colour)


def fit_harmonics(frames: np.ndarray, obj: ObjectEntry, config: SynthConfig) -> np.ndarray:
    """Least-squares harmonic coefficients c_k / amplitude of the object's grating, fitted on
    its fully textured interior with a free brightness per frame."""
    distance, phase = object_coordinates(obj, config.height, config.width)
    inside = distance <= obj.radius_px - config.texture_fade_px
    frame_index = np.broadcast_to(np.arange(config.num_frames)[:, None, None], inside.shape)
    columns = [(frame_index[inside] == t).astype(float) for t in range(config.num_frames)]
    for k in range(1, config.num_harmonics + 1):
        columns += [np.sin(2 * np.pi * k * phase[inside]), np.cos(2 * np.pi * k * phase[inside])]
    solution, *_ = np.linalg.lstsq(
        np.stack(columns, axis=1), object_luminance(frames, obj)[inside], rcond=None
    )
    sine_part, cosine_part = solution[config.num_frames :: 2], solution[config.num_frames + 1 :: 2]
    return (sine_part + 1j * cosine_part) / config.grating_amplitude


def relative_magnitudes(power: np.ndarray, frequencies: np.ndarray, f0_hz: float, count: int):
    """Magnitude of each harmonic ``k f0`` relative to the first, from a power spectrum: the
    power of the bins within ``f0 / 2`` of ``k f0``."""
    energy = [power[np.abs(frequencies - k * f0_hz) < f0_hz / 2].sum() for k in range(1, count + 1)]
    magnitudes = np.sqrt(energy)
    return magnitudes / magnitudes[0]


def fft_magnitudes(track: AudioTrack, f0_hz: float, count: int) -> np.ndarray:
    """Harmonic magnitudes from the FFT of the whole (Hann-windowed) track."""
    power = np.abs(np.fft.rfft(track.samples * np.hanning(len(track.samples)))) ** 2
    frequencies = np.fft.rfftfreq(len(track.samples), 1 / track.sample_rate)
    return relative_magnitudes(power, frequencies, f0_hz, count)


def log_mel_magnitudes(track: AudioTrack, f0_hz: float, count: int) -> np.ndarray:
    """Harmonic magnitudes from the time-averaged log-mel the models see (``LogMel``): mel
    filters overlap so that their weights sum to 1 at every frequency, so summing the bands
    centred near ``k f0`` recovers that harmonic's power."""
    log_mel = LogMel(sample_rate=track.sample_rate)
    power = log_mel(torch.from_numpy(track.samples)).exp().mean(dim=-1).numpy()
    filters = log_mel.mel.mel_scale.fb.numpy()  # (n_fft // 2 + 1, n_mels)
    bin_frequencies = np.linspace(0, track.sample_rate / 2, filters.shape[0])
    centres = bin_frequencies[filters.argmax(axis=0)]
    return relative_magnitudes(power, centres, f0_hz, count)


def dilate(mask: np.ndarray) -> np.ndarray:
    """8-neighbour dilation by one pixel of a ``(T, H, W)`` mask."""
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    height, width = mask.shape[1:]
    shifted = [padded[:, dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)]
    return np.logical_or.reduce(shifted)


@pytest.fixture(scope="module")
def small_set(synthetic_sets):
    """``(root, manifest)`` of the session's set of the default geometry (96x96, 16 frames,
    2 objects, 4 classes): 6 clips (:data:`helpers.synthetic.FULL_LENGTH_SET`), read only."""
    root = synthetic_sets(FULL_LENGTH_SET)
    return root, load_manifest(root)


def all_entries(manifest) -> list[ClipEntry]:
    return [entry for split in synthetic.SPLITS for entry in manifest.splits[split]]


# --------------------------------------------------------------------------------------------
# The class table


@pytest.mark.parametrize("class_name", list(IDEAL_WAVEFORMS))
def test_class_coefficients_are_the_waveform_fourier_series(class_name):
    expected = reference_coefficients(class_name, 5)
    np.testing.assert_allclose(
        synthetic.harmonic_coefficients(class_name, 5), expected, atol=1e-3
    )


def test_every_class_has_the_same_fundamental_and_distinct_magnitudes():
    table = {name: synthetic.harmonic_coefficients(name, 3) for name in synthetic.CLASS_SERIES}
    np.testing.assert_allclose([coefficients[0] for coefficients in table.values()], 1)
    # Distinct enough for the decoded-file checks below to tell them apart.
    for first, second in itertools.combinations(table, 2):
        gap = np.abs(np.abs(table[first]) - np.abs(table[second])).max()
        assert gap > 2 * HARMONIC_TOLERANCE, (first, second)


# --------------------------------------------------------------------------------------------
# Audio: the decoded soundtrack tells the sounding object's class


@pytest.mark.parametrize("estimator", [fft_magnitudes, log_mel_magnitudes])
def test_decoded_audio_identifies_the_sounding_class(small_set, estimator):
    root, manifest = small_set
    for entry in all_entries(manifest):
        (sounding,) = [obj for obj in entry.objects if obj.sounding]
        track = read_audio(root / entry.video, sample_rate=entry.sample_rate)
        magnitudes = estimator(track, sounding.tone_f0_hz, FULL_LENGTH_SET.num_harmonics)
        assert nearest_class(magnitudes, use_phase=False) == sounding.class_name, entry.key
        np.testing.assert_allclose(
            magnitudes,
            np.abs(reference_coefficients(sounding.class_name, FULL_LENGTH_SET.num_harmonics)),
            atol=HARMONIC_TOLERANCE,
            err_msg=entry.key,
        )


def test_sounding_classes_are_balanced_within_a_split(small_set):
    _, manifest = small_set
    classes = [obj.class_name for entry in manifest.splits["train"] for obj in entry.objects
               if obj.sounding]
    assert sorted(classes) == sorted(manifest.classes)  # 4 clips, 4 classes: each once


# --------------------------------------------------------------------------------------------
# HR frames carry the class; LR frames do not


VARIANT_CLIPS = 3  # clips of the test split, each rendered in every class


@pytest.fixture(scope="module")
def class_variants(tmp_path_factory):
    """Clips rendered with the sounding object in each class, written and decoded:
    ``{clip index: {class: (frames uint8 (T, H, W, 3), sounding ObjectEntry)}}``."""
    config = SynthConfig(num_classes=len(synthetic.CLASS_SERIES), num_frames=3)
    root = tmp_path_factory.mktemp("variants")
    variants = {}
    for index in range(VARIANT_CLIPS):
        spec = sample_clip(config, "test", index)
        (sounding_id,) = [obj.id for obj in spec.objects if obj.sounding]
        variants[index] = {}
        for class_name in config.classes:
            objects = tuple(
                dataclasses.replace(obj, class_name=class_name) if obj.id == sounding_id else obj
                for obj in spec.objects
            )
            key = f"{index}/{class_name}"
            entry = write_clip(dataclasses.replace(spec, objects=objects, key=key), root)
            (sounding,) = [obj for obj in entry.objects if obj.sounding]
            variants[index][class_name] = (read_frames(root / entry.video), sounding)
    return config, variants


def test_decoded_hr_texture_identifies_the_class(class_variants):
    config, variants = class_variants
    for index, by_class in variants.items():
        for class_name, (frames, sounding) in by_class.items():
            coefficients = fit_harmonics(frames, sounding, config)
            assert nearest_class(coefficients, use_phase=True) == class_name, index
            np.testing.assert_allclose(
                coefficients,
                reference_coefficients(class_name, config.num_harmonics),
                atol=HARMONIC_TOLERANCE,
                err_msg=f"clip {index}, {class_name}",
            )


def test_a_vertical_flip_turns_the_sawtooth_into_a_texture_of_another_class(class_variants):
    """Why the synthetic set trains without flips (conf/data/synth_av.yaml): a grating's
    orientation lies in [0, pi), so a vertical flip reverses its profile along that direction.
    Reversal only shifts the symmetric waveforms, but turns the sawtooth's second harmonic
    around: a flipped sawtooth has the texture the class table gives no class (nearest: square),
    and training on flips would teach that the class leaves that harmonic's sign to chance."""
    config, variants = class_variants
    for index, by_class in variants.items():
        for class_name, (frames, sounding) in by_class.items():
            flipped = dataclasses.replace(
                sounding,
                centre_xy_px=[[x, config.height - 1 - y] for x, y in sounding.centre_xy_px],
                grating_orientation_rad=np.pi - sounding.grating_orientation_rad,
                grating_phase_cycles=-sounding.grating_phase_cycles,
            )
            coefficients = fit_harmonics(frames[:, ::-1], flipped, config)
            harmonics = np.arange(1, len(coefficients) + 1)
            aligned = coefficients * np.exp(-1j * harmonics * np.angle(coefficients[0]))
            seen_as = nearest_class(aligned, use_phase=True)
            assert (seen_as != class_name) == (class_name == "sawtooth"), (index, class_name)


def test_lr_frames_after_bicubic_degradation_are_class_blind(class_variants):
    _, variants = class_variants
    for index, by_class in variants.items():
        hr = {name: torch.from_numpy(frames).double() for name, (frames, _) in by_class.items()}
        lr = {name: degrade(frames.permute(0, 3, 1, 2), 4, "BI") for name, frames in hr.items()}
        for first, second in itertools.combinations(by_class, 2):
            lr_difference = (lr[first] - lr[second]).abs().max().item()
            hr_difference = (hr[first] - hr[second]).abs().max().item()
            assert lr_difference <= LR_CLASS_DIFFERENCE_MAX, (index, first, second, lr_difference)
            assert hr_difference > LR_CLASS_DIFFERENCE_MAX, (index, first, second, hr_difference)


@pytest.mark.parametrize("period", [2, 3, 4, 8])
def test_lattices_are_orthogonal_zero_mean_patterns_the_degradation_removes(period):
    """Each lattice has zero mean and peak 1, the classes' lattices are orthogonal over a
    period, and tiled over a frame the x4 (here: ``period``) bicubic degradation leaves none
    of it away from the frame's edges."""
    patterns = [synthetic.lattice_pattern(k, period)
                for k in range(len(synthetic.lattice_frequencies(period)))]
    for k, pattern in enumerate(patterns):
        assert abs(pattern.mean()) < 1e-12 and np.abs(pattern).max() == pytest.approx(1.0)
        for other in patterns[k + 1:]:
            assert abs((pattern * other).sum()) < 1e-9
        tiled = torch.from_numpy(np.tile(pattern, (12, 12)))[None].expand(3, -1, -1)
        lr = degrade(tiled, period, "BI")
        assert lr[:, 3:-3, 3:-3].abs().max() < 1e-6, k
    with pytest.raises(ValueError, match="distinct patterns"):
        synthetic.lattice_pattern(len(patterns), period)


# --------------------------------------------------------------------------------------------
# Families: what the LR frames show (the family), and what they do not (the class within it)

# The classes that the audio must separate (one family) differ at LR by at most this (issue 14:
# "at most ~3.5 grey levels", decoded files); different families by at least this much on
# average over the object's LR pixels, in their most different channel.
LR_FAMILY_CLASS_DIFFERENCE_MAX = 3.5
LR_FAMILY_DIFFERENCE_MIN = 20.0
FAMILIES = SynthConfig(num_classes=4, classes_per_family=2, family_cue="hue",
                       distractors="other_family", num_frames=3)


@pytest.fixture(scope="module", params=synthetic.CLASS_DETAILS)
def family_variants(tmp_path_factory, request):
    """Clips of ``FAMILIES`` (with each ``class_detail``) with the sounding object rendered in
    each class (in its family's colour, as the generator gives it), written, decoded and
    degraded x4 (BI): ``{clip index: {class: (LR float64 (T, 3, h, w), HR, LR object pixels
    bool (T, h, w))}}``."""
    root = tmp_path_factory.mktemp("families")
    config = dataclasses.replace(FAMILIES, class_detail=request.param)
    variants = {}
    for index in range(VARIANT_CLIPS):
        spec = sample_clip(config, "test", index)
        (sounding_id,) = [obj.id for obj in spec.objects if obj.sounding]
        variants[index] = {}
        for class_name in FAMILIES.classes:
            objects = tuple(
                dataclasses.replace(obj, class_name=class_name,
                                    colour_rgb=FAMILIES.family_colour(class_name))
                if obj.id == sounding_id else obj
                for obj in spec.objects
            )
            key = f"{index}/{class_name}"
            entry = write_clip(dataclasses.replace(spec, objects=objects, key=key), root)
            frames = torch.from_numpy(read_frames(root / entry.video)).double()
            labels = torch.from_numpy(np.load(root / entry.labels) == sounding_id)
            # LR pixels whose whole 4x4 HR block lies in the object.
            inside = -torch.nn.functional.max_pool2d(-labels.double()[:, None], 4)[:, 0] > 0.5
            variants[index][class_name] = (
                degrade(frames.permute(0, 3, 1, 2), 4, "BI"), frames, inside
            )
    return variants


def test_lr_frames_within_a_family_are_class_blind(family_variants):
    for index, by_class in family_variants.items():
        for family in FAMILIES.families:
            for first, second in itertools.combinations(family, 2):
                (lr_a, hr_a, _), (lr_b, hr_b, _) = by_class[first], by_class[second]
                lr_difference = (lr_a - lr_b).abs().max().item()
                hr_difference = (hr_a - hr_b).abs().max().item()
                assert lr_difference <= LR_FAMILY_CLASS_DIFFERENCE_MAX, (
                    index, first, second, lr_difference)
                assert hr_difference > LR_FAMILY_CLASS_DIFFERENCE_MAX, (index, first, second)


def test_lr_frames_show_the_family(family_variants):
    for index, by_class in family_variants.items():
        for first, second in itertools.combinations(FAMILIES.classes, 2):
            if FAMILIES.family_of(first) == FAMILIES.family_of(second):
                continue
            (lr_a, _, inside), (lr_b, _, _) = by_class[first], by_class[second]
            per_channel = (lr_a - lr_b).abs().permute(1, 0, 2, 3)[:, inside].mean(dim=1)
            assert per_channel.max().item() >= LR_FAMILY_DIFFERENCE_MIN, (index, first, second)


@pytest.mark.parametrize("distractors", ["other_family", "same_family"])
def test_distractors_and_colours_follow_the_families(synthetic_sets, distractors):
    config = dataclasses.replace(FAMILIES, distractors=distractors, num_objects=3,
                                 num_train=8, num_val=0, num_test=0, num_frames=2)
    manifest = load_manifest(synthetic_sets(config))
    for entry in manifest.splits["train"]:
        (source,) = [obj for obj in entry.objects if obj.sounding]
        for obj in entry.objects:
            assert tuple(obj.colour_rgb) == synthetic.FAMILY_HUES[config.family_of(obj.class_name)]
            if obj.sounding:
                continue
            same_family = config.family_of(obj.class_name) == config.family_of(source.class_name)
            assert same_family == (distractors == "same_family"), entry.key
            # The same family's distractor is of the other class: only the harmonics differ.
            assert (obj.class_name != source.class_name), entry.key


def test_distractor_choice_keeps_the_layout_of_any():
    """Distractor classes come from their own random stream: the scene stays the same."""
    for index in range(4):
        plain = sample_clip(dataclasses.replace(FAMILIES, distractors="any"), "val", index)
        other = sample_clip(FAMILIES, "val", index)
        for first, second in zip(plain.objects, other.objects, strict=True):
            assert (first.start_xy_px, first.envelope, first.sounding) == (
                second.start_xy_px, second.envelope, second.sounding)


# --------------------------------------------------------------------------------------------
# Synchrony and masks


def pearson(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.corrcoef(first, second)[0, 1])


def test_sounding_object_pulses_with_the_audio_envelope(small_set):
    root, manifest = small_set
    for entry in all_entries(manifest):
        video = root / entry.video
        frames = read_frames(video)
        labels = np.load(root / entry.labels)
        track = read_audio(video, sample_rate=entry.sample_rate)
        window_s = 1 / entry.fps
        times = probe_video(video).timestamps_s
        # Only frames whose window lies within the track (the contract zero-pads the others).
        full = (times - window_s / 2 >= track.start_s) & (
            times + window_s / 2 <= track.start_s + track.duration_s
        )
        windows = audio_windows(track, times[full], window_s).astype(np.float64)
        loudness = np.sqrt((windows**2).mean(axis=1))
        correlation = {}
        for obj in entry.objects:
            luminance = object_luminance(frames, obj)
            brightness = [luminance[t][labels[t] == obj.id].mean() for t in np.flatnonzero(full)]
            correlation[obj.id] = pearson(np.asarray(brightness), loudness)
        (sounding_id,) = [obj.id for obj in entry.objects if obj.sounding]
        # Brightness and loudness are both affine in the same envelope: correlation 1 up to
        # rounding and the envelope's change within a window.
        assert correlation[sounding_id] > 0.99, (entry.key, correlation)
        assert max(correlation, key=correlation.get) == sounding_id, (entry.key, correlation)


def test_label_maps_are_the_discs_of_the_manifest(small_set):
    root, manifest = small_set
    for entry in all_entries(manifest):
        labels = np.load(root / entry.labels)
        assert labels.dtype == np.uint8
        assert labels.shape == (entry.num_frames, entry.height, entry.width)
        expected = np.zeros_like(labels)
        for obj in entry.objects:
            distance, _ = object_coordinates(obj, entry.height, entry.width)
            assert not (expected[distance < obj.radius_px]).any(), "objects overlap"
            expected[distance < obj.radius_px] = obj.id
        np.testing.assert_array_equal(labels, expected, err_msg=entry.key)
        sounding_ids = [obj.id for obj in entry.objects if obj.sounding]
        np.testing.assert_array_equal(
            sound_source_mask(root, entry), np.isin(labels, sounding_ids)
        )
        # The mask works on the manifest's plain JSON as well.
        np.testing.assert_array_equal(
            sound_source_mask(root, entry.to_json()), sound_source_mask(root, entry)
        )


def test_decoded_objects_lie_exactly_under_their_masks(tmp_path):
    """Outside the (antialiasing-dilated) masks, a clip decodes to exactly the same pixels as
    its background alone (the default crf 0 with yuv444p is lossless in YUV, and the RGB to
    YUV conversion works pixel by pixel), and inside them it does not."""
    spec = sample_clip(FULL_LENGTH_SET, "train", 0)
    entry = write_clip(spec, tmp_path)
    background = write_clip(dataclasses.replace(spec, objects=(), key="background"), tmp_path)
    frames = read_frames(tmp_path / entry.video)
    background_frames = read_frames(tmp_path / background.video)
    labels = np.load(tmp_path / entry.labels)
    outside = ~dilate(labels > 0)
    np.testing.assert_array_equal(frames[outside], background_frames[outside])
    differs = (frames != background_frames).any(axis=-1)
    # Inside, only pixels where the object happens to match the background may be equal.
    assert differs[labels > 0].mean() > 0.95


# --------------------------------------------------------------------------------------------
# Determinism, atomic and idempotent writing


TINY = SynthConfig(num_classes=2, num_train=2, num_val=0, num_test=1, num_frames=4)


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    first = generate(TINY, tmp_path / "first", progress=False)
    second = generate(TINY, tmp_path / "second", progress=False)
    other = generate(dataclasses.replace(TINY, seed=1), tmp_path / "other", progress=False)
    manifest_bytes = (first / "manifest.json").read_bytes()
    assert manifest_bytes == (second / "manifest.json").read_bytes()
    assert manifest_bytes != (other / "manifest.json").read_bytes()
    for entry in all_entries(load_manifest(first)):
        np.testing.assert_array_equal(
            read_frames(first / entry.video), read_frames(second / entry.video)
        )
        np.testing.assert_array_equal(
            read_audio(first / entry.video).samples, read_audio(second / entry.video).samples
        )
        np.testing.assert_array_equal(
            np.load(first / entry.labels), np.load(second / entry.labels)
        )


def test_a_clip_depends_only_on_seed_split_and_index():
    larger = dataclasses.replace(TINY, num_train=7, num_test=5)
    assert sample_clip(TINY, "train", 1) == dataclasses.replace(
        sample_clip(larger, "train", 1), config=TINY
    )
    assert sample_clip(TINY, "train", 1) != sample_clip(TINY, "test", 1)


def test_generate_is_idempotent_and_refuses_other_parameters(tmp_path, caplog):
    out = tmp_path / "set"
    generate(TINY, out, progress=False)
    manifest = out / "manifest.json"
    written = manifest.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="avvsr.data.synthetic"):
        generate(TINY, out, progress=False)
    assert "already holds" in caplog.text
    assert manifest.stat().st_mtime_ns == written

    other = dataclasses.replace(TINY, seed=5)
    with pytest.raises(DatasetError, match="seed") as error:
        generate(other, out, progress=False)
    assert str(out) in str(error.value)
    assert load_manifest(out).params["seed"] == TINY.seed

    generate(other, out, overwrite=True, progress=False)
    assert load_manifest(out).params["seed"] == other.seed
    assert sorted(path.name for path in tmp_path.iterdir()) == ["set"]  # no temporaries left


@pytest.mark.parametrize("seed_of_the_other", [TINY.seed, TINY.seed + 1])
def test_a_set_another_writer_finishes_first_is_kept(tmp_path, monkeypatch, seed_of_the_other):
    """Two processes generating into one folder: the first complete set stays; the second
    writer accepts it if it is the same set and raises if it is another one."""
    out, real_write_clip = tmp_path / "set", synthetic.write_clip
    ours = dataclasses.replace(TINY, num_train=1, num_test=0)
    other = dataclasses.replace(ours, seed=seed_of_the_other)

    def the_other_writer_finishes_meanwhile(spec, root):
        monkeypatch.setattr(synthetic, "write_clip", real_write_clip)
        generate(other, out, progress=False)
        return real_write_clip(spec, root)

    monkeypatch.setattr(synthetic, "write_clip", the_other_writer_finishes_meanwhile)
    if seed_of_the_other == ours.seed:
        generate(ours, out, progress=False)
    else:
        with pytest.raises(DatasetError, match="differing: seed"):
            generate(ours, out, progress=False)
    assert load_manifest(out).params == other.to_params()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["set"]  # no temporaries left


def test_generate_refuses_a_folder_that_is_not_a_set(tmp_path):
    out = tmp_path / "set"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not a complete synthetic set"):
        generate(TINY, out, progress=False)
    assert (out / "notes.txt").read_text() == "mine"


def test_a_failed_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    real_write_clip = synthetic.write_clip
    calls = []

    def failing_write_clip(spec, root):
        calls.append(spec.key)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write_clip(spec, root)

    monkeypatch.setattr(synthetic, "write_clip", failing_write_clip)
    with pytest.raises(OSError, match="disk full"):
        generate(TINY, tmp_path / "set", progress=False)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Reading a set: clear errors


def test_load_manifest_names_the_file_on_bad_input(tmp_path):
    with pytest.raises(MissingFileError, match="manifest.json"):
        load_manifest(tmp_path)
    manifest = tmp_path / "manifest.json"
    manifest.write_text("{not json")
    with pytest.raises(DatasetError, match=str(manifest)):
        load_manifest(tmp_path)
    manifest.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DatasetError, match="avvsr-synth-v1"):
        load_manifest(tmp_path)
    manifest.write_text(json.dumps({"format": synthetic.FORMAT, "params": {}}))
    with pytest.raises(DatasetError, match="malformed"):
        load_manifest(tmp_path)


def test_manifest_round_trips_and_reads_by_json_keys(small_set):
    root, manifest = small_set
    raw = json.loads((root / "manifest.json").read_text())
    assert raw["params"] == FULL_LENGTH_SET.to_params()
    assert raw["classes"] == manifest.classes == FULL_LENGTH_SET.classes
    first_raw = raw["splits"]["train"][0]
    first = manifest.splits["train"][0]
    assert first.to_json() == first_raw
    assert first["video"] == first_raw["video"] == "train/0000.mp4"
    assert first["labels"] == "train/0000_labels.npy"
    assert first["objects"][0]["class"] == first_raw["objects"][0]["class"]
    info = probe_video(root / first.video)
    assert (info.num_frames, info.width, info.height) == (
        first.num_frames, first.width, first.height
    )
    assert info.fps == pytest.approx(first.fps)
    assert info.audio_sample_rate == first.sample_rate


def test_sound_source_mask_rejects_a_wrong_label_map(small_set, tmp_path):
    root, manifest = small_set
    entry = manifest.splits["val"][0]
    (tmp_path / "val").mkdir()
    np.save(tmp_path / entry.labels, np.zeros((2, 3, 4), dtype=np.uint8))
    with pytest.raises(DatasetError, match="label map must be uint8"):
        sound_source_mask(tmp_path, entry)
    with pytest.raises(MissingFileError):
        sound_source_mask(tmp_path / "elsewhere", entry)


# --------------------------------------------------------------------------------------------
# Configuration and command line


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_harmonics": 5}, "Nyquist"),
        ({"num_harmonics": 1}, "same harmonic magnitudes"),
        ({"grating_amplitude": 100.0}, "leave 0..255"),
        ({"num_sounding": 3}, "num_sounding"),
        ({"num_classes": 9}, "num_classes"),
        ({"family_cue": "shape"}, "family_cue"),
        ({"distractors": "nearby"}, "distractors"),
        ({"distractors": "other_family", "classes_per_family": 4}, "needs two families"),
        ({"classes_per_family": 0}, "classes_per_family"),
        ({"class_detail": "stripes"}, "class_detail"),
        ({"class_detail": "lattice", "lattice_period_px": 1}, "lattice_period_px"),
        ({"class_detail": "lattice", "lattice_period_px": 2, "num_classes": 5}, "as many lattices"),
        ({"class_detail": "lattice", "lattice_amplitude": 90.0}, "leave 0..255"),
    ],
)
def test_config_rejects_designs_that_break_the_benchmark(changes, message):
    with pytest.raises(ValueError, match=message):
        SynthConfig(**changes)


def test_crowded_frames_raise_a_clear_error():
    crowded = SynthConfig(num_objects=8, height=48, width=48, object_radius_min_px=12,
                          object_radius_max_px=12)
    with pytest.raises(ValueError, match="non-overlapping"):
        sample_clip(crowded, "train", 0)


def test_objects_whose_path_fills_the_frame_are_placed_inside_it():
    # Radius 18-24 px in 64 px frames: fast paths are shortened to exactly the room left, which
    # rounding once made negative (test clip 12 of this set raised numpy's "high - low < 0").
    tight = SynthConfig(num_objects=1, height=64, width=64, object_radius_min_px=18,
                        object_radius_max_px=24)
    for index in range(16):
        clip = sample_clip(tight, "test", index)
        radius = clip.objects[0].radius_px
        centres = clip.objects[0].centres_xy_px(tight.frame_times_s())
        assert centres.min() >= radius - 1e-9 and centres.max() <= 63 - radius + 1e-9


def test_cli_takes_every_config_field_and_is_idempotent(tmp_path, capsys, caplog):
    out = tmp_path / "cli_set"
    arguments = ["--out", str(out), "--no-progress", "--num-classes", "2", "--num-train", "1",
                 "--num-val", "0", "--num-test", "1", "--num-frames", "4", "--seed", "3"]
    assert synth_cli.main(arguments) == 0
    params = load_manifest(out).params
    assert params == dataclasses.replace(
        TINY, num_train=1, num_test=1, seed=3
    ).to_params()
    with caplog.at_level(logging.INFO):
        assert synth_cli.main(arguments) == 0
    assert "already holds" in caplog.text
    with pytest.raises(SystemExit) as exit_info:
        synth_cli.main([*arguments[:-1], "4"])
    assert exit_info.value.code == 2
    assert f"avvsr-synth: {out}: holds a synthetic set" in capsys.readouterr().err

    options = {action.dest for action in synth_cli.build_parser()._actions}
    assert {f.name for f in dataclasses.fields(SynthConfig)} <= options
    with pytest.raises(SystemExit):
        synth_cli.main(["--out", str(out), "--num-harmonics", "7"])
