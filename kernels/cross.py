"""DCNv2 cross layer: x_{l+1} = x0 * (x_l W^T + b) + x_l.

CPU path: the same products and elementwise steps in PyTorch ops (:func:`cross_layer_reference`).

Triton path: the GEMM h = x W^T + b runs on cuBLAS (``torch.addmm``); one elementwise Triton epilogue forms
``x0 * h + x``. Under ``torch.no_grad()`` the epilogue writes the output over h (no pre-activation is kept); with
gradients h is saved. Backward, with g = dL/dout: one elementwise kernel forms dh = g * x0 and dx0 = g * h, then
cuBLAS gives dx = dh W + g (``addmm``) and dW = dh^T x (``mm``); db = sum_b dh.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dcollapse.kernels.dispatch import acc_dtype, use_triton

BLOCK = 1024


def cross_layer_reference(x0: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """[B, K] from x0, x [B, K], weight [K, K], bias [K] in PyTorch ops (what CPU tensors run)."""
    return _CrossLayerReference.apply(x0, x, weight, bias)


class _CrossLayerReference(torch.autograd.Function):
    """out = x0 * h + x with h = x W^T + b in one ``addcmul``; backward dh = g * x0, dx0 = g * h and dx = dh W + g
    in one ``addmm`` (the residual's gradient added by the GEMM, not by a separate pass), dW = dh^T x,
    db = sum_b dh."""

    @staticmethod
    def forward(ctx, x0, x, weight, bias):
        h = torch.addmm(bias, x, weight.t())
        ctx.save_for_backward(x0, x, weight, h)
        return torch.addcmul(x, x0, h)

    @staticmethod
    def backward(ctx, grad):
        x0, x, weight, h = ctx.saved_tensors
        need_x0, need_x, need_w, need_b = ctx.needs_input_grad
        dh = grad * x0 if need_x or need_w or need_b else None
        return (
            grad * h if need_x0 else None,
            torch.addmm(grad, dh, weight) if need_x else None,
            dh.t().mm(x) if need_w else None,
            dh.sum(0) if need_b else None,
        )


@triton.jit
def _cross_epilogue_kernel(x0, h, x, out, n, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """out = x0 * h + x elementwise over n values (``out`` may be ``h``)."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    a = tl.load(x0 + i, mask=mask, other=0.0).to(ACC)
    hv = tl.load(h + i, mask=mask, other=0.0).to(ACC)
    xv = tl.load(x + i, mask=mask, other=0.0).to(ACC)
    tl.store(out + i, (a * hv + xv).to(out.dtype.element_ty), mask=mask)


@triton.jit
def _cross_grad_kernel(g, x0, h, dh, dx0, n, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """dh = g * x0 and dx0 = g * h elementwise over n values."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    gv = tl.load(g + i, mask=mask, other=0.0).to(ACC)
    tl.store(dh + i, (gv * tl.load(x0 + i, mask=mask, other=0.0).to(ACC)).to(dh.dtype.element_ty), mask=mask)
    tl.store(dx0 + i, (gv * tl.load(h + i, mask=mask, other=0.0).to(ACC)).to(dx0.dtype.element_ty), mask=mask)


def _elementwise(kernel, *tensors: torch.Tensor) -> None:
    n = tensors[0].numel()
    kernel[(triton.cdiv(n, BLOCK),)](*tensors, n, ACC=acc_dtype(tensors[0].dtype), BLOCK=BLOCK, num_warps=4)


class _CrossLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x0, x, weight, bias):
        h = torch.addmm(bias, x, weight.t())  # [B, K] on cuBLAS
        if not any(ctx.needs_input_grad):  # evaluation: the output overwrites h
            _elementwise(_cross_epilogue_kernel, x0, h, x, h)
            return h
        out = torch.empty_like(x)
        _elementwise(_cross_epilogue_kernel, x0, h, x, out)
        ctx.save_for_backward(x0, x, weight, h)
        return out

    @staticmethod
    def backward(ctx, grad):
        x0, x, weight, h = ctx.saved_tensors
        grad = grad.contiguous()
        dh, dx0 = torch.empty_like(x), torch.empty_like(x0)
        _elementwise(_cross_grad_kernel, grad, x0, h, dh, dx0)
        return dx0, torch.addmm(grad, dh, weight), dh.t().mm(x), dh.sum(0)


def cross_layer(x0: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Public op: one DCNv2 cross layer, [B, K] from x0, x [B, K], weight [K, K], bias [K]."""
    if not use_triton(x):
        return cross_layer_reference(x0, x, weight, bias)
    return _CrossLayer.apply(x0.contiguous(), x.contiguous(), weight.contiguous(), bias.contiguous())
