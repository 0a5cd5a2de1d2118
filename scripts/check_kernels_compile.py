"""Compile every Triton kernel launch of dcollapse.kernels for a GPU target without a GPU, and fail on spills.

The interpreter (TRITON_INTERPRET=1) runs the kernels on the CPU but skips the GPU compiler (tl.dot tile sizes,
dtypes, layouts, register allocation), so a kernel can pass the test suite and still fail to build, or build and
spill registers to local memory. This script

1. runs the public ops under the interpreter on representative shapes (F in {13, 39, 65}, d in {16, 64, 128},
   forward and backward, int32 and int64 ids, float32 / float64 / bfloat16 / float16 tables, every in-backward
   update rule, long runs that take the second pass, both scatter paths, the cross layer with and without
   gradients, every spectrum entry point) and records each launch's argument types, compile-time constants and
   launch options exactly as the wrappers choose them, with the runtime's specialisation: pointers 16-byte
   aligned and integers divisible by 16 are marked ``tt.divisibility = 16``, integers equal to 1 become constants;
2. compiles each distinct launch ahead of time to a cubin for the target (default sm_90 = H100/H200) with the
   ptxas bundled in the Triton wheel, reads its resource usage back with the bundled ``cuobjdump``
   (``-res-usage``: registers, stack frame, local memory; ``-sass``: local load/store instructions, i.e. spills)
   and prints one row per launch.

    python scripts/check_kernels_compile.py              # sm_90, table on stdout
    python scripts/check_kernels_compile.py --arch 80    # A100
    python scripts/check_kernels_compile.py --json out.json

Exit status 1 if any launch fails to compile or spills (stack frame > 0 or any local load/store).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DTYPES = {"float32": "fp32", "float64": "fp64", "int32": "i32", "int64": "i64", "float16": "fp16", "bfloat16": "bf16"}
LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


def record(path: str) -> None:
    """Phase 1 (interpreter): run the ops and write every distinct launch to ``path`` as JSON."""
    import torch
    import triton.language as tl
    from triton.runtime import interpreter

    launches: dict[str, dict] = {}
    original_run = interpreter.InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        options = {key: kwargs.pop(key) for key in LAUNCH_OPTIONS if key in kwargs}
        bound = inspect.signature(self.fn).bind(*args, **kwargs).arguments
        launch = {"module": self.fn.__module__, "name": self.fn.__name__, "args": {}, "options": options}
        for name, value in bound.items():
            if isinstance(value, torch.Tensor):
                dtype = DTYPES[str(value.dtype).removeprefix("torch.")]
                launch["args"][name] = {"pointer": dtype, "aligned": value.data_ptr() % 16 == 0}
            elif isinstance(value, tl.dtype):  # an accumulator dtype passed as a constexpr
                launch["args"][name] = {"dtype": str(value)}
            else:
                launch["args"][name] = {"value": value}
        launches[json.dumps(launch, sort_keys=True)] = launch
        return original_run(self, *args, grid=grid, warmup=warmup, **kwargs, **options)

    interpreter.InterpretedFunction.run = recording_run
    run_ops(torch)
    with open(path, "w") as fh:
        json.dump(list(launches.values()), fh)


def run_ops(torch) -> None:
    """Every public op on the shapes and dtypes the GPU will see (tiny batches: the interpreter is slow)."""
    from dcollapse import kernels

    gen = torch.Generator().manual_seed(0)
    updates = hasattr(kernels, "RowOptimizer")  # False for kernels older than the in-backward update
    for F, d, dtype, id_dtype in [
        (13, 16, torch.float32, torch.int32),
        (39, 16, torch.float32, torch.int32),
        (39, 64, torch.float32, torch.int64),
        (65, 128, torch.float32, torch.int32),
        (26, 10, torch.float32, torch.int32),
        (39, 16, torch.bfloat16, torch.int32),
        (39, 16, torch.float16, torch.int32),
        (39, 16, torch.float64, torch.int32),
    ]:
        offsets = torch.arange(F) * 3
        ids = torch.randint(0, 3, (2, F), generator=gen).to(id_dtype)
        table = torch.randn(3 * F, d, generator=gen).to(dtype).requires_grad_()
        E = torch.randn(2, F, d, generator=gen).to(dtype).requires_grad_()
        outputs = [
            kernels.lookup(table, ids, offsets),
            kernels.fused_bi_interaction(table, ids, offsets),
            kernels.fused_pairwise_dot(table, ids, offsets),
            kernels.bi_interaction(E),
            kernels.pairwise_dot(E),
        ]
        sum(out.float().sum() for out in outputs).backward()
        if updates and dtype == torch.float32 and d == 16:  # the in-backward updates, every rule
            for rule in kernels.RULES:
                for op in (kernels.lookup, kernels.fused_bi_interaction, kernels.fused_pairwise_dot):
                    op(table, ids, offsets, update=kernels.RowOptimizer(table, rule, 0.1)).sum().backward()
    rows = torch.randint(0, 2, (600,), generator=gen)  # runs longer than 256: the second pass over long runs
    for method in ("sorted", "atomic"):
        kernels.scatter_rows(torch.randn(600, 16, generator=gen), rows, 4, method=method)
    long_ids = torch.zeros(300, 1, dtype=torch.int32)  # one row read 300 times: the update's second pass
    hot = torch.randn(2, 16, generator=gen, requires_grad=True)
    for rule in kernels.RULES if updates else []:
        kernels.fused_bi_interaction(hot, long_ids.repeat(1, 2), torch.tensor([0, 1]),
                                     update=kernels.RowOptimizer(hot, rule, 0.1)).sum().backward()  # fmt: skip
        kernels.lookup(hot, long_ids, torch.tensor([0]), update=kernels.RowOptimizer(hot, rule, 0.1)).sum().backward()
    for K, dtype in ((39, torch.float32), (624, torch.float32), (39, torch.float64), (64, torch.bfloat16)):
        x0, x = (torch.randn(33, K, generator=gen).to(dtype).requires_grad_() for _ in range(2))
        weight = torch.randn(K, K, generator=gen).to(dtype).requires_grad_()
        bias = torch.randn(K, generator=gen).to(dtype).requires_grad_()
        kernels.cross_layer(x0, x, weight, bias).float().sum().backward()
        with torch.no_grad():  # the forward that keeps no pre-activation
            kernels.cross_layer(x0, x, weight, bias)
    kernels.gram_spectra(torch.randn(40, 64, generator=gen), torch.tensor([0, 30]))
    kernels.gram_spectra(torch.randn(40, 10, generator=gen), torch.tensor([0, 30]))
    kernels.matrix_spectrum(torch.randn(200, 100, generator=gen))  # two column tiles
    kernels.batched_spectra(torch.randn(2, 20, 17, generator=gen))


def specialise(kernel, launch: dict) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) of a recorded launch as the runtime specialises it."""
    import triton.language as tl

    constexpr_names = {p.name for p in kernel.params if p.is_constexpr}
    no_specialise = {kernel.arg_names[i] for i in getattr(kernel, "do_not_specialize", [])}
    signature, constants, attrs = {}, {}, {}
    for index, (name, arg) in enumerate(launch["args"].items()):
        if "pointer" in arg:
            signature[name] = "*" + arg["pointer"]
            if arg["aligned"]:
                attrs[(index,)] = [["tt.divisibility", 16]]
            continue
        if "dtype" in arg:
            signature[name], constants[name] = "constexpr", tl.dtype(arg["dtype"])
            continue
        value = arg["value"]
        if name in constexpr_names or value is None or isinstance(value, bool | str):
            signature[name], constants[name] = "constexpr", value
        elif isinstance(value, float):
            signature[name] = "fp32"
        elif value == 1 and name not in no_specialise:
            signature[name], constants[name] = "constexpr", 1
        else:
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0 and name not in no_specialise:
                attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, constants, attrs


def resource_usage(cubin: bytes, tools: Path) -> dict[str, int]:
    """{"regs", "stack", "local", "spill_instructions"} of a cubin (bundled cuobjdump)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        res = subprocess.run([tools / "cuobjdump", "-res-usage", fh.name], capture_output=True, text=True, check=True)
        sass = subprocess.run([tools / "cuobjdump", "-sass", fh.name], capture_output=True, text=True, check=True)
    usage = {key.lower(): int(value) for key, value in re.findall(r"(REG|STACK|LOCAL):(\d+)", res.stdout)}
    usage["spill_instructions"] = len(re.findall(r"\b(?:LDL|STL)(?:\.\w+)*\b", sass.stdout))
    return {"regs": usage.get("reg", -1), "stack": usage.get("stack", -1), "local": usage.get("local", -1),
            "spill_instructions": usage["spill_instructions"]}  # fmt: skip


def label_of(launch: dict, constants: dict) -> str:
    shown = {k: v for k, v in constants.items() if k.isupper() or k.startswith("BLOCK")}
    types = sorted({a["pointer"] for a in launch["args"].values() if "pointer" in a} - {"i32", "i64"})
    ids = "i64 ids" if launch["args"].get("ids", {}).get("pointer") == "i64" else ""
    opts = launch["options"]
    return (f"{launch['name']}({', '.join(f'{k}={v}' for k, v in shown.items())}) [{'/'.join(types)}"
            f"{', ' + ids if ids else ''}, warps={opts.get('num_warps', 4)}]")  # fmt: skip


def compile_all(launches: list[dict], arch: int) -> list[dict]:
    """Phase 2 (no interpreter): compile each distinct launch for ``arch``; one result row per launch."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    target = GPUTarget("cuda", arch, 32)
    backend = triton.compiler.make_backend(target)
    rows, seen = [], set()
    for launch in launches:
        kernel = getattr(importlib.import_module(launch["module"]), launch["name"])
        signature, constants, attrs = specialise(kernel, launch)
        key = json.dumps([launch["module"], launch["name"], signature, constants, sorted(map(str, attrs)),
                          launch["options"]], sort_keys=True, default=str)  # fmt: skip
        if key in seen:  # same types, constants, specialisation and options: the same binary
            continue
        seen.add(key)
        row = {"launch": label_of(launch, constants), "kernel": launch["name"]}
        start = time.perf_counter()
        try:
            options = backend.parse_options({"num_warps": 4, "num_stages": 3, **launch["options"]}).__dict__
            compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs),
                                      target=target, options=options)  # fmt: skip
            row |= resource_usage(compiled.asm["cubin"], tools)
            spills = row["stack"] > 0 or row["local"] > 0 or row["spill_instructions"] > 0
            row["status"] = "SPILL" if spills else "ok"
        except Exception as exc:  # report every failing launch, then fail
            row |= {"status": "FAIL", "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        if row["status"] == "FAIL":
            print(f"FAIL  {row['launch']}: {row['error']}", flush=True)
        else:
            print(f"{row['status']:5} {row['launch']}  regs={row['regs']} stack={row['stack']} local={row['local']} "
                  f"spill_instr={row['spill_instructions']}  [{row['seconds']} s]", flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 80 or 90")
    parser.add_argument("--json", default=None, help="also write the per-launch rows to this JSON file")
    parser.add_argument("--only", default=None, help="compile only the kernels whose name contains this text")
    parser.add_argument("--record", default=None, help=argparse.SUPPRESS)  # internal: phase 1 output path
    args = parser.parse_args()
    if args.record:
        record(args.record)
        return
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("unset TRITON_INTERPRET: the compile phase needs the real Triton compiler")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "launches.json")
        env = {**os.environ, "TRITON_INTERPRET": "1", "DCOLLAPSE_KERNELS": "triton", "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, __file__, "--record", path], env=env, check=True)
        with open(path) as fh:
            launches = [launch for launch in json.load(fh) if args.only is None or args.only in launch["name"]]
    print(f"{len(launches)} recorded kernel launches; compiling each distinct one for sm_{args.arch}", flush=True)
    rows = compile_all(launches, args.arch)
    if args.json:
        Path(args.json).write_text(json.dumps({"arch": args.arch, "launches": rows}, indent=1))
    bad = [row for row in rows if row["status"] != "ok"]
    print(f"{len(rows)} distinct launches, {sum(r['status'] == 'FAIL' for r in rows)} failed to compile, "
          f"{sum(r['status'] == 'SPILL' for r in rows)} spill")  # fmt: skip
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
