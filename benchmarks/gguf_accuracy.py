"""Evidence for issue 25: what each GGUF type does to a trained model. Export the model (default: the GRPO run's
final/) with `posttrain export --gguf TYPE`, read the file back with transformers (`gguf_file=`, dequantized to
float32), and evaluate it on configs/eval_merge.yaml beside the source: held-out arithmetic accuracy, reply length,
perplexity; plus file size, the logits' max error relative to the source's largest and argmax agreement on the
held-out prompts' chat renderings. Run from the repository root:

    .venv/bin/python benchmarks/gguf_accuracy.py --model runs/teacher/grpo/final --types f16,q8_0,q5_0,q4_k,q4_0

Evaluations are cached as <out>/<type>.json, so an interrupted run picks up where it stopped.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from posttrain.api import evaluate
from posttrain.models import load_model
from posttrain.models.gguf_export import export_gguf


def read_back(path: Path):
    """The GGUF file as a transformers model, dequantized to float32 (evaluated with the source's tokenizer: reading
    49152 tokens back from GGUF costs about a minute and is tested elsewhere)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def logit_agreement(source, copy, tokenizer, prompts: list[str]) -> tuple[float, float]:
    errors, agree, total = [], 0, 0
    with torch.no_grad():
        for prompt in prompts:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            ids = tokenizer(text, return_tensors="pt").input_ids
            expected, actual = source(ids).logits, copy(ids).logits
            errors.append(((actual - expected).abs().max() / expected.abs().max()).item())
            agree += int((actual.argmax(-1) == expected.argmax(-1)).sum())
            total += ids.numel()
    return max(errors), agree / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/teacher/grpo/final")
    parser.add_argument("--types", default="f16,q8_0,q5_0,q4_k,q4_0")
    parser.add_argument("--out", default="runs/gguf_table")
    parser.add_argument("--suite", default="configs/eval_merge.yaml")
    args = parser.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    source, tokenizer = load_model(args.model, dtype="float32", device="cpu")
    source.eval()
    rows = [json.loads(line) for line in Path("data/preference/arithmetic_eval.jsonl").read_text().splitlines()]
    prompts = [r["prompt"] if isinstance(r["prompt"], str) else r["prompt"][-1]["content"] for r in rows[:8]]
    print("| model | file MB | logit error | argmax agreement | held-out accuracy | words per reply | perplexity |"
          " export + read + eval s |\n|---|---|---|---|---|---|---|---|", flush=True)
    for fmt in ["source"] + args.types.split(","):
        cached = root / f"{fmt}.json"
        if not cached.exists():
            start, extra = time.perf_counter(), {"file_mb": None, "logit_error": 0.0, "argmax_agreement": 1.0}
            model = args.model
            if fmt != "source":
                path = export_gguf(args.model, root / f"model-{fmt}.gguf", fmt)
                copy = read_back(path)
                error, agreement = logit_agreement(source, copy, tokenizer, prompts)
                extra = {"file_mb": path.stat().st_size / 1e6, "logit_error": error, "argmax_agreement": agreement}
                model = (copy, tokenizer)
            result = {**evaluate(model, suite=args.suite, seed=0, out=root / f"{fmt}.eval.json"), **extra}
            result["wall_s"] = time.perf_counter() - start
            (root / f"{fmt}.tmp.json").write_text(json.dumps(result))
            (root / f"{fmt}.tmp.json").replace(cached)
        result = json.loads(cached.read_text())
        metrics = result["metrics"]
        acc = metrics["arithmetic/accuracy"]
        size = "" if result["file_mb"] is None else f"{result['file_mb']:.1f}"
        print(f"| {fmt} | {size} | {result['logit_error']:.2e} | {result['argmax_agreement']:.3f} | "
              f"{acc['value']:.3f} ± {acc['stderr']:.3f} | {metrics['length/words_mean']['value']:.1f} | "
              f"{metrics['perplexity']['value']:.3f} | {result['wall_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
