"""The `qwen3-edge` command line: a thin Typer + rich layer over the quantize and edge libraries."""
