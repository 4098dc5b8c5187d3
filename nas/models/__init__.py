"""Networks: the OPS table and search spaces, genotypes, the network built from a genotype,
the baselines, and the one factory that builds any of them by name.

    from nas.models import build_model, count_parameters
    model = build_model("FER_V1", init_channels=36, layers=12)   # 2,164,831 parameters
"""
from nas.models.factory import (MODEL_REGISTRY, SPEC_KWARGS, build_model, count_parameters, list_models,
                                model_from_spec, model_spec)

__all__ = ["build_model", "count_parameters", "model_spec", "model_from_spec", "list_models", "MODEL_REGISTRY",
           "SPEC_KWARGS"]
