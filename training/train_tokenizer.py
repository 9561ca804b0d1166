"""Train the byte-level BPE tokenizer of the shipped model and write HF-style tokenizer files.

Byte level (GPT-2 style) means every string encodes, including characters never seen in
training (emoji, CJK): they fall back to single-byte tokens. The chat format is ChatML.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from engine.tokenizer import render_chat_template

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]  # ids 0, 1, 2

# ChatML, with the role and content checks the server relies on (raise_exception ->
# ChatTemplateError). A reply ends with "<|im_end|>\n": the engine's end-of-turn ids.
#
# Tools, in the HF convention (`tools` beside `messages`; assistant `tool_calls`; `tool` role
# messages), in the shape of Qwen's ChatML: the functions go in the system turn, one JSON line
# each, and a call is `<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>`, calls one
# per line. A string `arguments` (OpenAI's) is written verbatim, so a reply re-rendered from its
# parsed calls is the text the model generated. Without tools, tool calls and tool messages a
# chat renders exactly as plain ChatML.
CHATML_TEMPLATE = (
    "{% if tools %}"
    "{{ '<|im_start|>system\\n' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% endif %}"
    "{{ '# Tools\\n<tools>\\n' }}"
    "{% for tool in tools %}"
    "{{ (tool['function'] if tool['function'] is defined else tool) | tojson }}{{ '\\n' }}"
    "{% endfor %}"
    "{{ '</tools><|im_end|>\\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{ raise_exception('Unsupported role: ' + message['role'] + "
    "'; expected system, user, assistant or tool') }}"
    "{% endif %}"
    "{% if message['content'] is not string %}"
    "{{ raise_exception('Message content must be a string') }}"
    "{% endif %}"
    "{% if tools and loop.first and message['role'] == 'system' %}"
    "{% elif message['role'] == 'assistant' and message['tool_calls'] %}"
    "{{ '<|im_start|>assistant\\n' + message['content'] }}"
    "{% for tc in message['tool_calls'] %}"
    "{% set fn = tc['function'] if tc['function'] is defined else tc %}"
    "{% if message['content'] or not loop.first %}{{ '\\n' }}{% endif %}"
    "{{ '<tool_call>\\n{\"name\": ' + fn['name'] | tojson + ', \"arguments\": ' }}"
    "{% if fn['arguments'] is string %}{{ fn['arguments'] }}"
    "{% else %}{{ fn['arguments'] | tojson }}{% endif %}"
    "{{ '}\\n</tool_call>' }}"
    "{% endfor %}"
    "{{ '<|im_end|>\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_SPECIAL_SPLIT = re.compile("|".join(map(re.escape, SPECIAL_TOKENS)))


def _training_texts(conversations: Sequence[Sequence[dict]]) -> Iterator[str]:
    for messages in conversations:
        rendered = render_chat_template(CHATML_TEMPLATE, messages, add_generation_prompt=False)
        # Special tokens are whole tokens of their own: learn merges from the text around them.
        yield from (part for part in _SPECIAL_SPLIT.split(rendered) if part)


def train_tokenizer(
    out_dir: str | Path, conversations: Sequence[Sequence[dict]], vocab_size: int = 4096
) -> None:
    """Train on `conversations` rendered as ChatML; write tokenizer.json + tokenizer_config.json.

    `vocab_size` is an upper bound: a small synthetic corpus runs out of merges earlier (20k
    chats stop near 2,650), so size the model's embedding from `Tokenizer.vocab_size`.
    """
    tokenizer = Tokenizer(models.BPE())
    # No prefix space: "Hi" at the start of a message and after "\n" tokenizes the same way.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_texts(conversations), trainer=trainer)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = {
        # Readable by HF transformers' AutoTokenizer too.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": ENDOFTEXT,
        "eos_token": ENDOFTEXT,
        "pad_token": ENDOFTEXT,
        "stop_tokens": [IM_END],
        "chat_template": CHATML_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,  # recurrent decoding: no context window
        "added_tokens_decoder": {
            str(tokenizer.token_to_id(t)): {
                "content": t,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "single_word": False,
                "special": True,
            }
            for t in SPECIAL_TOKENS
        },
    }
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
