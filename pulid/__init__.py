"""PuLID-Flux core in plain torch: the model, its checkpoint layout, and the patch applied to Flux."""
