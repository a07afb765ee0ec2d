"""The reversed step's strength relative to each class's inversion term (docs/reversed-strength.md).

Per class c, the data step's image gradient is w̄_c · g_inv,c + a_c · g_rev,c, where g_inv,c is the
unit-weight gradient of the inversion loss of c's teacher, g_rev,c that of −L_outer on the
reversed episode, w̄_c the teacher weight and a_c the reversed coefficient. The per-class strength
is ρ_c = a_c / w̄_c. It is measured here from the production pieces of the data step
(purer.meta.engine) against unit-weight gradients computed independently, and compared with
hand-derived values:

- parity mode (``triangular``, ``adv_scale``): ρ = adv_scale / (K − j) for the classes of teacher j;
- ``adv_strength``: ρ = adv_strength for every class, whatever the weighting and the pool size.

EI (no reversed step) changes with the weighting only through Adam's ε: the image gradient of a
class of teacher j is exactly (K − j) times larger under ``triangular``, and Adam's update
m̂ / (√v̂ + ε) is invariant to a constant per-element gradient scale when ε = 0.
"""

from __future__ import annotations

import statistics
from types import SimpleNamespace

import pytest
import torch
from inversion_helpers import entry, loaded

from purer.config import CurriculumConfig, InversionConfig, LearnerConfig, MetaTrainConfig, load_config
from purer.errors import ConfigError
from purer.inversion.curriculum import (
    GradientSwitch,
    class_strengths,
    effective_warmup,
    reversed_coefficients,
)
from purer.inversion.dataset import DynamicDataset
from purer.inversion.teacher_pool import ResidentPool
from purer.meta.engine import data_step, gradient_ratios, inversion_loss_fn, reversed_term
from purer.meta.learners import build_learner, meta_parameters, reversed_outer_loss
from purer.models.backbones import build_backbone
from purer.seeding import make_generator

SPC, N_SHOT, N_QUERY, SIZE = 3, 1, 2, 16
RTOL = {"rtol": 1e-5, "atol": 1e-7}


def _entries(n_teachers: int, short_last: bool = False) -> list:
    """``n_teachers`` disjoint 3-class conv4 teachers (the last with 2 classes if ``short_last``)."""
    blocks = [[3 * t, 3 * t + 1, 3 * t + 2] for t in range(n_teachers)]
    if short_last:
        blocks[-1] = blocks[-1][:2]
    return [entry(t, block) for t, block in enumerate(blocks)]


def _run_state(entries: list, weighting: str, curriculum: CurriculumConfig, n_way: int | None = None):
    """A minimal (run, state) pair for purer.meta.engine: resident pool, dynamic dataset, meta model.

    The reversed episode takes ``n_way`` classes (default: every class, so each class is measured).
    """
    pool = ResidentPool(None, loaded=loaded(entries))
    data = DynamicDataset(pool.teachers, SPC, 0.25, make_generator(0, "pseudo"))
    n_way = data.n_classes if n_way is None else n_way
    mt = MetaTrainConfig(
        n_way=n_way, n_query=N_QUERY, learner=LearnerConfig(inner_lr=0.1),
        inversion=InversionConfig(jitter=0, teacher_weighting=weighting, teacher_batching="loop"),
        curriculum=curriculum,
    )
    run = SimpleNamespace(mt=mt, device=torch.device("cpu"), manifest=SimpleNamespace(teachers=pool.teachers),
                          n_shot=N_SHOT, spec=SimpleNamespace(input_size=SIZE, channels=3))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        meta_model = build_backbone("conv4", n_way, 3, SIZE, running_stats=False, width=4).requires_grad_(False)
    generators = {name: make_generator(0, name) for name in ("jitter", "adv_episodes", "teachers")}
    state = SimpleNamespace(pool=pool, data=data, generators=generators, meta_model=meta_model,
                            params=meta_parameters(meta_model), learner=build_learner("maml", 0.1, False),
                            switch=GradientSwitch(warmup=1, patience=1))
    return run, state


def _grads(loss: torch.Tensor, data: DynamicDataset) -> torch.Tensor:
    """The image gradient of the (single) domain, zeros where the loss does not reach."""
    (grad,) = torch.autograd.grad(loss, data.parameters(), allow_unused=True)
    return torch.zeros_like(data.parameters()[0]) if grad is None else grad


def _per_class(grad: torch.Tensor, data: DynamicDataset) -> dict[int, torch.Tensor]:
    domain = next(iter(data.domains.values()))
    return {c: grad[domain.rows([c])] for c in domain.class_ids}


def _measured_strengths(entries: list, weighting: str, curriculum: CurriculumConfig) -> dict[int, float]:
    """ρ_c from the data step's two gradients, each divided by its unit-weight counterpart.

    Also checks that each production gradient is exactly a multiple of its unit-weight gradient
    (the same direction), so the ratio of norms is the ratio of the coefficients.
    """
    run, state = _run_state(entries, weighting, curriculum)
    data, pool = state.data, state.pool
    adv_generator = make_generator(0, "adv_episodes")  # the same draws as the step's episode
    loss, _ = inversion_loss_fn(run, state)(data, state.generators["jitter"], run.mt.inversion, None)
    inversion = _per_class(_grads(loss, data), data)
    reversed_ = _per_class(_grads(reversed_term(run, state, None), data), data)

    unit_config = InversionConfig(jitter=0)
    unit_inversion = {}
    for position, teacher in enumerate(pool.teachers):
        alone, _ = pool.reference_inversion_loss(data, make_generator(0, "jitter"), unit_config, [position])
        unit_inversion |= {c: g for c, g in _per_class(_grads(alone, data), data).items() if c in teacher.classes}
    episode = data.sample_episode(run.mt.n_way, N_SHOT, N_QUERY, adv_generator, detach=False)
    unit_reversed = _per_class(_grads(reversed_outer_loss(state.learner, state.meta_model, state.params, episode, 1,
                                                          1.0), data), data)
    strengths = {}
    for c in inversion:
        w = float(inversion[c].norm() / unit_inversion[c].norm())
        a = float(reversed_[c].norm() / unit_reversed[c].norm())
        torch.testing.assert_close(inversion[c], w * unit_inversion[c], **RTOL)
        torch.testing.assert_close(reversed_[c], a * unit_reversed[c], **RTOL)
        strengths[c] = a / w
    return strengths


# ---------------------------------------------------------------------------------------------
# parity mode: the reference code's per-class strength
# ---------------------------------------------------------------------------------------------


def test_parity_mode_gives_the_reference_strength_per_class():
    """Three teachers (the last block short), triangular weights 3, 2, 1, adv_scale 10:
    ρ = 10/3 for classes 0-2, 10/2 for 3-5, 10/1 for 6-7 (hand-derived)."""
    strengths = _measured_strengths(_entries(3, short_last=True), "triangular", CurriculumConfig(adv_scale=10.0))
    expected = {0: 10 / 3, 1: 10 / 3, 2: 10 / 3, 3: 5.0, 4: 5.0, 5: 5.0, 6: 10.0, 7: 10.0}
    assert strengths == pytest.approx(expected, rel=1e-4)


def test_equal_weights_give_adv_scale_to_every_class():
    strengths = _measured_strengths(_entries(3, short_last=True), "equal", CurriculumConfig(adv_scale=10.0))
    assert strengths == pytest.approx(dict.fromkeys(range(8), 10.0), rel=1e-4)


def test_reference_strengths_on_a_paper_pool():
    """64 classes in 13 blocks (the last of 4), triangular, adv_scale 10: block j gets 10 / (13 − j)."""
    teachers = [SimpleNamespace(classes=tuple(range(5 * j, min(64, 5 * j + 5)))) for j in range(13)]
    strengths = class_strengths(CurriculumConfig(adv_scale=10.0), teachers, range(13), "triangular")
    assert strengths[0] == pytest.approx(10 / 13) and strengths[63] == pytest.approx(10.0)
    assert strengths[32] == pytest.approx(10 / 7) and statistics.median(strengths.values()) == pytest.approx(10 / 7)
    equal = class_strengths(CurriculumConfig(adv_scale=10.0), teachers, range(13), "equal")
    assert set(equal.values()) == {10.0}


# ---------------------------------------------------------------------------------------------
# adv_strength: the same per-class strength for every pool size and weighting
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weighting", ["triangular", "equal"])
def test_adv_strength_is_the_same_for_every_class_and_pool_size(weighting):
    curriculum = CurriculumConfig(adv_scale=None, adv_strength=1.5)
    for n_teachers in (2, 3):
        strengths = _measured_strengths(_entries(n_teachers), weighting, curriculum)
        assert len(strengths) == 3 * n_teachers
        assert strengths == pytest.approx(dict.fromkeys(range(3 * n_teachers), 1.5), rel=1e-4)


def test_adv_strength_with_equal_weights_is_adv_scale():
    """Disjoint pool, equal weights: every class weight is 1, so the two settings are the same step."""
    grads = []
    for curriculum in (CurriculumConfig(adv_scale=2.0), CurriculumConfig(adv_scale=None, adv_strength=2.0)):
        run, state = _run_state(_entries(2), "equal", curriculum, n_way=3)
        grads.append(_grads(reversed_term(run, state, None), state.data))
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    assert grads[0].abs().sum() > 0


def test_reversed_coefficients_by_hand():
    teachers = [SimpleNamespace(classes=(0, 1)), SimpleNamespace(classes=(2,)), SimpleNamespace(classes=(3, 4))]
    strength = CurriculumConfig(adv_scale=None, adv_strength=0.5)
    assert reversed_coefficients(CurriculumConfig(adv_scale=10.0), teachers, [0, 1, 2], "triangular") == (10.0, None)
    # a subset [2, 0] (PURER-Plus teachers_per_step): weights 2, 1; class 2 is not inverted -> mean weight 1.5
    coefficient, multipliers = reversed_coefficients(strength, teachers, [2, 0], "triangular")
    assert coefficient == 0.5 and multipliers == {0: 1.0, 1: 1.0, 2: 1.5, 3: 2.0, 4: 2.0}
    # overlapping teachers: a class known by two teachers of the step sums their weights
    overlapping = [SimpleNamespace(classes=(0, 1)), SimpleNamespace(classes=(1, 2))]
    assert reversed_coefficients(strength, overlapping, [0, 1], "triangular")[1] == {0: 2.0, 1: 3.0, 2: 1.0}
    assert class_strengths(strength, overlapping, [0, 1], "equal") == {0: 0.5, 1: 0.5, 2: 0.5}


def test_gradient_scale_leaves_the_episode_values_unchanged():
    run, state = _run_state(_entries(2), "triangular", CurriculumConfig(adv_scale=None, adv_strength=1.0), n_way=3)
    scales = state.data.class_scales({c: 7.0 for c in range(6)})
    plain = state.data.sample_episode(3, N_SHOT, N_QUERY, make_generator(1, "e"), detach=False)
    scaled = state.data.sample_episode(3, N_SHOT, N_QUERY, make_generator(1, "e"), detach=False, grad_scales=scales)
    assert torch.equal(plain.support_x, scaled.support_x) and torch.equal(plain.query_x, scaled.query_x)
    g_plain = _grads(plain.query_x.sum() + plain.support_x.sum(), state.data)
    g_scaled = _grads(scaled.query_x.sum() + scaled.support_x.sum(), state.data)
    torch.testing.assert_close(g_scaled, 7.0 * g_plain, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# EI does not depend on the weighting (up to Adam's epsilon)
# ---------------------------------------------------------------------------------------------


def test_ei_image_gradient_is_scaled_per_class_by_the_teacher_weight():
    grads = {}
    for weighting in ("equal", "triangular"):
        run, state = _run_state(_entries(3, short_last=True), weighting, CurriculumConfig())
        loss, _ = inversion_loss_fn(run, state)(state.data, state.generators["jitter"], run.mt.inversion, None)
        grads[weighting] = _per_class(_grads(loss, state.data), state.data)
    for c, g in grads["equal"].items():
        torch.testing.assert_close(grads["triangular"][c], (3 - c // 3) * g, **RTOL)


def _ei_images(weighting: str, eps: float, steps: int = 4) -> torch.Tensor:
    """The images after ``steps`` EI data steps (the production data step, switch off)."""
    run, state = _run_state(_entries(3, short_last=True), weighting, CurriculumConfig())
    state.switch = GradientSwitch(warmup=1, patience=1, enabled=False)
    for group in state.data.optimizer.param_groups:
        group["eps"] = eps
    start = state.data.parameters()[0].detach().clone()
    for iteration in range(1, steps + 1):
        terms, reversed_on = data_step(run, state, iteration)
        assert not reversed_on and bool(terms["finite"])
    return start, state.data.parameters()[0].detach().clone()


def test_ei_trajectory_is_invariant_to_the_weighting_without_adam_epsilon():
    start, equal = _ei_images("equal", eps=1e-30)  # far below √v̂: Adam's update is scale-free
    _, triangular = _ei_images("triangular", eps=1e-30)
    assert (equal - start).abs().max() > 0.1  # the images did move (lr 0.25)
    torch.testing.assert_close(triangular, equal, rtol=1e-5, atol=1e-5)


def test_ei_first_step_is_adam_with_epsilon_divided_by_the_teacher_weight():
    """With the production ε: the first Adam update is lr·c·g / (c·|g| + ε) = lr·g / (|g| + ε/c) for a
    class of weight c, i.e. triangular EI is equal-weight EI with ε/c on the images of teacher j.
    (Pixels whose gradient is not far above ε = 1e-8 therefore move differently.)"""
    run, state = _run_state(_entries(3, short_last=True), "equal", CurriculumConfig())
    loss, _ = inversion_loss_fn(run, state)(state.data, make_generator(0, "jitter"), run.mt.inversion, None)
    g = _grads(loss, state.data)
    domain = next(iter(state.data.domains.values()))
    weights = torch.tensor([3.0 - c // 3 for c in domain.class_ids]).repeat_interleave(SPC).view(-1, 1, 1, 1)
    for weighting, c in (("equal", torch.ones_like(weights)), ("triangular", weights)):
        start, after = _ei_images(weighting, eps=1e-8, steps=1)
        torch.testing.assert_close(after - start, -0.25 * g / (g.abs() + 1e-8 / c), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# diagnostics and configuration
# ---------------------------------------------------------------------------------------------


def test_data_step_logs_per_teacher_ce_and_gradient_ratios():
    run, state = _run_state(_entries(3, short_last=True), "triangular", CurriculumConfig(adv_scale=10.0))
    state.switch.observe(1, 0.0)  # warm-up at iteration 1: the next data step is reversed
    loss, reference_terms = state.pool.reference_inversion_loss(state.data, make_generator(0, "jitter"),
                                                                run.mt.inversion)
    terms, reversed_on = data_step(run, state, 2)
    assert reversed_on
    torch.testing.assert_close(terms["ce_per_teacher"], reference_terms["ce_per_teacher"], rtol=0, atol=0)
    assert terms["ce_per_teacher"].shape == (3,)
    torch.testing.assert_close(terms["ce_per_teacher"].mean(), terms["ce"], **RTOL)
    # the ratios are those of the two gradients' per-class norms; the episode reaches every class
    assert 0 < float(terms["adv_ratio_median"]) <= float(terms["adv_ratio_max"])


def test_gradient_ratios_by_hand():
    run, state = _run_state(_entries(2), "equal", CurriculumConfig())
    inversion = torch.ones(6 * SPC, 3, SIZE, SIZE)
    reversed_ = torch.zeros_like(inversion)
    domain = next(iter(state.data.domains.values()))
    reversed_[domain.rows([1])] = 2.0  # ratio 2 for class 1
    reversed_[domain.rows([4])] = 6.0  # ratio 6 for class 4; the other classes are not reached
    median, maximum = gradient_ratios(state.data, (inversion,), (reversed_,))
    assert float(median) == pytest.approx(2.0) and float(maximum) == pytest.approx(6.0)
    reversed_[domain.rows([0, 2])] = 1.0  # ratios 1 and 1: median of (1, 1, 2, 6) is 1 (lower middle)
    inversion[domain.rows([5])] = 0.0  # class 5 is reached but not inverted in this step: no ratio
    reversed_[domain.rows([5])] = 9.0
    median, maximum = gradient_ratios(state.data, (inversion,), (reversed_,))
    assert float(median) == pytest.approx(1.0) and float(maximum) == pytest.approx(6.0)
    median, maximum = gradient_ratios(state.data, (inversion,), (None,))
    assert torch.isnan(median) and torch.isnan(maximum)


def test_ce_per_teacher_marks_teachers_outside_the_step():
    pool = ResidentPool(None, loaded=loaded(_entries(3)))
    data = DynamicDataset(pool.teachers, SPC, 0.25, make_generator(0, "pseudo"))
    for method in (pool.inversion_loss, pool.reference_inversion_loss):
        _, terms = method(data, make_generator(0, "j"), InversionConfig(), [2, 0])
        values = terms["ce_per_teacher"]
        assert torch.isnan(values[1]) and not torch.isnan(values[[0, 2]]).any()


@pytest.mark.parametrize(
    "curriculum, message",
    [
        ({"adv_strength": 1.5}, r"adv_scale / adv_strength: expected exactly one of them, got both"),
        ({"adv_scale": None}, r"adv_scale / adv_strength: expected exactly one of them, got neither"),
        ({"warmup_fraction": 0.25}, r"warmup / warmup_fraction: expected exactly one of them, got both \(warmup=4000"),
        ({"warmup": None}, r"warmup / warmup_fraction: expected exactly one of them, got neither"),
        ({"adv_scale": None, "adv_strength": -1.0}, r"adv_strength: expected 0 or more, got -1.0"),
    ],
)
def test_exclusive_curriculum_keys_are_one_clear_error(write_config, curriculum, message):
    path = write_config({"meta_train": {"curriculum": curriculum}})
    with pytest.raises(ConfigError, match=rf"{path}: meta_train\.curriculum\.{message}"):
        load_config(path)


def test_absolute_warmup_is_in_iterations_and_the_fraction_is_for_smoke_runs():
    absolute = CurriculumConfig(warmup=300)
    assert [effective_warmup(absolute, n) for n in (100, 1000, 60000)] == [300, 300, 300]
    smoke = CurriculumConfig(warmup=None, warmup_fraction=0.25)
    assert [effective_warmup(smoke, n) for n in (100, 1000)] == [25, 250]
    assert GradientSwitch.from_config(absolute, 1000).warmup == 300


def test_both_warmups_on_the_command_line_is_one_line_and_exit_2(write_config, tmp_path, capsys):
    """The default config's smoke warm-up plus an absolute one in an override (docs/errors.md)."""
    from purer.cli.main import main

    path = write_config({"meta_train": {"curriculum": {"warmup": None, "warmup_fraction": 0.25}}})
    out = tmp_path / "run"
    code = main(["meta-train", "-c", str(path), "--method", "purer", "--n-shot", "1", "--out", str(out),
                 "--set", "meta_train.curriculum.warmup=300"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0] == (f"purer meta-train: error: {path}: meta_train.curriculum.warmup / warmup_fraction: expected "
                        "exactly one of them, got both (warmup=300, warmup_fraction=0.25); set warmup: null to use "
                        "warmup_fraction, or warmup_fraction: null")
    assert not out.exists()


def test_configs_that_follow_the_released_scripts_use_parity_mode():
    """The scenario configs claim the released scripts' settings: triangular weights, adv_scale 10,
    absolute warm-up 4000. The default and bench configs are smoke runs: fractional warm-up."""
    from workflow_support import REPO

    experiments = sorted((REPO / "config" / "experiments").glob("*.yaml"))
    parity = [p for p in experiments if p.stem != "bench" and not p.stem.startswith("replication")]
    assert len(parity) == 7
    for path in parity:
        text = path.read_text(encoding="utf-8")
        assert "released PURER scripts" in text, path
        config = load_config(path).meta_train
        assert config.inversion.teacher_weighting == "triangular", path
        assert (config.curriculum.adv_scale, config.curriculum.adv_strength) == (10.0, None), path
        assert (config.curriculum.warmup, config.curriculum.warmup_fraction) == (4000, None), path
    # the replication study: its parity arm is the released scripts' PURER, with an absolute warm-up
    replication = load_config(REPO / "config" / "experiments" / "replication.yaml")
    assert replication.meta_train.curriculum.warmup_fraction is None
    parity_arm = replication.grid.arms["purer-parity"]
    assert parity_arm.set == {"inversion.teacher_weighting": "triangular", "curriculum.adv_scale": 10.0}
    assert replication.grid.arms[parity_arm.branch_from].set == {"inversion.teacher_weighting": "triangular"}
    for path in (REPO / "config" / "config.yaml", REPO / "config" / "experiments" / "bench.yaml"):
        curriculum = load_config(path).meta_train.curriculum
        assert (curriculum.warmup, curriculum.warmup_fraction) == (None, 0.25), path
        assert load_config(path).meta_train.inversion.teacher_weighting == "equal", path
