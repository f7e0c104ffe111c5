from __future__ import annotations

from typing import Annotated, Optional

import typer

from rlhfctl.commands._options import (
    Bf16Opt, CompileOpt, ConfigOpt, DenseEmbeddingOpt, GradCheckpointOpt, JsonOpt, LoraAlphaOpt, LoraDropoutOpt, LoraROpt,
    LoraTargetsOpt, LrOpt, MaxLengthOpt, MaxStepsOpt, ModelOpt, NoPackingOpt, ResumeOpt, SaveDtypeOpt, SaveEveryOpt, SeedOpt,
    TrustOpt, WarmupOpt, WeightDecayOpt, print_summary,
)


def train_rm(
    data: Annotated[list[str], typer.Argument(metavar="DATA", help="Prefs JSONL files in TRL's formats: pairs {prompt, chosen, rejected, margin?} (without prompt: the prompt is what chosen and rejected share at the start) and/or unpaired items {prompt, completion, label}; with --prm, stepwise supervision {prompt, completions, labels}.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Run folder: the reward model, checkpoints/, metrics.jsonl.")],
    model: ModelOpt,
    prm: Annotated[bool, typer.Option("--prm", help="Train a process reward model on stepwise data (label-prm output).")] = False,
    step_sep: Annotated[str, typer.Option("--step-sep", help="With --prm: the text put between steps (as label-prm split them); default: a newline.", show_default=False)] = "\n",
    eval_data: Annotated[Optional[list[str]], typer.Option("--eval-data", help="Held-out prefs file(s); default: a split of DATA by prompt.", show_default=False)] = None,
    eval_fraction: Annotated[float, typer.Option("--eval-fraction", help="Share of DATA's prompts held out when --eval-data is not given.")] = 0.1,
    epochs: Annotated[float, typer.Option(
        "--epochs", help="Passes over the data (ignored when --max-steps is given). 1 suits large preference sets (a reward model "
                         "overfits after one pass); on a few thousand pairs, as the toy task's, use 4 (1 left its ORM at 0.63 "
                         "held-out pair accuracy).")] = 1.0,
    max_steps: MaxStepsOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Records (pairs or binary items) per optimiser step, global.")] = 32,
    lr: LrOpt = 5e-4,
    warmup_ratio: WarmupOpt = 0.05,
    weight_decay: WeightDecayOpt = 0.0,
    max_length: MaxLengthOpt = 512,
    seed: SeedOpt = 0,
    save_every: SaveEveryOpt = 100,
    resume: ResumeOpt = False,
    compile_model: CompileOpt = False,
    dense_embedding: DenseEmbeddingOpt = False,
    no_packing: NoPackingOpt = False,
    bf16: Bf16Opt = False,
    gradient_checkpointing: GradCheckpointOpt = False,
    save_dtype: SaveDtypeOpt = "auto",
    lora_r: LoraROpt = 0,
    lora_alpha: LoraAlphaOpt = None,
    lora_dropout: LoraDropoutOpt = 0.0,
    lora_target_modules: LoraTargetsOpt = "all-linear",
    trust_remote_code: TrustOpt = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Train the unified outcome reward model on pairs and binary items at once.

    Pairs use the Bradley-Terry loss -log σ(r+ - r- - margin); binary items
    the logistic loss -log σ(±r); a batch holding both averages the two. The
    folder is an AutoModelForSequenceClassification (num_labels=1) that scores
    a response in plain transformers as it does here: chat records as
    apply_chat_template(prompt + response), string records as
    prompt + response + eos (docs/design.md). Its rlhfctl.json holds
    held-out accuracy and the reward's mean and std (`reward_mean`,
    `reward_std`) for standardising scores. The backbone comes from a policy
    folder (e.g. the SFT model) or a toy: spec.

    With --prm: a process reward model (AutoModelForTokenClassification,
    num_labels=1) scored at the separator after each step, trained with per-step
    binary cross-entropy on hard or soft labels; its manifest holds held-out
    `step_accuracy` and `first_error_accuracy`.

    With --lora-r, LoRA adapters and the score head train (the backbone stays
    frozen); the saved folder has the adapters merged in.

    Examples:

        rlhfctl train-rm runs/prefs.jsonl --model runs/sft --out runs/rm

        rlhfctl train-rm runs/prefs.jsonl --model toy:tiny --out runs/rm-tiny --max-steps 20 --eval-fraction 0.2

        rlhfctl train-rm --prm runs/steps.jsonl --model runs/sft --out runs/prm

        rlhfctl train-rm runs/prefs.jsonl --model runs/sft --out runs/rm-lora --lora-r 8 --bf16
    """
    from rlhfctl.training import prm as prm_training, rm as rm_training
    from rlhfctl.training.loop import Schedule
    from rlhfctl.training.rm import RMConfig
    from rlhfctl.training.scale import ScaleOptions

    schedule = Schedule(epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr, warmup_ratio=warmup_ratio,
                        weight_decay=weight_decay, seed=seed, save_every=save_every, compile=compile_model,
                        sparse_embedding=not dense_embedding)
    scale = ScaleOptions(bf16=bf16, gradient_checkpointing=gradient_checkpointing, lora_r=lora_r, lora_alpha=lora_alpha,
                         lora_dropout=lora_dropout, lora_target_modules=lora_target_modules, save_dtype=save_dtype)
    config_ = RMConfig(data=tuple(data), model=model, out=out, schedule=schedule, eval_data=tuple(eval_data or ()),
                       eval_fraction=eval_fraction, max_length=max_length, resume=resume, trust_remote_code=trust_remote_code,
                       prm=prm, step_sep=step_sep, scale=scale, packing=not no_packing)
    results = (prm_training if prm else rm_training).run(config_)
    print_summary({**results, "out": out}, as_json, "train-rm")
