"""`retserve train`: train the small RetNet chat model from scratch (see training/train.py).

Every TrainArgs field is a flag (`--hidden-size 256`, `--steps 1000`, ...). `--resume` continues
from `--ckpt-dir` with the saved run's arguments, except the flags given on this command line.
"""

from __future__ import annotations

import dataclasses
import json
import sys


def register(sub) -> None:
    from training.train import TrainArgs  # the flags are its fields (imports torch)

    p = sub.add_parser("train", help="train a RetNet chat model from scratch (CPU)")
    for field in dataclasses.fields(TrainArgs):
        p.add_argument("--" + field.name.replace("_", "-"), type=type(field.default),
                       default=None, help=f"default: {field.default}")
    p.add_argument("--resume", action="store_true",
                   help="continue from CKPT_DIR/train_state.pt (same data, same schedule)")
    p.add_argument("--stop-at", type=int, default=None, help="stop (and checkpoint) at this step")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from training.train import STATE_FILE, TrainArgs, train

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainArgs)
             if getattr(args, f.name) is not None}
    base = TrainArgs(**given)
    if args.resume:  # the saved run's arguments, overridden by what this command line says
        import torch

        path = f"{base.ckpt_dir}/{STATE_FILE}"
        try:
            saved = torch.load(path, weights_only=False)["args"]
        except FileNotFoundError:
            print(f"nothing to resume: {path} does not exist", file=sys.stderr)
            return 1
        base = TrainArgs(**{**saved, **given})
    log = train(base, resume=args.resume, stop_at=args.stop_at, progress=not args.no_progress)
    print(json.dumps({k: log[k] for k in ("step", "final_loss", "final_reply_loss", "num_params",
                                                 "num_rows")}
                     | {"train_seconds": round(log["train_seconds"], 1),
                        "evals": log["evals"][-1:]}))
    return 0
