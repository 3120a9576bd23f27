"""Write a Qwen3 Hugging Face checkpoint as a GGUF in F32, F16, BF16 or Q8_0, one tensor at a time.

Tensor names come from gguf-py's TensorNameMap; metadata mirrors llama.cpp's own converter, so
llama.cpp reads every hyperparameter it needs for the `qwen3` architecture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf.utility import LocalTensor

from .errors import QuantizeError
from .hf_config import Qwen3Config, read_config, read_generation_sampling
from .progress import Progress, ProgressCallback, ignore_progress
from .retrieval_head import CLS_OUT, RetrievalHead, add_head_metadata, detect_retrieval_head, unprefixed_names, with_model_prefix
from .safetensors_files import iter_raw_chunks, iter_row_chunks, open_tensors, same_data
from .tokenizer_meta import TokenizerMeta, read_tokenizer

ARCH = gguf.MODEL_ARCH.QWEN3
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


@dataclass(frozen=True)
class PlannedTensor:
    hf_name: str
    gguf_name: str
    source: LocalTensor
    qtype: QT
    rows: tuple[int, ...] | None = None   # only these rows of source, in this order (a reranker's head)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.source.shape) if self.rows is None else (len(self.rows), *self.source.shape[1:])

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def out_nbytes(self) -> int:
        return gguf.quant_shape_to_byte_shape(self.shape, self.qtype)[-1] * (self.n_elements // self.shape[-1])

    @property
    def source_nbytes(self) -> int:
        return self.source.data_range.size


@dataclass
class HFModel:
    """A checked Hugging Face Qwen3 folder: config, tensors by name, tokenizer."""
    folder: Path
    config: Qwen3Config
    tensors: dict[str, LocalTensor]
    tokenizer: TokenizerMeta
    sampling: list[tuple[str, type, Any]] = field(default_factory=list)   # generation_config.json
    head: RetrievalHead | None = None   # an embedding model's pooling or a reranker's yes/no head

    @property
    def source_dtypes(self) -> set[str]:
        return {t.dtype for t in self.tensors.values()}


def load_hf_model(folder: Path) -> HFModel:
    """Read and check everything before any output is written: config, every shard header, every
    tensor's presence and shape, the tokenizer."""
    if not folder.is_dir():
        raise QuantizeError(folder, "not found" if not folder.exists() else "not a folder or GGUF file")
    config = read_config(folder)
    tensors = {n: t for n, t in open_tensors(folder).items() if not n.endswith(IGNORED_SUFFIXES)}
    if unprefixed_names(list(tensors)):   # Qwen3-Embedding saves Qwen3Model's names (no `model.`)
        tensors = {with_model_prefix(n): t for n, t in tensors.items()}
    expected = config.expected_shapes()
    optional = {"lm_head.weight": (config.vocab_size, config.hidden_size)} if config.tie_word_embeddings else {}
    for name, shape in expected.items():
        if name not in tensors:
            raise QuantizeError(folder, f"missing tensor {name} (config.json implies it)")
    for name, t in tensors.items():
        want = expected.get(name, optional.get(name))
        where = Path(t.data_range.filename)
        if want is None:
            raise QuantizeError(where, f"unexpected tensor {name}: not part of a Qwen3ForCausalLM model")
        if tuple(t.shape) != want:
            raise QuantizeError(where, f"tensor {name} has shape {list(t.shape)} but config.json implies {list(want)}")
    sampling = read_generation_sampling(folder)  # before the tokenizer: a bad one is refused in milliseconds
    tokenizer = read_tokenizer(folder, config.vocab_size)
    head = detect_retrieval_head(folder, config.raw, tokenizer.tokens)
    return HFModel(folder, config, tensors, tokenizer, sampling, head)


def tensor_type(gguf_name: str, shape: tuple[int, ...], target: QT) -> QT:
    """Per-tensor output type, as llama.cpp's converter picks it: norms and 1-D tensors stay F32;
    Q8_0 needs rows in whole blocks of 32, else F16."""
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight"):
        return QT.F32
    if target == QT.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[QT.Q8_0][0]:
        return QT.F16
    return target


def plan_tensors(model: HFModel, target: QT) -> list[PlannedTensor]:
    """The output tensors in llama.cpp's order, with names from TensorNameMap.

    A tied lm_head (absent, or byte-equal to the embedding) is dropped: llama.cpp then uses
    token_embd for the output, and the file stays one embedding smaller. A reranker's head
    (retrieval_head.py) is the "yes" and "no" rows of its output matrix, placed where llama.cpp's
    converter yields it: before token_embd when tied, in lm_head's place (which it replaces) when not."""
    name_map = gguf.get_tensor_name_map(ARCH, model.config.num_hidden_layers)
    names = sorted(model.tensors, key=_hf_order)
    lm_head, embed = model.tensors.get("lm_head.weight"), model.tensors["model.embed_tokens.weight"]
    if lm_head is not None and model.config.tie_word_embeddings and same_data(lm_head, embed):
        names.remove("lm_head.weight")
    plan = []
    for hf_name in names:
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise QuantizeError(model.folder, f"cannot map tensor {hf_name} to a llama.cpp name")
        t = model.tensors[hf_name]
        plan.append(PlannedTensor(hf_name, gguf_name, t, tensor_type(gguf_name, tuple(t.shape), target)))
    head = model.head
    if head is not None and head.is_reranker:
        tied = model.config.tie_word_embeddings
        source_name = "model.embed_tokens.weight" if tied else "lm_head.weight"
        rows = (head.yes_id, head.no_id)
        cls = PlannedTensor(source_name, CLS_OUT, model.tensors[source_name], QT.F32, rows)
        cls = PlannedTensor(source_name, CLS_OUT, cls.source, tensor_type(CLS_OUT, cls.shape, target), rows)
        at = next(i for i, p in enumerate(plan) if p.hf_name == source_name)
        if tied:
            plan.insert(at, cls)
        else:
            plan[at] = cls
    return plan


def _hf_order(name: str) -> tuple[int, int, str]:
    """Embedding first, then layers in numeric order, then final norm and lm_head."""
    parts = name.split(".")
    if name.startswith("model.layers."):
        return (1, int(parts[2]), name)
    return (0 if "embed_tokens" in name else 2, 0, name)


def _add_metadata(writer: gguf.GGUFWriter, model: HFModel, file_type: gguf.LlamaFileType, n_params: int) -> None:
    c = model.config
    meta = gguf.Metadata.load(None, model.folder, None, n_params)
    if meta.size_label is None:
        meta.size_label = gguf.size_label(n_params, 0, 0, 0)
    _add_sampling(writer, model.sampling, meta)
    meta.set_gguf_meta_model(writer)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    if (yarn := c.yarn) is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(yarn["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(yarn["original_max_position_embeddings"]))
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if model.head is not None:
        add_head_metadata(writer, gguf.MODEL_ARCH_NAMES[ARCH], model.head)
    model.tokenizer.add_to(writer)


def _add_sampling(writer: gguf.GGUFWriter, sampling: list[tuple[str, type, Any]], meta: gguf.Metadata) -> None:
    """general.sampling.* from generation_config.json, written where llama.cpp's converter writes
    them (before general.name), with the same types. Written here rather than by gguf-py's
    Metadata, whose support depends on the installed gguf version (0.19 from PyPI ignores
    repetition_penalty, which the vendored one reads): its copies are cleared so that no key is
    written twice."""
    for attr in [a for a in vars(meta) if a.startswith("sampling_")]:
        setattr(meta, attr, None)
    add = {str: writer.add_string, int: writer.add_int32, float: writer.add_float32}
    for key, kind, value in sampling:
        add[kind](key, value)


def _convert_chunk(chunk: np.ndarray, qtype: QT) -> np.ndarray:
    if qtype == QT.F32:
        return chunk
    if qtype == QT.F16:
        return chunk.astype(np.float16)
    return gguf.quants.quantize(chunk, qtype)


def _output_tensor(p: PlannedTensor) -> np.ndarray:
    """The tensor's bytes in its output type, built chunk by chunk into one output buffer.
    BF16 to BF16 is a copy of the raw words: no rounding at all."""
    copy_bf16 = p.qtype == QT.BF16 and p.source.dtype == "BF16" and p.rows is None
    chunks = iter_raw_chunks(p.source, p.hf_name) if copy_bf16 else iter_row_chunks(p.source, p.hf_name)
    if p.rows is not None:
        chunks = _picked_rows(chunks, p.rows)
    out: np.ndarray | None = None
    for start, chunk in chunks:
        converted = chunk if copy_bf16 else _convert_chunk(chunk, p.qtype)
        if out is None:
            out = np.empty((p.shape[0], *converted.shape[1:]) if p.shape else (), dtype=converted.dtype)
        out[start:start + len(converted)] = converted
    assert out is not None
    return out


def _picked_rows(chunks, rows: tuple[int, ...]):
    """(0, the float32 rows `rows` of the tensor, in that order) from its (start, rows) chunks."""
    picked: dict[int, np.ndarray] = {}
    for start, chunk in chunks:
        for r in rows:
            if start <= r < start + len(chunk):
                picked[r] = np.array(chunk[r - start], dtype=np.float32)
    yield 0, np.stack([picked[r] for r in rows])


def write_gguf(model: HFModel, out_path: Path, target: QT, file_type: gguf.LlamaFileType,
               progress: ProgressCallback = ignore_progress) -> list[PlannedTensor]:
    """Stream the model into out_path (which the caller makes atomic). Returns the plan written."""
    plan = plan_tensors(model, target)
    n_params = sum(p.n_elements for p in plan)
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[ARCH])
    _add_metadata(writer, model, file_type, n_params)
    for p in plan:
        writer.add_tensor_info(p.gguf_name, p.shape, np.dtype(np.float32), p.out_nbytes, raw_dtype=p.qtype)
    total_bytes = sum(p.source_nbytes for p in plan)
    done_bytes = 0
    try:
        writer.write_header_to_file(out_path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for i, p in enumerate(plan):
            writer.write_tensor_data(_output_tensor(p))
            done_bytes += p.source_nbytes
            progress(Progress("convert", i + 1, len(plan), done_bytes, total_bytes, p.gguf_name))
        writer.flush()
    finally:
        writer.close()
    return plan


def carrier_type(model: HFModel) -> tuple[QT, gguf.LlamaFileType]:
    """The lossless float type to hand llama.cpp's quantizer: the checkpoint's own dtype."""
    dtypes = model.source_dtypes
    if dtypes <= {"BF16"}:
        return QT.BF16, gguf.LlamaFileType.MOSTLY_BF16
    if dtypes <= {"F16"}:
        return QT.F16, gguf.LlamaFileType.MOSTLY_F16
    return QT.F32, gguf.LlamaFileType.ALL_F32

