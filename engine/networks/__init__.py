"""Networks added to a model: LoRA, textual-inversion embeddings and VAEs."""
