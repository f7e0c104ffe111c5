"""The reward model's standardisation statistics as train-policy loads them."""

from types import SimpleNamespace

import torch

from rlhfctl.training import experience

WARNING = "RM scores are not standardised: the reward model has no held-out statistics"


def test_no_held_out_statistics_is_said_on_stderr(capsys):
    results = {"num_pairs": 0, "num_binary": 0, "reward_mean": 0.0, "reward_std": 1.0}  # train-rm --eval-fraction 0
    assert experience.rm_statistics("runs/rm", results) == (0.0, 1.0)
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"warning: runs/rm: {WARNING}") and len(err.splitlines()) == 1
    experience.rm_statistics("runs/rm", results, main=False)  # another rank: quiet
    assert capsys.readouterr().err == ""


def test_held_out_statistics_are_used_quietly(capsys):
    results = {"num_pairs": 3, "num_binary": 0, "reward_mean": 0.5, "reward_std": 2.0}
    assert experience.rm_statistics("runs/rm", results) == (0.5, 2.0)
    assert capsys.readouterr().err == ""


def test_loading_an_rm_without_held_out_data_warns(monkeypatch, capsys):
    manifest = {"command": "train-rm", "results": {"kind": "orm", "num_pairs": 0, "num_binary": 0,
                                                   "reward_mean": 0.0, "reward_std": 1.0}}
    model = torch.nn.Identity()
    model.config = SimpleNamespace(pad_token_id=0)
    monkeypatch.setattr(experience, "load_reward_model", lambda folder, kind, device: (model, None, manifest))
    monkeypatch.setattr(experience, "TokenValues", lambda model: model)
    handle = experience.load_rm_handle("runs/rm-no-eval")
    assert (handle.mean, handle.std) == (0.0, 1.0)
    assert f"warning: runs/rm-no-eval: {WARNING}" in capsys.readouterr().err
