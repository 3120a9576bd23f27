"""A complete, very small Qwen3 GGUF written directly with gguf-py (a 300-token byte-level
vocabulary, one layer, 32 wide): about 100 KB, so hundreds of mutated copies stay cheap."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FF, LAYERS = 32, 2, 1, 16, 64, 1


def byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode alphabet: the 256 single-byte tokens of a byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def write_tiny_qwen3(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    tokens = (byte_tokens() + ["Ġt", "he", "Ġthe"] + ["<think>", "</think>"]
              + [f"<|extra_{i}|>" for i in range(36)] + ["<|im_start|>", "<|im_end|>", "<|endoftext|>"])
    types = ([gguf.TokenType.NORMAL] * 259 + [gguf.TokenType.USER_DEFINED] * 2 + [gguf.TokenType.CONTROL] * 39)
    w = gguf.GGUFWriter(path, "qwen3")
    w.add_name("tiny")
    w.add_block_count(LAYERS)
    w.add_context_length(512)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["Ġ t", "h e", "Ġt he"])
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(False)
    vocab = len(tokens)

    def t(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    t("token_embd.weight", vocab, HIDDEN)
    w.add_tensor("output_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    for i in range(LAYERS):
        p = f"blk.{i}."
        for n in ("attn_norm", "ffn_norm"):
            w.add_tensor(p + n + ".weight", np.ones(HIDDEN, dtype=np.float32))
        for n in ("attn_q_norm", "attn_k_norm"):
            w.add_tensor(p + n + ".weight", np.ones(HEAD_DIM, dtype=np.float32))
        t(p + "attn_q.weight", HEADS * HEAD_DIM, HIDDEN)
        t(p + "attn_k.weight", KV_HEADS * HEAD_DIM, HIDDEN)
        t(p + "attn_v.weight", KV_HEADS * HEAD_DIM, HIDDEN)
        t(p + "attn_output.weight", HIDDEN, HEADS * HEAD_DIM)
        t(p + "ffn_gate.weight", FF, HIDDEN)
        t(p + "ffn_up.weight", FF, HIDDEN)
        t(p + "ffn_down.weight", HIDDEN, FF)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_foreign_gguf(path: Path, arch: str = "llama") -> Path:
    """A valid, empty GGUF of another architecture: what the runtime must refuse."""
    w = gguf.GGUFWriter(path, arch)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path
