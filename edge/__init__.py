"""The qwen3-edge runtime: Engine (engine.py), the Chat session and Qwen3's protocol (chat.py),
tool calls (tool_calls.py) and grammars for tools and JSON schemas (grammar.py), the model store
(store.py, hub.py) and the OpenAI-compatible server (server.py).

An app imports from here: ``from edge import Engine, Chat``.
"""

from edge.runtime.openmp import apply_wait_setting

WORKERS_WAIT = apply_wait_setting()  # first: libgomp reads its wait setting once, as llama_cpp loads it

from edge.serve.completion import complete
from edge.chat import Chat, ChatError, Event, Message, Reply, load_transcript, save_transcript
from edge.runtime.engine import Engine, EngineError
from edge.protocol.grammar import GrammarError
from edge.protocol.modes import Mode
from edge.protocol.tool_calls import ToolCall

__all__ = ["Chat", "ChatError", "Engine", "EngineError", "Event", "GrammarError", "Message", "Mode", "Reply",
           "ToolCall", "complete", "load_transcript", "save_transcript"]
