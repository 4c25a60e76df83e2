"""The toy world's runtime side: its models as ComfyUI objects (model.py) and the weights and references they ship with."""
