"""The qwen3-edge runtime: Engine, chat protocol and sampling on llama.cpp (issue 3)."""
