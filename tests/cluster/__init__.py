"""RPC workers and the layer split."""
