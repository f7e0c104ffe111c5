"""`best-of-n`: accuracy of selecting 1 of N samples, for N = 1, 2, 4, …, N_max.

Every curve comes from one set of N_max samples per prompt with exact
expectations over random N-subsets (`selection.best_of_n_accuracy`,
`passk.maj_at_k`); the σ(reward)-weighted vote is exact up to N_max = 16 and
a seeded estimate beyond (`passk.weighted_maj_at_k`). Scorer outputs are
kept in ``OUT.scores.json`` keyed by scorer, prompt id and response index,
so adding a scorer or re-plotting never scores twice. A scorer's key names
its model folder and a fingerprint of the folder's files, and the cache
records a digest of every response it scored: a model retrained in place,
or a rollouts file regenerated under the same ids, is scored afresh instead
of read from stale entries.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rlhfctl.console import log
from rlhfctl.data import PromptFormat
from rlhfctl.errors import ConfigError, DataError, ModelError
from rlhfctl.eval.selection import best_of_n_accuracy, oracle_accuracy
from rlhfctl.eval.passk import ks_up_to, maj_at_k, weighted_maj_at_k
from rlhfctl.generation.base import EngineOptions, SamplingParams
from rlhfctl.generation.server import ServerOptions
from rlhfctl.generation.rollout import RolloutConfig, run as rollout
from rlhfctl.grading import get_grader, task_of
from rlhfctl.models import ModelSource
from rlhfctl.records import ROLLOUTS, Record, check_out_file, read_records, write_json, write_jsonl
from rlhfctl.report.figures import best_of_n_figure
from rlhfctl.report.runs import BestOfNResult
from rlhfctl.rm.metrics import AGGREGATIONS, aggregate_steps, sigmoid
from rlhfctl.rm.scorers import logprob_rollouts, prm_step_scores, score_rollouts

VOTES = ("majority", "weighted")


@dataclass(frozen=True)
class BoNConfig:
    source: str  # rollouts JSONL, or prompts JSONL with `policy`
    out: str  # bon.json
    rm: str | None = None
    prm: str | None = None
    aggs: tuple[str, ...] = ("min",)
    votes: tuple[str, ...] = ()
    logprob: str | None = None
    oracle: bool = True
    n: int | None = None  # caps N_max
    picks: str | None = None
    plot: str | None = None
    policy: str | None = None  # sample the N responses with this model first (with `server`: its tokenizer, optional)
    params: SamplingParams = SamplingParams(n=16)
    backend: str = "auto"
    engine: EngineOptions = EngineOptions()
    rm_max_length: int | None = None  # tokens a reward model reads; None: its trained --max-length
    trust_remote_code: bool = False  # for every model the sweep loads
    fields: dict[str, str] = field(default_factory=dict)  # --field renames of SOURCE's columns
    prompt_format: PromptFormat = PromptFormat()  # --system / --prompt-template, with --policy
    server: ServerOptions | None = None  # --backend openai: the server samples the N responses first

    def source_of(self, spec: str) -> ModelSource:
        return ModelSource(spec, self.trust_remote_code)

    def check(self) -> None:
        for v in self.votes:
            if v not in VOTES:
                raise ConfigError(f"unknown --vote {v!r}: choose from {', '.join(VOTES)}")
        if "weighted" in self.votes and not self.rm:
            raise ConfigError("--vote weighted needs --rm DIR (the weights are σ(reward))")
        if self.n is not None and self.n < 1:
            raise ConfigError(f"--n must be at least 1, got {self.n}")

        for agg in self.aggs:
            if agg not in AGGREGATIONS:
                raise ConfigError(f"unknown --agg {agg!r}: choose from {', '.join(AGGREGATIONS)}")
        if not (self.rm or self.prm or self.votes or self.logprob or self.oracle):
            raise ConfigError("nothing to compare: give --rm, --prm, --vote, --logprob or --oracle")
        check_out_file(self.out)
        check_out_file(self.picks, "--picks")
        check_out_file(self.plot, "--plot")


def run(config: BoNConfig) -> dict[str, Any]:
    config.check()
    rollouts = _rollouts(config)
    n_max = _n_max(rollouts, config)
    rollouts = [{**r, "responses": r["responses"][:n_max], "correct": r["correct"][:n_max]} for r in rollouts]
    scores = ScoreCache(None if config.out == "-" else config.out + ".scores.json", rollouts)
    curves: dict[str, list[float]] = {}
    ns = ks_up_to(n_max) + ([n_max] if n_max & (n_max - 1) else [])
    if config.oracle:
        curves["oracle"] = [_mean(oracle_accuracy(r["correct"], k) for r in rollouts) for k in ns]
    ranked: dict[str, list[list[float]]] = {}
    counts: Counter = Counter()
    if config.rm:
        ranked["rm"] = scores.get(model_key("rm", config.rm), rollouts,
                                  lambda todo: _score_rm(todo, config.source_of(config.rm), config.rm_max_length, counts))
    if config.prm and config.aggs:  # the step scores are cached once; each --agg is computed from them

        steps = scores.get(model_key("prm-steps", config.prm), rollouts,
                           lambda todo: _score_prm_steps(todo, config.source_of(config.prm), config.rm_max_length, counts))
        for agg in config.aggs:
            ranked[f"prm-{agg}"] = [[aggregate_steps(s, agg) for s in per_prompt] for per_prompt in steps]
    if config.logprob:
        ranked["logprob"] = scores.get(model_key("logprob", config.logprob), rollouts, lambda todo: _score_logprob(todo, config.source_of(config.logprob)))
    for name, per_prompt in ranked.items():
        curves[name] = [_mean(best_of_n_accuracy(s, r["correct"], k) for s, r in zip(per_prompt, rollouts)) for k in ns]
    keys = _vote_keys(rollouts) if config.votes else []
    for vote in config.votes:
        weights = [[sigmoid(x) for x in s] for s in ranked["rm"]] if vote == "weighted" else [None] * len(rollouts)
        curves[vote] = [_mean(_vote_accuracy(kk, r["correct"], w, k) for kk, r, w in zip(keys, rollouts, weights)) for k in ns]
    scores.save()
    result = {"n": ns, "curves": curves, "num_prompts": len(rollouts), "source": config.source}
    if counts:
        result["overlong"] = dict(counts)  # responses scored on their first tokens only (this run's scoring)
    write_json(config.out, result)
    if config.picks:
        write_jsonl(config.picks, _picks(rollouts, ranked))
    if config.plot:
        plot_curves(result, config.plot, "best-of-n" if config.out == "-" else Path(config.out).stem)
    return result


def _rollouts(config: BoNConfig) -> list[Record]:
    """The rollouts to select from; with --policy or a server, sampled first (and kept beside the output)."""
    if not (config.policy or config.server):
        return _graded(config.source, read_records(config.source, ROLLOUTS, fields=config.fields))
    if config.out != "-":
        path = str(Path(config.out).with_suffix("")) + ".rollouts.jsonl"
        return _graded(path, read_records(_sample(config, path), ROLLOUTS))
    with tempfile.TemporaryDirectory(prefix="rlhfctl-bon-") as tmp:  # --out -: the samples are not kept
        return _graded(config.source, read_records(_sample(config, os.path.join(tmp, "rollouts.jsonl")), ROLLOUTS))


def _sample(config: BoNConfig, path: str) -> str:
    """Sample --n responses per prompt of SOURCE (--policy or the server) into ``path`` (resumed when it exists)."""
    n = config.n or config.params.n
    rollout(RolloutConfig(prompts=config.source, model=config.policy, out=path, params=replace(config.params, n=n),
                          backend=config.backend, engine=config.engine, trust_remote_code=config.trust_remote_code,
                          fields=config.fields, prompt_format=config.prompt_format, server=config.server))
    return path


def _graded(path: str, rollouts: list[Record]) -> list[Record]:
    """``rollouts``, refused unless every response carries a grade."""
    for line, r in enumerate(rollouts, start=1):
        if "correct" not in r:
            raise DataError(path, line, "missing: best-of-n needs graded rollouts (prompts with an answer)", "correct")
        if len(r["correct"]) != len(r["responses"]):
            raise DataError(path, line, f"{len(r['correct'])} grades for {len(r['responses'])} responses: "
                            "needs one per response", "correct")
    return rollouts


def _n_max(rollouts: list[Record], config: BoNConfig) -> int:
    n_max = min(len(r["responses"]) for r in rollouts)
    if n_max == 0:
        raise DataError(config.source, None, "a rollout has no responses", "responses")
    if config.n and config.n > n_max:
        log(f"best-of-n: --n {config.n}, but the prompts have {n_max} samples each (the fewest of any prompt): "
            f"the curve stops at N = {n_max}")
    return min(n_max, config.n) if config.n else n_max


def default_out(source: str) -> str:
    """Where --out goes when not given: ``ROLLOUTS.bon.json`` beside a rollouts file."""
    if source == "-" or not os.path.isfile(source):
        raise ConfigError(f"--out is needed when SOURCE is not a file ({source})")
    return str(Path(source).with_suffix("")) + ".bon.json"


def model_key(kind: str, model: str) -> str:
    """The cache key of a scorer: ``kind:PATH@FINGERPRINT`` for a model folder, ``kind:SPEC`` for
    anything else (a ``toy:`` spec)."""
    if not os.path.isdir(model):
        return f"{kind}:{model}"
    digest = hashlib.sha256()
    for f in sorted(Path(model).iterdir()):
        if f.is_file():  # retraining rewrites the weights and the manifest: new sizes or times
            st = f.stat()
            digest.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"{kind}:{os.path.abspath(model)}@{digest.hexdigest()[:16]}"


def _nan_scores(per_prompt: list[list[Any]]) -> int:
    """How many responses have a NaN score (or, for a PRM, a NaN step score): NaN sorts anywhere."""
    return sum(any(math.isnan(x) for x in (s if isinstance(s, list) else [s])) for scores in per_prompt for s in scores)


def _response_digest(prompt: Any, response: str) -> str:
    return hashlib.sha256(json.dumps([prompt, response]).encode()).hexdigest()[:16]


class ScoreCache:
    """``{scorer: {prompt id: [score per response]}}`` on disk, written atomically (for a PRM,
    ``prm-steps``, the score of a response is the list of its step logits).

    ``RESPONSES`` maps each prompt id to digests of the responses its scores are for. Opening
    the cache with rollouts whose responses differ drops that prompt's scores from every
    scorer; entries of a scorer whose model folder has changed (same path, new fingerprint)
    are dropped when that scorer is asked for. A NaN score, cached or fresh, is refused: it
    would rank arbitrarily."""

    RESPONSES = "responses"

    def __init__(self, path: str | None, rollouts: list[Record]):
        self.path = path  # None: kept in memory only (--out -)
        self.data: dict[str, dict[str, list[Any]]] = {}
        if path is not None and os.path.exists(path):
            self.data = self._read(path)
        seen = self.data.setdefault(self.RESPONSES, {})
        for r in rollouts:
            digests = [_response_digest(r["prompt"], t) for t in r["responses"]]
            old = seen.get(r["id"])
            if old is not None and old[: len(digests)] != digests[: len(old)]:
                for name, per_prompt in self.data.items():
                    if name != self.RESPONSES:
                        per_prompt.pop(r["id"], None)
                old = None
            seen[r["id"]] = digests if old is None or len(digests) > len(old) else old

    @staticmethod
    def _read(path: str) -> dict[str, dict[str, list[Any]]]:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(path, None, f"damaged score cache ({e}): delete it and the scores are computed again") from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise DataError(path, None, "not a best-of-n score cache: delete it and the scores are computed again")
        return data

    def get(self, scorer: str, rollouts: list[Record], compute) -> list[list[float]]:
        path, _, _ = scorer.partition("@")
        for stale in [k for k in self.data if k != scorer and k.partition("@")[0] == path]:
            del self.data[stale]  # the same model folder, rewritten since
        known = self.data.setdefault(scorer, {})
        kind, _, model = path.partition(":")
        cached = [known[r["id"]][: len(r["responses"])] for r in rollouts if r["id"] in known]
        if bad := _nan_scores(cached):
            raise DataError(self.path, None, f"{bad} responses have a NaN {kind} score from {model}: a NaN cannot be "
                                             "ranked (delete the file to score afresh)")
        todo = [r for r in rollouts if len(known.get(r["id"], [])) < len(r["responses"])]
        if todo:
            fresh = compute(todo)
            if bad := _nan_scores(fresh):  # refused before it reaches the cache
                raise ModelError(f"{model}: {bad} of {sum(len(s) for s in fresh)} responses got a NaN {kind} score: "
                                 "a NaN cannot be ranked")
            for r, s in zip(todo, fresh):
                known[r["id"]] = s
        return [known[r["id"]][: len(r["responses"])] for r in rollouts]

    def save(self) -> None:
        if self.path is not None:
            write_json(self.path, self.data)


def _score_rm(rollouts: list[Record], rm: ModelSource, max_length: int | None, counts: Counter) -> list[list[float]]:
    return score_rollouts(rollouts, rm, max_length=max_length, counts=counts)


def _score_prm_steps(rollouts: list[Record], prm: ModelSource, max_length: int | None, counts: Counter) -> list[list[list[float]]]:
    return prm_step_scores(rollouts, prm, max_length=max_length, counts=counts)


def _score_logprob(rollouts: list[Record], model: ModelSource) -> list[list[float]]:
    return logprob_rollouts(rollouts, model)


def _vote_keys(rollouts: list[Record]) -> list[list[str | None]]:
    return [[get_grader(task_of(r) or "math").extract(t) for t in r["responses"]] for r in rollouts]


def _vote_accuracy(keys: list[str | None], correct: list[bool], weights: list[float] | None, k: int) -> float:
    return maj_at_k(keys, correct, k) if weights is None else weighted_maj_at_k(keys, correct, weights, k)


def _picks(rollouts: list[Record], ranked: dict[str, list[list[float]]]) -> list[Record]:
    """The top-scored response per prompt (rejection sampling), as prompt/completion."""
    scorer = next(iter(ranked), None)
    out = []
    for i, r in enumerate(rollouts):
        scores = ranked[scorer][i] if scorer else [float(c) for c in r["correct"]]
        best = max(range(len(scores)), key=lambda j: scores[j])
        out.append({"id": r["id"], "prompt": r["prompt"], "completion": r["responses"][best],
                    "score": scores[best], "correct": r["correct"][best], "scorer": scorer or "oracle"})
    return out


def plot_curves(result: dict[str, Any], path: str, name: str) -> None:
    """The figure `report` draws for this result (every curve against N), written atomically to ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp.png")
    drawn = BestOfNResult(name, target, result["n"], result["curves"], result["num_prompts"], result["source"])
    best_of_n_figure([drawn], tmp)
    os.replace(tmp, target)


def _mean(values) -> float:
    values = list(values)
    return math.fsum(values) / len(values)
