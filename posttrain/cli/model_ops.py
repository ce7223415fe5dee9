"""Commands that make or move models: models, merge, prune, export, upcycle, quantize, push."""

from __future__ import annotations

import argparse
import json


# --------------------------------------------------------------------------------------------------- models
def _models_parser(commands) -> argparse.ArgumentParser:
    return commands.add_parser("models", help="list the built-in model specs and where they come from",
                               description="List the built-in model specs and where they come from.")


def _models(args) -> int:
    from posttrain.models.specs import BUILTIN_SPECS, embedded_cache_dir

    for spec in BUILTIN_SPECS.values():
        print(f"{spec.name}\n  {spec.description}\n  source: {spec.source}")
    cached = (embedded_cache_dir() / "model.safetensors").is_file()
    print(f"\nembedded model cache: {embedded_cache_dir()} ({'ready' if cached else 'not converted yet'})")
    print("Any other spec is tried as a local Hugging Face model folder (full model or LoRA adapter), then as a "
          "hub id (needs the hub or its local cache).")
    return 0


# ---------------------------------------------------------------------------------------------------- merge
def _merge_parser(commands) -> argparse.ArgumentParser:
    merge = commands.add_parser("merge", help="merge models or LoRA adapters (linear, task arithmetic, TIES, DARE, "
                                "SLERP)", description="Merge models or LoRA adapters tensor by tensor as a YAML/JSON "
                                "config says (method, models with weights, base, parameters, out); writes a plain HF "
                                "folder with a model card. See docs/model_ops.md.")
    merge.add_argument("config", help="a merge .yaml/.json file")
    merge.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. parameters.t=0.3")
    return merge


def _merge(args) -> int:
    from posttrain.api import merge

    print(merge(args.config, args.overrides))
    return 0


# ---------------------------------------------------------------------------------------------------- prune
def _prune_parser(commands) -> argparse.ArgumentParser:
    prune = commands.add_parser("prune", help="drop decoder layers or MLP channels: a smaller student as a plain HF "
                                "folder",
                                description="Depth pruning: keep N decoder layers (the most influential on a "
                                "calibration set, ShortGPT's block influence; or a fixed deep-block pattern) or the "
                                "layers named; width pruning (--mlp-keep): keep the most important MLP channels; "
                                "writes a plain HF folder with pruning.json. See docs/distillation.md.")
    prune.add_argument("--model", required=True, help="a model spec: built-in name, local folder or hub id")
    which = prune.add_mutually_exclusive_group()
    which.add_argument("--keep-layers", type=int, metavar="N", help="how many decoder layers to keep")
    which.add_argument("--layers", metavar="I,J,...", help="the indices of the layers to keep, e.g. 0,1,2,29")
    prune.add_argument("--mlp-keep", type=float, metavar="FRACTION", help="width pruning: the fraction of each MLP's "
                       "intermediate channels to keep, the most important on the calibration set (e.g. 0.5)")
    prune.add_argument("--select", default="block-influence", choices=["block-influence", "deep-block"],
                       help="with --keep-layers: drop the lowest block-influence layers (default), or the deepest "
                            "layers but the last")
    prune.add_argument("--calibration", default=None, help="JSONL for block influence (text, prompt/completion or "
                                                           "messages); default: a few built-in texts")
    prune.add_argument("--calibration-rows", type=int, default=64, help="rows of --calibration to use")
    prune.add_argument("--out", required=True, help="the output folder")
    prune.add_argument("--device", default="cpu")
    return prune


def _prune(args) -> int:
    from posttrain.models.pruning import parse_layers, prune_model

    report = prune_model(args.model, args.out, args.keep_layers, parse_layers(args.layers), args.select,
                         args.calibration, args.calibration_rows, args.device, mlp_keep=args.mlp_keep)
    print(json.dumps(report, indent=2))
    return 0


# --------------------------------------------------------------------------------------------------- export
def _export_parser(commands) -> argparse.ArgumentParser:
    export = commands.add_parser("export", help="write a model as one GGUF file (llama.cpp, Ollama, LM Studio)",
                                 description="Export a llama-architecture model folder (e.g. runs/x/final) to GGUF "
                                 "with its tokenizer and chat template, using the gguf package's writer. See "
                                 "docs/model_ops.md.")
    export.add_argument("--model", required=True, help="model folder, or smollm2-135m-instruct")
    export.add_argument("--gguf", default="f16", metavar="TYPE", help="tensor type of the weights: f32, f16, bf16, "
                        "q8_0, q5_1, q5_0, q4_1, q4_0, q4_k (default f16; norms stay f32). Other k-quants (q5_k, "
                        "q6_k, q4_k_m...): export f16, then llama.cpp's llama-quantize")
    export.add_argument("--out", required=True, help="the .gguf file to write")
    export.add_argument("--tokenizer-pre", default=None, help="llama.cpp pre-tokenizer name (default: read off "
                        "tokenizer.json: gpt-2 or smollm)")
    return export


def _export(args) -> int:
    from posttrain.api import export

    print(export(args.model, args.out, args.gguf, args.tokenizer_pre))
    return 0


# -------------------------------------------------------------------------------------------------- upcycle
def _upcycle_parser(commands) -> argparse.ArgumentParser:
    upcycle = commands.add_parser("upcycle", help="turn a dense model into a mixture of experts (sparse upcycling)",
                                  description="Copy each MLP of a llama-architecture model into E experts behind a "
                                  "new top-k router (Komatsuzaki et al. 2023); writes a transformers Mixtral folder "
                                  "that computes the dense model's function until trained. See docs/model_ops.md.")
    upcycle.add_argument("--model", required=True, help="model folder or built-in name")
    upcycle.add_argument("--experts", type=int, default=4, help="experts per layer (default 4)")
    upcycle.add_argument("--top-k", type=int, default=2, help="experts each token is routed to (default 2)")
    upcycle.add_argument("--seed", type=int, default=0, help="seed of the routers' initialisation")
    upcycle.add_argument("--aux-loss-coef", type=float, default=0.01,
                         help="router_aux_loss_coef written to the config (default 0.01)")
    upcycle.add_argument("--out", required=True, help="output folder")
    return upcycle


def _upcycle(args) -> int:
    from posttrain.api import upcycle

    print(upcycle(args.model, args.out, args.experts, args.top_k, args.seed, args.aux_loss_coef))
    return 0


# ------------------------------------------------------------------------------------------------- quantize
def _quantize_parser(commands) -> argparse.ArgumentParser:
    quantize = commands.add_parser("quantize", help="quantize a model's weights for inference (torchao: int8, int4)",
                                   description="Quantize the linear layers and the token embedding (and with it a "
                                   "tied output head) of a model folder with torchao and write "
                                   "a folder that posttrain and transformers load like any model (needs the "
                                   "quantize extra). See docs/model_ops.md.")
    quantize.add_argument("--model", required=True, help="model folder, or smollm2-135m-instruct")
    quantize.add_argument("--format", default="int8", help="int8 (weight-only), int8-dynamic (int8 weights and "
                          "activations), int4 (weight-only, group-wise); default int8")
    quantize.add_argument("--group-size", type=int, default=None, help="inputs per scale (default: one scale per "
                          "row for int8, 32 for int4)")
    quantize.add_argument("--keep-embeddings", action="store_true", help="leave the token embedding and the output "
                          "head in float32: linear layers only (SmolLM2-135M int8: 2.4x smaller than fp32 instead of "
                          "4x; see docs/model_ops.md)")
    quantize.add_argument("--out", required=True, help="output folder")
    return quantize


def _quantize(args) -> int:
    from posttrain.api import quantize

    print(quantize(args.model, args.out, args.format, args.group_size, embeddings=not args.keep_embeddings))
    return 0


# ----------------------------------------------------------------------------------------------------- push
def _push_parser(commands) -> argparse.ArgumentParser:
    push = commands.add_parser("push", help="upload a trained folder (e.g. RUN/final) to the Hugging Face Hub",
                               description="Upload a model folder as it is (weights, tokenizer, README.md model card) "
                                           "to a Hub repository, creating it if needed. Needs a token: "
                                           "`huggingface-cli login` or HF_TOKEN.")
    push.add_argument("--model", required=True, help="the folder to upload: a run's final/, or any HF model folder")
    push.add_argument("--repo", required=True, help="the repository id, e.g. your-name/smollm2-grpo")
    push.add_argument("--private", action="store_true", help="create the repository private")
    return push


def _push(args) -> int:
    from posttrain.api import push

    print(push(args.model, args.repo, private=args.private))
    return 0


COMMANDS = {
    "models": (_models_parser, _models),
    "merge": (_merge_parser, _merge),
    "prune": (_prune_parser, _prune),
    "export": (_export_parser, _export),
    "upcycle": (_upcycle_parser, _upcycle),
    "quantize": (_quantize_parser, _quantize),
    "push": (_push_parser, _push),
}
