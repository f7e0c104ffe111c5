"""best-of-n's --logprob score: the mean log-prob of each response's tokens under a policy."""

import pytest
import torch

from rlhfctl.models import load_causal_lm, load_tokenizer
from rlhfctl.rm.scorers import _sequences, logprob_rollouts


def test_logprob_rollouts_match_the_plain_full_vocabulary_computation():
    rollouts = [{"prompt": "Compute 3+4.\n", "responses": ["3+4=7\nAnswer: 7", "Answer: 8"]},
                {"prompt": "Compute 12-5+1.\n", "responses": ["12-5=7\n7+1=8\nAnswer: 8"]}]
    got = logprob_rollouts(rollouts, "toy:tiny", batch_size=2)
    model, tokenizer = load_causal_lm("toy:tiny").eval(), load_tokenizer("toy:tiny")
    seqs, prompt_lens = _sequences(rollouts, tokenizer, 512)
    want = []
    with torch.no_grad():
        for ids, start in zip(seqs, prompt_lens):
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
            token_logp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
            want.append(float(token_logp[start - 1:].mean()))
    assert [len(g) for g in got] == [2, 1]
    assert [x for g in got for x in g] == pytest.approx(want, rel=1e-5)
