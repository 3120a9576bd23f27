"""The runtime on llama.cpp: loading plans, contexts, devices, slots, threads."""
