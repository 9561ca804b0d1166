"""`retserve eval recall [--json]`: held-out fact recall 1, 2, 4, 8 turns back (see
training/eval_recall.py); the JSON ends with `summary` {recall_1, recall_2, recall_4, recall_8}.

`retserve eval tools [--json]`: held-out tool use (see training/eval_tools.py); `summary`
{tool_call_valid, tool_args_exact, answer_from_tool, text_when_no_tool_applies}."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint (recall across turns, tool use)")
    p.add_argument("task", choices=["recall", "tools"])
    p.add_argument("--model", default=None, help="checkpoint directory (default: shipped model)")
    p.add_argument("-n", "--num-probes", type=int, default=None,
                   help="probes per distance (recall, default 50); probes (tools, default 100)")
    p.add_argument("--num-controls", type=int, default=50,
                   help="tools: requests no tool serves, tools offered")
    p.add_argument("--turns-back", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--seed", type=int, default=None, help="default: 1234 (recall), 4321 (tools)")
    p.add_argument("--split", choices=["heldout", "train"], default="heldout",
                   help="fact values: held-out (the measure) or the training pools (diagnostic)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print only the JSON result")
    p.set_defaults(func=_run)


def _run(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.task == "tools":
        from training.eval_tools import MAX_NEW_TOKENS
        from training.eval_tools import evaluate as evaluate_tools

        result = evaluate_tools(args.model, n=args.num_probes or 100,
                                seed=4321 if args.seed is None else args.seed,
                                num_controls=args.num_controls,
                                max_new_tokens=max(args.max_new_tokens, MAX_NEW_TOKENS),
                                progress=not args.json)
        print(json.dumps(result, indent=2))
        return 0
    from training.eval_recall import evaluate

    result = evaluate(args.model, n=args.num_probes or 50, distances=tuple(args.turns_back),
                      seed=1234 if args.seed is None else args.seed,
                      max_new_tokens=args.max_new_tokens, progress=not args.json,
                      split=args.split)
    print(json.dumps(result, indent=2))
    return 0
