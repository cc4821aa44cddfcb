"""Audio encoder: per-frame log-mel windows -> per-frame audio embeddings.

A small VGGish-like 2-D CNN over each frame's log-mel window::

    embedding = AudioEncoder(embed_dim=128)(log_mel)   # (B, T, n_mels, n_frames) -> (B, T, D)

Input normalisation is part of the module and is a fixed affine map chosen so that silence is
exactly zero: ``(log_mel - log(1e-6)) / log_mel_scale``. Two reasons for this choice:

- silence (the constant ``log(1e-6)`` in every bin) is a normal input here (files without
  audio, audio dropout); per-window standardisation would divide by a zero standard deviation,
  and any epsilon would make silence's embedding depend on numerical noise. With the fixed map
  silence is the all-zero image, indistinguishable from the convolutions' zero padding, and its
  embedding is a well-defined, finite function of the biases alone;
- the loudness of each window is kept (standardisation would remove it), and loudness is what
  moves in step with a sounding object's appearance, i.e. what localises it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from avvsr.data.audio_features import SILENCE_LOG_MEL


def conv_norm_relu(in_channels: int, out_channels: int, norm_groups: int | None) -> nn.Sequential:
    """3x3 conv (same size), optional GroupNorm, ReLU: ``(N, in, H, W) -> (N, out, H, W)``."""
    if norm_groups is None:
        return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU())
    if out_channels % norm_groups:
        raise ValueError(f"width {out_channels} is not divisible by norm_groups={norm_groups}")
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(norm_groups, out_channels),
        nn.ReLU(),
    )


class AudioEncoder(nn.Module):
    """Log-mel windows ``(B, T, n_mels, n_frames)`` -> embeddings ``(B, T, embed_dim)``.

    Args:
        embed_dim: D, the size of each frame's embedding.
        widths: output channels of each stage; a stage is ``convs_per_stage`` conv-norm-ReLU
            layers followed by 2x2 max pooling (ceil mode, so any size >= 1 works).
        convs_per_stage: convolutions in each stage.
        norm_groups: GroupNorm groups in every conv layer (each width must be divisible by it);
            ``None`` for no normalisation. GroupNorm, not BatchNorm: it treats every window on
            its own, so a batch that mixes silent and sounding clips, or a small ``B*T``, does not
            change an embedding.
        frequency_bands: after the stages, features are averaged over time and pooled to this
            many mel bands, keeping coarse frequency position (which harmonic is where); the
            flattened ``(widths[-1] * frequency_bands)`` vector is mapped linearly to D.
        log_mel_scale: the divisor of the input map ``(x - log(1e-6)) / log_mel_scale`` (natural
            log units). With the default ``LogMel`` a full-scale sine peaks 23 above silence
            (9.4 vs -13.8), so the default 10 maps inputs to about [0, 2.3].
    """

    def __init__(
        self,
        embed_dim: int = 128,
        widths: Sequence[int] = (32, 64, 128),
        convs_per_stage: int = 1,
        norm_groups: int | None = 8,
        frequency_bands: int = 4,
        log_mel_scale: float = 10.0,
    ) -> None:
        super().__init__()
        if not widths or convs_per_stage < 1:
            raise ValueError("AudioEncoder needs at least one stage of at least one conv")
        self.embed_dim = embed_dim
        self.log_mel_scale = log_mel_scale
        layers: list[nn.Module] = []
        in_channels = 1
        for width in widths:
            for _ in range(convs_per_stage):
                layers.append(conv_norm_relu(in_channels, width, norm_groups))
                in_channels = width
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d((frequency_bands, 1))
        self.head = nn.Linear(in_channels * frequency_bands, embed_dim)

    def forward(self, log_mel: Tensor) -> Tensor:
        """``log_mel`` (B, T, n_mels, n_frames), natural log of mel power -> (B, T, embed_dim)."""
        if log_mel.ndim != 4:
            raise ValueError(
                f"expected log-mel windows (B, T, n_mels, n_frames), got {tuple(log_mel.shape)}"
            )
        windows = log_mel.flatten(0, 1).unsqueeze(1)  # (B*T, 1, n_mels, n_frames)
        features = self.stages((windows - SILENCE_LOG_MEL) / self.log_mel_scale)
        embedding = self.head(self.pool(features).flatten(1))
        return embedding.unflatten(0, log_mel.shape[:2])
