"""Row-sparse AdamW for input embeddings: the same update as torch's dense AdamW, less memory."""

from __future__ import annotations

import copy

import pytest
import torch

from rlhfctl.training.loop import adamw
from rlhfctl.training.row_sparse import (
    ROWS, RowSparseAdamW, clip_grad_norm, dense_optimizer_state, has_sparse_gradients, input_embedding, sparse_input_embedding,
)


class Tiny(torch.nn.Module):
    """An embedding read at token ids, a dense layer after it, and a scalar head: a reward model in small."""

    def __init__(self, vocab: int = 50, width: int = 6, tied: bool = False):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.mix = torch.nn.Linear(width, width)
        self.head = torch.nn.Linear(width, vocab if tied else 1, bias=False)
        if tied:
            self.head.weight = self.embed.weight

    def get_input_embeddings(self):
        return self.embed

    def forward(self, ids):
        return self.head(torch.tanh(self.mix(self.embed(ids)))).sum(-1).mean(-1)


# batches that reach new rows at different steps, and leave rows they read before
BATCHES = [torch.tensor([[1, 2, 3, 3]]), torch.tensor([[4, 1, 1, 9]]), torch.tensor([[30, 31, 2, 2]]),
           torch.tensor([[5, 6, 7, 8]]), torch.tensor([[1, 40, 41, 3]])]


def _train(model, optimizer, clip: float | None = None, batches=BATCHES):
    for ids in batches:
        loss = (model(ids) - 1.0).pow(2).sum()
        loss.backward()
        params = list(model.parameters())
        if clip and has_sparse_gradients(params):
            clip_grad_norm(params, clip)
        elif clip:
            torch.nn.utils.clip_grad_norm_(params, clip)  # the reference
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("clip", [None, 0.05])
def test_row_sparse_adamw_matches_dense_adamw(weight_decay, clip):
    torch.manual_seed(0)
    dense = Tiny()
    sparse = copy.deepcopy(dense)
    assert sparse_input_embedding(sparse) and sparse.embed.sparse
    _train(dense, torch.optim.AdamW(dense.parameters(), lr=0.05, weight_decay=weight_decay), clip)
    optimizer = RowSparseAdamW(list(sparse.parameters()), lr=0.05, weight_decay=weight_decay)
    _train(sparse, optimizer, clip)
    for (name, a), b in zip(dense.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=name)
    state = optimizer.state[sparse.embed.weight]
    touched = sorted({int(i) for ids in BATCHES for i in ids.flatten()})
    assert sorted(state[ROWS].tolist()) == touched  # moments for the rows read, not the vocabulary
    assert state["exp_avg"].shape == (len(touched), 6)
    if weight_decay:  # a row never read moved by the decay alone, as in dense AdamW
        assert not torch.equal(sparse.embed.weight[20], dense.embed.weight[20] * 0)


def test_moments_of_a_row_equal_the_dense_moments():
    torch.manual_seed(1)
    dense = Tiny()
    sparse = copy.deepcopy(dense)
    sparse_input_embedding(sparse)
    dense_opt = torch.optim.AdamW(dense.parameters(), lr=0.01)
    sparse_opt = RowSparseAdamW(list(sparse.parameters()), lr=0.01)
    _train(dense, dense_opt)
    _train(sparse, sparse_opt)
    whole = dense_optimizer_state(sparse_opt.state_dict(), dense_opt)["state"][0]
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(whole[key], dense_opt.state[dense.embed.weight][key], rtol=1e-5, atol=1e-9)


def test_state_dict_round_trip_resumes_exactly():
    torch.manual_seed(2)
    a = Tiny()
    sparse_input_embedding(a)
    opt_a = RowSparseAdamW(list(a.parameters()), lr=0.02, weight_decay=0.01)
    _train(a, opt_a, batches=BATCHES[:2])
    b = copy.deepcopy(a)
    opt_b = RowSparseAdamW(list(b.parameters()), lr=0.02, weight_decay=0.01)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    assert opt_b.state[b.embed.weight][ROWS].dtype == torch.long  # torch casts state to the parameter's dtype
    _train(a, opt_a, batches=BATCHES[2:])
    _train(b, opt_b, batches=BATCHES[2:])
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)


def test_switching_between_sparse_and_dense_keeps_the_update():
    """A run resumed the other way (dense after row-sparse, or back) continues AdamW exactly."""
    torch.manual_seed(3)
    reference = Tiny()
    mixed = copy.deepcopy(reference)
    _train(reference, torch.optim.AdamW(reference.parameters(), lr=0.03))
    optimizer = RowSparseAdamW(list(mixed.parameters()), lr=0.03)
    sparse_input_embedding(mixed)
    _train(mixed, optimizer, batches=BATCHES[:2])
    mixed.embed.sparse = False
    _train(mixed, optimizer, batches=BATCHES[2:4])  # whole moments again
    mixed.embed.sparse = True
    _train(mixed, optimizer, batches=BATCHES[4:])  # and by row: every row of the whole moments kept
    for a, b in zip(reference.parameters(), mixed.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_a_plain_adamw_loads_a_row_sparse_state():
    torch.manual_seed(4)
    reference, model = Tiny(), None
    model = copy.deepcopy(reference)
    _train(reference, torch.optim.AdamW(reference.parameters(), lr=0.03))
    sparse_input_embedding(model)
    optimizer = RowSparseAdamW(list(model.parameters()), lr=0.03)
    _train(model, optimizer, batches=BATCHES[:3])
    model.embed.sparse = False
    plain = torch.optim.AdamW(model.parameters(), lr=0.03)
    plain.load_state_dict(dense_optimizer_state(optimizer.state_dict(), plain))
    _train(model, plain, batches=BATCHES[3:])
    for a, b in zip(reference.parameters(), model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_only_an_untied_trainable_embedding_turns_sparse():
    assert not sparse_input_embedding(Tiny(tied=True))  # an output head reads every row: dense anyway
    frozen = Tiny()
    frozen.embed.weight.requires_grad_(False)
    assert not sparse_input_embedding(frozen)
    capped = Tiny()
    capped.embed.max_norm = 1.0
    assert not sparse_input_embedding(capped)
    assert input_embedding(torch.nn.Linear(2, 2)) is None


def test_clipping_a_sparse_gradient_equals_clipping_it_dense():
    torch.manual_seed(5)
    dense = Tiny()
    sparse = copy.deepcopy(dense)
    sparse_input_embedding(sparse)
    for model in (dense, sparse):
        (model(BATCHES[1]) - 3.0).pow(2).sum().backward()
    reference = torch.nn.utils.clip_grad_norm_(list(dense.parameters()), 0.01)
    norm = clip_grad_norm(list(sparse.parameters()), 0.01)
    torch.testing.assert_close(norm, reference)
    for a, b in zip(dense.parameters(), sparse.parameters()):
        torch.testing.assert_close(b.grad.to_dense(), a.grad)


def test_adamw_factory_picks_the_optimizer():
    model = Tiny()
    assert type(adamw(model.parameters(), lr=0.1)) is torch.optim.AdamW
    assert type(adamw(model.parameters(), lr=0.1, row_sparse=True)) is RowSparseAdamW
