"""The UniMedVL network: Qwen2 MoT decoder, SigLIP NaViT, FLUX VAE and the heads that join them.

`builder.py` constructs it, `packing.py` owns the segment vocabulary and layout rules, `kv_cache.py`
the inference contexts, and `sampling.py` the flow sampler with guidance (apart from the network).
"""
