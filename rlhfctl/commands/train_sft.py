from __future__ import annotations

from typing import Annotated

import typer

from rlhfctl.commands._options import (
    Bf16Opt, CompileOpt, ConfigOpt, DenseEmbeddingOpt, EpochsOpt, FieldOpt, GradCheckpointOpt, JsonOpt, LoraAlphaOpt,
    LoraDropoutOpt, LoraROpt, LoraTargetsOpt, LrOpt, MaxLengthOpt, MaxStepsOpt, ModelOpt, PromptTemplateOpt, ResumeOpt,
    SaveDtypeOpt, SaveEveryOpt, SeedOpt, SystemOpt, TrustOpt, WarmupOpt, WeightDecayOpt, field_map, print_summary, prompt_format,
)


def train_sft(
    data: Annotated[str, typer.Argument(metavar="DATA", help="Records in one of TRL's formats: {prompt, completion} (loss on the completion); {text} (language modelling: loss on every token); or {messages} (conversational: the last assistant message is the completion, the messages before it the prompt). JSONL, Parquet, CSV, a datasets folder or hf:ORG/NAME.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Run folder: the final model, checkpoints/, metrics.jsonl.")],
    model: ModelOpt,
    epochs: EpochsOpt = 1.0,
    max_steps: MaxStepsOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Records per optimiser step (global, over all ranks).")] = 64,
    lr: LrOpt = 1e-3,
    warmup_ratio: WarmupOpt = 0.05,
    weight_decay: WeightDecayOpt = 0.0,
    max_length: MaxLengthOpt = 512,
    seed: SeedOpt = 0,
    save_every: SaveEveryOpt = 100,
    resume: ResumeOpt = False,
    compile_model: CompileOpt = False,
    dense_embedding: DenseEmbeddingOpt = False,
    no_packing: Annotated[bool, typer.Option(
        "--no-packing", help="Run every record whole (by default, the tokens that begin every record of a batch, "
                             "such as a system prompt, run once and the rest of each record continues from them).")] = False,
    bf16: Bf16Opt = False,
    gradient_checkpointing: GradCheckpointOpt = False,
    save_dtype: SaveDtypeOpt = "auto",
    lora_r: LoraROpt = 0,
    lora_alpha: LoraAlphaOpt = None,
    lora_dropout: LoraDropoutOpt = 0.0,
    lora_target_modules: LoraTargetsOpt = "all-linear",
    trust_remote_code: TrustOpt = False,
    field: FieldOpt = None,
    system: SystemOpt = None,
    prompt_template: PromptTemplateOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Supervised fine-tuning: loss on completion tokens only (every token of {text} records).

    Writes a Hugging Face model folder (AutoModelForCausalLM) with rlhfctl.json,
    metrics.jsonl (one line per step) and checkpoints/step-N/. Runs under
    `accelerate launch` unchanged; --resume continues exactly where a killed
    run stopped.

    Examples:

        rlhfctl train-sft data/toy/sft.jsonl --model toy:small --out runs/sft

        rlhfctl train-sft data/toy/sft.jsonl --model toy:tiny --out runs/sft-tiny --max-steps 50 --resume

        rlhfctl train-sft data/toy/sft.jsonl --model toy:small --out runs/sft-lora --lora-r 8 --bf16 --gradient-checkpointing
    """

    from rlhfctl.training.loop import Schedule
    from rlhfctl.training.scale import ScaleOptions
    from rlhfctl.training.sft import SFTConfig, run

    schedule = Schedule(epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr, warmup_ratio=warmup_ratio,
                        weight_decay=weight_decay, seed=seed, save_every=save_every, compile=compile_model,
                        sparse_embedding=not dense_embedding)
    scale = ScaleOptions(bf16=bf16, gradient_checkpointing=gradient_checkpointing, lora_r=lora_r, lora_alpha=lora_alpha,
                         lora_dropout=lora_dropout, lora_target_modules=lora_target_modules, save_dtype=save_dtype)
    results = run(SFTConfig(data=data, model=model, out=out, schedule=schedule, max_length=max_length, resume=resume,
                            packing=not no_packing, trust_remote_code=trust_remote_code, scale=scale, fields=field_map(field),
                            prompt_format=prompt_format(system, prompt_template)))
    print_summary({**results, "out": out}, as_json, "train-sft")
