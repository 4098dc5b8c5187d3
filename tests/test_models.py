"""build_model over baselines and genotypes, parameter counting, self-describing specs."""
import json

import pytest
import torch

from nas.runtime.errors import FerNasError
from nas.models.genotypes import genotype_to_dict, load_genotype
from nas.models import MODEL_REGISTRY, build_model, count_parameters, list_models, model_from_spec, model_spec
from nas.models.network import NetworkFER



PUBLISHED = {"vgg_fer": 29_890_759, "resnet_fer": 2_982_247}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_baselines_by_name(name):
    model = build_model(name)
    assert count_parameters(model) == PUBLISHED[name]
    assert model_spec(model)["genotype"] is None and model_spec(model)["arch"] == name


def test_fer_v1_counts_exclude_auxiliary_head():
    model = build_model("FER_V1", init_channels=36, layers=12)
    assert count_parameters(model) == 2_164_831
    assert sum(p.numel() for p in model.parameters()) > 2_164_831  # the head exists but is not counted
    assert count_parameters(build_model("FER_V1", layers=20)) == 4_119_703
    assert count_parameters(build_model("FER_V1", auxiliary=False)) == 2_164_831


def test_arch_forms_build_the_same_network(tmp_path):
    g = load_genotype("FER_V1")
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(genotype_to_dict(g)))
    forms = ["FER_V1", g, genotype_to_dict(g), str(path), path]
    counts = {count_parameters(build_model(a, init_channels=8, layers=5)) for a in forms}
    assert len(counts) == 1
    assert model_spec(build_model(str(path), init_channels=8, layers=5))["arch"] == "mine"
    assert model_spec(build_model(g, init_channels=8, layers=5))["arch"] == "custom"


def test_unknown_arch_lists_choices():
    with pytest.raises(FerNasError) as err:
        build_model("resnet_fr")
    msg = str(err.value)
    assert "unknown architecture 'resnet_fr'" in msg
    for name in ("vgg_fer", "resnet_fer", "cnn_shallow", "cnn_deep", "FER_V1"):
        assert name in msg
    assert "\n" not in msg
    with pytest.raises(FerNasError, match="unknown architecture"):
        build_model("FER V1!")  # not a valid name, not a path
    with pytest.raises(FerNasError, match="not found"):
        build_model("nowhere/x.json")


@pytest.mark.parametrize("kwargs, match", [
    ({"layers": 2}, "layers must be an integer >= 3"),
    ({"init_channels": 0}, "init_channels"),
    ({"num_classes": 0}, "num_classes"),
    ({"drop_path_prob": 1.0}, "drop_path_prob"),
])
def test_bad_kwargs(kwargs, match):
    with pytest.raises(FerNasError, match=match):
        build_model("FER_V1", **kwargs)


def test_list_models():
    models = list_models()
    assert models["baselines"] == sorted(MODEL_REGISTRY) == ["cnn_deep", "cnn_gap", "cnn_shallow", "resnet_fer", "vgg_fer"]
    assert "FER_V1" in models["genotypes"]


def test_attributes_and_forward_contract():
    torch.manual_seed(0)
    for arch, size in (("FER_V1", 44), ("vgg_fer", 40), ("cnn_deep", 44)):
        model = build_model(arch, init_channels=4, layers=5, drop_path_prob=0.1)
        assert model.drop_path_prob == 0.1 and model.default_input_size == size
        x = torch.randn(2, 1, size, size)
        out = model.train()(x)
        if arch == "FER_V1":
            assert isinstance(out, tuple) and [o.shape for o in out] == [(2, 7), (2, 7)]
        else:
            assert out.shape == (2, 7)
        assert model.eval()(x).shape == (2, 7)


def test_spec_is_plain_and_rebuilds_identical_architecture(tmp_path, monkeypatch):
    model = build_model("FER_V1", num_classes=5, init_channels=8, layers=6, auxiliary=True, in_channels=1)
    spec = model_spec(model)
    assert spec == json.loads(json.dumps(spec))  # plain values only
    assert spec["kwargs"] == {"num_classes": 5, "init_channels": 8, "layers": 6, "auxiliary": True, "in_channels": 1}
    # Through a weights-only checkpoint, and with the genotype folder gone: the spec
    # embeds the genotype, so the file is not needed.
    path = tmp_path / "ck.pt"
    torch.save({"model": spec, "state": model.state_dict()}, path)
    loaded = torch.load(path, weights_only=True)
    monkeypatch.setenv("FERNAS_GENOTYPES", str(tmp_path / "empty"))
    rebuilt = model_from_spec(loaded["model"], where=str(path))
    assert model_spec(rebuilt) == spec
    rebuilt.load_state_dict(loaded["state"])  # strict: same names and shapes
    x = torch.randn(2, 1, 44, 44)
    torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x))


def test_spec_for_baselines_and_wrapped_models():
    model = build_model("resnet_fer", num_classes=3)
    rebuilt = model_from_spec(model_spec(model))
    assert count_parameters(rebuilt) == count_parameters(model)
    rebuilt.load_state_dict(model.state_dict())

    class Wrapper(torch.nn.Module):  # what DistributedDataParallel looks like
        def __init__(self, m):
            super().__init__()
            self.module = m

    assert model_spec(Wrapper(model)) == model_spec(model)
    spec = model_spec(model)
    spec["kwargs"]["num_classes"] = 9  # a copy: the model's own record is unchanged
    assert model_spec(model)["kwargs"]["num_classes"] == 3


@pytest.mark.parametrize("spec, match", [
    ("FER_V1", "not a model spec"),
    ({"arch": "x", "genotype": None, "kwargs": {}}, "not a baseline and no genotype"),
    ({"arch": "x", "genotype": {"normal": []}, "kwargs": {}}, "missing key"),
    ({"arch": "vgg_fer", "genotype": None, "kwargs": {"bogus": 1}}, "unknown model argument"),
    ({"arch": "vgg_fer", "genotype": None, "kwargs": []}, "'kwargs' must be a mapping"),
])
def test_bad_specs(spec, match):
    with pytest.raises(FerNasError, match=match):
        model_from_spec(spec, where="ck.pt")


def test_model_without_spec():
    with pytest.raises(FerNasError, match="no spec"):
        model_spec(NetworkFER(load_genotype("FER_V1"), init_channels=4, layers=3))
    # count_parameters works on any module
    assert count_parameters(torch.nn.Linear(3, 2)) == 8
