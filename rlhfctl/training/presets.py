"""Named sets of method knobs (``--preset``): one flag that sets every knob to a reference's values.

A knob is a train-policy option on which rlhfctl's default differs from the
code behind the paper (docs/training.md, "Method knobs", has the table with
TRL's and OpenRLHF's defaults beside them). Resolution is knob by knob: a
value the user gave wins, then the preset's, then rlhfctl's default.
"""

from __future__ import annotations

from typing import Any

from rlhfctl.errors import ConfigError

POLICY_DEFAULTS: dict[str, Any] = {
    "whiten_advantages": True,  # PPO: GAE advantages standardised over the batch's tokens
    "loss_agg": "token-mean",
    "kl_clip": 10.0,  # |per-token KL penalty| <= c
    "reward_std_floor": 0.0,
    "reward_clip_range": None,  # (lo, hi) after normalisation; None: --neg-reward-scale instead
    "neg_reward_scale": 1.0,
}

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "whiten_advantages": False,
        "loss_agg": "seq-mean-token-mean",
        "kl_clip": 0.5,
        "reward_std_floor": 1 / 3,
        "reward_clip_range": (-0.4, 5.0),
        "neg_reward_scale": 1.0,
    },
}


def check_preset(preset: str | None) -> None:
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown --preset {preset!r}: choose one of {', '.join(PRESETS)}")


def resolve_knobs(preset: str | None, given: dict[str, Any]) -> dict[str, Any]:
    """Every knob of `POLICY_DEFAULTS`: ``given[k]`` unless it is None, else the preset's, else the default.

    --reward-clip-range and --neg-reward-scale are two forms of one step: a
    --neg-reward-scale given without a --reward-clip-range drops the preset's range.
    """
    check_preset(preset)
    base = {**POLICY_DEFAULTS, **(PRESETS[preset] if preset else {})}
    if given.get("neg_reward_scale") is not None and given.get("reward_clip_range") is None:
        base["reward_clip_range"] = None
    return {k: given[k] if given.get(k) is not None else v for k, v in base.items()}
