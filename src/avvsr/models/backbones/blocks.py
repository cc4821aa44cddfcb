"""Building blocks shared by the VSR backbones.

Residual blocks without batch norm, flow warping, the SPyNet optical-flow network, a modulated
deformable convolution, the pixel-shuffle reconstruction head, and the small helpers every
backbone needs (spatial padding, the fusion-point hook, recurrent propagation).

Flows are ``(N, 2, h, w)`` in pixels, channel 0 the horizontal (x) and channel 1 the vertical
(y) displacement; ``flow_warp(x, flow)`` samples ``x`` at ``p + flow(p)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

from avvsr.models.backbones.base import FeatureHook

LEAKY_SLOPE = 0.1
"""Negative slope of every leaky ReLU in the backbones."""


def leaky_relu(x: Tensor, inplace: bool = False) -> Tensor:
    return F.leaky_relu(x, LEAKY_SLOPE, inplace=inplace)


def leaky_relu_layer(inplace: bool = False) -> nn.LeakyReLU:
    """In place is safe after a convolution or pixel shuffle: their backward does not read
    their output, and the leaky ReLU's own backward needs only its output."""
    return nn.LeakyReLU(LEAKY_SLOPE, inplace=inplace)


def conv(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Conv2d:
    """Convolution with bias, padded to keep the size (halved with ``stride=2``).

    Kaiming-normal weights for a leaky ReLU (fan-in) and zero bias keep the signal's variance
    through chains of convs. PyTorch's default shrinks it about threefold per conv, and through
    EDVR's alignment chain that left tiny EDVR unable to learn in 300 steps (29.59 dB, bilinear
    29.63; 31.75 dB with this initialisation; tiny BasicVSR 32.01 -> 32.29 dB).
    """
    layer = nn.Conv2d(
        in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2
    )
    nn.init.kaiming_normal_(layer.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
    nn.init.zeros_(layer.bias)
    return layer


class ResidualBlockNoBN(nn.Module):
    """``x + conv(relu(conv(x)))`` on ``(N, C, h, w)``, no batch norm.

    Its convolutions start at a tenth of Kaiming-normal scale, so a deep stack starts close to
    the identity.
    """

    def __init__(self, num_feat: int) -> None:
        super().__init__()
        self.conv1 = conv(num_feat, num_feat)
        self.conv2 = conv(num_feat, num_feat)
        with torch.no_grad():
            self.conv1.weight.mul_(0.1)
            self.conv2.weight.mul_(0.1)

    def forward(self, x: Tensor) -> Tensor:
        # In place (same values): conv1's output and conv2's are read by no backward.
        return self.conv2(F.relu(self.conv1(x), inplace=True)).add_(x)


def make_layer(block_factory: Callable[[], nn.Module], num_blocks: int) -> nn.Sequential:
    """``num_blocks`` fresh blocks from ``block_factory`` in sequence."""
    return nn.Sequential(*(block_factory() for _ in range(num_blocks)))


class ConvResidualBlocks(nn.Sequential):
    """Conv 3x3 (in -> out channels), leaky ReLU, then ``num_blocks`` residual blocks.

    ``(N, in_channels, h, w) -> (N, out_channels, h, w)``.
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int) -> None:
        super().__init__(
            conv(in_channels, out_channels),
            leaky_relu_layer(),
            *make_layer(lambda: ResidualBlockNoBN(out_channels), num_blocks),
        )


def sampling_grid(sample_x: Tensor, sample_y: Tensor, height: int, width: int) -> Tensor:
    """Pixel coordinates (..., h', w') -> a ``grid_sample`` grid (..., h', w', 2).

    For ``align_corners=False``: pixel i is centred at (2i + 1) / size - 1, exact at any size.
    """
    return torch.stack(((2 * sample_x + 1) / width - 1, (2 * sample_y + 1) / height - 1), dim=-1)


def flow_warp(x: Tensor, flow: Tensor, padding_mode: str = "zeros") -> Tensor:
    """Warp ``x`` (N, C, h, w) by ``flow`` (N, 2, h, w): bilinear sample of x at p + flow(p)."""
    _, _, height, width = x.shape
    rows = torch.arange(height, device=x.device, dtype=flow.dtype).view(height, 1)
    cols = torch.arange(width, device=x.device, dtype=flow.dtype)
    grid = sampling_grid(cols + flow[:, 0], rows + flow[:, 1], height, width).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def resize_flow(flow: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``flow`` (N, 2, h, w) to ``size``, scaling the vectors to match."""
    height, width = flow.shape[-2:]
    resized = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
    ratio = flow.new_tensor([size[1] / width, size[0] / height]).view(1, 2, 1, 1)
    return resized * ratio


class SPyNet(nn.Module):
    """Spatial-pyramid optical flow (Ranjan & Black, CVPR 2017), trained with the backbone.

    ``spynet(ref, supp)`` with both ``(N, 3, h, w)`` in [0, 1] returns the flow ``(N, 2, h, w)``
    that warps ``supp`` onto ``ref``: ``flow_warp(supp, flow) ~ ref``. Any size works: frames
    are resized to a multiple of ``2 ** (num_levels - 1)`` (32 at the paper size) and the flow
    is resized and rescaled back.

    Args:
        num_levels: pyramid levels, one flow refinement network each (paper: 6).
        channels: hidden widths of each refinement network (paper: 32, 64, 32, 16).
        kernel_size: convolution size in the refinement networks (paper: 7).
        weights_path: optional local state dict of this module (a ``{"params": ...}`` wrapper
            is accepted); nothing is ever downloaded. Without it, each level's last conv starts
            at zero, so an untrained SPyNet gives zero flow until training moves it.
    """

    def __init__(
        self,
        num_levels: int = 6,
        channels: Sequence[int] = (32, 64, 32, 16),
        kernel_size: int = 7,
        weights_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.num_levels = num_levels
        widths = [8, *channels, 2]  # input: reference, warped support (RGB each) and flow
        self.refiners = nn.ModuleList()
        for _ in range(num_levels):
            layers: list[nn.Module] = []
            for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
                layers += [nn.Conv2d(width_in, width_out, kernel_size, padding=kernel_size // 2)]
                layers += [nn.ReLU()]
            refiner = nn.Sequential(*layers[:-1])  # no ReLU on the flow itself
            # Trained from scratch: start from zero flow (no warping) rather than random flow.
            nn.init.zeros_(refiner[-1].weight)
            nn.init.zeros_(refiner[-1].bias)
            self.refiners.append(refiner)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        if weights_path is not None:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            self.load_state_dict(state.get("params", state))

    def forward(self, ref: Tensor, supp: Tensor) -> Tensor:
        """``ref``, ``supp`` (N, 3, h, w) -> flow (N, 2, h, w) warping supp onto ref."""
        height, width = ref.shape[-2:]
        multiple = 2 ** (self.num_levels - 1)
        size = (math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple)
        ref_levels = [self._normalise(ref, size)]
        supp_levels = [self._normalise(supp, size)]
        for _ in range(self.num_levels - 1):
            ref_levels.append(F.avg_pool2d(ref_levels[-1], 2))
            supp_levels.append(F.avg_pool2d(supp_levels[-1], 2))
        coarsest = ref_levels[-1]
        flow = coarsest.new_zeros(coarsest.shape[0], 2, *coarsest.shape[-2:])
        for level, refiner in enumerate(self.refiners):
            pyramid_index = self.num_levels - 1 - level
            if level > 0:  # twice the size, twice the displacement
                flow = 2.0 * F.interpolate(
                    flow, scale_factor=2, mode="bilinear", align_corners=True
                )
            warped = flow_warp(supp_levels[pyramid_index], flow, padding_mode="border")
            flow = flow + refiner(torch.cat([ref_levels[pyramid_index], warped, flow], dim=1))
        return resize_flow(flow, (height, width))

    def _normalise(self, frames: Tensor, size: tuple[int, int]) -> Tensor:
        frames = (frames - self.mean) / self.std
        return F.interpolate(frames, size=size, mode="bilinear", align_corners=False)

    def neighbour_flows(self, frames: Tensor, group: int | None = None) -> tuple[Tensor, Tensor]:
        """Flows between neighbouring frames of ``frames`` (B, T, 3, h, w).

        Returns ``(backward, forward)``, each (B, T-1, 2, h, w): ``backward[:, i]`` warps frame
        i+1 onto frame i, ``forward[:, i]`` warps frame i onto frame i+1. With autograd off,
        ``group`` frame pairs at a time (None: all at once; see :func:`in_groups`).
        """
        batch, num_frames, channels, height, width = frames.shape
        if num_frames == 1:
            empty = frames.new_zeros(batch, 0, 2, height, width)
            return empty, empty
        earlier = frames[:, :-1].reshape(-1, channels, height, width)
        later = frames[:, 1:].reshape(-1, channels, height, width)
        pairs = [torch.cat([earlier, later]), torch.cat([later, earlier])]
        flows = in_groups(self, pairs, group or len(pairs[0]))
        backward, forward = flows.view(2, batch, num_frames - 1, 2, height, width).unbind(0)
        return backward, forward


def propagation_order(num_frames: int, flows: Tensor, reverse: bool) -> tuple[list[int], Tensor]:
    """The frame order of one recurrent branch and its flows in that order.

    ``flows`` is ``backward`` (with ``reverse=True``) or ``forward`` from
    :meth:`SPyNet.neighbour_flows`. Returns ``(frames, step_flows)``: the branch visits
    ``frames`` in order, and ``step_flows[:, k - 1]`` (B, 2, h, w) warps the features of
    step k-1 onto the frame of step k.
    """
    frames = list(range(num_frames))
    if reverse:
        return frames[::-1], flows.flip(1)
    return frames, flows


def recurrent_states(
    flows: Tensor, reverse: bool, initial: Tensor, update: Callable[[int, Tensor], Tensor]
) -> Iterator[tuple[int, Tensor]]:
    """One first-order recurrent branch over the T = ``flows.shape[1] + 1`` frames, computed
    as it is iterated.

    Visits the frames in time order (or reversed); at each, the state (B, C, h, w) is warped
    from the previously visited frame and ``update(frame, warped_state)`` gives the new state.
    ``initial`` is the state before the first frame. Yields ``(frame, state)`` in visiting
    order.
    """
    frames, step_flows = propagation_order(flows.shape[1] + 1, flows, reverse)
    state = initial
    for step, frame in enumerate(frames):
        if step > 0:
            state = flow_warp(state, step_flows[:, step - 1])
        state = update(frame, state)
        yield frame, state


def states_in_frame_order(states: Iterator[tuple[int, Tensor]]) -> list[Tensor]:
    """A whole branch of :func:`recurrent_states`: its states (B, C, h, w) as a list in frame
    order (not stacked: a stacked copy would hold every state twice)."""
    by_frame = dict(states)
    return [by_frame[frame] for frame in range(len(by_frame))]


class StatesOnDemand:
    """The states of a forward-in-time branch (:func:`recurrent_states` with
    ``reverse=False``), computed only as far as they are asked for and dropped once given.

    ``states_on_demand(frames)`` for consecutive slices in increasing order (as
    :func:`reconstruct_frames` asks for its groups) -> (B, T', C, h, w). Reconstructing each
    group as the branch reaches it, as the published BasicVSR does frame by frame, means that
    inference holds this branch's states for one group, not for the clip. The same states
    either way.
    """

    def __init__(self, states: Iterator[tuple[int, Tensor]]) -> None:
        self._states = states
        self._held: dict[int, Tensor] = {}
        self._next = 0  # the first frame not given yet

    def __call__(self, frames: slice) -> Tensor:
        if frames.start != self._next:
            raise ValueError(f"frames {frames} asked for after frames up to {self._next - 1}")
        while frames.stop - 1 not in self._held:
            frame, state = next(self._states)
            self._held[frame] = state
        self._next = frames.stop
        return torch.stack([self._held.pop(f) for f in range(frames.start, frames.stop)], dim=1)


class ModulatedDeformConv2d(nn.Module):
    """Modulated deformable convolution (DCNv2), stride 1, size-preserving padding.

    ``forward(x (N, in, h, w), offset (N, 2*G*k*k, h, w), mask (N, G*k*k, h, w))`` ->
    ``(N, out, h, w)`` with ``G = deformable_groups``; offsets are (dy, dx) pairs per group and
    kernel tap, masks in [0, 1]. The offsets and masks come from outside (the backbones predict
    them from alignment features), laid out as :meth:`split_offset_and_mask` reads them.

    On CUDA this is ``torchvision.ops.deform_conv2d``. Elsewhere the same function is computed
    by :func:`deform_conv2d_by_sampling`, because torchvision's CPU backward is several times
    slower than sampling with ``grid_sample`` and one matrix product.
    """

    def __init__(
        self, in_channels: int, out_channels: int, deformable_groups: int, kernel_size: int = 3
    ) -> None:
        super().__init__()
        if in_channels % deformable_groups:
            raise ValueError(f"{in_channels} channels do not split into {deformable_groups} groups")
        self.deformable_groups = deformable_groups
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        bound = 1.0 / math.sqrt(in_channels * kernel_size**2)
        nn.init.uniform_(self.weight, -bound, bound)

    @property
    def offset_mask_channels(self) -> int:
        """Channels of a raw prediction holding offsets then mask logits: ``3*G*k*k``."""
        return 3 * self.deformable_groups * self.kernel_size**2

    def split_offset_and_mask(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        """Raw prediction (N, 3*G*k*k, h, w) -> offsets (N, 2*G*k*k, ...), sigmoid masks."""
        offset, mask_logits = raw.split([2 * raw.shape[1] // 3, raw.shape[1] // 3], dim=1)
        return offset, torch.sigmoid(mask_logits)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        if x.device.type == "cuda":
            padding = self.kernel_size // 2
            return deform_conv2d(x, offset, self.weight, self.bias, padding=padding, mask=mask)

        def sample(x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
            return deform_conv2d_by_sampling(x, offset, self.weight, self.bias, mask)

        # Without autograd one sample at a time: the sampled taps are 9x the input's size.
        return in_groups(sample, [x, offset, mask], 1)


def deform_conv2d_by_sampling(
    x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor, mask: Tensor
) -> Tensor:
    """``torchvision.ops.deform_conv2d`` with stride 1 and size-preserving padding, written as
    bilinear sampling (zero outside the image) of every kernel tap, masking, and one matmul.

    ``x`` (N, C, h, w), ``offset`` (N, 2*G*k*k, h, w), ``weight`` (O, C, k, k), ``bias`` (O,),
    ``mask`` (N, G*k*k, h, w) -> (N, O, h, w).
    """
    batch, channels, height, width = x.shape
    out_channels, _, kernel_size, _ = weight.shape
    taps = kernel_size**2
    groups = mask.shape[1] // taps
    offset = offset.view(batch, groups, taps, 2, height, width)
    steps = torch.arange(kernel_size, device=x.device, dtype=offset.dtype) - kernel_size // 2
    tap_y = steps.repeat_interleave(kernel_size).view(taps, 1, 1)  # row-major taps
    tap_x = steps.repeat(kernel_size).view(taps, 1, 1)
    rows = torch.arange(height, device=x.device, dtype=offset.dtype).view(height, 1)
    cols = torch.arange(width, device=x.device, dtype=offset.dtype)
    sample_y = rows + tap_y + offset[:, :, :, 0]  # (N, G, taps, h, w)
    sample_x = cols + tap_x + offset[:, :, :, 1]
    grid = sampling_grid(sample_x, sample_y, height, width).to(x.dtype)
    sampled = F.grid_sample(  # (N*G, C/G, taps*h, w)
        x.reshape(batch * groups, channels // groups, height, width),
        grid.view(batch * groups, taps * height, width, 2),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    sampled = sampled.view(batch, groups, channels // groups, taps, height, width)
    mask = mask.view(batch, groups, 1, taps, height, width)
    # Without autograd, mask in place: the largest tensor here exists once, not twice.
    columns = sampled * mask if torch.is_grad_enabled() else sampled.mul_(mask)
    out = weight.reshape(out_channels, channels * taps) @ columns.view(batch, channels * taps, -1)
    return (out + bias.view(1, -1, 1)).view(batch, out_channels, height, width)


def upsampling_factors(scale: int) -> list[int]:
    """Pixel-shuffle stages giving ``scale``: x2 stages for powers of two, one x3 stage for 3."""
    if scale == 3:
        return [3]
    if scale >= 2 and scale & (scale - 1) == 0:
        return [2] * (scale.bit_length() - 1)
    raise ValueError(f"scale must be 3 or a power of two >= 2, got {scale}")


class PixelShuffleHead(nn.Module):
    """Reconstruction: features (N, C, h, w) and LR frames (N, 3, h, w) -> (N, 3, s*h, s*w).

    Conv + pixel-shuffle stages (C channels between stages, ``hr_channels`` after the last),
    a conv at HR, a conv to RGB, plus the bilinear-upsampled LR frame (the network learns the
    residual). At scale 4 with ``hr_channels=64`` this is the published BasicVSR/EDVR head.

    The conv to RGB starts at zero, so an untrained backbone outputs the bilinear upsampling
    instead of bilinear plus noise. Measured on the synthetic benchmark (tiny BasicVSR, 300
    steps, bilinear at 29.63 dB): 33.2 dB with this start, 29.5 dB with PyTorch's default.
    """

    def __init__(self, in_channels: int, scale: int, hr_channels: int = 64) -> None:
        super().__init__()
        self.scale = scale
        factors = upsampling_factors(scale)
        stages: list[nn.Module] = []
        channels = in_channels
        for index, factor in enumerate(factors):
            out_channels = hr_channels if index == len(factors) - 1 else in_channels
            stages += [conv(channels, out_channels * factor**2), nn.PixelShuffle(factor)]
            stages += [leaky_relu_layer(inplace=True)]  # at HR: one tensor fewer
            channels = out_channels
        self.upsample = nn.Sequential(*stages)
        self.conv_hr = conv(hr_channels, hr_channels)
        self.conv_last = conv(hr_channels, 3)
        nn.init.zeros_(self.conv_last.weight)
        nn.init.zeros_(self.conv_last.bias)

    def forward(self, feat: Tensor, lq: Tensor) -> Tensor:
        hr = leaky_relu(self.conv_hr(self.upsample(feat)), inplace=True)
        base = F.interpolate(lq, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return self.conv_last(hr) + base


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Replicate-pad the bottom and right of ``x`` (N, C, h, w) to multiples of ``multiple``."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


def apply_feature_hook(feat: Tensor, frames: slice, feature_hook: FeatureHook | None) -> Tensor:
    """Pass fusion-point features (B, T', C, h, w) of the clip's ``frames`` through the hook,
    checking it keeps the shape."""
    if feature_hook is None:
        return feat
    hooked = feature_hook(feat, frames)
    if hooked.shape != feat.shape:
        raise ValueError(
            f"feature_hook changed the shape {tuple(feat.shape)} to {tuple(hooked.shape)}"
        )
    return hooked


def in_groups(function: Callable[..., Any], inputs: Sequence[Tensor], group: int) -> Any:
    """``function(*inputs)`` for a ``function`` that maps the samples of its inputs (N, ...)
    independently and returns a tensor or a list of tensors (N, ...).

    While autograd records, one call; else one call per :func:`frame_groups` group of
    ``group`` samples, the results joined along N, so the function's intermediates exist for
    one group at a time. The same values either way.
    """
    parts = frame_groups(inputs[0].shape[0], group)
    if len(parts) == 1:
        return function(*inputs)
    results = [function(*(x[part] for x in inputs)) for part in parts]
    if isinstance(results[0], Tensor):
        return torch.cat(results)
    return [torch.cat(per_output) for per_output in zip(*results, strict=True)]


def frame_groups(num_frames: int, group: int) -> list[slice]:
    """Frames (or samples) 0 .. ``num_frames - 1`` as one slice while autograd records
    (training), else as consecutive slices of ``group`` (the last may be shorter), in order."""
    if torch.is_grad_enabled():
        return [slice(0, num_frames)]
    return [slice(start, min(start + group, num_frames)) for start in range(0, num_frames, group)]


def joined_along_frames(parts: list[slice], compute: Callable[[slice], Tensor]) -> Tensor:
    """``compute(part)`` (B, T', ...) for each of the consecutive ``parts`` (slices of one
    frame axis), joined along dim 1. One part is returned as it is; several are written into
    one tensor allocated once, so the parts' results and their joined copy never coexist."""
    if len(parts) == 1:
        return compute(parts[0])
    out: Tensor | None = None
    for part in parts:
        result = compute(part)
        if out is None:
            out = result.new_empty(result.shape[0], parts[-1].stop, *result.shape[2:])
        out[:, part] = result
    return out


def reconstruct_frames(
    features: Callable[[slice], Tensor],
    lq: Tensor,
    feature_hook: FeatureHook | None,
    reconstruct: Callable[[Tensor, Tensor], Tensor],
    group: int,
) -> Tensor:
    """Fusion-point features, fusion hook and reconstruction of a clip, group by group.

    ``lq`` (B, T, 3, h, w) -> (B, T, 3, s*h, s*w). ``features(frames)`` gives the fusion-point
    features (B, T', C, h, w) of the clip's ``frames`` (a slice), and
    ``reconstruct(feat (N, C, h, w), lq (N, 3, h, w))`` maps hooked features to output frames;
    both must treat frames independently. The groups are :func:`frame_groups`: all frames at
    once while autograd records, so training keeps one graph; else ``group`` frames at a time,
    so the intermediates of only one group exist at once and inference memory does not grow
    with T. Every frame is computed by the same functions either way (equal in float64).
    """
    batch, num_frames = lq.shape[:2]

    def reconstructed(frames: slice) -> Tensor:
        hooked = apply_feature_hook(features(frames), frames, feature_hook)
        sr = reconstruct(hooked.flatten(0, 1), lq[:, frames].flatten(0, 1))
        return sr.unflatten(0, (batch, -1))

    return joined_along_frames(frame_groups(num_frames, group), reconstructed)
