"""Generation: next-token choice, KV-cache decoding, prompts from images, outputs."""
