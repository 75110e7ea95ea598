"""The model and everything that lays it on devices: the Llama-style transformer, its
attention kernels (chunked, cuDNN, splash, context-parallel), the key/value cache that
decoding attends against, rematerialisation policies, and the one table of sharding rules."""
