"""An inference copy of a model with CPU kernels swapped in: retserve's own linears and decode
step ("native"), oneDNN's prepacked linears ("onednn"), or torch's as they are ("torch").

"native" is the default: faster than oneDNN at every decode batch size (1.9x at one row, 1.2x
at 64; engine/native_kernels.py) and batch invariant by construction. It needs a C compiler
the first time on a machine; without one the copy falls back to "onednn".
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from engine import native_kernels
from engine.engine_config import CPU_KERNELS
from engine.native_decode import NativeDecoder
from engine.native_linear import NativeLinear
from engine.onednn_linear import PackedLinear, can_pack


def resolve_kernels(kind: str, device: torch.device | str, dtype: torch.dtype) -> str:
    """The kernels a model of this device and dtype gets when `kind` is asked for."""
    if kind not in CPU_KERNELS:
        raise ValueError(f"cpu kernels must be one of {CPU_KERNELS}")
    if torch.device(device).type != "cpu" or kind == "torch":
        return "torch"
    if kind == "native" and dtype in native_kernels.WEIGHT_DTYPES \
            and native_kernels.load() is not None:
        return "native"
    return "onednn" if can_pack(device, dtype) else "torch"


def pack_linears(model: nn.Module, kind: str) -> int:
    """Replaces, in place, every `nn.Linear` of the model with the kind's linear, and a tied
    output head (`lm_head` None: logits from the embedding matrix) with one built from
    `embed_tokens.weight`; "native" also runs the decode step through `NativeDecoder`. Returns the
    number of linears replaced. The model is inference-only afterwards."""
    if kind == "torch":
        return 0
    kernels = native_kernels.load() if kind == "native" else None

    def make(weight, bias=None):
        return PackedLinear(weight, bias) if kernels is None else \
            NativeLinear(weight, kernels, bias)

    count = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, make(child.weight, child.bias))
                count += 1
    if getattr(model, "lm_head", False) is None and hasattr(model, "embed_tokens"):
        # the packed copy doubles the head's weight memory; the step reads it whole either way
        model.lm_head = make(model.embed_tokens.weight)
        count += 1
    if kernels is not None and hasattr(model, "layers"):
        model.decode_step = NativeDecoder(model, kernels)  # a layer's step in one call
    return count


def _module_tree_copy(module: nn.Module) -> nn.Module:
    new = copy.copy(module)
    new._modules = {name: None if child is None else _module_tree_copy(child)
                    for name, child in module._modules.items()}
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    return new


def packed_copy(model: nn.Module, kind: str = "native") -> tuple[nn.Module, int]:
    """A copy of the model with its linears packed (`pack_linears`) that shares every other
    parameter with it; the given model is not changed (a caller may still train or save it)."""
    model = _module_tree_copy(model)
    return model, pack_linears(model, kind)
