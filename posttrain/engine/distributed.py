"""Data-parallel training across processes started by torchrun (docs/distributed.md).

Every process (rank) holds the whole model. An optimizer step's global step batch (``batch_size`` x
``grad_accum_steps`` x world size examples) is the one a single process would take; each rank takes a disjoint,
contiguous share of it in length order (``rank_share``), so the ranks' shares laid end to end are exactly that single
process's examples in its order. The engine then all-reduces what crosses ranks:

- the step's item count (the normaliser of every micro-batch's summed loss), before any backward;
- the gradients, summed once per step after the last micro-batch (``all_reduce_gradients``), before clipping;
- the step's loss, metric sums and token count, so logged values are the global batch's.

So N processes x micro-batch b take the same steps as 1 process x N b (tests/distributed prove it to 1e-5).

Why not ``torch.nn.parallel.DistributedDataParallel``: its reducer synchronises in autograd hooks fired by
``model(...)`` through the wrapper; posttrain's forward calls the decoder and the output head separately and writes
the head's and the embedding's gradients straight into ``.grad`` (``posttrain.models.forward``), which no such hook
sees. One bucketed all-reduce of the gradients per optimizer step is what DDP with ``no_sync`` on every micro-batch but
the last does, without the overlap with backward.

Every function here is a no-op (or the identity) in a single process, so one process runs exactly as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from posttrain.errors import ConfigError, PosttrainError

log = logging.getLogger(__name__)
_FAILURE_KEY = "posttrain/failure"  # the first failing rank's message, in the process group's store
_BUCKET_BYTES = 25 * 2**20  # DDP's default bucket size


class CollectiveError(PosttrainError):
    """A collective did not complete: another rank failed (its message is named) or did not arrive in time."""


def launched() -> bool:
    """True in a process that torchrun started with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(backend: str = "auto", timeout_s: float = 600.0, device: str | torch.device = "auto") -> None:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT); nothing in a single process, or when already joined. On CUDA each rank takes GPU LOCAL_RANK, so a
    model loaded on "cuda" lands on its own GPU. ``backend`` auto: nccl on CUDA, gloo on CPU."""
    if not launched() or dist.is_initialized():
        return
    missing = [name for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: launch with "
                          "torchrun --nproc_per_node N -m posttrain train CONFIG (docs/distributed.md)")
    device_type = torch.device(device).type if str(device) != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    if backend == "auto":
        backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    log.warning("rank %d of %d (%s backend, %s)", rank(), world_size(), backend, device_type)
    if not is_main():  # the same warnings N times are noise: rank 0 speaks for the run, the others only on errors
        logging.getLogger("posttrain").setLevel(logging.ERROR)


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0: the one process that writes the run's files (logs, evaluation, checkpoints, final/)."""
    return rank() == 0


def rank_share(indices: list[int], lengths: list[int]) -> list[int]:
    """This rank's part of a global step batch: the examples in length order (stable, as ``split_micro_batches``
    orders them), cut into world-size contiguous parts whose sizes differ by at most one."""
    n = world_size()
    if n == 1:
        return indices
    ordered = sorted(indices, key=lambda i: lengths[i])
    base, extra = divmod(len(ordered), n)
    start = rank() * base + min(rank(), extra)
    return ordered[start : start + base + (rank() < extra)]


# ------------------------------------------------------------------------------------------------ collectives
def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sums over ranks, in float64."""
    if world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    _collective("all_reduce", dist.all_reduce, tensor)
    return tensor.tolist()


def gather_objects(value) -> list:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` in one process."""
    if world_size() == 1:
        return [value]
    gathered = [None] * world_size()
    _collective("all_gather_object", dist.all_gather_object, gathered, value)
    return gathered


def gather_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (any first dimension), in rank order, on this tensor's device; ``[tensor]`` itself in
    one process."""
    if world_size() == 1:
        return [tensor]
    return [part.to(tensor.device) for part in gather_objects(tensor.detach().cpu())]


def sum_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each name's sum over ranks (a name a rank lacks counts 0 there); ``values`` itself in one process."""
    if world_size() == 1:
        return values
    ranks = gather_objects(values)
    return {name: sum(r.get(name, 0.0) for r in ranks) for name in sorted({name for r in ranks for name in r})}


def step_figures(loss: float, metrics: dict[str, float], step_metrics: dict[str, float], tokens: int):
    """An optimizer step's logged figures over all ranks: ``(loss, metrics, tokens)`` with the loss, the metric sums
    (each rank's already divided by the global item count) and the tokens summed, and the method's per-step scalars
    (``step_metrics``) averaged, which is exact for means when the ranks hold equally many items. In one process:
    the figures themselves, ``step_metrics`` merged into ``metrics``."""
    if world_size() == 1:
        return loss, {**metrics, **step_metrics}, tokens
    ranks = gather_objects((loss, metrics, step_metrics, tokens))
    merged = {name: sum(m.get(name, 0.0) for _, m, _, _ in ranks)
              for name in sorted({name for _, m, _, _ in ranks for name in m})}
    for name in sorted({name for _, _, s, _ in ranks for name in s}):
        values = [s[name] for _, _, s, _ in ranks if name in s]
        merged[name] = sum(values) / len(values)
    return sum(r[0] for r in ranks), merged, sum(r[3] for r in ranks)


def items_before_rank(count: int) -> int:
    """The number of items the ranks before this one hold: where this rank's share starts in the global batch."""
    if world_size() == 1:
        return 0
    return sum(gather_objects(count)[: rank()])


def broadcast_object(value):
    """Rank 0's ``value`` on every rank."""
    if world_size() == 1:
        return value
    box = [value]
    _collective("broadcast_object_list", dist.broadcast_object_list, box, 0)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        _collective("barrier", dist.barrier)


@torch.no_grad()
def broadcast_parameters(model) -> None:
    """Every rank starts from rank 0's weights (as DDP does when it wraps a model)."""
    if world_size() == 1:
        return
    for tensors in _buckets([p.data for p in model.parameters()]):
        flat = torch._utils._flatten_dense_tensors(tensors)
        _collective("broadcast of the initial weights", dist.broadcast, flat, 0)
        for tensor, synced in zip(tensors, torch._utils._unflatten_dense_tensors(flat, tensors)):
            tensor.copy_(synced)


@torch.no_grad()
def all_reduce_gradients(model) -> None:
    """Sum every trainable parameter's gradient over ranks (under LoRA: the adapters only), in buckets. A parameter
    with a gradient on some rank but not on this one gets zeros first; one without a gradient anywhere keeps None
    (AdamW then skips it, as a single process would)."""
    if world_size() == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=_collective_device())
    _collective("all_reduce of which parameters have gradients", dist.all_reduce, has_grad)
    grads = []
    for param, anywhere in zip(params, has_grad.tolist()):
        if anywhere:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            grads.append(param.grad)
    for tensors in _buckets(grads):
        flat = torch._utils._flatten_dense_tensors(tensors)
        _collective("all_reduce of the gradients", dist.all_reduce, flat)
        for tensor, synced in zip(tensors, torch._utils._unflatten_dense_tensors(flat, tensors)):
            tensor.copy_(synced)


def _buckets(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive tensors of one dtype and device, up to ~25 MB per bucket (one collective each)."""
    buckets, size = [], 0
    for tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if not buckets or size + nbytes > _BUCKET_BYTES or (buckets[-1][0].dtype, buckets[-1][0].device) != (
                tensor.dtype, tensor.device):
            buckets.append([])
            size = 0
        buckets[-1].append(tensor)
        size += nbytes
    return buckets


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ------------------------------------------------------------------------------------------------- failures
def record_failure(exc: BaseException) -> None:
    """Leave this rank's error in the process group's store before the process ends, so that the ranks waiting for
    it in a collective stop with its message (``CollectiveError``) instead of a bare connection error."""
    if world_size() == 1 or isinstance(exc, CollectiveError) or getattr(exc, "_posttrain_recorded", False):
        return
    exc._posttrain_recorded = True  # the engine and api.train both record; the first one counts
    message = f"rank {rank()} failed: {type(exc).__name__}: {exc}"
    log.error("%s", message)
    with contextlib.suppress(Exception):  # the store may be gone already; the message is in this rank's log anyway
        dist.distributed_c10d._get_default_store().compare_set(_FAILURE_KEY, "", message)


def _recorded_failure() -> str | None:
    with contextlib.suppress(Exception):
        store = dist.distributed_c10d._get_default_store()
        if store.check([_FAILURE_KEY]):
            return store.get(_FAILURE_KEY).decode()
    return None


def _collective(what: str, function, *args):
    """Run a collective; if it fails (a peer's process ended, or the timeout passed), raise a ``CollectiveError``
    naming the rank that failed and its message, when that rank left one."""
    try:
        return function(*args)
    except Exception as exc:  # gloo: RuntimeError; nccl: DistBackendError
        failure = _recorded_failure()
        here = f"(rank {rank()} stopped in {what})"
        if failure:
            raise CollectiveError(f"{failure} {here}") from exc
        raise CollectiveError(f"another rank stopped or did not arrive within the collective timeout "
                              f"(distributed.timeout_s) {here}: {exc}") from exc


# --------------------------------------------------------------------------------------------------- launch
def torchrun_command(nproc: int, posttrain_args: list[str]) -> list[str]:
    """The command line that runs ``posttrain <posttrain_args>`` in ``nproc`` processes on this machine (torchrun's
    standalone rendezvous: a free local port, no MASTER_ADDR to set)."""
    import sys

    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: expected a number of processes >= 1")
    if launched():
        raise ConfigError("--nproc inside a torchrun launch: drop --nproc (torchrun already started the processes)")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "posttrain", *posttrain_args]
