"""The runtime on llama.cpp: loading (a pure plan, then the Engine), the KV sequence and the
scheduler, contexts that grow, devices, CPU buffers, the sampler chain, threads and asyncio."""
