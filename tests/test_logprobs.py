"""Chunked token log-probs (`rlhfctl.logprobs`) against the plain full-vocabulary computation."""

import pytest
import torch

from rlhfctl.logprobs import final_hidden, plain_head, token_logprobs


def _plain(logits, labels, temperature=1.0):
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp_all.gather(-1, labels[..., None]).squeeze(-1), -(logp_all.exp() * logp_all).sum(-1)


def _close(got, want, rtol=1e-5):
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * want.abs().max().item())


@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 64])
def test_logits_path_matches_plain_values_entropy_and_gradients(chunk_rows):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=gen) * 3
    labels = torch.randint(0, 50, (3, 7), generator=gen)
    weights = torch.randn(3, 7, generator=gen)  # a downstream loss, masked: padding rows weigh 0
    weights[2, 4:] = 0
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    got, got_entropy = token_logprobs(a, labels, temperature=0.7, with_entropy=True, chunk_rows=chunk_rows)
    want, want_entropy = _plain(b, labels, temperature=0.7)
    _close(got, want)
    _close(got_entropy, want_entropy.detach())
    assert not got_entropy.requires_grad
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    _close(a.grad, b.grad)
    assert a.grad[2, 4:].abs().sum() == 0


@pytest.mark.parametrize("bias", [False, True])
def test_head_path_matches_plain_values_and_gradients(bias):
    gen = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(16, 300, bias=bias)
    hidden = torch.randn(2, 9, 16, generator=gen)
    labels = torch.randint(0, 300, (2, 9), generator=gen)
    twin = torch.nn.Linear(16, 300, bias=bias)
    twin.load_state_dict(head.state_dict())
    h1, h2 = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    got, _ = token_logprobs(h1, labels, head, chunk_rows=5)  # 18 rows: chunks of 5, 5, 5, 3
    want, _ = _plain(twin(h2), labels)
    _close(got, want)
    got.sum().mul(-1).backward()
    want.sum().mul(-1).backward()
    _close(h1.grad, h2.grad)
    _close(head.weight.grad, twin.weight.grad)
    if bias:
        _close(head.bias.grad, twin.bias.grad)


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("with_head", [True, False])
def test_gradients_made_ahead_match_plain_for_a_sum_and_fall_back_otherwise(uniform, with_head, monkeypatch):
    import rlhfctl.logprobs as logprobs

    calls = []
    chunk_logits = logprobs._chunk_logits
    monkeypatch.setattr(logprobs, "_chunk_logits", lambda *a: calls.append(1) or chunk_logits(*a))
    gen = torch.Generator().manual_seed(5)
    head = torch.nn.Linear(8, 90, bias=True)
    twin = torch.nn.Linear(8, 90, bias=True)
    twin.load_state_dict(head.state_dict())
    x = torch.randn(13, 8 if with_head else 90, generator=gen)
    labels = torch.randint(0, 90, (13,), generator=gen)
    weights = torch.full((13,), -0.25) if uniform else torch.randn(13, generator=gen)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, _ = token_logprobs(a, labels, head if with_head else None, temperature=1.3, chunk_rows=4, grads_ahead=True)
    want, _ = _plain(twin(b) if with_head else b, labels, temperature=1.3)
    _close(got, want)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    assert len(calls) == (4 if uniform else 8)  # 13 rows in chunks of 4; unequal weights recompute the logits
    _close(a.grad, b.grad)
    if with_head:
        _close(head.weight.grad, twin.weight.grad)
        _close(head.bias.grad, twin.bias.grad)


def test_no_rows_give_zero_gradients():
    head = torch.nn.Linear(8, 20)
    x = torch.randn(0, 8, requires_grad=True)
    got, _ = token_logprobs(x, torch.zeros(0, dtype=torch.long), head, grads_ahead=True)
    got.sum().backward()
    assert got.shape == (0,) and head.weight.grad.abs().sum() == 0


def test_bf16_logits_are_upcast_as_the_plain_path_does():
    gen = torch.Generator().manual_seed(2)
    logits = (torch.randn(10, 40, generator=gen) * 4).bfloat16()
    labels = torch.randint(0, 40, (10,), generator=gen)
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    got, _ = token_logprobs(a, labels, chunk_rows=3)
    want, _ = _plain(b, labels)
    assert got.dtype == torch.float32
    _close(got, want)
    got.sum().backward()
    want.sum().backward()
    assert a.grad.dtype == torch.bfloat16
    _close(a.grad.float(), b.grad.float())


def test_bf16_head_runs_in_bf16_like_the_model_would():
    gen = torch.Generator().manual_seed(3)
    head = torch.nn.Linear(16, 64, bias=False).bfloat16()
    hidden = torch.randn(12, 16, generator=gen).bfloat16()
    labels = torch.randint(0, 64, (12,), generator=gen)
    got, _ = token_logprobs(hidden, labels, head, chunk_rows=5)
    want, _ = _plain(head(hidden), labels)
    _close(got, want.detach())


def _tiny_model():
    from rlhfctl.models import load_causal_lm

    return load_causal_lm("toy:tiny", seed=0)


def test_final_hidden_on_a_tiny_model_gives_the_plain_losses_and_gradients():
    model, twin = _tiny_model(), _tiny_model()
    assert plain_head(model) is model.lm_head
    gen = torch.Generator().manual_seed(4)
    ids = torch.randint(0, model.config.vocab_size, (3, 11), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    with final_hidden(model) as found:
        output = model(input_ids=ids, attention_mask=mask)
    assert output.logits.shape[1] == 0  # the head saw an empty slice: no full logits were made
    got, _ = token_logprobs(found.states(output)[:, 5:-1], ids[:, 6:], found.head, chunk_rows=4)
    want, _ = _plain(twin(input_ids=ids, attention_mask=mask).logits[:, 5:-1], ids[:, 6:])
    _close(got, want)
    got.sum().backward()
    want.sum().backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        _close(p.grad, q.grad)


def test_a_head_that_is_not_plain_keeps_the_full_logits():
    model = _tiny_model()
    model.config.final_logit_softcapping = 30.0
    assert plain_head(model) is None
    ids = torch.randint(0, model.config.vocab_size, (2, 5))
    with final_hidden(model) as found:
        output = model(input_ids=ids)
    assert found.head is None and found.states(output).shape == (2, 5, model.config.vocab_size)


def test_the_head_is_found_through_a_reference_wrapper_and_not_in_a_compiled_model():
    from rlhfctl.training.lora import BaseModelReference

    model = _tiny_model()
    assert plain_head(BaseModelReference(model)) is model.lm_head
    model.compile()  # in place, as --compile does: a hook per call would recompile it, so the logits stay
    assert plain_head(model) is None
