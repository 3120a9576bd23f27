"""Restoring a conversation from an OpenAI-shaped messages list (what an app kept, or what the
`openai` client sends): the same checks the server makes (edge/serve/openai_api.py), so a list the
server takes restores, and a bad one is one ChatError naming the message and field."""

from __future__ import annotations

from typing import Any

from edge.chat import ChatError, Message


def conversation_from_messages(messages: Any) -> tuple[str | None, list[Message]]:
    """The system prompt (None when the list has none) and the history of `messages`:
    system/developer first, then user, assistant (content, reasoning_content, tool_calls) and
    tool messages answering the calls of the assistant message before them."""
    from edge.serve.openai_api import RequestError, _conversation   # openai_api imports chat: import late

    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ChatError("messages takes a list of message dicts ({'role': ..., 'content': ...})")
    try:
        system_parts, turns = _conversation(messages, [])   # unknown keys: accepted and ignored, as the server does
    except RequestError as e:
        raise ChatError(str(e)) from None
    return ("\n".join(system_parts) or None), turns
