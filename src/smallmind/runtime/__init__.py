"""Runtime: KV cache, sampler, generation loop, optimizer and trainer."""
