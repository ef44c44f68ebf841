"""The ComfyUI integration of the plain-torch core in ``pulid/``: patches, wrappers, CFG start, guards and the
model handles. It imports ``comfy`` directly; ``pulid/`` never imports it."""
