"""YAML presets (shipped as lna.configs)."""
