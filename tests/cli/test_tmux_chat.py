"""`qwen3-edge chat` in a real terminal: tmux types, the screen is read back.

The model here thinks in an endless loop unless a budget cuts it, so there is a reply long enough
to interrupt with Ctrl-C; every other reply follows Qwen3's protocol exactly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.scripted_model import SCRIPT_ANSWER_TEXT



@pytest.fixture(autouse=True)
def tmux_installed() -> None:
    """Skip without tmux, except in CI (CI=true, set by .ci/run, which installs it): there it fails."""
    if shutil.which("tmux") is None:
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)("tmux is not installed")


class Terminal:
    def __init__(self, command: str, cwd: Path):
        self.socket, self.name = f"qe-{uuid.uuid4().hex[:8]}", "chat"
        self.tmux("new-session", "-d", "-s", self.name, "-x", "160", "-y", "60", "-c", str(cwd), command)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True, text=True).stdout

    def send(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.name, *keys)

    def type(self, line: str) -> None:
        self.send("-l", line)
        self.send("Enter")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-S", "-200", "-t", self.name)

    def wait_for(self, predicate, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.screen()
            if predicate(text):
                return text
            time.sleep(0.2)
        raise AssertionError(f"timed out; the screen shows:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def test_chat_in_a_real_terminal(looping_gguf, tmp_path):
    model = looping_gguf
    command = (f"env QWEN3_EDGE_HOME={tmp_path / 'home'} TERM=xterm-256color "
               f"{sys.executable} -m cli chat {model} --seed 1 --budget 20")
    term = Terminal(command, Path(__file__).resolve().parents[2])
    try:
        term.wait_for(lambda s: ">>>" in s)
        term.type("Hello")                                        # thinks 20 tokens (budget), answers
        term.wait_for(lambda s: "thinking 20/20 · budget reached" in s)
        term.type("/no_think")
        term.wait_for(lambda s: "mode: no_think" in s)
        term.type("Quick question")
        term.wait_for(lambda s: "no thinking" in s)
        term.type("/budget 8")
        term.wait_for(lambda s: "thinking budget: 8" in s)
        term.type("Think about it /think")                        # soft switch back to thinking
        term.wait_for(lambda s: "thinking 8/8 · budget reached" in s)
        term.type("/budget off")
        term.wait_for(lambda s: "thinking budget: off" in s)
        term.type("Think forever")                                # no budget: endless thinking loop
        term.wait_for(lambda s: s.count("Thinking…") == 3 and s.rstrip().endswith(("one", "two", "three", "four", "five", "six", "seven", "eight")))
        term.send("C-c")                                          # Ctrl-C stops the reply, not the chat
        screen = term.wait_for(lambda s: "cancelled" in s and s.rstrip().endswith(">>>"))
        term.type("/history")
        screen = term.wait_for(lambda s: "user: Think forever" in s)
        assert screen.count(f"assistant: {SCRIPT_ANSWER_TEXT}") == 3  # the three finished replies
        assert "user: Think about it /think" in screen and "user: Quick question" in screen
        assert "Considering the limited time by the user" in screen   # the budget phrase, dimmed thinking
        term.type("/exit")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if subprocess.run(["tmux", "-L", term.socket, "has-session", "-t", term.name], capture_output=True).returncode:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("chat did not exit on /exit")
    finally:
        term.close()
