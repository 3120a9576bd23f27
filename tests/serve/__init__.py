"""The server and its API dialects."""
