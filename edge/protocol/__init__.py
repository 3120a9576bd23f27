"""Qwen3's chat protocol as pure functions: the template, the thinking parser, tool calls,
grammars and schemas, modes, budgets, text checks, the model's kind."""
