"""AVVSRNet: every backbone x fusion, identity at initialisation, gradients, partial loads."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from avvsr.checkpoint import load_weights, read_weights
from avvsr.config import CONFIG_DIR, compose
from avvsr.errors import WeightsError
from avvsr.models.avvsr_net import AVVSRNet

TINY_BACKBONES = sorted(
    p.stem for p in (Path(CONFIG_DIR) / "model" / "backbone").glob("*_tiny.yaml")
)
N_MELS, N_FRAMES = 64, 33
SCALE = 4


def build(backbone: str, fusion: dict | None) -> AVVSRNet:
    """An AVVSRNet from the repo's tiny backbone and audio-encoder configs (composed as the
    command line composes them); ``fusion`` is a fusion config (dict) or None."""
    model_cfg = compose("train", [f"model/backbone={backbone}", f"model.scale={SCALE}"]).model
    return AVVSRNet(
        hydra.utils.instantiate(model_cfg.backbone),
        hydra.utils.instantiate(model_cfg.audio_encoder),
        hydra.utils.instantiate(fusion) if fusion is not None else None,
    )


def msavf(**options) -> dict:
    cfg = OmegaConf.to_container(compose("train", ["model/fusion=msavf"]).model.fusion)
    return {**cfg, **options}


FUSIONS = {
    "none": None,
    **{f"msavf-s{s}": msavf(scales=s) for s in (1, 2, 3, 4)},
    "msavf-notopdown": msavf(top_down=False),
    "msavf-sync": msavf(synchrony_window=3),
    "concat": msavf(attention=False),
}


def inputs(
    batch: int = 1, frames: int = 3, h: int = 12, w: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    lq = torch.rand(batch, frames, 3, h, w)
    audio = torch.randn(batch, frames, N_MELS, N_FRAMES) - 5
    return lq, audio


def test_the_repo_has_tiny_backbones() -> None:
    assert {"basicvsr_tiny", "basicvsrpp_tiny", "edvr_tiny"} <= set(TINY_BACKBONES)


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_output_shapes_for_every_backbone_and_fusion(backbone: str, fusion: str) -> None:
    net = build(backbone, FUSIONS[fusion]).eval()
    lq, audio = inputs(batch=2, frames=3, h=12, w=10)
    with torch.no_grad():
        out = net(lq, audio)
    assert out.sr.shape == (2, 3, 3, 12 * SCALE, 10 * SCALE)
    cfg = FUSIONS[fusion]
    expected_masks = 0 if cfg is None or not cfg["attention"] else cfg["scales"]
    assert len(out.masks) == expected_masks
    for level, mask in enumerate(out.masks):
        assert mask.shape[:3] == (2, 3, 1)
        assert mask.shape[-2:] == (-(-12 // 2**level), -(-10 // 2**level))
        assert 0 <= mask.min() and mask.max() <= 1


@pytest.mark.parametrize("fusion", [f for f in FUSIONS if f != "none"])
@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_fusion_model_equals_its_backbone_at_initialisation(backbone: str, fusion: str) -> None:
    fused = build(backbone, FUSIONS[fusion]).eval()
    plain = build(backbone, None).eval()
    plain.backbone.load_state_dict(fused.backbone.state_dict())
    lq, audio = inputs()
    with torch.no_grad():
        assert torch.equal(fused(lq, audio).sr, plain(lq).sr)


def test_gradients_reach_the_audio_encoder_and_every_scale() -> None:
    net = build("basicvsr_tiny", msavf(scales=4))
    with torch.no_grad():  # leave the zero-initialised starts so gradients flow everywhere
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.1)
    lq, audio = inputs(h=16, w=16)
    net(lq, audio).sr.square().mean().backward()
    for name, module in (("audio_encoder", net.audio_encoder), ("fusion", net.fusion)):
        missing = [
            n for n, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
        ]
        assert not missing, f"{name} parameters without gradient: {missing}"


def test_a_fusion_model_needs_audio() -> None:
    net = build("basicvsr_tiny", msavf())
    with pytest.raises(ValueError, match="audio"):
        net(inputs()[0])


def test_backbone_weights_load_into_a_fusion_model(tmp_path: Path) -> None:
    plain = build("basicvsr_tiny", None)
    path = tmp_path / "backbone.pth"
    torch.save(plain.backbone.state_dict(), path)  # backbone-only keys, no prefix
    fused = build("basicvsr_tiny", msavf())
    missing = load_weights(fused, read_weights(path), source=path, part_state=True)
    assert missing and all(not k.startswith("backbone.") for k in missing)
    for key, value in plain.backbone.state_dict().items():
        assert torch.equal(fused.backbone.state_dict()[key], value)
    lq, audio = inputs()
    with torch.no_grad():  # fusion starts as identity, so the outputs agree exactly
        assert torch.equal(fused.eval()(lq, audio).sr, plain.eval()(lq).sr)


def test_weights_of_another_model_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"something.weight": torch.zeros(3)}, path)
    with pytest.raises(WeightsError, match="other.pth.*1 not in the model: something.weight"):
        load_weights(build("basicvsr_tiny", None), read_weights(path), source=path)
    with pytest.raises(WeightsError, match="no tensor fits"):
        load_weights(build("basicvsr_tiny", None), read_weights(path), source=path, partial=True)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth"):
        read_weights(tmp_path / "junk.pth")


def test_the_attention_embeddings_come_per_clip_and_frame_and_change_no_output() -> None:
    net = build("basicvsr_tiny", msavf(scales=2)).eval()
    lq, audio = inputs(batch=2, frames=3)
    with torch.no_grad():  # one hook call per frame: the groups are joined along T
        plain = net(lq, audio)
        grouped = net(lq, audio, return_embeddings=True)
    whole = net(lq, audio, return_embeddings=True)  # autograd records: one call for all frames
    assert torch.equal(plain.sr, grouped.sr) and plain.embeddings == []
    embed_dim = net.fusion.fuse[0].audio_proj.out_features
    for mask, grouped_space, whole_space in zip(
        plain.masks, grouped.embeddings, whole.embeddings, strict=True
    ):
        assert whole_space.query.shape == (2, 3, embed_dim)
        assert whole_space.keys.shape == (2, 3, embed_dim, *mask.shape[-2:])
        assert torch.allclose(grouped_space.keys, whole_space.keys, atol=1e-5)
        assert torch.allclose(grouped_space.query, whole_space.query, atol=1e-6)
