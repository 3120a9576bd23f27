"""Serving: the ASGI server and the API dialects (OpenAI, ...) over the one request-to-Chat mapping."""
