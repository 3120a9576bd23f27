"""Ctrl-C in `qwen3-edge chat` through a pseudo-terminal, no tmux needed.

The chat runs with a pty as its controlling terminal (so prompt_toolkit reads the keys, as for a
user); writing b"\\x03" to the master makes the terminal's line discipline send SIGINT, exactly as
a typed Ctrl-C does. The model thinks in an endless loop, so the reply can only end by that.
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path


from tests.scripted_model import SCRIPT_ANSWER_TEXT

ROOT = Path(__file__).resolve().parents[2]
LOOP_WORDS = (" one", " two", " three", " four", " five", " six", " seven", " eight")
# CSI and OSC escape sequences, charset and keypad selections: what a terminal would not show.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78]")


class PtyChat:
    """A child process on a fresh pseudo-terminal; what it writes is collected by a thread."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 160, 0, 0))
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True,   # setsid, then take the pty as controlling tty
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.raw = bytearray()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 1 << 16)
            except OSError:            # EIO: the child closed the terminal
                return
            if not chunk:
                return
            self.raw.extend(chunk)

    def text(self) -> str:
        """Everything shown so far, without escape sequences or carriage returns."""
        return _ESCAPES.sub("", bytes(self.raw).decode("utf-8", "replace")).replace("\r", "")

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait_for(self, predicate, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if predicate(text):
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"chat exited with {self.proc.returncode}; it showed:\n{self.text()[-2000:]}")
            time.sleep(0.05)
        raise AssertionError(f"timed out; the chat showed:\n{self.text()[-2000:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.reader.join(5)
        os.close(self.master)


def test_ctrl_c_stops_the_reply_and_the_chat_goes_on(looping_gguf, tmp_path):
    env = dict(os.environ, TERM="xterm-256color", PROMPT_TOOLKIT_NO_CPR="1", QWEN3_EDGE_HOME=str(tmp_path / "home"))
    chat = PtyChat([sys.executable, "-m", "cli", "chat", str(looping_gguf), "--seed", "1"], env)
    try:
        chat.wait_for(lambda s: ">>>" in s)     # drawn by prompt_toolkit, in raw mode by then
        chat.type(b"Think forever\r")
        # The loop has come round at least once: the reply is mid-thinking and would never end.
        chat.wait_for(lambda s: "Thinking…" in s and "eight one two" in s.rpartition("Think forever")[2])
        at_ctrl_c = len(chat.text())
        chat.type(b"\x03")
        chat.wait_for(lambda s: "cancelled" in s[at_ctrl_c:] and ">>>" in s[at_ctrl_c:].partition("cancelled")[2])

        chat.type(b"Quick question /no_think\r")
        screen = chat.wait_for(lambda s: "no thinking" in s.rpartition("Quick question /no_think")[2])
        reply = screen.rpartition("Quick question /no_think")[2].partition("no thinking")[0]
        answer, footer = reply.strip().rsplit("\n", 1)
        assert answer.strip() == SCRIPT_ANSWER_TEXT              # answered exactly, no stray thinking tokens
        assert not any(word in reply for word in LOOP_WORDS), reply
        assert " tokens · " in footer

        chat.type(b"/history\r")
        screen = chat.wait_for(lambda s: "user: Quick question /no_think" in s.rpartition("/history")[2])
        history = screen.rpartition("/history")[2]
        assert "user: Think forever" in history and history.count(f"assistant: {SCRIPT_ANSWER_TEXT}") == 1

        chat.type(b"/exit\r")
        assert chat.proc.wait(30) == 0
    finally:
        chat.close()
