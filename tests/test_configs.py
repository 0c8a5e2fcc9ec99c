"""Every config class round-trips through JSON, is stamped with its class, and is checked on construction."""
import dataclasses
import importlib
import json
import pkgutil

import pytest

import synref
from synref.config import CLASS_KEY, VERSION_KEY, ConfigMixin
from synref.errors import InputError
from synref.pipeline import EvidenceSpec, RefinerSpec, fold_schedule


def _all_config_classes():
    for info in pkgutil.walk_packages(synref.__path__, "synref."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    seen, todo = [], list(ConfigMixin.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.append(cls)
            todo.extend(cls.__subclasses__())
    return sorted(seen, key=lambda c: c.__name__)


#: classes whose defaults need a required field
EXAMPLES = {"RefineRunConfig": dict(data="digits", anchors="anchors/",
                                    evidence=EvidenceSpec(encoder="classifier", head="network", train=fold_schedule(3)),
                                    refiner=RefinerSpec("crossfit", {"rounds": 2}))}


def test_every_config_class_is_found():
    names = {c.__name__ for c in _all_config_classes()}
    assert {"TrainConfig", "SSLConfig", "PLCConfig", "LRAConfig", "LinearHeadConfig", "CrossFitEvidenceConfig",
            "RefinerOptions", "CrossfitOptions", "Protocol", "DemoConfig", "BenchConfig", "RefineRunConfig",
            "EvidenceSpec", "RefinerSpec"} <= names


@pytest.mark.parametrize("cls", _all_config_classes(), ids=lambda c: c.__name__)
def test_config_round_trips_through_json(cls, tmp_path):
    config = cls(**EXAMPLES.get(cls.__name__, {}))
    d = json.loads(json.dumps(config.to_dict()))
    assert d[CLASS_KEY] == cls.__name__ and d[VERSION_KEY] == synref.__version__
    again = cls.from_dict(d)
    assert again == config
    assert again.to_dict() == config.to_dict()
    config.save(tmp_path / "c.json")
    assert cls.load(tmp_path / "c.json") == config
    with pytest.raises(InputError, match="unknown option"):
        cls.from_dict({**d, "no_such_option": 1})
    other = "TrainConfig" if cls.__name__ != "TrainConfig" else "SSLConfig"
    with pytest.raises(InputError, match=f"this is a {other} config"):
        cls.from_dict({**d, CLASS_KEY: other})


def test_nested_configs_are_rebuilt_and_checked_when_loaded():
    from synref.experiments.protocol import Protocol, protocol_for

    proto = protocol_for("cpu", "cifar10")
    d = json.loads(json.dumps(proto.to_dict()))
    again = Protocol.from_dict(d)
    assert again.standard == proto.standard and isinstance(again.standard, type(proto.standard))
    assert again.encoders == proto.encoders and isinstance(again.encoders, tuple)
    d["lra"]["epochs"] = 0                                     # validated when built, not when used
    with pytest.raises(InputError, match="epochs"):
        Protocol.from_dict(d)


def test_derived_fields_are_written_and_recomputed():
    from synref.experiments.demo import DemoConfig

    config = DemoConfig(noise="pmd-0.35+u-0.30")
    d = config.to_dict()
    assert d["noise_setting"] == "pmd-0.35+u-0.3"
    assert DemoConfig.from_dict(d) == config
    assert dataclasses.replace(config, seed=3).noise_setting == "pmd-0.35+u-0.3"
