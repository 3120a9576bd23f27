"""The qwen3-edge runtime: Engine (engine.py), the Chat session and Qwen3's protocol (chat.py),
the model store (store.py, hub.py) and the OpenAI-compatible server (server.py)."""
