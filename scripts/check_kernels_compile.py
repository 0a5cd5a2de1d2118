"""Compile every Triton kernel of dcollapse.kernels for a GPU target, without a GPU.

The interpreter (TRITON_INTERPRET=1) runs the kernels on the CPU but skips the GPU compiler's checks (tl.dot tile
sizes, dtypes, layouts), so a kernel can pass the test suite and still fail to build on a GPU. This script

1. runs the public ops under the interpreter on representative shapes (F in {13, 39}, d in {16, 64}, forward and
   backward, both scatter paths, the cross layer at K = 39 and K = 624, every spectrum entry point) and records
   each kernel launch's argument types and compile-time constants, exactly as the wrappers choose them;
2. compiles each distinct launch ahead of time to a cubin for the target (default sm_90 = H100/H200) with the
   ptxas bundled in the Triton wheel, and reports what failed.

    python scripts/check_kernels_compile.py              # sm_90
    python scripts/check_kernels_compile.py --arch 80    # A100

Exit status 1 if any launch fails to compile.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time

DTYPES = {"float32": "fp32", "float64": "fp64", "int32": "i32", "int64": "i64", "float16": "fp16", "bfloat16": "bf16"}


def record(path: str) -> None:
    """Phase 1 (interpreter): run the ops and write every distinct launch to ``path`` as JSON."""
    import torch
    from triton.runtime import interpreter

    from dcollapse import kernels

    launches: dict[str, dict] = {}
    original_run = interpreter.InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        bound = inspect.signature(self.fn).bind(*args, **kwargs).arguments
        launch = {"module": self.fn.__module__, "name": self.fn.__name__, "args": {}}
        for name, value in bound.items():
            if isinstance(value, torch.Tensor):
                launch["args"][name] = {"pointer": DTYPES[str(value.dtype).removeprefix("torch.")]}
            else:
                launch["args"][name] = {"value": value}
        launches[json.dumps(launch, sort_keys=True)] = launch
        return original_run(self, *args, grid=grid, warmup=warmup, **kwargs)

    interpreter.InterpretedFunction.run = recording_run
    gen = torch.Generator().manual_seed(0)
    for F in (13, 39):
        for d in (16, 64):
            offsets = torch.arange(F) * 3
            ids = torch.randint(0, 3, (2, F), generator=gen, dtype=torch.int32)
            table = torch.randn(3 * F, d, generator=gen, requires_grad=True)
            E = torch.randn(2, F, d, generator=gen, requires_grad=True)
            outputs = [
                kernels.lookup(table, ids, offsets),
                kernels.fused_bi_interaction(table, ids, offsets),
                kernels.fused_pairwise_dot(table, ids, offsets),
                kernels.bi_interaction(E),
                kernels.pairwise_dot(E),
            ]
            sum(out.sum() for out in outputs).backward()
    rows = torch.randint(0, 2, (600,), generator=gen)  # runs longer than 256: the two-pass sorted scatter
    for method in ("sorted", "atomic"):
        kernels.scatter_rows(torch.randn(600, 16, generator=gen), rows, 4, method=method)
    for K in (39, 624):
        x0, x = (torch.randn(33, K, generator=gen, requires_grad=True) for _ in range(2))
        weight = torch.randn(K, K, generator=gen, requires_grad=True)
        bias = torch.randn(K, generator=gen, requires_grad=True)
        kernels.cross_layer(x0, x, weight, bias).sum().backward()
        with torch.no_grad():  # the forward that keeps no pre-activation
            kernels.cross_layer(x0, x, weight, bias)
    kernels.gram_spectra(torch.randn(40, 64, generator=gen), torch.tensor([0, 30]))
    kernels.gram_spectra(torch.randn(40, 10, generator=gen), torch.tensor([0, 30]))
    kernels.matrix_spectrum(torch.randn(200, 100, generator=gen))  # two column tiles
    kernels.batched_spectra(torch.randn(2, 20, 17, generator=gen))
    with open(path, "w") as fh:
        json.dump(list(launches.values()), fh)


def compile_all(launches: list[dict], arch: int) -> int:
    """Phase 2 (no interpreter): compile each launch for ``arch``; returns the number of failures."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    failures, seen = 0, set()
    for launch in launches:
        kernel = getattr(importlib.import_module(launch["module"]), launch["name"])
        constexpr_names = {p.name for p in kernel.params if p.is_constexpr}
        signature, constants = {}, {}
        for name, arg in launch["args"].items():
            if "pointer" in arg:
                signature[name] = "*" + arg["pointer"]
            elif name in constexpr_names or arg["value"] is None or isinstance(arg["value"], bool):
                signature[name], constants[name] = "constexpr", arg["value"]
            else:
                signature[name] = "i32" if -(2**31) <= arg["value"] < 2**31 else "i64"
        label = f"{launch['name']}({', '.join(f'{k}={v}' for k, v in constants.items())})"
        key = json.dumps([launch["module"], launch["name"], signature, constants], sort_keys=True)
        if key in seen:  # same types and constants: the same binary
            continue
        seen.add(key)
        start = time.perf_counter()
        try:
            triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constants), target=target)
            print(f"ok    {label}  [{time.perf_counter() - start:.1f} s]")
        except Exception as exc:  # report every failing launch, then fail
            failures += 1
            print(f"FAIL  {label}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 80 or 90")
    parser.add_argument("--record", default=None, help=argparse.SUPPRESS)  # internal: phase 1 output path
    args = parser.parse_args()
    if args.record:
        record(args.record)
        return
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("unset TRITON_INTERPRET: the compile phase needs the real Triton compiler")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "launches.json")
        env = {**os.environ, "TRITON_INTERPRET": "1", "DCOLLAPSE_KERNELS": "triton"}
        subprocess.run([sys.executable, __file__, "--record", path], env=env, check=True)
        with open(path) as fh:
            launches = json.load(fh)
    print(f"{len(launches)} recorded kernel launches; compiling each distinct one for sm_{args.arch}")
    failures = compile_all(launches, args.arch)
    print(f"{failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
