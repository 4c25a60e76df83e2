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
  EXPECT_EQ(table.default_appearance_layers(),
            (std::vector<std::string>{"output.3.0", "output.4.0", "output.5.0", "output.6.0",
                                      "output.7.0", "output.8.0"}));
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
  EXPECT_EQ(table.default_appearance_layers(),
            (std::vector<std::string>{"output.0.9", "output.1.9", "output.2.9", "output.3.1",
                                      "output.4.1", "output.5.1"}));
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
