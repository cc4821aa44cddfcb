"""Speed levers for running a network, mostly for GPUs: none changes what the network computes.

    net = Acceleration(channels_last=True, cudnn_benchmark=True, inference_group=8).apply(net)

- ``channels_last``: convolution weights in NHWC layout (``torch.channels_last``); convolutions
  then produce NHWC features, the layout tensor cores and oneDNN prefer. On by default in
  ``avvsr-upscale``: on a 2-core CPU it made every paper-size backbone 3-20% faster
  (``benchmarks/reference_parity.py --sections speed``, README).
- ``cudnn_benchmark``: cuDNN times its algorithms for each new input shape and keeps the
  fastest (``torch.backends.cudnn.benchmark``; global, and a no-op without CUDA). Worth it when
  the shapes repeat, as in chunked inference.
- ``compile``: ``torch.compile`` (in place, so state dicts keep their keys) of each frame-wise
  unit of the network (:data:`COMPILED_UNITS`: residual trunks, SPyNet, alignment and fusion
  blocks, the head, MS-AVF), not of the recurrent loops around them: a unit sees the same shapes
  at every frame, so it compiles once per frame size instead of once per clip length.
- ``inference_group``: frames a backbone reconstructs at once when autograd is off (see
  :mod:`avvsr.models.backbones.base`); 1 needs the least memory, a GPU may prefer more.

Mixed precision is not here: it is an autocast around the call (the upscaler's
``--precision bf16``, Lightning's ``precision`` in training).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from avvsr.models.backbones.base import VSRBackbone
from avvsr.models.backbones.basicvsrpp import SecondOrderDeformableAlignment
from avvsr.models.backbones.blocks import (
    ConvResidualBlocks,
    PixelShuffleHead,
    ResidualBlockNoBN,
    SPyNet,
)
from avvsr.models.backbones.edvr import PCDAlignment, TSAFusion
from avvsr.models.fusion import MSAVF

COMPILED_UNITS = (
    ConvResidualBlocks,
    ResidualBlockNoBN,
    PixelShuffleHead,
    SPyNet,
    SecondOrderDeformableAlignment,
    PCDAlignment,
    TSAFusion,
    MSAVF,
)
"""Module types that ``compile`` compiles (the outermost of them on each path)."""


@dataclass(frozen=True)
class Acceleration:
    """Which levers to pull (all off by default: see the module docstring)."""

    channels_last: bool = False
    cudnn_benchmark: bool = False
    compile: bool = False
    inference_group: int | None = None  # None: the backbone's own (1)

    def __post_init__(self) -> None:
        if self.inference_group is not None and self.inference_group < 1:
            raise ValueError(f"inference_group must be >= 1, got {self.inference_group}")

    def apply(self, net: nn.Module) -> nn.Module:
        """Pull the levers on ``net`` (in place) and return it."""
        if self.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        if self.channels_last:
            net.to(memory_format=torch.channels_last)
        if self.inference_group is not None:
            for module in net.modules():
                if isinstance(module, VSRBackbone):
                    module.inference_group = self.inference_group
        if self.compile:
            compile_units(net)
        return net


def compile_units(module: nn.Module) -> None:
    """``torch.compile`` in place every :data:`COMPILED_UNITS` module under ``module``,
    not descending into a compiled one."""
    if isinstance(module, COMPILED_UNITS):
        module.compile()
        return
    for child in module.children():
        compile_units(child)
