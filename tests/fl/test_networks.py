import sys
import textwrap

import pytest
import torch
from torch import nn

from jobs.fl import networks
from jobs.fl.networks import MODELS, build_model, register_dotted, register_model
from jobs.fl.params import ParamError


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_builtins_are_registered_with_schema_and_description():
    for name in ("logreg", "mlp"):
        entry = MODELS[name]
        assert callable(entry.factory) and entry.description
        assert entry.schema["in_features"]["required"]


def test_same_seed_same_weights_other_seed_other_weights():
    params = {"in_features": 5, "num_classes": 3, "hidden": [4, 4]}
    a, b = build_model("mlp", params, seed=7), build_model("mlp", params, seed=7)
    c = build_model("mlp", params, seed=8)
    for name, tensor in weights(a).items():
        assert torch.equal(tensor, weights(b)[name])
    assert not torch.equal(weights(a)["0.weight"], weights(c)["0.weight"])


def test_build_model_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("logreg", {"in_features": 4, "num_classes": 2}, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_logreg_is_one_linear_layer_giving_logits():
    model = build_model("logreg", {"in_features": 4, "num_classes": 3}, seed=0)
    assert isinstance(model, nn.Linear)
    assert model(torch.zeros(2, 4)).shape == (2, 3)


def test_mlp_layers_follow_hidden_and_dropout():
    model = build_model("mlp", {"in_features": 6, "num_classes": 2, "hidden": [5, 4],
                                "dropout": 0.5}, seed=0)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(6, 5), (5, 4), (4, 2)]
    assert [m.p for m in model if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    assert model(torch.zeros(3, 6)).shape == (3, 2)


def test_unknown_model_is_refused_on_field_model():
    with pytest.raises(ParamError) as info:
        build_model("resnet9000", {}, seed=0)
    assert info.value.field == "model"


@pytest.mark.parametrize("params, field", [
    ({"num_classes": 2}, "model_params.in_features"),
    ({"in_features": 4, "num_classes": 1}, "model_params.num_classes"),
    ({"in_features": 4, "num_classes": 2, "dropout": 1.0}, "model_params.dropout"),
    ({"in_features": 4, "num_classes": 2, "depth": 3}, "model_params.depth"),
])
def test_bad_model_params_are_refused(params, field):
    with pytest.raises(ParamError) as info:
        build_model("mlp", params, seed=0)
    assert info.value.field == field


def test_register_model_refuses_a_taken_name():
    with pytest.raises(ValueError):
        register_model("logreg", lambda: nn.Linear(1, 1), {})


def test_register_dotted_imports_factory_and_its_schema(tmp_path, monkeypatch):
    (tmp_path / "my_models_for_test.py").write_text(textwrap.dedent('''
        from torch import nn

        def tiny(width):
            """A tiny test model."""
            return nn.Linear(width, 2)

        tiny.schema = {"width": {"type": "int", "default": 3, "min": 1}}

        def fixed():
            return nn.Linear(2, 2)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(networks, "MODELS", dict(MODELS))
    entry = register_dotted("tiny_for_test", "my_models_for_test:tiny")
    assert entry.description == "A tiny test model."
    assert networks.build_model("tiny_for_test", {}, seed=0).in_features == 3
    register_dotted("fixed_for_test", "my_models_for_test.fixed")
    with pytest.raises(ParamError):
        networks.build_model("fixed_for_test", {"width": 2}, seed=0)
    with pytest.raises(ValueError, match="cannot import"):
        register_dotted("nope", "my_models_for_test:missing")
    sys.modules.pop("my_models_for_test", None)
