"""`retserve convert {torchscale,fla}`: published RetNet checkpoints -> a native checkpoint dir."""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path

_DTYPES = ("auto", "float32", "bfloat16", "float16")


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert a torchscale or fla RetNet checkpoint")
    kinds = p.add_subparsers(dest="source", required=True)

    ts = kinds.add_parser("torchscale", help="RetNetConfig kwargs JSON + RetNetDecoder state dict")
    ts.add_argument("--config", required=True, type=Path, help="JSON of RetNetConfig kwargs")
    ts.add_argument("--state-dict", required=True, type=Path,
                    help="torch.save(decoder.state_dict()) file")
    ts.add_argument("--tokenizer-dir", type=Path, help="copy tokenizer files from here")
    ts.set_defaults(func=_run)

    fla = kinds.add_parser("fla", help="flash-linear-attention RetNet HF directory")
    fla.add_argument("--src", required=True, type=Path, help="dir with config.json + safetensors")
    fla.set_defaults(func=_run)

    for q in (ts, fla):
        q.add_argument("--out", required=True, type=Path, help="native checkpoint dir to write")
        q.add_argument("--dtype", choices=_DTYPES, default="auto",
                       help="weights dtype to store (auto: as in the source)")


def _convert(args):
    """-> (config, state_dict, tokenizer files); CheckpointError on refusal."""
    from engine.checkpoint import CheckpointError

    if args.source == "fla":
        from engine.convert_fla import convert_fla

        return convert_fla(args.src)

    import torch

    from engine.convert_fla import TOKENIZER_FILES
    from engine.convert_torchscale import convert_torchscale

    try:
        config_json = json.loads(args.config.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read --config {args.config}: {e}") from e
    try:
        # weights_only: a state dict is tensors, never arbitrary pickled code
        state_dict = torch.load(args.state_dict, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's own message is a page long
        raise CheckpointError(f"cannot read --state-dict {args.state_dict}: not a torch.save'd "
                              "dict of tensors (weights-only load refused it)") from e
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"cannot read --state-dict {args.state_dict}: {e}") from e
    if isinstance(state_dict, dict) and isinstance(state_dict.get("model"), dict):
        state_dict = state_dict["model"]  # a fairseq checkpoint: weights under "model"
    if not isinstance(config_json, dict) or not isinstance(state_dict, dict):
        raise CheckpointError("--config must hold a JSON object and --state-dict a state dict")
    config, sd = convert_torchscale(config_json, state_dict)
    tok_dir = args.tokenizer_dir
    files = [tok_dir / n for n in TOKENIZER_FILES if (tok_dir / n).is_file()] if tok_dir else []
    return config, sd, files


def _run(args) -> int:
    import torch

    from engine.checkpoint import CheckpointError, build_model, save_model

    try:
        config, state_dict, tokenizer_files = _convert(args)
        first = next(iter(state_dict.values()))
        dtype = first.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
        model = build_model(config, state_dict, dtype=dtype)
    except CheckpointError as e:
        print(f"retserve convert: refused: {e}", file=sys.stderr)
        return 2
    save_model(model, args.out)
    for f in tokenizer_files:
        shutil.copy2(f, args.out / f.name)
    print(f"wrote {args.out} ({sum(t.numel() for t in state_dict.values()):,} params, "
          f"{str(dtype).removeprefix('torch.')}, tokenizer files: "
          f"{[f.name for f in tokenizer_files] or 'none'})")
    return 0
