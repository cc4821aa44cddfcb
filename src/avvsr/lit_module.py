"""The LightningModule: an :class:`AVVSRNet` trained with Charbonnier loss, evaluated as the
VSR community does, with test-time audio controls.

Training: Adam (or any optimizer given as a Hydra ``_partial_``), linear warm-up then cosine
decay per step, a separate learning rate for the optical-flow network (frozen for its first
``flow_freeze_steps`` steps, as the BasicVSR recipe does), and audio dropout: a share of the
training clips get silent audio so that, on silent or audio-less video, a fusion model falls
back to the visual-only result. Optionally (``localisation``) a self-supervised localisation
term on the attention masks or their embeddings (:mod:`avvsr.models.localisation_loss`, e.g.
the LVS-style contrast; no ground-truth masks), logged as ``train/localisation_loss``.

Evaluation: whole clips; PSNR/SSIM on RGB and Y; PSNR inside/outside the sound-source mask and
inside the silent distractors, the attention masks' agreement with the source and their
source-vs-distractor AUC, where masks are known. At test time every audio control
in ``audio_controls`` runs on the same batch and its metrics are logged as
``test/<control>/<metric>``: ``true`` audio, ``shuffled`` (each clip gets another clip's audio,
a fixed permutation made by the data set) and ``silent``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from lightning import LightningModule
from torch import Tensor, nn
from torchmetrics import MetricCollection

from avvsr.data.audio_features import SILENCE_LOG_MEL, AudioFeatureSettings
from avvsr.metrics import (
    MaskAgreement,
    RegionPSNR,
    SourceDistractorAUC,
    VideoPSNR,
    VideoSSIM,
)
from avvsr.models.avvsr_net import AVVSRNet, AVVSROutput, FusionFactory
from avvsr.models.backbones.base import VSRBackbone
from avvsr.models.localisation_loss import LocalisationTerm

AUDIO_CONTROLS = ("true", "shuffled", "silent")
# Region PSNR-Y metrics: name -> (batch key of the mask, region of it that is scored).
REGION_METRICS = {
    "psnr_y_inside": ("mask", "inside"),
    "psnr_y_outside": ("mask", "outside"),
    "psnr_y_distractors": ("distractor_mask", "inside"),
}


# Charbonnier epsilon on [0, 1] pixels (the default of conf/model/default.yaml loss_eps).
DEFAULT_LOSS_EPS = 1e-3


def charbonnier_loss(pred: Tensor, target: Tensor, eps: float = DEFAULT_LOSS_EPS) -> Tensor:
    """Mean of ``sqrt((pred - target)^2 + eps^2)``: a differentiable L1."""
    return torch.sqrt((pred - target).pow(2) + eps * eps).mean()


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """Learning-rate factor of a step: linear warm-up to 1, then cosine decay to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class AVVSRLitModule(LightningModule):
    """Backbone + optional MS-AVF fusion + audio encoder, trained end to end.

    Args:
        backbone: a :class:`VSRBackbone`.
        audio_encoder: log-mel ``(B, T, n_mels, n_frames)`` -> ``(B, T, D)``; unused without fusion.
        fusion: factory of the fusion module (Hydra ``_partial_``), or None for the plain backbone.
        optimizer: factory taking ``params`` (parameter groups, each with its ``lr``) and
            returning an optimizer (Hydra ``_partial_``, without ``lr``); None for a model
            that is only evaluated or applied (a loaded checkpoint).
        lr: learning rate of everything but the flow network.
        scale: upsampling factor; must equal the backbone's (it is the config's single source).
        warmup_steps, min_lr_ratio: the schedule (see :func:`warmup_cosine`).
        flow_lr_ratio: learning rate of the flow network relative to the rest.
        flow_freeze_steps: the flow network does not move during the first steps.
        loss_eps: Charbonnier epsilon.
        audio_dropout: share of training clips whose audio is replaced by silence.
        crop_border: pixels cropped at each border before metrics (HR pixels).
        audio_controls: controls run at test time (fusion models only).
        audio_features: how the log-mel features the model reads are made (the data's
            settings: the config's ``audio`` node); stored in checkpoints with the config.
        init_weights: optional local weights file to start from, loaded strictly
            (:func:`avvsr.checkpoint.load_weights`; a backbone-only file fills the backbone).
        init_weights_partial: load only what fits of ``init_weights`` and list the rest.
        localisation: optional self-supervised localisation term on the attention
            (:class:`~avvsr.models.localisation_loss.LocalisationTerm`); training adds
            ``localisation.weight`` times it. Needs a fusion with attention masks. None (the
            default): the reconstruction loss alone.
        model_config: the plain config this module was built from
            (:func:`avvsr.config.build_lit_module` passes it); stored in every checkpoint so
            that the file alone rebuilds the model.
    """

    def __init__(
        self,
        backbone: VSRBackbone,
        audio_encoder: nn.Module | None,
        fusion: FusionFactory | None,
        optimizer: Callable[..., torch.optim.Optimizer] | None,
        lr: float = 2e-4,
        scale: int = 4,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.01,
        flow_lr_ratio: float = 0.125,
        flow_freeze_steps: int = 0,
        loss_eps: float = DEFAULT_LOSS_EPS,
        audio_dropout: float = 0.15,
        crop_border: int = 0,
        audio_controls: Sequence[str] = AUDIO_CONTROLS,
        audio_features: AudioFeatureSettings | None = None,
        init_weights: str | None = None,
        init_weights_partial: bool = False,
        localisation: LocalisationTerm | None = None,
        model_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if backbone.scale != scale:
            raise ValueError(f"model.scale={scale} but the backbone upsamples by {backbone.scale}")
        if audio_features is not None and not isinstance(audio_features, AudioFeatureSettings):
            raise TypeError(f"audio_features must be AudioFeatureSettings, got {audio_features!r}")
        unknown = set(audio_controls) - set(AUDIO_CONTROLS)
        if unknown:
            raise ValueError(
                f"unknown audio controls {sorted(unknown)}; choose from {AUDIO_CONTROLS}"
            )
        self.net = AVVSRNet(backbone, audio_encoder, fusion)
        if localisation is not None and not getattr(self.net.fusion, "attention", False):
            raise ValueError(
                "model.localisation trains the fusion's attention masks: it needs a fusion "
                "with attention (model/fusion=msavf, msavf_s2, msavf_single or "
                "msavf_no_topdown), not model/fusion=none or concat"
            )
        self.localisation = localisation
        self.optimizer_factory = optimizer
        self.lr = lr
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.flow_lr_ratio = flow_lr_ratio
        self.flow_freeze_steps = flow_freeze_steps
        self.loss_eps = loss_eps
        self.audio_dropout = audio_dropout
        self.crop_border = crop_border
        self.audio_features = audio_features
        self.model_config = dict(model_config) if model_config is not None else None
        self.test_controls = tuple(audio_controls) if self.net.uses_audio else ("true",)
        self.val_metrics = self._metrics()
        self.test_metrics = nn.ModuleDict({c: self._metrics() for c in self.test_controls})
        self._test_forward_s = 0.0
        self._test_frames = 0
        if init_weights:
            from avvsr.checkpoint import load_weights, read_weights

            load_weights(
                self.net, read_weights(init_weights), source=init_weights,
                partial=init_weights_partial, part_state=True,
            )

    def _metrics(self) -> MetricCollection:
        """PSNR/SSIM on RGB and Y; Y-PSNR inside/outside the sound source and inside the
        silent distractors; the agreement of the finest attention mask with the sound-source
        mask and its source-vs-distractor AUC over object pixels (fusion with attention only)."""
        metrics: dict[str, nn.Module] = {}
        for y_channel, suffix in ((False, ""), (True, "_y")):
            kwargs = {"crop_border": self.crop_border, "test_y_channel": y_channel}
            metrics[f"psnr{suffix}"] = VideoPSNR(**kwargs)
            metrics[f"ssim{suffix}"] = VideoSSIM(**kwargs)
        for name, region in REGION_METRICS.items():
            metrics[name] = RegionPSNR(
                region=region[1], crop_border=self.crop_border, test_y_channel=True
            )
        if self.net.uses_audio:
            metrics["mask"] = MaskAgreement()
            metrics["source_vs_distractor"] = SourceDistractorAUC()
        return MetricCollection(metrics, compute_groups=False)

    # ----------------------------------------------------------------- forward and training
    def forward(
        self,
        lq: Tensor,
        audio: Tensor | None = None,
        *,
        return_embeddings: bool = False,
        projection_embeddings: bool = False,
    ) -> AVVSROutput:
        """``lq`` (B, T, 3, h, w), log-mel ``audio`` (B, T, n_mels, n_frames) -> output (with
        the attention embeddings if ``return_embeddings``, and their projection-only keys and
        query if ``projection_embeddings``, see :class:`AVVSRNet`)."""
        return self.net(
            lq, audio, return_embeddings=return_embeddings,
            projection_embeddings=projection_embeddings,
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        audio = batch["audio"]
        dropped = torch.zeros(audio.shape[0], dtype=torch.bool, device=audio.device)
        if self.net.uses_audio and self.audio_dropout > 0:
            dropped = torch.rand(audio.shape[0], device=audio.device) < self.audio_dropout
            audio = torch.where(
                dropped[:, None, None, None], torch.full_like(audio, SILENCE_LOG_MEL), audio
            )
        term = self.localisation
        out = self(
            batch["lq"], audio,
            return_embeddings=term is not None and term.needs_embeddings,
            projection_embeddings=term is not None and term.needs_projection_embeddings,
        )
        loss = charbonnier_loss(out.sr, batch["gt"], self.loss_eps)
        if self.localisation is not None:
            # Only clips that hear their own sound have a source to find.
            anchors = batch["has_audio"].to(dropped.device) & ~dropped
            localisation = self.localisation.of_output(out, anchors, batch["lq"], audio)
            self.log("train/localisation_loss", localisation, batch_size=audio.shape[0])
            loss = loss + self.localisation.weight * localisation
        self.log("train/loss", loss, prog_bar=True, batch_size=audio.shape[0])
        return loss

    # ----------------------------------------------------------------- evaluation
    def _update(self, metrics: MetricCollection, out: AVVSROutput, batch: dict[str, Any]) -> None:
        sr = out.sr.clamp(0, 1)
        for name, metric in metrics.items():
            if name == "mask":
                if "mask" in batch and out.masks:
                    metric.update(out.masks[0], batch["mask"])
            elif name == "source_vs_distractor":
                if "distractor_mask" in batch and out.masks:
                    metric.update(out.masks[0], batch["mask"], batch["distractor_mask"])
            elif name in REGION_METRICS:
                mask_key = REGION_METRICS[name][0]
                if mask_key in batch:
                    metric.update(sr, batch["gt"], batch[mask_key])
            else:
                metric.update(sr, batch["gt"])

    def _log_metrics(self, prefix: str, metrics: MetricCollection) -> None:
        """Log each metric that saw data as ``<prefix>/<name>``; a metric that computes a dict
        (MaskAgreement: ``iou``, ``auc``; SourceDistractorAUC: ``auc``) as
        ``<prefix>/<name>_<key>``."""
        for name, metric in metrics.items():
            if not metric.update_called:
                continue
            value = metric.compute()
            values = value if isinstance(value, dict) else {"": value}
            for sub, number in values.items():
                key = f"{prefix}/{name}" + (f"_{sub}" if sub else "")
                self.log(key, number, sync_dist=False)
            metric.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> AVVSROutput:
        out = self(batch["lq"], batch["audio"])
        self._update(self.val_metrics, out, batch)
        return out

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def _control_audio(self, control: str, batch: dict[str, Any]) -> Tensor:
        if control == "true":
            return batch["audio"]
        if control == "silent":
            return torch.full_like(batch["audio"], SILENCE_LOG_MEL)
        if "audio_shuffled" not in batch:
            raise KeyError(
                "the 'shuffled' audio control needs the test data set to provide 'audio_shuffled' "
                "(AVVSRDataModule does for its test split)"
            )
        return batch["audio_shuffled"]

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        for control in self.test_controls:
            start = time.perf_counter()
            out = self(batch["lq"], self._control_audio(control, batch))
            if control == "true":
                if out.sr.is_cuda:
                    torch.cuda.synchronize(out.sr.device)
                self._test_forward_s += time.perf_counter() - start
                self._test_frames += out.sr.shape[0] * out.sr.shape[1]
            self._update(self.test_metrics[control], out, batch)

    def on_test_epoch_start(self) -> None:
        self._test_forward_s, self._test_frames = 0.0, 0

    def on_test_epoch_end(self) -> None:
        for control, metrics in self.test_metrics.items():
            self._log_metrics(f"test/{control}", metrics)
        if self._test_frames:
            self.log("test/ms_per_frame", 1000.0 * self._test_forward_s / self._test_frames)
        self.log("test/params", float(sum(p.numel() for p in self.net.parameters())))

    # ----------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        if self.optimizer_factory is None:
            raise RuntimeError("this model was built without an optimizer (a loaded model "
                               "file): train from a config, e.g. model.init_weights=FILE")
        flow = {id(p) for p in self.net.backbone.flow_parameters()}
        groups = [
            {
                "params": [p for p in self.net.parameters() if id(p) not in flow],
                "lr": self.lr,
                "name": "main",
            }
        ]
        base_lr_factor = warmup_cosine(
            self.warmup_steps, int(self.trainer.estimated_stepping_batches), self.min_lr_ratio
        )
        factors = [base_lr_factor]
        if flow:
            groups.append(
                {
                    "params": [p for p in self.net.parameters() if id(p) in flow],
                    "lr": self.lr * self.flow_lr_ratio,
                    "name": "flow",
                }
            )
            freeze = self.flow_freeze_steps
            factors.append(lambda step: 0.0 if step < freeze else base_lr_factor(step))
        optimizer = self.optimizer_factory(params=groups, lr=self.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factors)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the model config (with its audio-feature settings), so that a checkpoint
        alone rebuilds its model and the features it was trained on."""
        from avvsr.checkpoint import add_model_config

        add_model_config(checkpoint, self.model_config)
