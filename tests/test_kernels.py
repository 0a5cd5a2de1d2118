"""Triton kernels against independent float64 references, on the ``device`` fixture's device (CUDA when present
and the interpreter is off, else the CPU interpreter).

Every op: forward and every gradient, shapes with non-power-of-two F and d, duplicate ids (hot rows) and the
OOV (0) / missing (1) ids. Shapes stay tiny because the interpreter runs each program in Python. Tolerances per
input dtype (:data:`TOLERANCES`): float32 1e-4 (fp32 accumulation; tf32x3 dots on the GPU), float64 1e-10
(computed in float64), bfloat16 / float16 (rounded inputs and outputs) on CUDA only: the interpreter's
half-precision support is incomplete.
"""

from __future__ import annotations

import pytest
import torch

from dcollapse.kernels import (
    batched_spectra,
    bi_interaction,
    cross_layer,
    fused_bi_interaction,
    fused_pairwise_dot,
    gram_spectra,
    lookup,
    matrix_spectrum,
    pairwise_dot,
    scatter_rows,
)
from dcollapse.kernels.dispatch import check_dot_blocks, dot_block, use_triton
from dcollapse.kernels.scatter import plan_segments, scatter_rows_atomic, scatter_rows_sorted
from dcollapse.metrics.spectrum import field_singular_values

SHAPES = [(5, 13, 8), (3, 26, 10), (9, 3, 16), (2, 39, 64)]  # (B, F, d)
TOLERANCES = {  # (atol, rtol) of an op's output and gradients against float64, by input dtype
    torch.float32: (1e-4, 1e-4),
    torch.float64: (1e-10, 1e-10),
    torch.bfloat16: (6e-2, 3e-2),
    torch.float16: (6e-3, 4e-3),
}
HALF = [torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True)
def triton_mode(monkeypatch):
    monkeypatch.setenv("DCOLLAPSE_KERNELS", "triton")


def skip_half_on_interpreter(dtype: torch.dtype, device: torch.device) -> None:
    if dtype in HALF and device.type != "cuda":
        pytest.skip("bfloat16/float16 kernels are checked on CUDA (the interpreter's half support is incomplete)")


def make_lookup_inputs(B: int, F: int, d: int, seed: int = 0, device="cpu", dtype=torch.float32):
    """Random table [V, d] (vocab 2..4 per field), ids [B, F] full of duplicates and OOV/missing ids, offsets [F],
    all on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    vocab = torch.tensor([2 + f % 3 for f in range(F)])
    offsets = torch.cumsum(vocab, 0) - vocab
    ids = (torch.rand(B, F, generator=gen) * vocab).long()
    ids[0] = 0  # every field's OOV row
    ids[:, 0] = 1  # one hot row: the missing id of field 0 in every sample
    table = torch.randn(int(vocab.sum()), d, generator=gen).to(device, dtype)
    return table.requires_grad_(), ids.to(device, torch.int32), offsets.to(device)


def gather64(table: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """float64 E [B, F, d] by explicit per-field indexing."""
    t = table.double()
    return torch.stack([t[offsets[f] + ids[:, f].long()] for f in range(ids.shape[1])], dim=1)


def fm64(E: torch.Tensor) -> torch.Tensor:
    """sum_{i<j} e_i * e_j [B, d] as an explicit pair sum."""
    F = E.shape[1]
    return sum(E[:, i] * E[:, j] for i in range(F) for j in range(i + 1, F))


def dots64(E: torch.Tensor) -> torch.Tensor:
    """[B, F(F-1)/2] <e_i, e_j> for i < j, row-major, by explicit pairs."""
    F = E.shape[1]
    return torch.stack([(E[:, i] * E[:, j]).sum(-1) for i in range(F) for j in range(i + 1, F)], dim=1)


def check_op(op, ref64, inputs):
    """op(*inputs) matches ref64 (float64) in value and in the gradient of every input that requires it, within
    the tolerance of the inputs' dtype; outputs and gradients keep that dtype."""
    out = op(*inputs)
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    atol, rtol = TOLERANCES[leaves[0].dtype]
    inputs64 = [x.detach().double().requires_grad_() if any(x is leaf for leaf in leaves) else x for x in inputs]
    out64 = ref64(*inputs64)
    assert out.dtype == leaves[0].dtype and out.device == leaves[0].device
    torch.testing.assert_close(out.double(), out64, atol=atol, rtol=rtol)
    weight = torch.randn(out64.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    weight = weight.to(out.device)  # a random upstream gradient, not ones
    grads = torch.autograd.grad((out * weight.to(out.dtype)).sum(), leaves)
    grads64 = torch.autograd.grad((out64 * weight).sum(), [x for x in inputs64 if x.requires_grad])
    for g, g64 in zip(grads, grads64, strict=True):
        assert g.abs().max() > 0 and g.dtype == leaves[0].dtype
        torch.testing.assert_close(g.double(), g64, atol=atol, rtol=rtol)


@pytest.mark.parametrize("B,F,d", SHAPES)
def test_lookup(B, F, d, device):
    check_op(lookup, gather64, make_lookup_inputs(B, F, d, device=device))


def test_sparse_lookup_sums_rows_in_a_fixed_order(device):
    """sparse=True on the Triton path: the distinct rows' gradients come from the segment reduction (no atomics),
    equal to the float64 sum and bitwise the same twice."""
    table, ids, offsets = make_lookup_inputs(6, 13, 8, seed=8, device=device)
    weight = torch.randn(6, 13, 8, generator=torch.Generator().manual_seed(1)).to(device)
    grads = [torch.autograd.grad((lookup(table, ids, offsets, sparse=True) * weight).sum(), table)[0] for _ in "ab"]
    assert grads[0].is_sparse and torch.equal(grads[0].to_dense(), grads[1].to_dense())
    table64 = table.detach().double().requires_grad_()
    (gather64(table64, ids, offsets) * weight.double()).sum().backward()
    torch.testing.assert_close(grads[0].to_dense().double(), table64.grad, atol=1e-5, rtol=1e-5)


def test_fused_ops_take_int64_ids(device):
    table, ids, offsets = make_lookup_inputs(4, 13, 8, seed=5, device=device)
    check_op(fused_bi_interaction, lambda t, i, o: fm64(gather64(t, i, o)), [table, ids.long(), offsets])
    check_op(fused_pairwise_dot, lambda t, i, o: dots64(gather64(t, i, o)), [table, ids.long(), offsets])


@pytest.mark.parametrize("B,F,d", SHAPES)
def test_fused_bi_interaction(B, F, d, device):
    inputs = make_lookup_inputs(B, F, d, seed=1, device=device)
    check_op(fused_bi_interaction, lambda t, i, o: fm64(gather64(t, i, o)), inputs)


@pytest.mark.parametrize("B,F,d", [*SHAPES, (3, 70, 24)])  # F = 70: three field tiles
def test_fused_pairwise_dot(B, F, d, device):
    check_op(fused_pairwise_dot, lambda t, i, o: dots64(gather64(t, i, o)), make_lookup_inputs(B, F, d, 2, device))


@pytest.mark.parametrize("dtype", [torch.float64, *HALF])
def test_fused_ops_in_float64_and_half_precision(dtype, device):
    """float64 is computed in float64 (1e-10, not fp32's 1e-4); bf16/fp16 tables within their rounding."""
    skip_half_on_interpreter(dtype, device)
    inputs = make_lookup_inputs(6, 13, 16, seed=7, device=device, dtype=dtype)
    check_op(lookup, gather64, inputs)
    check_op(fused_bi_interaction, lambda t, i, o: fm64(gather64(t, i, o)), inputs)
    check_op(fused_pairwise_dot, lambda t, i, o: dots64(gather64(t, i, o)), inputs)


@pytest.mark.parametrize("B,F,d", [(37, 13, 10), (3, 26, 16)])
def test_bi_interaction_and_pairwise_dot_on_E(B, F, d, device):
    E = torch.randn(B, F, d, device=device).requires_grad_()
    check_op(bi_interaction, fm64, [E])
    check_op(pairwise_dot, dots64, [E])


def test_ids_outside_their_field_are_refused(device):
    table, ids, offsets = make_lookup_inputs(4, 5, 8, device=device)
    ids[2, 3] = 4  # field 3 has 2 + 3 % 3 = 2 ids
    for op in (lookup, fused_bi_interaction, fused_pairwise_dot):
        with pytest.raises(ValueError, match="id 4 of sample 2, field 3 is outside that field's vocabulary"):
            op(table, ids, offsets)
    ids[2, 3] = -1
    with pytest.raises(ValueError, match="outside"):
        lookup(table, ids, offsets)


@pytest.mark.parametrize("B,K", [(7, 16), (5, 39), (33, 40), (3, 70)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cross_layer(B, K, dtype, device):
    x0, x, bias = (torch.randn(*shape, dtype=dtype, device=device) for shape in ((B, K), (B, K), (K,)))
    weight = torch.randn(K, K, dtype=dtype, device=device) / K**0.5
    inputs = [t.requires_grad_() for t in (x0, x, weight, bias)]
    check_op(cross_layer, lambda a, b, w, c: a * (b @ w.T + c) + b, inputs)
    with torch.no_grad():  # the forward that keeps no pre-activation (it writes over h)
        atol, rtol = TOLERANCES[dtype]
        expected = x0 * (x @ weight.T + bias) + x
        torch.testing.assert_close(cross_layer(x0, x, weight, bias), expected, atol=atol, rtol=rtol)


def scatter64(grad: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    out = torch.zeros(num_rows, grad.shape[1], dtype=torch.float64)
    for n, r in enumerate(rows.tolist()):
        out[r] += grad[n].double().cpu()
    return out.to(grad.device)


@pytest.mark.parametrize("max_run", [256, 5, 1])  # 5 and 1 split the hot runs: a second pass over those alone
def test_scatter_sorted_hot_rows(max_run, device):
    gen = torch.Generator().manual_seed(3)
    rows = torch.randint(0, 12, (90,), generator=gen)
    rows[::3] = 7  # a hot row
    rows, grad = rows.to(device), torch.randn(90, 10, generator=gen).to(device)
    out = scatter_rows_sorted(grad, rows, 15, max_run=max_run)
    torch.testing.assert_close(out.double(), scatter64(grad, rows, 15), atol=1e-5, rtol=1e-5)
    assert torch.equal(out, scatter_rows_sorted(grad, rows, 15, max_run=max_run))  # bitwise reproducible
    assert torch.equal(out[12:], torch.zeros(3, 10, device=device))  # untouched rows stay zero


def test_segment_plan_splits_only_long_runs():
    """The plan finishes short segments in pass 1 and sends only the long one's pieces to pass 2."""
    rows = torch.tensor([3, 9, 3, 3, 5, 3, 3, 3, 9])  # row 3: 6 contributions, max_run 4 -> 2 pieces
    plan = plan_segments(rows, 10, max_run=4)
    used = plan.piece_end > plan.piece_begin
    assert plan.piece_row[used].tolist() == [3, 3, 5, 9]
    assert (plan.piece_end - plan.piece_begin)[used].tolist() == [4, 2, 1, 2]
    assert plan.piece_alone[used].tolist() == [0, 0, 1, 1]
    long_used = plan.long_end > plan.long_begin
    assert plan.long_row[long_used].tolist() == [3]
    assert (plan.long_begin[long_used].tolist(), plan.long_end[long_used].tolist()) == ([0], [2])
    assert rows[plan.order].tolist() == sorted(rows.tolist())  # a stable sort: fixed summation order


def test_scatter_float64_is_exact_in_float64(device):
    gen = torch.Generator().manual_seed(5)
    rows = torch.randint(0, 6, (40,), generator=gen).to(device)
    grad = torch.randn(40, 3, generator=gen, dtype=torch.float64).to(device)
    out = scatter_rows(grad, rows, 6)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, scatter64(grad, rows, 6), atol=1e-13, rtol=1e-13)
    with pytest.raises(ValueError, match="float32"):
        scatter_rows(grad, rows, 6, method="atomic")


def test_scatter_atomic_and_dispatch(device):
    gen = torch.Generator().manual_seed(4)
    rows = torch.randint(0, 9, (70,), generator=gen).to(device)
    grad = torch.randn(70, 6, generator=gen).to(device)
    expected = scatter64(grad, rows, 9)
    torch.testing.assert_close(scatter_rows_atomic(grad, rows, 9).double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scatter_rows(grad, rows, 9, method="atomic").double(), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="scatter method"):
        scatter_rows(grad, rows, 9, method="magic")


def planted(rows: int, cols: int, seed: int, smallest: float = 10**-3.5) -> torch.Tensor:
    """float32 [rows, cols] with singular values log-spaced from 1 down to ``smallest`` in random directions."""
    gen = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, k, generator=gen, dtype=torch.float64))
    return ((u * torch.logspace(0, torch.log10(torch.tensor(smallest)).item(), k, dtype=torch.float64)) @ v.T).float()


def assert_spectrum_matches(s: torch.Tensor, matrix: torch.Tensor) -> None:
    """Normalized singular values within 1e-3 relative of float64 svdvals down to s/s_1 = 1e-3."""
    s, ref = s.cpu(), torch.linalg.svdvals(matrix.double().cpu())
    ref_n, s_n = ref / ref[0], s[: len(ref)] / s[0]
    keep = ref_n >= 1e-3
    assert keep.sum() >= 2
    assert ((s_n - ref_n).abs() / ref_n)[keep].max() < 1e-3
    assert (s[len(ref) :] <= 1e-6 * s[0]).all()  # beyond the rank: numerically zero


def test_gram_spectra_per_field(device):
    blocks = [planted(50, 10, 0), planted(7, 10, 1), planted(130, 10, 2), planted(33, 10, 3)]  # field 1: V_f < d
    table = torch.cat(blocks).to(device)
    offsets = torch.tensor([0, 50, 57, 187], device=device)
    spectra = gram_spectra(table, offsets)
    assert spectra.shape == (4, 10) and spectra.dtype == torch.float64
    assert (spectra[:, :-1] >= spectra[:, 1:]).all()
    for s, block in zip(spectra, blocks, strict=True):
        assert_spectrum_matches(s, block)
    # the metrics' CPU path (which CUDA tables route to this kernel) agrees, zeros past the rank included
    cpu_path = field_singular_values(table.cpu(), offsets.cpu())
    torch.testing.assert_close(spectra.cpu(), cpu_path, atol=1e-6 * float(spectra.max()), rtol=1e-6)
    assert torch.equal(spectra, gram_spectra(table, offsets))  # the chunk combine is deterministic


def test_matrix_and_batched_spectra(device):
    tall = planted(70, 40, 5).to(device)
    assert_spectrum_matches(matrix_spectrum(tall), tall)
    wide = planted(70, 40, 6).to(device).T  # [40, 70], not contiguous: the Gram of its smaller side
    assert_spectrum_matches(matrix_spectrum(wide), wide)
    stack = torch.stack([planted(20, 17, 7), planted(20, 17, 8), planted(20, 17, 9)]).to(device)
    for matrices in (stack, stack.transpose(1, 2)):
        spectra = batched_spectra(matrices)
        assert spectra.shape == (3, 17)
        for s, m in zip(spectra, matrices, strict=True):
            assert_spectrum_matches(s, m)


def test_float32_gram_would_miss_the_accuracy_bar():
    """Why the kernel accumulates in float64: an fp32 accumulator (32-row tiles) misses the 1e-3 bar."""
    z = planted(2000, 64, 10)
    ref = torch.linalg.svdvals(z.double())
    gram = torch.zeros(64, 64)
    for tile in z.split(32):
        gram += tile.T @ tile
    fp32 = torch.linalg.eigvalsh(gram.double()).clamp(min=0).sqrt().flip(0)
    ref_n, fp32_n = ref / ref[0], fp32 / fp32[0]
    keep = ref_n >= 1e-3
    assert ((fp32_n - ref_n).abs() / ref_n)[keep].max() > 1e-3


def test_dot_tiles_never_below_16():
    assert [dot_block(n) for n in (1, 3, 13, 16, 26, 39, 64)] == [16, 16, 16, 16, 32, 64, 64]
    assert dot_block(200, cap=64) == 64 and dot_block(3, cap=8) == 16
    with pytest.raises(ValueError, match=">= 16"):
        check_dot_blocks(32, 8)


def test_dispatch(monkeypatch):
    cpu = torch.zeros(1)
    assert use_triton(cpu)
    monkeypatch.setenv("DCOLLAPSE_KERNELS", "auto")
    assert not use_triton(cpu)
    monkeypatch.setenv("DCOLLAPSE_KERNELS", "fast")
    with pytest.raises(ValueError, match="DCOLLAPSE_KERNELS"):
        use_triton(cpu)


@pytest.mark.parametrize(
    "model_config",
    [
        {"model": "fm", "arch": "none"},  # fused lookup + FM (and the first-order lookup)
        {"model": "dot", "arch": "stacked", "dnn": [8]},  # lookup + pairwise dot, E also read by the MLP
        {"model": "crossnet", "arch": "parallel", "dnn": [8], "cross_layers": 2},  # lookup + fused cross layers
    ],
)
@pytest.mark.parametrize("fused_update", [False, True])
def test_training_matches_reference(model_config, fused_update, tmp_path, monkeypatch):
    """A short `dcollapse train` run gives the same loss history with the Triton kernels as with the references,
    with the table gradients (dense Adam) or the in-backward update (lazy Adam)."""
    from _ctr_fixtures import write_dataset

    from dcollapse.kernels import scatter
    from dcollapse.train import train

    calls = []
    plan = scatter.plan_segments
    monkeypatch.setattr(scatter, "plan_segments", lambda *args: calls.append(1) or plan(*args))
    data = tmp_path / "data"
    write_dataset(data, [7, 5, 4, 6], {"train": 96, "valid": 48}, seed=0)
    config = {**model_config, "emb_dim": 4, "epochs": 2, "batch_size": 32, "lr": 0.05, "patience": 0, "seed": 3,
              "fused_update": fused_update}  # fmt: skip
    histories = {}
    for mode in ("reference", "triton"):
        monkeypatch.setenv("DCOLLAPSE_KERNELS", mode)
        histories[mode] = train(data, config, tmp_path / f"{mode}.pt")["history"]
    assert len(calls) >= 6  # the Triton run's backward passes went through the segment reduction (3 steps x 2 epochs)
    for key in ("train_loss", "valid_logloss", "valid_auc", "rankme"):
        got = [entry[key] for entry in histories["triton"]]
        want = [entry[key] for entry in histories["reference"]]
        assert got == pytest.approx(want, rel=1e-4, abs=1e-5), key
