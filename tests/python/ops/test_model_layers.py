"""Model-family layer tables through the Python module, from ComfyUI-style unet_config values."""

from __future__ import annotations

import pytest

SD1 = dict(family="sd1", model_channels=320, channel_mult=[1, 2, 4, 4], num_res_blocks=2,
           transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
           transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
SD2 = dict(SD1, family="sd2")
SDXL = dict(family="sdxl", model_channels=320, channel_mult=[1, 2, 4], num_res_blocks=2,
            transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10,
            transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10])


def table(ops, config):
    layout = ops.UNetLayout()
    for key, value in config.items():
        setattr(layout, key, value)
    return ops.ModelLayerTable(layout)


@pytest.mark.parametrize("config, count, appearance", [
    (SD1, 16, [f"output.{i}.0" for i in range(3, 9)]),
    (SD2, 16, [f"output.{i}.0" for i in range(3, 9)]),
    (SDXL, 70, ["output.0.9", "output.1.9", "output.2.9", "output.3.1", "output.4.1", "output.5.1"]),
])
def test_layers_and_defaults(ops, config, count, appearance):
    t = table(ops, config)
    assert len(t.layers()) == count
    assert t.default_appearance_layers(64, 64) == appearance  # a 64 x 64 latent: the 16 and 32 token grids
    assert t.default_layout_layers() == [layer.key for layer in t.layers()]
    assert all(t.layer(k).block == "output" for k in appearance)


def test_token_grids_follow_the_latent(ops):
    t = table(ops, SDXL)
    assert t.token_grid("output.0.9", 128, 128) == [32, 32]
    assert t.token_grid("input.4.0", 96, 136) == [48, 68]


def test_unsupported_architectures_are_named(ops):
    assert ops.supported_families() == ["sd1", "sd2", "sdxl"]
    with pytest.raises(ValueError, match="not supported.*DiT"):
        table(ops, dict(SD1, family="flux"))
    with pytest.raises(ValueError, match="transformer_depth needs"):
        table(ops, dict(SD1, transformer_depth=[1, 1]))
