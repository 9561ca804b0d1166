"""retserve's own CPU kernels (engine/native/decode_kernels.c), built for this machine on first use.

The decode step's matmuls are GEMV-shaped (1-64 rows), where oneDNN and MKL run at a fraction
of the machine (oneDNN: 25-130 GFLOP/s below 16 rows, with another kernel for one row); in
torch a layer's step is also ~70 small ops, and the retention update and readout three passes
over the state. The C kernels: a linear that reads each weight once per tile of 6 rows, and a
layer's whole decode step in one call (norms, projections, convolution, rotation, retention in
one pass over each state, gating, FFN). Every output element is one fixed chain of operations:
a row's numbers never depend on the batch.

The library is compiled with the system's C compiler (`$CC`, else `cc`) for this CPU
(`-march=native`) into `$XDG_CACHE_HOME/retserve/kernels` (`~/.cache` without it), keyed
by the source, the flags, the compiler and the CPU: rebuilt (~0.3 s) only when one of them
changes. Without a compiler `load()` returns None and the engine runs oneDNN's kernels.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native") / "decode_kernels.c"
# -z defs: a symbol left undefined fails the build, not the load
FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp", "-shared", "-fPIC",
         "-Wl,-z,defs"]
BLOCK = 64  # output columns of a packed weight block (BLOCK in the C source)
WEIGHT_DTYPES = (torch.float32, torch.bfloat16)


def _cpu_identity() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.startswith(wanted)}))


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "retserve/kernels"


def _compiler() -> str:
    return os.environ.get("CC", "cc")


def _library_path() -> Path:
    compiler = _compiler()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(FLAGS), version,
                                    platform.machine(), _cpu_identity()]).encode())
    return _cache_dir() / f"decode_kernels-{key.hexdigest()[:16]}.so"


def _build(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # built beside the target and renamed: processes starting together never load half a file
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        out = Path(tmp) / path.name
        subprocess.run([_compiler(), *FLAGS, "-o", str(out), str(SOURCE), "-lm"],
                       capture_output=True, text=True, timeout=120, check=True)
        os.replace(out, path)


def data_ptr_or_none(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class Layer(ctypes.Structure):
    """One layer's constants for `retserve_decode_layer` (the C struct `Layer`)."""

    _fields_ = [(name, ctypes.c_int) for name in (
        "hidden", "heads", "head_qk", "head_v", "ffn", "conv_kernel", "rope", "group_norm",
        "gelu", "conv_silu", "bf16")] + [("norm_eps", ctypes.c_float),
                                         ("head_eps", ctypes.c_float)] + [
        (name, ctypes.c_void_p) for name in (
            "attn_norm", "ffn_norm", "qkvg", "o_proj", "gate_up", "down", "conv_w", "head_w",
            "head_b")]


class NativeKernels:
    """ctypes bindings of the compiled library; tensors are checked by the callers."""

    def __init__(self, path: Path):
        self.path = path
        lib = ctypes.CDLL(str(path))
        ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        self._linear = lib.retserve_linear
        self._linear.argtypes, self._linear.restype = [ptr, ptr, i32, ptr, i64, i32, i32, i32], None
        self._scratch = lib.retserve_layer_scratch
        self._scratch.argtypes, self._scratch.restype = [ptr], i64
        self._layer = lib.retserve_decode_layer
        self._layer.argtypes, self._layer.restype = [ptr, ptr, i64] + [ptr] * 6 + [i32], None

    @staticmethod
    def pack_weight(weight: Tensor) -> Tensor:
        """[N, K] -> the kernel's layout: blocks of BLOCK output columns, each [K, BLOCK]
        (columns past N zero). fp32 stays fp32; bf16 stays bf16 (fp32 accumulation)."""
        if weight.dtype not in WEIGHT_DTYPES:
            weight = weight.float()
        n, k = weight.shape
        blocks = -(-n // BLOCK)
        padded = weight.new_zeros(blocks * BLOCK, k)
        padded[:n] = weight
        return padded.view(blocks, BLOCK, k).transpose(1, 2).contiguous()

    def linear(self, x: Tensor, packed: Tensor, out_features: int) -> Tensor:
        """x: [M, K] fp32 contiguous, packed: `pack_weight`'s -> [M, out_features] fp32."""
        rows, k = x.shape
        y = torch.empty(rows, out_features, dtype=torch.float32)
        if rows:
            self._linear(x.data_ptr(), packed.data_ptr(), packed.dtype == torch.bfloat16,
                         y.data_ptr(), rows, k, out_features, torch.get_num_threads())
        return y

    def layer_scratch(self, layer: Layer) -> int:
        """fp32 elements of scratch per row that `decode_layer` needs."""
        return self._scratch(ctypes.byref(layer))

    def decode_layer(self, layer: Layer, x: Tensor, state: Tensor, conv: Tensor | None,
                     rot: Tensor, decay: Tensor, inject: Tensor | None, scratch: Tensor
                     ) -> None:
        """One layer's decode step on x [B, D] (updated in place, as are the states); every
        tensor fp32 and contiguous (`NativeDecoder` checks)."""
        self._layer(ctypes.byref(layer), x.data_ptr(), x.shape[0], state.data_ptr(),
                    data_ptr_or_none(conv), rot.data_ptr(), decay.data_ptr(),
                    data_ptr_or_none(inject), scratch.data_ptr(), torch.get_num_threads())


@functools.cache
def load() -> NativeKernels | None:
    """The kernels for this machine, built if needed; None (logged) where they cannot be."""
    if platform.system() != "Linux":
        return None
    try:
        path = _library_path()
        if not path.exists():
            _build(path)
        return NativeKernels(path)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        log.warning("retserve's CPU kernels could not be built (%s); the engine runs oneDNN's",
                    detail)
        return None
