"""Text that is not text, through the library and the CLI: a lone UTF-16 surrogate, a NUL, bytes
that are not UTF-8. Each is one clear error naming the character and where, with nothing changed
(history, mode, the transcript loaded before); never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from edge.chat import Chat, ChatError, load_transcript, save_transcript
from edge.runtime.engine import Engine
from edge.protocol.modes import Mode
from tests.scripted_model import SCRIPT_ANSWER_TEXT
from tests.chat.test_engine_chat import reference_prompt

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine(scripted_gguf):
    with Engine.load(scripted_gguf, n_ctx=1024, n_threads=1) as e:
        yield e


@pytest.mark.parametrize("text, fragment", [
    ("caf\udce9 /no_think", "lone UTF-16 surrogate (U+DCE9 at character 3)"),  # an undecodable argv byte
    ("\ud83d", "U+D83D at character 0"),                                         # half an emoji
    ("a\x00b /no_think", "NUL character (U+0000 at character 1)"),
])
def test_send_refuses_text_that_is_not_text_and_changes_nothing(engine, text, fragment):
    chat = Chat(engine, seed=1)
    chat.send("Hi")
    history, mode = list(chat.history), chat.mode
    with pytest.raises(ChatError, match=r"^the message holds ") as e:
        chat.send(text)
    assert fragment in str(e.value) and "\n" not in str(e.value)
    assert chat.history == history and chat.mode is mode is Mode.THINK  # the /no_think did not apply
    assert chat.send("Hi again").answer == SCRIPT_ANSWER_TEXT


def test_a_system_prompt_or_message_that_is_not_text(engine):
    with pytest.raises(ChatError, match="the system prompt holds a lone UTF-16 surrogate"):
        Chat(engine, system="Be \ud800brief").send("Hi")
    with pytest.raises(ChatError, match="a message must be a string, not bytes"):
        Chat(engine).send(b"Hi")


def transcript(tmp_path: Path, content: str) -> Path:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"version": 1, "system": None, "mode": "think", "budget": None,
                                "messages": [{"role": "user", "content": "Hi", "thinking": ""},
                                             {"role": "assistant", "content": content, "thinking": ""}]}),
                    encoding="utf-8")  # json.dumps writes a lone surrogate as the escape "\ud800"
    return path


@pytest.mark.parametrize("content, fragment", [
    ("ok \ud800", "messages[1].content holds a lone UTF-16 surrogate (U+D800 at character 3)"),
    ("ok \x00", "messages[1].content holds a NUL character"),
])
def test_load_transcript_refuses_what_is_not_text(engine, tmp_path, content, fragment):
    chat = Chat(engine, seed=1)
    chat.send("Hi")
    before = list(chat.history)
    path = transcript(tmp_path, content)
    with pytest.raises(ChatError, match="not a qwen3-edge transcript") as e:
        load_transcript(chat, path)
    assert fragment in str(e.value) and chat.history == before
    save_transcript(chat, tmp_path / "good.json")
    load_transcript(chat, tmp_path / "good.json")  # a good file still loads
    assert chat.history == before


def test_load_transcript_refuses_undecodable_and_deep_files(engine, tmp_path):
    chat = Chat(engine)
    cesu = tmp_path / "cesu.json"  # a surrogate written as UTF-8 bytes: not UTF-8
    cesu.write_bytes('{"messages": [{"role": "user", "content": "\ud800"}]}'.encode("utf-8", "surrogatepass"))
    deep = tmp_path / "deep.json"
    deep.write_text('{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}")
    for path, fragment in ((cesu, "can't decode byte 0xed"), (deep, "nested too deeply")):
        with pytest.raises(ChatError, match="not a qwen3-edge transcript") as e:
            load_transcript(chat, path)
        assert fragment in str(e.value)


def run_cli(args: list, stdin: bytes) -> subprocess.CompletedProcess:
    """`qwen3-edge run` in a child process, as a shell pipes bytes into it."""
    return subprocess.run([sys.executable, "-m", "cli", "run", *args], input=stdin, capture_output=True, cwd=ROOT,
                          env={**os.environ, "COLUMNS": "300"}, timeout=120)


@pytest.mark.parametrize("stdin, fragment", [
    (b"caf\xe9 au lait", "stdin is not UTF-8 text (byte 0xe9 at offset 3)"),          # Latin-1
    ("Hi there".encode("utf-16"), "stdin is UTF-16"),                                  # PowerShell's > redirect
    ("Hi".encode("utf-16-le"), "the prompt holds a NUL character (U+0000 at character 1)"),  # no BOM: NULs
    ("\ud800".encode("utf-8", "surrogatepass"), "stdin is not UTF-8 text (byte 0xed at offset 0)"),
])
def test_run_reading_bytes_that_are_not_text_from_stdin(scripted_gguf, stdin, fragment):
    r = run_cli([str(scripted_gguf), "-"], stdin)
    err = r.stderr.decode()
    assert r.returncode == 1 and fragment in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and not r.stdout


def test_run_with_an_undecodable_argument(scripted_gguf):
    """A byte that is not UTF-8 in argv reaches Python as a lone surrogate (surrogateescape)."""
    r = run_cli([os.fsencode(str(scripted_gguf)), b"caf\xe9"], b"")
    err = r.stderr.decode()
    assert r.returncode == 1 and "the prompt holds a lone UTF-16 surrogate (U+DCE9 at character 3)" in err, err
    assert "Traceback" not in err


def test_run_takes_utf8_stdin_with_a_bom(scripted_gguf, engine):
    """The BOM is dropped, not sent: the prompt is exactly the message's (prompt_tokens, by llama.cpp's tokenizer)."""
    r = CliRunner().invoke(app, ["run", str(scripted_gguf), "-", "--no-think", "--seed", "1", "--json"],
                           input="\ufeffcaf\u00e9?".encode("utf-8"))
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    expected = engine.tokenize(reference_prompt([{"role": "user", "content": "caf\u00e9?"}], False))
    assert data["answer"] == SCRIPT_ANSWER_TEXT and data["prompt_tokens"] == len(expected)
