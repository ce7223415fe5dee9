"""GGML's Q4_K block quantization, written by us because the ``gguf`` package only reads it.

``gguf`` 0.19.0 (its newest release) dequantizes the k-quants but has no quantizer for them; llama.cpp's C++
``llama-quantize`` does. The layout below is the one ``gguf.quants.Q4_K.dequantize_blocks`` (and llama.cpp's
``dequantize_row_q4_K``) reads, so the file is read by transformers, llama.cpp and every GGUF runtime; the tests
check our blocks through gguf's own dequantizer.

A super-block holds 256 consecutive values of a row as 8 sub-blocks of 32 (4.5 bits per value, 144 bytes):

    value = d * sc[j] * q - dmin * m[j]        q in 0..15 (4 bits), sc[j], m[j] in 0..63 (6 bits), j = sub-block

``d`` and ``dmin`` are float16 per super-block. Choosing the numbers (after llama.cpp's ``make_qkx2_quants``, but
unweighted: llama.cpp weights each value's squared error by rms + |x|): per sub-block, an affine grid
``scale * q + min`` (min <= 0) fitted by least squares after rounding, over 21 candidate grid spacings around
``(max - min) / 15``, the one with the smallest squared error kept (a flat sub-block gets scale 0);
then the 8 scales and 8 negated minimums of a super-block are rounded to 6 bits on ``d = max(scale) / 63`` and
``dmin = max(-min) / 63``, and the values are rounded once more on the grid those stored numbers give.
"""

from __future__ import annotations

import numpy as np

QK_K, SUB, LEVELS = 256, 32, 15  # values per super-block, per sub-block; 4-bit levels 0..15
Q4_K_BYTES = 2 + 2 + 12 + QK_K // 2  # d, dmin, packed 6-bit scales and minimums, 4-bit values
CHUNK = 16384  # super-blocks quantized together: the search's temporaries are ~5x its input, so bound them


def _fit_affine(x: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares ``scale, min`` of ``x ~ scale * q + min`` over the last axis, with ``min <= 0`` (the format
    stores a minimum subtracted, never added)."""
    n = x.shape[-1]
    sq, sx, sqq, sqx = q.sum(-1), x.sum(-1), (q * q).sum(-1), (q * x).sum(-1)
    det = n * sqq - sq * sq
    safe = np.where(det > 0, det, 1.0)
    scale = np.where(det > 0, (n * sqx - sq * sx) / safe, 0.0)
    minimum = np.where(det > 0, (sqq * sx - sq * sqx) / safe, x.min(-1))
    clipped = minimum > 0  # refit the scale through the origin
    scale = np.where(clipped, sqx / np.where(sqq > 0, sqq, 1.0), scale)
    return scale, np.where(clipped, 0.0, minimum)


def _sub_block_grids(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sub-block ``(scale, min)`` of ``x`` shaped ``(..., 32)``: the best of 21 candidate spacings."""
    low, high = np.minimum(x.min(-1), 0.0), x.max(-1)
    flat = high <= low  # zeros, or one negative constant: scale 0, or its super-block's shared d would be wasted on it
    span = np.where(flat, 1.0, high - low)
    best_scale, best_min = np.where(flat, 0.0, span / LEVELS), low
    best_error = _error(x, best_scale, best_min)
    for step in range(21):  # inverse spacings (15 - 1 + 0.1 step) / span, as make_qkx2_quants(rmin=-1, rdelta=0.1)
        inverse = (LEVELS - 1.0 + 0.1 * step) / span
        q = np.clip(np.rint((x - low[..., None]) * inverse[..., None]), 0, LEVELS)
        scale, minimum = _fit_affine(x, q)
        error = _error(x, scale, minimum)
        better = error < best_error
        best_scale, best_min = np.where(better, scale, best_scale), np.where(better, minimum, best_min)
        best_error = np.minimum(error, best_error)
    return np.maximum(best_scale, 0.0), best_min


def _error(x: np.ndarray, scale: np.ndarray, minimum: np.ndarray) -> np.ndarray:
    """Squared error of rounding ``x`` onto the grid ``scale * q + minimum``, q in 0..15."""
    q = _levels(x, scale, minimum)
    return ((scale[..., None] * q + minimum[..., None] - x) ** 2).sum(-1)


def _levels(x: np.ndarray, scale: np.ndarray, minimum: np.ndarray) -> np.ndarray:
    safe = np.where(scale > 0, scale, 1.0)[..., None]
    return np.where(scale[..., None] > 0, np.clip(np.rint((x - minimum[..., None]) / safe), 0, LEVELS), 0)


def _six_bits(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(per-super-block float16 step, 6-bit codes)`` of non-negative ``values`` shaped ``(blocks, 8)``."""
    step = (values.max(-1) / 63.0).astype(np.float16)
    wide = step.astype(np.float32)[:, None]
    codes = np.where(wide > 0, np.clip(np.rint(values / np.where(wide > 0, wide, 1.0)), 0, 63), 0)
    return step, codes.astype(np.uint8)


def _pack_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The 12 bytes of eight 6-bit scales and minimums (``Q4_K.get_scale_min``'s inverse): bytes 0-3 hold sc[0..3]
    with sc[4..7]'s top two bits above them, bytes 4-7 the same for m, bytes 8-11 sc[4..7]'s and m[4..7]'s low
    nibbles."""
    first = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    second = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    third = (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)
    return np.concatenate([first, second, third], axis=-1).astype(np.uint8)


def quantize_q4_k(data: np.ndarray) -> np.ndarray:
    """Q4_K blocks of a float array whose last axis is a multiple of 256: ``(..., n)`` -> uint8 ``(..., n / 256 *
    144)``, the shape ``gguf``'s writer takes with ``raw_dtype=Q4_K``."""
    if data.shape[-1] % QK_K:
        raise ValueError(f"Q4_K needs rows of a multiple of {QK_K} values, not {data.shape[-1]}")
    flat = data.reshape(-1, QK_K)
    blocks = np.concatenate([_quantize_blocks(flat[i : i + CHUNK]) for i in range(0, len(flat), CHUNK)])
    return blocks.reshape(*data.shape[:-1], data.shape[-1] // QK_K * Q4_K_BYTES)


def _quantize_blocks(data: np.ndarray) -> np.ndarray:
    """``(blocks, 256)`` floats -> ``(blocks, 144)`` bytes."""
    x = data.astype(np.float32).reshape(-1, QK_K // SUB, SUB)  # (blocks, 8, 32)
    scale, minimum = _sub_block_grids(x)
    d, sc = _six_bits(scale)
    dmin, m = _six_bits(-minimum)
    stored_scale = d.astype(np.float32)[:, None] * sc
    stored_min = -(dmin.astype(np.float32)[:, None] * m)
    q = _levels(x, stored_scale, stored_min).astype(np.uint8)  # (blocks, 8, 32)
    pairs = q.reshape(-1, 4, 2, SUB)  # sub-blocks 2i and 2i+1 share 32 bytes: low and high nibble
    qs = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(-1, QK_K // 2)
    return np.concatenate([d[:, None].view(np.uint8), dmin[:, None].view(np.uint8), _pack_scales(sc, m), qs], axis=-1)
