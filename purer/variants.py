"""Meta-test variants: plain adaptation, ICFIL, and the controls ICFIL must beat.

Every variant of a run is scored on the same checkpoint and the same fixed test episodes, so the
report can pair them episode by episode. The variant name is the folder of its ``metrics.json``
(``<run>/test/<dataset>/<variant>/``):

============================  ===============================================================
``plain``                     ``meta_test.inner_steps`` SGD steps on the support (the baseline)
``icfil``                     plain, then ICFIL (a reconstruction, docs/method.md §3.3)
``plain-steps<k>``            plain adaptation with ``k`` inner steps, for each ``k`` in
                              ``meta_test.matched_steps`` (ICFIL's update budget: 1 inner + 10
                              feature + 5 head = 16; 10 = the feature steps)
``icfil-noise``               ICFIL with N(0, 1) noise in place of the inverted images
``finetune-support``          plain, then ICFIL's extra updates (feature + head steps, same
                              learning rates) with CE on the real support only
============================  ===============================================================

``grid.icfil_controls`` picks which controls run (``matched``, ``noise``, ``support``) for every
method in ``grid.icfil_methods``. This module is pure Python (the workflow imports it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from purer.config import ExperimentConfig, MetaTestConfig

PLAIN, ICFIL = "plain", "icfil"
NOISE, SUPPORT = "icfil-noise", "finetune-support"
CONTROL_PATTERN = r"plain-steps\d+|icfil-noise|finetune-support"  # Snakemake wildcard constraint
VARIANT_PATTERN = re.compile(rf"^(?:plain|icfil|{CONTROL_PATTERN})$")

Calibration = Literal["none", "icfil", "noise", "support"]


@dataclass(frozen=True)
class TestVariant:
    """One way of scoring a checkpoint on the test episodes.

    Attributes:
        name: folder name and label key, e.g. ``"plain-steps16"``.
        calibration: what runs after the inner loop: nothing, ICFIL, ICFIL on noise, or
            support-only fine-tuning.
        inner_steps: test-time inner steps of the adaptation.
    """

    name: str
    calibration: Calibration
    inner_steps: int

    @property
    def icfil(self) -> bool:
        """Whether the variant runs the ICFIL calibration (on inverted images or on noise)."""
        return self.calibration in ("icfil", "noise")


def all_variants(meta_test: MetaTestConfig) -> dict[str, TestVariant]:
    """Every variant the meta-test settings define, by name."""
    steps = meta_test.inner_steps
    variants = [TestVariant(PLAIN, "none", steps), TestVariant(ICFIL, "icfil", steps)]
    variants += [TestVariant(f"plain-steps{k}", "none", k) for k in meta_test.matched_steps]
    variants += [TestVariant(NOISE, "noise", steps), TestVariant(SUPPORT, "support", steps)]
    return {v.name: v for v in variants}


def variant(meta_test: MetaTestConfig, name: str) -> TestVariant:
    """The variant called ``name``; ValueError naming the valid ones otherwise."""
    variants = all_variants(meta_test)
    if name not in variants:
        raise ValueError(f"unknown meta-test variant {name!r} (valid: {sorted(variants)})")
    return variants[name]


def control_names(config: ExperimentConfig) -> list[str]:
    """The control variants ``grid.icfil_controls`` asks for, in a fixed order."""
    names = []
    if "matched" in config.grid.icfil_controls:
        names += [f"plain-steps{k}" for k in config.meta_test.matched_steps]
    if "noise" in config.grid.icfil_controls:
        names.append(NOISE)
    if "support" in config.grid.icfil_controls:
        names.append(SUPPORT)
    return names


def grid_variants(config: ExperimentConfig, method: str) -> list[str]:
    """The variants the pipeline runs for ``method``: plain, and ICFIL with its controls for the
    methods in ``grid.icfil_methods``."""
    names = [PLAIN] if False in config.grid.icfil else []
    arm = config.grid.arms.get(method)  # an arm gets ICFIL if it or its base method is listed
    if method in config.grid.icfil_methods or (arm is not None and arm.method in config.grid.icfil_methods):
        names += ([ICFIL] if True in config.grid.icfil else []) + control_names(config)
    return names
