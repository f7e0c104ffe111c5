import torch

from rlhfctl.rm.model import by_length, gather_last, last_real_index


def test_last_real_token_right_left_and_pad_equals_eos():
    eos = pad = 2
    # right padding, pad == eos: the real eos at index 3 must be read, not the pads after it
    ids = torch.tensor([[5, 6, 7, eos, pad, pad], [pad, pad, 5, 6, 7, eos]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]])
    assert last_real_index(mask).tolist() == [3, 5]
    values = torch.arange(12, dtype=torch.float).view(2, 6)
    assert gather_last(values, mask).tolist() == [3.0, 11.0]
    assert ids[0, 3] == eos and ids[1, 5] == eos


def test_by_length_batches_similar_lengths_and_returns_results_in_input_order():
    seqs = [[1] * 5, [2], [3] * 3, [4] * 2, [5] * 4]
    widths = []

    def score(ids, mask, indices):
        widths.append(ids.shape[1])
        assert mask.sum(1).tolist() == [len(seqs[i]) for i in indices]
        return [(i, int(ids[row, 0]), int(mask[row].sum())) for row, i in enumerate(indices)]

    out = by_length(seqs, pad_id=0, batch_size=2, device="cpu", score=score)
    assert out == [(i, s[0], len(s)) for i, s in enumerate(seqs)]  # each result at its own sequence's place
    assert widths == [2, 4, 5]  # batches of the 1-2, 3-4 and 5 long sequences: little padding


def test_by_length_caps_the_padded_tokens_of_a_batch():
    seqs = [[1] * n for n in (2, 3, 3, 4, 9, 10, 30)]
    shapes = []

    def score(ids, mask, indices):
        shapes.append(tuple(ids.shape))
        return list(indices)

    out = by_length(seqs, pad_id=0, batch_size=64, device="cpu", score=score, max_tokens=12)
    assert out == list(range(len(seqs)))
    # at most 12 padded tokens per batch; a sequence longer than that alone in its batch
    assert shapes == [(3, 3), (1, 4), (1, 9), (1, 10), (1, 30)]
    assert all(rows * width <= 12 for rows, width in shapes[:-1])
