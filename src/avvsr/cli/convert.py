"""``avvsr-convert SRC OUT``: a published BasicSR / mmagic / SPyNet checkpoint as an avvsr file.

SRC is detected (format and network from the keys, sizes from the shapes; every tensor is
checked, see :mod:`avvsr.models.convert`); OUT is an ``avvsr-export`` file of the backbone
without fusion, so ``avvsr-upscale --ckpt OUT`` runs it and ``model.init_weights=OUT`` starts
a fusion model from it (MS-AVF at identity). SPyNet alone becomes a file of the flow network's
weights, for ``model.init_weights``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avvsr-convert",
        description="Convert a published BasicSR / mmagic / SPyNet checkpoint for avvsr.",
    )
    parser.add_argument("source", help="BasicSR (.pth with params / params_ema), mmagic / "
                        "mmediting (state_dict of generator.*) or SPyNet checkpoint")
    parser.add_argument("output", help="avvsr file to write (.safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns 0, or exits with status 2 and a message on bad input."""
    from avvsr.checkpoint import convert_to_export
    from avvsr.cli.common import exit_on_bad_input

    args = build_parser().parse_args(argv)
    with exit_on_bad_input("avvsr-convert"):
        converted = convert_to_export(args.source, args.output, overwrite=args.overwrite)
    settings = [f"model.backbone.{key}={value}"
                for key, value in converted.backbone_overrides.items()]
    wrapper = f" ({converted.wrapper_key})" if converted.wrapper_key else ""
    print(f"{args.output}: {converted.source_format} {converted.backbone}{wrapper}, "
          f"{len(converted.state)} tensors", file=sys.stderr)
    if converted.backbone == "spynet":
        print(f"start a backbone's flow network from it: model.init_weights={args.output}",
              file=sys.stderr)
    else:
        command = ["avvsr-train", f"model/backbone={converted.backbone}", "model/fusion=msavf",
                   f"model.init_weights={args.output}", *settings]
        print(f"fine-tune with audio: {' '.join(command)} data=...", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
