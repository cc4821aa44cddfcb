"""MS-AVF: multi-scale audio-visual fusion, and its ablation variants (options, not copies).

Interface (used by ``AVVSRNet`` at the backbone's fusion point)::

    fusion = MSAVF(visual_channels=C, audio_dim=D, scales=3)
    fused, masks = fusion(feat, audio)   # feat (N, C, h, w), audio (N, D)
    # fused (N, C, h, w); masks: one (N, 1, h_s, w_s) in [0, 1] per scale, finest first
    fused, masks, spaces = fusion(feat, audio, return_embeddings=True)
    # spaces: per scale, finest first, the AttentionEmbeddings each mask is computed from

How it works, per frame:

1. *Visual pyramid*: a 3x3 conv maps ``feat`` to ``hidden_channels`` (scale 0, full LR feature
   size); each next scale is a stride-2 3x3 conv of the previous one (``ceil(h / 2)``, so odd
   and tiny sizes work down to 1x1).
2. *Audio-guided attention* at each scale: the visual features (1x1 conv) and the audio
   embedding (linear) are projected into a shared ``embed_dim`` space and L2-normalised; the mask
   is ``sigmoid(exp(log_temperature) * cosine + bias)`` with learnable temperature and bias per
   scale (as in LVS and the audio-visual inpainting net). The temperature starts at 1, so every
   mask starts undecided (in ``sigmoid([-1, 1])``, about 0.27-0.73) whatever the random
   initialisation: a mask that starts closed on the objects gates the audio out there, and so
   the gradient that would teach it to open (see ``initial_temperature``). With
   ``synchrony_window`` each logit also adds, times a learned weight per scale, the
   audio-visual synchrony (:mod:`avvsr.models.synchrony`: each LR pixel's correlation with the
   loudness over the frames around it), area-averaged to the scale: the one input of the masks
   that relates a frame to its neighbours.
3. *Fusion under the mask*: a FiLM/SFT-like modulation from the audio, gated per pixel by the
   mask: ``v * (1 + mask * gamma(audio)) + mask * beta(audio)``.
4. *Top-down*: from the coarsest scale, each fused level is upsampled (bilinear, to the exact
   finer size), passed through a 3x3 conv + LeakyReLU and added to the next finer fused level,
   down to scale 0 (a feature pyramid's top-down path).
5. *Zero-initialised residual*: ``fused = feat + out_proj(top)``, with ``out_proj`` (1x1 conv)
   zero-initialised, so at initialisation the output equals the input exactly (AVSBench TPAVI).

Ablations: ``scales=1`` (single scale); ``top_down=False`` (each coarser fused level is
upsampled straight to scale 0 through its own conv, and the levels are summed);
``attention=False`` (the "concat" baseline: at each scale the audio projection is tiled over
space, concatenated with the visual features and mixed by a 1x1 conv; no mask, so the mask list
is empty). Every variant keeps the zero-initialised residual.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avvsr.models.synchrony import AudioVisualSynchrony

MAX_SCALES = 4


def conv3x3_act(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv (padding 1, output size ``ceil(size / stride)``) + LeakyReLU(0.1)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
        nn.LeakyReLU(0.1),
    )


@dataclass
class AttentionEmbeddings:
    """The shared audio-visual space one scale's attention mask is computed in.

    ``keys`` (N, E, h, w): the projected visual features, unit length along E; ``query``
    (N, E): the projected audio embedding, unit length. The scale's mask is
    ``sigmoid(temperature * cosine + bias)`` of ``cosine = einsum("nehw,ne->nhw", keys, query)``,
    so any other frame's audio (another row of ``query``) can be scored against these keys
    (the self-supervised localisation loss does). Float32 at least (see AudioGuidedFiLM).

    ``projection_keys`` / ``projection_query``: the same values, whose gradient reaches only
    the two projections (their inputs, the visual features and the audio embedding, detached),
    so that a term on them trains what the attention compares and nothing the reconstruction
    draws with; None unless asked for (``AudioGuidedFiLM(..., projection_embeddings=True)``).
    """

    keys: Tensor
    query: Tensor
    projection_keys: Tensor | None = None
    projection_query: Tensor | None = None

    def map(self, function: Callable[[Tensor], Tensor]) -> AttentionEmbeddings:
        """The embeddings with ``function`` applied to each tensor (None stays None)."""
        return AttentionEmbeddings(
            *(None if x is None else function(x) for x in astuple_shallow(self))
        )

    @staticmethod
    def cat(parts: Sequence[AttentionEmbeddings], dim: int) -> AttentionEmbeddings:
        """The embeddings of ``parts`` (one scale, groups of frames) joined along ``dim``."""
        columns = zip(*(astuple_shallow(part) for part in parts), strict=True)
        return AttentionEmbeddings(
            *(None if x[0] is None else torch.cat(x, dim=dim) for x in columns)
        )


def astuple_shallow(space: AttentionEmbeddings) -> tuple[Tensor | None, ...]:
    """The fields of ``space`` in order, not copied (``dataclasses.astuple`` deep-copies)."""
    return tuple(getattr(space, f.name) for f in fields(space))


class AudioGuidedFiLM(nn.Module):
    """One scale's audio-guided attention and mask-gated FiLM.

    ``(visual (N, K, h, w), audio (N, D)) -> (fused (N, K, h, w), mask (N, 1, h, w) in [0, 1],
    the AttentionEmbeddings the mask is computed from)``.
    """

    def __init__(
        self,
        channels: int,
        audio_dim: int,
        embed_dim: int,
        initial_temperature: float,
        scalar_rate: float = 1.0,
        initial_synchrony_weight: float | None = None,
    ) -> None:
        super().__init__()
        if scalar_rate <= 0:
            raise ValueError(f"scalar_rate must be > 0, got {scalar_rate}")
        self.scalar_rate = scalar_rate
        self.audio_proj = nn.Linear(audio_dim, embed_dim)
        self.visual_proj = nn.Conv2d(channels, embed_dim, 1)
        # Stored divided by scalar_rate (see MSAVF): the log-temperature is rate * parameter.
        self.log_temperature = nn.Parameter(
            torch.tensor(math.log(initial_temperature) / scalar_rate)
        )
        self.logit_bias = nn.Parameter(torch.zeros(()))
        # The weight of the audio-visual synchrony in the mask's logit (None: not used).
        self.stored_synchrony_weight = (
            None
            if initial_synchrony_weight is None
            else nn.Parameter(torch.tensor(initial_synchrony_weight / scalar_rate))
        )
        self.film = nn.Linear(audio_dim, 2 * channels)

    def forward(
        self,
        visual: Tensor,
        audio: Tensor,
        *,
        synchrony: Tensor | None = None,
        projection_embeddings: bool = False,
    ) -> tuple[Tensor, Tensor, AttentionEmbeddings]:
        """``synchrony`` (N, 1, h', w'), the LR frames' :mod:`~avvsr.models.synchrony`, is
        required when the module was built with a synchrony weight and refused otherwise; it
        is area-averaged to this scale's size and added to the logits times that weight.
        ``projection_embeddings``: also compute the embeddings' ``projection_keys`` and
        ``projection_query`` (two more projections of detached inputs)."""
        if (synchrony is None) != (self.stored_synchrony_weight is None):
            raise ValueError(
                "this attention adds the audio-visual synchrony to its masks: pass `synchrony`"
                if synchrony is None
                else "this attention was built without a synchrony weight: `synchrony` unused"
            )
        # The similarity is computed in float32 at least: normalising float16 vectors underflows
        # (and a float64 model stays float64, so its output does not depend on the batch).
        # Under autocast too (which would run the einsum in the lower precision).
        precision = torch.promote_types(visual.dtype, torch.float32)
        space = AttentionEmbeddings(*self.embed(visual, audio, precision))
        if projection_embeddings:
            space.projection_keys, space.projection_query = self.embed(
                visual.detach(), audio.detach(), precision
            )
        keys, query = space.keys, space.query
        with torch.autocast(device_type=visual.device.type, enabled=False):
            cosine = torch.einsum("nchw,nc->nhw", keys, query).unsqueeze(1)
            logits = self.temperature * cosine + self.bias
            if synchrony is not None:
                at_scale = F.adaptive_avg_pool2d(synchrony.to(precision), visual.shape[-2:])
                logits = logits + self.synchrony_weight * at_scale
        mask = torch.sigmoid(logits).to(visual.dtype)
        return self.modulate(visual, audio, mask), mask, space

    def embed(self, visual: Tensor, audio: Tensor, precision: torch.dtype) -> tuple[Tensor, Tensor]:
        """Keys (N, E, h, w) and query (N, E) of ``visual`` (N, K, h, w) and ``audio`` (N, D),
        unit length along E, in ``precision``."""
        keys = F.normalize(self.visual_proj(visual).to(precision), dim=1)
        query = F.normalize(self.audio_proj(audio).to(precision), dim=1)
        return keys, query

    @property
    def temperature(self) -> Tensor:
        """The multiplier of the cosine inside the mask's sigmoid (a 0-d tensor)."""
        return (self.scalar_rate * self.log_temperature).exp()

    @property
    def bias(self) -> Tensor:
        """The mask's logit bias (a 0-d tensor)."""
        return self.scalar_rate * self.logit_bias

    @property
    def synchrony_weight(self) -> Tensor | None:
        """The multiplier of the synchrony inside the mask's sigmoid (a 0-d tensor; None when
        the synchrony is not used)."""
        if self.stored_synchrony_weight is None:
            return None
        return self.scalar_rate * self.stored_synchrony_weight

    def modulate(self, visual: Tensor, audio: Tensor, mask: Tensor) -> Tensor:
        """The audio's FiLM of ``visual`` (N, K, h, w) gated per pixel by ``mask``
        (N, 1, h, w): ``visual * (1 + mask * gamma) + mask * beta``."""
        gamma, beta = self.film(audio)[:, :, None, None].chunk(2, dim=1)
        return visual * (1 + mask * gamma) + mask * beta


class TiledConcatFusion(nn.Module):
    """One scale of the concat baseline: the projected audio, tiled over space, concatenated
    with the visual features and mixed by a 1x1 conv (residual).

    ``(visual (N, K, h, w), audio (N, D)) -> (fused (N, K, h, w), None, None)`` (no mask).
    """

    def __init__(self, channels: int, audio_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.audio_proj = nn.Linear(audio_dim, embed_dim)
        self.mix = nn.Sequential(nn.Conv2d(channels + embed_dim, channels, 1), nn.LeakyReLU(0.1))

    def forward(self, visual: Tensor, audio: Tensor) -> tuple[Tensor, None, None]:
        tiled = self.audio_proj(audio)[:, :, None, None].expand(-1, -1, *visual.shape[-2:])
        return visual + self.mix(torch.cat([visual, tiled], dim=1)), None, None


class MSAVF(nn.Module):
    """Multi-scale audio-visual fusion (see the module docstring).

    Args:
        visual_channels: C of the fusion-point features.
        audio_dim: D of the audio embedding.
        scales: number of pyramid scales S, 1..4.
        hidden_channels: width of the visual pyramid; ``None``: half of ``visual_channels``, so
            the module stays light next to any backbone (at C=64, D=128, 3 scales: 98k
            parameters and 1.6% of the multiply-adds of BasicVSR's 60 convs per frame).
        embed_dim: width of the shared audio-visual space of the attention (and of the audio
            projection that is tiled in the concat variant); ``None``: ``hidden_channels``.
        top_down: fuse coarse to fine layer by layer (else: each level straight to scale 0).
        attention: audio-guided mask + gated FiLM (else: tiled-concat baseline, no masks).
        initial_temperature: initial multiplier of the cosine similarity inside the sigmoid.
            The default 1 keeps every mask within about 0.27-0.73 at initialisation. At 10 the
            initial masks saturated one way or the other depending on the seed: on
            ``synth_lattice`` (tiny BasicVSR, a validation batch) the finest mask averaged
            0.49, 0.32 and 0.12 over the sound source for seeds 0, 1 and 2, and only seed 0
            took the audio up within 3,000 steps (experiments/av_ablation/NOTES.md).
        scalar_rate: each mask's log-temperature and logit bias are stored divided by this, so
            that they move this many times faster under Adam, which moves every weight by
            about the learning rate per step whatever the scale of its gradient. At 1, in
            2,000 steps at lr 5e-4 the study's temperatures ended at 1.02-1.09 (masks confined
            to about 0.25-0.75; experiments/av_ablation/diagnostics/mask_scalars.py).
        synchrony_window: frames of the :class:`~avvsr.models.synchrony.AudioVisualSynchrony`
            (the LR luma's correlation with the loudness around each frame) that every mask adds
            to its logit, times a learned weight per scale; ``None``: masks from the per-frame
            similarity alone (the paper's design). Needs ``attention``. The caller computes the
            map with ``self.synchrony`` and passes it to :meth:`forward` (AVVSRNet does).
        initial_synchrony_weight: that weight's initial value (stored divided by
            ``scalar_rate``, like the temperature): at 2 a pixel in full step with the sound
            starts with its mask's logit 2 higher than one out of step.
    """

    def __init__(
        self,
        visual_channels: int,
        audio_dim: int,
        scales: int = 3,
        hidden_channels: int | None = None,
        embed_dim: int | None = None,
        top_down: bool = True,
        attention: bool = True,
        initial_temperature: float = 1.0,
        scalar_rate: float = 1.0,
        synchrony_window: int | None = None,
        initial_synchrony_weight: float = 2.0,
    ) -> None:
        super().__init__()
        if not 1 <= scales <= MAX_SCALES:
            raise ValueError(f"scales must be in 1..{MAX_SCALES}, got {scales}")
        if synchrony_window is not None and not attention:
            raise ValueError("synchrony_window needs attention: the concat baseline has no masks")
        self.synchrony = (
            None if synchrony_window is None else AudioVisualSynchrony(synchrony_window)
        )
        synchrony_weight = None if synchrony_window is None else initial_synchrony_weight
        self.scales = scales
        self.top_down = top_down
        self.attention = attention
        if hidden_channels is None:
            hidden_channels = max(1, visual_channels // 2)
        if embed_dim is None:
            embed_dim = hidden_channels
        self.stem = conv3x3_act(visual_channels, hidden_channels)
        self.downsample = nn.ModuleList(
            conv3x3_act(hidden_channels, hidden_channels, stride=2) for _ in range(scales - 1)
        )
        self.fuse = nn.ModuleList(
            AudioGuidedFiLM(
                hidden_channels, audio_dim, embed_dim, initial_temperature, scalar_rate,
                synchrony_weight,
            )
            if attention
            else TiledConcatFusion(hidden_channels, audio_dim, embed_dim)
            for _ in range(scales)
        )
        # lift[s - 1] carries the fused level s up to level s - 1 (top-down) or to level 0.
        self.lift = nn.ModuleList(
            conv3x3_act(hidden_channels, hidden_channels) for _ in range(scales - 1)
        )
        self.out_proj = nn.Conv2d(hidden_channels, visual_channels, 1)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self,
        feat: Tensor,
        audio: Tensor,
        *,
        synchrony: Tensor | None = None,
        return_embeddings: bool = False,
        projection_embeddings: bool = False,
    ) -> tuple[Tensor, list[Tensor]] | tuple[Tensor, list[Tensor], list[AttentionEmbeddings]]:
        """``feat`` (N, C, h, w), ``audio`` (N, D) -> (fused (N, C, h, w), masks), and with
        ``return_embeddings`` also the :class:`AttentionEmbeddings` of each mask, with their
        ``projection_keys`` / ``projection_query`` if ``projection_embeddings``.
        ``synchrony`` (N, 1, h, w): ``self.synchrony``'s map of these frames, required when
        the module has one (``synchrony_window``), refused otherwise.

        ``masks``: per scale, finest first, ``(N, 1, h_s, w_s)`` in [0, 1] with
        ``h_0 = h`` and ``h_s = ceil(h_{s-1} / 2)``; empty when ``attention=False`` (and so
        are the embeddings). Asking for the embeddings changes nothing else.
        """
        pyramid = [self.stem(feat)]
        for down in self.downsample:
            pyramid.append(down(pyramid[-1]))
        fused, masks, spaces = [], [], []
        if synchrony is not None and self.synchrony is None:
            raise ValueError("this fusion was built without synchrony_window: `synchrony` unused")
        if projection_embeddings and not (return_embeddings and self.attention):
            raise ValueError("projection_embeddings are part of the attention's embeddings: "
                             "pass return_embeddings=True to a fusion with attention")
        extra = {} if self.synchrony is None else {"synchrony": synchrony}
        if projection_embeddings:
            extra["projection_embeddings"] = True
        for level, fuse in zip(pyramid, self.fuse, strict=True):
            level_fused, mask, space = fuse(level, audio, **extra)
            fused.append(level_fused)
            if mask is not None:
                masks.append(mask)
                spaces.append(space)
        if self.top_down:
            top = fused[-1]
            for finer, lift in zip(reversed(fused[:-1]), reversed(self.lift), strict=True):
                top = finer + lift(upsample_to(top, finer))
        else:
            top = fused[0]
            for coarser, lift in zip(fused[1:], self.lift, strict=True):
                top = top + lift(upsample_to(coarser, fused[0]))
        output = feat + self.out_proj(top)
        return (output, masks, spaces) if return_embeddings else (output, masks)


def upsample_to(x: Tensor, reference: Tensor) -> Tensor:
    """Bilinear resize of ``x`` (N, K, h, w) to the spatial size of ``reference`` (N, *, H, W)."""
    return F.interpolate(x, size=reference.shape[-2:], mode="bilinear", align_corners=False)
