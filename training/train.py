"""Train a small RetNet chat model from scratch on CPU (the shipped `models/retnet-tiny-chat`).

Pipeline: synthetic chats (training/chat_data.py) -> byte-level BPE tokenizer with a ChatML
template (training/train_tokenizer.py) -> ids plus a loss mask that keeps assistant tokens only
-> AdamW, cosine schedule with warmup, grad clipping, parallel retention form.

Determinism: data, tokenizer, init and batch order are pure functions of the arguments and the
seed; the batch of step s depends only on (seed, s). A run resumed from its checkpoint therefore
takes exactly the steps an uninterrupted run takes (same thread count, same machine).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from engine.checkpoint import DEFAULT_MODEL_DIR, save_model
from engine.config import ModelConfig
from engine.model import RetNet
from engine.tokenizer import Tokenizer, render_chat_template
from training.chat_data import POOLS, generate_conversations, recall_probes
from training.tool_data import tool_chats
from training.train_tokenizer import SPECIAL_TOKENS, train_tokenizer

STATE_FILE = "train_state.pt"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass
class TrainArgs:
    out_dir: str = str(DEFAULT_MODEL_DIR)  # final native checkpoint (save_model + tokenizer)
    ckpt_dir: str = "runs/retnet-tiny-chat"  # resumable state: weights, optimizer, step
    seed: int = 0
    # model: 8 heads rather than 4 because the decays are fixed at gamma_h = 1 - 2^(-5-h);
    # heads 4-7 (memory of 512-4096 tokens) are what carries a fact across 8 turns.
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 8
    qk_dim: int = 256
    v_dim: int = 512
    ffn_dim: int = 768
    chunk_size: int = 64
    # causal conv of this kernel over q/k/v (0 = none): keys that see the previous tokens are
    # what copying a never-seen value rests on (a key "after A" retrieves the piece after A)
    short_conv: int = 4
    short_conv_activation: str = "none"  # "none" keeps an identity-initialised conv exact
    # start from this native checkpoint's weights and tokenizer instead of a random init
    # (parameters it lacks, such as a newly added short conv, keep their init); "" = scratch
    init_from: str = ""
    # upper bound; the model takes the tokenizer's actual size. Small on purpose: rare words
    # (held-out values) split into short pieces that copy more consistently.
    vocab_size: int = 2048
    # data
    num_chats: int = 12000  # general chats from generate_conversations
    num_recall: int = 12000  # recall-focused chats: one fact, 0..max_turns_back fillers, ask
    max_turns_back: int = 10
    # weight of recall chats with 0-2 fillers relative to longer ones: short chats are cheap
    # and teach the retrieval itself; long ones teach keeping a fact across many turns
    short_recall_weight: float = 3.0
    # dense chats: several facts told and asked (often more than once) between fillers, so a
    # row holds many retrievals instead of one; the signal that teaches recall per token spent
    num_dense: int = 16000
    # echo chats: repeat a quoted string of invented words. The densest copy signal there is
    # (every reply token is a copy), which is what grows the previous-token keys of the conv
    num_echo: int = 0
    # tool chats (training/tool_data.py): a request, a call with an argument copied from the
    # chat, the tool's result, an answer repeating it; their tool definitions make them long
    # (~420 tokens on average, up to ~800: raise max_len with them)
    num_tools: int = 0
    # tool chats whose calls all go to the tools copied worst (tool_data.HARD_TOOLS)
    tool_focus_share: float = 0.0
    vowel_onset_share: float = 0.0  # invented words starting with a vowel (see InventedWords)
    # invented words made of random tokenizer pieces rather than syllables (see InventedWords)
    piece_word_share: float = 0.0
    # invented numbers made of the tokenizer's digit tokens ("694" is one token, rarely copied)
    number_piece_share: float = 0.0
    # weight of the loss on every other token (user turns, template). 0 = replies only. A
    # little of it trains copying much faster: user turns repeat (the same questions, told
    # values asked back), and predicting repeats is how induction-style copying is learned.
    user_loss_weight: float = 0.0
    synthetic_share: float = 0.5  # recall chats whose value is an invented word (see below)
    max_len: int = 512
    # optimisation
    steps: int = 1500
    batch_size: int = 16
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # bookkeeping
    ckpt_every: int = 100
    eval_every: int = 250  # teacher-forced held-out recall, a cheap progress signal
    threads: int = 2

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(
            vocab_size=vocab_size, hidden_size=self.hidden_size, num_layers=self.num_layers,
            num_heads=self.num_heads, qk_dim=self.qk_dim, v_dim=self.v_dim, ffn_dim=self.ffn_dim,
            chunk_size=self.chunk_size, tie_embeddings=True,  # 1M fewer params: fits 25 MB
            short_conv=self.short_conv, short_conv_activation=self.short_conv_activation,
        )


# --- data ----------------------------------------------------------------------------------

# Syllables for invented words: varied onsets, nuclei and codas, so invented words split into
# many different tokenizer pieces (as unseen real words do), not a few CV patterns to imitate.
_ONSETS = ("b bl br c ch cl cr d dr f fl fr g gl gr h j k l m n p pl pr qu r s sc sh sk sl sm "
           "sn sp st sw t th tr v w y z").split()
_NUCLEI = "a e i o u a e i o u ai ea ee ie oa oo ou au y".split()
_CODAS = [""] * 12 + "n r s t l m ng ck w x nd st".split()
_HELDOUT = {v.lower() for pool in POOLS.values() for v in pool["heldout"]}
_CAPITALISED = ("name", "city", "pet")


def word_pieces(tok: Tokenizer, digits: bool = False) -> tuple[str, ...]:
    """The tokenizer's purely alphabetic tokens ("ell", "Ber", "q"), or its digit tokens
    ("7", "694"), sorted."""
    pieces = (tok.decode([i]) for i in range(tok.vocab_size))
    keep = str.isdigit if digits else str.isalpha
    return tuple(sorted(p for p in pieces if p.isascii() and keep(p)))


@dataclass(frozen=True)
class InventedWords:
    """Makes values that are never held-out ones: pronounceable non-words ("Blorn", "sneadoo"),
    words of random tokenizer pieces ("Berellq") and numbers ("4821").

    The train pools hold only a few dozen values per kind, few enough to memorise; invented
    values force the model to copy whatever it was told, which is what held-out recall tests.
    vowel_onset_share: words that start with a vowel ("Esme", "indigo" do); with none, a model
    learns that a told value starts with a consonant and mangles the first piece of the others.
    piece_share: words of 2-4 pieces drawn uniformly from `pieces` (word_pieces of the run's
    tokenizer). Syllable words exercise only the pieces syllables tokenize into; a piece never
    copied in training is copied as another one (`Lu|c|ia` -> `Lucjum`, `pa|ell|a` -> `paAa`).
    """

    vowel_onset_share: float = 0.0
    piece_share: float = 0.0
    pieces: tuple[str, ...] = ()
    number_piece_share: float = 0.0  # numbers of 1-2 digit tokens, as piece_share for words
    number_pieces: tuple[str, ...] = ()

    def __call__(self, rng: random.Random, kind: str) -> str:
        while True:
            if kind == "number":
                if self.number_piece_share and rng.random() < self.number_piece_share:
                    value = self._piece_number(rng)
                else:
                    value = str(rng.randint(10, 9999))
            elif self.piece_share and rng.random() < self.piece_share:
                value = self._piece_word(rng, capitalised=kind in _CAPITALISED)
            else:
                value = "".join(rng.choice(_ONSETS) + rng.choice(_NUCLEI) + rng.choice(_CODAS)
                                for _ in range(rng.choice((1, 2, 2, 2, 3))))
                # (no draw at share 0: the same seed gives the same words as before this option)
                if self.vowel_onset_share and rng.random() < self.vowel_onset_share:
                    value = value.lstrip("bcdfghjklmnpqrstvwxyz") or value
                if kind in _CAPITALISED:
                    value = value.capitalize()
            if value.lower() not in _HELDOUT:
                return value

    @cached_property
    def _lower_pieces(self) -> list[str]:
        return [p for p in self.pieces if p.islower()]

    @cached_property
    def _capitalised_pieces(self) -> list[str]:
        return [p for p in self.pieces if p[0].isupper() and p[1:].islower()]

    def _piece_word(self, rng: random.Random, capitalised: bool) -> str:
        if not self.pieces:
            raise ValueError("piece words need the tokenizer's pieces")
        lower = self._lower_pieces
        first = self._capitalised_pieces if capitalised else lower
        return rng.choice(first) + "".join(rng.choice(lower) for _ in range(rng.randint(1, 3)))

    def _piece_number(self, rng: random.Random) -> str:
        if not self.number_pieces:
            raise ValueError("piece numbers need the tokenizer's digit pieces")
        return "".join(rng.choice(self.number_pieces) for _ in range(rng.randint(1, 2)))


def invented_words(args: TrainArgs, tok: Tokenizer | None = None) -> InventedWords:
    """The run's invented words; without a tokenizer (the text a new tokenizer is trained on)
    no piece words, which are made of that tokenizer's pieces and would teach it nothing."""
    if tok is None:
        return InventedWords(args.vowel_onset_share)
    words = word_pieces(tok) if args.piece_word_share else ()
    numbers = word_pieces(tok, digits=True) if args.number_piece_share else ()
    return InventedWords(args.vowel_onset_share, args.piece_word_share, words,
                         args.number_piece_share, numbers)


def build_conversations(args: TrainArgs, invent: InventedWords) -> list[list[dict]]:
    """General chats plus recall chats (answer appended), interleaved deterministically."""
    chats = generate_conversations(args.num_chats, args.seed, split="train")
    rng = random.Random(f"retserve-train-mix:{args.seed}")
    weights = [args.short_recall_weight if k <= 2 else 1.0
               for k in range(args.max_turns_back + 1)]
    recall = []
    for k, weight in enumerate(weights):
        count = math.ceil(args.num_recall * weight / sum(weights))
        for probe in recall_probes(count, k, seed=args.seed, split="train"):
            messages = [dict(m) for m in probe["messages"]]
            answer = probe["answer"]
            if rng.random() < args.synthetic_share:
                new = invent(rng, probe["kind"])
                # the fact is told in the first user message, the only place the value occurs
                messages[0]["content"] = messages[0]["content"].replace(answer, new)
                answer = new
            recall.append(messages + [{"role": "assistant", "content": answer}])
    out = chats + recall[: args.num_recall] + dense_conversations(args, invent) \
        + echo_conversations(args, invent)
    rng.shuffle(out)
    return out


def echo_conversations(args: TrainArgs, invent: InventedWords) -> list[list[dict]]:
    """Chats of 1-3 requests to repeat 1-4 invented words (chat_data's echo phrasings)."""
    rng = random.Random(f"retserve-train-echo:{args.seed}")
    prompts = ('Repeat after me: "{p}"', 'Say "{p}".', 'Please echo "{p}".')
    out = []
    for _ in range(args.num_echo):
        messages: list[dict] = []
        for _ in range(rng.randint(1, 3)):
            words = [invent(rng, rng.choice(("name", "food", "number")))
                     for _ in range(rng.randint(1, 4))]
            phrase = " ".join(words)
            messages += [{"role": "user", "content": rng.choice(prompts).format(p=phrase)},
                         {"role": "assistant", "content": phrase}]
        out.append(messages)
    return out


def dense_conversations(args: TrainArgs, invent: InventedWords) -> list[list[dict]]:
    """Chats of 2-5 facts told, asked and re-asked in a random order with fillers between.

    The pieces (tell, ack, ask, filler texts) come from chat_data's train-split recall probes,
    so the phrasing is the evaluation's; half the values are invented (see InventedWords).
    """
    if not args.num_dense:
        return []
    rng = random.Random(f"retserve-train-dense:{args.seed}")
    bank = recall_probes(args.num_dense * 3, 2, seed=args.seed + 1, split="train")
    fillers = [(p["messages"][i]["content"], p["messages"][i + 1]["content"])
               for p in bank for i in (2, 4)]
    by_kind: dict[str, list[dict]] = {}
    for p in bank:
        by_kind.setdefault(p["kind"], []).append(p)
    out = []
    for _ in range(args.num_dense):
        kinds = rng.sample(sorted(by_kind), rng.randint(2, 5))
        told: dict[str, str] = {}
        messages: list[dict] = []
        for _ in range(rng.randint(len(kinds) + 2, 14)):
            untold = [k for k in kinds if k not in told]
            roll = rng.random()
            if untold and (roll < 0.35 or not told):
                probe = rng.choice(by_kind[untold[0]])
                value = probe["answer"]
                tell = probe["messages"][0]["content"]
                if rng.random() < args.synthetic_share:
                    value = invent(rng, probe["kind"])
                    tell = tell.replace(probe["answer"], value)
                told[probe["kind"]] = value
                turn = (tell, probe["messages"][1]["content"])
            elif told and roll < 0.8:
                kind = rng.choice(sorted(told))
                turn = (rng.choice(by_kind[kind])["messages"][-1]["content"], told[kind])
            else:
                turn = rng.choice(fillers)
            messages += [{"role": "user", "content": turn[0]},
                         {"role": "assistant", "content": turn[1]}]
        out.append(messages)
    return out


def encode_with_mask(tok: Tokenizer, messages: list[dict], tools: list[dict] | None = None
                     ) -> tuple[list[int], list[bool]]:
    """Ids of the rendered chat (offering `tools`, if given) and, per id, whether it is trained
    on (assistant tokens only: replies and tool calls).

    Works for any append-only template: an assistant message's content starts where the
    generation prompt of the chat before it ends. Its end-of-turn token (<|im_end|>) is trained
    so the model learns to stop; what the template writes after it ("\\n") is fed, not
    generated. Pieces are encoded one by one and checked against the whole text's encoding.
    """
    text = tok.apply_chat_template(messages, add_generation_prompt=False, tools=tools)
    tail = len(tok.decode(tok.end_of_turn_ids[1:], skip_special_tokens=False))
    cuts = [0]
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            prompt = (tok.apply_chat_template(messages[:i], add_generation_prompt=True,
                                              tools=tools) if i else "")
            done = tok.apply_chat_template(messages[: i + 1], add_generation_prompt=False,
                                           tools=tools)
            if not text.startswith(prompt) or not text.startswith(done):
                raise ValueError("chat template is not append-only for this conversation")
            cuts += [len(prompt), len(done) - tail]
    cuts.append(len(text))
    ids: list[int] = []
    mask: list[bool] = []
    for j in range(len(cuts) - 1):  # odd pieces are assistant replies
        piece = tok.encode(text[cuts[j]:cuts[j + 1]])
        ids += piece
        mask += [j % 2 == 1] * len(piece)
    if ids != tok.encode(text):
        raise ValueError("reply boundaries split a token: cannot mask replies exactly")
    return ids, mask


class Dataset:
    """Token rows (each a whole chat from position 0) and a deterministic batch plan.

    Chats are never packed: retention has no reset, so a second chat in a row would see the
    first one's facts. Rows are padded instead; sorting within a window of batches keeps the
    padding small.
    """

    def __init__(self, rows: list[tuple[list[int], list[bool]]], batch_size: int, seed: int,
                 pad_id: int, other_weight: float = 0.0):
        self.ids = [torch.tensor(r[0]) for r in rows]
        self.masks = [torch.tensor(r[1]) for r in rows]
        self.lengths = np.array([len(r[0]) for r in rows])
        self.batch_size, self.seed, self.pad_id = batch_size, seed, pad_id
        self.other_weight = other_weight
        self.batches_per_epoch = len(rows) // batch_size
        self._plan: tuple[int, list[np.ndarray]] | None = None

    def _epoch_plan(self, epoch: int) -> list[np.ndarray]:
        if self._plan is None or self._plan[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.ids))
            window = self.batch_size * 64
            batches = []
            for start in range(0, self.batches_per_epoch * self.batch_size, window):
                chunk = order[start:start + window]
                chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
                batches += [chunk[i:i + self.batch_size]
                            for i in range(0, len(chunk) - self.batch_size + 1, self.batch_size)]
            self._plan = (epoch, [batches[i] for i in rng.permutation(len(batches))])
        return self._plan[1]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [B, T], loss weights [B, T]) of step `step`: a function of (seed, step) only.

        Weight 1 on reply tokens, `other_weight` on the rest of a chat, 0 on padding."""
        plan = self._epoch_plan(step // self.batches_per_epoch)
        rows = plan[step % self.batches_per_epoch]
        length = int(self.lengths[rows].max())
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        weights = torch.zeros((len(rows), length))
        for j, r in enumerate(rows):
            ids[j, : self.lengths[r]] = self.ids[r]
            weights[j, : self.lengths[r]] = torch.where(self.masks[r], 1.0, self.other_weight)
        return ids, weights


def train_chat_tokenizer(out_dir: Path, conversations: list[list[dict]], vocab_size: int) -> None:
    """training/train_tokenizer.train_tokenizer (ChatML template, special tokens, config file),
    with one change to tokenizer.json: a space is always a token of its own.

    Why: GPT-2 style BPE glues the space to the word, so a value told mid-sentence ("is Anika"
    -> "ĠA","n","ika") and the same value answered at the start of a reply ("A","n","ika", or a
    different split altogether) share no tokens. A tiny model then cannot copy it; it has to
    spell. With spaces split off, a word has one tokenization wherever it stands, and recall is
    plain copying (about 1.4x more tokens per chat: the price).
    """
    train_tokenizer(out_dir, conversations, vocab_size=vocab_size)
    config = json.loads((out_dir / "tokenizer_config.json").read_text("utf-8"))
    split = re.compile("(" + "|".join(map(re.escape, SPECIAL_TOKENS)) + ")")

    def texts():
        for messages in conversations:
            rendered = render_chat_template(config["chat_template"], messages, False)
            yield from (p for p in split.split(rendered) if p and p not in SPECIAL_TOKENS)

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts(), trainer=trainer)
    for token_id, spec in config["added_tokens_decoder"].items():  # same special ids
        assert tok.token_to_id(spec["content"]) == int(token_id), spec
    tok.save(str(out_dir / "tokenizer.json"))


def prepare_data(args: TrainArgs, tokenizer_dir: Path) -> tuple[Tokenizer, Dataset]:
    conversations = None
    if not (tokenizer_dir / "tokenizer.json").is_file():  # resume reuses the run's tokenizer
        conversations = build_conversations(args, invented_words(args))
        train_chat_tokenizer(tokenizer_dir, conversations, vocab_size=args.vocab_size)
    tok = Tokenizer.from_dir(tokenizer_dir)
    if conversations is None or args.piece_word_share or args.number_piece_share:
        # piece words need the tokenizer
        conversations = build_conversations(args, invented_words(args, tok))
    rows = [encode_with_mask(tok, c) for c in conversations]
    if args.num_tools:
        invent = invented_words(args, tok)
        rows += [encode_with_mask(tok, c.messages, c.tools)
                 for c in tool_chats(args.num_tools, args.seed, invent, args.synthetic_share,
                                      args.tool_focus_share)]
    rows = [r for r in rows if len(r[0]) <= args.max_len]
    return tok, Dataset(rows, args.batch_size, args.seed, tok.eos_token_id or 0,
                        args.user_loss_weight)


# --- model and optimisation ----------------------------------------------------------------

def init_model(config: ModelConfig, seed: int) -> RetNet:
    """GPT-2 style init: N(0, 0.02), residual outputs scaled by 1/sqrt(2L). The nn defaults
    (N(0, 1) embeddings) would start a tied head with logits of std ~16."""
    torch.manual_seed(seed)
    model = RetNet(config)
    out_std = 0.02 / math.sqrt(2 * config.num_layers)
    for name, p in model.named_parameters():
        if p.dim() == 2:
            std = out_std if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            torch.nn.init.normal_(p, 0.0, std)
    return model


def load_initial_weights(model: RetNet, path: Path) -> None:
    """Weights of a native checkpoint of the same shape; only new short-conv taps may be
    missing from it (they keep their identity init, so the start computes what it computed)."""
    from safetensors.torch import load_file

    weights = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or any(not k.endswith("qkv_conv.weight") for k in missing):
        raise ValueError(f"{path} does not fit this model: missing {missing}, "
                         f"unexpected {unexpected}")


def make_optimizer(model: RetNet, args: TrainArgs) -> torch.optim.AdamW:
    # matrices only: not norms, biases or the short conv's few taps
    decay = [p for p in model.parameters() if p.dim() == 2]
    rest = [p for p in model.parameters() if p.dim() != 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                              {"params": rest, "weight_decay": 0.0}],
                             lr=args.lr, betas=(0.9, 0.95), eps=1e-8)


def lr_at(step: int, args: TrainArgs) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min((step - args.warmup) / max(args.steps - args.warmup, 1), 1.0)
    floor = args.lr * args.min_lr_ratio
    return floor + (args.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def losses(model: RetNet, ids: torch.Tensor, weights: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted mean next-token cross-entropy, the same over reply tokens only, detached)."""
    logits = model.forward_parallel(ids[:, :-1])
    nll = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
    w = weights[:, 1:].flatten().to(nll.dtype)
    reply = w == 1.0
    return (nll * w).sum() / w.sum().clamp_min(1e-8), nll.detach()[reply].mean()


def masked_loss(model: RetNet, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return losses(model, ids, weights)[0]


@torch.no_grad()
def teacher_forced_recall(model: RetNet, tok: Tokenizer, n: int = 16, seed: int = 7
                          ) -> dict[str, float]:
    """Share of held-out probes whose answer (the last reply and its end-of-turn token) is all
    argmax given the true prefix. Earlier replies are context, not scored."""
    model.eval()
    out = {}
    for k in (1, 2, 4, 8):
        hits = 0
        for probe in recall_probes(n, k, seed=seed):
            chat = probe["messages"] + [{"role": "assistant", "content": probe["answer"]}]
            ids, mask = encode_with_mask(tok, chat)
            start = max(i for i, m in enumerate(mask) if m)  # back to the last reply's start
            while mask[start - 1]:
                start -= 1
            mask = [m and i >= start for i, m in enumerate(mask)]
            ids, mask = torch.tensor([ids]), torch.tensor(mask)
            pred = model.forward_parallel(ids[:, :-1])[0].argmax(-1)
            hits += bool((pred[mask[1:]] == ids[0, 1:][mask[1:]]).all())
        out[f"tf_recall_{k}"] = hits / n
    model.train()
    return out


def _save_state(path: Path, model, optimizer, step: int, args: TrainArgs, log: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "args": dataclasses.asdict(args), "log": log}, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a half checkpoint


def train(args: TrainArgs, *, resume: bool = False, stop_at: int | None = None,
          progress: bool = True, export: bool = True) -> dict:
    """Train until `args.steps` (or `stop_at`), checkpointing to ckpt_dir; returns the log.

    resume: continue from ckpt_dir/train_state.pt (its step, weights, optimizer, tokenizer).
    export: write the native checkpoint (config.json, model.safetensors, tokenizer) to out_dir.
    """
    torch.set_num_threads(args.threads)
    ckpt_dir = Path(args.ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state_path = ckpt_dir / STATE_FILE
    saved = torch.load(state_path, weights_only=False) if resume and state_path.is_file() else None
    if not saved:  # a fresh run must not pick up an older run's tokenizer
        shutil.rmtree(ckpt_dir / "tokenizer", ignore_errors=True)
        if args.init_from:  # the initial weights only make sense with their own vocabulary
            (ckpt_dir / "tokenizer").mkdir()
            for name in TOKENIZER_FILES:
                shutil.copy(Path(args.init_from) / name, ckpt_dir / "tokenizer" / name)

    t0 = time.perf_counter()
    tok, data = prepare_data(args, ckpt_dir / "tokenizer")
    model = init_model(args.model_config(tok.vocab_size), args.seed)
    if args.init_from and not saved:
        load_initial_weights(model, Path(args.init_from))
    optimizer = make_optimizer(model, args)
    step, log = 0, {"losses": [], "evals": [], "train_seconds": 0.0}
    if saved:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        step, log = saved["step"], saved["log"]
    log["data_seconds"] = round(time.perf_counter() - t0, 1)
    log["num_params"] = sum(p.numel() for p in model.parameters())
    log["num_rows"] = len(data.ids)
    (ckpt_dir / "args.json").write_text(json.dumps(dataclasses.asdict(args), indent=2) + "\n")

    end = min(args.steps, stop_at if stop_at is not None else args.steps)
    model.train()
    # a log file (nohup) gets a line every 30 s instead of one per step
    bar = tqdm(total=end, initial=step, disable=not progress, desc="train", unit="step",
               mininterval=0.5 if sys.stderr.isatty() else 30)
    t_last = time.perf_counter()
    while step < end:
        ids, weights = data.batch(step)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args)
        loss, reply_loss = losses(model, ids, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        step += 1
        log["losses"].append(round(loss.item(), 5))
        log.setdefault("reply_losses", []).append(round(reply_loss.item(), 5))
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", gnorm=f"{grad_norm.item():.2f}",
                        lr=f"{lr_at(step - 1, args):.2e}", refresh=False)
        now = time.perf_counter()
        log["train_seconds"] += now - t_last
        t_last = now
        if args.eval_every and step % args.eval_every == 0:
            log["evals"].append({"step": step, **teacher_forced_recall(model, tok)})
            bar.write(json.dumps(log["evals"][-1]))
            t_last = time.perf_counter()  # eval time is not training time
        if step % args.ckpt_every == 0 or step == end:
            _save_state(state_path, model, optimizer, step, args, log)
    bar.close()

    log["step"] = step
    recent = log["losses"][-50:]
    log["final_loss"] = round(sum(recent) / max(len(recent), 1), 4)
    recent = log.get("reply_losses", [])[-50:]
    log["final_reply_loss"] = round(sum(recent) / max(len(recent), 1), 4)
    if export and step >= args.steps:
        export_model(model, ckpt_dir / "tokenizer", Path(args.out_dir), args, log)
    return log


def export_model(model: RetNet, tokenizer_dir: Path, out_dir: Path, args: TrainArgs,
                 log: dict) -> None:
    """The native checkpoint: config.json + model.safetensors + tokenizer files + a summary."""
    save_model(model, out_dir)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, out_dir / name)
    summary = {"args": dataclasses.asdict(args), "steps": log["step"],
               "final_loss": log["final_loss"], "final_reply_loss": log["final_reply_loss"],
               "num_params": log["num_params"],
               "train_seconds": round(log["train_seconds"], 1), "evals": log["evals"]}
    (out_dir / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
