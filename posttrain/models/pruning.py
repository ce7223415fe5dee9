"""Depth and width pruning: a smaller student made by dropping whole decoder layers and/or MLP channels, saved as a
plain Hugging Face folder.

Which layers to keep:
- ``block-influence`` (Men et al. 2024, ShortGPT, https://arxiv.org/abs/2403.03853): run a calibration set through
  the model and score each layer by how much it changes its input,

      BI_i = 1 - E_t [ cos(x_i,t, x_i+1,t) ]          (x_i,t: the hidden state entering layer i at token t)

  then drop the layers with the lowest BI (they nearly copy their input through the residual stream);
- ``deep-block``: drop a contiguous block of the deepest layers but keep the last one (Gromov et al. 2024, "The
  Unreasonable Ineffectiveness of the Deeper Layers", https://arxiv.org/abs/2403.17887, found the deep layers the
  most redundant and the final layer needed), a fixed pattern that needs no calibration data;
- ``every``: layers 0, k, 2k, ... (DistilBERT's student initialisation, Sanh et al. 2019), also fixed;
- an explicit list of layer indices.

Width (``mlp_keep``): in every layer's gated MLP, down(act(gate(x)) * up(x)), keep the same fraction of the
intermediate channels, those with the highest ``mlp_channel_importance`` on the calibration set (mean activation
magnitude times the down projection's column norm); ``intermediate_size`` shrinks, attention is untouched.

The kept layers' weights (and kept channels' rows and columns) are copied bit for bit; the config's
``num_hidden_layers`` and per-layer lists (``layer_types``, ...) shrink with them, and each attention module's
``layer_idx`` (its KV-cache slot) is renumbered.
Pruned models usually need some training to recover: distil them from the unpruned teacher (docs/distillation.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from posttrain.errors import ConfigError
from posttrain.models.loading import load_model
from posttrain.models.saving import save_model

log = logging.getLogger(__name__)

SELECTIONS = ("block-influence", "deep-block")
# per-layer config lists that shrink with the layers (Llama's and its relatives' names)
PER_LAYER_CONFIG = ("layer_types", "no_rope_layers", "sliding_window_pattern_layers")
# default calibration text when none is given: short, varied, in the chat-model's domain of instructions and answers
DEFAULT_CALIBRATION = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.",
    "Question: What is 17 + 25? Answer: 17 + 25 = 42.",
    "Photosynthesis converts light energy into chemical energy stored in glucose, releasing oxygen.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
    "Dear team, the meeting has moved to Thursday at 3 pm. Please bring the quarterly figures.",
    "In 1969 Apollo 11 landed on the Moon, and Neil Armstrong became the first person to walk on its surface.",
    "To make a cup of tea, boil water, pour it over the leaves, wait three minutes and remove the leaves.",
    "If a train travels 60 km in 45 minutes, its average speed is 80 km per hour.",
)


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder's ``ModuleList`` of layers (``model.model.layers`` in Llama-style models)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ConfigError(f"{type(model).__name__}: no decoder.layers list to prune")
    return layers


@torch.inference_mode()
def block_influence(model, tokenizer, texts: list[str] | tuple[str, ...] = DEFAULT_CALIBRATION,
                    max_length: int = 512) -> list[float]:
    """BI_i = 1 - mean over tokens of cos(input of layer i, output of layer i), one text at a time (no padding)."""
    layers = decoder_layers(model)
    cos_sums = [0.0] * len(layers)
    inputs: dict[int, torch.Tensor] = {}

    def remember_input(index):
        def hook(module, args, kwargs):
            inputs[index] = args[0] if args else kwargs["hidden_states"]
        return hook

    def add_cosine(index):
        def hook(module, args, kwargs, output):
            out = output[0] if isinstance(output, tuple) else output
            cos_sums[index] += float(torch.nn.functional.cosine_similarity(
                inputs.pop(index).float(), out.float(), dim=-1).sum())
        return hook

    handles = [h for i, layer in enumerate(layers) for h in (
        layer.register_forward_pre_hook(remember_input(i), with_kwargs=True),
        layer.register_forward_hook(add_cosine(i), with_kwargs=True))]
    tokens = _calibrate(model, tokenizer, texts, max_length, handles, "block influence")
    return [1.0 - total / tokens for total in cos_sums]


def _calibrate(model, tokenizer, texts, max_length: int, handles: list, purpose: str) -> int:
    """Run each text through the decoder (one at a time: no padding), then remove ``handles``; the token count."""
    device, tokens = next(model.parameters()).device, 0
    try:
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"].to(device)
            model.get_decoder()(input_ids=ids, use_cache=False)
            tokens += ids.shape[1]
    finally:
        for handle in handles:
            handle.remove()
    if tokens == 0:
        raise ConfigError(f"{purpose} needs at least one non-empty calibration text")
    return tokens


def gated_mlps(model) -> list[torch.nn.Module]:
    """Each decoder layer's gated MLP, down(act(gate(x)) * up(x)) (Llama, Mistral, Qwen, SmolLM, ...)."""
    mlps = [getattr(layer, "mlp", None) for layer in decoder_layers(model)]
    names = ("gate_proj", "up_proj", "down_proj")
    if not all(all(isinstance(getattr(m, name, None), torch.nn.Linear) for name in names) for m in mlps):
        raise ConfigError(f"{type(model).__name__}: width pruning needs gated MLPs (mlp.gate_proj, up_proj, down_proj)")
    return mlps


@torch.inference_mode()
def mlp_channel_importance(model, tokenizer, texts: list[str] | tuple[str, ...] = DEFAULT_CALIBRATION,
                           max_length: int = 512) -> list[torch.Tensor]:
    """Per layer ``(I,)``: how much each intermediate channel j adds to the layer's output on the calibration texts,

        S_j = E_t |h_t,j| * ||W_down[:, j]||_2          (h_t = act(gate(x_t)) * up(x_t), the down projection's input)

    the mean activation magnitude of Minitron (Muralidharan et al. 2024, https://arxiv.org/abs/2407.14679) times the
    norm of the column it is written out through (a channel whose column is zero adds nothing, whatever it computes)."""
    mlps = gated_mlps(model)
    sums = [torch.zeros(m.down_proj.in_features, dtype=torch.float64) for m in mlps]

    def add_magnitude(index):
        def hook(module, args):
            sums[index] += args[0].detach().abs().double().reshape(-1, args[0].shape[-1]).sum(0).cpu()
        return hook

    handles = [m.down_proj.register_forward_pre_hook(add_magnitude(i)) for i, m in enumerate(mlps)]
    tokens = _calibrate(model, tokenizer, texts, max_length, handles, "MLP channel importance")
    return [(total / tokens) * m.down_proj.weight.detach().double().norm(dim=0).cpu() for total, m in zip(sums, mlps)]


def prune_mlp_channels(model, keep: list[torch.Tensor]):
    """Keep only intermediate channels ``keep[i]`` (sorted indices, the same count in every layer) of each layer's
    MLP, in place: gate/up rows and down columns copied bit for bit; ``config.intermediate_size`` shrinks."""
    sizes = {len(k) for k in keep}
    if len(sizes) != 1:
        raise ConfigError("width pruning keeps the same number of channels in every layer (one intermediate_size)")
    for mlp, channels in zip(gated_mlps(model), keep):
        for name in ("gate_proj", "up_proj"):
            linear = getattr(mlp, name)
            linear.weight = torch.nn.Parameter(linear.weight.detach()[channels].clone())
            if linear.bias is not None:
                linear.bias = torch.nn.Parameter(linear.bias.detach()[channels].clone())
            linear.out_features = len(channels)
        mlp.down_proj.weight = torch.nn.Parameter(mlp.down_proj.weight.detach()[:, channels].clone())
        mlp.down_proj.in_features = len(channels)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(channels)
    model.config.intermediate_size = sizes.pop()
    return model


def choose_layers(n_layers: int, keep_layers: int | None = None, layers: list[int] | None = None,
                  select: str = "block-influence", influence: list[float] | None = None,
                  every: int | None = None) -> list[int]:
    """The sorted indices of the layers to keep: ``layers`` as given, every ``every``-th layer from layer 0 (0, k,
    2k, ...: DistilBERT's initialisation, Sanh et al. 2019), or ``keep_layers`` of them by ``select``."""
    if layers is not None:
        keep = sorted(set(layers))
        if not keep or keep[0] < 0 or keep[-1] >= n_layers:
            raise ConfigError(f"layers {layers}: expected indices in 0..{n_layers - 1} (the model has {n_layers} "
                              "layers)")
        return keep
    if every is not None:
        if every < 1:
            raise ConfigError(f"every={every}: expected a step of at least 1")
        return list(range(0, n_layers, every))
    if keep_layers is None or not 1 <= keep_layers <= n_layers:
        raise ConfigError(f"keep_layers={keep_layers}: expected 1..{n_layers} (the model has {n_layers} layers)")
    drop = n_layers - keep_layers
    if select == "deep-block":  # layers 0 .. keep-2, then the last one
        return list(range(keep_layers)) if drop == 0 or keep_layers == 1 else \
            list(range(keep_layers - 1)) + [n_layers - 1]
    if select == "block-influence":
        if influence is None or len(influence) != n_layers:
            raise ConfigError("select=block-influence needs one influence score per layer")
        dropped = sorted(range(n_layers), key=lambda i: (influence[i], i))[:drop]
        return [i for i in range(n_layers) if i not in dropped]
    raise ConfigError(f"select={select!r}: expected one of {', '.join(SELECTIONS)}")


def prune_layers(model, keep: list[int]):
    """Keep only decoder layers ``keep`` (in place) and update the config to match; returns the model."""
    layers = decoder_layers(model)
    n_layers = len(layers)
    model.get_decoder().layers = torch.nn.ModuleList(layers[i] for i in keep)
    for new_index, layer in enumerate(model.get_decoder().layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = model.config
    for name in PER_LAYER_CONFIG:
        values = getattr(config, name, None)
        if isinstance(values, (list, tuple)) and len(values) == n_layers:
            setattr(config, name, [values[i] for i in keep])
    config.num_hidden_layers = len(keep)
    return model


def parse_layers(text: str | None) -> list[int] | None:
    """``"0,1,2"`` -> ``[0, 1, 2]``; None stays None."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--layers {text!r}: expected comma-separated layer indices, e.g. 0,1,2,29") from None


def read_calibration(path: str | Path, rows: int) -> list[str]:
    """Texts from a JSONL file: ``text``, else ``prompt`` + ``completion``, else the ``messages``' contents."""
    texts = []
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"calibration file {path} does not exist")
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if len(texts) >= rows:
            break
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number}: invalid JSON: {exc.msg}") from None
        if "text" in row:
            texts.append(str(row["text"]))
        elif "prompt" in row:
            texts.append(f"{row['prompt']}{row.get('completion', '')}")
        elif "messages" in row:
            texts.append("\n".join(str(m.get("content", "")) for m in row["messages"]))
        else:
            raise ConfigError(f"{path}:{number}: expected a text, prompt/completion or messages column")
    return texts


def check_request(keep_layers, layers, every, mlp_keep) -> bool:
    """One-line errors for a request that prunes nothing or keeps an impossible fraction; whether it prunes depth."""
    depth = keep_layers is not None or layers is not None or every is not None
    if not depth and mlp_keep is None:
        raise ConfigError("nothing to prune: give a number of layers to keep, their indices, or mlp_keep")
    if mlp_keep is not None and not 0 < mlp_keep <= 1:
        raise ConfigError(f"mlp_keep={mlp_keep}: expected the fraction of MLP channels to keep, in (0, 1]")
    return depth


def prune_in_memory(model, tokenizer, keep_layers: int | None = None, layers: list[int] | None = None,
                    select: str = "block-influence", calibration: str | Path | None = None,
                    calibration_rows: int = 64, every: int | None = None, mlp_keep: float | None = None) -> dict:
    """Drop decoder layers (``keep_layers`` / ``layers`` / ``every``) and/or MLP channels (``mlp_keep``: the fraction
    of intermediate channels kept in each layer, by ``mlp_channel_importance``) of a loaded ``model``, in place,
    measuring on the calibration texts what needs measuring; returns what was kept and the parameter counts."""
    depth = check_request(keep_layers, layers, every, mlp_keep)
    texts = None
    if (depth and layers is None and every is None and select == "block-influence") or mlp_keep is not None:
        texts = read_calibration(calibration, calibration_rows) if calibration else list(DEFAULT_CALIBRATION)
    n_layers, params_before = len(decoder_layers(model)), sum(p.numel() for p in model.parameters())
    was_training = model.training
    report: dict = {"layers_before": n_layers}
    if depth:
        influence = None
        if layers is None and every is None and select == "block-influence":
            influence = block_influence(model.eval(), tokenizer, texts)
        keep = choose_layers(n_layers, keep_layers, layers, select, influence, every)
        prune_layers(model, keep)
        report.update(kept_layers=keep, dropped_layers=[i for i in range(n_layers) if i not in keep],
                      select="explicit" if layers is not None else f"every {every}" if every is not None else select,
                      block_influence=influence)
    if mlp_keep is not None:
        size = model.config.intermediate_size
        if not isinstance(size, int):
            raise ConfigError(f"intermediate_size {size!r}: width pruning needs one size for every layer")
        importance = mlp_channel_importance(model.eval(), tokenizer, texts)
        n_keep = max(1, round(mlp_keep * size))
        channels = [scores.topk(n_keep).indices.sort().values for scores in importance]
        prune_mlp_channels(model, channels)
        report.update(mlp_keep=mlp_keep, intermediate_size_before=size, intermediate_size=n_keep,
                      mlp_kept_channels=[c.tolist() for c in channels])
    model.train(was_training)
    report.update(calibration=str(calibration) if calibration else ("built-in" if texts else None),
                  parameters_before=params_before, parameters_after=sum(p.numel() for p in model.parameters()))
    return report


def prune_model(model_spec: str, out: str | Path, keep_layers: int | None = None, layers: list[int] | None = None,
                select: str = "block-influence", calibration: str | Path | None = None, calibration_rows: int = 64,
                device: str = "cpu", mlp_keep: float | None = None) -> dict:
    """Load ``model_spec``, drop some of its decoder layers and/or MLP channels, save a plain Hugging Face folder at
    ``out``; returns what was kept, the influence scores when measured, and parameter counts, also written (with
    every layer's kept MLP channels) as ``out/pruning.json``."""
    check_request(keep_layers, layers, None, mlp_keep)  # before the load
    model, tokenizer = load_model(model_spec, "float32", device)
    report = {"model": model_spec, **prune_in_memory(model, tokenizer, keep_layers, layers, select, calibration,
                                                     calibration_rows, mlp_keep=mlp_keep)}
    save_model(model, tokenizer, out)
    report["disk_bytes"] = sum(f.stat().st_size for f in Path(out).glob("*.safetensors"))
    (Path(out) / "pruning.json").write_text(json.dumps(report, indent=2) + "\n")
    if "mlp_kept_channels" in report:  # thousands of indices: in pruning.json only
        report["mlp_kept_channels"] = "see pruning.json"
    log.warning("pruned %s -> %s: %d -> %d parameters", model_spec, out, report["parameters_before"],
                report["parameters_after"])
    return report
