"""``avvsr-export CKPT OUT``: write a training checkpoint's network weights alone (safetensors).

OUT holds the network's tensors, with the model config and the audio-feature settings as JSON
metadata, so ``avvsr-upscale --ckpt OUT`` and ``avvsr-visualize --ckpt OUT`` rebuild the model
from it alone. No optimizer state, no pickled objects: it loads without running code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avvsr-export",
        description="Export the network weights of an avvsr training checkpoint.",
    )
    parser.add_argument("checkpoint", help="checkpoint written by avvsr-train (.ckpt)")
    parser.add_argument("output", help="weights file to write (.safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns 0, or exits with status 2 and a message on bad input."""
    from pathlib import Path

    from avvsr.atomic import refuse_existing
    from avvsr.checkpoint import EXPORT_SUFFIX, load_model, write_export
    from avvsr.cli.common import exit_on_bad_input
    from avvsr.errors import WeightsError

    args = build_parser().parse_args(argv)
    output = Path(args.output)
    with exit_on_bad_input("avvsr-export"):
        if output.suffix != EXPORT_SUFFIX:  # checked before the (slower) model load
            raise WeightsError(output, f"exports are safetensors files; name it *{EXPORT_SUFFIX}")
        refuse_existing(output, args.overwrite)
        path = write_export(load_model(args.checkpoint), output, overwrite=args.overwrite)
    print(f"{path}: network weights with model config and audio-feature settings", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
