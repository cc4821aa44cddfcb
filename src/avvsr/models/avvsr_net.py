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
from avvsr.models.fusion import AttentionEmbeddings

FusionFactory = Callable[..., nn.Module]
"""Builds a fusion module from ``visual_channels=C, audio_dim=D`` (a Hydra ``_partial_``)."""


@dataclass
class AVVSROutput:
    """What :class:`AVVSRNet` returns.

    ``sr``: ``(B, T, 3, H, W)``. ``masks``: one attention mask per fusion scale, each
    ``(B, T, 1, h_s, w_s)`` in [0, 1], finest first; empty without (attention-based) fusion.
    ``embeddings``: only when asked for (``return_embeddings``), the space each mask is
    computed in, finest first: keys ``(B, T, E, h_s, w_s)`` and query ``(B, T, E)``
    (:class:`~avvsr.models.fusion.AttentionEmbeddings`); else empty.
    """

    sr: Tensor
    masks: list[Tensor] = field(default_factory=list)
    embeddings: list[AttentionEmbeddings] = field(default_factory=list)


class AVVSRNet(nn.Module):
    """Backbone + optional (audio encoder, fusion).

    Args:
        backbone: any :class:`VSRBackbone`.
        audio_encoder: maps log-mel ``(B, T, n_mels, n_frames)`` to ``(B, T, D)``; needs an
            ``embed_dim`` attribute. Ignored (not built into the model) when ``fusion`` is None.
        fusion: factory of the fusion module, called with ``visual_channels`` and
            ``audio_dim``; the module maps ``(feat (N, C, h, w), audio (N, D))`` to
            ``(fused, masks)``. One whose ``synchrony`` attribute is a module (MS-AVF with
            ``synchrony_window``) also gets ``synchrony=`` that module's map of the clip's
            LR frames and log-mel, ``(N, 1, h, w)`` for its N frames. None gives the plain
            backbone.
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

    def forward(
        self,
        lq: Tensor,
        audio: Tensor | None = None,
        *,
        return_embeddings: bool = False,
        projection_embeddings: bool = False,
    ) -> AVVSROutput:
        """``lq`` (B, T, 3, h, w) and log-mel ``audio`` (B, T, n_mels, n_frames) -> output.

        ``audio`` is required when the model fuses audio and ignored otherwise.
        ``return_embeddings``: also return the attention embeddings of every scale (the
        fusion's ``return_embeddings``; the output is the same), with their projection-only
        keys and query if ``projection_embeddings`` (see
        :class:`~avvsr.models.fusion.AttentionEmbeddings`).
        """
        if self.fusion is None:
            return AVVSROutput(sr=self.backbone(lq))
        if audio is None:
            raise ValueError(
                "this model fuses audio: pass log-mel `audio` (B, T, n_mels, n_frames)"
            )
        embedding = self.audio_encoder(audio)  # (B, T, D)
        synchrony_map = getattr(self.fusion, "synchrony", None)
        synchrony = None if synchrony_map is None else synchrony_map(lq, audio)  # (B, T, 1, h, w)
        # Per hook call (group of frames), per scale: masks, and embeddings if asked for.
        group_masks: list[list[Tensor]] = []
        group_spaces: list[list[AttentionEmbeddings]] = []

        def fuse(feat: Tensor, frames: slice) -> Tensor:
            batch = feat.shape[0]

            def per_clip(x: Tensor) -> Tensor:  # (B*T', ...) -> (B, T', ...)
                return x.unflatten(0, (batch, -1))

            frame_feat, audio_feat = feat.flatten(0, 1), embedding[:, frames].flatten(0, 1)
            extra = {} if synchrony is None else {"synchrony": synchrony[:, frames].flatten(0, 1)}
            if projection_embeddings:  # the fusion refuses them without return_embeddings
                extra["projection_embeddings"] = True
            if return_embeddings:
                fused, scale_masks, spaces = self.fusion(
                    frame_feat, audio_feat, return_embeddings=True, **extra
                )
                group_spaces.append([space.map(per_clip) for space in spaces])
            else:  # the plain fusion contract: (fused, masks)
                fused, scale_masks = self.fusion(frame_feat, audio_feat, **extra)
            group_masks.append([per_clip(m) for m in scale_masks])
            return per_clip(fused)

        sr = self.backbone(lq, feature_hook=fuse)
        # The groups come in frame order: join each scale's tensors along T.
        masks = [torch.cat(scale, dim=1) for scale in zip(*group_masks, strict=True)]
        embeddings = [
            AttentionEmbeddings.cat(scale, dim=1) for scale in zip(*group_spaces, strict=True)
        ]
        return AVVSROutput(sr=sr, masks=masks, embeddings=embeddings)
