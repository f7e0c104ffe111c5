from collections import Counter

import pytest

from rlhfctl.errors import ConfigError
from rlhfctl.generation.base import SamplingParams, derive_seed

torch = pytest.importorskip("torch")

PROMPTS = ["Compute 1+2.\n", "Compute 31+5+30-49+38.\n", "Compute 12-3+4.\n", "C", "Compute 99-17.\n", "xyz 12"]


@pytest.fixture(scope="module")
def tok():
    from rlhfctl.models import load_tokenizer

    return load_tokenizer("toy:tiny")


@pytest.fixture(scope="module")
def model():
    from rlhfctl.models import load_causal_lm

    return load_causal_lm("toy:tiny", seed=0).eval()


@pytest.fixture(scope="module")
def gen(model, tok):
    from rlhfctl.generation.hf import HFGenerator

    return HFGenerator(model, tok)


def _decode(model, tok, rows, max_new_tokens, eos_id, params=None, seed=0):
    from rlhfctl.generation.hf import _decode_loop

    params = params or SamplingParams(n=1, temperature=0, max_new_tokens=max_new_tokens)
    return _decode_loop(model, rows, params, tok.pad_token_id, frozenset({eos_id}), torch.Generator().manual_seed(seed), "cpu")


def test_greedy_decode_matches_model_generate_with_left_padding_and_early_stops(model, tok):
    """The hand-written loop (left padding, position ids, KV-cache rows dropped as they finish) == `generate`.

    RoPE only sees relative positions, so a constant offset per row would pass unnoticed; a position that does
    not advance by one per new token, a wrong attention mask or a cache row kept after its row left do not.
    """
    rows = [tok(p)["input_ids"] for p in PROMPTS]
    assert len({len(r) for r in rows}) > 3  # prompts of different lengths: real left padding
    free = _decode(model, tok, rows, 16, eos_id=-1)  # no eos: every row runs to the limit
    assert all(reason == "length" and len(t) == 16 for t, reason in free)
    # Treat a token the model emits as "eos", chosen so that rows stop at different steps and one never does:
    # every stop drops a row from the KV cache mid-batch.
    def stops(token):
        return [t.index(token) if token in t else None for t, _ in free]

    eos = max({t for g, _ in free for t in g}, key=lambda tk: (None in stops(tk), len(set(stops(tk)))))
    assert None in stops(eos) and len({s for s in stops(eos) if s is not None}) >= 2, stops(eos)

    ours = _decode(model, tok, rows, 16, eos_id=eos)
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    assert (enc.attention_mask[:, 0] == 0).any()  # left padded
    with torch.inference_mode():
        ref = model.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=eos)
    ref = ref[:, enc.input_ids.shape[1]:].tolist()
    for i, ((tokens, reason), want) in enumerate(zip(ours, ref)):
        stop = stops(eos)[i]
        if stop is None:
            assert reason == "length" and tokens == want, i
        else:
            assert reason == "stop" and tokens == want[:stop + 1] and tokens[-1] == eos, i


class _CacheNamed(torch.nn.Module):
    """The model behind a forward whose KV-cache keyword is ``name`` (transformers renamed
    ``past_key_values`` to ``cache`` within 5.x) and nothing else: no ``**kwargs`` to swallow a wrong one."""

    def __init__(self, inner, name: str):
        super().__init__()
        self.inner, self.name = inner, name
        self.forward = {"cache": self._forward_cache, "past_key_values": self._forward_past}[name]

    def _call(self, input_ids, attention_mask, position_ids, cache, use_cache):
        from types import SimpleNamespace

        from rlhfctl.generation.hf import cache_keyword

        inner_name = cache_keyword(self.inner)
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=use_cache, **{inner_name: cache})
        return SimpleNamespace(logits=out.logits, **{self.name: getattr(out, inner_name)})

    def _forward_cache(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, use_cache=None):
        return self._call(input_ids, attention_mask, position_ids, cache, use_cache)

    def _forward_past(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None):
        return self._call(input_ids, attention_mask, position_ids, past_key_values, use_cache)


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_the_kv_cache_is_passed_under_the_keyword_the_model_takes(model, tok, name):
    rows = [tok(p)["input_ids"] for p in PROMPTS]
    wrapped = _CacheNamed(model, name)
    assert _decode(wrapped, tok, rows, 12, eos_id=-1) == _decode(model, tok, rows, 12, eos_id=-1)


def test_greedy_decode_batch_equals_one_row_at_a_time(model, tok):
    rows = [tok(p)["input_ids"] for p in PROMPTS]
    batch = _decode(model, tok, rows, 10, eos_id=tok.eos_token_id)
    alone = [_decode(model, tok, [r], 10, eos_id=tok.eos_token_id)[0] for r in rows]
    assert batch == alone


def test_same_seed_same_samples_and_other_seed_other_samples(gen):
    p = SamplingParams(n=4, temperature=1.0, max_new_tokens=8, batch_size=8, seed=7)
    a = gen.generate(PROMPTS, p, keys=[f"k{i}" for i in range(len(PROMPTS))])
    b = gen.generate(PROMPTS, p, keys=[f"k{i}" for i in range(len(PROMPTS))])
    assert [[s.token_ids for s in g] for g in a] == [[s.token_ids for s in g] for g in b]
    c = gen.generate(PROMPTS, SamplingParams(n=4, temperature=1.0, max_new_tokens=8, batch_size=8, seed=8),
                     keys=[f"k{i}" for i in range(len(PROMPTS))])
    assert [[s.token_ids for s in g] for g in a] != [[s.token_ids for s in g] for g in c]
    # the n samples of a prompt differ from each other when sampling
    assert any(len({tuple(s.token_ids) for s in g}) > 1 for g in a)
    assert [len(g) for g in a] == [4] * len(PROMPTS)


def test_greedy_samples_are_identical_across_n(gen, tok):
    groups = gen.generate(PROMPTS, SamplingParams(n=3, temperature=0, max_new_tokens=8, batch_size=4))
    for g in groups:
        assert len(g) == 3 and len({(s.text, tuple(s.token_ids)) for s in g}) == 1
    # and equal to the greedy continuation of each prompt alone
    for prompt, g in zip(PROMPTS, groups):
        (tokens, _), = _decode(gen.model, tok, [tok(prompt)["input_ids"]], 8, eos_id=tok.eos_token_id)
        assert g[0].token_ids == tokens


def test_samples_text_and_finish_reasons(gen, tok):
    groups = gen.generate(PROMPTS[:2], SamplingParams(n=2, temperature=1.0, max_new_tokens=6, batch_size=4))
    for g in groups:
        for s in g:
            assert s.num_tokens == len(s.token_ids) <= 6
            if s.finish_reason == "stop":
                assert s.token_ids[-1] == tok.eos_token_id
                assert s.text == tok.decode(s.token_ids[:-1], skip_special_tokens=True)
            else:
                assert s.finish_reason == "length" and len(s.token_ids) == 6
                assert s.text == tok.decode(s.token_ids, skip_special_tokens=True)


def test_eos_is_stripped_and_reported_as_stop(model, tok):
    from rlhfctl.generation.hf import HFGenerator

    class EosAfterTwo(torch.nn.Module):
        """Wraps the model: after two generated tokens, eos is the only likely token."""

        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, **kw):
            out = self.inner(**kw)
            self.calls += 1
            if self.calls >= 3:
                out.logits[..., tok.eos_token_id] = 1e4
            return out

    g = HFGenerator(EosAfterTwo(model), tok)
    (s,), = g.generate(["Compute 1+2.\n"], SamplingParams(n=1, temperature=0, max_new_tokens=8))
    assert s.finish_reason == "stop" and s.num_tokens == 3 and s.token_ids[-1] == tok.eos_token_id
    assert "<eos>" not in s.text and len(s.text) == 2


# --- sample_next ---------------------------------------------------------------------------------

def _draws(probs, top_p, temperature=1.0, n=4000, seed=0, per_row=False):
    """Token counts of ``n`` draws: from one shared generator, or (``per_row``) one stream per row."""
    from rlhfctl.generation.hf import RowStreams, sample_next

    logits = torch.tensor(probs).log().expand(n, -1)
    if per_row:
        streams = RowStreams([seed * n + i for i in range(n)], 1, "cpu")
        return Counter(sample_next(logits, temperature, top_p, streams, torch.arange(n)).tolist())
    return Counter(sample_next(logits, temperature, top_p, torch.Generator().manual_seed(seed)).tolist())


@pytest.mark.parametrize("per_row", [False, True])
def test_top_p_keeps_only_the_top_token_when_it_has_enough_mass(per_row):
    assert set(_draws([0.1, 0.6, 0.3], top_p=0.5, per_row=per_row)) == {1}
    assert set(_draws([0.25, 0.5, 0.25], top_p=0.5, per_row=per_row)) == {1}  # exactly top_p: the top token alone reaches it


@pytest.mark.parametrize("per_row", [False, True])
def test_top_p_keeps_the_smallest_set_reaching_it_and_renormalises(per_row):
    counts = _draws([0.05, 0.4, 0.35, 0.2], top_p=0.5, per_row=per_row)
    assert set(counts) == {1, 2}
    assert counts[1] / sum(counts.values()) == pytest.approx(0.4 / 0.75, abs=0.03)
    assert set(_draws([0.05, 0.4, 0.35, 0.2], top_p=0.8, per_row=per_row)) == {1, 2, 3}
    assert set(_draws([0.05, 0.4, 0.35, 0.2], top_p=1.0, per_row=per_row)) == {0, 1, 2, 3}


def test_row_streams_never_draw_a_token_without_mass():
    from rlhfctl.generation.hf import RowStreams

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0]]).expand(2000, -1)
    streams = RowStreams(list(range(2000)), 1, "cpu")
    streams.uniforms[0, 0] = 1.0 - 2**-24  # the largest float32 below 1
    assert set(streams.draw(probs, torch.arange(2000)).tolist()) == {1, 3}


def test_a_prompt_samples_the_same_whatever_shares_its_batch(gen):
    """Seeds come from each prompt's key and sample index: batch size and neighbours change nothing."""
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=10, batch_size=12, seed=5)
    tokens = lambda groups: [[s.token_ids for s in g] for g in groups]  # noqa: E731
    together = tokens(gen.generate(PROMPTS, params, keys=list("abcdef")))
    alone = [tokens(gen.generate([p], params, keys=[k]))[0] for p, k in zip(PROMPTS, "abcdef")]
    assert together == alone
    shuffled = tokens(gen.generate(PROMPTS[::-1], params, keys=list("fedcba")))
    assert shuffled == together[::-1]
    twice = tokens(gen.generate([PROMPTS[1]] * 2, params, keys=["b", "b"]))
    assert twice[0] == together[1] and twice[1] != twice[0]  # a key given twice samples afresh


def test_temperature_zero_is_argmax_and_low_temperature_sharpens():
    from rlhfctl.generation.hf import sample_next

    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    assert sample_next(logits, 0.0, 1.0, torch.Generator().manual_seed(0)).tolist() == [1, 0]
    hot, cold = _draws([0.2, 0.5, 0.3], 1.0, temperature=1.0), _draws([0.2, 0.5, 0.3], 1.0, temperature=0.1)
    assert hot[1] / 4000 == pytest.approx(0.5, abs=0.04) and cold[1] / 4000 > 0.98


def test_sample_next_is_reproducible_for_a_generator_seed():
    a = _draws([0.2, 0.5, 0.3], 0.9, n=50, seed=3)
    assert a == _draws([0.2, 0.5, 0.3], 0.9, n=50, seed=3)


# --- params --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,flag", [(dict(n=0), "--n"), (dict(temperature=-1), "--temperature"), (dict(top_p=0), "--top-p"),
                                     (dict(top_p=1.5), "--top-p"), (dict(max_new_tokens=0), "--max-new-tokens"),
                                     (dict(batch_size=0), "--batch-size")])
def test_sampling_params_are_checked(kw, flag):
    with pytest.raises(ConfigError, match=flag):
        SamplingParams(**kw)


def test_derive_seed_is_stable_and_separates_keys():
    assert derive_seed(0, "a", "b") == derive_seed(0, "a", "b")
    assert len({derive_seed(0, "a"), derive_seed(1, "a"), derive_seed(0, "b"), derive_seed(0, "a", "b")}) == 4
    assert 0 <= derive_seed(123, "x") < 2**63
