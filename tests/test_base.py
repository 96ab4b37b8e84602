"""The base layer's small helpers: device names, JSON conversion, package versions."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from adapt.device import resolve_device
from adapt.environment import environment_info, package_versions
from adapt.errors import UserError
from adapt.io import atomic_write_json, to_jsonable


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(UserError, match=rf"^train.device: '{name}' requested but no CUDA device"):
            resolve_device(name, "train.device")
    with pytest.raises(UserError, match="'gpu0' is not a device"):
        resolve_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


@dataclasses.dataclass
class _Point:
    x: float
    where: Path


def test_to_jsonable_gives_plain_json_types(tmp_path):
    obj = {1: np.float32(0.5), "a": (np.int64(3), torch.tensor([1.0, math.inf])), "n": np.arange(2),
           "p": _Point(math.nan, Path("/x")), "b": np.bool_(True)}
    plain = to_jsonable(obj)
    assert plain == {"1": 0.5, "a": [3, [1.0, None]], "n": [0, 1], "p": {"x": None, "where": "/x"}, "b": True}
    assert type(plain["1"]) is float and type(plain["a"][0]) is int
    atomic_write_json(tmp_path / "x.json", obj)
    assert json.loads((tmp_path / "x.json").read_text()) == plain
    assert to_jsonable({"f": print})["f"] is print  # lenient: left for json.dumps to refuse
    with pytest.raises(TypeError, match=r"^checkpoint meta\.a\[1\]: cannot store a builtin_function"):
        to_jsonable({"a": [1, print]}, strict=True, where="checkpoint meta")


def test_package_versions_and_environment():
    assert list(package_versions(["torch", "no-such-package-xyz", "numpy"])) == ["torch", "numpy"]
    env = environment_info(torch.device("cpu"))
    assert env["device"] == "cpu" and env["threads"] == torch.get_num_threads()
    assert list(env["versions"])[:3] == ["domaingap", "python", "torch"]
