"""Pruned students before any training: perplexity of reference completions for the unpruned model, width pruning
by measured channel importance, the same number of channels at random, and depth pruning by block influence.

    python benchmarks/pruning_perplexity.py --model smollm2-135m-instruct --mlp-keep 0.5 --keep-layers 21 --rows 32
"""

from __future__ import annotations

import argparse
import copy
import json
import math

import torch


def perplexity(model, tokenizer, rows: list[dict]) -> float:
    """exp(mean NLL) of each row's completion after its chat-templated prompt."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False,
                                                   add_generation_prompt=True)
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            completion_ids = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
            logits = model(input_ids=torch.tensor([prompt_ids + completion_ids])).logits[0, len(prompt_ids) - 1 : -1]
            nll += float(torch.nn.functional.cross_entropy(logits, torch.tensor(completion_ids), reduction="sum"))
            count += len(completion_ids)
    return math.exp(nll / count)


def main() -> None:
    from posttrain.models import load_model
    from posttrain.models.pruning import prune_in_memory, prune_mlp_channels

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default="data/sft/arithmetic_eval.jsonl")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--mlp-keep", type=float, default=0.5)
    parser.add_argument("--keep-layers", type=int, default=21)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, "float32", "cpu")
    with open(args.data) as handle:
        rows = [json.loads(line) for line in handle if line.strip()][: args.rows]

    def show(name, student):
        params = sum(p.numel() for p in student.parameters())
        print(f"{name:>28}: {params / 1e6:.1f} M parameters, perplexity {perplexity(student, tokenizer, rows):.2f}",
              flush=True)

    show("unpruned", model)
    student = copy.deepcopy(model)
    prune_in_memory(student, tokenizer, mlp_keep=args.mlp_keep)
    show(f"mlp_keep {args.mlp_keep} (importance)", student)
    student, generator = copy.deepcopy(model), torch.Generator().manual_seed(0)
    size = model.config.intermediate_size
    n_keep = max(1, round(args.mlp_keep * size))
    prune_mlp_channels(student, [torch.randperm(size, generator=generator)[:n_keep].sort().values
                                 for _ in range(model.config.num_hidden_layers)])
    show(f"mlp_keep {args.mlp_keep} (random)", student)
    student = copy.deepcopy(model)
    prune_in_memory(student, tokenizer, keep_layers=args.keep_layers)
    show(f"keep_layers {args.keep_layers} (block influence)", student)


if __name__ == "__main__":
    main()
