"""``AVVSRNet``: a VSR backbone, optionally with an audio encoder and a fusion module.

The network the LightningModule trains and the upscaler runs. Without fusion it is exactly the
backbone. With fusion, each frame's audio embedding is fused into that frame's features at the
backbone's fusion point (see :mod:`avvsr.models.backbones.base`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from avvsr.models.backbones.base import VSRBackbone

FusionFactory = Callable[..., nn.Module]
"""Builds a fusion module from ``visual_channels=C, audio_dim=D`` (a Hydra ``_partial_``)."""


@dataclass
class AVVSROutput:
    """What :class:`AVVSRNet` returns.

    ``sr``: ``(B, T, 3, H, W)``. ``masks``: one attention mask per fusion scale, each
    ``(B, T, 1, h_s, w_s)`` in [0, 1], finest first; empty without (attention-based) fusion.
    """

    sr: Tensor
    masks: list[Tensor] = field(default_factory=list)


class AVVSRNet(nn.Module):
    """Backbone + optional (audio encoder, fusion).

    Args:
        backbone: any :class:`VSRBackbone`.
        audio_encoder: maps log-mel ``(B, T, n_mels, n_frames)`` to ``(B, T, D)``; needs an
            ``embed_dim`` attribute. Ignored (not built into the model) when ``fusion`` is None.
        fusion: factory of the fusion module, called with ``visual_channels`` and
            ``audio_dim``; the module maps ``(feat (N, C, h, w), audio (N, D))`` to
            ``(fused, masks)``. None gives the plain backbone.
    """

    def __init__(
        self,
        backbone: VSRBackbone,
        audio_encoder: nn.Module | None = None,
        fusion: FusionFactory | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.audio_encoder = audio_encoder if fusion is not None else None
        self.fusion = None
        if fusion is not None:
            if audio_encoder is None:
                raise ValueError("a fusion module needs an audio encoder")
            self.fusion = fusion(
                visual_channels=backbone.fusion_channels, audio_dim=audio_encoder.embed_dim
            )

    @property
    def scale(self) -> int:
        return self.backbone.scale

    @property
    def uses_audio(self) -> bool:
        return self.fusion is not None

    def forward(self, lq: Tensor, audio: Tensor | None = None) -> AVVSROutput:
        """``lq`` (B, T, 3, h, w) and log-mel ``audio`` (B, T, n_mels, n_frames) -> output.

        ``audio`` is required when the model fuses audio and ignored otherwise.
        """
        if self.fusion is None:
            return AVVSROutput(sr=self.backbone(lq))
        if audio is None:
            raise ValueError(
                "this model fuses audio: pass log-mel `audio` (B, T, n_mels, n_frames)"
            )
        embedding = self.audio_encoder(audio)  # (B, T, D)
        group_masks: list[list[Tensor]] = []  # per hook call (group of frames), per scale

        def fuse(feat: Tensor, frames: slice) -> Tensor:
            batch = feat.shape[0]
            audio_feat = embedding[:, frames].flatten(0, 1)
            fused, scale_masks = self.fusion(feat.flatten(0, 1), audio_feat)
            group_masks.append([m.unflatten(0, (batch, -1)) for m in scale_masks])
            return fused.unflatten(0, (batch, -1))

        sr = self.backbone(lq, feature_hook=fuse)
        # The groups come in frame order: join each scale's masks along T.
        masks = [torch.cat(scale, dim=1) for scale in zip(*group_masks, strict=True)]
        return AVVSROutput(sr=sr, masks=masks)
