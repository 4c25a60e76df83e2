"""The DreamBench harness: Pick-and-Draw generations on the DreamBooth benchmark, scored with DINO, CLIP-I and
CLIP-T (Ruiz et al., *DreamBooth*, arXiv 2208.12242, section 4.1). Run it with ``tests/evaluation/dreambench.py``.

One module per concept: ``dataset`` (the benchmark as published), ``personalisation`` (LoRA / DreamBooth /
Textual-Inversion files per subject), ``models`` (ComfyUI and the checkpoints), ``generation`` (the nodes' code
path), ``encoders`` and ``metrics`` (the scores), ``results`` (images, CSV rows, resume), ``sharding``
(torchrun ranks), ``summary`` and ``plot`` (the outputs), ``cli`` (the command).
"""
