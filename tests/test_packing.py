"""Shared-prefix packing: a packed forward equals each sequence's forward alone."""

import pytest
import torch

from rlhfctl.models import load_causal_lm
from rlhfctl.packing import attention_implementation, common_prefix, pack, supports_packing


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm("toy:tiny", seed=3).eval()


def _alone(model, seq):
    with torch.no_grad():
        return model(input_ids=torch.tensor([seq])).logits[0]


def _packed_logits(model, packed, implementation="sdpa"):
    model.config._attn_implementation = implementation
    try:
        with torch.no_grad():
            return model(input_ids=packed.input_ids, attention_mask=packed.attention_mask(implementation),
                         position_ids=packed.position_ids).logits
    finally:
        model.config._attn_implementation = "sdpa"


SEQS = [
    [1, 5, 6, 7, 8, 9, 10],  # group a: shares [1, 5, 6] with the next two
    [1, 5, 6, 11, 12],
    [1, 5, 6, 7, 13, 14, 15, 16],
    [1, 20, 21],  # group b: alone
    [1, 5, 6, 7],  # group c: one sequence is a prefix of the other
    [1, 5, 6, 7, 8, 9],
]
GROUPS = ["a", "a", "a", "b", "c", "c"]


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("budget", [None, 12])
def test_every_token_of_a_packed_batch_matches_its_sequence_run_alone(tiny, implementation, budget):
    packed = pack(SEQS, GROUPS, pad_id=0, width_budget=budget)
    logits = _packed_logits(tiny, packed, implementation)
    for i, seq in enumerate(SEQS):
        got = packed.at(logits, _row(packed, i, len(seq)))[i]
        torch.testing.assert_close(got, _alone(tiny, seq), atol=2e-5, rtol=1e-4)


def _row(packed, i, length):
    """Positions 0..length-1 of sequence i, as the (N, T) index `Packed.at` takes (other rows: anything)."""
    positions = torch.zeros((packed.row.shape[0], length), dtype=torch.long)
    positions[i] = torch.arange(length)
    return positions


def test_the_shared_prefix_is_laid_out_once():
    packed = pack(SEQS, GROUPS, pad_id=0)
    # a: 3 shared + 4 + 2 + 5 own; b: 2 + 1 (each sequence keeps a token of its own); c: 3 + 1 + 3
    assert ((packed.input_ids != 0).sum(1)).tolist() == [14, 3, 7]
    assert packed.row.tolist() == [0, 0, 0, 1, 2, 2]
    assert packed.input_ids[0, :14].tolist() == [1, 5, 6, 7, 8, 9, 10, 11, 12, 7, 13, 14, 15, 16]
    assert packed.position_ids[0, :14].tolist() == [0, 1, 2, 3, 4, 5, 6, 3, 4, 3, 4, 5, 6, 7]
    assert packed.last_columns().tolist() == [6, 8, 13, 2, 3, 6]


def test_no_token_sees_another_sequence_and_pads_see_only_themselves():
    packed = pack([[1, 2, 3], [1, 2, 4, 5], [7]], [0, 0, 1], pad_id=0)
    allowed = packed.allowed[0, 0]
    # row 0: [1, 2 | 3 | 4, 5]; token 4 (column 3) sees the prefix and itself, not token 3 (column 2)
    assert allowed[3].tolist() == [True, True, False, True, False]
    assert allowed[2].tolist() == [True, True, True, False, False]
    pad_row = packed.allowed[1, 0]  # row 1: [7, pad, pad, pad, pad]
    assert pad_row[1].tolist() == [False, True, False, False, False]
    assert not pad_row[0, 1:].any()


def test_a_group_over_the_width_budget_is_split_over_rows_each_with_the_prefix():
    seqs = [[1, 2, 3, 4 + k, 9, 9] for k in range(4)]
    packed = pack(seqs, [0] * 4, pad_id=0, width_budget=9)  # 3 shared + 3 own each: two per row
    assert packed.row.tolist() == [0, 0, 1, 1]
    assert packed.input_ids[1, :3].tolist() == [1, 2, 3]


def test_common_prefix_leaves_each_sequence_a_token_of_its_own():
    assert common_prefix([[1, 2, 3], [1, 2, 4]]) == 2
    assert common_prefix([[1, 2], [1, 2, 3]]) == 1
    assert common_prefix([[1, 2, 3]]) == 2
    assert common_prefix([[5], [6]]) == 0


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        pack([[1], []], [0, 0], pad_id=0)
    with pytest.raises(ValueError):
        pack([[1]], [0, 1], pad_id=0)


def test_supports_packing_reads_the_attention_kernel_through_wrappers(tiny):
    from rlhfctl.rm.model import ORM, TokenValues, build_reward_model

    assert attention_implementation(tiny) == "sdpa" and supports_packing(tiny)
    values = TokenValues(build_reward_model("toy:tiny", ORM))
    assert supports_packing(values)
    values.model.config._attn_implementation = "flash_attention_2"
    assert not supports_packing(values)
    assert attention_implementation(object()) is None
