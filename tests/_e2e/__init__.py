"""Helpers for the end-to-end tests: tiny model files, a ComfyUI server runner, a UI→API converter."""
