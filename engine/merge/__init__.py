"""The Checkpoint Merger: two or three checkpoints of one family merged tensor by tensor into a
new .safetensors file in the checkpoints folder (checkpoint_merger.py), read and written a piece
at a time (safetensors_stream.py), with a VAE baked in (vae_bake.py)."""
