// Layer tables derived from the UNet configurations of SD1.x and SDXL (ComfyUI's unet_config values).
#include "pickdraw/model_layers.h"

#include <gtest/gtest.h>

#include <stdexcept>

namespace {

pickdraw::UNetLayout sd1() {
  return {"sd1", 320, {1, 2, 4, 4}, 2, {1, 1, 1, 1, 1, 1, 0, 0}, 1, {1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0}};
}

pickdraw::UNetLayout sdxl() {
  return {"sdxl", 320, {1, 2, 4}, 2, {0, 0, 2, 2, 10, 10}, 10, {0, 0, 0, 2, 2, 2, 10, 10, 10}};
}

TEST(ModelLayerTable, Sd1HasSixteenLayersAtTheKnownKeys) {
  const pickdraw::ModelLayerTable table(sd1());
  ASSERT_EQ(table.layers().size(), 16u);
  const std::vector<std::string> expected_inputs = {"input.1.0", "input.2.0", "input.4.0",
                                                    "input.5.0", "input.7.0", "input.8.0"};
  for (size_t i = 0; i < expected_inputs.size(); ++i) EXPECT_EQ(table.layers()[i].key, expected_inputs[i]);
  EXPECT_EQ(table.layer("middle.0.0").downscale, 8);
  EXPECT_EQ(table.layer("output.3.0").downscale, 4);
  EXPECT_EQ(table.layer("output.3.0").channels, 1280);
  EXPECT_EQ(table.layer("output.11.0").downscale, 1);
  // 512 px (64x64 latent): the 16x16 and 32x32 grids, the two coarsest with at least 16 tokens a side
  EXPECT_EQ(table.default_appearance_layers(64, 64),
            (std::vector<std::string>{"output.3.0", "output.4.0", "output.5.0", "output.6.0",
                                      "output.7.0", "output.8.0"}));
  // 256 px: 8x8 is too coarse, so 16x16 and 32x32 are one level finer; 128 px: only 16x16 is fine enough
  EXPECT_EQ(table.default_appearance_layers(32, 32),
            (std::vector<std::string>{"output.6.0", "output.7.0", "output.8.0", "output.9.0",
                                      "output.10.0", "output.11.0"}));
  EXPECT_EQ(table.default_appearance_layers(16, 16),
            (std::vector<std::string>{"output.9.0", "output.10.0", "output.11.0"}));
  // no grid reaches 16 tokens a side: the finest there is; the shorter side decides
  EXPECT_EQ(table.default_appearance_layers(8, 8), table.default_appearance_layers(16, 16));
  EXPECT_EQ(table.default_appearance_layers(64, 31), table.default_appearance_layers(32, 32));
  EXPECT_THROW(table.default_appearance_layers(0, 64), std::invalid_argument);
  EXPECT_EQ(table.default_layout_layers().size(), 16u);
  // 512 px -> 64x64 latent: 16x16 at downscale 4; odd sizes round up like the strided convs.
  EXPECT_EQ(table.token_grid("output.3.0", 64, 64), (std::array<int64_t, 2>{16, 16}));
  EXPECT_EQ(table.token_grid("middle.0.0", 97, 64), (std::array<int64_t, 2>{13, 8}));
}

TEST(ModelLayerTable, SdxlHasSeventyLayersAndSixAppearanceLayers) {
  const pickdraw::ModelLayerTable table(sdxl());
  EXPECT_EQ(table.layers().size(), 70u);
  EXPECT_EQ(table.layer("input.4.1").downscale, 2);
  EXPECT_EQ(table.layer("middle.0.9").channels, 1280);
  // 1024 px (128x128 latent): its only cross-attention resolutions, 32x32 and 64x64 tokens
  EXPECT_EQ(table.default_appearance_layers(128, 128),
            (std::vector<std::string>{"output.0.9", "output.1.9", "output.2.9", "output.3.1",
                                      "output.4.1", "output.5.1"}));
  EXPECT_EQ(table.default_appearance_layers(64, 64), table.default_appearance_layers(128, 128));
  // 256 px: 16x16 tokens at 1/2 only
  EXPECT_EQ(table.default_appearance_layers(32, 32),
            (std::vector<std::string>{"output.3.1", "output.4.1", "output.5.1"}));
  EXPECT_THROW(table.layer("input.1.0"), std::invalid_argument);
}

TEST(ModelLayerTable, RefusesOtherArchitecturesAndBrokenLayouts) {
  auto flux = sd1();
  flux.family = "flux";
  try {
    pickdraw::ModelLayerTable table(flux);
    ADD_FAILURE() << "flux accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("not supported"), std::string::npos) << e.what();
  }
  auto broken = sd1();
  broken.transformer_depth.pop_back();
  EXPECT_THROW(pickdraw::ModelLayerTable{broken}, std::invalid_argument);
  auto none = sd1();
  std::fill(none.transformer_depth.begin(), none.transformer_depth.end(), 0);
  std::fill(none.transformer_depth_output.begin(), none.transformer_depth_output.end(), 0);
  none.transformer_depth_middle = 0;
  EXPECT_THROW(pickdraw::ModelLayerTable{none}, std::invalid_argument);
}

}  // namespace
