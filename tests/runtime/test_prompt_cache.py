"""The persistent prompt cache (edge/runtime/prompt_cache.py): the system block's KV state is read back from
disk by a later Engine instead of being evaluated (llama.cpp's own counters say so), the reply and
the logits are those of an evaluated prompt, and a file that is not exactly right (cut short, a
flipped bit, another model or KV type) is ignored with a warning and replaced, never loaded. A
folder that cannot be written warns once; the folder stays under its cap, least recently used first.

The scripted model's layers add nothing, so its reply cannot show a wrong KV cache: the exactness
claims are checked on a random-weight model's logits, the protocol claims on the scripted one."""

from __future__ import annotations

import errno
import os
import threading
import warnings
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

import edge.runtime.prompt_cache as pc
from edge.chat import Chat
from edge.runtime.engine import Engine
from edge.runtime.prompt_cache import (CacheEntry, CacheFileError, PromptCache, PromptCacheWarning, cache_key, check_file,
                               choose_evictions, encode_header, file_name, open_prompt_cache, system_prefix_length)
from edge.runtime.sequence import open_sequence
from tests.llama_probe import DecodeCount
from tests.scripted_model import SCRIPT_ANSWER_TEXT, SCRIPT_THINKING_TEXT

IM_START, SYSTEM, IM_END, NL = 151644, 8948, 151645, 198
SYSTEM_TEXT = "You are a careful assistant. Answer briefly and cite the rule you used. " * 8


# ---- pure decisions ---------------------------------------------------------------------------------
def test_the_prefix_is_the_system_block_with_its_newline():
    prompt = [IM_START, SYSTEM, NL, 5, 6, IM_END, NL, IM_START, 872, NL, 7, IM_END, NL, IM_START]
    assert system_prefix_length(prompt, IM_START, SYSTEM, IM_END, NL) == 7
    assert system_prefix_length(prompt[:6] + [IM_START, 872], IM_START, SYSTEM, IM_END, NL) == 6  # no newline
    assert system_prefix_length([IM_START, 872, NL, 5, IM_END, NL, IM_START], IM_START, SYSTEM, IM_END, NL) == 0
    assert system_prefix_length([IM_START, SYSTEM, NL, 5, 6], IM_START, SYSTEM, IM_END, NL) == 0   # never closed
    assert system_prefix_length(prompt[:7], IM_START, SYSTEM, IM_END, NL) == 0  # nothing left to start a reply from


def test_the_key_covers_model_settings_and_every_token():
    ident = {"model": {"path": "/m.gguf", "size": 1, "mtime_ns": 2}, "context": {"type_k": 1, "flash_attn_type": 0}}
    base = cache_key(ident, [1, 2, 3])
    assert base == cache_key(dict(ident), [1, 2, 3])
    assert base != cache_key(ident, [1, 2, 4]) and base != cache_key(ident, [1, 2])
    for change in ({"model": {"path": "/m.gguf", "size": 1, "mtime_ns": 3}},
                   {"context": {"type_k": 8, "flash_attn_type": 0}}, {"context": {"type_k": 1, "flash_attn_type": 1}}):
        assert cache_key({**ident, **change}, [1, 2, 3]) != base
    assert file_name(base).endswith(".kvcache") and len(file_name(base)) == 32 + len(".kvcache")


def test_eviction_takes_the_least_recently_used_and_keeps_the_new_file():
    entries = [CacheEntry("a", 40, 3.0), CacheEntry("b", 40, 1.0), CacheEntry("c", 40, 2.0), CacheEntry("new", 40, 0.5)]
    assert choose_evictions(entries, 160) == []
    assert choose_evictions(entries, 100, keep="new") == ["b", "c"]
    assert choose_evictions(entries, 0, keep="new") == ["b", "c", "a"]
    assert choose_evictions(entries, 120, keep="new") == ["b"]


def _file(key: bytes, tokens: list[int], payload: bytes) -> bytearray:
    import zlib
    tok = np.asarray(tokens, dtype="<i4").tobytes()
    return bytearray(encode_header(key, tokens, len(payload), zlib.crc32(payload, zlib.crc32(tok))) + payload)


def test_a_cache_file_is_checked_before_its_state_is_used():
    key, tokens, payload = bytes(range(32)), [IM_START, SYSTEM, 9, IM_END], bytes(range(256)) * 4
    blob = _file(key, tokens, payload)
    offset, length = check_file(blob, key, tokens)
    assert bytes(blob[offset: offset + length]) == payload
    cases = {"cut short": blob[:-1], "extended": blob + b"\0", "empty": bytearray(), "magic": bytearray(b"X") + blob[1:]}
    for at in (10, 60, offset - 2, offset + 500, len(blob) - 1):  # header, its CRC, the tokens, the payload
        flipped = bytearray(blob)
        flipped[at] ^= 0x40
        cases[f"bit {at}"] = flipped
    for name, bad in cases.items():
        with pytest.raises(CacheFileError):
            check_file(bad, key, tokens)
    with pytest.raises(CacheFileError, match="another model"):
        check_file(blob, bytes(32), tokens)
    with pytest.raises(CacheFileError, match="other prompt tokens"):
        check_file(blob, key, [IM_START, SYSTEM, 8, IM_END])


def test_the_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("QWEN3_EDGE_HOME", str(tmp_path))
    monkeypatch.delenv(pc.ENV, raising=False)
    assert open_prompt_cache(None).folder == tmp_path / "cache" / "prompts"
    assert open_prompt_cache(False) is None
    assert open_prompt_cache(str(tmp_path / "x")).folder == tmp_path / "x"
    monkeypatch.setenv(pc.ENV, "0")
    assert open_prompt_cache(None) is None and open_prompt_cache(True) is not None
    with pytest.raises(ValueError, match="prompt_cache takes"):
        open_prompt_cache(3)


# ---- through llama.cpp --------------------------------------------------------------------------------
def cache_at(folder: Path, **kw) -> PromptCache:
    return PromptCache(folder, min_tokens=kw.pop("min_tokens", 32), **kw)


def send(engine: Engine, system: str = SYSTEM_TEXT, text: str = "Hi"):
    return Chat(engine, system=system, seed=0).send(text)


def prefix_len(engine: Engine, system: str = SYSTEM_TEXT) -> int:
    chat = Chat(engine, system=system)
    prompt = engine.tokenize(chat.render(chat.messages() + [{"role": "user", "content": "Hi"}], True))
    return system_prefix_length(prompt, *engine.prompt_cache.markers)


def test_a_second_engine_reads_the_system_block_instead_of_evaluating_it(scripted_gguf, tmp_path):
    folder = tmp_path / "c"
    with Engine.load(scripted_gguf, n_threads=1, prompt_cache=cache_at(folder)) as first:
        r1 = send(first)
        n = prefix_len(first)
        assert (first.prompt_cache.saves, first.prompt_cache.hits) == (1, 0) and r1.evaluated_tokens == r1.prompt_tokens
    [f] = folder.iterdir()
    assert f.stat().st_mode & 0o777 == 0o600 and n > 100
    with Engine.load(scripted_gguf, n_threads=1, prompt_cache=cache_at(folder)) as second:
        Chat(second).send("warm up")  # llama.cpp's counters floor at 1: run a prompt and a step first
        with DecodeCount(second.llama) as decoded:
            r2 = send(second)
        assert second.prompt_cache.hits == 1 and second.prompt_cache.saves == 0
        assert decoded.tokens == r2.prompt_tokens - n + r2.generated_tokens   # the prefix was not decoded
        assert r2.evaluated_tokens == r2.prompt_tokens - n
        assert (r2.thinking.strip(), r2.answer) == (SCRIPT_THINKING_TEXT, SCRIPT_ANSWER_TEXT) == (r1.thinking.strip(), r1.answer)
        r3 = Chat(second, system=SYSTEM_TEXT, seed=0).send("Again")  # a later turn: the prefix is in memory
        assert r3.answer == SCRIPT_ANSWER_TEXT and second.prompt_cache.hits == 1


def test_short_system_prompts_and_cache_off_write_nothing(scripted_gguf, tmp_path):
    with Engine.load(scripted_gguf, n_threads=1, prompt_cache=cache_at(tmp_path / "a", min_tokens=400)) as engine:
        send(engine)
    with Engine.load(scripted_gguf, n_threads=1, prompt_cache=False) as engine:
        assert engine.prompt_cache is None
        send(engine)
    assert not (tmp_path / "a").exists()


def test_on_by_default_in_the_store(scripted_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN3_EDGE_HOME", str(tmp_path))
    monkeypatch.delenv(pc.ENV, raising=False)
    with Engine.load(scripted_gguf, n_threads=1) as engine:
        assert engine.prompt_cache.folder == tmp_path / "cache" / "prompts"
        assert engine.prompt_cache.min_tokens == pc.MIN_PREFIX_TOKENS
        send(engine, system=SYSTEM_TEXT * 3)  # over 256 tokens
    assert len(list((tmp_path / "cache" / "prompts").glob("*.kvcache"))) == 1


def logits_after_prompt(engine: Engine, system: str = SYSTEM_TEXT) -> np.ndarray:
    """The logits the reply starts from, through the library's own prefill."""
    chat = Chat(engine, system=system)
    prompt = engine.tokenize(chat.render(chat.messages() + [{"role": "user", "content": "Which rule?"}], False))
    seq = open_sequence(engine, prompt, threading.Event())
    try:
        seq.prefill(prompt)
        ctx = engine.llama._ctx.ctx
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(engine.llama.n_vocab(),)).copy()
    finally:
        seq.release()   # the engine's stream: close() would wait for it


@pytest.fixture(scope="module")
def random_f16(converted) -> Path:
    return converted("tied", "f16")


def test_logits_from_a_loaded_prefix_are_those_of_an_evaluated_one(random_f16, tmp_path):
    folder = tmp_path / "c"
    with Engine.load(random_f16, n_threads=1, n_ctx=1024, prompt_cache=False) as off:
        evaluated = logits_after_prompt(off)
    with Engine.load(random_f16, n_threads=1, n_ctx=1024, prompt_cache=cache_at(folder)) as writer:
        written = logits_after_prompt(writer)
        assert writer.prompt_cache.saves == 1
    with Engine.load(random_f16, n_threads=1, n_ctx=1024, prompt_cache=cache_at(folder)) as reader:
        loaded = logits_after_prompt(reader)
        assert reader.prompt_cache.hits == 1
    assert np.array_equal(loaded, written)  # the same batches after the prefix: bit for bit
    assert np.abs(loaded - evaluated).max() < 1e-3 * max(np.abs(evaluated).max(), 1.0)  # one batch or two: noise
    assert loaded.std() > 0.01  # a model whose logits depend on the cache at all


def corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) * 2 // 3]
    else:
        data[len(data) * 3 // 4] ^= 0x40   # inside the K/V data
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "bit-flipped"])
def test_a_damaged_file_is_ignored_with_a_warning_and_replaced(random_f16, tmp_path, how):
    folder = tmp_path / "c"
    with Engine.load(random_f16, n_threads=1, n_ctx=1024, prompt_cache=cache_at(folder)) as writer:
        written = logits_after_prompt(writer)
    [f] = folder.iterdir()
    good = f.read_bytes()
    corrupt(f, how)
    with Engine.load(random_f16, n_threads=1, n_ctx=1024, prompt_cache=cache_at(folder)) as reader:
        with pytest.warns(PromptCacheWarning, match="ignored: .*(cut short|corrupt|checksum)"):
            got = logits_after_prompt(reader)
        assert (reader.prompt_cache.hits, reader.prompt_cache.saves) == (0, 1)
    assert np.array_equal(got, written)
    assert f.read_bytes() == good   # replaced by the state evaluated again


def test_a_scripted_reply_stays_exact_after_a_damaged_file(scripted_gguf, tmp_path):
    folder = tmp_path / "c"
    with Engine.load(scripted_gguf, n_threads=1, prompt_cache=cache_at(folder)) as engine:
        send(engine)
    [f] = folder.iterdir()
    corrupt(f, "bit-flipped")
    with Engine.load(scripted_gguf, n_threads=1, prompt_cache=cache_at(folder)) as engine:
        with pytest.warns(PromptCacheWarning, match="checksum"):
            r = send(engine)
    assert (r.thinking.strip(), r.answer, r.evaluated_tokens) == (SCRIPT_THINKING_TEXT, SCRIPT_ANSWER_TEXT, r.prompt_tokens)


def test_another_model_or_kv_type_misses(scripted_gguf, tmp_path):
    folder = tmp_path / "c"
    with Engine.load(scripted_gguf, n_threads=1, flash_attn=True, prompt_cache=cache_at(folder)) as engine:
        send(engine)
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(scripted_gguf.read_bytes())   # the same bytes elsewhere: another file identity
    for path, kv in ((copy, None), (scripted_gguf, "q8_0")):   # flash attention on in all three: only the KV type differs
        with warnings.catch_warnings():
            warnings.simplefilter("error", PromptCacheWarning)  # a quiet miss: no file of its key exists
            with Engine.load(path, n_threads=1, kv_cache_type=kv, flash_attn=True, prompt_cache=cache_at(folder)) as engine:
                r = send(engine)
                assert (engine.prompt_cache.hits, engine.prompt_cache.saves) == (0, 1)
                assert r.answer == SCRIPT_ANSWER_TEXT and r.evaluated_tokens == r.prompt_tokens
    assert len(list(folder.iterdir())) == 3


def test_a_file_of_other_settings_under_this_name_is_refused(random_f16, tmp_path):
    """A file copied or renamed to this key's name (a collision, a hand-made copy) is refused by
    the key in its header: llama.cpp would take a q8_0 state into an f16 cache only as garbage."""
    q8, f16 = tmp_path / "q8", tmp_path / "f16"
    with Engine.load(random_f16, n_threads=1, n_ctx=1024, kv_cache_type="q8_0", prompt_cache=cache_at(q8)) as engine:
        logits_after_prompt(engine)
    with Engine.load(random_f16, n_threads=1, n_ctx=1024, prompt_cache=cache_at(f16)) as engine:
        written = logits_after_prompt(engine)
    [foreign], [ours] = q8.iterdir(), f16.iterdir()
    ours.write_bytes(foreign.read_bytes())
    with Engine.load(random_f16, n_threads=1, n_ctx=1024, prompt_cache=cache_at(f16)) as engine:
        with pytest.warns(PromptCacheWarning, match="another model, context setting"):
            got = logits_after_prompt(engine)
    assert np.array_equal(got, written)


def test_a_folder_that_cannot_be_written_warns_once(scripted_gguf, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")  # as root, chmod does not make a folder read-only: a file in the way does
    with Engine.load(scripted_gguf, n_threads=1, prompt_cache=cache_at(blocker / "prompts")) as engine:
        with pytest.warns(PromptCacheWarning, match="cannot be written") as caught:
            r1 = send(engine)
            r2 = send(engine, system=SYSTEM_TEXT + "More.")  # another prefix: no second warning
        assert len([w for w in caught if w.category is PromptCacheWarning]) == 1
        assert r1.answer == r2.answer == SCRIPT_ANSWER_TEXT and engine.prompt_cache.saves == 0


def test_a_full_disk_leaves_no_partial_file(scripted_gguf, tmp_path, monkeypatch):
    class Full:
        def __init__(self, fd, mode):
            os.close(fd)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pc.os, "fdopen", Full)
    folder = tmp_path / "c"
    with Engine.load(scripted_gguf, n_threads=1, prompt_cache=cache_at(folder)) as engine:
        with pytest.warns(PromptCacheWarning, match="No space left"):
            r = send(engine)
    assert r.answer == SCRIPT_ANSWER_TEXT and list(folder.iterdir()) == []


def test_the_cap_evicts_the_least_recently_used(scripted_gguf, tmp_path):
    folder = tmp_path / "c"
    systems = [f"{SYSTEM_TEXT} Rule {i}." for i in range(4)]
    with Engine.load(scripted_gguf, n_threads=1, prompt_cache=cache_at(folder)) as engine:
        send(engine, systems[0])
        [f0] = folder.iterdir()
        size = f0.stat().st_size
    cap = int(size * 2.5)  # two files fit, not three
    names = {}
    with Engine.load(scripted_gguf, n_threads=1, prompt_cache=cache_at(folder, max_bytes=cap)) as engine:
        for i, s in enumerate(systems[1:3], 1):
            before = set(folder.iterdir())
            send(engine, s)
            [names[i]] = set(folder.iterdir()) - before
        names[0] = f0
        assert sorted(folder.iterdir()) == sorted([names[1], names[2]])  # 0 was the oldest
        os.utime(names[1], (1, 1))  # 1 is now the least recently used...
    with Engine.load(scripted_gguf, n_threads=1, prompt_cache=cache_at(folder, max_bytes=cap)) as engine:
        send(engine, systems[1])    # ...until this hit refreshes it
        assert engine.prompt_cache.hits == 1
        send(engine, systems[3])
        assert sorted(p.name for p in folder.iterdir()) == sorted([names[1].name, file_for(engine, systems[3])])
        with pytest.warns(PromptCacheWarning, match="over the cache's cap"):
            engine.prompt_cache.max_bytes = size // 2
            send(engine, systems[0])


def file_for(engine: Engine, system: str) -> str:
    chat = Chat(engine, system=system)
    prompt = engine.tokenize(chat.render(chat.messages() + [{"role": "user", "content": "Hi"}], True))
    n = system_prefix_length(prompt, *engine.prompt_cache.markers)
    return file_name(cache_key(engine.prompt_cache.identity, prompt[:n]))


def test_a_growing_context_makes_room_before_the_state_goes_in(scripted_gguf, tmp_path, monkeypatch):
    """The growing context starts small (here 256 tokens): the prefix's state needs its cells first."""
    import edge.runtime.footprint
    monkeypatch.setattr(edge.runtime.footprint, "START_CTX", 256)
    folder, system = tmp_path / "c", SYSTEM_TEXT * 3    # about 400 tokens
    with Engine.load(scripted_gguf, n_threads=1, n_ctx=4096, grow=True, prompt_cache=cache_at(folder)) as engine:
        send(engine, system)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptCacheWarning)
        with Engine.load(scripted_gguf, n_threads=1, n_ctx=4096, grow=True, prompt_cache=cache_at(folder)) as engine:
            assert engine.allocated_ctx == 256
            r = send(engine, system)
            assert engine.prompt_cache.hits == 1 and engine.allocated_ctx == 512 and r.prompt_tokens > 256
            assert (r.thinking.strip(), r.answer) == (SCRIPT_THINKING_TEXT, SCRIPT_ANSWER_TEXT)


def test_parallel_slots_read_the_file_on_the_scheduler_thread(random_f16, scripted_gguf, tmp_path):
    """A file written by the single stream serves a slot of a parallel engine (the same key: the
    KV bytes do not depend on how many sequences share the context), and a slot's miss writes one."""
    folder = tmp_path / "c"
    with Engine.load(random_f16, n_threads=1, n_ctx=1024, prompt_cache=cache_at(folder)) as single:
        written = logits_after_prompt(single)
    with Engine.load(random_f16, n_threads=1, n_ctx=1024, parallel=2, prompt_cache=cache_at(folder)) as engine:
        chat = Chat(engine, system=SYSTEM_TEXT)
        prompt = engine.tokenize(chat.render(chat.messages() + [{"role": "user", "content": "Which rule?"}], False))
        seq = open_sequence(engine, prompt, threading.Event())
        try:
            evaluated = seq.prefill(prompt)
            assert engine.prompt_cache.hits == 1 and evaluated == len(prompt) - prefix_len(engine)
            assert seq.slot.tokens == prompt
            assert np.abs(seq.logits - written).max() < 1e-3 * np.abs(written).max()
        finally:
            seq.release()
    folder2 = tmp_path / "c2"
    with Engine.load(scripted_gguf, n_threads=1, n_ctx=1024, parallel=2, prompt_cache=cache_at(folder2)) as engine:
        r1 = send(engine)
        assert (engine.prompt_cache.misses, engine.prompt_cache.saves) == (1, 1)
    with Engine.load(scripted_gguf, n_threads=1, n_ctx=1024, parallel=2, prompt_cache=cache_at(folder2)) as engine:
        r2 = send(engine)
        assert engine.prompt_cache.hits == 1 and r2.evaluated_tokens == r2.prompt_tokens - prefix_len(engine)
    assert (r1.thinking, r1.answer) == (r2.thinking, r2.answer) and r2.answer == SCRIPT_ANSWER_TEXT


def test_the_cli_writes_a_cache_unless_told_not_to(scripted_gguf, tmp_path, monkeypatch):
    from typer.testing import CliRunner
    from cli.main import app
    monkeypatch.setenv("QWEN3_EDGE_HOME", str(tmp_path))
    monkeypatch.delenv(pc.ENV, raising=False)
    folder = tmp_path / "cache" / "prompts"
    args = ["run", str(scripted_gguf), "Hi", "--system", SYSTEM_TEXT * 3, "--seed", "0", "--threads", "1"]
    r = CliRunner().invoke(app, args + ["--no-prompt-cache"])
    assert r.exit_code == 0 and SCRIPT_ANSWER_TEXT in r.stdout and not folder.exists()
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and SCRIPT_ANSWER_TEXT in r.stdout and len(list(folder.glob("*.kvcache"))) == 1


def test_the_cli_says_a_damaged_cache_in_one_line(scripted_gguf, tmp_path, monkeypatch):
    from typer.testing import CliRunner
    from cli.main import app
    monkeypatch.setenv("QWEN3_EDGE_HOME", str(tmp_path))
    monkeypatch.delenv(pc.ENV, raising=False)
    args = ["run", str(scripted_gguf), "Hi", "--system", SYSTEM_TEXT * 3, "--seed", "0", "--threads", "1"]
    assert CliRunner().invoke(app, args).exit_code == 0
    [f] = (tmp_path / "cache" / "prompts").glob("*.kvcache")
    corrupt(f, "bit-flipped")
    with warnings.catch_warnings():   # as outside pytest: the CLI shows the warning itself
        r = CliRunner(env={"COLUMNS": "400"}).invoke(app, args)
    assert r.exit_code == 0 and SCRIPT_ANSWER_TEXT in r.stdout
    [line] = [ln for ln in r.stderr.splitlines() if "prompt cache" in ln]
    assert line.startswith("warning: prompt cache") and "corrupt (checksum mismatch)" in line
