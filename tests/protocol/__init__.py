"""Qwen3's protocol as pure functions: template, parser, tool calls, grammars, modes."""
