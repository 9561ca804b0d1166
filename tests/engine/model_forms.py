"""Logits of a model in all three forms, for the suites that compare them with a reference."""

import torch


@torch.no_grad()
def all_forms(model, tokens):
    """(parallel, recurrent, chunkwise) logits of `model` on tokens [B, T]."""
    state, steps = model.empty_state(tokens.shape[0]), []
    for t in range(tokens.shape[1]):
        logits, state = model.step(tokens[:, t], state)
        steps.append(logits)
    return model.forward_parallel(tokens), torch.stack(steps, 1), model.prefill(tokens)[0]
