"""Does a trained MS-AVF need its attention masks, and would it gain from masks that tell the
source from the distractors? PSNR-Y inside the sound source and inside the distractors on the
test split, with true audio, with every mask as learned, open (1 everywhere), closed (0
everywhere: the audio's FiLM is off, the fusion's visual path stays), and as learned but closed
on the distractors (there, each mask takes its frame's mean over the background, so that the
silent objects get no more of the audio than the empty background does; the distractor maps are
the test set's labels, used here only to probe a trained model).

Each setting replaces the masks inside each scale's FiLM (a forward hook that redoes
``AudioGuidedFiLM.modulate`` with the new mask), so nothing else of the model changes. If the
learned masks score as the open ones, the model does not rely on them to keep the audio off
the distractors; if closing them on the distractors gains nothing, the reconstruction has no
use for masks that tell the objects apart.

Usage::

    python experiments/av_ablation/diagnostics/mask_override.py <checkpoint> \\
        --data data/synth_lattice
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from study_tools import single_threaded_test_batches
from torch import Tensor

from avvsr.checkpoint import load_lit_module
from avvsr.lit_module import REGION_METRICS
from avvsr.metrics import RegionPSNR
from avvsr.models.fusion import MSAVF, AudioGuidedFiLM

# (learned mask (N, 1, h, w), distractors (N, 1, h, w) bool, background (N, 1, h, w) bool)
# -> the mask the FiLM uses instead.
MaskSetting = Callable[[Tensor, Tensor, Tensor], Tensor]


def background_level_on_distractors(
    mask: Tensor, distractors: Tensor, background: Tensor
) -> Tensor:
    """``mask`` with its distractor pixels set to its frame's mean over the background."""
    pixels = background.sum((1, 2, 3), keepdim=True).clamp(min=1)
    level = (mask * background).sum((1, 2, 3), keepdim=True) / pixels
    return torch.where(distractors, level.expand_as(mask), mask)


MASK_SETTINGS: dict[str, MaskSetting | None] = {
    "learned": None,
    "open": lambda mask, *_: torch.ones_like(mask),
    "closed": lambda mask, *_: torch.zeros_like(mask),
    "distractors closed": background_level_on_distractors,
}


@contextmanager
def masks_set(net: torch.nn.Module, setting: MaskSetting, batch: dict) -> Iterator[None]:
    """Within the block, every scale's FiLM of ``net`` uses ``setting`` of its learned mask on
    ``batch`` (whose label maps give the distractors and the background). The fusion is called
    once per group of frames, in frame order, so each call takes the label maps of the next
    frames. Forward hooks on ``net``'s own modules, removed afterwards."""
    frame = 0
    regions: dict[str, Tensor] = {}

    def next_frames(fusion: torch.nn.Module, inputs: tuple) -> None:
        nonlocal frame
        frames = slice(frame, frame + inputs[0].shape[0] // batch["lq"].shape[0])
        frame = frames.stop
        for name in ("mask", "distractor_mask"):
            regions[name] = batch[name][:, frames].flatten(0, 1).float()

    def replace_mask(film: AudioGuidedFiLM, inputs: tuple, output: tuple) -> tuple:
        visual, audio = inputs
        _, learned, space = output
        source, distractors = (
            F.interpolate(regions[name], size=learned.shape[-2:], mode="area") > 0.5
            for name in ("mask", "distractor_mask")
        )
        mask = setting(learned, distractors, ~(source | distractors))
        return film.modulate(visual, audio, mask), mask, space

    fusions = [m for m in net.modules() if isinstance(m, MSAVF)]
    films = [m for m in net.modules() if isinstance(m, AudioGuidedFiLM)]
    handles = [m.register_forward_pre_hook(next_frames) for m in fusions]
    handles += [m.register_forward_hook(replace_mask) for m in films]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def region_psnr(
    net: torch.nn.Module, batches: Sequence[dict], setting: MaskSetting | None = None
) -> dict[str, float]:
    """PSNR-Y (dB) inside the source and inside the distractors of ``net``'s outputs, with
    its masks replaced by ``setting`` (None: as learned)."""
    if not any(isinstance(m, AudioGuidedFiLM) for m in net.modules()):
        raise SystemExit("this diagnostic takes a model whose fusion has attention masks")
    regions = {name: REGION_METRICS[metric][0] for name, metric in
               (("source", "psnr_y_inside"), ("distractors", "psnr_y_distractors"))}
    metrics = {name: RegionPSNR(region="inside", test_y_channel=True) for name in regions}
    with torch.no_grad():
        for batch in batches:
            if setting is None:
                sr = net(batch["lq"], batch["audio"]).sr
            else:
                with masks_set(net, setting, batch):
                    sr = net(batch["lq"], batch["audio"]).sr
            for name, key in regions.items():
                metrics[name].update(sr.clamp(0, 1), batch["gt"], batch[key])
    return {name: metric.compute().item() for name, metric in metrics.items()}


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="an avvsr-train checkpoint with MS-AVF")
    parser.add_argument("--data", required=True, help="the synthetic set it was trained on")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the study's config")
    args = parser.parse_intermixed_args(argv)
    batches = single_threaded_test_batches(args.data, args.overrides)
    net = load_lit_module(args.checkpoint).net.eval()
    results = {name: region_psnr(net, batches, setting) for name, setting in MASK_SETTINGS.items()}
    print("masks | PSNR-Y in source | PSNR-Y in distractors")
    for name, scores in results.items():
        print(f"{name} | {scores['source']:.2f} | {scores['distractors']:.2f}")
    return results


if __name__ == "__main__":
    main()
