"""``make reproduce-table``: from nothing to ``experiments/<study>/results.md``.

1. generates the study's synthetic data set if it is absent (CPU profiles): where its data
   config reads it (``data.train.root``), with the generator parameters that config names
   (``synthetic_set``, e.g. ``conf/data/synth_families.yaml``; the generator's defaults without);
2. runs the profile's sweeps (``conf/sweep/<name>.yaml``, see ``PROFILES``) through
   ``avvsr-train -m``, each run fitting, then testing its best checkpoint with the
   true/shuffled/silent audio controls;
3. aggregates the runs' ``metrics.json`` into results.md/.csv/.tex and draws the attention masks
   of the MS-AVF runs on test clips, with true and shuffled audio (``attention_masks.png``).

Profiles: ``cpu`` (the study on this machine's CPUs), ``quick`` (a smaller grid), ``paper``
(paper-size models on GPUs; pass the data, e.g. ``data=ave data.train.root=...``).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from avvsr.report import Run, load_runs, write_report
from avvsr.run_record import RECORD_NAME

ROOT = Path.cwd()
# The sweeps (conf/sweep/<name>.yaml) each profile runs, one after the other.
PROFILES = {
    "cpu": ["cpu"],
    "cpu_backbones": ["cpu_backbones"],
    "cpu_synccontrast": ["cpu", "cpu_synccontrast"],
    "quick": ["quick"],
    "paper": ["paper"],
}


def hardware() -> str:
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    text = f"{os.cpu_count()} CPU cores ({cpu}), {memory_gib:.0f} GiB RAM"
    return text + (f", GPUs: {', '.join(gpus)}" if gpus else ", no GPU")


def display_path(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


# Overrides that decide which data the study reads, where, and how a synthetic set is made.
SYNTHETIC_SET_KEYS = ("paths.", "data=", "data.train.root=", "synthetic_set.")


def ensure_synthetic_data(study: str, overrides: list[str]) -> Path | None:
    """Generate the study's synthetic set if absent; return where its runs read it (None when
    the study's data is not a synthetic set: nothing to generate).

    Composes ``train`` with ``experiment=<study>`` and those ``overrides`` that start with one
    of ``SYNTHETIC_SET_KEYS`` (the others may hold sweep lists that a single config cannot).
    """
    from hydra.utils import get_class

    from avvsr.config import compose
    from avvsr.data.sources import SyntheticSource
    from avvsr.data.synthetic import SynthConfig, generate

    relevant = [o for o in overrides if o.lstrip("+~").startswith(SYNTHETIC_SET_KEYS)]
    config = compose("train", [
        f"experiment={study}", f"paths.root_dir={os.environ.get('AVVSR_ROOT', ROOT)}",
        "paths.output_dir=unused", *relevant,
    ])
    if not issubclass(get_class(config.data.train._target_), SyntheticSource):
        return None
    root = Path(config.data.train.root)
    from omegaconf import OmegaConf

    typed = config.get("synthetic_set")
    generate(OmegaConf.to_object(typed) if typed is not None else SynthConfig(), root)
    return root


def run_sweep(study: str, sweep: str, sweep_dir: Path, extra: list[str]) -> str:
    """Run one sweep into ``sweep_dir``; return the command as a user would type it."""
    overrides = [f"experiment={study}", f"sweep={sweep}", f"hydra.sweep.dir={sweep_dir}", *extra]
    command = [sys.executable, "-m", "avvsr.train", "-m", *overrides]
    print("+", shlex.join(command), flush=True)
    subprocess.run(command, check=True)
    return shlex.join(["avvsr-train", "-m", *overrides])


def sweep_record(sweep_dir: Path, runs: Sequence[Run]) -> list[tuple[str, float]]:
    """What ran under ``sweep_dir``, read from its files: for each sweep, in the order they
    started, its ``avvsr-train -m`` command (Hydra's ``multirun.yaml``) and the minutes it
    took, from its start (its ``multirun.yaml``) to the last ``metrics.json`` of its training
    ``runs`` (:func:`~avvsr.report.load_runs` of ``sweep_dir``: those under its folder and
    under no other sweep's; 0 when none finished). So sweeps run one after another into one
    folder (a profile's, or a row added later with ``hydra.sweep.dir=<sweep_dir>/<name>``)
    each count their own time, not the pause between, and an ``avvsr-eval`` result written
    there later (the same file name, not a training run) counts none."""
    from omegaconf import OmegaConf

    manifests = sorted(Path(sweep_dir).rglob("multirun.yaml"), key=lambda p: p.stat().st_mtime)
    last_result: dict[Path, float] = {}  # sweep folder -> mtime of its last training record
    sweep_folders = {p.parent for p in manifests}
    for run in runs:
        owner = next((f for f in run.path.parents if f in sweep_folders), None)
        if owner is not None:
            mtime = (run.path / RECORD_NAME).stat().st_mtime
            last_result[owner] = max(last_result.get(owner, 0.0), mtime)
    return [
        (
            shlex.join(["avvsr-train", "-m", *OmegaConf.load(p).hydra.overrides.task]),
            (last_result[p.parent] - p.stat().st_mtime) / 60 if p.parent in last_result else 0.0,
        )
        for p in manifests
    ]


FIGURE_LEGEND = (
    "Middle frame of test clips. Outlines: green = sound source, blue = silent distractors. "
    "Red = attention (0-1) over the output. shuffled = the same clip with another clip's audio."
)


def figure_runs(runs: list[Run]) -> list[Run]:
    """The runs the attention figure draws: for each backbone, the MS-AVF run with the most
    scales (top-down before not, then the lowest seed) that has a checkpoint, once for each
    kind of mask (without and with the synchrony) and localisation term (none, each term)
    among the runs; by backbone, then plain masks before synchrony, each without a term
    first."""
    from avvsr.config import FusionVariant

    def preference(run: Run) -> tuple[int, bool, int]:
        variant = FusionVariant.from_label(run.fusion)
        return (-variant.scales, not variant.top_down, run.seed)

    chosen: dict[tuple[str, bool, str], Run] = {}  # (backbone, synchrony, term) -> run
    for run in sorted(runs, key=preference):
        variant = FusionVariant.from_label(run.fusion)
        if variant.attention and run.best_checkpoint:
            chosen.setdefault((run.backbone, variant.synchrony, variant.localisation or ""), run)
    return [run for _, run in sorted(chosen.items())]


def attention_figure(runs: list[Run], out_png: Path, clips: int = 2, zoom: int = 3) -> bool:
    """Draw, for the first test clips of each of :func:`figure_runs`, LR | HR | output and
    masks with true audio | output and masks with shuffled audio, each panel ``zoom`` times
    enlarged, with column titles and the source and distractor outlines. A run whose
    checkpoint the loader refuses is left out with a warning naming it (the tables do not need
    it). Returns False when no run with attention masks could be drawn."""
    import hydra
    import torch
    from omegaconf import OmegaConf

    from avvsr.checkpoint import load_lit_module
    from avvsr.errors import WeightsError
    from avvsr.visualization import Prediction, attention_grid, attention_row, save_rgb_png

    rows, labels = [], []
    for run in figure_runs(runs):
        config = OmegaConf.load(run.path / ".hydra" / "config.yaml")
        # Saved unresolved: give the Hydra-runtime paths their values for this run.
        config.paths.root_dir = str(ROOT)
        config.paths.output_dir = str(run.path)
        config.data.num_workers = 0
        datamodule = hydra.utils.instantiate(config.data)
        datamodule.setup("test")
        batch = next(iter(datamodule.test_dataloader()))
        try:
            model = load_lit_module(run.best_checkpoint).eval()
        except WeightsError as error:
            print(f"warning: the attention figure leaves out {display_path(run.path)}: {error}",
                  file=sys.stderr, flush=True)
            continue
        with torch.no_grad():
            outputs = {audio: model(batch["lq"], batch[key])
                       for audio, key in (("true", "audio"), ("shuffled", "audio_shuffled"))}
        t = batch["lq"].shape[1] // 2
        for clip in range(min(clips, batch["lq"].shape[0])):
            predictions = {
                audio: Prediction(out.sr[clip, t], [m[clip, t] for m in out.masks])
                for audio, out in outputs.items()
            }
            rows.append(attention_row(
                batch["lq"][clip, t], batch["gt"][clip, t], predictions,
                batch["mask"][clip, t] if "mask" in batch else None,
                batch["distractor_mask"][clip, t] if "distractor_mask" in batch else None,
                zoom=zoom,
            ))
            labels.append(f"{run.backbone} {run.fusion} seed {run.seed}: "
                          f"{batch['key'][clip]}, frame {t}")
    if not rows:
        return False
    save_rgb_png(attention_grid(rows, labels, FIGURE_LEGEND), out_png)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    parser.add_argument("--study", default="av_ablation")
    parser.add_argument(
        "--data-root", type=Path,
        help="CPU profiles: generate the study's synthetic set here if absent and train on it "
        "(default: where the study's data config reads it)",
    )
    parser.add_argument(
        "--report-only", metavar="SWEEP_DIR", help="only aggregate an existing sweep"
    )
    parser.add_argument(
        "--out-dir", type=Path,
        help="where the report goes (default: experiments/<study>, /<profile> but for cpu)",
    )
    parser.add_argument(
        "--runs-dir", type=Path, default=ROOT / "logs" / "reproduce",
        help="the sweeps run in <runs-dir>/<study>/<profile>/<time stamp>",
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_intermixed_args(argv)

    out_dir = args.out_dir or (
        ROOT / "experiments" / args.study / ("" if args.profile == "cpu" else args.profile)
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        sweep_dir = Path(args.report_only)
    else:
        overrides = list(args.overrides)
        if args.profile != "paper":
            if args.data_root:
                overrides.append(f"data.train.root={args.data_root.resolve()}")
            synthetic_root = ensure_synthetic_data(args.study, overrides)
            if synthetic_root is not None:
                print(f"synthetic set: {display_path(synthetic_root)}", flush=True)
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        sweep_dir = args.runs_dir.resolve() / args.study / args.profile / stamp
        for sweep in PROFILES[args.profile]:
            run_sweep(args.study, sweep, sweep_dir / sweep, overrides)
    runs = load_runs(sweep_dir)
    sweeps = sweep_record(sweep_dir, runs)
    wall_min = sum(minutes for _, minutes in sweeps)
    command = "\n    ".join(
        f"{line}  # {minutes:.1f} min" if len(sweeps) > 1 else line for line, minutes in sweeps
    )
    figure_path = out_dir / "attention_masks.png"
    figure = "attention_masks.png" if attention_figure(runs, figure_path) else None
    if figure is None:  # a previous report's figure would sit beside tables it does not show
        figure_path.unlink(missing_ok=True)
    make = f"make reproduce-table{'' if args.profile == 'cpu' else f' PROFILE={args.profile}'}"
    made_by = (
        f"Table rebuilt from existing runs (`python -m avvsr.reproduce --report-only "
        f"{display_path(sweep_dir)}`); the runs' sweep commands"
        if args.report_only
        else f"Produced by `{make}`, which ran"
    )
    timed = (
        "from the start of the sweep to its last run's metrics" if len(sweeps) <= 1 else
        f"from the start of each of the {len(sweeps)} sweeps to its last run's metrics (after "
        "its command), summed"
    )
    preamble = f"""
Study `{args.study}`, profile `{args.profile}`, {len(runs)} runs. {made_by}:

    {command}

on {hardware()}; {wall_min:.1f} min {timed}
(training and testing; read from the run files). Report written {datetime.now():%Y-%m-%d %H:%M}.
Runs: `{display_path(sweep_dir)}`.

**Controlled testbed.** Unless the profile says otherwise, the data is the synthetic
audio-visual benchmark (`avvsr-synth`; the study's data config names the set and its generator
parameters, which the set's `manifest.json` records), whose sounding objects carry a texture
that only the audio identifies. It tests whether the models can use audio; it is not a
substitute for real audio-visual video.
"""
    path = write_report(
        sweep_dir,
        out_dir,
        title=f"{args.study}: results ({args.profile} profile)",
        preamble=preamble,
        figure=figure,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
