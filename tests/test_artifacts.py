import hashlib
import json

import pytest

from rlhfctl import __version__
from rlhfctl.artifacts import (
    MANIFEST, checkpoint_dir, describe_inputs, latest_checkpoint, list_checkpoints, load_checkpoint, make_manifest,
    publish_model_folder, read_manifest, save_checkpoint, sha256_file, write_manifest,
)
from rlhfctl.errors import ModelError


def test_sha256_and_describe_inputs(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_bytes(b'{"prompt": "a"}\n' * 1000)
    assert sha256_file(data) == hashlib.sha256(data.read_bytes()).hexdigest()
    inputs = describe_inputs({"data": data, "model": "toy:tiny", "folder": tmp_path, "none": None})
    assert inputs == {"data": {"path": str(data), "sha256": hashlib.sha256(data.read_bytes()).hexdigest()},
                      "model": {"path": "toy:tiny"}, "folder": {"path": str(tmp_path)}}


def test_manifest_round_trip(tmp_path):
    m = make_manifest("train-sft", {"lr": 1e-3, "path": tmp_path, "sizes": (1, 2)}, {"data": {"path": "x"}}, {"loss": 1.5})
    assert m["command"] == "train-sft" and m["version"] == __version__
    assert m["options"] == {"lr": 1e-3, "path": str(tmp_path), "sizes": [1, 2]}  # made JSON-able
    assert m["results"] == {"loss": 1.5} and m["created"].endswith("+00:00")
    write_manifest(tmp_path, m)
    assert read_manifest(tmp_path) == json.loads(json.dumps(m))
    assert read_manifest(tmp_path / "nowhere") is None
    (tmp_path / MANIFEST).write_text("{oops")
    with pytest.raises(ModelError, match="invalid JSON"):
        read_manifest(tmp_path)


def test_checkpoints_save_load_list_and_prune(tmp_path):
    import torch

    w = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}
    state = {"step": 3, "rng": torch.get_rng_state(), "python": [1, 2, 3], "opt": {"lr": 0.1}}
    for step in (2, 4, 10):
        save_checkpoint(tmp_path, step, {k: v * step for k, v in w.items()}, {**state, "step": step}, keep=2)
    # numeric order, not string order; the oldest was pruned
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 10]
    step, path = latest_checkpoint(tmp_path)
    assert step == 10 and path == checkpoint_dir(tmp_path, 10)
    weights, loaded = load_checkpoint(path)
    assert torch.equal(weights["a"], w["a"] * 10) and torch.equal(loaded["rng"], state["rng"])
    assert loaded["step"] == 10 and loaded["python"] == [1, 2, 3]


def test_incomplete_checkpoint_folders_are_ignored(tmp_path):
    import torch

    assert latest_checkpoint(tmp_path) is None
    save_checkpoint(tmp_path, 2, {"a": torch.zeros(1)}, {"step": 2})
    # a run killed while writing step-4 leaves only the temporary folder
    (tmp_path / "checkpoints" / ".step-4.tmp").mkdir()
    (tmp_path / "checkpoints" / "step-x").mkdir()
    assert latest_checkpoint(tmp_path)[0] == 2


class Evil:
    """Any class: weights_only loading must refuse to rebuild it."""


def test_checkpoint_state_loads_without_unpickling_objects(tmp_path):
    import torch

    save_checkpoint(tmp_path, 1, {"a": torch.zeros(1)}, {"step": 1, "obj": Evil()})
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_checkpoint(checkpoint_dir(tmp_path, 1))


def test_publish_model_folder_writes_manifest_last(tmp_path):
    out = tmp_path / "model"

    def write_files(tmp):
        assert not (out / MANIFEST).exists()  # never visible beside a half model
        (tmp / "config.json").write_text("{}")
        (tmp / "model.safetensors").write_bytes(b"w")

    publish_model_folder(out, write_files, make_manifest("x", {}, {}))
    assert sorted(p.name for p in out.iterdir()) == sorted(["config.json", MANIFEST, "model.safetensors"])
    assert read_manifest(out)["command"] == "x"


def test_publish_that_fails_leaves_no_manifest(tmp_path):
    out = tmp_path / "model"
    publish_model_folder(out, lambda tmp: (tmp / "config.json").write_text("{}"), make_manifest("old", {}, {}))

    def broken(tmp):
        (tmp / "config.json").write_text("{half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        publish_model_folder(out, broken, make_manifest("new", {}, {}))
    assert read_manifest(out) is None  # the old manifest no longer vouches for the folder
    assert (out / "config.json").read_text() == "{}"  # the half-written file never replaced the old one
