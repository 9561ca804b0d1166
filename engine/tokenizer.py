"""Tokenizer + chat template for a checkpoint directory, and streaming detokenization.

A checkpoint directory holds HF-style files: `tokenizer.json` (the `tokenizers` model) and
`tokenizer_config.json` (`chat_template`, `bos_token`, `eos_token`, optional `stop_tokens`), or a
`chat_template.jinja` next to them. Chat templates render exactly as in HF transformers'
`apply_chat_template`, so any HF chat checkpoint's template gives the same prompt here.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer

Message = Mapping[str, Any]

_REPLY_SENTINEL = "RETSERVEREPLYSENTINEL"
# far past any message shape (tool calls nest four deep); keeps every walk over a message bounded
_MAX_MESSAGE_DEPTH = 32


class ChatTemplateError(ValueError):
    """Messages the chat template refuses (bad role, bad content), or a broken template."""


@lru_cache(maxsize=16)
def compile_chat_template(source: str) -> jinja2.Template:
    """Compile a chat template in the same environment HF transformers uses."""

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # HF overrides jinja's tojson, which HTML-escapes and would change the prompt text.
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"chat template does not compile: {exc}") from exc


def render_chat_template(
    source: str, messages: Sequence[Message], add_generation_prompt: bool = True,
    tools: Sequence[Mapping[str, Any]] | None = None, **variables: Any
) -> str:
    """Render `messages` (and `tools`: function definitions, HF's convention) with a template
    source; template errors become ChatTemplateError."""
    try:
        return compile_chat_template(source).render(
            messages=messages,
            tools=tools or None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(str(exc)) from exc


def _validate_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Shape checks every template needs; which roles are allowed is the template's business."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ChatTemplateError("messages must be a non-empty list")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"messages[{i}] must be an object")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise ChatTemplateError(f"messages[{i}].role must be a non-empty string")
        if not isinstance(content, str):
            raise ChatTemplateError(f"messages[{i}].content must be a string")
        _check_unicode(message, f"messages[{i}]")
        checked.append(dict(message))
    return checked


def _check_unicode(value: Any, where: str, depth: int = 0) -> None:
    """Every string (keys too) encodable, nesting bounded: anything a template may render."""
    if isinstance(value, str):
        if not value.isascii() and (bad := _lone_surrogate(value)) is not None:
            raise ChatTemplateError(f"{where} holds a lone surrogate (U+{ord(bad):04X}); "
                                    f"text must be valid Unicode")
    elif isinstance(value, (Mapping, list, tuple)):
        if depth >= _MAX_MESSAGE_DEPTH:
            raise ChatTemplateError(f"{where} is nested deeper than {_MAX_MESSAGE_DEPTH} levels")
        if isinstance(value, Mapping):
            for key, item in value.items():
                _check_unicode(key, f"{where} key", depth + 1)
                _check_unicode(item, f"{where}.{key}", depth + 1)
        else:
            for j, item in enumerate(value):
                _check_unicode(item, f"{where}[{j}]", depth + 1)


def _validate_tools(tools: Sequence[Mapping[str, Any]] | None) -> list[Any] | None:
    if not tools:
        return None
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise ChatTemplateError("tools must be a list")
    if not all(isinstance(tool, Mapping) for tool in tools):
        raise ChatTemplateError("tools must be a list of objects")
    _check_unicode(list(tools), "tools")
    return list(tools)


def _lone_surrogate(text: str) -> str | None:
    # JSON's "\ud800" escape parses to one; tokenizers (and UTF-8) cannot take it
    try:
        text.encode()
    except UnicodeEncodeError as e:
        return text[e.start]
    return None


def _token_content(value: Any) -> str | None:
    # tokenizer_config.json writes special tokens as a string or as an AddedToken dict.
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _load_chat_template(path: Path, config: Mapping[str, Any]) -> str | None:
    jinja_file = path / "chat_template.jinja"  # newer HF checkpoints keep it in its own file
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        template = named.get("default")
    return template if isinstance(template, str) else None


class Tokenizer:
    """Text <-> ids, plus the chat template and the ids the engine needs around a reply."""

    def __init__(
        self,
        hf_tokenizer: HFTokenizer,
        chat_template: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        extra_stop_tokens: Iterable[str] = (),
    ) -> None:
        self._tok = hf_tokenizer
        # A twin that reads special-token text as plain text: user content must not be able to
        # inject control tokens such as <|im_end|> (a second instance is thread-safe, toggling
        # the flag on one shared instance would not be).
        self._literal_tok = HFTokenizer.from_str(hf_tokenizer.to_str())
        self._literal_tok.encode_special_tokens = True
        self.chat_template = chat_template
        self.bos_token = bos_token
        self.eos_token = eos_token
        added = hf_tokenizer.get_added_tokens_decoder()
        self.special_token_ids = frozenset(i for i, t in added.items() if t.special)
        self._special_tokens = sorted(
            (t.content for t in added.values() if t.special), key=len, reverse=True
        )
        self.bos_token_id = self._single_id(bos_token) if bos_token else None
        self.eos_token_id = self._single_id(eos_token) if eos_token else None
        self.end_of_turn_ids = self._find_end_of_turn_ids()
        stop = {self.eos_token_id} | {self._single_id(t) for t in extra_stop_tokens}
        if self.end_of_turn_ids and self.end_of_turn_ids[0] in self.special_token_ids:
            stop.add(self.end_of_turn_ids[0])  # e.g. <|im_end|>, <|eot_id|>
        self.stop_token_ids = frozenset(i for i in stop if i is not None)

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        hf_tokenizer = HFTokenizer.from_file(str(path / "tokenizer.json"))
        config_file = path / "tokenizer_config.json"
        config = json.loads(config_file.read_text("utf-8")) if config_file.is_file() else {}
        stop_tokens = [_token_content(t) for t in config.get("stop_tokens", [])]
        # generation_config.json may list several eos ids (HF's way of naming end-of-turn ids).
        gen_file = path / "generation_config.json"
        if gen_file.is_file():
            eos_ids = json.loads(gen_file.read_text("utf-8")).get("eos_token_id", [])
            eos_ids = eos_ids if isinstance(eos_ids, list) else [eos_ids]
            stop_tokens += [hf_tokenizer.id_to_token(i) for i in eos_ids if isinstance(i, int)]
        return cls(
            hf_tokenizer,
            chat_template=_load_chat_template(path, config),
            bos_token=_token_content(config.get("bos_token")),
            eos_token=_token_content(config.get("eos_token")),
            extra_stop_tokens=[t for t in stop_tokens if t],
        )

    def _single_id(self, token: str) -> int:
        token_id = self._tok.token_to_id(token)
        if token_id is None:
            raise ValueError(f"token {token!r} is not in the vocabulary")
        return token_id

    def to_json(self) -> str:
        """The `tokenizer.json` text (what llguidance builds its token trie from)."""
        return self._tok.to_str()

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; special-token text becomes its special id. BOS comes from templates.
        ValueError for text that is not valid Unicode (a lone surrogate)."""
        try:
            return self._tok.encode(text, add_special_tokens=False).ids
        except TypeError:  # tokenizers says "must be str" of a str with a lone surrogate
            if isinstance(text, str) and (bad := _lone_surrogate(text)) is not None:
                raise ValueError(f"text holds a lone surrogate (U+{ord(bad):04X}); "
                                 f"it must be valid Unicode") from None
            raise

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self, messages: Sequence[Message], add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        if self.chat_template is None:
            raise ChatTemplateError("this checkpoint has no chat template")
        return render_chat_template(
            self.chat_template,
            _validate_messages(messages),
            add_generation_prompt,
            _validate_tools(tools),
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )

    def encode_chat(
        self, messages: Sequence[Message], add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        """Ids of the rendered chat, where only the template itself can emit special tokens.

        Special-token text inside message fields (and tool definitions) is swapped for digit
        placeholders before rendering (digits survive filters like trim/upper) and encoded as
        plain text after, the way HF's `sanitize_special_tokens` does. Without such text this
        equals `encode(apply_chat_template(messages, tools=tools))`.
        """
        substitutions: dict[str, str] = {}
        messages = [self._sanitize(m, substitutions) for m in _validate_messages(messages)]
        tools = self._sanitize(_validate_tools(tools), substitutions)
        rendered = self.apply_chat_template(messages, add_generation_prompt, tools)
        if not substitutions:
            return self.encode(rendered)
        ids: list[int] = []
        pattern = "(" + "|".join(map(re.escape, substitutions)) + ")"
        for i, part in enumerate(re.split(pattern, rendered)):
            if i % 2:  # the split keeps placeholders at odd positions
                ids += self._literal_tok.encode(substitutions[part], add_special_tokens=False).ids
            elif part:
                ids += self.encode(part)
        return ids

    def encode_chat_continuation(
        self, history: Sequence[Message], messages: Sequence[Message],
        add_generation_prompt: bool = True, tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int] | None:
        """Ids the rendering of `messages` adds after `history` (its prefix, ending with an
        assistant reply and the end of its turn), so a state that folded in history's tokens as
        they were generated can continue without re-encoding the reply. None when the template
        does not render history as a text prefix, or new messages carry special-token text
        (then the caller feeds the whole `encode_chat(messages)`)."""
        if list(messages[:len(history)]) != list(history) or len(messages) == len(history):
            return None
        prev = self.apply_chat_template(history, add_generation_prompt=False, tools=tools)
        full = self.apply_chat_template(messages, add_generation_prompt, tools)
        substitutions: dict[str, str] = {}
        self._sanitize(_validate_messages(messages[len(history):]), substitutions)
        self._sanitize(_validate_tools(tools), substitutions)
        if substitutions or not full.startswith(prev):
            return None
        # the continuation starts with the template's own turn marker (a special token), so
        # encoding it apart tokenises exactly as in the whole rendering
        return self.encode(full[len(prev):])

    def _sanitize(self, value: Any, substitutions: dict[str, str]) -> Any:
        if isinstance(value, Mapping):
            return {k: self._sanitize(v, substitutions) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._sanitize(v, substitutions) for v in value]
        if not isinstance(value, str) or not self._special_tokens:
            return value
        pattern = "|".join(map(re.escape, self._special_tokens))

        def placeholder(match: re.Match) -> str:
            key = str(int.from_bytes(secrets.token_bytes(10), "big"))
            substitutions[key] = match.group(0)
            return key

        return re.sub(pattern, placeholder, value)

    def _find_end_of_turn_ids(self) -> tuple[int, ...]:
        """Ids the template writes after an assistant reply (ChatML: `<|im_end|>\\n`).

        Found by rendering a probe chat whose reply is a sentinel and reading what follows it.
        """
        if self.chat_template is None:
            return ()
        probe = [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": _REPLY_SENTINEL},
        ]
        try:
            rendered = self.apply_chat_template(probe, add_generation_prompt=False)
        except ChatTemplateError:
            return ()  # a template that refuses the probe; the engine then feeds nothing
        at = rendered.rfind(_REPLY_SENTINEL)
        return tuple(self.encode(rendered[at + len(_REPLY_SENTINEL) :])) if at >= 0 else ()

    def detokenizer(self, **kwargs: Any) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, **kwargs)


class IncrementalDetokenizer:
    """Turns a stream of ids into text deltas, never splitting a UTF-8 character.

    Byte-level BPE tokens can end inside a multi-byte character, so a delta is only released once
    the decoded window no longer ends in U+FFFD. The window is the last released tokens (kept as
    context: some decoders drop a leading space at the start of a decode) plus the pending ones,
    so each step decodes a few tokens whatever the length of the reply (vLLM's
    prefix_offset/read_offset scheme).
    """

    # A UTF-8 character has at most 4 bytes and every token adds at least one: a window still
    # ending in U+FFFD after this many pending tokens holds truly invalid bytes, and only its
    # last 3 tokens can hold the start of a character still to come.
    MAX_PENDING = 6
    MAX_INCOMPLETE = 3

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        skip_special_tokens: bool = True,
        context_ids: Sequence[int] = (),
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        # context_ids: the prompt's last ids, decoded for context only and never emitted.
        self._ids = [i for i in context_ids[-4:] if i not in tokenizer.special_token_ids]
        self._read = len(self._ids)  # ids[:read] are already emitted (or context)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special)

    def step(self, token_id: int) -> str:
        """Feed one id; returns the text it completes (often "", while a character is split)."""
        if self._skip_special and token_id in self._tokenizer.special_token_ids:
            return ""  # adds no text; keeping it out of the window keeps the window small
        self._ids.append(token_id)
        emitted = self._decode(self._ids[: self._read])
        text = self._decode(self._ids)
        release = len(self._ids)
        if text.endswith("\ufffd"):
            if release - self._read < self.MAX_PENDING:
                return ""
            # Invalid bytes: release all but the last tokens. The trailing U+FFFD may be the
            # first bytes of a character (3 at most, so in the last 3 tokens) that is still
            # to come; everything before them stays what it decodes to now.
            release -= self.MAX_INCOMPLETE
            text = self._decode(self._ids[:release])
        if len(text) <= len(emitted):
            return ""
        self._ids = self._ids[self._read :]
        self._read = release - self._read
        return text[len(emitted) :]

    def flush(self) -> str:
        """Text still held back at the end of a stream (U+FFFD only for truly invalid bytes)."""
        emitted = self._decode(self._ids[: self._read])
        text = self._decode(self._ids)
        self._ids, self._read = [], 0
        return text[len(emitted) :]
