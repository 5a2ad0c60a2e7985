"""engine.temporal: which frames a frame depends on; engine.chains: keyframe chains and their cross-fade."""
from __future__ import annotations

import pytest
import torch

from engine.chains import FaceState, KeyframeChains, crossfade
from engine.temporal import MAX_GAP, TemporalPlan, tracking_extent


def test_plan_at_the_default_interval():
    plan = TemporalPlan.create(48, 8, smoothing=0.5)
    h, la = plan.history, plan.look_ahead
    # kernel radius 3 sigma = 6 frames, bridged gaps up to MAX_GAP = 6; association from 8 frames earlier
    assert (la, h) == (6, 6 + MAX_GAP + 2)
    # written frame -> first projected frame (keyframe of the oldest chain it shows)
    assert [plan.projection_start(i) for i in (0, 7, 8, 47, 48, 55, 56, 95, 96, 103, 104)] == \
        [0, 0, 0, 0, 0, 0, 48, 48, 48, 48, 96]
    assert plan.warmup_start(110) == 96 - h and plan.warmup_start(100) == 48 - h and plan.warmup_start(50) == 0
    assert plan.decode_end(100, 240) == 100 + la and plan.decode_end(238, 240) == 239
    assert [plan.fading_chain(i) for i in (0, 5, 48, 51, 55, 56, 96)] == \
        [None, None, (0, 1 / 9), (0, 4 / 9), (0, 8 / 9), None, (48, 1 / 9)]
    assert [plan.segment_start(i) for i in (0, 55, 56, 103, 104, 200)] == [0, 0, 56, 56, 104, 200]
    assert plan.segments([54, 55, 56, 57, 104]) == [[54, 55], [56, 57], [104]]
    # a chunk on the grid projects exactly V frames it does not write
    assert plan.projection_start(56) == 48 and plan.projection_start(104) == 96


def test_plan_limits_and_modes():
    assert TemporalPlan.create(4, 8, 0.5).overlap == 2  # at most half the interval
    assert TemporalPlan.create(0, 8, 0.5).warmup_start(500) == 0  # one chain: from the start
    assert TemporalPlan.create(0, 8, 0.5).segment_start(500) == 0
    plain = TemporalPlan.create(48, 0, 0.5)
    assert plain.projection_start(48) == 48 and plain.segment_start(50) == 48 and plain.fading_chain(48) is None
    behind, ahead, history = tracking_extent(0.5, "causal")
    assert ahead == 0 and behind > 8 and history == behind + MAX_GAP + 2
    assert tracking_extent(0.0, "zero-phase")[1] == MAX_GAP  # gaps are bridged even unsmoothed
    assert tracking_extent(1.0, "zero-phase")[1] == 12
    with pytest.raises(ValueError, match="smoothing mode"):
        tracking_extent(0.5, "acausal")


@pytest.mark.parametrize("k, v, smoothing", [(48, 8, 0.5), (48, 0, 0.0), (12, 5, 1.0), (0, 8, 0.5), (7, 3, 0.25)])
def test_every_written_frame_sees_all_it_depends_on(k, v, smoothing):
    """The argument of engine.pipeline, checked for every range A..B of a 150-frame clip: frame t depends on
    the detections of [P(t) - history, t + look_ahead] and on chains starting at keyframes >= P(t); a run
    writing A..B decodes [warmup_start(A), decode_end(B)] and projects from P(A)."""
    plan, n = TemporalPlan.create(k, v, smoothing), 150
    for a in range(n):
        start, p_a = plan.warmup_start(a), plan.projection_start(a)
        for b in range(a, n):
            end = plan.decode_end(b, n)
            for t in (a, b):  # P is monotone (checked below), so the ends are the extreme cases
                p_t = plan.projection_start(t)
                assert p_t >= p_a  # every chain frame t shows starts inside the run
                assert start <= max(0, p_t - plan.history)
                assert end >= min(n - 1, t + plan.look_ahead)
    assert all(plan.projection_start(t) <= plan.projection_start(t + 1) for t in range(n))
    for t in range(n):  # the chains a frame shows start no earlier than P(t)
        fading = plan.fading_chain(t)
        assert plan.chain_of(t) >= plan.projection_start(t)
        assert fading is None or fading[0] >= plan.projection_start(t)


def test_chains_begin_and_end_with_the_plan():
    chains = KeyframeChains(TemporalPlan.create(4, 2, 0.5))
    seen = []
    for index in range(10):
        new, old, weight = chains.begin(index)
        seen.append((new, old, round(weight, 3)))
        chains.carry(new, {"face": index})
        if old is not None:
            chains.carry(old, {"face": -index})
    assert seen == [(0, None, 1.0), (0, None, 1.0), (0, None, 1.0), (0, None, 1.0),
                    (4, 0, 0.333), (4, 0, 0.667), (4, None, 1.0), (4, None, 1.0),
                    (8, 4, 0.333), (8, 4, 0.667)]
    assert chains.state(8, "face") == 9 and chains.state(4, "face") == -9
    # a run that starts projecting inside a cross-fade has no old chain there
    late = KeyframeChains(TemporalPlan.create(4, 2, 0.5))
    assert late.begin(5) == (4, None, 1.0)
    late.carry(4, {"face": 5})
    assert late.begin(7) == (4, None, 1.0) and late.state(4, "face") is None  # a jump starts over


def test_crossfade_is_linear_in_latent_and_noise():
    old = FaceState(torch.zeros(2, 3), [torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 8, 8)])
    new = FaceState(torch.ones(2, 3), [torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 8, 8)])
    mid = crossfade(old, new, 0.25)
    assert torch.allclose(mid.latent, torch.full((2, 3), 0.25))
    assert torch.allclose(mid.noises[0], torch.full((1, 1, 4, 4), 0.25))
    assert torch.allclose(mid.noises[1], torch.full((1, 1, 8, 8), 0.75))
