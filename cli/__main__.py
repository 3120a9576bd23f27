"""`python -m cli` runs the same app as the `qwen3-edge` script."""

from .main import app

app(prog_name="qwen3-edge")
