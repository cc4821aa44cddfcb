"""BasicVSR++ (Chan et al., CVPR 2022): second-order grid propagation, flow-guided deformable
alignment.

Four recurrent branches run in turn (backward, forward, backward, forward); each sees the
per-frame features of all earlier branches. Before refining, a branch aligns its previous two
states onto the current frame with a modulated deformable conv whose offsets are the SPyNet flow
plus a learned residual bounded by ``max_residue_magnitude``. Per frame, the spatial features
and the four branches are reconstructed by residual blocks; that reconstructed feature, just
before upsampling, is the fusion point.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from avvsr.models.backbones.base import FeatureHook, VSRBackbone
from avvsr.models.backbones.blocks import (
    ConvResidualBlocks,
    ModulatedDeformConv2d,
    PixelShuffleHead,
    SPyNet,
    conv,
    flow_warp,
    in_groups,
    leaky_relu_layer,
    propagation_order,
    reconstruct_frames,
)

BRANCHES = ("backward_1", "forward_1", "backward_2", "forward_2")


class SecondOrderDeformableAlignment(nn.Module):
    """Flow-guided deformable alignment of the two previous states onto the current frame.

    ``forward(states (N, 2C, h, w), condition (N, 3C, h, w), flow_1, flow_2 (N, 2, h, w))``
    -> ``(N, C, h, w)``. ``states`` are the previous and second-previous states (unwarped);
    ``condition`` is [state warped by flow_1, current frame features, second state warped by
    flow_2]. The first half of the deformable groups samples the previous state around
    ``flow_1``, the second half the second-previous one around ``flow_2``.
    """

    def __init__(self, channels: int, deformable_groups: int, max_residue_magnitude: float) -> None:
        super().__init__()
        if deformable_groups % 2:
            raise ValueError(f"deformable_groups must be even, got {deformable_groups}")
        self.max_residue_magnitude = max_residue_magnitude
        self.deform = ModulatedDeformConv2d(2 * channels, channels, deformable_groups)
        self.offset_net = nn.Sequential(
            conv(3 * channels + 4, channels),
            leaky_relu_layer(),
            conv(channels, channels),
            leaky_relu_layer(),
            conv(channels, channels),
            leaky_relu_layer(),
            conv(channels, self.deform.offset_mask_channels),
        )
        last = self.offset_net[-1]
        nn.init.zeros_(last.weight)  # start from the flow itself, all taps at half weight
        nn.init.zeros_(last.bias)

    def forward(self, states: Tensor, condition: Tensor, flow_1: Tensor, flow_2: Tensor) -> Tensor:
        raw = self.offset_net(torch.cat([condition, flow_1, flow_2], dim=1))
        residue, mask = self.deform.split_offset_and_mask(raw)
        residue = self.max_residue_magnitude * torch.tanh(residue)
        residue_1, residue_2 = residue.chunk(2, dim=1)
        taps_per_state = residue_1.shape[1] // 2  # (dy, dx) per tap and group
        offset_1 = residue_1 + flow_1.flip(1).repeat(1, taps_per_state, 1, 1)
        offset_2 = residue_2 + flow_2.flip(1).repeat(1, taps_per_state, 1, 1)
        return self.deform(states, torch.cat([offset_1, offset_2], dim=1), mask)


class BasicVSRPlusPlus(VSRBackbone):
    """BasicVSR++; paper size (``num_feat=64, num_blocks=7``, scale 4) has 7.3M parameters.

    Args:
        num_feat: channels of all LR features (= ``fusion_channels``).
        num_blocks: residual blocks in each of the four propagation branches.
        num_extract_blocks: residual blocks of the per-frame feature extractor (paper: 5).
        num_reconstruct_blocks: residual blocks of the per-frame reconstruction (paper: 5).
        deformable_groups: groups of the alignment's deformable conv (paper: 16; even, and
            dividing ``2 * num_feat``).
        max_residue_magnitude: bound on the learned offset residue over the flow, in pixels.
        scale: upsampling factor (2, 3, 4, 8, ...).
        hr_channels: channels of the last pixel-shuffle stage and the HR conv (paper: 64).
        spynet: keyword arguments of :class:`~avvsr.models.backbones.blocks.SPyNet`
            (None: the paper-size SPyNet).
    """

    def __init__(
        self,
        num_feat: int = 64,
        num_blocks: int = 7,
        num_extract_blocks: int = 5,
        num_reconstruct_blocks: int = 5,
        deformable_groups: int = 16,
        max_residue_magnitude: float = 10.0,
        scale: int = 4,
        hr_channels: int = 64,
        spynet: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.fusion_channels = num_feat
        self.spynet = SPyNet(**(spynet or {}))
        self.feat_extract = ConvResidualBlocks(3, num_feat, num_extract_blocks)
        self.align = nn.ModuleDict()
        self.trunks = nn.ModuleDict()
        for index, name in enumerate(BRANCHES):
            self.align[name] = SecondOrderDeformableAlignment(
                num_feat, deformable_groups, max_residue_magnitude
            )
            # input: spatial features, the earlier branches, the aligned state
            self.trunks[name] = ConvResidualBlocks((index + 2) * num_feat, num_feat, num_blocks)
        self.reconstruction = ConvResidualBlocks(
            (len(BRANCHES) + 1) * num_feat, num_feat, num_reconstruct_blocks
        )
        self.head = PixelShuffleHead(num_feat, scale, hr_channels)

    def flow_parameters(self) -> Iterator[nn.Parameter]:
        return self.spynet.parameters()

    def forward(self, lq: Tensor, feature_hook: FeatureHook | None = None) -> Tensor:
        """``lq`` (B, T, 3, h, w) -> (B, T, 3, s*h, s*w); hook on groups (B, T', num_feat, h, w)."""
        batch, num_frames = lq.shape[:2]
        frames = lq.flatten(0, 1)
        spatial = in_groups(self.feat_extract, [frames], self.inference_group)
        spatial = spatial.unflatten(0, (batch, num_frames))
        backward_flows, forward_flows = self.spynet.neighbour_flows(lq, self.inference_group)
        branches: list[Tensor] = [spatial]  # each (B, T, C, h, w)
        for name in BRANCHES:
            reverse = name.startswith("backward")
            flows = backward_flows if reverse else forward_flows
            branches.append(self._propagate(branches, flows, name, reverse))

        def features(frames: slice) -> Tensor:  # (B, T', C, h, w)
            stacked = torch.cat([branch[:, frames] for branch in branches], dim=2)
            return self.reconstruction(stacked.flatten(0, 1)).unflatten(0, (batch, -1))

        return reconstruct_frames(features, lq, feature_hook, self.head, self.inference_group)

    def _propagate(self, earlier: list[Tensor], flows: Tensor, name: str, reverse: bool) -> Tensor:
        """One branch over the features of the ``earlier`` branches -> (B, T, C, h, w)."""
        spatial = earlier[0]
        num_frames = spatial.shape[1]
        frames, step_flows = propagation_order(num_frames, flows, reverse)
        state = torch.zeros_like(spatial[:, 0])
        states: list[Tensor] = []  # in visiting order
        outputs: list[Tensor] = [state] * num_frames
        for step, frame in enumerate(frames):
            current = spatial[:, frame]
            if step > 0:
                state = self._align(name, states, current, step_flows, step)
            inputs = [branch[:, frame] for branch in earlier] + [state]
            state = state + self.trunks[name](torch.cat(inputs, dim=1))
            states.append(state)
            outputs[frame] = state
        return torch.stack(outputs, dim=1)

    def _align(
        self, name: str, states: list[Tensor], current: Tensor, step_flows: Tensor, step: int
    ) -> Tensor:
        """Align the last two ``states`` onto the frame of ``step`` -> (B, C, h, w)."""
        previous = states[-1]
        flow_1 = step_flows[:, step - 1]
        warped_1 = flow_warp(previous, flow_1)
        if step > 1:  # second order: compose the flow across two steps
            second = states[-2]
            flow_2 = flow_1 + flow_warp(step_flows[:, step - 2], flow_1)
            warped_2 = flow_warp(second, flow_2)
        else:
            second, flow_2, warped_2 = (torch.zeros_like(x) for x in (previous, flow_1, warped_1))
        condition = torch.cat([warped_1, current, warped_2], dim=1)
        return self.align[name](torch.cat([previous, second], dim=1), condition, flow_1, flow_2)
