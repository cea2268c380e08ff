"""The UniMedVL network: Qwen2 MoT decoder, SigLIP NaViT, FLUX VAE and the heads that join them."""
