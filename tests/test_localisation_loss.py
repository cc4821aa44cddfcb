"""The localisation terms (the LVS-style contrast, the synchrony teacher and the synchrony
contrast): what they reward on hand-built maps, which clips and frames they learn from, where
their gradients go, and that asking MS-AVF for its embeddings changes nothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from avvsr.models.audio_encoder import AudioEncoder
from avvsr.models.avvsr_net import AVVSRNet
from avvsr.models.backbones.basicvsr import BasicVSR
from avvsr.models.fusion import MSAVF
from avvsr.models.localisation_loss import (
    LVSLocalisationLoss,
    SynchronyContrastLoss,
    SynchronyTeacherLoss,
    SynchronyTerm,
)
from avvsr.models.synchrony import AudioVisualSynchrony

SIZE = 4  # h = w of the hand-built maps


def two_clips_with_their_own_regions(frames: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys ``(2, T, 3, 4, 4)`` and queries ``(2, T, 3)``: clip 0's audio is the direction e0,
    clip 1's e1; clip 0's frame holds e0 in its top-left quarter, clip 1's e1 in its
    bottom-right one, the rest of both frames the background direction e2. So each clip's audio
    has cosine 1 with its own region and 0 everywhere else, in both frames."""
    basis = torch.eye(3)
    keys = basis[2][None, None, :, None, None].repeat(2, frames, 1, SIZE, SIZE)
    keys[0, :, :, :2, :2] = basis[0][:, None, None]
    keys[1, :, :, 2:, 2:] = basis[1][:, None, None]
    query = basis[:2][:, None].repeat(1, frames, 1)
    return keys, query


ALL = torch.ones(2, dtype=torch.bool)


def test_each_clips_audio_matching_a_region_of_its_own_frame_costs_little() -> None:
    keys, query = two_clips_with_their_own_regions()
    assert LVSLocalisationLoss()(keys, query, ALL) < 1e-4


def test_audio_that_matches_the_other_clips_frame_instead_costs_much() -> None:
    keys, query = two_clips_with_their_own_regions()
    # Swapped audio: the own maps are 0 everywhere, the other clip's audio matches a region.
    # Then the positive (0) is below a negative (1): -log(1 / (2 + e^(1 / 0.07))) ~ 14.3.
    assert LVSLocalisationLoss()(keys, query.flip(0), ALL) > 10


def test_audio_that_matches_its_whole_frame_costs_more_than_audio_that_matches_a_region() -> None:
    keys, query = two_clips_with_their_own_regions()
    loss = LVSLocalisationLoss()
    # Each frame's keys are its own audio's direction: cosine 1 at every pixel.
    everywhere = query[:, :, :, None, None].expand(-1, -1, -1, SIZE, SIZE)
    # Positive and hard negative are then equal (and the other clip's audio matches nothing):
    # -log(e^s / (2 e^s + 1)) ~ log 2.
    flat = loss(everywhere, query, ALL)
    assert flat.item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-3)
    assert loss(keys, query, ALL) < flat / 100


def test_only_clips_that_hear_their_own_audio_are_learnt_from() -> None:
    keys, query = two_clips_with_their_own_regions()
    keys[1] = F.normalize(torch.ones_like(keys[1]), dim=1)  # clip 1's audio matches nothing well
    loss = LVSLocalisationLoss()
    both = loss(keys, query, ALL)
    assert loss(keys, query, torch.tensor([True, False])) < 1e-4 < both
    assert loss(keys, query, torch.tensor([False, False])) == 0


@pytest.mark.parametrize(("term", "options", "named"), [
    *((term, {"weight": 0}, "weight")
      for term in (LVSLocalisationLoss, SynchronyTeacherLoss, SynchronyContrastLoss)),
    (LVSLocalisationLoss, {"positive_threshold": 0.3, "negative_threshold": 0.5}, "threshold"),
    (LVSLocalisationLoss, {"region_temperature": 0}, "temperature"),
    (LVSLocalisationLoss, {"contrast_temperature": -1}, "temperature"),
    (SynchronyTeacherLoss, {"positive_threshold": 0.2, "negative_threshold": 0.2}, "threshold"),
    (SynchronyTeacherLoss, {"logit_temperature": 0}, "logit_temperature"),
    (SynchronyTeacherLoss, {"window": 4}, "window"),
    (SynchronyTeacherLoss, {"active_luma_grey": -1}, "active_luma_grey"),
    (SynchronyTeacherLoss, {"teaches": "backbone"}, "teaches"),
    (SynchronyContrastLoss, {"contrast_temperature": 0}, "contrast_temperature"),
    (SynchronyContrastLoss, {"window": 2}, "window"),
    (SynchronyContrastLoss, {"queue_frames": -1}, "queue_frames"),
    (SynchronyContrastLoss, {"teaches": "backbone"}, "teaches"),
])
def test_settings_that_turn_a_term_off_or_make_no_sense_are_refused(
    term: type, options: dict, named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        term(**options)


def test_mismatched_shapes_are_refused() -> None:
    keys, query = two_clips_with_their_own_regions()
    with pytest.raises(ValueError, match="anchors"):
        LVSLocalisationLoss()(keys, query, torch.ones(3, dtype=torch.bool))


def small_fusion() -> tuple[MSAVF, AudioEncoder, torch.Tensor, torch.Tensor]:
    """A 3-scale MS-AVF, its audio encoder, and features ``(B*T = 6, 8, 6, 6)`` and log-mel
    ``(B = 2, T = 3, 16, 9)``."""
    encoder = AudioEncoder(embed_dim=6, widths=(8,), frequency_bands=2)
    fusion = MSAVF(visual_channels=8, audio_dim=6, scales=3, hidden_channels=8, embed_dim=4)
    return fusion, encoder, torch.randn(6, 8, 6, 6), torch.randn(2, 3, 16, 9)


def test_the_term_trains_what_the_finest_mask_is_computed_from() -> None:
    fusion, encoder, feat, log_mel = small_fusion()
    feat.requires_grad_(True)
    _, _, spaces = fusion(feat, encoder(log_mel).flatten(0, 1), return_embeddings=True)
    finest = spaces[0]
    LVSLocalisationLoss()(
        finest.keys.unflatten(0, (2, 3)), finest.query.unflatten(0, (2, 3)), ALL
    ).backward()

    def has_gradient(module: torch.nn.Module) -> bool:
        return all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    finest_attention = fusion.fuse[0]
    for part in (finest_attention.visual_proj, finest_attention.audio_proj, fusion.stem, encoder):
        assert has_gradient(part), part
    assert feat.grad.abs().sum() > 0  # and on into the backbone
    # The mask's temperature and bias keep its ordering, which is what the term trains.
    assert finest_attention.log_temperature.grad is None
    assert not any(p.grad is not None for p in fusion.fuse[1].parameters())  # coarser scales


def test_asking_for_the_embeddings_changes_no_output_and_they_make_the_masks() -> None:
    fusion, encoder, feat, log_mel = small_fusion()
    audio = encoder(log_mel).flatten(0, 1)
    fused, masks = fusion(feat, audio)
    fused_too, masks_too, spaces = fusion(feat, audio, return_embeddings=True)
    assert torch.equal(fused, fused_too)
    assert all(torch.equal(a, b) for a, b in zip(masks, masks_too, strict=True))
    assert len(spaces) == len(masks) == 3
    for mask, space, attention in zip(masks, spaces, fusion.fuse, strict=True):
        assert torch.allclose(space.keys.norm(dim=1), torch.ones(()))
        cosine = torch.einsum("nehw,ne->nhw", space.keys, space.query)[:, None]
        remade = torch.sigmoid(attention.log_temperature.exp() * cosine + attention.logit_bias)
        assert torch.allclose(remade, mask)


def small_network(**fusion_options) -> AVVSRNet:
    """A 2-scale MS-AVF on an 8-channel BasicVSR with a small audio encoder (seeded)."""
    torch.manual_seed(0)
    return AVVSRNet(
        BasicVSR(num_feat=8, num_blocks=1, hr_channels=8),
        AudioEncoder(embed_dim=6, widths=(8,), frequency_bands=2),
        lambda **channels: MSAVF(**channels, scales=2, **fusion_options),
    )


def test_the_concat_baseline_has_no_embeddings() -> None:
    fusion = MSAVF(visual_channels=8, audio_dim=6, scales=2, attention=False)
    assert fusion(torch.randn(2, 8, 5, 5), torch.randn(2, 6), return_embeddings=True)[2] == []



def synchrony_of_the_regions(frames: int = 2) -> torch.Tensor:
    """A synchrony map ``(2, T, 1, 4, 4)`` of the frames of
    :func:`two_clips_with_their_own_regions`: each clip's region in step with its sound (0.9),
    the rest out of step (0)."""
    synchrony = torch.zeros(2, frames, 1, SIZE, SIZE)
    synchrony[0, :, :, :2, :2] = 0.9
    synchrony[1, :, :, 2:, 2:] = 0.9
    return synchrony


ACTIVE = torch.full((2, 2, 1, SIZE, SIZE), 10.0)  # every pixel's luma varies (grey levels)


def test_the_teacher_rewards_audio_that_matches_what_moves_with_it() -> None:
    keys, query = two_clips_with_their_own_regions()
    teacher = SynchronyTeacherLoss()
    # Own region: cosine 1, logit 10, the rest cosine 0: softplus(-10) + softplus(0) ~ log 2.
    matched = teacher(keys, query, synchrony_of_the_regions(), ACTIVE, ALL)
    assert matched.item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-3)
    # The other clip's audio: cosine 0 everywhere, 2 log 2.
    swapped = teacher(keys, query.flip(0), synchrony_of_the_regions(), ACTIVE, ALL)
    assert swapped.item() == pytest.approx(2 * matched.item(), abs=1e-3)
    # The rest of each frame turned away from its audio (cosine -1): almost no cost; the
    # region turned away and the rest towards it: softplus(10) twice.
    own = query[:, :, :, None, None].expand_as(keys)
    background = keys[:, :, 2:3] > 0  # (2, T, 1, 4, 4)
    away = torch.where(background, -own, own)
    assert teacher(away, query, synchrony_of_the_regions(), ACTIVE, ALL) < 1e-3
    assert teacher(-away, query, synchrony_of_the_regions(), ACTIVE, ALL) > 19


def test_the_teacher_learns_only_from_frames_it_can_mark_of_clips_hearing_their_sound() -> None:
    keys, query = two_clips_with_their_own_regions()
    teacher = SynchronyTeacherLoss()
    synchrony = synchrony_of_the_regions()
    wrong = query.flip(0)  # every clip's audio matches the other's region: a cost where taught
    both = teacher(keys, wrong, synchrony, ACTIVE, ALL)
    first_only = teacher(keys, wrong, synchrony, ACTIVE, torch.tensor([True, False]))
    assert first_only == pytest.approx(both)
    assert teacher(keys, wrong, synchrony, ACTIVE, torch.tensor([False, False])) == 0
    # A frame whose loudness did not change (no pixel marked sounding) teaches nothing, nor
    # one where every pixel is marked: the mean is over the other frames only.
    unmarked = synchrony.clone()
    unmarked[:, 1] = 0.0
    assert teacher(keys, wrong, unmarked, ACTIVE, ALL) == pytest.approx(both)
    unmarked[:, 1] = 0.9
    assert teacher(keys, wrong, unmarked, ACTIVE, ALL) == pytest.approx(both)
    assert teacher(keys, wrong, torch.zeros_like(synchrony), ACTIVE, ALL) == 0


def test_a_still_pixel_out_of_step_is_no_negative_of_the_teacher() -> None:
    """Only what varies without following the sound is taught as silent: with the background
    still, audio that matches the whole frame costs as little as audio that matches its
    region; with the background varying, it costs its softplus(10) more."""
    keys, query = two_clips_with_their_own_regions()
    teacher = SynchronyTeacherLoss()
    everywhere = query[:, :, :, None, None].expand_as(keys)
    still_background = ACTIVE * synchrony_of_the_regions().gt(0)
    regions = teacher(keys, query, synchrony_of_the_regions(), still_background, ALL)
    # Without a negative in a frame the frame teaches nothing: a still frame but for the
    # sounding region is no lesson.
    assert regions == 0
    half_active = still_background.clone()
    half_active[..., 2:, :2] = 10.0  # one quarter of each frame varies out of step
    matched = teacher(keys, query, synchrony_of_the_regions(), half_active, ALL)
    whole = teacher(everywhere, query, synchrony_of_the_regions(), half_active, ALL)
    assert matched < 1e-3 + torch.log(torch.tensor(2.0)) and whole > matched + 9


def test_the_teacher_sees_the_synchrony_at_each_scale_as_the_fusion_does() -> None:
    keys, query = two_clips_with_their_own_regions()
    teacher = SynchronyTeacherLoss()
    # At twice the keys' size, area-averaged down to them: the same marks.
    finer = synchrony_of_the_regions().repeat_interleave(2, -1).repeat_interleave(2, -2)
    finer_active = ACTIVE.repeat_interleave(2, -1).repeat_interleave(2, -2)
    assert teacher(keys, query, finer, finer_active, ALL) == pytest.approx(
        teacher(keys, query, synchrony_of_the_regions(), ACTIVE, ALL).item()
    )


def test_the_teacher_refuses_a_synchrony_of_other_frames() -> None:
    keys, query = two_clips_with_their_own_regions()
    with pytest.raises(ValueError, match="synchrony"):
        SynchronyTeacherLoss()(keys, query, synchrony_of_the_regions(frames=3), ACTIVE, ALL)


# The synchrony-taught terms, with settings under which random maps mark pixels on both sides.
SYNCHRONY_TERMS = {
    "teacher": lambda **reach: SynchronyTeacherLoss(
        window=3, positive_threshold=0.1, negative_threshold=0.0, **reach
    ),
    "contrast": lambda **reach: SynchronyContrastLoss(window=3, positive_threshold=0.1, **reach),
}


@pytest.mark.parametrize("term_name", SYNCHRONY_TERMS)
def test_a_synchrony_term_trains_every_scales_attention_space_and_nothing_of_the_masks_scalars(
    term_name: str,
) -> None:
    """On a real network's output: the term is the mean over the scales of its value on the
    synchrony of the batch's frames and audio, and its gradient reaches each scale's
    projections (and the backbone), not the masks' temperature and bias nor the synchrony
    weight."""
    net = small_network(synchrony_window=3)
    lq, log_mel = torch.rand(2, 3, 3, 8, 8), torch.randn(2, 3, 16, 9)
    output = net(lq, log_mel, return_embeddings=True)
    teacher: SynchronyTerm = SYNCHRONY_TERMS[term_name]()
    term = teacher.of_output(output, ALL, lq, log_mel)
    synchrony, luma_std = AudioVisualSynchrony(3).statistics(lq, log_mel)
    per_scale = [teacher.on_scale(scale, space.keys, space.query, synchrony, luma_std, ALL)
                 for scale, space in enumerate(output.embeddings)]
    assert term.item() == pytest.approx(torch.stack(per_scale).mean().item())
    assert all(p > 0 for p in per_scale)
    term.backward()
    for attention in net.fusion.fuse:
        assert attention.visual_proj.weight.grad.abs().sum() > 0
        assert attention.audio_proj.weight.grad.abs().sum() > 0
        for scalar in (attention.log_temperature, attention.logit_bias,
                       attention.stored_synchrony_weight):
            assert scalar.grad is None or scalar.grad.abs().sum() == 0
    assert net.fusion.stem[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("term_name", SYNCHRONY_TERMS)
@pytest.mark.parametrize("teaches", ["audio", "projections"])
def test_a_synchrony_term_kept_off_the_features_trains_only_what_it_teaches(
    teaches: str, term_name: str
) -> None:
    """Kept off the visual features (``audio``) or off every input of the projections
    (``projections``), the term has the whole-network term's value (the projection embeddings
    equal the mask's), and its gradient reaches each scale's two projections, the audio
    encoder only with ``audio``, and never the fusion's pyramid, the backbone nor the FiLM;
    asking for the projection embeddings leaves the network's output unchanged."""
    net = small_network()
    lq, log_mel = torch.rand(2, 3, 3, 8, 8), torch.randn(2, 3, 16, 9)
    whole = SYNCHRONY_TERMS[term_name]()
    kept_off = SYNCHRONY_TERMS[term_name](teaches=teaches)
    assert kept_off.needs_projection_embeddings and not whole.needs_projection_embeddings
    plain = net(lq, log_mel, return_embeddings=True)
    output = net(lq, log_mel, return_embeddings=True, projection_embeddings=True)
    assert torch.equal(output.sr, plain.sr)
    for space in output.embeddings:
        assert torch.equal(space.projection_keys, space.keys)
        assert torch.equal(space.projection_query, space.query)
    assert plain.embeddings[0].projection_keys is None
    term = kept_off.of_output(output, ALL, lq, log_mel)
    assert term.item() == pytest.approx(whole.of_output(plain, ALL, lq, log_mel).item())
    term.backward()
    for attention in net.fusion.fuse:
        assert attention.visual_proj.weight.grad.abs().sum() > 0
        assert attention.audio_proj.weight.grad.abs().sum() > 0
        assert attention.film.weight.grad is None
    untouched = [net.fusion.stem, net.fusion.downsample, net.backbone]
    assert all(p.grad is None for module in untouched for p in module.parameters())
    audio_grads = [p.grad for p in net.audio_encoder.parameters()]
    if teaches == "audio":
        assert any(g is not None and g.abs().sum() > 0 for g in audio_grads)
    else:
        assert all(g is None for g in audio_grads)


def test_projection_embeddings_need_the_attentions_embeddings() -> None:
    fusion = MSAVF(visual_channels=8, audio_dim=6, scales=2)
    feat, audio = torch.rand(2, 8, 4, 4), torch.randn(2, 6)
    with pytest.raises(ValueError, match="return_embeddings"):
        fusion(feat, audio, projection_embeddings=True)
    concat = MSAVF(visual_channels=8, audio_dim=6, scales=2, attention=False)
    with pytest.raises(ValueError, match="attention"):
        concat(feat, audio, return_embeddings=True, projection_embeddings=True)
    net = small_network()  # the network passes the request on and does not drop it
    with pytest.raises(ValueError, match="return_embeddings"):
        net(torch.rand(1, 2, 3, 8, 8), torch.randn(1, 2, 16, 9), projection_embeddings=True)


def test_the_teacher_keeps_a_float64_models_precision_and_runs_in_float32_under_bf16() -> None:
    keys, query = two_clips_with_their_own_regions()
    teacher = SynchronyTeacherLoss()
    synchrony = synchrony_of_the_regions()
    exact = teacher(keys.double(), query.double(), synchrony.double(), ACTIVE.double(), ALL)
    assert exact.dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = teacher(keys.bfloat16(), query.bfloat16(), synchrony, ACTIVE, ALL)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(exact.item(), abs=1e-3)


def contrast_logit(cosine: float) -> float:
    """A cosine as :class:`SynchronyContrastLoss`'s default logit."""
    return cosine / SynchronyContrastLoss().contrast_temperature


def test_the_contrast_rewards_audio_that_tells_its_source_from_the_other_clips() -> None:
    """Each clip's sounding key is its region's direction. Own audio: the positive's logit is
    10, the other clip's two frames 0; the other clip's audio: the positive 0, the two
    negatives 10."""
    keys, query = two_clips_with_their_own_regions()
    contrast = SynchronyContrastLoss()
    synchrony = synchrony_of_the_regions()
    high, low = contrast_logit(1.0), contrast_logit(0.0)
    matched = contrast(keys, query, synchrony, ALL)
    expected = -torch.log_softmax(torch.tensor([high, low, low]), 0)[0]
    assert matched.item() == pytest.approx(expected.item(), rel=1e-4)
    swapped = contrast(keys, query.flip(0), synchrony, ALL)
    expected = -torch.log_softmax(torch.tensor([low, high, high]), 0)[0]
    assert swapped.item() == pytest.approx(expected.item(), rel=1e-4)
    # It does not ask where in the frame (the per-pixel teacher does): keys that all match
    # their own audio give the same sounding keys, and the same cost.
    everywhere = query[:, :, :, None, None].expand_as(keys)
    assert contrast(everywhere, query, synchrony, ALL).item() == pytest.approx(matched.item())


def test_the_contrast_learns_only_from_marked_frames_of_clips_hearing_their_sound() -> None:
    keys, query = two_clips_with_their_own_regions()
    contrast = SynchronyContrastLoss()
    synchrony = synchrony_of_the_regions()
    wrong = query.flip(0)
    both = contrast(keys, wrong, synchrony, ALL)
    assert contrast(keys, wrong, synchrony, torch.tensor([True, False])) == pytest.approx(both)
    assert contrast(keys, wrong, synchrony, torch.tensor([False, False])) == 0
    # A clip's own other frames are no negatives: alone in its batch a clip learns nothing.
    assert contrast(keys[:1], wrong[:1], synchrony[:1], ALL[:1]) == 0
    # Clip 1's frame 1 unmarked: no sounding key, so neither an anchor nor a negative.
    unmarked = synchrony.clone()
    unmarked[1, 1] = 0.0
    low, high = contrast_logit(0.0), contrast_logit(1.0)
    clip_0 = -torch.log_softmax(torch.tensor([low, high]), 0)[0]  # one negative left
    clip_1 = -torch.log_softmax(torch.tensor([low, high, high]), 0)[0]  # its frame 0
    expected = (2 * clip_0 + clip_1) / 3
    assert contrast(keys, wrong, unmarked, ALL).item() == pytest.approx(expected.item(), rel=1e-4)
    assert contrast(keys, wrong, torch.zeros_like(synchrony), ALL) == 0


def test_the_contrast_sees_the_synchrony_at_each_scale_as_the_fusion_does() -> None:
    keys, query = two_clips_with_their_own_regions()
    contrast = SynchronyContrastLoss()
    finer = synchrony_of_the_regions().repeat_interleave(2, -1).repeat_interleave(2, -2)
    wrong = query.flip(0)
    assert contrast(keys, wrong, finer, ALL) == pytest.approx(
        contrast(keys, wrong, synchrony_of_the_regions(), ALL).item()
    )


def test_the_contrast_refuses_a_synchrony_of_other_frames() -> None:
    keys, query = two_clips_with_their_own_regions()
    with pytest.raises(ValueError, match="synchrony"):
        SynchronyContrastLoss()(keys, query, synchrony_of_the_regions(frames=3), ALL)


def test_the_contrast_keeps_a_float64_models_precision_and_runs_in_float32_under_bf16() -> None:
    keys, query = two_clips_with_their_own_regions()
    contrast = SynchronyContrastLoss()
    synchrony = synchrony_of_the_regions()
    exact = contrast(keys.double(), query.flip(0).double(), synchrony.double(), ALL)
    assert exact.dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = contrast(keys.bfloat16(), query.flip(0).bfloat16(), synchrony, ALL)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(exact.item(), rel=1e-3)


def test_queued_keys_of_earlier_clips_are_negatives_and_unmarked_places_are_not() -> None:
    keys, query = two_clips_with_their_own_regions()
    contrast = SynchronyContrastLoss()
    synchrony = synchrony_of_the_regions()
    alone = (keys[:1], query[:1], synchrony[:1], ALL[:1])
    # Clip 1's frames, queued from an earlier batch: clip 0 alone in its batch now has them
    # as its two negatives.
    others, has_key = contrast.sounding_keys(keys[1:], synchrony[1:])
    high, low = contrast_logit(1.0), contrast_logit(0.0)
    expected = -torch.log_softmax(torch.tensor([high, low, low]), 0)[0]
    assert contrast(*alone, (others, has_key)).item() == pytest.approx(expected.item(), rel=1e-4)
    # Queued as its own audio's direction, they are as likely as the positive.
    like_it = query[0, :1].expand(2, -1)
    tied = -torch.log_softmax(torch.tensor([high, high, high]), 0)[0]
    assert contrast(*alone, (like_it, has_key)).item() == pytest.approx(tied.item(), rel=1e-4)
    # A place whose frame had no sounding pixel is no negative.
    unmarked = torch.tensor([True, False])
    one_left = -torch.log_softmax(torch.tensor([high, high]), 0)[0]
    assert contrast(*alone, (like_it, unmarked)).item() == pytest.approx(one_left.item(), rel=1e-4)
    assert contrast(*alone, (like_it, ~has_key)) == 0


def test_the_queue_holds_the_newest_sounding_keys_per_scale_and_no_gradient() -> None:
    """On a real network's output: a term with a queue is the queue-less term at the first
    step; after each step every scale's queue holds that step's sounding keys before the
    earlier ones, cut to ``queue_frames``, detached; the next step scores against them."""
    net = small_network()
    lq, log_mel = torch.rand(2, 3, 3, 8, 8), torch.randn(2, 3, 16, 9)
    settings = {"window": 3, "positive_threshold": 0.1}
    queued_term = SynchronyContrastLoss(**settings, queue_frames=10)
    plain = SynchronyContrastLoss(**settings)
    first = net(lq, log_mel, return_embeddings=True)
    assert queued_term.of_output(first, ALL, lq, log_mel).item() == pytest.approx(
        plain.of_output(first, ALL, lq, log_mel).item()
    )
    synchrony = AudioVisualSynchrony(3)(lq, log_mel)
    fresh = [plain.sounding_keys(space.keys, synchrony) for space in first.embeddings]
    assert len(queued_term.queues) == 2
    for (queued, marked), (keys, has_key) in zip(queued_term.queues, fresh, strict=True):
        assert torch.equal(queued, keys) and torch.equal(marked, has_key)  # 6 frames, all kept
        assert not queued.requires_grad
    second_lq = torch.rand_like(lq)
    second = net(second_lq, log_mel, return_embeddings=True)
    kept = list(queued_term.queues)
    term = queued_term.of_output(second, ALL, second_lq, log_mel)
    second_synchrony = AudioVisualSynchrony(3)(second_lq, log_mel)
    by_hand = [queued_term(space.keys, space.query, second_synchrony, ALL, queue)
               for space, queue in zip(second.embeddings, kept, strict=True)]
    assert term.item() == pytest.approx(torch.stack(by_hand).mean().item())
    for (queued, _), space, (earlier, _) in zip(queued_term.queues, second.embeddings, kept,
                                                strict=True):
        newest, _ = plain.sounding_keys(space.keys, second_synchrony)
        assert torch.equal(queued, torch.cat([newest, earlier])[:10])
    assert queued_term.state_dict() == {}  # training state only: checkpoints never hold it
    space = second.embeddings[0]
    other_width = (torch.zeros(3, space.query.shape[-1] + 1), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="queued"):
        queued_term(space.keys, space.query, second_synchrony, ALL, other_width)
