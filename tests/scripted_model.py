"""A "scripted" Qwen3 checkpoint: a model that says a known script, so thinking can be tested.

Random weights babble; a model whose every layer adds nothing and whose embeddings and untied
lm_head form a bigram table says exactly what we wrote, even under Qwen's thinking sampler.
Script token i has a one-hot embedding in hidden dimension i; o_proj and down_proj are zero, so
the residual stream carries that one-hot vector to the final RMSNorm (which scales it to
sqrt(hidden)); lm_head's row for the next token holds a value in dimension i that makes its
logit about 40 while every other logit is 0. Tokens outside the script have zero embeddings,
hence uniform logits. See /work/shared/TESTING.md, section 2.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np

from tests.model_factory import FIXTURES, TOKENIZER_FILES, Shape, config_dict, tensor_specs, write_safetensors

NEWLINE = 198          # "\n": last token of the thinking-mode generation prompt
DOUBLE_NEWLINE = 271   # "\n\n": after </think>; last token of the non-thinking prompt
BUDGET_END = 382       # ".\n\n": last token of the budget phrase as Qwen's technical report prints it
                       # ("</think>.\n\n"); the model card's spelling, the runtime's, ends in "\n\n" (271)
THINK = 151667
END_THINK = 151668
IM_END = 151645

# "Let me count: one two three four five six seven eight.\n" ("Let" has no leading space;
# the last token is ".\n", 624, which Qwen's budget phrase also puts before </think>).
SCRIPT_THINKING_IDS: list[int] = [10061, 752, 1760, 25, 825, 1378, 2326, 3040, 4236, 4743, 8094, 8063, 624]
# "The answer is forty-two."
SCRIPT_ANSWER_IDS: list[int] = [785, 4226, 374, 35398, 37402, 13]
SCRIPT_THINKING_TEXT = "Let me count: one two three four five six seven eight."
SCRIPT_ANSWER_TEXT = "The answer is forty-two."

# The whole generation in thinking mode, from the token after the prompt to <|im_end|>.
SCRIPT_THINKING_MODE_IDS: list[int] = [THINK, *SCRIPT_THINKING_IDS, END_THINK, DOUBLE_NEWLINE, *SCRIPT_ANSWER_IDS, IM_END]
# Non-thinking mode (prompt ends "<think>\n\n</think>\n\n") and after a budget cut.
SCRIPT_ANSWER_MODE_IDS: list[int] = [*SCRIPT_ANSWER_IDS, IM_END]


def chain(first: int, ids: list[int]) -> dict[int, int]:
    """Bigram table for `first` -> ids[0] -> ids[1] -> ...; the last id gets no successor."""
    seq = [first, *ids]
    return {a: b for a, b in zip(seq, seq[1:])}


def _qwen3_script() -> dict[int, int]:
    table = chain(NEWLINE, SCRIPT_THINKING_MODE_IDS)
    table[BUDGET_END] = SCRIPT_ANSWER_IDS[0]
    sources = [NEWLINE, *SCRIPT_THINKING_MODE_IDS[:-1], BUDGET_END]
    assert len(sources) == len(set(sources)) == len(table), "a script token is a source twice"
    return table


# token id -> next token id, following Qwen3's protocol (see module docstring).
QWEN3_SCRIPT: dict[int, int] = _qwen3_script()

SCRIPT_SHAPE = Shape(hidden=64, layers=2, heads=2, kv_heads=1, head_dim=32, intermediate=64, tied=False)
TARGET_LOGIT = 40.0


def scripted_tensors(transitions: dict[int, int], shape: Shape, seed: int = 0) -> dict[str, np.ndarray]:
    """All tensors of the scripted model (float32), by Hugging Face name."""
    if len(transitions) > shape.hidden:
        raise ValueError(f"{len(transitions)} script tokens need hidden >= {len(transitions)}, got {shape.hidden}")
    # After the final RMSNorm a one-hot vector becomes sqrt(hidden) in its dimension.
    weight = max(5.0, TARGET_LOGIT / math.sqrt(shape.hidden))
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shp, kind in tensor_specs(shape):
        if kind == "norm":
            out[name] = np.ones(shp, dtype=np.float32)
        elif kind == "embed":
            out[name] = np.zeros(shp, dtype=np.float32)
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            out[name] = np.zeros(shp, dtype=np.float32)   # the layer adds nothing to the residual
        else:
            out[name] = (rng.standard_normal(shp, dtype=np.float32) * np.float32(0.02))
    embed, head = out["model.embed_tokens.weight"], out["lm_head.weight"]
    for dim, (src, dst) in enumerate(transitions.items()):
        embed[src, dim] = 1.0
        head[dst, dim] = weight
    return out


def build_scripted_model(folder: Path, transitions: dict[int, int], hidden: int = 64) -> Path:
    """Write a scripted Qwen3 checkpoint (HF layout, BF16, untied) into `folder`; returns it."""
    shape = SCRIPT_SHAPE.with_(hidden=hidden)
    tensors = scripted_tensors(transitions, shape)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_dict(shape), indent=2))
    for name in TOKENIZER_FILES:
        shutil.copy(FIXTURES / name, folder / name)
    write_safetensors(folder / "model.safetensors", [(n, t.shape, t) for n, t in tensors.items()])
    return folder


LOOP_THINKING = [825, 1378, 2326, 3040, 4236, 4743, 8094, 8063]  # " one" ... " eight", then " one" again


def looping_script() -> dict[int, int]:
    """Thinks " one ... eight" in an endless loop unless a budget cuts it (so there is always a
    reply long enough to interrupt); the budget phrase and "\n\n" lead into the script's answer."""
    table = chain(NEWLINE, [THINK, *LOOP_THINKING])
    table[LOOP_THINKING[-1]] = LOOP_THINKING[0]
    table.update(chain(DOUBLE_NEWLINE, [*SCRIPT_ANSWER_IDS, IM_END]))
    table[BUDGET_END] = SCRIPT_ANSWER_IDS[0]
    return table
