import hashlib
import json
import re
import zlib

import pytest

from conftest import CHECKPOINT_DAMAGE
from rlhfctl import __version__
from rlhfctl.artifacts import (
    CHECKSUMS, MANIFEST, checkpoint_damage, checkpoint_dir, describe_inputs, latest_checkpoint, list_checkpoints,
    load_checkpoint, load_newest_intact_checkpoint, make_manifest, publish_folder, publish_model_folder, read_manifest,
    save_checkpoint, sha256_file, write_manifest,
)
from rlhfctl.errors import CheckpointError, ModelError


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


def _save(run_dir, step: int, keep: int | None = None):
    import torch

    return save_checkpoint(run_dir, step, {"a": torch.arange(64.0) * step}, {"step": step, "rng": torch.get_rng_state()}, keep=keep)


def test_checkpoint_records_every_file_size_and_crc32(tmp_path):
    path = _save(tmp_path, 2)
    record = json.loads((path / CHECKSUMS).read_text())["files"]
    assert sorted(record) == ["model.safetensors", "state.pt"]
    for name, entry in record.items():
        data = (path / name).read_bytes()
        assert entry == {"size": len(data), "crc32": f"{zlib.crc32(data):08x}"}
    assert checkpoint_damage(path) is None
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no temporary folder left


@pytest.mark.parametrize("damage", CHECKPOINT_DAMAGE)
def test_resume_skips_a_damaged_newest_checkpoint(tmp_path, damage):
    _save(tmp_path, 2)
    newest = _save(tmp_path, 4)
    spoil, reason = CHECKPOINT_DAMAGE[damage]
    spoil(newest)
    assert re.fullmatch(reason, checkpoint_damage(newest))
    lines = []
    step, path, weights, state = load_newest_intact_checkpoint(tmp_path, lines.append)
    assert step == 2 and path == checkpoint_dir(tmp_path, 2) and state["step"] == 2 and weights["a"][1] == 2
    assert len(lines) == 1 and re.fullmatch(rf"{re.escape(str(newest))}: {reason}: skipped", lines[0])


@pytest.mark.parametrize("damage", CHECKPOINT_DAMAGE)
def test_no_intact_checkpoint_is_one_error_naming_each(tmp_path, damage):
    spoil, reason = CHECKPOINT_DAMAGE[damage]
    spoil(_save(tmp_path, 2))
    spoil(_save(tmp_path, 4))
    lines = []
    with pytest.raises(CheckpointError) as e:
        load_newest_intact_checkpoint(tmp_path, lines.append)
    assert lines == [] and "\n" not in str(e.value)
    assert re.fullmatch(rf".*checkpoints: no intact checkpoint to resume from \(step-4: {reason}; step-2: {reason}\); "
                        r"start again in a new --out", str(e.value))
    assert load_newest_intact_checkpoint(tmp_path / "no-run", lines.append) is None  # no checkpoint at all: a fresh start


def test_a_checkpoint_without_a_record_is_accepted_if_it_loads(tmp_path):
    """Checkpoints of an older rlhfctl have no checksums.json: loading them is the check."""
    for step in (2, 4, 6):
        (_save(tmp_path, step) / CHECKSUMS).unlink()
    (checkpoint_dir(tmp_path, 6) / "state.pt").write_bytes(b"PK\x03\x04 cut short")
    lines = []
    step, _, _, state = load_newest_intact_checkpoint(tmp_path, lines.append)
    assert step == 4 and state["step"] == 4
    assert len(lines) == 1 and lines[0].startswith(f"{checkpoint_dir(tmp_path, 6)}: does not load (")
    assert lines[0].endswith("): skipped")


def test_an_unreadable_record_is_damage(tmp_path):
    path = _save(tmp_path, 2)
    (path / CHECKSUMS).write_text('{"files": {"model.safe')
    assert checkpoint_damage(path) == f"{CHECKSUMS} is unreadable"


def test_pruning_never_counts_damaged_checkpoints_after_the_new_one(tmp_path):
    """Resumed from step-2 because step-8 was damaged: saving step-4 with keep=1 keeps step-4, not only the broken step-8."""
    _save(tmp_path, 2)
    CHECKPOINT_DAMAGE["truncated-weights"][0](_save(tmp_path, 8))
    _save(tmp_path, 4, keep=1)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 8]
    assert load_newest_intact_checkpoint(tmp_path, lambda line: None)[0] == 4
    _save(tmp_path, 8, keep=1)  # the resumed run gets there: the damaged one is replaced
    assert [s for s, _ in list_checkpoints(tmp_path)] == [8] and checkpoint_damage(checkpoint_dir(tmp_path, 8)) is None


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


def test_publish_folder_replaces_the_whole_folder_or_leaves_the_old_one(tmp_path):
    out = tmp_path / "deep" / "report"
    assert publish_folder(out, lambda folder: (folder / "a.md").write_text("one")) == 3
    assert [p.name for p in out.iterdir()] == ["a.md"]
    publish_folder(out, lambda folder: (folder / "b.md").write_text("two"))
    assert [p.name for p in out.iterdir()] == ["b.md"]  # nothing of the old folder is left

    def broken(folder):
        (folder / "c.md").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        publish_folder(out, broken)
    assert [p.name for p in out.iterdir()] == ["b.md"] and (out / "b.md").read_text() == "two"
    assert sorted(p.name for p in out.parent.iterdir()) == ["report"]  # no temporary folder left beside it
