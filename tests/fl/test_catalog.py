import json

from fl import networks
from fl.catalog import catalog
from fl.strategies import STRATEGIES


def test_catalog_lists_everything_as_plain_json():
    result = catalog()
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    assert [m["name"] for m in result["models"]][:3] == ["logreg", "mlp", "cnn"]
    assert {o["name"] for o in result["optimizers"]} == {"sgd", "adam", "adamw"}
    assert sorted(s["name"] for s in result["strategies"]) == sorted(STRATEGIES)
    for section in result.values():
        for entry in section:
            assert entry["description"] and isinstance(entry["schema"], dict)


def test_strategy_entries_say_what_the_server_must_do():
    by_name = {s["name"]: s for s in catalog()["strategies"]}
    assert by_name["fedavg"] == {
        "name": "fedavg", "description": STRATEGIES["fedavg"].description,
        "schema": STRATEGIES["fedavg"].schema, "needs_all_updates": False, "stateful": False}
    assert by_name["krum"]["needs_all_updates"] and not by_name["krum"]["stateful"]
    assert by_name["fedadam"]["stateful"] and not by_name["fedadam"]["needs_all_updates"]
    assert by_name["fedprox"]["schema"]["mu"]["default"] == 0.01
    for name in ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"):
        sums = by_name[name]["schema"]["sums"]
        assert sums["choices"] == ["float32", "float64"] and sums["default"] == "float32", name
    assert "sums" not in by_name["fedmedian"]["schema"] and "sums" not in by_name["krum"]["schema"]


def test_catalog_is_a_copy_and_shows_user_models(monkeypatch):
    result = catalog()
    result["strategies"][0]["schema"]["weighted"]["default"] = "changed"
    assert STRATEGIES["fedavg"].schema["weighted"]["default"] is True
    monkeypatch.setattr(networks, "MODELS", dict(networks.MODELS))
    networks.register_from_settings({"tiny": "fl.examples.tiny_mlp"})
    tiny = catalog()["models"][-1]
    assert tiny["name"] == "tiny" and tiny["schema"]["width"]["default"] == 32
