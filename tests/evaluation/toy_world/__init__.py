"""The toy world: a procedural world with exact ground truth, its judge and the training of its models."""
