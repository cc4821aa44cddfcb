"""The one interface every VSR backbone implements, including the fusion point.

A backbone maps low-resolution frames to high-resolution frames::

    sr = backbone(lq, feature_hook=None)      # lq (B, T, 3, h, w) -> sr (B, T, 3, s*h, s*w)

The *fusion point* is the per-frame feature map of every output frame after
propagation/alignment and before reconstruction (upsampling). A backbone calls
``feature_hook`` exactly once per forward, on all frames at once::

    feat = feature_hook(feat)                 # (B, T, C, h, w) -> (B, T, C, h, w)

with ``C == backbone.fusion_channels`` and ``(h, w)`` the LR size. The hook is how MS-AVF (or
any other fusion) plugs in without editing a backbone: with ``feature_hook=None`` the backbone is
the plain published model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch import Tensor, nn

FeatureHook = Callable[[Tensor], Tensor]
"""Maps fusion-point features ``(B, T, C, h, w)`` to features of the same shape."""


class VSRBackbone(nn.Module):
    """Base class of the backbones: see the module docstring for the contract.

    Subclasses set ``scale`` (upsampling factor) and ``fusion_channels`` (C at the fusion point)
    and implement :meth:`forward`. Backbones with an optical-flow network override
    :meth:`flow_parameters` so training can freeze it at first and give it its own learning rate.
    """

    scale: int
    fusion_channels: int

    def forward(self, lq: Tensor, feature_hook: FeatureHook | None = None) -> Tensor:
        """``lq`` (B, T, 3, h, w) in [0, 1] -> (B, T, 3, scale*h, scale*w)."""
        raise NotImplementedError

    def flow_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the optical-flow sub-network (none by default)."""
        return iter(())
