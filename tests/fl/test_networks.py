import sys
import textwrap

import pytest
import torch
from torch import nn

from fl import networks
from fl.networks import MODELS, build_model, register_dotted, register_model
from fl.params import ParamError


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


CNN_PARAMS = {"in_features": 64, "num_classes": 10}


def test_cnn_takes_flattened_rows_and_images():
    model = build_model("cnn", CNN_PARAMS, seed=0)
    rows = torch.rand(3, 64)
    assert model(rows).shape == (3, 10)
    assert torch.equal(model(rows), model(rows.reshape(3, 1, 8, 8)))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 16), (16, 32)]
    assert model.head[-1].in_features == 32 * 2 * 2  # 8 -> 4 -> 2 after two pools


def test_cnn_schema_lets_the_portal_fill_shapes():
    schema = MODELS["cnn"].schema
    assert {"in_features", "num_classes"} <= set(schema)
    assert schema["num_classes"]["required"] and not schema["in_features"].get("required")
    assert {k: v.get("default") for k, v in schema.items()} == {
        "in_features": None, "num_classes": None, "in_channels": 1, "image_size": 8,
        "channels": [16, 32], "dropout": 0.0, "batch_norm": False}
    assert build_model("cnn", {"num_classes": 3}, seed=0)(torch.zeros(2, 64)).shape == (2, 3)


def test_cnn_with_batch_norm_has_its_buffers_and_other_shapes():
    params = {"in_features": 3 * 28 * 28, "num_classes": 4, "in_channels": 3,
              "image_size": 28, "channels": [4, 4, 4, 4, 4, 4], "batch_norm": True}
    model = build_model("cnn", params, seed=0)
    state = model.state_dict()
    assert state["features.1.num_batches_tracked"].dtype == torch.int64
    assert "features.1.running_var" in state
    assert model.head[-1].in_features == 4  # 28 -> 14 -> 7 -> 3 -> 1, then no more pooling
    assert model(torch.rand(2, 3 * 28 * 28)).shape == (2, 4)


@pytest.mark.parametrize("params, field", [
    ({"in_features": 30, "num_classes": 2}, "model_params.in_features"),
    ({"in_features": 64, "num_classes": 2, "channels": []}, "model_params.channels"),
    ({"in_features": 64, "num_classes": 2, "channels": [0]}, "model_params.channels"),
    ({"num_classes": 2, "image_size": 0}, "model_params.image_size"),
])
def test_bad_cnn_params_are_refused(params, field):
    with pytest.raises(ParamError) as info:
        build_model("cnn", params, seed=0)
    assert info.value.field == field


def test_register_from_settings_registers_the_example_factory(monkeypatch):
    from fl.examples import tiny_mlp

    monkeypatch.setattr(networks, "MODELS", dict(MODELS))
    entries = networks.register_from_settings({"tiny": "fl.examples.tiny_mlp",
                                               "tiny2": "fl.examples:tiny_mlp"})
    assert [e.name for e in entries] == ["tiny", "tiny2"]
    assert entries[0].factory is tiny_mlp and entries[0].schema is tiny_mlp.schema
    assert entries[0].description == "A one-hidden-layer ReLU MLP (an example user model)."
    model = networks.build_model("tiny", {"in_features": 5, "num_classes": 3}, seed=0)
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [32, 3]
    networks.register_from_settings({"tiny": "fl.examples.tiny_mlp"})  # again: no-op
    with pytest.raises(ValueError, match="FLPORTAL_MODELS\\['broken'\\]: cannot import"):
        networks.register_from_settings({"broken": "fl.examples.nothing_here"})
    with pytest.raises(ValueError, match="FLPORTAL_MODELS\\['logreg'\\]"):
        networks.register_from_settings({"logreg": "fl.examples.tiny_mlp"})
    for bad in (["tiny"], {"x": 3}, {"": "fl.examples.tiny_mlp"}):
        with pytest.raises(ValueError, match="FLPORTAL_MODELS"):
            networks.register_from_settings(bad)
