"""DCNv2 cross layer: x_{l+1} = x0 * (x_l W^T + b) + x_l.

Triton path: a tiled matmul whose epilogue applies ``x0 * (. + b) + x`` in registers (and keeps h = x W^T + b for
the backward), so the layer is one kernel instead of a GEMM plus three elementwise passes. Backward, with
g = dL/dout and dh = g * x0:

* dx  = dh W + g and dx0 = g * h   (one matmul kernel: dh formed while loading, both epilogues fused),
* dW  = dh^T x                       (one matmul kernel, dh again formed while loading),
* db  = sum_b dh.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dcollapse.kernels.dispatch import check_dot_blocks, dot_block, use_triton

BLOCK_MAX = 32


def cross_layer_reference(x0: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """[B, K] from x0, x [B, K], weight [K, K], bias [K]."""
    return x0 * torch.addmm(bias, x, weight.t()) + x


@triton.jit
def _matmul_tile(
    a,
    a2,
    b,
    M,
    N,
    K,
    s_am,
    s_ak,
    s_bk,
    s_bn,
    SCALE_A: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One [BLOCK_M, BLOCK_N] tile of A @ B (A = a, or a * a2 elementwise when SCALE_A), fp32, with its indices."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        a_off = rm.to(tl.int64)[:, None] * s_am + rk.to(tl.int64)[None, :] * s_ak
        a_mask = (rm < M)[:, None] & (rk < K)[None, :]
        a_tile = tl.load(a + a_off, mask=a_mask, other=0.0).to(tl.float32)
        if SCALE_A:
            a_tile *= tl.load(a2 + a_off, mask=a_mask, other=0.0).to(tl.float32)
        b_off = rk.to(tl.int64)[:, None] * s_bk + rn[None, :] * s_bn
        b_tile = tl.load(b + b_off, mask=(rk < K)[:, None] & (rn < N)[None, :], other=0.0).to(tl.float32)
        acc += tl.dot(a_tile, b_tile, input_precision="ieee")
    return acc, rm, rn


@triton.jit
def _cross_forward_kernel(
    x0,
    x,
    w,
    bias,
    out,
    h_out,
    B,
    K,
    STORE_H: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """out = x0 * (x W^T + b) + x (and h = x W^T + b when STORE_H); all [B, K] row-major, W [K, K]."""
    acc, rm, rn = _matmul_tile(x, x, w, B, K, K, K, 1, 1, K, False, BLOCK_M, BLOCK_N, BLOCK_K)
    off = rm.to(tl.int64)[:, None] * K + rn[None, :]
    mask = (rm < B)[:, None] & (rn < K)[None, :]
    h = acc + tl.load(bias + rn, mask=rn < K, other=0.0)[None, :]
    x0_t = tl.load(x0 + off, mask=mask, other=0.0)
    x_t = tl.load(x + off, mask=mask, other=0.0)
    tl.store(out + off, x0_t * h + x_t, mask=mask)
    if STORE_H:
        tl.store(h_out + off, h, mask=mask)


@triton.jit
def _cross_dx_kernel(
    grad, x0, w, h, dx, dx0, B, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr
):
    """dx = (g * x0) W + g and dx0 = g * h, [B, K]."""
    acc, rm, rn = _matmul_tile(grad, x0, w, B, K, K, K, 1, K, 1, True, BLOCK_M, BLOCK_N, BLOCK_K)
    off = rm.to(tl.int64)[:, None] * K + rn[None, :]
    mask = (rm < B)[:, None] & (rn < K)[None, :]
    g = tl.load(grad + off, mask=mask, other=0.0)
    tl.store(dx + off, acc + g, mask=mask)
    tl.store(dx0 + off, g * tl.load(h + off, mask=mask, other=0.0), mask=mask)


@triton.jit
def _cross_dw_kernel(grad, x0, x, dw, B, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """dW = (g * x0)^T x, [K, K] (the reduction runs over the batch)."""
    acc, rm, rn = _matmul_tile(grad, x0, x, K, K, B, 1, K, K, 1, True, BLOCK_M, BLOCK_N, BLOCK_K)
    tl.store(dw + rm.to(tl.int64)[:, None] * K + rn[None, :], acc, mask=(rm < K)[:, None] & (rn < K)[None, :])


def _blocks(M: int, N: int, K: int) -> dict[str, int]:
    blocks = {
        "BLOCK_M": dot_block(M, BLOCK_MAX),
        "BLOCK_N": dot_block(N, BLOCK_MAX),
        "BLOCK_K": dot_block(K, BLOCK_MAX),
    }
    check_dot_blocks(*blocks.values())
    return blocks


def _grid(M: int, N: int, blocks: dict[str, int]) -> tuple[int, int]:
    return triton.cdiv(M, blocks["BLOCK_M"]), triton.cdiv(N, blocks["BLOCK_N"])


class _CrossLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x0, x, weight, bias):
        B, K = x.shape
        out = torch.empty_like(x)
        needs_grad = any(ctx.needs_input_grad)
        h = torch.empty_like(x) if needs_grad else out
        blocks = _blocks(B, K, K)
        _cross_forward_kernel[_grid(B, K, blocks)](x0, x, weight, bias, out, h, B, K, STORE_H=needs_grad, **blocks)
        ctx.save_for_backward(x0, x, weight, h)
        return out

    @staticmethod
    def backward(ctx, grad):
        x0, x, weight, h = ctx.saved_tensors
        grad = grad.contiguous()
        B, K = x.shape
        dx, dx0 = torch.empty_like(x), torch.empty_like(x0)
        blocks = _blocks(B, K, K)
        _cross_dx_kernel[_grid(B, K, blocks)](grad, x0, weight, h, dx, dx0, B, K, **blocks)
        dw = torch.empty_like(weight)
        blocks = _blocks(K, K, B)
        _cross_dw_kernel[_grid(K, K, blocks)](grad, x0, x, dw, B, K, **blocks)
        db = (grad * x0).sum(0)
        return dx0, dx, dw, db


def cross_layer(x0: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Public op: one DCNv2 cross layer, [B, K]."""
    if not use_triton(x):
        return cross_layer_reference(x0, x, weight, bias)
    return _CrossLayer.apply(x0.contiguous(), x.contiguous(), weight.contiguous(), bias.contiguous())
