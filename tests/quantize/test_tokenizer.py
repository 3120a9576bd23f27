"""The GGUF carries Qwen3's whole tokenizer: llama.cpp tokenizes exactly as Hugging Face does."""

from __future__ import annotations

import json

import llama_cpp
import pytest
from gguf import TokenType
from tokenizers import Tokenizer

from quantize.gguf_header import read_header
from tests.model_factory import FIXTURES

SAMPLES = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "  leading spaces, tabs\tand\nnew lines\r\n  and trailing   ",
    "你好，世界！今天的天气怎么样？我们一起去公园散步吧。",
    "日本語のテキストと한국어 텍스트, también español y Ελληνικά.",
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < 10; ++i) { x[i] = i * 2.5e-3f; }  // 1234567890",
    "Emoji: 😀🎉👩‍👩‍👧‍👦 🇯🇵 ✨ and combining é vs é",
    "<|im_start|>user\nWhat is 2+2? /think<|im_end|>\n<|im_start|>assistant\n<think>\nOkay.\n</think>\n\n4<|im_end|>",
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|endoftext|>",
]


@pytest.fixture(scope="module")
def vocab_only(converted):
    llm = llama_cpp.Llama(str(converted("tied", "q8_0")), vocab_only=True, verbose=False)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def hf_tokenizer():
    return Tokenizer.from_file(str(FIXTURES / "tokenizer.json"))


@pytest.mark.parametrize("text", SAMPLES)
def test_llama_cpp_tokenizes_like_hugging_face(text, vocab_only, hf_tokenizer):
    expected = hf_tokenizer.encode(text, add_special_tokens=False).ids
    got = vocab_only.tokenize(text.encode(), add_bos=False, special=True)
    assert got == expected
    assert vocab_only.detokenize(got, special=True).decode() == hf_tokenizer.decode(expected, skip_special_tokens=False)


def test_token_list_types_and_specials(converted):
    h = read_header(converted("tied", "f16"))
    tokens, types = h.get("tokenizer.ggml.tokens"), h.get("tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == 151936
    assert h.get("tokenizer.ggml.model") == "gpt2" and h.get("tokenizer.ggml.pre") == "qwen2"
    assert len(h.get("tokenizer.ggml.merges")) == 151387
    by_id = {i: (tokens[i], types[i]) for i in (151643, 151644, 151645, 151657, 151658, 151667, 151668, 151669, 151935, 220)}
    assert by_id[151643] == ("<|endoftext|>", TokenType.CONTROL)
    assert by_id[151644] == ("<|im_start|>", TokenType.CONTROL)
    assert by_id[151645] == ("<|im_end|>", TokenType.CONTROL)
    assert by_id[151657] == ("<tool_call>", TokenType.USER_DEFINED)
    assert by_id[151658] == ("</tool_call>", TokenType.USER_DEFINED)
    assert by_id[151667] == ("<think>", TokenType.USER_DEFINED)
    assert by_id[151668] == ("</think>", TokenType.USER_DEFINED)
    assert by_id[151669] == ("[PAD151669]", TokenType.UNUSED)
    assert by_id[151935] == ("[PAD151935]", TokenType.UNUSED)
    assert by_id[220] == ("Ġ", TokenType.NORMAL)
    # 14 added tokens marked special, plus the 6 <|fim_*|>, <|repo_name|>, <|file_sep|> shaped like them
    assert sum(t == TokenType.CONTROL for t in types) == 20
    user_defined = {tokens[i] for i, t in enumerate(types) if t == TokenType.USER_DEFINED}
    assert user_defined == {"<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"}
    assert h.get("tokenizer.ggml.eos_token_id") == 151645
    assert h.get("tokenizer.ggml.padding_token_id") == 151643
    assert h.get("tokenizer.ggml.add_bos_token") is False


def test_chat_template_is_qwens(converted):
    h = read_header(converted("untied", "q4_k_m"))
    template = json.loads((FIXTURES / "tokenizer_config.json").read_text())["chat_template"]
    assert h.get("tokenizer.chat_template") == template
    assert "enable_thinking" in template
