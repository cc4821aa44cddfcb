"""The one interface every VSR backbone implements, including the fusion point.

A backbone maps low-resolution frames to high-resolution frames::

    sr = backbone(lq, feature_hook=None)      # lq (B, T, 3, h, w) -> sr (B, T, 3, s*h, s*w)

The *fusion point* is the per-frame feature map of every output frame after
propagation/alignment and before reconstruction (upsampling). A backbone passes every frame's
features through ``feature_hook`` once, in consecutive groups of frames, in order::

    feat = feature_hook(feat, frames)         # (B, T', C, h, w) -> (B, T', C, h, w)

where ``frames`` is the ``slice`` of the clip's T frames that ``feat`` holds (``T'`` of them),
``C == backbone.fusion_channels`` and ``(h, w)`` the LR size. While autograd records
(``torch.is_grad_enabled()``: training) there is one call, ``frames == slice(0, T)``; otherwise
(inference) one call per group of ``backbone.inference_group`` frames, and each group is
reconstructed before the next is hooked, so memory at the output resolution does not grow with
T. A hook must therefore treat frames independently (MS-AVF does: it works on ``B*T'`` frames);
then the output is the same whatever the grouping. The hook is how MS-AVF (or any other fusion)
plugs in without editing a backbone: with ``feature_hook=None`` the backbone is the plain
published model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch import Tensor, nn

FeatureHook = Callable[[Tensor, slice], Tensor]
"""Maps fusion-point features ``(B, T', C, h, w)`` of the clip's frames ``slice`` to features of
the same shape."""


class VSRBackbone(nn.Module):
    """Base class of the backbones: see the module docstring for the contract.

    Subclasses set ``scale`` (upsampling factor) and ``fusion_channels`` (C at the fusion point)
    and implement :meth:`forward`. ``inference_group`` (frames reconstructed at once when
    autograd is off; default 1, the least memory) may be set on an
    instance, e.g. higher on a GPU. Backbones with an optical-flow network override
    :meth:`flow_parameters` so training can freeze it at first and give it its own learning rate.
    """

    scale: int
    fusion_channels: int
    inference_group: int = 1

    def forward(self, lq: Tensor, feature_hook: FeatureHook | None = None) -> Tensor:
        """``lq`` (B, T, 3, h, w) in [0, 1] -> (B, T, 3, scale*h, scale*w)."""
        raise NotImplementedError

    def flow_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the optical-flow sub-network (none by default)."""
        return iter(())
