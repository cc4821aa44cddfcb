"""Lightning callbacks of the suite (the rest come from Lightning itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer

from avvsr.visualization import sample_panel, save_png


class LogValidationSamples(Callback):
    """Logs the middle frame of the first validation clips: LR | output | HR | attention masks
    over the output (with the sound-source outline where known).

    Goes to every logger with a ``log_image`` method (W&B); without one, PNG files are written
    to ``<trainer.default_root_dir>/samples/``. Runs on the global-zero process only, so it
    must not touch anything collective (``trainer.log_dir`` broadcasts under DDP).
    """

    def __init__(self, every_n_validations: int = 1, max_clips: int = 2) -> None:
        self.every_n_validations = every_n_validations
        self.max_clips = max_clips
        self.validations = 0

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or trainer.sanity_checking or outputs is None:
            return
        self.validations += 1
        if (self.validations - 1) % self.every_n_validations or not trainer.is_global_zero:
            return
        with torch.no_grad():
            rows = []
            for clip in range(min(self.max_clips, batch["lq"].shape[0])):
                t = batch["lq"].shape[1] // 2
                rows.append(
                    sample_panel(
                        batch["lq"][clip, t],
                        outputs.sr[clip, t].float(),
                        batch["gt"][clip, t],
                        [m[clip, t].float() for m in outputs.masks],
                        batch["mask"][clip, t] if "mask" in batch else None,
                    )
                )
            image = torch.cat(rows, dim=-2).cpu()
        caption = "LR | output | HR" + "".join(f" | mask s{i}" for i in range(len(outputs.masks)))
        loggers = [lg for lg in trainer.loggers if hasattr(lg, "log_image")]
        for logger in loggers:
            logger.log_image(
                "val/samples", images=[image], step=trainer.global_step, caption=[caption]
            )
        if not loggers:
            folder = Path(trainer.default_root_dir) / "samples"
            folder.mkdir(parents=True, exist_ok=True)
            save_png(image, folder / f"step{trainer.global_step:06d}.png")
