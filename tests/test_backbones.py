"""The VSR backbones: shapes, the fusion-point hook, published sizes, flow, EDVR windows."""

from __future__ import annotations

import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torchvision.ops import deform_conv2d

from avvsr.config import compose
from avvsr.models.avvsr_net import AVVSRNet
from avvsr.models.backbones.basicvsrpp import SecondOrderDeformableAlignment
from avvsr.models.backbones.blocks import (
    ModulatedDeformConv2d,
    PixelShuffleHead,
    SPyNet,
    conv,
    deform_conv2d_by_sampling,
    flow_warp,
    leaky_relu,
    resize_flow,
)
from avvsr.models.backbones.edvr import EDVR, check_clip_ends, window_indices
from avvsr.models.backbones.iconvsr import keyframe_windows
from helpers.models import TINY_BACKBONES as TINY
from helpers.models import build_backbone as build
from helpers.models import build_trained_backbone as build_trained

WITH_SPYNET = ["basicvsr_tiny", "basicvsrpp_tiny", "iconvsr_tiny"]
PUBLISHED_PARAMETERS = {  # the papers' parameter counts (BasicVSR, IconVSR, BasicVSR++, EDVR)
    "basicvsr": 6.3e6,
    "iconvsr": 8.7e6,
    "basicvsrpp": 7.3e6,
    "edvr": 3.3e6,
    "edvr_l": 20.6e6,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def bilinear(lq: torch.Tensor, scale: int) -> torch.Tensor:
    """Bilinear upsampling of (B, T, 3, h, w), the LR base every backbone adds."""
    up = F.interpolate(lq.flatten(0, 1), scale_factor=scale, mode="bilinear", align_corners=False)
    return up.unflatten(0, lq.shape[:2])


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_paper_size_matches_published_parameter_count(name: str) -> None:
    measured = count_parameters(build(name))
    assert measured == pytest.approx(PUBLISHED_PARAMETERS[name], rel=0.02)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_paper_size_runs_on_a_small_clip(name: str) -> None:
    lq = torch.rand(1, 3, 3, 15, 17)
    with torch.no_grad():
        assert build(name)(lq).shape == (1, 3, 3, 60, 68)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize(("scale", "size"), [(4, (8, 8)), (4, (7, 9)), (2, (9, 6))])
def test_output_shape(name: str, scale: int, size: tuple[int, int]) -> None:
    model = build(name, scale)
    assert model.scale == scale
    lq = torch.rand(1, 3, 3, *size)
    with torch.no_grad():
        assert model(lq).shape == (1, 3, 3, scale * size[0], scale * size[1])


@pytest.mark.parametrize("name", TINY)
def test_single_frame_clip(name: str) -> None:
    with torch.no_grad():
        assert build(name)(torch.rand(1, 1, 3, 8, 8)).shape == (1, 1, 3, 32, 32)


def record_hook_calls(model, lq: torch.Tensor) -> list[tuple[slice, tuple[int, ...]]]:
    """The (frames, feature shape) of every hook call of one forward of ``model`` on ``lq``."""
    seen: list[tuple[slice, tuple[int, ...]]] = []

    def hook(feat: torch.Tensor, frames: slice) -> torch.Tensor:
        seen.append((frames, tuple(feat.shape)))
        return feat

    model(lq, feature_hook=hook)
    return seen


@pytest.mark.parametrize("name", TINY)
def test_training_calls_the_hook_once_on_all_frames_at_the_lr_size(name: str) -> None:
    model = build(name)
    seen = record_hook_calls(model, torch.rand(2, 3, 3, 7, 9))
    assert seen == [(slice(0, 3), (2, 3, model.fusion_channels, 7, 9))]


@pytest.mark.parametrize("name", TINY)
def test_inference_calls_the_hook_on_consecutive_groups_of_frames(name: str) -> None:
    model = build(name)
    model.inference_group = 2
    with torch.no_grad():
        seen = record_hook_calls(model, torch.rand(2, 5, 3, 7, 9))
    channels = model.fusion_channels
    assert seen == [
        (slice(0, 2), (2, 2, channels, 7, 9)),
        (slice(2, 4), (2, 2, channels, 7, 9)),
        (slice(4, 5), (2, 1, channels, 7, 9)),
    ]


def frame_dependent_hook(feat: torch.Tensor, frames: slice) -> torch.Tensor:
    """Scales each frame's features by a factor set by its index in the clip, so a hook call
    given the wrong frames changes the output."""
    index = torch.arange(frames.start, frames.stop, dtype=feat.dtype)
    return feat * (1 + 0.1 * index).view(1, -1, 1, 1, 1)


@pytest.mark.parametrize("group", [1, 2, 5])
@pytest.mark.parametrize("name", TINY)
def test_inference_in_groups_equals_the_training_path_in_float64(name: str, group: int) -> None:
    """To 1e-14, not bit for bit: on some CPUs (measured on an AMD EPYC) the convolutions
    round the last bit differently with autograd on than off, whatever the group size."""
    model = build_trained(name).double()
    model.inference_group = group
    lq = torch.rand(2, 5, 3, 7, 9, dtype=torch.float64)
    training = model(lq, feature_hook=frame_dependent_hook)  # autograd on: all frames at once
    with torch.no_grad():
        grouped = model(lq, feature_hook=frame_dependent_hook)
    torch.testing.assert_close(grouped, training.detach(), rtol=0, atol=1e-14)


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-6), (torch.float64, 1e-14)])
@pytest.mark.parametrize("name", TINY)
def test_msavf_fused_in_groups_equals_all_frames_at_once(
    name: str, dtype: torch.dtype, atol: float
) -> None:
    """MS-AVF treats frames independently: fusing groups of frames gives the output and the
    masks of fusing the whole clip (float32 to 1e-6; float64 to 1e-14, not bit for bit: its
    linear layers' matrix products round differently for a different number of rows)."""
    model = compose("train", ["model/audio_encoder=tiny", "model/fusion=msavf"]).model
    net = AVVSRNet(
        build_trained(name), instantiate(model.audio_encoder), instantiate(model.fusion)
    )
    with torch.no_grad():  # move MS-AVF off its identity start
        for parameter in net.fusion.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    net = net.to(dtype).eval()
    net.backbone.inference_group = 2
    lq = torch.rand(2, 5, 3, 7, 9, dtype=dtype)
    audio = torch.randn(2, 5, 64, 33, dtype=dtype) - 5
    whole = net(lq, audio)  # autograd on: one hook call
    with torch.no_grad():
        grouped = net(lq, audio)
    assert len(grouped.masks) == len(whole.masks) == 3
    for mine, reference in zip([grouped.sr, *grouped.masks], [whole.sr, *whole.masks], strict=True):
        torch.testing.assert_close(mine, reference.detach(), rtol=0, atol=atol)


def batch_sizes(module: torch.nn.Module) -> list[int]:
    """Records the batch size (first dimension of the first input) of every call of ``module``."""
    sizes: list[int] = []

    def record(_module: torch.nn.Module, args: tuple) -> None:
        first = args[0][0] if isinstance(args[0], list) else args[0]
        sizes.append(first.shape[0])

    module.register_forward_pre_hook(record)
    return sizes


@pytest.mark.parametrize("name", TINY)
def test_inference_reconstructs_one_group_of_frames_at_a_time(name: str) -> None:
    """The head (high-resolution intermediates) sees ``inference_group`` frames at a time
    without autograd and all frames in training; so do SPyNet's frame pairs (both directions:
    2 * (T - 1) of them). PCD alignment sees one neighbour at a time without autograd (as the
    published EDVR aligns them) and every window's neighbours at once in training."""
    model = build(name)
    model.inference_group = 2
    head = batch_sizes(model.head)
    flows = batch_sizes(model.spynet) if hasattr(model, "spynet") else []
    windows = getattr(model, "window_fusion", getattr(model, "keyframe_fusion", None))
    aligned = batch_sizes(windows.pcd_align) if windows is not None else []
    lq = torch.rand(1, 5, 3, 6, 6)
    with torch.no_grad():
        model(lq)
    assert head == [2, 2, 1]
    assert flows == ([2, 2, 2, 2] if hasattr(model, "spynet") else [])
    width = windows.num_frames if windows is not None else 0
    if name == "edvr_tiny":  # every frame's window
        assert aligned == [1] * 5 * width
    elif name == "iconvsr_tiny":  # keyframes 0, 2, 4
        assert aligned == [1] * 3 * width
    for sizes in (head, aligned, flows):
        sizes.clear()
    model(lq)
    assert head == [5]
    assert flows == ([8] if hasattr(model, "spynet") else [])
    assert len(aligned) == (windows is not None)


@pytest.mark.parametrize("name", TINY)
def test_identity_hook_leaves_the_output_unchanged(name: str) -> None:
    model = build_trained(name)
    lq = torch.rand(1, 3, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(model(lq, feature_hook=lambda feat, frames: feat), model(lq))


@pytest.mark.parametrize("name", TINY)
def test_hook_output_is_what_gets_reconstructed(name: str) -> None:
    """With the hook replacing the features by a fixed tensor, the output minus the bilinear LR
    base no longer depends on the input; zeroing the features changes the output."""
    model = build_trained(name)
    lq_a, lq_b = torch.rand(2, 1, 3, 3, 6, 6)
    replacement = torch.randn(1, 3, model.fusion_channels, 6, 6)
    with torch.no_grad():
        def replace(feat: torch.Tensor, frames: slice) -> torch.Tensor:
            return replacement[:, frames]

        residual_a = model(lq_a, feature_hook=replace) - bilinear(lq_a, 4)
        residual_b = model(lq_b, feature_hook=replace) - bilinear(lq_b, 4)
        zeroed = model(lq_a, feature_hook=lambda feat, frames: torch.zeros_like(feat))
        plain = model(lq_a)
    torch.testing.assert_close(residual_a, residual_b)
    assert not torch.allclose(zeroed, plain)


@pytest.mark.parametrize("name", TINY)
def test_untrained_backbone_outputs_the_bilinear_upsampling(name: str) -> None:
    lq = torch.rand(1, 3, 3, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(build(name)(lq), bilinear(lq, 4))


def test_hook_must_keep_the_shape() -> None:
    model = build("basicvsr_tiny")
    with pytest.raises(ValueError, match="feature_hook"), torch.no_grad():
        model(torch.rand(1, 2, 3, 8, 8), feature_hook=lambda feat, frames: feat[:, :, :1])


@pytest.mark.parametrize("name", WITH_SPYNET)
def test_flow_parameters_are_exactly_spynet(name: str) -> None:
    model = build(name)
    flow_ids = {id(p) for p in model.flow_parameters()}
    assert flow_ids == {id(p) for p in model.spynet.parameters()}
    assert flow_ids and flow_ids < {id(p) for p in model.parameters()}


def test_iconvsr_keyframes_are_strided_and_include_the_last_frame() -> None:
    model = build("iconvsr_tiny")
    assert model.keyframe_stride == 2
    assert model.keyframes(1) == [0]
    assert model.keyframes(5) == [0, 2, 4]
    assert model.keyframes(6) == [0, 2, 4, 5]


def test_edvr_has_no_flow_parameters() -> None:
    assert list(build("edvr_tiny").flow_parameters()) == []


@pytest.mark.parametrize("name", WITH_SPYNET)
def test_gradients_reach_spynet(name: str) -> None:
    model = build_trained(name)
    lq = torch.rand(1, 3, 3, 6, 6)
    model(lq).sub(bilinear(torch.rand_like(lq), 4)).abs().mean().backward()
    grads = [p.grad for p in model.flow_parameters()]
    assert all(grad is not None for grad in grads)
    assert sum(grad.abs().sum() for grad in grads) > 0


def test_edvr_frame_depends_only_on_its_window() -> None:
    model = build_trained("edvr_tiny")
    radius = model.num_frames // 2
    num_frames = 2 * model.num_frames + 1
    lq = torch.rand(1, num_frames, 3, 6, 6)
    with torch.no_grad():
        before = model(lq)
        for changed in (0, num_frames // 2, num_frames - 1):
            perturbed = lq.clone()
            perturbed[:, changed] = torch.rand(3, 6, 6)
            after = model(perturbed)
            for frame in range(num_frames):
                unchanged = torch.equal(after[:, frame], before[:, frame])
                assert unchanged == (abs(frame - changed) > radius), (changed, frame)


def pyramid_frames_held(model: torch.nn.Module, num_frames: int) -> tuple[int, int]:
    """Run ``model`` (EDVR or IconVSR) without autograd on a ``num_frames`` clip; return the
    frames whose pyramid features were computed and the most frames whose features were held
    (alive) at once when a window was aligned."""
    fusion = getattr(model, "window_fusion", getattr(model, "keyframe_fusion", None))
    computed, alive = [0], [0]
    most_alive = []

    def counted(padded: torch.Tensor) -> list[torch.Tensor]:
        levels = fusion.__class__.pyramid_features(fusion, padded)
        count = len(padded)
        computed[0] += count
        alive[0] += count
        weakref.finalize(levels[0], lambda: alive.__setitem__(0, alive[0] - count))
        return levels

    fusion.pyramid_features = counted
    fusion.pcd_align.register_forward_pre_hook(lambda *_: most_alive.append(alive[0]))
    with torch.no_grad():
        model(torch.rand(1, num_frames, 3, 8, 8))
    del fusion.pyramid_features
    return computed[0], max(most_alive)


@pytest.mark.parametrize("clip_ends", ["mirror", "basicsr"])
def test_edvr_inference_computes_each_frame_once_and_holds_a_window_not_the_clip(
    clip_ends: str,
) -> None:
    """Without autograd, each frame's pyramid is computed once, and only while windows still
    need it is it held: the frames held at once do not grow with the clip's length."""
    model = build("edvr_tiny")
    model.clip_ends = check_clip_ends(clip_ends)
    held = {}
    for num_frames in (12, 24):
        computed, held[num_frames] = pyramid_frames_held(model, num_frames)
        assert computed == num_frames
    assert held[12] == held[24] <= 2 * model.num_frames, held


@pytest.mark.parametrize("name", ["basicvsr_tiny", "iconvsr_tiny"])
def test_inference_reconstructs_as_the_forward_branch_goes(name: str) -> None:
    """Without autograd, each group is reconstructed as soon as the forward branch has reached
    its last frame (so the branch's states are held for a group, not the clip); in training
    after the whole branch."""
    model = build(name)
    model.inference_group = 2
    steps_before_each_group: list[int] = []
    steps = [0]
    model.forward_trunk.register_forward_hook(lambda *_: steps.__setitem__(0, steps[0] + 1))
    model.head.register_forward_pre_hook(lambda *_: steps_before_each_group.append(steps[0]))
    lq = torch.rand(1, 7, 3, 8, 8)
    with torch.no_grad():
        model(lq)
    assert steps_before_each_group == [2, 4, 6, 7]
    steps[0] = 0
    steps_before_each_group.clear()
    model(lq)
    assert steps_before_each_group == [7]


def test_window_indices_reflect_at_the_ends() -> None:
    window, num_frames = 5, 7
    radius = window // 2
    indices = window_indices(num_frames, window)
    offsets = torch.arange(-radius, radius + 1)
    for frame in range(num_frames):
        wanted = frame + offsets
        wanted = torch.where(wanted < 0, -wanted, wanted)  # mirror about the first frame
        wanted = torch.where(wanted >= num_frames, 2 * (num_frames - 1) - wanted, wanted)
        assert indices[frame].tolist() == wanted.tolist()


@pytest.mark.parametrize("num_frames", [1, 2, 3])
def test_window_indices_of_short_clips_stay_inside(num_frames: int) -> None:
    indices = window_indices(num_frames, 7)
    assert indices.shape == (num_frames, 7)
    assert indices.min() >= 0 and indices.max() < num_frames
    assert indices[:, 3].tolist() == list(range(num_frames))


def test_window_indices_basicsr_is_reflection_circle() -> None:
    """BasicSR's ``generate_frame_indices(t, 7, 5, "reflection_circle")``: its docstring's
    frame 0 is [4, 3, 0, 1, 2]; past an end, the frames beyond the window's other end."""
    indices = window_indices(7, 5, "basicsr")
    assert indices[0].tolist() == [4, 3, 0, 1, 2]
    assert indices[1].tolist() == [4, 0, 1, 2, 3]
    assert indices[3].tolist() == [1, 2, 3, 4, 5]
    assert indices[5].tolist() == [3, 4, 5, 6, 2]
    assert indices[6].tolist() == [4, 5, 6, 3, 2]


@pytest.mark.parametrize("clip_ends", ["mirror", "basicsr"])
@pytest.mark.parametrize("num_frames", [1, 2, 3, 4])
def test_windows_of_short_clips_stay_inside(clip_ends: str, num_frames: int) -> None:
    for indices in (
        window_indices(num_frames, 5, clip_ends),
        keyframe_windows(num_frames, 5, list(range(num_frames)), clip_ends),
    ):
        assert indices.min() >= 0 and indices.max() < num_frames
        assert indices[:, 2].tolist() == list(range(num_frames))


def test_keyframe_windows_basicsr_cut_the_extended_clip() -> None:
    """BasicSR's IconVSR extends the clip by x[:, [4, 3]] before and x[:, [-4, -5]] after and
    cuts each keyframe's window from that."""
    num_frames, keyframes = 12, [0, 5, 10, 11]
    frames = list(range(num_frames))
    extended = [4, 3, *frames, frames[-4], frames[-5]]
    wanted = [extended[key : key + 5] for key in keyframes]
    assert keyframe_windows(num_frames, 5, keyframes, "basicsr").tolist() == wanted
    mirrored = window_indices(num_frames, 5)[keyframes]
    assert keyframe_windows(num_frames, 5, keyframes, "mirror").tolist() == mirrored.tolist()


@pytest.mark.parametrize("name", ["edvr", "edvr_l", "edvr_tiny", "iconvsr"])
def test_configs_keep_mirrored_clip_ends(name: str) -> None:
    assert build(name).clip_ends == "mirror"


def test_clip_ends_must_be_known() -> None:
    with pytest.raises(ValueError, match="clip_ends"):
        check_clip_ends("circular")
    with pytest.raises(ValueError, match="clip_ends"):
        EDVR(num_feat=8, num_frames=3, deformable_groups=2, clip_ends="reflect")


def build_basicsr_ends(name: str):
    model = build_trained(name)
    model.clip_ends = "basicsr"
    return model


def test_edvr_basicsr_ends_use_the_reflection_circle_windows() -> None:
    """Frame 0 of a 5-frame clip with a 3-frame window reads frames [2, 0, 1], not [1, 0, 1]:
    changing frame 2 changes frame 0's output only with BasicSR's clip ends."""
    lq = torch.rand(1, 5, 3, 8, 8)
    perturbed = lq.clone()
    perturbed[:, 2] = torch.rand(3, 8, 8)
    torch.manual_seed(0)
    model = build_basicsr_ends("edvr_tiny")
    with torch.no_grad():
        assert not torch.equal(model(lq)[:, 0], model(perturbed)[:, 0])
        model.clip_ends = "mirror"
        assert torch.equal(model(lq)[:, 0], model(perturbed)[:, 0])


def test_iconvsr_basicsr_ends_run_on_reflect_padded_frames() -> None:
    """At 7x9 LR the whole network runs on the frames reflect-padded to 8x12, cropped after."""
    model = build_basicsr_ends("iconvsr_tiny")
    lq = torch.rand(1, 4, 3, 7, 9)
    padded = F.pad(lq.flatten(0, 1), (0, 3, 0, 1), mode="reflect").unflatten(0, (1, 4))
    seen: list[tuple[int, ...]] = []

    def hook(feat: torch.Tensor, frames: slice) -> torch.Tensor:
        seen.append(tuple(feat.shape))
        return feat

    with torch.no_grad():  # inference: the hook sees one frame at a time (inference_group 1)
        out = model(lq, feature_hook=hook)
        torch.testing.assert_close(out, model(padded)[..., :28, :36])
    assert out.shape == (1, 4, 3, 28, 36)
    assert seen == [(1, 1, model.fusion_channels, 7, 9)] * 4


def test_edvr_rejects_an_even_window() -> None:
    with pytest.raises(ValueError, match="odd"):
        EDVR(num_feat=8, num_frames=4, deformable_groups=2)


def test_head_rejects_unsupported_scales() -> None:
    with pytest.raises(ValueError, match="scale"):
        PixelShuffleHead(8, scale=5)


def test_conv_init_preserves_the_signal_through_a_chain() -> None:
    """Kaiming init for leaky ReLU keeps the second moment of the signal (within a factor of 2
    over four convs; PyTorch's default init loses about a thousandfold here)."""
    x = torch.randn(2, 64, 48, 48)
    y = x
    with torch.no_grad():
        for _ in range(4):
            y = leaky_relu(conv(64, 64)(y))
    assert 0.5 < (y.square().mean() / x.square().mean()).item() < 2.0


def test_flow_warp_with_a_constant_flow_shifts_the_image() -> None:
    image = torch.rand(2, 3, 6, 7)
    flow = torch.zeros(2, 2, 6, 7)
    flow[:, 0] = 2.0  # sample two pixels to the right
    flow[:, 1] = -1.0  # and one pixel up
    warped = flow_warp(image, flow)
    torch.testing.assert_close(warped[:, :, 1:, :-2], image[:, :, :-1, 2:])
    outside = torch.cat([warped[:, :, 0].flatten(), warped[:, :, :, -2:].flatten()])
    torch.testing.assert_close(outside, torch.zeros_like(outside))  # zero padding


def test_resize_flow_scales_the_vectors() -> None:
    flow = torch.ones(1, 2, 4, 6)
    resized = resize_flow(flow, (12, 3))
    assert resized.shape == (1, 2, 12, 3)
    torch.testing.assert_close(resized[:, 0], torch.full((1, 12, 3), 0.5))
    torch.testing.assert_close(resized[:, 1], torch.full((1, 12, 3), 3.0))


def test_spynet_runs_on_any_size_and_loads_local_weights(tmp_path: Path) -> None:
    trained = SPyNet(num_levels=3, channels=(4, 4), kernel_size=3)
    for parameter in trained.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    path = tmp_path / "spynet.pth"
    torch.save({"params": trained.state_dict()}, path)
    loaded = SPyNet(num_levels=3, channels=(4, 4), kernel_size=3, weights_path=path)
    ref, supp = torch.rand(2, 2, 3, 7, 11)
    flow = loaded(ref, supp)
    assert flow.shape == (2, 2, 7, 11)
    torch.testing.assert_close(flow, trained(ref, supp))


def test_untrained_spynet_gives_zero_flow() -> None:
    flow = SPyNet(num_levels=3, channels=(4, 4), kernel_size=3)(*torch.rand(2, 1, 3, 8, 8))
    assert flow.abs().max() == 0


@pytest.mark.parametrize("size", [(5, 6), (1, 1)])
def test_deform_conv_by_sampling_matches_torchvision(size: tuple[int, int]) -> None:
    """Values and gradients, in float64, with offsets reaching past the borders."""
    conv = ModulatedDeformConv2d(8, 6, deformable_groups=2).double()
    x = torch.rand(2, 8, *size, dtype=torch.float64, requires_grad=True)
    raw = torch.randn(2, conv.offset_mask_channels, *size, dtype=torch.float64)
    raw[:, :36] *= 3
    offset, mask = (t.detach().requires_grad_() for t in conv.split_offset_and_mask(raw))
    inputs = (x, offset, conv.weight, conv.bias, mask)

    def value_and_grads(function):
        out = function()
        return (out, *torch.autograd.grad(out.square().sum(), inputs))

    ours = value_and_grads(lambda: deform_conv2d_by_sampling(*inputs))
    reference = value_and_grads(
        lambda: deform_conv2d(x, offset, conv.weight, conv.bias, padding=1, mask=mask)
    )
    for mine, theirs in zip(ours, reference, strict=True):
        torch.testing.assert_close(mine, theirs)
    torch.testing.assert_close(conv(x, offset, mask), reference[0])


def test_second_order_alignment_starts_at_the_flows() -> None:
    """Untrained, the alignment samples each state at its flow with half-weight taps: for a
    uniform integer flow, half a plain conv of the shifted states (plus the bias)."""
    channels = 4
    align = SecondOrderDeformableAlignment(channels, deformable_groups=2, max_residue_magnitude=10)
    # zero within two pixels of the border, so no tap reads the conv's zero padding
    states = F.pad(torch.rand(1, 2 * channels, 2, 3), (2, 2, 2, 2))
    flow_1 = torch.tensor([1.0, -2.0]).view(1, 2, 1, 1).expand(1, 2, 6, 7)  # (dx, dy)
    flow_2 = torch.tensor([-1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 6, 7)
    shifted = torch.zeros_like(states)
    shifted[:, :channels, 2:, :-1] = states[:, :channels, :-2, 1:]  # value at (y - 2, x + 1)
    shifted[:, channels:, :, 1:] = states[:, channels:, :, :-1]  # value at (y, x - 1)
    weight, bias = align.deform.weight, align.deform.bias
    expected = 0.5 * F.conv2d(shifted, weight, padding=1) + bias.view(1, -1, 1, 1)
    condition = torch.rand(1, 3 * channels, 6, 7)
    torch.testing.assert_close(align(states, condition, flow_1, flow_2), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the torchvision kernel path is CUDA's")
def test_deform_conv_on_cuda_matches_the_cpu_path() -> None:
    conv = ModulatedDeformConv2d(8, 6, deformable_groups=2)
    x = torch.rand(2, 8, 5, 6)
    offset, mask = conv.split_offset_and_mask(torch.randn(2, conv.offset_mask_channels, 5, 6))
    on_cpu = conv(x, offset, mask)
    on_cuda = conv.cuda()(x.cuda(), offset.cuda(), mask.cuda())
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, rtol=1e-4, atol=1e-4)
