"""Sharded data parallelism: ``distributed.strategy: fsdp`` (FSDP2, ``torch.distributed.fsdp.fully_shard``).

Each decoder layer is one FSDP unit and the model's root (input embedding, final norm, output head: tied in SmolLM2)
another. Each rank keeps 1/N of every parameter, its gradient and its AdamW moments; a unit's full weights exist only
while it runs (all-gathered before, freed after), and its gradient is reduce-scattered after backward.

posttrain's forward does not call the model's own ``forward`` (``posttrain.models.forward``: the decoder, then the
chunked log-prob kernel on the head's weight), so FSDP's root hooks would never gather the embedding and the head.
The root therefore gets the whole log-prob computation as an FSDP forward method (``register_fsdp_forward_method``):
FSDP gathers the root's parameters around it, and after backward reduce-scatters the gradients that the kernels add
straight into ``.grad``. Gradients are reduce-scattered as sums, not means: the engine's loss is already divided by the
global item count (docs/distributed.md), so the summed shards are the single-process gradient.

Sampling (GRPO's rollouts, greedy evaluation) runs inside ``full_weights``: every unit gathered once, for the whole
loop, since each rank decodes a different number of tokens.

Checkpoints: the weights and AdamW moments go through ``torch.distributed.checkpoint`` (DCP: each rank writes its
shards into ``sharded/``), the rest as in every checkpoint (``posttrain.engine.checkpoint``); DCP reshards on load, so
a checkpoint resumes in any number of processes, one included. ``final/`` is consolidated: at the end of training the
model is gathered back into plain full tensors (``unshard_model``) and saved as in a single process.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from pathlib import Path

import torch

from posttrain.engine import distributed
from posttrain.errors import ConfigError
from posttrain.models.forward import SHARDED_FORWARD, causal_lm

SHARDED_DIR = "sharded"  # a checkpoint's DCP folder (its presence marks a sharded checkpoint)
_GROUPS_FILE = "optimizer_groups.json"  # AdamW's parameter groups (learning rates), which DCP does not hold


def check(model, method, save_best: bool) -> None:
    """What FSDP does not run yet, refused before training with the setting to change."""
    name = type(method).__name__
    if not getattr(method, "fsdp", False):
        raise ConfigError(f"distributed.strategy=fsdp: {name} is not tested under FSDP yet (SFT, DPO, KTO, the reward "
                          "model, GRPO, RLOO, REINFORCE, PPO, online DPO, distill, GKD and classify are); use "
                          "distributed.strategy=ddp")
    if save_best:
        raise ConfigError("distributed.strategy=fsdp does not write best/ yet: set save_best=false (final/ and the "
                          "checkpoints are written)")
    if not _language_models(model):
        raise ConfigError(f"distributed.strategy=fsdp: {type(causal_lm(model)).__name__} holds no transformers model "
                          "to shard")
    for lm in _language_models(model):
        if getattr(lm, "is_loaded_in_4bit", False) or getattr(lm, "is_loaded_in_8bit", False):
            raise ConfigError("distributed.strategy=fsdp does not shard quantized weights: set quantization to none, "
                              "or use distributed.strategy=ddp")
        if not hasattr(lm.get_decoder(), "layers"):
            raise ConfigError(f"distributed.strategy=fsdp: {type(lm).__name__} has no decoder.layers to shard")


def _language_models(model) -> list:
    """The transformers models in the engine's model: the model itself, or those it holds (PPO's policy and value
    model, beside a value head)."""
    top = causal_lm(model)
    if hasattr(top, "get_decoder"):
        return [top]
    return [causal_lm(child) for child in top.children() if hasattr(causal_lm(child), "get_decoder")]


def shard_model(model, autocast_dtype: torch.dtype | None) -> None:
    """``fully_shard`` each decoder layer, then the root (for PPO: the policy's and the value model's layers, then
    the module holding both, whose unit takes their embeddings, norms and heads and the value head); gradients summed
    over ranks; ``as_root_forward`` (the log-prob and score computations) registered as the root's forward method,
    also for the models inside it. On CUDA with bf16 autocast, FSDP gathers bf16 weights and reduces fp32 gradients
    (``MixedPrecisionPolicy``); on CPU everything stays fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
    from torch.utils._pytree import tree_map_only

    lm, parts = causal_lm(model), _language_models(model)
    device = next(lm.parameters()).device
    mesh = init_device_mesh(device.type, (distributed.world_size(),))
    policy = MixedPrecisionPolicy()
    if device.type == "cuda" and autocast_dtype is not None:
        policy = MixedPrecisionPolicy(param_dtype=autocast_dtype, reduce_dtype=torch.float32)
    for part in parts:
        for layer in part.get_decoder().layers:
            fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(lm, mesh=mesh, mp_policy=policy)
    for module in lm.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # a sum: each rank's loss is already over the global count
            module.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM

    def root_forward(function, *args):  # posttrain.models.forward.as_root_forward: gathered around by FSDP's hooks
        # FSDP attaches its pre-backward hook to the outputs, which an in-place op on a view would drop (it warns on
        # views): the few (B, T) outputs that are views (unpacked log-probs, squeezed scores) are copied
        return tree_map_only(torch.Tensor, lambda t: t.clone() if t._is_view() else t, function(*args))

    lm.__dict__[SHARDED_FORWARD] = root_forward
    register_fsdp_forward_method(lm, SHARDED_FORWARD)
    for part in parts:  # as_root_forward on the policy (a sampler, a LoRA reference) gathers the root too
        part.__dict__[SHARDED_FORWARD] = lm.__dict__[SHARDED_FORWARD]


def is_sharded(model) -> bool:
    return SHARDED_FORWARD in causal_lm(model).__dict__


@contextlib.contextmanager
def full_weights(model):
    """Every unit's full weights on every rank for the duration (sampling, greedy evaluation), freed after; nothing
    on a model that is not sharded. Generation runs a different number of forward passes on each rank (completions
    end at different lengths), so it must not gather per pass: each unit is all-gathered once here (``unshard``, the
    same collectives on every rank, in module order), and forwards meanwhile neither gather nor free
    (``set_reshard_after_forward(False)``: the generic decoder calls the modules' own forwards; the Llama fast path
    reads the gathered weights directly). Costs the whole model's weights per rank while it lasts."""
    if not is_sharded(model):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    root = causal_lm(model).__dict__[SHARDED_FORWARD].__self__  # the module whose unit holds the embedding and head
    modules = [root, *(m for m in causal_lm(model).modules() if isinstance(m, FSDPModule) and m is not root)]
    for module in modules:
        module.set_reshard_after_forward(False, recurse=False)
        module.unshard()
    try:
        yield
    finally:
        for module in modules:
            module.reshard()
            # FSDP's defaults: a layer frees its weights after forward, the root keeps them until backward
            module.set_reshard_after_forward(module is not root, recurse=False)


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (a collective), any other tensor itself: e.g. the gradient norm clipping returns."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


@torch.no_grad()
def unshard_model(model) -> None:
    """Turn a sharded model back into a plain one in place, every rank holding the full weights (a collective): what
    the trainer saves as ``final/``, evaluates and generates with after training. The FSDP hooks are removed and each
    module gets its original class back; tied parameters stay tied."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    lm = causal_lm(model)
    modules = [m for m in lm.modules() if isinstance(m, FSDPModule)]
    for module in modules:
        module.reshard()  # the root may still hold gathered weights from an evaluation; DTensors everywhere now
    full: dict[int, torch.nn.Parameter] = {}
    for module in lm.modules():
        for name, param in list(module._parameters.items()):
            if isinstance(param, DTensor):
                if id(param) not in full:
                    full[id(param)] = torch.nn.Parameter(param.full_tensor(), requires_grad=param.requires_grad)
                module._parameters[name] = full[id(param)]
    for module in modules:
        state = module._get_fsdp_state()
        state._pre_forward_hook_handle.remove()
        state._post_forward_hook_handle.remove()
        for group in state._fsdp_param_groups:  # state_dict hooks that would reshard: nothing left to reshard
            for handle in (*group._module_to_pre_save_state_dict_hook_handle.values(),
                           *group._module_to_pre_load_state_dict_hook_handle.values()):
                handle.remove()
        module.__class__ = next(c for c in type(module).__mro__[1:] if not issubclass(c, FSDPModule))
    for part in (lm, *_language_models(model)):
        part.__dict__.pop(SHARDED_FORWARD, None)


def missing_passes(passes: int) -> int:
    """How many forward passes this rank must add to match the rank with the most: FSDP all-gathers a unit's
    weights in each pass, so every rank must run as many (else the others wait until the collective timeout)."""
    return max(distributed.gather_objects(passes)) - passes


# ---------------------------------------------------------------------------------------------------- checkpoints
def _model_state(model) -> dict[str, torch.Tensor]:
    """The weights by name: shards (DTensors) when sharded, else the full tensors, sharing storage with the model
    (DCP loads into them in place)."""
    return dict(causal_lm(model).state_dict())


def _optimizer_state(optimizer) -> dict[str, torch.Tensor]:
    """AdamW's state tensors by ``<parameter index>.<name>``: the same keys in any number of processes, since every
    process builds the same parameter groups in the same order. The tensors are the optimizer's own."""
    return {f"{index}.{name}": value for index, state in optimizer.state_dict()["state"].items()
            for name, value in state.items() if isinstance(value, torch.Tensor)}


def write_shards(staging: Path, model, optimizer) -> None:
    """Every rank writes its shards of the weights and AdamW moments into ``staging`` (DCP), and rank 0 the
    parameter groups; the caller moves ``staging`` into the checkpoint it writes atomically."""
    import torch.distributed.checkpoint as dcp

    if distributed.is_main() and staging.exists():
        shutil.rmtree(staging)
    distributed.barrier()
    dcp.save({"model": _model_state(model), "optimizer": _optimizer_state(optimizer)}, checkpoint_id=str(staging))
    if distributed.is_main():
        groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.state_dict()["param_groups"]]
        (staging / _GROUPS_FILE).write_text(json.dumps(groups))
    distributed.barrier()


def read_shards(directory: Path, model, optimizer) -> None:
    """Load a sharded checkpoint's weights and AdamW state into this run's, resharded to its number of processes
    (in one process: the full tensors). The optimizer's state must exist (``preallocate_training_state``)."""
    import torch.distributed.checkpoint as dcp

    sharded = directory / SHARDED_DIR
    optimizer_state = _optimizer_state(optimizer)
    if not optimizer_state:
        raise ConfigError(f"{directory}: resuming a sharded checkpoint needs AdamW's state created before loading")
    with warnings.catch_warnings():  # in one process DCP warns that it loads without a process group: intended
        warnings.simplefilter("ignore", UserWarning)
        dcp.load({"model": _model_state(model), "optimizer": optimizer_state}, checkpoint_id=str(sharded),
                 no_dist=distributed.world_size() == 1)
    saved_groups = json.loads((sharded / _GROUPS_FILE).read_text())
    current = optimizer.state_dict()
    for group, saved in zip(current["param_groups"], saved_groups):
        group.update({k: v for k, v in saved.items() if k != "params"})
    optimizer.load_state_dict(current)


@torch.no_grad()
def read_full_checkpoint(directory: Path, model, optimizer) -> None:
    """Load a single-process checkpoint (full tensors in safetensors) into a sharded model and its AdamW: each rank
    keeps its own shard of every tensor."""
    from safetensors.torch import load_file
    from torch.distributed.tensor import DTensor, distribute_tensor

    from posttrain.engine.checkpoint import unflatten_tensors

    def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if not isinstance(like, DTensor):
            return full.to(like.device, like.dtype)
        return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements,
                                 src_data_rank=None)  # every rank holds the full tensor: no communication

    lm = causal_lm(model)
    if not hasattr(lm, "config"):  # PPO's policy and critic: saved as separate files
        raise ConfigError(f"resume_from={directory}: a single-process {type(lm).__name__} checkpoint does not resume "
                          "under distributed.strategy=fsdp yet; resume it with distributed.strategy=ddp")
    if not (directory / "model.safetensors").is_file():  # a LoRA adapter: peft's names, not the sharded model's
        raise ConfigError(f"resume_from={directory}: a single-process LoRA checkpoint does not resume under "
                          "distributed.strategy=fsdp yet; resume it with distributed.strategy=ddp")
    weights = load_file(directory / "model.safetensors")
    tied = {"lm_head.weight"} if lm.config.tie_word_embeddings else set()  # saved once, as the embedding
    missing = [name for name in lm.state_dict() if name not in weights and name not in tied]
    if missing or set(weights) - set(lm.state_dict()):
        raise ConfigError(f"checkpoint {directory} does not match the model: missing {missing}, unexpected "
                          f"{sorted(set(weights) - set(lm.state_dict()))}")
    for name, param in lm.state_dict().items():
        if name in weights:
            param.copy_(shard_like(weights[name], param))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved = unflatten_tensors(load_file(directory / "optimizer.safetensors"),
                              json.loads((directory / "optimizer.json").read_text()))
    saved["state"] = {index: {name: shard_like(value, params[int(index)]) if value.dim() else value
                              for name, value in state.items()} for index, state in saved["state"].items()}
    optimizer.load_state_dict(saved)
