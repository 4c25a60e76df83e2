// The guidance engine's C++ API: step windows, recorder layers, capture passes and the energy.
#include "pickdraw/guidance_engine.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include "test_utils.h"

namespace {

pickdraw::GuidanceConfig config() {
  pickdraw::GuidanceConfig c;
  c.appearance_layers = {"output.1.0"};
  c.layout_layers = {"middle.0.0", "output.1.0"};
  c.token_indices = {1};
  return c;
}

pickdraw::GuidanceMetadata metadata(std::vector<std::string> layers) {
  pickdraw::GuidanceMetadata m;
  m.layer_keys = std::move(layers);
  m.sigmas = {4.0, 1.0};
  return m;
}

// One step of a two-layer "model": the recorder sees q from the latent, k and v from a context.
void run_step(pickdraw::AttentionRecorder& recorder, const at::Tensor& latent,
              const at::Tensor& context, std::vector<int64_t> cond_or_uncond) {
  const auto q = latent.flatten(2).transpose(1, 2);  // [B, 64, 4]
  recorder.cross_attention(q, context, context, {"output.1.0", 2, cond_or_uncond, 8, 8});
  const auto q_mid = at::avg_pool2d(latent, 2).flatten(2).transpose(1, 2);  // [B, 16, 4]
  recorder.cross_attention(q_mid, context, context, {"middle.0.0", 2, cond_or_uncond, 4, 4});
}

TEST(GuidanceEngine, WindowsAreExactFractionsOfTheSteps) {
  auto c = config();
  c.appearance_end = 0.8;
  c.layout_end = 0.5;
  c.appearance_start = 0.0;
  const pickdraw::GuidanceEngine engine(c);
  for (int64_t i = 0; i < 20; ++i) {
    EXPECT_EQ(engine.appearance_active(i, 20), i < 16) << i;
    EXPECT_EQ(engine.layout_active(i, 20), i < 10) << i;
  }
  // Fractions without an exact binary value (0.3 * 10 is 3.0000000000000004 in doubles, 0.7 * 10
  // is 7.000000000000001) still start and end on whole steps.
  c.appearance_start = 0.3;
  c.appearance_end = 0.7;
  const pickdraw::GuidanceEngine decimal(c);
  for (int64_t i = 0; i < 10; ++i) {
    EXPECT_EQ(decimal.appearance_active(i, 10), i >= 3 && i < 7) << i;
  }
  for (int64_t i = 0; i < 20; ++i) {
    EXPECT_EQ(decimal.appearance_active(i, 20), i >= 6 && i < 14) << i;
  }
  c.layout_start = 0.7;
  EXPECT_THROW(pickdraw::GuidanceEngine{c}, c10::Error);
}

TEST(GuidanceEngine, CapturesThenLowersTheEnergyAlongItsGradient) {
  pickdraw::testing::seed_for_test();
  auto both_from_the_first_step = config();
  both_from_the_first_step.appearance_start = 0.0;  // step 0 below has both terms on
  const pickdraw::GuidanceEngine engine(both_from_the_first_step);
  pickdraw::AttentionRecorder recorder(engine.recorder_layers(), {1});
  EXPECT_TRUE(recorder.watches("middle.0.0") && recorder.watches("output.1.0"));
  pickdraw::Palette palette(metadata({"output.1.0"}));
  pickdraw::LayoutTemplate layout(metadata({"middle.0.0", "output.1.0"}));
  const auto context = at::randn({1, 3, 4}, at::kDouble);
  recorder.set_capture(true);
  for (size_t i = 0; i < 2; ++i) {
    at::NoGradGuard no_grad;
    recorder.clear();
    run_step(recorder, at::randn({1, 4, 8, 8}, at::kDouble), context, {0});
    engine.record_palette_entry(recorder, palette, i);
    engine.record_template_entry(recorder, layout, i);
  }
  recorder.set_capture(false);

  const auto latent = at::randn({2, 4, 8, 8}, at::kDouble).requires_grad_();
  const auto contexts = context.expand({2, 3, 4});
  recorder.clear();
  run_step(recorder, latent, contexts, {1, 0});
  const auto loss = engine.step_loss(recorder, &palette, &layout, 1.2, 0, 10);
  ASSERT_TRUE(loss.appearance_on && loss.layout_on);
  EXPECT_EQ(loss.palette_sigma_index, 1);
  EXPECT_EQ(loss.total.sizes(), at::IntArrayRef({1}));
  EXPECT_GT(loss.mask_pixels.at("output.1.0").item<int64_t>(), 0);
  const auto grad = torch::autograd::grad({loss.total.sum()}, {latent})[0];
  recorder.clear();
  run_step(recorder, (latent - 0.5 * grad / grad.abs().max()).detach(), contexts, {1, 0});
  const auto after = engine.step_loss(recorder, &palette, &layout, 1.2, 0, 10);
  EXPECT_LT(after.total.item<double>(), loss.total.item<double>());
  EXPECT_THROW(engine.step_loss(recorder, nullptr, &layout, 1.2, 0, 10), c10::Error);
}

}  // namespace
