"""Run a benchmark child as if the CPU had no AVX-512 (`--isa avx2`), for both sides.

What each library reads, and how it is capped:
  - XLA's own code generation: `--xla_cpu_max_isa=AVX2` (on this TensorFlow build XLA emits
    256-bit code on AVX-512 CPUs anyway: no zmm register in its kernels, checked with
    `objdump` on `--xla_dump_to` output, so the flag changes little);
  - oneDNN (TensorFlow's kernels outside XLA, some of torch's): `ONEDNN_MAX_CPU_ISA=AVX2`;
  - YNNPACK, which runs XLA's matrix products in TensorFlow 2.21 (`YnnFusionThunk`), picks its
    kernels from CPUID through `ynn::get_supported_arch_flags()` and has no switch. Its cached
    flags are overwritten in the child's memory (`cap_ynnpack`), with the symbol's address read
    from the library by `nm`; bit 7 and above are AVX-512 and AMX (verified by the kernel
    names in `perf report`: `dot_fp32_*_avx512f` -> `*_fma3`);
  - torch: `ATEN_CPU_CAPABILITY=avx2`; MKL: `MKL_ENABLE_INSTRUCTIONS=AVX2`.
An emulated AVX2 machine has the ISA of one, not its cache sizes, memory bandwidth or clocks.
"""

from __future__ import annotations

import ctypes
import os
import subprocess

ISAS = ("native", "avx2")
YNN_AVX2_MASK = 0x7F  # sse2 .. avx2 + fma3; bit 7 is avx512f


def environment(isa: str, env: dict, side: str = "ours") -> dict:
    """`env` for a child of `side` ("ours" or "original") capped at `isa`."""
    if isa == "native":
        return env
    if isa != "avx2":
        raise ValueError(f"`isa` should be one of {ISAS}. Received: {isa!r}")
    env = dict(env, ONEDNN_MAX_CPU_ISA="AVX2")
    if side == "original":
        return dict(env, ATEN_CPU_CAPABILITY="avx2", MKL_ENABLE_INSTRUCTIONS="AVX2")
    flags = env.get("XLA_FLAGS", "")
    return dict(env, XLA_FLAGS=f"{flags} --xla_cpu_max_isa=AVX2".strip(),
                TF_GRU4REC_BENCH_ISA="avx2")


def _library() -> str:
    import tensorflow as tf

    return os.path.join(os.path.dirname(tf.__file__), "libtensorflow_cc.so.2")


def _symbol_offsets(library: str) -> tuple[int, int]:
    """(flags, guard) offsets of `ynn::get_supported_arch_flags()::flags` in `library`."""
    out = subprocess.run(["nm", "-C", library], capture_output=True, text=True, check=True)
    flags = guard = None
    for line in out.stdout.splitlines():
        if line.endswith("ynn::get_supported_arch_flags()::flags"):
            offset = int(line.split()[0], 16)
            if "guard variable" in line:
                guard = offset
            else:
                flags = offset
    if flags is None or guard is None:
        raise RuntimeError(f"YNNPACK's arch flags not found in {library}")
    return flags, guard


def _mapped_base(library: str) -> int:
    name = os.path.basename(library)
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if parts[-1].endswith(name) and int(parts[2], 16) == 0:
                return int(parts[0].split("-")[0], 16)
    raise RuntimeError(f"{name} is not loaded")


def cap_ynnpack(mask: int = YNN_AVX2_MASK) -> dict:
    """Make YNNPACK choose kernels as on a CPU with only the ISA bits in `mask`.

    Call after TensorFlow is imported and before the first XLA compilation. The flags are
    computed once and cached behind a guard; both are set, so CPUID is never consulted.
    Returns {"native": None, "capped": value} (the native value is unknown before init).
    """
    library = _library()
    flags, guard = _symbol_offsets(library)
    base = _mapped_base(library)
    value = ctypes.c_uint64.from_address(base + flags)
    initialised = ctypes.c_uint8.from_address(base + guard)
    if initialised.value:
        value.value &= mask
    else:
        # Native flags are at most 0x7fff (15 feature bits); the mask keeps the non-AVX-512 ones
        # that this CPU reports, which the AVX2 kernels need (checked: fma3 kernels chosen).
        value.value = mask
        initialised.value = 1
    return {"ynn_arch_flags": hex(value.value)}


def apply_in_child() -> dict:
    """In a benchmark child: apply the cap named by `TF_GRU4REC_BENCH_ISA`, if any."""
    if os.environ.get("TF_GRU4REC_BENCH_ISA") == "avx2":
        return cap_ynnpack()
    return {}


def torch_capability(python: str, env: dict) -> str:
    """What torch reports as its CPU capability under `env` (checks ATEN_CPU_CAPABILITY)."""
    out = subprocess.run([python, "-c", "import torch; print(torch.backends.cpu."
                          "get_cpu_capability())"], capture_output=True, text=True, env=env,
                         check=False)
    return out.stdout.strip() or out.stderr.strip()[-200:]
