"""Token log-probabilities, entropy and masked statistics.

Notation (docs/notation.md): ``hidden`` is the decoder's last hidden state ``h_t`` of shape ``(N, H)``,
``weight`` the output projection ``W`` of shape ``(V, H)``, ``targets`` the next-token ids ``y_t``.

    logits_t = W h_t (+ b)
    logp_t   = logits_t[y_t] - logsumexp(logits_t)                      (log pi(y_t | y_<t))
    H_t      = logsumexp(logits_t) - sum_v softmax(logits_t)_v logits_t,v   (entropy, nats)

A naive implementation materialises ``(B, T, V)`` logits (for SmolLM2: 8 x 256 x 49152 floats = 400 MB, and the same
again for their gradient). Here the vocabulary projection runs over chunks of rows and only at positions that carry
loss; the backward pass recomputes each chunk's logits instead of storing them (the Liger-kernel / "cut
cross-entropy" idea: Wijmans et al. 2024, https://arxiv.org/abs/2411.09009).

Training can also ask for the weight gradient to be added straight into ``weight.grad`` (``accumulate_grad_in_place``)
instead of being returned to autograd. For a full-vocabulary head that saves a ``(V, H)`` temporary (113 MB for
SmolLM2), and for a head tied to the input embedding it saves two: autograd would otherwise hold the head's gradient
until the embedding's backward, at the very end of the pass, and only then sum the two into ``.grad``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

# Rows per logits chunk (1024 x 49152 fp32 logits: 200 MB). Smaller chunks are slower, since each adds a pass over the
# (V, H) weight gradient (docs/benchmarks.md), and micro-batches of one sequence fit in a single chunk either way.
DEFAULT_CHUNK_SIZE = 1024


class TokenLogps(NamedTuple):
    logps: torch.Tensor  # log pi(y_t | y_<t), float32
    entropy: torch.Tensor | None  # H_t in nats, when asked for
    is_argmax: torch.Tensor  # bool: y_t is the model's most likely token


class _ChunkedTokenLogps(torch.autograd.Function):
    """log pi(y|h) for rows of ``hidden``, chunk by chunk, without keeping logits for backward.

    Backward uses d logp_t / d logits_t = onehot(y_t) - softmax(logits_t). Its products run in the dtype of the
    forward's (``_matmul_dtype``: bf16 under bf16 autocast, although backward runs outside autocast); the softmax
    statistics are always in >= fp32.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size, with_entropy, accumulate_grad_in_place):
        n = hidden.shape[0]
        matmul_dtype = _matmul_dtype(hidden)
        projection = weight.to(matmul_dtype)
        dtype = _upcast_dtype(hidden.dtype)
        logps = hidden.new_empty(n, dtype=dtype)
        entropy = hidden.new_empty(n, dtype=dtype) if with_entropy else hidden.new_empty(0)
        lse_all = hidden.new_empty(n, dtype=dtype)
        is_argmax = torch.empty(n, dtype=torch.bool, device=hidden.device)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            logits = _upcast(_project(hidden[start:stop].to(matmul_dtype), projection, bias))  # (n_chunk, V)
            target_logits = logits.gather(-1, targets[start:stop, None]).squeeze(-1)
            is_argmax[start:stop] = logits.argmax(-1) == targets[start:stop]
            if with_entropy:
                lse = torch.logsumexp(logits, dim=-1)
                probs = torch.softmax(logits, dim=-1)
                entropy[start:stop] = lse - (probs * logits).sum(-1)
            else:
                lse = _logsumexp_(logits)  # logits are not needed after this
            lse_all[start:stop] = lse
            logps[start:stop] = target_logits - lse
        ctx.save_for_backward(hidden, weight, bias if bias is not None else hidden.new_empty(0), targets, lse_all)
        ctx.has_bias = bias is not None
        ctx.chunk_size, ctx.matmul_dtype = chunk_size, matmul_dtype
        # Only a leaf parameter in its accumulation dtype can take its gradient in place (see the module docstring).
        in_place = accumulate_grad_in_place and weight.is_leaf and weight.dtype == _upcast_dtype(weight.dtype)
        ctx.grad_owner = weight if in_place else None
        ctx.mark_non_differentiable(entropy, is_argmax)
        return logps, entropy, is_argmax

    @staticmethod
    def backward(ctx, grad_logps, _grad_entropy, _grad_is_argmax):
        hidden, weight, bias, targets, lse_all = ctx.saved_tensors
        bias = bias if ctx.has_bias else None
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad_hidden = torch.empty_like(hidden) if need_h else None
        acc_dtype = _upcast_dtype(weight.dtype)  # accumulate weight gradients over chunks in >= fp32
        if need_w and ctx.grad_owner is not None:
            grad_weight = grad_buffer(ctx.grad_owner)  # added into .grad directly; autograd gets None below
        else:
            grad_weight = torch.zeros_like(weight, dtype=acc_dtype) if need_w else None
        grad_bias = torch.zeros(weight.shape[0], dtype=acc_dtype, device=weight.device) if need_b else None
        matmul_dtype = ctx.matmul_dtype
        projection = weight.to(matmul_dtype)
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            stop = min(start + ctx.chunk_size, hidden.shape[0])
            h = hidden[start:stop].to(matmul_dtype)
            logits = _upcast(_project(h, projection, bias))
            # d loss / d logits = g * (onehot - softmax), computed in place to keep one (n_chunk, V) buffer
            grad_logits = torch.exp_(logits.sub_(lse_all[start:stop, None])).neg_()
            grad_logits.scatter_add_(-1, targets[start:stop, None], torch.ones_like(grad_logits[:, :1]))
            grad_logits.mul_(grad_logps[start:stop, None].to(grad_logits.dtype))
            grad_logits = grad_logits.to(matmul_dtype)
            if need_h:
                grad_hidden[start:stop] = grad_logits @ projection
            if need_w:  # summed over chunks in >= fp32
                if matmul_dtype == acc_dtype:
                    grad_weight.addmm_(grad_logits.t(), h)
                else:
                    grad_weight += grad_logits.t() @ h
            if need_b:
                grad_bias += grad_logits.to(acc_dtype).sum(0)
        if need_w:
            grad_weight = None if ctx.grad_owner is not None else grad_weight.to(weight.dtype)
        if need_b:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def grad_buffer(param: torch.Tensor) -> torch.Tensor:
    """``param.grad``, created as zeros on first use, for backward functions that add their gradient into it in place
    (what autograd's own accumulation would do, without the full-size temporary)."""
    if param.grad is None:
        param.grad = torch.zeros_like(param)
    return param.grad


def _upcast_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax statistics need at least fp32: bf16 logsumexp over 49k logits loses about 2 digits."""
    return torch.promote_types(dtype, torch.float32)


def _logsumexp_(logits: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last dim, overwriting ``logits``: ``torch.logsumexp`` makes two temporaries the size of its
    input (``x - max`` and its ``exp``), 100 MB for a 256-row chunk of a 49k vocabulary."""
    maxes = logits.amax(dim=-1, keepdim=True)
    return logits.sub_(maxes).exp_().sum(-1).log_().add_(maxes.squeeze(-1))


def _matmul_dtype(hidden: torch.Tensor) -> torch.dtype:
    """What the head's products run in: autocast's dtype inside autocast, else the hidden states' own."""
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.to(_upcast_dtype(x.dtype))


def _project(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    logits = hidden @ weight.to(hidden.dtype).t()
    return logits + bias.to(logits.dtype) if bias is not None else logits


def chunked_token_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    with_entropy: bool = False,
    accumulate_grad_in_place: bool = False,
) -> TokenLogps:
    """Per-row log pi(y_t | h_t) (and entropy H_t) from hidden states, never holding more than one chunk of logits.

    Shapes: hidden ``(N, H)``, weight ``(V, H)``, targets ``(N,)`` -> logps ``(N,)`` in >= fp32, entropy ``(N,)`` or None,
    is_argmax ``(N,)`` bool (the target is the most likely token: token accuracy). Differentiable with respect to
    ``hidden``, ``weight`` and ``bias``; entropy and is_argmax are metrics and carry no gradient.

    ``accumulate_grad_in_place``: backward adds the gradient of a leaf fp32 ``weight`` into ``weight.grad`` itself and
    returns none to autograd (so ``torch.autograd.grad`` does not see it; ``loss.backward()`` gives the same ``.grad``).
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"expected hidden (N, H) and targets (N,), got {tuple(hidden.shape)} and {tuple(targets.shape)}")
    logps, entropy, is_argmax = _ChunkedTokenLogps.apply(
        hidden, weight, bias, targets.long(), int(chunk_size), with_entropy, accumulate_grad_in_place
    )
    return TokenLogps(logps, entropy if with_entropy else None, is_argmax)


def shifted_targets(input_ids: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token targets: position t predicts token t+1. Returns ``(targets, mask)`` of shape ``(B, T-1)``.

    ``loss_mask[b, t]`` marks tokens that carry loss (completion tokens), so the prediction at t-1 is kept.
    """
    return input_ids[:, 1:], loss_mask[:, 1:].bool()


def sequence_token_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    with_entropy: bool = False,
    accumulate_grad_in_place: bool = False,
) -> tuple[TokenLogps, torch.Tensor]:
    """Token log-probs of ``input_ids`` at the positions that carry loss, scattered back to ``(B, T-1)``.

    hidden ``(B, T, H)`` is the decoder output for ``input_ids`` ``(B, T)``; ``loss_mask`` ``(B, T)`` marks the tokens
    whose probability we want. Returns the per-token stats as ``(B, T-1)`` tensors (zero where masked) and the
    shifted mask ``(B, T-1)``. Only the masked rows are projected onto the vocabulary: prompt and padding cost nothing.
    ``accumulate_grad_in_place``: see ``chunked_token_logps``.
    """
    targets, mask = shifted_targets(input_ids, loss_mask)
    rows = hidden[:, :-1][mask]  # (N, H), N = number of loss tokens
    stats = chunked_token_logps(rows, weight, targets[mask], bias, chunk_size, with_entropy, accumulate_grad_in_place)

    def scatter(row_values: torch.Tensor | None) -> torch.Tensor | None:
        if row_values is None:
            return None
        return torch.zeros(mask.shape, dtype=row_values.dtype, device=row_values.device).masked_scatter(mask, row_values)

    return TokenLogps(scatter(stats.logps), scatter(stats.entropy), scatter(stats.is_argmax)), mask


def naive_token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Reference implementation: log_softmax over full ``(..., V)`` logits, gathered at ``targets``. For tests and
    for small inference-time uses where logits already exist."""
    return torch.log_softmax(_upcast(logits), dim=-1).gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum_t m_t x_t over ``dim`` (all dims when None)."""
    masked = values * mask.to(values.dtype)
    return masked.sum() if dim is None else masked.sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum_t m_t x_t / sum_t m_t over ``dim``; an all-masked slice gives 0 rather than NaN."""
    count = mask.to(values.dtype).sum() if dim is None else mask.to(values.dtype).sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)
