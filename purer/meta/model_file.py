"""The meta-model file format: ``meta_model.pt``, ``last.pt`` and the snapshots (writer and reader).

A meta-model file is a plain dict (loaded with ``weights_only=True``: nothing in it executes):
``state_dict`` (the parameters, on CPU), what rebuilds the network (``architecture``,
``arch_kwargs``, ``n_way``, ``input_size``, ``channels``), the normalisation of its training images
(``mean``, ``std``), the run (``method``, ``n_shot``, ``seed``, ``iteration``, ``val_accuracy``) and
the learner it was meta-trained with (``learner``: ``{algorithm, inner_lr, first_order}``).
:func:`meta_model_payload` writes it (meta-training), :func:`load_meta_model` reads and checks it
(meta-test), :func:`check_compatible` checks it fits a test set-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from purer.data.cache import SplitData
from purer.errors import CheckpointError, ConfigError
from purer.io import load_torch
from purer.meta.init import MetaModelSpec
from purer.meta.learners import Params
from purer.models.backbones import build_backbone

META_MODEL_KEYS = ("state_dict", "architecture", "arch_kwargs", "n_way", "input_size", "channels", "learner")


def meta_model_payload(
    spec: MetaModelSpec, params: dict[str, torch.Tensor], run: dict[str, Any], iteration: int, val_accuracy: float | None
) -> dict[str, Any]:
    """The ``meta_model.pt`` / ``last.pt`` dict.

    Args:
        spec: how to rebuild the model.
        params: its parameters (copied to CPU).
        run: ``mean``, ``std``, ``method``, ``n_shot``, ``seed`` and ``learner``
            (``{algorithm, inner_lr, first_order}``).
        iteration: the meta-iteration the weights are from (0 = the initialisation).
        val_accuracy: their validation accuracy (percent), if validated.
    """
    return {
        "state_dict": {name: p.detach().cpu().clone() for name, p in params.items()},
        "architecture": spec.architecture, "arch_kwargs": dict(spec.arch_kwargs), "n_way": spec.n_way,
        "input_size": spec.input_size, "channels": spec.channels, "mean": list(run["mean"]), "std": list(run["std"]),
        "method": run["method"], "n_shot": run["n_shot"], "seed": run["seed"], "iteration": iteration,
        "val_accuracy": val_accuracy, "learner": dict(run["learner"]),
    }


def load_meta_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Params, dict]:
    """Rebuild a meta model from ``meta_model.pt`` (or ``last.pt`` / a snapshot).

    The model is built with ``running_stats=False`` (batch-statistics BatchNorm) and the state
    dict is loaded strictly.

    Returns:
        (model on ``device``, detached parameter dict on ``device``, the checkpoint's other entries).

    Raises:
        CheckpointError: naming the file, for a missing/truncated file, missing keys, or a state
            dict that does not match the named architecture.
    """
    raw = load_torch(path, "meta model")
    missing = [key for key in META_MODEL_KEYS if not isinstance(raw, dict) or key not in raw]
    if missing:
        raise CheckpointError(f"meta model {path} lacks the entries {missing} (expected a `purer meta-train` output)")
    learner = raw["learner"]
    if not isinstance(learner, dict) or not {"algorithm", "inner_lr"} <= set(learner):
        raise CheckpointError(f"meta model {path}: `learner` must be a dict with algorithm and inner_lr, got {learner!r}")
    arch, kwargs = raw["architecture"], dict(raw["arch_kwargs"] or {})
    try:
        model = build_backbone(
            arch, int(raw["n_way"]), int(raw["channels"]), int(raw["input_size"]), running_stats=False, **kwargs
        )
        model.load_state_dict(raw["state_dict"], strict=True)
    except (ConfigError, RuntimeError, TypeError) as exc:
        raise CheckpointError(
            f"meta model {path} does not match architecture {arch!r} {kwargs}: {str(exc).splitlines()[0]}"
        ) from None
    model.to(device).requires_grad_(False)
    params = {name: p.detach() for name, p in model.named_parameters()}
    info = {key: value for key, value in raw.items() if key != "state_dict"}
    return model, params, info


def check_compatible(info: dict, path: str | Path, n_way: int, split: SplitData, dataset: str) -> None:
    """Raise ConfigError when a meta model cannot be tested as configured on ``split``."""
    if int(info["n_way"]) != n_way:
        raise ConfigError(
            f"meta model at {path} was trained for {info['n_way']}-way, but meta_test.n_way is {n_way}"
        )
    if int(info["channels"]) != split.channels:
        raise ConfigError(
            f"meta model at {path} takes {info['channels']}-channel images, but the {dataset} test split has "
            f"{split.channels} channels (set datasets.{dataset}.channels: {info['channels']} and re-run prepare)"
        )
