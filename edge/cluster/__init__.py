"""Several machines: llama.cpp's RPC workers, their wire format and relays, the layer split."""
