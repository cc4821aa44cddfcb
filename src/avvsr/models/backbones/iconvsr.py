"""IconVSR (Chan et al., CVPR 2021): BasicVSR with information refill and coupled propagation.

At keyframes (every ``keyframe_stride`` frames, and the last), EDVR's window fusion (PCD + TSA,
:class:`~avvsr.models.backbones.edvr.WindowFusion`) computes a feature from the frame's window;
both recurrent branches mix it into their state there (information refill). The forward branch
also takes the backward branch's feature of the same frame (coupled propagation); its output
is the per-frame feature that is reconstructed, and so the fusion point.

Reconstruction runs over all frames at once in training and, at inference, in groups of
frames as the forward branch reaches them (same computation, see
:func:`~avvsr.models.backbones.blocks.reconstruct_frames` and
:class:`~avvsr.models.backbones.blocks.StatesOnDemand`). The ``clip_ends`` option
(:data:`~avvsr.models.backbones.edvr.CLIP_ENDS`) chooses how keyframe windows are completed at
the clip ends and how sizes not divisible by 4 are padded:

- ``"mirror"`` (the configs' default): windows mirrored about the end frame like EDVR's
  (frame 0: ``[2, 1, 0, 1, 2]``); only the keyframe fusion sees replicate-padded frames.
- ``"basicsr"``: as BasicSR's and mmagic's IconVSR, so their weights give their outputs: the
  clip is extended once at each end (:func:`keyframe_windows`; frame 0: ``[4, 3, 0, 1, 2]``)
  and the whole network runs on frames reflect-padded at the bottom and right to a multiple
  of 4, the output cropped back. The hook then sees the LR-size crop of the padded features;
  the padding margin (under 4 px) is reconstructed from unfused features.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avvsr.models.backbones.base import FeatureHook, VSRBackbone
from avvsr.models.backbones.blocks import (
    ConvResidualBlocks,
    PixelShuffleHead,
    SPyNet,
    StatesOnDemand,
    apply_feature_hook,
    conv,
    reconstruct_frames,
    recurrent_states,
    states_in_frame_order,
)
from avvsr.models.backbones.edvr import (
    WindowFusion,
    check_clip_ends,
    mirror_fold,
    window_indices,
)

PAD_MULTIPLE = 4
"""The keyframe fusion's pyramid needs LR sizes divisible by this."""


def keyframe_windows(
    num_frames: int, window: int, keyframes: list[int], clip_ends: str = "mirror"
) -> Tensor:
    """Frame indices (K, window) of the keyframes' windows; the centre column is the keyframe.

    ``"mirror"``: EDVR's windows (:func:`~avvsr.models.backbones.edvr.window_indices`).
    ``"basicsr"``: BasicSR's ``IconVSR.get_keyframe_feature``: the clip is extended by
    ``r = window // 2`` frames at each end, frames ``2r .. r+1`` before frame 0 and frames
    ``T-r-2 .. T-2r-1`` after frame T-1 (for r = 2: ``x[:, [4, 3]]`` and ``x[:, [-4, -5]]``),
    and each window is cut from that extended clip. Indices still outside the clip (clips
    shorter than ``2r + 1`` frames, where BasicSR fails) are folded by mirroring.
    """
    check_clip_ends(clip_ends)
    if clip_ends == "mirror":
        return window_indices(num_frames, window, "mirror")[keyframes]
    radius = window // 2
    last = num_frames - 1
    indices = torch.tensor(keyframes)[:, None] + torch.arange(-radius, radius + 1)[None, :]
    indices = torch.where(indices < 0, radius - indices, indices)
    indices = torch.where(indices > last, 2 * last - radius - indices, indices)
    return mirror_fold(indices, num_frames)


def reflect_pad_to_multiple(lq: Tensor, multiple: int) -> Tensor:
    """Reflect-pad ``lq`` (B, T, C, h, w) at the bottom and right to multiples of ``multiple``
    (BasicSR's ``IconVSR.pad_spatial``); replicate where a side is too small to reflect."""
    height, width = lq.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return lq
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    padded = F.pad(lq.flatten(0, 1), (0, pad_w, 0, pad_h), mode=mode)
    return padded.unflatten(0, lq.shape[:2])


def hook_on_crop(hook: FeatureHook | None, height: int, width: int) -> FeatureHook | None:
    """A hook that applies ``hook`` to the top-left ``height x width`` crop of the features
    (B, T', C, h', w') of padded frames and puts the hooked crop back (the rest is kept)."""
    if hook is None:
        return None

    def cropped(feat: Tensor, frames: slice) -> Tensor:
        if feat.shape[-2:] == (height, width):
            return hook(feat, frames)
        hooked = apply_feature_hook(feat[..., :height, :width], frames, hook)
        right = feat[..., :height, width:]
        return torch.cat([torch.cat([hooked, right], dim=-1), feat[..., height:, :]], dim=-2)

    return cropped


class IconVSR(VSRBackbone):
    """IconVSR; paper size (defaults, scale 4) has 8.7M parameters.

    Args:
        num_feat: channels of the propagated features (= ``fusion_channels``).
        num_blocks: residual blocks in each propagation branch.
        keyframe_stride: frames between keyframes (the last frame is always one).
        num_frames: window length (odd) of the keyframe fusion.
        deformable_groups: groups of the keyframe fusion's deformable convs.
        num_extract_blocks: residual blocks of the keyframe fusion's feature extractor.
        scale: upsampling factor (2, 3, 4, 8, ...).
        hr_channels: channels of the last pixel-shuffle stage and the HR conv (paper: 64).
        spynet: keyword arguments of :class:`~avvsr.models.backbones.blocks.SPyNet`
            (None: the paper-size SPyNet).
        clip_ends: ``"mirror"`` or ``"basicsr"`` (module docstring); published IconVSR
            weights expect ``"basicsr"``.
    """

    def __init__(
        self,
        num_feat: int = 64,
        num_blocks: int = 30,
        keyframe_stride: int = 5,
        num_frames: int = 5,
        deformable_groups: int = 8,
        num_extract_blocks: int = 5,
        scale: int = 4,
        hr_channels: int = 64,
        spynet: Mapping[str, Any] | None = None,
        clip_ends: str = "mirror",
    ) -> None:
        super().__init__()
        self.scale = scale
        self.fusion_channels = num_feat
        self.keyframe_stride = keyframe_stride
        self.clip_ends = check_clip_ends(clip_ends)
        self.spynet = SPyNet(**(spynet or {}))
        self.keyframe_fusion = WindowFusion(
            num_feat, num_frames, deformable_groups, num_extract_blocks
        )
        self.backward_refill = conv(2 * num_feat, num_feat)
        self.forward_refill = conv(2 * num_feat, num_feat)
        self.backward_trunk = ConvResidualBlocks(num_feat + 3, num_feat, num_blocks)
        self.forward_trunk = ConvResidualBlocks(2 * num_feat + 3, num_feat, num_blocks)
        self.head = PixelShuffleHead(num_feat, scale, hr_channels)

    def flow_parameters(self) -> Iterator[nn.Parameter]:
        return self.spynet.parameters()

    def keyframes(self, num_frames: int) -> list[int]:
        """Every ``keyframe_stride``-th frame from the first, and the last frame."""
        return sorted({*range(0, num_frames, self.keyframe_stride), num_frames - 1})

    def forward(self, lq: Tensor, feature_hook: FeatureHook | None = None) -> Tensor:
        """``lq`` (B, T, 3, h, w) -> (B, T, 3, s*h, s*w); hook on groups (B, T', num_feat, h, w)."""
        batch, num_frames, _, lr_height, lr_width = lq.shape
        if self.clip_ends == "basicsr":
            lq = reflect_pad_to_multiple(lq, PAD_MULTIPLE)
        height, width = lq.shape[-2:]
        keyframes = self.keyframes(num_frames)
        windows = keyframe_windows(
            num_frames, self.keyframe_fusion.num_frames, keyframes, self.clip_ends
        )
        refill_feats = self.keyframe_fusion(lq, windows, self.inference_group).unbind(1)
        refill = dict(zip(keyframes, refill_feats, strict=True))
        backward_flows, forward_flows = self.spynet.neighbour_flows(lq, self.inference_group)
        initial = lq.new_zeros(batch, self.fusion_channels, height, width)

        def refilled(frame: int, state: Tensor, mix: nn.Module) -> Tensor:
            if frame not in refill:
                return state
            return mix(torch.cat([state, refill[frame]], dim=1))

        def backward_update(frame: int, state: Tensor) -> Tensor:
            state = refilled(frame, state, self.backward_refill)
            return self.backward_trunk(torch.cat([lq[:, frame], state], dim=1))

        backward = states_in_frame_order(
            recurrent_states(backward_flows, True, initial, backward_update)
        )

        def forward_update(frame: int, state: Tensor) -> Tensor:
            state = refilled(frame, state, self.forward_refill)
            inputs = [lq[:, frame], backward[frame], state]
            return self.forward_trunk(torch.cat(inputs, dim=1))

        feat = StatesOnDemand(recurrent_states(forward_flows, False, initial, forward_update))
        hook = hook_on_crop(feature_hook, lr_height, lr_width)
        sr = reconstruct_frames(feat, lq, hook, self.head, self.inference_group)
        return sr[..., : self.scale * lr_height, : self.scale * lr_width]
