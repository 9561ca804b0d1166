"""`retserve eval recall [--json]`: held-out fact recall 1, 2, 4, 8 turns back (see
training/eval_recall.py); the JSON ends with `summary` {recall_1, recall_2, recall_4, recall_8}."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint (recall across turns)")
    p.add_argument("task", choices=["recall"])
    p.add_argument("--model", default=None, help="checkpoint directory (default: shipped model)")
    p.add_argument("-n", "--num-probes", type=int, default=50, help="probes per distance")
    p.add_argument("--turns-back", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--split", choices=["heldout", "train"], default="heldout",
                   help="fact values: held-out (the measure) or the training pools (diagnostic)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print only the JSON result")
    p.set_defaults(func=_run)


def _run(args) -> int:
    import torch

    from training.eval_recall import evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    result = evaluate(args.model, n=args.num_probes, distances=tuple(args.turns_back),
                      seed=args.seed, max_new_tokens=args.max_new_tokens,
                      progress=not args.json, split=args.split)
    print(json.dumps(result, indent=2))
    return 0
