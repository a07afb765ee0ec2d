"""The gradient switch (docs/method.md §2.6) and the reversed outer loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from purer.config import CurriculumConfig
from purer.inversion.curriculum import GradientSwitch, effective_warmup
from purer.meta.learners import Episode, build_learner, episode_loss, meta_parameters, reversed_outer_loss
from purer.models.backbones import build_backbone


def _run(switch: GradientSwitch, accuracies: list[float], consume: bool = True) -> list[int]:
    """Feed accuracies for iterations 1..n; return the iterations after which the switch is on.

    As in training, an "on" switch is consumed by the next iteration's data step.
    """
    fired = []
    for iteration, accuracy in enumerate(accuracies, start=1):
        if consume and switch.is_on:
            switch.consume()
        switch.observe(iteration, accuracy)
        if switch.is_on:
            fired.append(iteration)
    return fired


def test_warmup_turns_the_switch_on_at_that_iteration_only():
    switch = GradientSwitch(warmup=3, patience=100)
    assert _run(switch, [10.0, 20.0, 30.0, 40.0, 50.0]) == [3]


def test_no_feedback_is_used_before_warmup():
    switch = GradientSwitch(warmup=4, patience=1)
    # flat accuracy before the warm-up would fire a patience-1 switch at once if it were tracked
    assert _run(switch, [5.0, 5.0, 5.0]) == []
    assert switch.state_dict()["best"] is None


def test_plateau_fires_after_patience_non_improving_iterations():
    switch = GradientSwitch(warmup=1, patience=3)
    # it=1 warm-up; it=2 sets max 50; 3: 60 > 50 resets; 4: 60 (equal: +1), 5: 40 (+1), 6: 59 (+1) -> on
    fired = _run(switch, [0.0, 50.0, 60.0, 60.0, 40.0, 59.0, 1.0, 2.0, 3.0])
    # after firing, the maximum is cleared: 1.0 at it=7 is a new max, 2 and 3 keep improving
    assert fired == [1, 6]
    state = switch.state_dict()
    assert state["best"] == 3.0 and state["counter"] == 0


def test_reversed_steps_are_at_least_patience_plus_one_apart():
    patience = 2
    switch = GradientSwitch(warmup=1, patience=patience)
    fired = _run(switch, [50.0] * 30)
    assert fired[0] == 1
    gaps = [b - a for a, b in zip(fired, fired[1:], strict=False)]
    assert gaps and all(gap == patience + 1 for gap in gaps)


def test_disabled_switch_never_fires():
    switch = GradientSwitch(warmup=1, patience=1, enabled=False)
    assert _run(switch, [1.0] * 10) == []


def test_effective_warmup_uses_the_fraction_when_set():
    assert effective_warmup(CurriculumConfig(warmup=7), 100) == 7
    assert effective_warmup(CurriculumConfig(warmup=None, warmup_fraction=0.25), 10) == 2  # round(2.5) = 2
    assert effective_warmup(CurriculumConfig(warmup=None, warmup_fraction=0.5), 9) == 4


def test_state_round_trip_continues_identically():
    accuracies = [float(a) for a in [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4]]
    full = GradientSwitch(warmup=2, patience=2)
    expected = _run(full, accuracies)
    first = GradientSwitch(warmup=2, patience=2)
    head = _run(first, accuracies[:9])
    second = GradientSwitch(warmup=0, patience=99)
    second.load_state_dict(first.state_dict())
    tail = []
    for iteration, accuracy in enumerate(accuracies[9:], start=10):
        if second.is_on:
            second.consume()
        second.observe(iteration, accuracy)
        if second.is_on:
            tail.append(iteration)
    assert head + tail == expected
    assert second.state_dict() == full.state_dict()


# ---------------------------------------------------------------------------------------------
# reversed outer loss
# ---------------------------------------------------------------------------------------------

N_WAY, N_SHOT, N_QUERY, SIZE = 3, 2, 3, 16


def _setup(first_order: bool = False):
    torch.manual_seed(0)
    meta_model = build_backbone("conv4", N_WAY, 1, SIZE, running_stats=False, width=4)
    teacher = build_backbone("conv4", N_WAY, 1, SIZE, running_stats=True, width=4).eval().requires_grad_(False)
    params = meta_parameters(meta_model)
    images = torch.randn(N_WAY * (N_SHOT + N_QUERY), 1, SIZE, SIZE, requires_grad=True)
    labels = torch.arange(N_WAY).repeat_interleave(N_SHOT + N_QUERY)
    learner = build_learner("maml", inner_lr=0.1, first_order=first_order)
    return meta_model, teacher, params, images, labels, learner


def _episode(images: torch.Tensor) -> Episode:
    per_class = images.view(N_WAY, N_SHOT + N_QUERY, *images.shape[1:])
    return Episode(
        support_x=per_class[:, :N_SHOT].reshape(-1, *images.shape[1:]),
        support_y=torch.arange(N_WAY).repeat_interleave(N_SHOT),
        query_x=per_class[:, N_SHOT:].reshape(-1, *images.shape[1:]),
        query_y=torch.arange(N_WAY).repeat_interleave(N_QUERY),
    )


def _outer_loss(learner, meta_model, params, images) -> float:
    loss, _ = episode_loss(learner, meta_model, params, _episode(images.detach()), steps=1, create_graph=False)
    return float(loss.detach())


@pytest.mark.parametrize("first_order", [False, True])
def test_reversed_step_changes_only_the_images_and_raises_the_outer_loss(first_order):
    meta_model, teacher, params, images, labels, learner = _setup(first_order)
    params_before = {k: v.detach().clone() for k, v in params.items()}
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    outer_before = _outer_loss(learner, meta_model, params, images)

    reversed_loss = reversed_outer_loss(learner, meta_model, params, _episode(images), steps=1, adv_scale=10.0)
    torch.testing.assert_close(reversed_loss.detach(), torch.tensor(-10.0 * outer_before), rtol=1e-5, atol=1e-5)
    data_loss = F.cross_entropy(teacher(images), labels) + reversed_loss  # as in the data step
    (grad,) = torch.autograd.grad(data_loss, [images])
    (reversed_grad,) = torch.autograd.grad(
        reversed_outer_loss(learner, meta_model, params, _episode(images), 1, 10.0), [images]
    )
    # support images get gradient through the (always second-order) inner step
    assert reversed_grad.view(N_WAY, N_SHOT + N_QUERY, -1)[:, :N_SHOT].abs().sum() > 0
    with torch.no_grad():
        images -= 1e-3 * reversed_grad

    assert all(p.grad is None for p in params.values())
    assert all(p.grad is None for p in teacher.parameters())
    for name, value in params.items():
        assert torch.equal(value.detach(), params_before[name])
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[name])
    assert grad.shape == images.shape
    assert _outer_loss(learner, meta_model, params, images) > outer_before
