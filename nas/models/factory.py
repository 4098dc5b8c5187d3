"""One entry point for every network of the toolkit: searched genotypes and baselines.

``build_model(arch, ...)`` takes a baseline name (:data:`nas.models.baselines.BASELINES`), a
genotype name (a file in ``genotypes/``), a path to a genotype JSON file, a
:class:`~nas.genotypes.Genotype` or a genotype dict. Baseline names win over a genotype
file of the same name.

Every model records how it was built: ``model_spec(model)`` is a dict of plain values
(arch name, the genotype as a dict or ``None``, the build keyword arguments) that goes
into checkpoints, and ``model_from_spec(spec)`` rebuilds the same architecture from it
alone, without the genotype file (the genotype is embedded).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping, Union

import torch.nn as nn

from nas.models.baselines import BASELINES
from nas.runtime.errors import FerNasError
from nas.models.genotypes import (Genotype, genotype_from_dict, genotype_to_dict, is_genotype_name, list_genotypes,
                           load_genotype)
from nas.models.network import NetworkFER

#: what names an architecture: a baseline or genotype name, a genotype .json path, a Genotype or its dict
ArchSpec = Union[str, os.PathLike, Genotype, Mapping[str, Any]]

__all__ = ["build_model", "check_arch", "count_parameters", "model_spec", "model_from_spec", "list_models", "MODEL_REGISTRY",
           "SPEC_KWARGS"]

# Baselines by name; genotype names are looked up in genotypes/ when asked for.
MODEL_REGISTRY: dict[str, Any] = dict(BASELINES)

# The keyword arguments a spec records (drop_path_prob is training state, not architecture).
SPEC_KWARGS = ("num_classes", "init_channels", "layers", "auxiliary", "in_channels")

_SPEC_ATTR = "fernas_spec"


def list_models() -> dict[str, list[str]]:
    """Names ``build_model`` accepts: ``{"baselines": [...], "genotypes": [...]}``."""
    return {"baselines": sorted(MODEL_REGISTRY), "genotypes": list_genotypes()}


def _choices() -> str:
    models = list_models()
    return (f"baselines: {', '.join(models['baselines'])}; genotypes: {', '.join(models['genotypes']) or 'none'}; "
            "or a genotype .json path")


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FerNasError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _resolve(arch: Any) -> tuple[str, Genotype | None]:
    """(arch name, genotype or None for a baseline)."""
    if isinstance(arch, Genotype):
        return "custom", load_genotype(arch)
    if isinstance(arch, Mapping):
        return "custom", genotype_from_dict(arch)
    if isinstance(arch, os.PathLike) or (isinstance(arch, str) and ("/" in arch or os.sep in arch
                                                                    or arch.endswith(".json"))):
        return Path(arch).stem, load_genotype(arch)
    if not isinstance(arch, str):
        raise FerNasError(f"--arch must be a name, a genotype file or a genotype, got {type(arch).__name__}")
    if arch in MODEL_REGISTRY:
        return arch, None
    if is_genotype_name(arch) and arch in list_genotypes():
        return arch, load_genotype(arch)
    raise FerNasError(f"unknown architecture {arch!r} ({_choices()})")


def check_arch(arch: ArchSpec, init_channels: int = 36, layers: int = 12) -> bool:
    """One-line errors for an architecture ``build_model`` would refuse (unknown name, bad
    genotype file, sizes), without building it. Returns True for a genotype network (global
    pooling and a linear head: class activation maps exist), False for a baseline."""
    _, genotype = _resolve(arch)
    _positive_int("--init_channels", init_channels)
    _positive_int("--layers", layers, 3 if arch not in MODEL_REGISTRY else 1)
    return genotype is not None


def build_model(arch: ArchSpec, num_classes: int = 7, init_channels: int = 36, layers: int = 12, auxiliary: bool = True,
                in_channels: int = 1, drop_path_prob: float = 0.0) -> nn.Module:
    """The network for ``arch`` (baseline name, genotype name/path, Genotype or dict).

    ``init_channels``, ``layers`` and ``auxiliary`` apply to genotype networks only;
    baselines have a fixed layout. The model carries ``drop_path_prob`` and
    ``default_input_size`` attributes and its spec (see :func:`model_spec`)."""
    name, genotype = _resolve(arch)
    _positive_int("num_classes", num_classes)
    _positive_int("in_channels", in_channels)
    if not 0.0 <= float(drop_path_prob) < 1.0:
        raise FerNasError(f"drop_path_prob must be in [0, 1), got {drop_path_prob!r}")
    kwargs = {"num_classes": num_classes, "init_channels": init_channels, "layers": layers,
              "auxiliary": bool(auxiliary), "in_channels": in_channels}
    if genotype is None:
        model: nn.Module = MODEL_REGISTRY[name](num_classes=num_classes, in_channels=in_channels,
                                                drop_path_prob=drop_path_prob)
    else:
        _positive_int("init_channels", init_channels)
        # Reductions at layers//3 and 2*layers//3 need three distinct cells.
        _positive_int("layers", layers, 3)
        model = NetworkFER(genotype, num_classes=num_classes, init_channels=init_channels, layers=layers,
                           auxiliary=auxiliary, in_channels=in_channels, drop_path_prob=drop_path_prob)
    setattr(model, _SPEC_ATTR, {"arch": name, "genotype": genotype_to_dict(genotype) if genotype else None,
                                "kwargs": kwargs})
    return model


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel keeps the model in .module, torch.compile in ._orig_mod.
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def count_parameters(model: nn.Module) -> int:
    """Parameters of ``model`` without the auxiliary head (the figure papers report)."""
    return sum(p.numel() for name, p in model.named_parameters() if "auxiliary_head" not in name.split("."))


def model_spec(model: nn.Module) -> dict[str, Any]:
    """Plain-value description of a model made by :func:`build_model`:
    ``{"arch": str, "genotype": dict | None, "kwargs": {...}}`` (safe for weights-only
    checkpoints)."""
    spec = getattr(_unwrap(model), _SPEC_ATTR, None)
    if spec is None:
        raise FerNasError("model was not built by nas.models.build_model; it has no spec")
    return copy.deepcopy(spec)


def model_from_spec(spec: object, where: str = "model spec", drop_path_prob: float = 0.0) -> nn.Module:
    """Rebuild the architecture that :func:`model_spec` described (fresh weights).
    ``where`` names the source (e.g. the checkpoint path) in error messages."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("arch"), str):
        raise FerNasError(f"{where}: not a model spec (needs 'arch', 'genotype', 'kwargs')")
    kwargs = spec.get("kwargs")
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, Mapping):
        raise FerNasError(f"{where}: 'kwargs' must be a mapping")
    unknown = [k for k in kwargs if k not in SPEC_KWARGS]
    if unknown:
        raise FerNasError(f"{where}: unknown model argument(s) {', '.join(map(str, unknown))}")
    genotype = spec.get("genotype")
    if genotype is None:
        if spec["arch"] not in MODEL_REGISTRY:
            raise FerNasError(f"{where}: arch {spec['arch']!r} is not a baseline and no genotype is embedded")
        model = build_model(spec["arch"], drop_path_prob=drop_path_prob, **kwargs)
    else:
        model = build_model(genotype_from_dict(genotype, where=where), drop_path_prob=drop_path_prob, **kwargs)
    getattr(model, _SPEC_ATTR)["arch"] = spec["arch"]
    return model
