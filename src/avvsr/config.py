"""Where the Hydra configs live, composing them as the commands do, and building from them.

The one home of the config location (:data:`CONFIG_DIR`), of composing a config outside a
``@hydra.main`` entry point (:func:`compose`: tests, benchmarks, ``reproduce``), of building the
LightningModule from a model config (:func:`build_lit_module`: training and every loader), and
of the labels that name a run's backbone and fusion variant in tables and run names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from avvsr.lit_module import AVVSRLitModule

# Shipped inside the package (package data), so a wheel install finds them as an editable
# checkout does; users add their own with ``--config-dir DIR`` (see the README).
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")
LIT_MODULE_TARGET = "avvsr.lit_module.AVVSRLitModule"
# Typed config nodes that YAML files extend (Hydra's ConfigStore): name -> dataclass.
SYNTHETIC_SET_SCHEMA = "synthetic_set_schema"


def _register_schemas() -> None:
    """Store the typed nodes, so that a key a config or an override mistypes fails when the
    config is composed: ``synthetic_set`` (:class:`~avvsr.data.synthetic.SynthConfig`, the
    generator parameters a study's synthetic set is made with)."""
    from hydra.core.config_store import ConfigStore

    from avvsr.data.synthetic import SynthConfig

    schema = OmegaConf.structured(SynthConfig)
    OmegaConf.set_readonly(schema, False)  # a frozen dataclass; configs set its fields
    ConfigStore.instance().store(name=SYNTHETIC_SET_SCHEMA, node=schema)


_register_schemas()


def compose(
    config_name: str = "train", overrides: Sequence[str] = (), *, hydra_node: bool = False
) -> DictConfig:
    """The config ``config_name`` (``train`` or ``eval``) with ``overrides``, as the command
    line composes it (with the ``hydra`` node, e.g. a sweep's parameters, if ``hydra_node``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(
            config_name, overrides=list(overrides), return_hydra_config=hydra_node
        )


def plain_container(config: Mapping | DictConfig) -> dict[str, Any]:
    """A resolved plain-``dict`` copy of a config node."""
    if isinstance(config, DictConfig):
        return OmegaConf.to_container(config, resolve=True)
    return OmegaConf.to_container(OmegaConf.create(dict(config)), resolve=True)


def build_lit_module(model_config: Mapping | DictConfig, **overrides: Any) -> AVVSRLitModule:
    """Build the LightningModule of a model config (``conf/model/``), which it keeps (and
    stores in its checkpoints) as ``model_config``.

    ``overrides`` replace top-level entries first (e.g. ``audio_controls``). Each part with a
    ``_target_`` (backbone, audio encoder, fusion, optimizer, audio features) is built with
    Hydra's ``instantiate``; a config read from a file must have passed
    :func:`avvsr.checkpoint.checked_model_config` before it gets here.
    """
    from hydra.utils import instantiate

    from avvsr.lit_module import AVVSRLitModule

    config = {**plain_container(model_config), **overrides}
    target = config.pop("_target_", None)
    if target != LIT_MODULE_TARGET:
        raise ValueError(f"a model config builds {LIT_MODULE_TARGET}, not {target!r}")
    parts = {key: instantiate(value) if _is_node(value) else value for key, value in config.items()}
    return AVVSRLitModule(**parts, model_config={"_target_": target, **config})


def _is_node(value: Any) -> bool:
    return isinstance(value, dict) and "_target_" in value


# ------------------------------------------------------------------------------- labels
# The label of each localisation term (``model/localisation`` option) in run names and tables;
# a term not listed is labelled by its class name, lower case. A term whose gradient is kept
# off part of the network (``teaches`` other than ``network``) has that reach appended, so
# runs that differ in it are never pooled into one row: ``syncteachaudio``.
LOCALISATION_LABELS = {
    "avvsr.models.localisation_loss.LVSLocalisationLoss": "lvs",
    "avvsr.models.localisation_loss.SynchronyTeacherLoss": "syncteach",
    "avvsr.models.localisation_loss.SynchronyContrastLoss": "synccontrast",
}


def localisation_label(localisation_config: Mapping | None) -> str | None:
    """The short name of a localisation term's config (e.g. ``lvs``), None without."""
    if localisation_config is None:
        return None
    target = str(localisation_config.get("_target_", ""))
    label = LOCALISATION_LABELS.get(target, target.rsplit(".", 1)[-1].lower() or "localisation")
    teaches = str(localisation_config.get("teaches", "network"))
    return label if teaches == "network" else label + teaches


@dataclass(frozen=True)
class FusionVariant:
    """What a fusion config is, as data: ``scales`` 0 without fusion; ``attention`` False for
    tiled concatenation; ``top_down`` whether coarse scales feed the fine ones; ``synchrony``
    whether the masks also see the audio-visual synchrony (``synchrony_window``);
    ``localisation`` the label of the self-supervised localisation term that training adds on
    the attention (``model.localisation``, e.g. ``lvs``), None without."""

    scales: int
    attention: bool
    top_down: bool
    localisation: str | None = None
    synchrony: bool = False

    @classmethod
    def of(
        cls, fusion_config: Mapping | None, localisation_config: Mapping | None = None
    ) -> FusionVariant:
        if fusion_config is None:
            return cls(0, False, False)
        return cls(
            int(fusion_config.get("scales", 3)),
            bool(fusion_config.get("attention", True)),
            bool(fusion_config.get("top_down", True)),
            localisation_label(localisation_config),
            fusion_config.get("synchrony_window") is not None,
        )

    @property
    def label(self) -> str:
        """``none``, ``concat``, ``msavf-s3``, ``msavf-s3-notopdown``, then ``-sync`` when the
        masks see the synchrony, then the localisation term's label: ``msavf-s3-lvs``,
        ``msavf-s3-notopdown-sync-lvs``."""
        if self.scales == 0:
            return "none"
        if not self.attention:
            return "concat"
        return (
            f"msavf-s{self.scales}"
            + ("" if self.top_down else "-notopdown")
            + ("-sync" if self.synchrony else "")
            + (f"-{self.localisation}" if self.localisation else "")
        )

    @classmethod
    def from_label(cls, label: str) -> FusionVariant:
        """The variant a :attr:`label` names (labels are how run records store it)."""
        if label == "none":
            return cls(0, False, False)
        if label == "concat":
            return cls(3, False, True)
        name, scales, *rest = label.split("-") if "-" in label else (label, "")
        top_down = rest[:1] != ["notopdown"]
        terms = rest if top_down else rest[1:]
        synchrony = terms[:1] == ["sync"]
        terms = terms[1:] if synchrony else terms
        well_formed = (
            name == "msavf" and scales[:1] == "s" and scales[1:].isdigit() and len(terms) <= 1
            and all(term.isalnum() and term not in ("notopdown", "sync") for term in terms)
        )
        if not well_formed:
            raise ValueError(f"not a fusion label: {label!r}")
        return cls(int(scales[1:]), True, top_down, terms[0] if terms else None, synchrony)

    @property
    def rank(self) -> tuple[bool, int, bool, bool, str]:
        """Sort key of result rows: none, concat, then MS-AVF by scales; at each number of
        scales top-down before not, each without synchrony before with, and each without a
        localisation term before with one."""
        return (
            self.attention, self.scales, not self.top_down, self.synchrony,
            self.localisation or "",
        )


def fusion_label(fusion_config: Mapping | None, localisation_config: Mapping | None = None) -> str:
    """The short name of a fusion config and the localisation term trained with it, if any
    (see :attr:`FusionVariant.label`)."""
    return FusionVariant.of(fusion_config, localisation_config).label


def backbone_label(cfg: DictConfig) -> str:
    """The chosen ``model/backbone`` option (e.g. ``basicvsr_tiny``), or the class name."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("model/backbone")
        if choice:
            return str(choice)
    return str(cfg.model.backbone._target_).rsplit(".", 1)[-1]


# ------------------------------------------------------------------------------- commands
def instantiate_list(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group that holds named objects (callbacks, loggers)."""
    from hydra.utils import instantiate

    if not group:
        return []
    return [instantiate(node) for node in group.values() if node and "_target_" in node]


def apply_threads(cfg: DictConfig) -> None:
    """Limit torch's CPU threads to ``cfg.threads`` when set (jobs running side by side)."""
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(cfg.threads)


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Logged metrics (tensors or numbers) as plain floats."""
    return {key: float(value) for key, value in metrics.items()}
