"""Self-supervised localisation terms for MS-AVF's attention (no ground-truth masks).

Each term is a :class:`LocalisationTerm`: the LightningModule adds ``weight * term.of_output(
output, anchors)`` to the reconstruction loss, where ``output`` is the
:class:`~avvsr.models.avvsr_net.AVVSROutput` of the training batch (with the attention
embeddings when the term's ``needs_embeddings``) and ``anchors`` (B,) marks the clips that hear
their own sound (not dropped to silence nor missing).

:class:`LVSLocalisationLoss`: the idea of LVS (Chen et al., "Localizing Visual Sounds the
Hard Way", CVPR 2021), applied to the space MS-AVF's finest mask is computed in
(:class:`avvsr.models.fusion.AttentionEmbeddings`):
the cosine similarity of a frame's audio query with every spatial key of a frame is a map;
a clip's own audio should match *part* of its own frame strongly and the rest weakly, and
other clips' audio should match nothing in it as strongly. The mask is
``sigmoid(temperature * cosine + bias)`` of the own map, so training the map's ordering trains
what the study scores (any AUC of the mask is that of the map).

For each frame ``(b, t)`` of an anchor clip (one whose audio is its own, not dropped to
silence nor missing), with ``s_cb`` the map of clip ``c``'s audio at frame ``t`` over clip
``b``'s frame ``t``:

- the *positive region* of a map ``s`` weighs each pixel by ``sigmoid((s - positive_threshold)
  / region_temperature)``; the *negative region* by ``sigmoid((negative_threshold - s) /
  region_temperature)`` (a soft trimap: pixels between the thresholds count little in either);
- the scores, each a weighted mean of a map over a region: ``positive`` = own map ``s_bb``
  over its positive region; ``hard negative`` = ``s_bb`` over its negative region (the same
  frame's regions that its audio should not match); ``negatives`` = ``s_cb`` over *its*
  positive region for every other clip ``c`` of the batch (where another clip's audio would
  match this frame best);
- InfoNCE: ``-log softmax([positive, hard negative, negatives...] / contrast_temperature)[0]``,
  averaged over the anchor frames.

The regions are pseudo-labels made from the maps themselves, so their weights carry no
gradient; they are normalised to sum to one per map, which keeps the scores defined where no
pixel passes a threshold (the weights then act as a soft maximum / minimum of the map).
Other clips are compared at the same frame index: a clip's own frames share its sound, so they
are no negatives, and one frame per other clip keeps the cost at ``B * B * T * h * w`` values.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avvsr.models.avvsr_net import AVVSROutput


class LocalisationTerm(nn.Module):
    """A training term on the attention of an :class:`AVVSROutput`; no parameters, so a model
    trained with it saves and loads the same weights as without.

    ``weight``: its weight in the training loss (> 0). ``needs_embeddings``: whether
    :meth:`of_output` reads ``output.embeddings`` (the model must be asked for them).
    """

    needs_embeddings: ClassVar[bool] = False

    def __init__(self, weight: float) -> None:
        super().__init__()
        if weight <= 0:
            raise ValueError(f"weight must be > 0 (leave the term out to turn it off): {weight}")
        self.weight = weight

    def of_output(self, output: AVVSROutput, anchors: Tensor) -> Tensor:
        """The term (a scalar) on a training batch's ``output``; ``anchors`` (B,) bool."""
        raise NotImplementedError


class LVSLocalisationLoss(LocalisationTerm):
    """LVS-style contrastive localisation loss over one scale's attention embeddings.

    Args:
        weight: its weight in the training loss (> 0; the LightningModule adds
            ``weight * loss`` to the reconstruction loss).
        positive_threshold: cosine above which a pixel is in a map's positive region.
        negative_threshold: cosine below which a pixel is in a map's negative region
            (``<= positive_threshold``).
        region_temperature: softness of both thresholds (cosine units).
        contrast_temperature: temperature of the InfoNCE logits.

    ``forward(keys (B, T, E, h, w), query (B, T, E), anchors (B,) bool) -> scalar``: keys and
    query unit length along E; the mean loss over the anchor clips' frames, 0 without anchors.
    """

    needs_embeddings: ClassVar[bool] = True

    def __init__(
        self,
        weight: float = 0.01,
        positive_threshold: float = 0.65,
        negative_threshold: float = 0.4,
        region_temperature: float = 0.03,
        contrast_temperature: float = 0.07,
    ) -> None:
        super().__init__(weight)
        if negative_threshold > positive_threshold:
            raise ValueError(
                f"negative_threshold {negative_threshold} is above positive_threshold "
                f"{positive_threshold}"
            )
        if region_temperature <= 0 or contrast_temperature <= 0:
            raise ValueError("temperatures must be > 0")
        self.positive_threshold = positive_threshold
        self.negative_threshold = negative_threshold
        self.region_temperature = region_temperature
        self.contrast_temperature = contrast_temperature

    def forward(self, keys: Tensor, query: Tensor, anchors: Tensor) -> Tensor:
        batch, frames = query.shape[:2]
        if keys.shape[:3] != query.shape or anchors.shape != (batch,):
            raise ValueError(
                f"keys (B, T, E, h, w), query (B, T, E), anchors (B,): got {tuple(keys.shape)}, "
                f"{tuple(query.shape)}, {tuple(anchors.shape)}"
            )
        # maps[b, c, t]: clip c's audio at frame t over clip b's frame t, flattened (h * w).
        maps = torch.einsum("btehw,cte->bcthw", keys, query).flatten(-2)
        positives = self._region_mean(maps, above=self.positive_threshold)  # (B, B, T)
        own = torch.arange(batch, device=keys.device)
        hard_negative = self._region_mean(maps[own, own], below=self.negative_threshold)
        others = positives.masked_fill(torch.eye(batch, dtype=torch.bool, device=keys.device)
                                       [:, :, None], float("-inf"))
        logits = torch.cat(
            [positives[own, own][:, None], hard_negative[:, None], others], dim=1
        ) / self.contrast_temperature  # (B, 2 + B, T): the positive first
        loss = -F.log_softmax(logits, dim=1)[:, 0]  # (B, T)
        # The mean over the anchors' frames, without asking the device how many there are (a
        # host sync every training step): 0 without anchors.
        weights = anchors.to(loss.dtype)[:, None]
        return (loss * weights).sum() / (weights.sum() * frames).clamp(min=1)

    def of_output(self, output: AVVSROutput, anchors: Tensor) -> Tensor:
        finest = output.embeddings[0]
        return self(finest.keys, finest.query, anchors)

    def _region_mean(
        self, maps: Tensor, above: float | None = None, below: float | None = None
    ) -> Tensor:
        """Weighted mean over the last dim of ``maps`` (..., h * w), the weights those of the
        soft region above ``above`` (or below ``below``), normalised, without gradient."""
        pseudo_label = maps.detach()
        signed = (pseudo_label - above) if above is not None else (below - pseudo_label)
        weights = F.softmax(F.logsigmoid(signed / self.region_temperature), dim=-1)
        return (weights * maps).sum(-1)
