"""BasicVSR (Chan et al., CVPR 2021): bidirectional recurrent propagation with flow alignment.

Each branch (backward in time, then forward) carries a feature map from frame to frame: warp
it onto the current frame with SPyNet flow, concatenate the frame, refine with residual blocks.
The two branches are fused per frame by a 1x1 conv; that fused feature is the fusion point.
Reconstruction runs over all frames at once in training and, at inference, in groups of
frames as the forward branch reaches them (same computation, see
:func:`~avvsr.models.backbones.blocks.reconstruct_frames` and
:class:`~avvsr.models.backbones.blocks.StatesOnDemand`), so inference holds the backward
branch's features of every frame, as the published code does, and the forward branch's of one
group.
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
    StatesOnDemand,
    conv,
    leaky_relu,
    reconstruct_frames,
    recurrent_states,
    states_in_frame_order,
)


class BasicVSR(VSRBackbone):
    """BasicVSR; paper size (``num_feat=64, num_blocks=30``, scale 4) has 6.3M parameters.

    Args:
        num_feat: channels of the propagated features (= ``fusion_channels``).
        num_blocks: residual blocks in each propagation branch.
        scale: upsampling factor (2, 3, 4, 8, ...).
        hr_channels: channels of the last pixel-shuffle stage and the HR conv (paper: 64).
        spynet: keyword arguments of :class:`~avvsr.models.backbones.blocks.SPyNet`
            (None: the paper-size SPyNet).
    """

    def __init__(
        self,
        num_feat: int = 64,
        num_blocks: int = 30,
        scale: int = 4,
        hr_channels: int = 64,
        spynet: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.fusion_channels = num_feat
        self.spynet = SPyNet(**(spynet or {}))
        self.backward_trunk = ConvResidualBlocks(num_feat + 3, num_feat, num_blocks)
        self.forward_trunk = ConvResidualBlocks(num_feat + 3, num_feat, num_blocks)
        self.fusion = conv(2 * num_feat, num_feat, 1)
        self.head = PixelShuffleHead(num_feat, scale, hr_channels)

    def flow_parameters(self) -> Iterator[nn.Parameter]:
        return self.spynet.parameters()

    def forward(self, lq: Tensor, feature_hook: FeatureHook | None = None) -> Tensor:
        """``lq`` (B, T, 3, h, w) -> (B, T, 3, s*h, s*w); hook on groups (B, T', num_feat, h, w)."""
        batch = lq.shape[0]
        backward_flows, forward_flows = self.spynet.neighbour_flows(lq, self.inference_group)
        backward = states_in_frame_order(
            self._states(lq, backward_flows, self.backward_trunk, reverse=True)
        )
        forward = StatesOnDemand(self._states(lq, forward_flows, self.forward_trunk, reverse=False))

        def features(frames: slice) -> Tensor:  # (B, T', C, h, w)
            both = torch.cat([torch.stack(backward[frames], dim=1), forward(frames)], dim=2)
            return leaky_relu(self.fusion(both.flatten(0, 1))).unflatten(0, (batch, -1))

        return reconstruct_frames(features, lq, feature_hook, self.head, self.inference_group)

    def _states(
        self, lq: Tensor, flows: Tensor, trunk: nn.Module, reverse: bool
    ) -> Iterator[tuple[int, Tensor]]:
        """One branch's :func:`recurrent_states` over ``lq`` (B, T, 3, h, w)."""
        batch, _, _, height, width = lq.shape
        initial = lq.new_zeros(batch, self.fusion_channels, height, width)

        def update(frame: int, state: Tensor) -> Tensor:
            return trunk(torch.cat([lq[:, frame], state], dim=1))

        return recurrent_states(flows, reverse, initial, update)
