"""IconVSR (Chan et al., CVPR 2021): BasicVSR with information refill and coupled propagation.

At keyframes (every ``keyframe_stride`` frames, and the last), EDVR's window fusion (PCD + TSA,
:class:`~avvsr.models.backbones.edvr.WindowFusion`) computes a feature from the frame's window;
both recurrent branches mix it into their state there (information refill). The forward branch
also takes the backward branch's feature of the same frame (coupled propagation); its output
is the per-frame feature that is reconstructed, and so the fusion point.

Unlike the published code, keyframe windows are reflected at the clip ends like EDVR's, and
reconstruction runs after both branches, over all frames at once in training and in groups of
frames at inference (same computation, see
:func:`~avvsr.models.backbones.blocks.reconstruct_frames`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from avvsr.models.backbones.base import FeatureHook, VSRBackbone
from avvsr.models.backbones.blocks import (
    ConvResidualBlocks,
    PixelShuffleHead,
    SPyNet,
    conv,
    reconstruct_frames,
    recurrent_branch,
)
from avvsr.models.backbones.edvr import WindowFusion


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
    ) -> None:
        super().__init__()
        self.scale = scale
        self.fusion_channels = num_feat
        self.keyframe_stride = keyframe_stride
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
        batch, num_frames, _, height, width = lq.shape
        keyframes = self.keyframes(num_frames)
        refill_feats = self.keyframe_fusion(lq, keyframes, self.inference_group).unbind(1)
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

        backward = recurrent_branch(backward_flows, True, initial, backward_update)

        def forward_update(frame: int, state: Tensor) -> Tensor:
            state = refilled(frame, state, self.forward_refill)
            inputs = [lq[:, frame], backward[:, frame], state]
            return self.forward_trunk(torch.cat(inputs, dim=1))

        feat = recurrent_branch(forward_flows, False, initial, forward_update)
        return reconstruct_frames(
            lambda frames: feat[:, frames], lq, feature_hook, self.head, self.inference_group
        )
