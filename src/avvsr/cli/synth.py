"""``avvsr-synth``: generate the synthetic audio-visual benchmark (``make data``).

Every :class:`~avvsr.data.synthetic.SynthConfig` field is an option (``num_train`` is
``--num-train``), with the same default. Example::

    avvsr-synth --out data/synth_av --num-train 32 --seed 1
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: ``--out``, ``--overwrite``, ``--no-progress`` and one option per
    :class:`SynthConfig` field."""
    from avvsr.data.synthetic import SynthConfig

    parser = argparse.ArgumentParser(
        prog="avvsr-synth",
        description="Generate the synthetic audio-visual VSR benchmark (videos, label maps, "
        "manifest.json). Idempotent: an existing set with the same parameters is kept.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="folder of the set (created atomically)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing set made with other parameters")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    config_options = parser.add_argument_group("generation parameters (SynthConfig)")
    for config_field in dataclasses.fields(SynthConfig):
        config_options.add_argument(
            "--" + config_field.name.replace("_", "-"),
            dest=config_field.name,
            type=type(config_field.default),
            default=config_field.default,
            metavar=type(config_field.default).__name__.upper(),
            help=config_field.metadata["help"],
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, generate the set; returns the exit status (0 on success)."""
    from avvsr.cli.common import exit_on_bad_input
    from avvsr.data.synthetic import SynthConfig, generate

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SynthConfig)}
    try:
        config = SynthConfig(**values)
    except ValueError as error:
        parser.error(str(error))
    with exit_on_bad_input("avvsr-synth"):
        generate(config, args.out, overwrite=args.overwrite, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
