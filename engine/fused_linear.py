"""One linear for several that read the same input (q/k/v/g, gate/up): one larger matmul per
step instead of four small ones. Checkpoints keep the separate weights: `state_dict()` writes
the parts under their own names and `load_state_dict()` concatenates them."""

from __future__ import annotations

import torch
from torch import nn


def fused_linear(module: nn.Module, name: str, in_features: int,
                 parts: dict[str, int]) -> nn.Linear:
    """An `nn.Linear` for `module.<name>` whose output rows are `parts` (checkpoint name ->
    out features) side by side; registers the hooks that keep checkpoints in parts."""
    linear = nn.Linear(in_features, sum(parts.values()), bias=False)
    sizes = list(parts.values())
    part_keys = [f"{part}.weight" for part in parts]

    def save_parts(module, state_dict, prefix, local_metadata) -> None:
        fused = state_dict.pop(f"{prefix}{name}.weight")
        for key, weight in zip(part_keys, fused.split(sizes), strict=True):
            state_dict[prefix + key] = weight

    def load_parts(module, state_dict, prefix, *args) -> None:
        keys = [prefix + key for key in part_keys]
        if all(key in state_dict for key in keys):  # else reported missing/unexpected as is
            state_dict[f"{prefix}{name}.weight"] = torch.cat([state_dict.pop(k) for k in keys])

    module.register_state_dict_post_hook(save_parts)
    module.register_load_state_dict_pre_hook(load_parts)
    return linear
