"""Compile every Triton kernel for GPUs that are not here (sm_90: H100, sm_80: A100), as the wrappers launch them.

    python -m seqzoo.ops._compile_check                  # the representative subset, sm_90 and sm_80
    python -m seqzoo.ops._compile_check --full --json out.json
    python -m seqzoo.ops._compile_check --arch 90 --ops gla delta_rule

Why: the tests run the Triton kernels in the CPU interpreter, which neither compiles them nor knows a GPU's
limits. A kernel whose tiles need more shared memory than the GPU has, or that spills registers, passes the
interpreter and fails (or crawls) on the GPU. This check closes that gap without a GPU:

- a **stand-in driver** replaces Triton's CUDA driver: it reports the target GPU (arch, 32-wide warps, the
  GPU's shared memory per block) and launches nothing;
- every kernel launch (``kernel[grid](...)``) is turned into a compilation (Triton's ``warmup``): the real
  compiler (TTIR -> TTGIR -> LLVM -> PTX -> ptxas -> cubin) runs with the arguments, constants, tile sizes and
  ``num_warps`` / ``num_stages`` that the wrapper chose for that shape;
- each op's Triton wrapper is called, forward and backward, on CPU tensors of documented shapes and dtypes
  (the tensors only carry shapes, strides and alignment; nothing is computed, outputs are garbage);
- every compiled kernel is checked: its shared memory against the target's limit, and ``ptxas -v`` gives
  its registers and spill bytes (reported; a spill is a warning, not a failure).

A compile error or a kernel over the shared-memory limit fails the check. The wrappers ask for the limit
through ``ops._triton_utils.max_shared_memory`` (the active driver's device properties), so a wrapper that
picks its tiles from the GPU picks them for the target here too.

Must run in a process where ``TRITON_INTERPRET`` is unset before Triton is imported (the test suite starts
it in a subprocess). Targets can follow each other in one process: the check empties the kernels' per-device
caches on entry and on exit, so nothing compiled for one target serves another or a real launch.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from types import SimpleNamespace

# Dynamic shared memory a block may opt in to: H100 (sm_90) 227 KiB, A100 (sm_80) 163 KiB (CUDA guide,
# "Compute capabilities", maximum shared memory per thread block).
TARGETS = {90: 227 * 1024, 80: 163 * 1024}
SM_COUNT = {90: 132, 80: 108}


@dataclasses.dataclass
class Compiled:
    op: str
    case: str
    kernel: str
    arch: int
    num_warps: int
    num_stages: int
    constants: dict
    shared: int
    shared_limit: int
    registers: int | None = None
    spill_bytes: int | None = None

    @property
    def over_shared(self) -> bool:
        return self.shared > self.shared_limit


@dataclasses.dataclass
class Failure:
    op: str
    case: str
    arch: int
    error: str


class StandInDriver:
    """Enough of Triton's CUDA driver for compiling: the target, device 0, a null stream, device properties."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.arch = arch
        self.target = GPUTarget("cuda", arch, 32)
        props = {
            "max_shared_mem": TARGETS[arch],
            "multiprocessor_count": SM_COUNT[arch],
            "max_num_regs": 65536,
            "warpSize": 32,
            "sm_clock_rate": 1_755_000,
            "mem_clock_rate": 2_619_000,
            "mem_bus_width": 5120,
        }
        self.utils = SimpleNamespace(get_device_properties=lambda device=0: dict(props))

    def is_active(self):
        return True

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")

    def get_benchmarker(self):
        raise RuntimeError("the compile check's stand-in driver cannot run kernels (nothing is autotuned)")


def _ptxas_path(arch: int) -> str | None:
    """The ptxas Triton itself uses for ``arch`` (Triton 3.9 ships two: one for sm_80, a newer one for sm_90+)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        try:
            tool = get_ptxas(arch)
        except TypeError:  # Triton <= 3.6: get_ptxas() takes no arch
            tool = get_ptxas()
        return tool.path if hasattr(tool, "path") else str(tool)
    except Exception:  # noqa: BLE001 - no ptxas: registers are not reported
        return None


_REGS = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def ptxas_usage(ptx: str, arch: int) -> tuple[int | None, int | None]:
    """(registers, spill bytes) of the kernel in ``ptx`` from ``ptxas -v`` (None, None without ptxas)."""
    ptxas = _ptxas_path(arch)
    if ptxas is None:
        return None, None
    gpu = "sm_90a" if arch == 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        out = subprocess.run(
            [ptxas, "-v", f"--gpu-name={gpu}", src, "-o", os.path.join(d, "k.cubin")],
            capture_output=True,
            text=True,
        )
    log = out.stdout + out.stderr
    regs = _REGS.search(log)
    spills = _SPILL.search(log)
    return (
        int(regs.group(1)) if regs else None,
        (int(spills.group(1)) + int(spills.group(2))) if spills else 0,
    )


class CompileOnly:
    """Within this context every Triton launch compiles for the stand-in target instead of running."""

    def __init__(self, arch: int, registers: bool = True):
        self.arch = arch
        self.registers = registers
        self.records: list[Compiled] = []
        self._seen: set = set()
        self._fresh: dict = {}
        self.op = self.case = ""

    def __enter__(self):
        from triton.runtime import driver
        from triton.runtime.jit import JITFunction

        self._driver, self._jit = driver, JITFunction
        self._previous = getattr(driver, "_active", None)
        driver.set_active(StandInDriver(self.arch))
        self._run = JITFunction.run
        check = self

        def run(fn, *args, grid, warmup, **kwargs):
            if id(fn) not in check._fresh:  # binders and kernels cached for another target must go
                check._fresh[id(fn)] = fn
                fn.device_caches.clear()
            kernel = check._run(fn, *args, grid=grid, warmup=True, **kwargs)
            if not warmup:  # a launch; a wrapper's own warmups (trying tile candidates) are not launches
                check._record(fn, kernel)
            return kernel

        JITFunction.run = run
        return self

    def __exit__(self, *exc):
        self._jit.run = self._run
        for fn in self._fresh.values():
            fn.device_caches.clear()  # nothing compiled for the stand-in target may serve a real launch
        self._driver._active = self._previous  # reset_active() would look for a real driver
        return False

    def _record(self, fn, kernel) -> None:
        if kernel is None:
            return
        md = kernel.metadata
        key = (self.op, fn.__name__, kernel.hash if hasattr(kernel, "hash") else id(kernel))
        if key in self._seen:
            return
        self._seen.add(key)
        params = getattr(fn, "arg_names", [])

        def name(k):  # recent Triton keys constants by argument position (a 1-tuple): name them
            k = k[0] if isinstance(k, tuple) and len(k) == 1 else k
            return params[k] if isinstance(k, int) and k < len(params) else str(k)

        constants = {
            name(k): v
            for k, v in getattr(kernel.src, "constants", {}).items()
            if isinstance(v, (int, bool, str))
        }
        regs, spills = ptxas_usage(kernel.asm["ptx"], self.arch) if self.registers else (None, None)
        self.records.append(
            Compiled(
                op=self.op,
                case=self.case,
                kernel=fn.__name__,
                arch=self.arch,
                num_warps=md.num_warps,
                num_stages=md.num_stages,
                constants=constants,
                shared=md.shared,
                shared_limit=TARGETS[self.arch],
                registers=regs,
                spill_bytes=spills,
            )
        )


# -- the cases: each op's Triton wrapper, forward and backward, on documented shapes -------------------------


@dataclasses.dataclass
class Case:
    op: str
    name: str
    run: Callable[[], None]
    full_only: bool = False


def _t(*shape, dtype, grad=True, positive=False):
    import torch

    x = torch.rand(*shape) if positive else torch.randn(*shape)
    return x.to(dtype).requires_grad_(grad)


def _backward(*outs):
    import torch

    outs = [o for o in outs if o is not None and o.requires_grad]
    torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])


def cases() -> list[Case]:
    import importlib

    import torch

    tri = {
        name: importlib.import_module(f"seqzoo.ops.{name}.triton")
        for name in (
            "causal_conv1d",
            "linear_scan",
            "selective_scan",
            "s4",
        )
    }
    conv = importlib.import_module("seqzoo.ops.s4.triton_direct_conv")
    gla_chunk = importlib.import_module("seqzoo.ops.gla.triton_chunk")
    gla_recurrent = importlib.import_module("seqzoo.ops.gla.triton_recurrent")
    delta_chunk = importlib.import_module("seqzoo.ops.delta_rule.triton_chunk")
    delta_recurrent = importlib.import_module("seqzoo.ops.delta_rule.triton_recurrent")
    f32, bf16 = torch.float32, torch.bfloat16
    out: list[Case] = []

    def add(op, name, fn, full_only=False):
        out.append(Case(op, name, fn, full_only))

    # gla: chunked (training; triton_chunk.py) and recurrent (decoding; triton_recurrent.py); vector, scalar and no
    # decay; head dims to 256. flow_attention runs on these kernels (ops/flow_attention/torch.py).
    for dt in (f32, bf16):
        for kd, vd in ((64, 64), (128, 128), (256, 256), (64, 128), (256, 64)):
            for gate in ("vector", "scalar", "none"):
                for chunked in (True, False):
                    # The scalar decay and no decay compile to the same kernels as the vector one.
                    rep = (kd, vd) in ((64, 64), (256, 256)) and gate == "vector" and dt == bf16

                    def run(kd=kd, vd=vd, gate=gate, dt=dt, chunked=chunked):
                        b, t, h = 1, 80, 2
                        q, k = _t(b, t, h, kd, dtype=dt), _t(b, t, h, kd, dtype=dt)
                        v = _t(b, t, h, vd, dtype=dt)
                        g = None
                        if gate == "vector":
                            g = (-_t(b, t, h, kd, dtype=f32, grad=False, positive=True)).requires_grad_()
                        elif gate == "scalar":
                            g = (-_t(b, t, h, dtype=f32, grad=False, positive=True)).requires_grad_()
                        h0 = _t(b, h, kd, vd, dtype=f32)
                        fn = gla_chunk.chunk_gla if chunked else gla_recurrent.recurrent_gla
                        o, ht = fn(q, k, v, g, None, h0, True)
                        _backward(o, ht)

                    form = "chunk" if chunked else "recurrent"
                    add("gla", f"{form} K{kd} V{vd} g={gate} {str(dt)[6:]}", run, full_only=not rep)
    # delta_rule: chunked (training) and recurrent (decoding), forward and backward; DeltaNet and Gated DeltaNet;
    # head dims to 256.
    for dt in (f32, bf16):
        for kd, vd in ((64, 64), (128, 128), (256, 256), (64, 128), (256, 64)):
            for gate, chunked in itertools.product(("scalar", "none"), (True, False)):
                rep = (kd, vd) in ((64, 64), (256, 256)) and gate == "scalar" and dt == bf16

                def run(kd=kd, vd=vd, gate=gate, dt=dt, chunked=chunked):
                    b, t, h = 1, 80, 2
                    q, k = _t(b, t, h, kd, dtype=dt), _t(b, t, h, kd, dtype=dt)
                    v = _t(b, t, h, vd, dtype=dt)
                    beta = _t(b, t, h, dtype=dt, positive=True)
                    g = (
                        (-_t(b, t, h, dtype=f32, grad=False, positive=True)).requires_grad_()
                        if gate == "scalar"
                        else None
                    )
                    h0 = _t(b, h, kd, vd, dtype=f32)
                    fn = delta_chunk.chunk_delta_rule if chunked else delta_recurrent.recurrent_delta_rule
                    o, ht = fn(q, k, v, beta, g, None, h0, True)
                    _backward(o, ht)

                form = "chunk" if chunked else "recurrent"
                add("delta_rule", f"{form} K{kd} V{vd} g={gate} {str(dt)[6:]}", run, full_only=not rep)
    # causal_conv1d: widths 2..4, with and without states, silu.
    for dt in (f32, bf16):
        for width in (2, 3, 4):
            for states in (False, True):
                rep = width == 4 and dt == bf16

                def run(width=width, dt=dt, states=states):
                    x = _t(2, 70, 96, dtype=dt)
                    w = _t(96, width, dtype=dt)
                    bias = _t(96, dtype=dt)
                    s0 = _t(2, 96, width - 1, dtype=dt) if states else None
                    y, fin = tri["causal_conv1d"].causal_conv1d(x, w, bias, "silu", s0, states)
                    _backward(y, fin)

                add("causal_conv1d", f"W{width} states={states} {str(dt)[6:]}", run, full_only=not rep)
    # linear_scan: forward and reverse, with an initial state.
    for dt in (f32, bf16):
        for reverse in (False, True):
            rep = dt == f32 and not reverse

            def run(dt=dt, reverse=reverse):
                a = _t(2, 100, 96, dtype=dt, positive=True)
                x = _t(2, 100, 96, dtype=dt)
                h0 = _t(2, 96, dtype=f32)
                h, fin = tri["linear_scan"].linear_scan(a, x, h0, True, reverse)
                _backward(h, fin)

            add("linear_scan", f"reverse={reverse} {str(dt)[6:]}", run, full_only=not rep)
    # selective_scan: N from 16 to 256, grouped B/C, gate and D.
    for dt in (f32, bf16):
        for n in (16, 64, 256):
            rep = n in (16, 256) and dt == bf16

            def run(n=n, dt=dt):
                b, t, d, g = 2, 40, 64, 2
                u, delta, z = _t(b, t, d, dtype=dt), _t(b, t, d, dtype=dt), _t(b, t, d, dtype=dt)
                A = (-_t(d, n, dtype=f32, grad=False, positive=True)).requires_grad_()
                Bm, Cm = _t(b, t, g, n, dtype=dt), _t(b, t, g, n, dtype=dt)
                D, bias = _t(d, dtype=f32), _t(d, dtype=f32)
                h0 = _t(b, d, n, dtype=f32)
                y, fin = tri["selective_scan"].selective_scan(u, delta, A, Bm, Cm, D, z, bias, True, h0, True)
                _backward(y, fin)

            add("selective_scan", f"N{n} groups {str(dt)[6:]}", run, full_only=not rep)
    # s4: the S4D Vandermonde kernel (both discretisations), S4's Cauchy kernel, and the tiled long convolution.
    for disc in ("zoh", "bilinear"):

        def run(disc=disc):
            h, n, L = 64, 32, 300
            p = [_t(h, dtype=f32)] + [_t(h, n, dtype=f32) for _ in range(6)]
            _backward(tri["s4"].s4d_kernel(*p, L, discretization=disc))

        add("s4", f"s4d_kernel {disc}", run, full_only=disc != "zoh")

    def run_s4():
        h, n, L = 64, 32, 300
        p = [_t(h, dtype=f32)] + [_t(h, n, dtype=f32) for _ in range(8)]
        _backward(tri["s4"].s4_kernel(*p, L))

    add("s4", "s4_kernel", run_s4)
    for dt in (f32, bf16):
        for bidir in (False, True):
            rep = dt == f32 and not bidir

            def run(dt=dt, bidir=bidir):
                u = _t(2, 300, 64, dtype=dt)
                K = _t(*((2,) if bidir else ()), 64, 300, dtype=f32)
                D = _t(64, dtype=f32)
                _backward(conv.fft_conv(u, K, D, bidir))

            add("fft_conv", f"bidirectional={bidir} {str(dt)[6:]}", run, full_only=not rep)
    return out


def check(
    arch: int,
    full: bool = False,
    ops: list[str] | None = None,
    registers: bool = True,
    progress=None,
    only: list[Case] | None = None,
):
    """Compile the cases for ``arch`` (``only``: these cases instead of the op table); returns
    (records, failures)."""
    import torch

    torch.manual_seed(0)
    pool = cases() if only is None else only
    selected = [c for c in pool if (full or not c.full_only) and (not ops or c.op in ops)]
    failures: list[Failure] = []
    with CompileOnly(arch, registers=registers) as cc:
        for i, c in enumerate(selected):
            cc.op, cc.case = c.op, c.name
            if progress:
                progress(i, len(selected), c)
            try:
                c.run()
            except Exception as e:  # noqa: BLE001 - every failure is reported with its case, none stops the rest
                failures.append(Failure(c.op, c.name, arch, f"{type(e).__name__}: {str(e)[:2000]}"))
    for r in cc.records:
        if r.over_shared:
            failures.append(
                Failure(
                    r.op,
                    r.case,
                    arch,
                    f"{r.kernel} needs {r.shared} B of shared memory, limit {r.shared_limit}",
                )
            )
    return cc.records, failures


def table(records: list[Compiled]) -> str:
    lines = [
        "| arch | op | kernel | warps | stages | shared KiB | limit KiB | registers | spill B | first case |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    seen = {}
    for r in records:  # one row per (arch, kernel, configuration): the worst case of each
        key = (r.arch, r.op, r.kernel, r.num_warps, r.num_stages, r.shared, r.registers, r.spill_bytes)
        seen.setdefault(key, r)
    for r in sorted(seen.values(), key=lambda r: (r.arch, r.op, r.kernel, -r.shared)):
        lines.append(
            f"| sm_{r.arch} | {r.op} | {r.kernel} | {r.num_warps} | {r.num_stages} | {r.shared / 1024:.1f} | "
            f"{r.shared_limit / 1024:.0f} | {r.registers if r.registers is not None else '-'} | "
            f"{r.spill_bytes if r.spill_bytes is not None else '-'} | {r.case} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, nargs="+", default=[90, 80], choices=sorted(TARGETS))
    p.add_argument(
        "--full", action="store_true", help="every shape and dtype (default: a representative subset)"
    )
    p.add_argument("--ops", nargs="*", help="only these ops")
    p.add_argument("--no-registers", action="store_true", help="skip ptxas -v (registers and spills)")
    p.add_argument("--json", help="write every compiled kernel and failure here")
    p.add_argument("--table", help="write the markdown table here")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("compile check: unset TRITON_INTERPRET (the interpreter compiles nothing)", file=sys.stderr)
        return 2
    import triton

    all_records, all_failures = [], []
    for arch in args.arch:
        t0 = time.time()
        records, failures = check(
            arch,
            full=args.full,
            ops=args.ops,
            registers=not args.no_registers,
            progress=lambda i, n, c, arch=arch: print(
                f"sm_{arch} [{i + 1}/{n}] {c.op}: {c.name}", flush=True
            ),
        )
        spills = sorted({(r.kernel, r.spill_bytes) for r in records if r.spill_bytes})
        print(
            f"sm_{arch}: {len(records)} kernels compiled (Triton {triton.__version__}) in "
            f"{time.time() - t0:.0f} s; {len(failures)} failure(s); spills: "
            + (", ".join(f"{k} {b} B" for k, b in spills) or "none")
        )
        for f in failures:
            print(f"  FAIL sm_{arch} {f.op} [{f.case}]: {f.error}")
        all_records += records
        all_failures += failures
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "triton": triton.__version__,
                    "kernels": [dataclasses.asdict(r) for r in all_records],
                    "failures": [dataclasses.asdict(f) for f in all_failures],
                },
                f,
                indent=1,
            )
    if args.table:
        with open(args.table, "w") as f:
            f.write(table(all_records) + "\n")
    return 1 if all_failures else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
