"""Export a math data set from the Hugging Face Hub as rlhfctl prompts JSONL.

Each line is ``{"id", "prompt": [chat message], "answer", "task": "math"}``,
the prompt asking for the final answer in ``\\boxed{}`` (what the `math`
grader reads). Needs network access to the Hub and ``datasets``:

    python examples/export_math.py HuggingFaceH4/MATH-500 --split test --out data/math500.jsonl
    python examples/export_math.py openai/gsm8k --config main --split train --problem-key question --answer-key answer \
        --answer-after '####' --out data/gsm8k-train.jsonl
"""

from __future__ import annotations

import argparse

from rlhfctl.records import prompt_id, write_jsonl

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", help="Hub id or local path of the data set")
    p.add_argument("--config", default=None, help="data set configuration name (gsm8k: main)")
    p.add_argument("--split", default="test")
    p.add_argument("--problem-key", default="problem")
    p.add_argument("--answer-key", default="answer")
    p.add_argument("--answer-after", default=None, help="keep only the text after this marker in the answer (gsm8k: ####)")
    p.add_argument("--limit", type=int, default=None, help="first this many problems")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    from datasets import load_dataset

    rows = load_dataset(args.dataset, args.config, split=args.split)
    records = []
    for row in rows.select(range(min(args.limit, len(rows)))) if args.limit else rows:
        answer = str(row[args.answer_key])
        if args.answer_after:
            answer = answer.split(args.answer_after)[-1].strip()
        messages = [{"role": "user", "content": f"{row[args.problem_key]}\n{INSTRUCTION}"}]
        records.append({"id": prompt_id(messages), "prompt": messages, "answer": answer, "task": "math"})
    write_jsonl(args.out, records)
    print(f"{args.out}: {len(records)} prompts")


if __name__ == "__main__":
    main()
