"""torchscale 0.3.0 RetNet -> native: converted logits equal torchscale's own, refusals are clear.

The reference is tests/engine/torchscale_reference.py, an independent reference of torchscale
0.3.0's math (the real package needs timm -> torchvision, which doesn't install beside our torch).
"""

from __future__ import annotations

import json

import pytest
import torch
import torchscale_reference as ts_ref  # pytest puts tests/engine (no __init__.py) on sys.path
from model_forms import all_forms  # tests/engine is on sys.path (no __init__.py)

from engine.checkpoint import CheckpointError, build_model, load_model
from engine.convert_torchscale import convert_torchscale
from server.cli import main as cli_main

TOL = 1e-4
T = 20

BASE = dict(decoder_embed_dim=32, decoder_value_embed_dim=64, decoder_retention_heads=2,
            decoder_ffn_embed_dim=48, decoder_layers=2, vocab_size=61)
CASES = {
    "gelu-untied": {},
    "swish-tied-embnorm-scaled": dict(activation_fn="swish", share_decoder_input_output_embed=True,
                                      layernorm_embedding=True, no_scale_embedding=False),
    "4heads-v=d-3layers": dict(decoder_embed_dim=48, decoder_value_embed_dim=48,
                               decoder_retention_heads=4, decoder_ffn_embed_dim=40,
                               decoder_layers=3, layernorm_eps=1e-5),
    "1head-training-keys": dict(decoder_retention_heads=1, dropout=0.1, drop_path_rate=0.1,
                                activation_dropout=0.1, checkpoint_activations=True,
                                chunkwise_recurrent=False, recurrent_chunk_size=8, subln=True),
}


def make_torchscale(kwargs: dict, seed: int = 0, qk_gain: float = 1.0):
    """A torchscale decoder with its own init; norm weights perturbed so a swapped norm shows."""
    torch.manual_seed(seed)
    args = ts_ref.RetNetConfig(**kwargs)
    embed = torch.nn.Embedding(args.vocab_size, args.decoder_embed_dim)
    torch.nn.init.normal_(embed.weight, 0, args.decoder_embed_dim**-0.5)  # fairseq's Embedding
    decoder = ts_ref.RetNetDecoder(args, embed_tokens=embed).eval()
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if "norm" in name:
                p.mul_(1 + 0.2 * torch.randn_like(p))
            if "q_proj" in name or "k_proj" in name:
                p.mul_(qk_gain)
    return decoder


@torch.no_grad()
def torchscale_logits(decoder, tokens):
    """(parallel, recurrent): recurrent stepped from token 0, one token per call, as in
    fairseq's incremental decoding (an empty incremental_state, the growing prefix each step)."""
    parallel = decoder(tokens)[0]
    state: dict = {}
    steps = [decoder(tokens[:, : t + 1], incremental_state=state)[0][:, -1]
             for t in range(tokens.shape[1])]
    return parallel, torch.stack(steps, 1)


def convert(kwargs, decoder):
    sd = {k: v.clone() for k, v in decoder.state_dict().items()}
    config, native = convert_torchscale(kwargs, sd)
    return build_model(config, native)


def random_tokens(vocab: int, shape: tuple[int, int], seed: int = 1):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_torchscale(name):
    kwargs = {**BASE, **CASES[name]}
    decoder = make_torchscale(kwargs)
    model = convert(kwargs, decoder)
    tokens = random_tokens(kwargs["vocab_size"], (2, T))
    ts_par, ts_rec = torchscale_logits(decoder, tokens)
    ours_par, ours_rec, ours_chunk = all_forms(model, tokens)
    assert ts_par.abs().max() > 0.5  # not trivially small logits
    for ours in (ours_par, ours_rec, ours_chunk):
        assert max_diff(ours, ts_rec) <= TOL
        assert max_diff(ours, ts_par) <= TOL


def test_large_qk_parallel_normalisation_is_torchscales_own_gap():
    """torchscale's parallel form also divides q.k rows by max(1, |row sum|); its recurrent form
    doesn't, and we follow the recurrent one. The per-head RMSNorm cancels that division up to eps,
    so with large q/k (row sums > 1) torchscale's two forms drift apart a little; ours stays on
    the recurrent one and is as far from torchscale-parallel as torchscale-recurrent is."""
    kwargs = {**BASE, "decoder_retention_heads": 4}
    decoder = make_torchscale(kwargs, qk_gain=10.0)
    model = convert(kwargs, decoder)
    tokens = random_tokens(kwargs["vocab_size"], (1, 48), seed=2)
    ts_par, ts_rec = torchscale_logits(decoder, tokens)
    ours_par, ours_rec, _ = all_forms(model, tokens)
    assert max_diff(ours_par, ts_rec) <= TOL and max_diff(ours_rec, ts_rec) <= TOL
    gap = max_diff(ts_par, ts_rec)
    assert gap > TOL  # measured 4.3e-4 here; 2e-6 at torchscale's own init (the cases above)
    assert abs(max_diff(ours_par, ts_par) - gap) <= TOL
    assert gap < 1e-2  # small: only eps * (row sum**2 - 1) survives the head norm


def test_fairseq_prefix_and_duplicate_tied_weight():
    kwargs = {**BASE, "share_decoder_input_output_embed": True}
    decoder = make_torchscale(kwargs)
    sd = {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    assert "decoder.output_projection.weight" in sd  # torch keeps both names of a tied weight
    config, native = convert_torchscale(kwargs, sd)
    assert config.tie_embeddings and "lm_head.weight" not in native
    del sd["decoder.output_projection.weight"]
    convert_torchscale(kwargs, sd)  # a deduplicated tied copy is fine too


def _sd(kwargs=BASE):
    return {k: v.clone() for k, v in make_torchscale(kwargs).state_dict().items()}


@pytest.mark.parametrize("change, message", [
    (dict(deepnorm=True), "deepnorm"),
    (dict(subln=False, decoder_normalize_before=False), "decoder_normalize_before"),
    (dict(moe_freq=2, moe_expert_count=4), "moe_freq"),
    (dict(multiway=True), "multiway"),
    (dict(no_output_layer=True), "no_output_layer"),
    (dict(activation_fn="relu"), "activation_fn"),
    (dict(my_new_flag=1), "unknown keys"),
])
def test_refuses_config(change, message):
    with pytest.raises(CheckpointError, match=message):
        convert_torchscale({**BASE, **change}, _sd())


def test_subln_default_is_accepted():
    # RetNetConfig defaults subln=True; RetNet never reads it beyond forcing pre-norm
    assert convert_torchscale({**BASE, "subln": True}, _sd())[0].num_layers == 2


def test_refuses_bad_tensors():
    sd = _sd()
    del sd["layers.1.ffn.gate.weight"]
    with pytest.raises(CheckpointError, match=r"missing=\['layers.1.ffn.gate.weight'\]"):
        convert_torchscale(BASE, sd)
    sd = _sd()
    sd["layers.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unexpected"):
        convert_torchscale(BASE, sd)
    sd = _sd()
    sd["layers.0.retention.v_proj.weight"] = torch.zeros(63, 32)
    with pytest.raises(CheckpointError, match="v_proj.weight: \\(63, 32\\) != \\(64, 32\\)"):
        convert_torchscale(BASE, sd)
    # weights of a 2-head model under a 4-head config: shapes agree, the rel-pos buffers don't
    with pytest.raises(CheckpointError, match="retnet_rel_pos"):
        convert_torchscale({**BASE, "decoder_retention_heads": 4}, _sd())
    sd = _sd({**BASE, "share_decoder_input_output_embed": True})
    sd["output_projection.weight"] = sd["output_projection.weight"] + 1
    with pytest.raises(CheckpointError, match="differs"):
        convert_torchscale({**BASE, "share_decoder_input_output_embed": True}, sd)


def test_cli_round_trip_and_refusal(tmp_path, capsys):
    kwargs = {**BASE, **CASES["swish-tied-embnorm-scaled"]}
    decoder = make_torchscale(kwargs)
    (tmp_path / "cfg.json").write_text(json.dumps(kwargs))
    torch.save(decoder.state_dict(), tmp_path / "sd.pt")
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer_config.json").write_text("{}")
    out = tmp_path / "out"
    argv = ["convert", "torchscale", "--config", str(tmp_path / "cfg.json"),
            "--state-dict", str(tmp_path / "sd.pt"), "--tokenizer-dir", str(tok), "--out", str(out)]
    assert cli_main(argv) == 0
    assert (out / "tokenizer_config.json").is_file()
    tokens = random_tokens(kwargs["vocab_size"], (1, 12))
    _, ts_rec = torchscale_logits(decoder, tokens)
    assert max_diff(load_model(out).forward_parallel(tokens), ts_rec) <= TOL

    (tmp_path / "cfg.json").write_text(json.dumps({**kwargs, "deepnorm": True}))
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("retserve convert: refused:") and "deepnorm" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
