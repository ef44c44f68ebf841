"""Likeness tools: ArcFace similarity of generated faces and weight-sweep pictures (numpy / PIL, no ComfyUI)."""
