"""Self-supervised localisation terms for MS-AVF's attention (no ground-truth masks).

Each term is a :class:`LocalisationTerm`: the LightningModule adds ``weight * term.of_output(
output, anchors, lq, log_mel)`` to the reconstruction loss, where ``output`` is the
:class:`~avvsr.models.avvsr_net.AVVSROutput` of the training batch (with the attention
embeddings when the term's ``needs_embeddings``), ``anchors`` (B,) marks the clips that hear
their own sound (not dropped to silence nor missing), and ``lq`` / ``log_mel`` are the LR
frames and the audio the model was given.

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

:class:`SynchronyTeacherLoss`: the audio-visual synchrony (:mod:`avvsr.models.synchrony`, the
correlation of each LR pixel's luma with the loudness over a few frames) as the teacher of the
per-frame attention. Within a frame the synchrony tells the sounding object from a silent one
only roughly (its source-vs-distractor AUC is 0.71-0.82 at 3-15 frames on ``synth_lattice``:
two random envelopes correlate by chance over a short window), but its errors do not depend on
what an object looks like, so over many clips the attention can learn from it which
appearance goes with which sound, a cue that is in every single frame. Per scale, the cosine
map of each frame's own audio (the mask's ordering) is scored as a logistic classifier of
the pixels the synchrony marks (in step with the sound: sounding; varying but not in step:
silent), area-averaged to the scale as the fusion does::

    z = cosine / logit_temperature
    loss = (mean over sync >= positive_threshold of softplus(-z)
            + mean over (sync <= negative_threshold and luma std >= active_luma_grey)
              of softplus(z))

per frame of an anchor clip that has pixels on both sides (a frame whose loudness does not
change marks none), averaged over those frames and the scales. The silent side holds only
pixels whose luma varies over the window (a moving or pulsing thing that is not in step with the
sound, the hard negatives), not the still background: with every still pixel a negative the
term is met by telling objects from background, which the reconstruction already teaches
(on ``synth_lattice``'s training crops the still background made 73% of the negatives,
``experiments/av_ablation/diagnostics/teacher_marks.py``, and in a pilot the masks'
source-vs-distractor AUC was 0.63, plain MS-AVF's 0.69; ``experiments/av_ablation/NOTES.md``).
The synchrony carries no gradient; nor do the masks' temperature and bias, so the term
teaches the audio-visual space only, and with ``model/fusion=msavf_sync`` it does not reward
the synchrony weight for copying its own input. ``teaches`` says how far its gradient reaches:
the whole network (``network``), the audio side and the visual projection (``audio``: the
visual features are detached, so the backbone is drawn as the reconstruction alone wants it),
or only the two projections that make the space (``projections``: the features and the audio
embedding they project are detached).

:class:`SynchronyContrastLoss`: the same teacher, across clips instead of within a frame. Each
frame's keys are pooled over the pixels the synchrony marks as sounding, and each frame's audio
query must pick its own frame's pooled key out of the other clips' in the batch (InfoNCE), so
the query has to say what its source looks like. Both synchrony terms share
:class:`SynchronyTerm` (the teacher, its sounding threshold, ``teaches``, the mean over scales).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avvsr.models.avvsr_net import AVVSROutput
from avvsr.models.fusion import AttentionEmbeddings
from avvsr.models.synchrony import AudioVisualSynchrony

TEACHES = ("network", "audio", "projections")
"""What :class:`SynchronyTeacherLoss`'s gradient may reach (its ``teaches``)."""


class LocalisationTerm(nn.Module):
    """A training term on the attention of an :class:`AVVSROutput`; no parameters, so a model
    trained with it saves and loads the same weights as without.

    ``weight``: its weight in the training loss (> 0). ``needs_embeddings``: whether
    :meth:`of_output` reads ``output.embeddings`` (the model must be asked for them);
    ``needs_projection_embeddings``: whether it reads their ``projection_keys`` and
    ``projection_query`` too.
    """

    needs_embeddings: ClassVar[bool] = False
    needs_projection_embeddings: bool = False

    def __init__(self, weight: float) -> None:
        super().__init__()
        if weight <= 0:
            raise ValueError(f"weight must be > 0 (leave the term out to turn it off): {weight}")
        self.weight = weight

    def of_output(
        self, output: AVVSROutput, anchors: Tensor, lq: Tensor, log_mel: Tensor
    ) -> Tensor:
        """The term (a scalar) on a training batch's ``output``; ``anchors`` (B,) bool; the
        batch's LR frames ``lq`` (B, T, 3, h, w) and the log-mel ``log_mel`` (B, T, n_mels,
        n_frames) the model heard."""
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

    def of_output(
        self, output: AVVSROutput, anchors: Tensor, lq: Tensor, log_mel: Tensor
    ) -> Tensor:
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


class SynchronyTerm(LocalisationTerm):
    """What the synchrony-taught terms share: the teacher (the synchrony of the LR frames with
    the loudness, :class:`~avvsr.models.synchrony.AudioVisualSynchrony`), the threshold at
    which it marks a pixel as sounding, how far the term's gradient reaches (``teaches``,
    :data:`TEACHES`), and the mean of the term over the scales. A subclass scores one scale in
    :meth:`on_scale`."""

    needs_embeddings: ClassVar[bool] = True

    def __init__(
        self, weight: float, window: int, positive_threshold: float, teaches: str
    ) -> None:
        super().__init__(weight)
        if teaches not in TEACHES:
            raise ValueError(f"teaches must be one of {list(TEACHES)}, got {teaches!r}")
        self.synchrony = AudioVisualSynchrony(window)
        self.positive_threshold = positive_threshold
        self.teaches = teaches

    def on_scale(
        self,
        scale: int,
        keys: Tensor,
        query: Tensor,
        synchrony: Tensor,
        luma_std: Tensor,
        anchors: Tensor,
    ) -> Tensor:
        """The term (a scalar) at the training batch's scale ``scale`` (0 the finest):
        ``keys`` (B, T, E, h, w), ``query`` (B, T, E), the synchrony and luma standard
        deviation (B, T, 1, h', w') of
        :meth:`~avvsr.models.synchrony.AudioVisualSynchrony.statistics`, ``anchors`` (B,).
        The module's forward of them unless a subclass keeps state per scale."""
        return self(keys, query, synchrony, luma_std, anchors)

    def of_output(
        self, output: AVVSROutput, anchors: Tensor, lq: Tensor, log_mel: Tensor
    ) -> Tensor:
        synchrony, luma_std = self.synchrony.statistics(lq, log_mel)
        terms = [self.on_scale(scale, *self.taught(space), synchrony, luma_std, anchors)
                 for scale, space in enumerate(output.embeddings)]
        return torch.stack(terms).mean()

    @property
    def needs_projection_embeddings(self) -> bool:
        """Whether :attr:`teaches` keeps the term off part of the network."""
        return self.teaches != "network"

    def taught(self, space: AttentionEmbeddings) -> tuple[Tensor, Tensor]:
        """The keys and query of ``space`` whose gradient reaches what :attr:`teaches` says."""
        if self.teaches == "network":
            return space.keys, space.query
        query = space.query if self.teaches == "audio" else space.projection_query
        return space.projection_keys, query


def at_scale(statistic: Tensor, keys: Tensor) -> Tensor:
    """A per-pixel ``statistic`` (B, T, 1, h', w') area-averaged to the size of ``keys``
    (B, T, E, h, w), as the fusion sees it there: (B, T, h * w), without gradient, in the
    keys' precision (float32 at least)."""
    batch, frames = statistic.shape[:2]
    precision = torch.promote_types(keys.dtype, torch.float32)
    return (F.adaptive_avg_pool2d(statistic.detach().to(precision).flatten(0, 1),
                                  keys.shape[-2:]).view(batch, frames, -1))


class SynchronyTeacherLoss(SynchronyTerm):
    """The synchrony as the teacher of every scale's audio-visual cosine map (see the module
    docstring).

    Args:
        weight: its weight in the training loss (> 0).
        window: frames of the teacher's :class:`~avvsr.models.synchrony.AudioVisualSynchrony`
            (odd, >= 3; a training crop shorter than it is one window).
        positive_threshold: synchrony at or above which a pixel is taken as sounding.
        negative_threshold: synchrony at or below which a pixel is taken as silent
            (``< positive_threshold``).
        logit_temperature: the cosine is divided by it to give the classifier's logit.
        active_luma_grey: a silent pixel's luma must vary by at least this standard deviation
            over the window, grey levels (0: every pixel out of step is a negative).
        teaches: what the term's gradient reaches (:data:`TEACHES`): ``network`` every
            weight the cosine maps depend on (backbone, fusion pyramid, audio encoder and the
            attention's projections); ``audio`` the audio encoder and both projections, not
            the visual features the keys project (the embeddings' ``projection_keys``);
            ``projections`` the two projections only (``projection_keys`` and
            ``projection_query``), so the term cannot change what the reconstruction draws
            with, only where the masks open.

    ``forward(keys (B, T, E, h, w), query (B, T, E), synchrony (B, T, 1, h', w'), luma_std
    (B, T, 1, h', w'), anchors (B,) bool) -> scalar``: one scale; keys and query unit length
    along E; the synchrony and luma standard deviation of
    :meth:`~avvsr.models.synchrony.AudioVisualSynchrony.statistics`; 0 where no frame of an
    anchor clip has pixels on both sides.
    """

    def __init__(
        self,
        weight: float = 0.01,
        window: int = 9,
        positive_threshold: float = 0.5,
        negative_threshold: float = 0.2,
        logit_temperature: float = 0.1,
        active_luma_grey: float = 2.0,
        teaches: str = "network",
    ) -> None:
        super().__init__(weight, window, positive_threshold, teaches)
        if not negative_threshold < positive_threshold:
            raise ValueError(
                f"negative_threshold {negative_threshold} must be below positive_threshold "
                f"{positive_threshold}"
            )
        if logit_temperature <= 0:
            raise ValueError(f"logit_temperature must be > 0, got {logit_temperature}")
        if active_luma_grey < 0:
            raise ValueError(f"active_luma_grey must be >= 0, got {active_luma_grey}")
        self.negative_threshold = negative_threshold
        self.logit_temperature = logit_temperature
        self.active_luma_grey = active_luma_grey

    def forward(
        self, keys: Tensor, query: Tensor, synchrony: Tensor, luma_std: Tensor, anchors: Tensor
    ) -> Tensor:
        batch, frames = query.shape[:2]
        if (keys.shape[:3] != query.shape or synchrony.shape[:3] != (batch, frames, 1)
                or luma_std.shape != synchrony.shape or anchors.shape != (batch,)):
            raise ValueError(
                f"keys (B, T, E, h, w), query (B, T, E), synchrony and luma_std (B, T, 1, h', "
                f"w'), anchors (B,): got {tuple(keys.shape)}, {tuple(query.shape)}, "
                f"{tuple(synchrony.shape)}, {tuple(luma_std.shape)}, {tuple(anchors.shape)}"
            )
        precision = torch.promote_types(keys.dtype, torch.float32)  # as the fusion's cosine
        with torch.autocast(device_type=keys.device.type, enabled=False):
            cosine = torch.einsum(
                "btehw,bte->bthw", keys.to(precision), query.to(precision)
            ).flatten(2)
            teacher, activity = at_scale(synchrony, keys), at_scale(luma_std, keys)
            logits = cosine / self.logit_temperature
            positive = (teacher >= self.positive_threshold).float()
            negative = ((teacher <= self.negative_threshold)
                        & (activity >= self.active_luma_grey)).float()
            positive_cost = (F.softplus(-logits) * positive).sum(-1) / positive.sum(-1).clamp(1)
            negative_cost = (F.softplus(logits) * negative).sum(-1) / negative.sum(-1).clamp(1)
            # Frames with a marked pixel on both sides, of clips that hear their own sound:
            # counted without asking the device (a host sync every training step).
            taught = (positive.amax(-1) * negative.amax(-1)) * anchors.float()[:, None]
            return ((positive_cost + negative_cost) * taught).sum() / taught.sum().clamp(min=1)


class SynchronyContrastLoss(SynchronyTerm):
    """The synchrony as the teacher of what each frame's audio query says, across clips.

    Per scale, a frame's *sounding key* is the mean of its keys over the pixels the synchrony
    marks as sounding (``synchrony >= positive_threshold``, area-averaged to the scale),
    normalised to unit length. Each anchor frame's audio query must pick its own sounding key
    out of those of the batch's other clips (every frame of theirs that has one; its own
    clip's other frames are left out, neither positive nor negative) and of the
    ``queue_frames`` most recent earlier training frames'::

        logits = query[b, t] . sounding_key[c, t'] / contrast_temperature
        loss = -log softmax(logits over (b, t), every (c != b, t') and the queue)[(b, t)]

    averaged over the anchor frames that have a sounding key and at least one negative, and
    over the scales. Where the per-pixel teacher (:class:`SynchronyTeacherLoss`) asks each
    frame's query to prefer its source to the other things that move in the same frame, this
    term asks it to tell its source from the sources of other clips, i.e. to say what the
    sounding object looks like, which a per-frame mask needs to choose between objects of
    different appearance. Pooled over many pixels, the keys average out the synchrony's
    per-pixel errors. The sounding region carries no gradient.

    The queue (MoCo's, He et al., CVPR 2020) holds each scale's sounding keys of earlier
    batches, detached: a batch of 4 clips offers 3 other clips, so a class rarely meets the
    one whose sound it is most easily confused with. It is training state only (not in the
    state dict: a resumed run refills it within ``queue_frames / (B * T)`` steps), filled by
    :meth:`on_scale` (which :meth:`of_output` calls), never by :meth:`forward`.

    Args:
        weight: its weight in the training loss (> 0).
        window: frames of the teacher's synchrony (odd, >= 3).
        positive_threshold: synchrony at or above which a pixel counts as sounding.
        contrast_temperature: the cosine is divided by it to give the logits (> 0).
        teaches: what the term's gradient reaches (:data:`TEACHES`, as in
            :class:`SynchronyTeacherLoss`).
        queue_frames: earlier frames' sounding keys kept per scale as more negatives (0: the
            batch's only).

    ``forward(keys (B, T, E, h, w), query (B, T, E), synchrony (B, T, 1, h', w'), anchors (B,)
    bool, queued: None or (keys (Q, E), which are keys (Q,) bool)) -> scalar``: one scale;
    keys, query and the queued keys unit length along E; 0 where no anchor frame has both a
    sounding key and a negative.
    """

    def __init__(
        self,
        weight: float = 0.01,
        window: int = 9,
        positive_threshold: float = 0.5,
        contrast_temperature: float = 0.1,
        teaches: str = "network",
        queue_frames: int = 0,
    ) -> None:
        super().__init__(weight, window, positive_threshold, teaches)
        if contrast_temperature <= 0:
            raise ValueError(f"contrast_temperature must be > 0, got {contrast_temperature}")
        if queue_frames < 0:
            raise ValueError(f"queue_frames must be >= 0, got {queue_frames}")
        self.contrast_temperature = contrast_temperature
        self.queue_frames = queue_frames
        # Per scale, finest first: the queued keys (Q, E), newest first, and which are keys
        # (a frame without a sounding pixel keeps its place, so no step asks the device how
        # many it had).
        self.queues: list[tuple[Tensor, Tensor]] = []

    def sounding_keys(self, keys: Tensor, synchrony: Tensor) -> tuple[Tensor, Tensor]:
        """Each frame's sounding key (B * T, E), unit length (zero without a sounding pixel),
        in float32 at least, and whether it has one (B * T,) bool."""
        precision = torch.promote_types(keys.dtype, torch.float32)
        sounding = (at_scale(synchrony, keys) >= self.positive_threshold).to(precision)
        pooled = torch.einsum("btehw,bthw->bte", keys.to(precision),
                              sounding.unflatten(-1, keys.shape[-2:]))
        return F.normalize(pooled, dim=-1).flatten(0, 1), sounding.amax(-1).bool().flatten()

    def forward(
        self,
        keys: Tensor,
        query: Tensor,
        synchrony: Tensor,
        anchors: Tensor,
        queued: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        batch, frames = query.shape[:2]
        if (keys.shape[:3] != query.shape or synchrony.shape[:3] != (batch, frames, 1)
                or anchors.shape != (batch,)
                or (queued is not None and queued[0].shape[1:] != query.shape[2:])):
            raise ValueError(
                f"keys (B, T, E, h, w), query (B, T, E), synchrony (B, T, 1, h', w'), anchors "
                f"(B,), queued keys (Q, E): got {tuple(keys.shape)}, {tuple(query.shape)}, "
                f"{tuple(synchrony.shape)}, {tuple(anchors.shape)}, "
                f"{None if queued is None else tuple(queued[0].shape)}"
            )
        with torch.autocast(device_type=keys.device.type, enabled=False):
            sounding_keys, has_key = self.sounding_keys(keys, synchrony)
            if queued is not None:
                sounding_keys = torch.cat([sounding_keys, queued[0].to(sounding_keys.dtype)])
                has_key = torch.cat([has_key, queued[1]])
            query = query.to(sounding_keys.dtype).flatten(0, 1)
            logits = query @ sounding_keys.T  # (B * T, B * T + Q)
            # The own frame always (so no row is all -inf); other clips' frames with a key and
            # the queue as negatives, never the own clip's other frames.
            clip = torch.arange(batch, device=keys.device).repeat_interleave(frames)
            clip = torch.cat([clip, clip.new_full((len(sounding_keys) - len(clip),), -1)])
            own = torch.eye(*logits.shape, dtype=torch.bool, device=keys.device)
            negative = has_key[None, :] & (clip[: len(query), None] != clip[None, :])
            logits = (logits / self.contrast_temperature).masked_fill(~(own | negative), -torch.inf)
            loss = -torch.diagonal(F.log_softmax(logits, dim=1))
            # Frames of clips that hear their own sound, with a sounding key and a negative:
            # counted without asking the device (a host sync every training step).
            scored = (anchors.repeat_interleave(frames) & has_key[: len(query)]
                      & negative.any(dim=1)).to(logits.dtype)
            return (loss * scored).sum() / scored.sum().clamp(min=1)

    def on_scale(
        self,
        scale: int,
        keys: Tensor,
        query: Tensor,
        synchrony: Tensor,
        luma_std: Tensor,
        anchors: Tensor,
    ) -> Tensor:
        """As :meth:`forward` with the scale's queue, which it then refills: this batch's
        sounding keys first, cut to :attr:`queue_frames`."""
        if not self.queue_frames:
            return self(keys, query, synchrony, anchors)
        queued = self.queues[scale] if scale < len(self.queues) else None
        term = self(keys, query, synchrony, anchors, queued)
        with torch.no_grad():
            fresh = self.sounding_keys(keys, synchrony)
            kept = fresh if queued is None else tuple(
                torch.cat(pair) for pair in zip(fresh, queued, strict=True)
            )
        kept = (kept[0][: self.queue_frames], kept[1][: self.queue_frames])
        if scale < len(self.queues):
            self.queues[scale] = kept
        else:
            self.queues.append(kept)
        return term
