"""The tokenizer as llama.cpp wants it: Qwen's byte-level BPE vocabulary, token types, merges,
special tokens and the chat template, taken from the Hugging Face tokenizer files.

Token types follow llama.cpp's converter: added tokens marked special, or shaped like <|...|>,
are CONTROL; the other added tokens (<think>, </think>, <tool_call>, ...) are USER_DEFINED; ids
the tokenizer leaves empty up to config.json's vocab_size become [PAD<id>] UNUSED fillers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
from gguf import TokenType

from .errors import QuantizeError

TOKENIZER_MODEL = "gpt2"   # llama.cpp's name for byte-level BPE
TOKENIZER_PRE = "qwen2"    # Qwen2/Qwen3 pre-tokenizer regex in llama.cpp


@dataclass
class TokenizerMeta:
    tokens: list[str]
    token_types: list[int]
    special: gguf.SpecialVocab

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model(TOKENIZER_MODEL)
        writer.add_tokenizer_pre(TOKENIZER_PRE)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        self.special.add_to_gguf(writer, quiet=True)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise QuantizeError(path, f"not valid JSON ({e})") from None


def _vocab_and_added(folder: Path) -> tuple[dict[str, int], dict[int, dict[str, Any]]]:
    """Base vocabulary (token -> id) and added tokens (id -> {content, special}) from the files."""
    tokenizer_json = folder / "tokenizer.json"
    if tokenizer_json.is_file():
        data = _load_json(tokenizer_json)
        try:
            vocab = data["model"]["vocab"]
            added = {int(t["id"]): t for t in data.get("added_tokens", [])}
            if data["model"].get("type", "BPE") != "BPE" or not data["model"].get("merges"):
                raise ValueError("not a BPE tokenizer with merges")
        except (KeyError, TypeError, ValueError) as e:
            raise QuantizeError(tokenizer_json, f"not a Qwen byte-level BPE tokenizer ({e})") from None
        return vocab, added
    vocab_json, merges_txt = folder / "vocab.json", folder / "merges.txt"
    if not (vocab_json.is_file() and merges_txt.is_file()):
        raise QuantizeError(folder, "no tokenizer: need tokenizer.json, or vocab.json with merges.txt")
    vocab = _load_json(vocab_json)
    added: dict[int, dict[str, Any]] = {}
    config = folder / "tokenizer_config.json"
    if config.is_file():
        for tid, t in (_load_json(config).get("added_tokens_decoder") or {}).items():
            added[int(tid)] = t
    return vocab, added


def _looks_special(text: str) -> bool:
    return text.startswith("<|") and text.endswith("|>")


def read_tokenizer(folder: Path, vocab_size: int) -> TokenizerMeta:
    vocab, added = _vocab_and_added(folder)
    by_id: dict[int, str] = {i: tok for tok, i in vocab.items()}
    types: dict[int, int] = {i: TokenType.NORMAL for i in by_id}
    for i, t in added.items():
        by_id[i] = t["content"]
        types[i] = TokenType.CONTROL if t.get("special") or _looks_special(t["content"]) else TokenType.USER_DEFINED
    if by_id and max(by_id) >= vocab_size:
        raise QuantizeError(folder / "config.json", f"vocab_size {vocab_size} is smaller than the tokenizer's {max(by_id) + 1} tokens")
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    token_types = [int(types.get(i, TokenType.UNUSED)) for i in range(vocab_size)]
    try:
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise QuantizeError(folder, f"cannot read the tokenizer's special tokens or merges ({e})") from None
    if not special.merges:
        raise QuantizeError(folder, "the tokenizer has no BPE merges (tokenizer.json or merges.txt)")
    return TokenizerMeta(tokens, token_types, special)
