"""EDVR (Wang et al., CVPRW 2019): PCD alignment and TSA fusion over a sliding window.

EDVR restores one centre frame from a window of ``num_frames`` neighbours. To return every
frame, each frame t gets the window ``t - r .. t + r`` (``r = num_frames // 2``); how indices
past the clip ends are filled is the ``clip_ends`` option (:data:`CLIP_ENDS`,
:func:`window_indices`). Per-frame pyramid features are computed once per frame and
gathered into the windows, which run as one batch (in training) or a group of frames' windows
at a time (at inference, with the reconstruction of each group, see
:func:`~avvsr.models.backbones.blocks.reconstruct_frames`; a frame's features are then held
only while a window still needs them, :class:`FramePyramids`). The window's neighbours are
aligned to its centre by PCD (pyramid, cascading, deformable) and fused by TSA (temporal and
spatial attention); the fused centre-frame feature is the fusion point, followed by the
reconstruction trunk and the pixel-shuffle head.

The 3-level pyramid needs sizes divisible by 4: frames are replicate-padded at the bottom and
right for PCD and TSA, and the fused features are cropped back to the LR size before the hook
and the reconstruction.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avvsr.models.backbones.base import FeatureHook, VSRBackbone
from avvsr.models.backbones.blocks import (
    ConvResidualBlocks,
    ModulatedDeformConv2d,
    PixelShuffleHead,
    ResidualBlockNoBN,
    conv,
    frame_groups,
    joined_along_frames,
    leaky_relu,
    leaky_relu_layer,
    make_layer,
    pad_to_multiple,
    reconstruct_frames,
)

NUM_LEVELS = 3
"""Pyramid levels of PCD alignment: full, half and quarter LR size."""


CLIP_ENDS = ("mirror", "basicsr")
"""Values of the ``clip_ends`` option of the window-based backbones (EDVR, IconVSR's keyframes).

``"mirror"`` (the default of every config): an index past an end is mirrored about the end
frame, so frame 0's 5-frame window is ``[2, 1, 0, 1, 2]``. ``"basicsr"``: what BasicSR and
mmagic do, so their published weights reproduce their outputs; frame 0's window is
``[4, 3, 0, 1, 2]``. For EDVR that is BasicSR's ``reflection_circle`` test padding (see
:func:`window_indices`); for IconVSR, see :func:`avvsr.models.backbones.iconvsr.keyframe_windows`.
"""


def check_clip_ends(clip_ends: str) -> str:
    """``clip_ends`` itself if it is one of :data:`CLIP_ENDS`, else a ``ValueError``."""
    if clip_ends not in CLIP_ENDS:
        raise ValueError(f"clip_ends must be one of {CLIP_ENDS}, got {clip_ends!r}")
    return clip_ends


def mirror_fold(indices: Tensor, num_frames: int) -> Tensor:
    """Fold frame indices (any shape) into ``0 .. T-1`` by mirroring about the end frames,
    repeatedly (-1 is frame 1, T is frame T-2)."""
    if num_frames == 1:
        return torch.zeros_like(indices)
    period = 2 * (num_frames - 1)
    indices = indices.remainder(period)
    return torch.where(indices >= num_frames, period - indices, indices)


def window_indices(num_frames: int, window: int, clip_ends: str = "mirror") -> Tensor:
    """Frame indices (T, window) of every frame's window; the centre column is the frame.

    Row t is ``t - r .. t + r`` with ``r = window // 2``. An index i past an end is filled by
    ``clip_ends``:

    - ``"mirror"``: mirrored about the end frame (i = -1 is frame 1).
    - ``"basicsr"``: BasicSR's ``reflection_circle`` (``generate_frame_indices`` in
      ``basicsr/data/data_util.py``, the padding of its EDVR test configs): the window is
      completed with the frames just past its *other* end, in reverse order; i < 0 is frame
      ``t + r - i`` and i > T-1 is frame ``t - r - (i - (T - 1))``.

    Indices still outside the clip (clips shorter than the window) are folded by mirroring.
    """
    check_clip_ends(clip_ends)
    radius = window // 2
    centres = torch.arange(num_frames)[:, None]
    indices = centres + torch.arange(-radius, radius + 1)[None, :]
    if clip_ends == "basicsr":
        last = num_frames - 1
        indices = torch.where(indices < 0, centres + radius - indices, indices)
        indices = torch.where(indices > last, centres - radius - (indices - last), indices)
    return mirror_fold(indices, num_frames)


def upsample2x(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class FeatureGuidedDeformConv(nn.Module):
    """Modulated deformable conv whose offsets and masks come from separate offset features.

    ``forward(x (N, C, h, w), offset_feat (N, C, h, w)) -> (N, C, h, w)``. The offset conv
    starts at zero: no displacement, every tap at half weight.
    """

    def __init__(self, num_feat: int, deformable_groups: int) -> None:
        super().__init__()
        self.deform = ModulatedDeformConv2d(num_feat, num_feat, deformable_groups)
        self.conv_offset = conv(num_feat, self.deform.offset_mask_channels)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: Tensor, offset_feat: Tensor) -> Tensor:
        offset, mask = self.deform.split_offset_and_mask(self.conv_offset(offset_feat))
        return self.deform(x, offset, mask)


class PCDAlignment(nn.Module):
    """Pyramid, cascading and deformable alignment of neighbour features to reference features.

    ``forward(neighbour, reference)``: two pyramids, lists of (N, C, h / 2**l, w / 2**l) from
    the finest level l = 0 -> aligned neighbour features (N, C, h, w). Coarse to fine, each level
    predicts offset features from (neighbour, reference) and the upsampled coarser offsets,
    aligns with a deformable conv and merges the upsampled coarser result; a last cascading
    deformable conv refines the finest result against the reference.
    """

    def __init__(self, num_feat: int, deformable_groups: int, num_levels: int = NUM_LEVELS) -> None:
        super().__init__()
        # index 0 is the coarsest level
        self.offset_in = nn.ModuleList()
        self.offset_refine = nn.ModuleList()
        self.deform = nn.ModuleList()
        self.merge = nn.ModuleList()  # coarser levels have nothing to merge
        for level in range(num_levels):
            coarsest = level == 0
            self.offset_in.append(nn.Sequential(conv(2 * num_feat, num_feat), leaky_relu_layer()))
            if coarsest:
                refine = [conv(num_feat, num_feat), leaky_relu_layer()]
            else:  # also takes the upsampled offsets of the coarser level
                refine = [conv(2 * num_feat, num_feat), leaky_relu_layer()]
                refine += [conv(num_feat, num_feat), leaky_relu_layer()]
                self.merge.append(conv(2 * num_feat, num_feat))
            self.offset_refine.append(nn.Sequential(*refine))
            self.deform.append(FeatureGuidedDeformConv(num_feat, deformable_groups))
        self.cascade_offset = nn.Sequential(
            conv(2 * num_feat, num_feat),
            leaky_relu_layer(),
            conv(num_feat, num_feat),
            leaky_relu_layer(),
        )
        self.cascade_deform = FeatureGuidedDeformConv(num_feat, deformable_groups)

    def forward(self, neighbour: list[Tensor], reference: list[Tensor]) -> Tensor:
        coarse_to_fine = list(zip(neighbour[::-1], reference[::-1], strict=True))
        offset_feat, aligned = None, None
        for level, (nbr, ref) in enumerate(coarse_to_fine):
            level_offset = self.offset_in[level](torch.cat([nbr, ref], dim=1))
            if offset_feat is not None:  # offsets double with the size
                level_offset = torch.cat([level_offset, 2 * upsample2x(offset_feat)], dim=1)
            offset_feat = self.offset_refine[level](level_offset)
            level_aligned = self.deform[level](nbr, offset_feat)
            if aligned is not None:
                level_aligned = self.merge[level - 1](
                    torch.cat([level_aligned, upsample2x(aligned)], dim=1)
                )
            finest = level == len(coarse_to_fine) - 1
            aligned = level_aligned if finest else leaky_relu(level_aligned)
        cascade_offset = self.cascade_offset(torch.cat([aligned, reference[0]], dim=1))
        return leaky_relu(self.cascade_deform(aligned, cascade_offset))


class TSAFusion(nn.Module):
    """Temporal and spatial attention fusion of aligned window features.

    ``forward(aligned (N, W, C, h, w), centre)`` -> (N, C, h, w), with h and w divisible by 4.
    Temporal: each neighbour is weighted per pixel by the sigmoid of its embedding's correlation
    with the centre frame's. Spatial: a two-level pyramid of attention modulates the fused
    features (multiplicative, sigmoid x 2, and additive).
    """

    def __init__(self, num_feat: int, num_frames: int) -> None:
        super().__init__()
        window_channels = num_frames * num_feat
        self.embed_centre = conv(num_feat, num_feat)
        self.embed_neighbour = conv(num_feat, num_feat)
        self.fuse = conv(window_channels, num_feat, 1)
        self.attn_in = conv(window_channels, num_feat, 1)
        self.attn_pooled = conv(2 * num_feat, num_feat, 1)
        self.attn_level_in = conv(num_feat, num_feat, 1)
        self.attn_level_pooled = conv(2 * num_feat, num_feat)
        self.attn_level_out = conv(num_feat, num_feat)
        self.attn_mid = conv(num_feat, num_feat)
        self.attn_mid_1x1 = conv(num_feat, num_feat, 1)
        self.attn_out = conv(num_feat, num_feat)
        self.attn_add = nn.Sequential(
            conv(num_feat, num_feat, 1), leaky_relu_layer(), conv(num_feat, num_feat, 1)
        )

    @staticmethod
    def _pool(x: Tensor) -> Tensor:
        """Max and average pools (3x3, stride 2) side by side: (N, C, h, w) -> (N, 2C, h/2, w/2)."""
        pooled_max = F.max_pool2d(x, 3, stride=2, padding=1)
        pooled_avg = F.avg_pool2d(x, 3, stride=2, padding=1)
        return torch.cat([pooled_max, pooled_avg], dim=1)

    def forward(self, aligned: Tensor, centre: int) -> Tensor:
        batch, window, channels, height, width = aligned.shape
        embed_centre = self.embed_centre(aligned[:, centre])
        embed = self.embed_neighbour(aligned.flatten(0, 1)).view_as(aligned)
        correlation = (embed * embed_centre.unsqueeze(1)).sum(
            dim=2, keepdim=True
        )  # (N, W, 1, h, w)
        weighted = (aligned * torch.sigmoid(correlation)).flatten(1, 2)  # (N, W*C, h, w)
        feat = leaky_relu(self.fuse(weighted))

        attn = leaky_relu(self.attn_in(weighted))
        attn = leaky_relu(self.attn_pooled(self._pool(attn)))  # h/2
        level = leaky_relu(self.attn_level_in(attn))
        level = leaky_relu(self.attn_level_pooled(self._pool(level)))  # h/4
        level = upsample2x(leaky_relu(self.attn_level_out(level)))  # h/2
        attn = leaky_relu(self.attn_mid(attn)) + level
        attn = upsample2x(leaky_relu(self.attn_mid_1x1(attn)))  # h
        attn = self.attn_out(attn)
        return feat * torch.sigmoid(attn) * 2 + self.attn_add(attn)


Levels = list[Tensor]
"""One frame's pyramid features, finest level first: (B, C, h / 2**l, w / 2**l) each."""


class FramePyramids:
    """The per-frame pyramid features (:meth:`WindowFusion.pyramid_features`) that a clip's
    windows need, computed when a window first needs a frame and dropped after the last
    window that needs it.

    ``lq`` (B, T, 3, h, w), ``windows`` (K, W) frame indices, and the windows are asked for in
    order, rows ``0 .. K-1`` split into consecutive slices (:meth:`gather`). While autograd
    records, every frame the windows use is computed at once (one graph); otherwise only the
    frames of the slice's windows that are not held yet, ``group`` frames at a time. Either
    way the features of a frame are dropped once no later window uses it, so inference holds
    about a group's windows' frames, not the clip's, and its memory does not grow with T.
    """

    def __init__(
        self,
        pyramid_features: Callable[[Tensor], Levels],
        lq: Tensor,
        windows: Tensor,
        group: int,
    ) -> None:
        self._pyramid_features = pyramid_features
        self._lq = lq
        self._group = group
        self.batch = lq.shape[0]
        self.windows = windows.tolist()
        self._last_row = {frame: row for row, frames in enumerate(self.windows) for frame in frames}
        self._held: dict[int, Levels] = {}
        if torch.is_grad_enabled():
            self._compute(sorted(self._last_row))

    def _compute(self, frames: list[int]) -> None:
        for part in frame_groups(len(frames), self._group):
            chosen = frames[part]
            padded = pad_to_multiple(self._lq[:, chosen].flatten(0, 1), 2 ** (NUM_LEVELS - 1))
            levels = [
                level.unflatten(0, (self.batch, len(chosen))).unbind(1)
                for level in self._pyramid_features(padded)
            ]
            for index, frame in enumerate(chosen):
                self._held[frame] = [level[index] for level in levels]

    def gather(self, rows: slice) -> list[tuple[Levels, Levels]]:
        """The ``(neighbour, centre)`` pyramids of every position of the windows ``rows``, in
        window order, then position order (K' * W pairs). The frames no later window uses are
        dropped here (the pairs returned still hold theirs)."""
        windows = self.windows[rows]
        missing = sorted({frame for window in windows for frame in window} - self._held.keys())
        if missing:
            self._compute(missing)
        pairs = [
            (self._held[frame], self._held[window[len(window) // 2]])
            for window in windows
            for frame in window
        ]
        for frame in [f for f in self._held if self._last_row[f] < rows.stop]:
            del self._held[frame]
        return pairs


class WindowFusion(nn.Module):
    """EDVR's front end: per-frame pyramid features, PCD alignment and TSA fusion of windows.

    ``forward(lq (B, T, 3, h, w), windows (K, num_frames), group)`` -> (B, K, C, h, w): the
    fused feature of each of the K windows (rows of frame indices into ``lq``, as made by
    :func:`window_indices`), aligned to the window's centre column. With autograd off,
    ``group`` windows are fused at a time and only their frames' features are held
    (:class:`FramePyramids`). ``forward`` is :meth:`pyramids` then :meth:`fuse`.
    """

    def __init__(
        self, num_feat: int, num_frames: int, deformable_groups: int, num_extract_blocks: int
    ) -> None:
        super().__init__()
        if num_frames % 2 == 0:
            raise ValueError(f"num_frames must be odd, got {num_frames}")
        self.num_frames = num_frames
        self.feat_extract = ConvResidualBlocks(3, num_feat, num_extract_blocks)
        self.downsample = nn.ModuleList(
            nn.Sequential(
                conv(num_feat, num_feat, stride=2),
                leaky_relu_layer(),
                conv(num_feat, num_feat),
                leaky_relu_layer(),
            )
            for _ in range(NUM_LEVELS - 1)
        )
        self.pcd_align = PCDAlignment(num_feat, deformable_groups)
        self.tsa_fusion = TSAFusion(num_feat, num_frames)

    def forward(self, lq: Tensor, windows: Tensor, group: int | None = None) -> Tensor:
        group = group or len(windows)
        pyramids = self.pyramids(lq, windows, group)
        return joined_along_frames(
            frame_groups(len(windows), group), lambda rows: self.fuse(pyramids, rows, lq.shape[-2:])
        )

    def pyramids(self, lq: Tensor, windows: Tensor, group: int) -> FramePyramids:
        """The per-frame features of ``lq`` (B, T, 3, h, w) that ``windows`` (K, W) need,
        ``group`` frames at a time with autograd off."""
        return FramePyramids(self.pyramid_features, lq, windows, group)

    def pyramid_features(self, padded: Tensor) -> list[Tensor]:
        """Frames (N, 3, h, w), h and w multiples of 4 -> their features at each pyramid
        level, finest first, (N, C, h / 2**l, w / 2**l)."""
        pyramid = [self.feat_extract(padded)]
        for downsample in self.downsample:
            pyramid.append(downsample(pyramid[-1]))
        return pyramid

    def fuse(self, pyramids: FramePyramids, rows: slice, size: tuple[int, int]) -> Tensor:
        """The fused features (B, K', C, h, w) of the windows ``rows`` of ``pyramids``,
        cropped to the LR ``size`` (h, w)."""
        pairs = pyramids.gather(rows)
        height, width = size
        # With autograd off one neighbour at a time, as the published EDVR aligns them.
        aligned = joined_along_frames(
            frame_groups(len(pairs), 1), lambda part: self._align(pairs[part], pyramids.batch)
        )  # (B, K'*W, C, h_pad, w_pad)
        windowed = aligned.flatten(0, 1).unflatten(0, (-1, self.num_frames))
        fused = self.tsa_fusion(windowed, centre=self.num_frames // 2)
        return fused[..., :height, :width].unflatten(0, (pyramids.batch, -1))

    def _align(self, pairs: list[tuple[Levels, Levels]], batch: int) -> Tensor:
        """PCD alignment of each ``(neighbour, centre)`` pair -> (B, P, C, h_pad, w_pad)."""
        neighbour, reference = (
            [
                torch.stack([pair[side][level] for pair in pairs], 1).flatten(0, 1)
                for level in range(NUM_LEVELS)
            ]
            for side in (0, 1)
        )
        return self.pcd_align(neighbour, reference).unflatten(0, (batch, len(pairs)))


class EDVR(VSRBackbone):
    """EDVR for every frame of a clip. EDVR-M (defaults, scale 4) has 3.3M parameters; EDVR-L
    (``num_feat=128, num_reconstruct_blocks=40``) 20.6M.

    Args:
        num_feat: channels of all LR features (= ``fusion_channels``).
        num_frames: window length (odd) around each frame.
        deformable_groups: groups of every deformable conv (divides ``num_feat``).
        num_extract_blocks: residual blocks of the per-frame feature extractor.
        num_reconstruct_blocks: residual blocks of the reconstruction trunk.
        scale: upsampling factor (2, 3, 4, 8, ...).
        hr_channels: channels of the last pixel-shuffle stage and the HR conv (paper: 64).
        clip_ends: how windows are completed at the clip ends, ``"mirror"`` or ``"basicsr"``
            (:func:`window_indices`); published EDVR weights expect ``"basicsr"``.
    """

    def __init__(
        self,
        num_feat: int = 64,
        num_frames: int = 5,
        deformable_groups: int = 8,
        num_extract_blocks: int = 5,
        num_reconstruct_blocks: int = 10,
        scale: int = 4,
        hr_channels: int = 64,
        clip_ends: str = "mirror",
    ) -> None:
        super().__init__()
        self.clip_ends = check_clip_ends(clip_ends)
        self.scale = scale
        self.fusion_channels = num_feat
        self.num_frames = num_frames
        self.window_fusion = WindowFusion(
            num_feat, num_frames, deformable_groups, num_extract_blocks
        )
        self.reconstruction = make_layer(
            lambda: ResidualBlockNoBN(num_feat), num_reconstruct_blocks
        )
        self.head = PixelShuffleHead(num_feat, scale, hr_channels)

    def forward(self, lq: Tensor, feature_hook: FeatureHook | None = None) -> Tensor:
        """``lq`` (B, T, 3, h, w) -> (B, T, 3, s*h, s*w); hook on groups (B, T', num_feat, h, w)."""
        windows = window_indices(lq.shape[1], self.num_frames, self.clip_ends)
        pyramids = self.window_fusion.pyramids(lq, windows, self.inference_group)

        def features(frames: slice) -> Tensor:  # (B, T', C, h, w)
            return self.window_fusion.fuse(pyramids, frames, lq.shape[-2:])

        def reconstruct(feat: Tensor, group_lq: Tensor) -> Tensor:
            return self.head(self.reconstruction(feat), group_lq)

        return reconstruct_frames(features, lq, feature_hook, reconstruct, self.inference_group)
