// The attention recorder's C++ API: output equals scaled_dot_product_attention, conditional rows
// are found for any chunk order, and nothing is kept unless gradients or a capture pass ask.
#include "pickdraw/attention_recorder.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include "test_utils.h"

namespace {

constexpr int64_t kHeads = 2, kDim = 4, kTokens = 5;

at::Tensor reference_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  auto split = [](const at::Tensor& x) {
    return x.view({x.size(0), x.size(1), kHeads, kDim}).transpose(1, 2);
  };
  const auto o = at::scaled_dot_product_attention(split(q), split(k), split(v));
  return o.transpose(1, 2).reshape({q.size(0), q.size(1), kHeads * kDim});
}

pickdraw::AttentionRecorder make_recorder() {
  return pickdraw::AttentionRecorder({{"output.3.0", {true, true}}}, {1, 3});
}

TEST(AttentionRecorder, OutputMatchesSdpaAndKeepsConditionalRows) {
  pickdraw::testing::seed_for_test();
  auto recorder = make_recorder();
  recorder.set_capture(true);
  const auto q = at::randn({6, 16, kHeads * kDim});
  const auto k = at::randn({6, kTokens, kHeads * kDim});
  const auto v = at::randn({6, kTokens, kHeads * kDim});
  const auto out = recorder.cross_attention(q, k, v, {"output.3.0", kHeads, {1, 0, 0}, 4, 4});
  EXPECT_TRUE(at::allclose(out, reference_attention(q, k, v), 1e-5, 1e-5));
  // Chunks of 2 rows: [uncond, cond, cond] -> rows 2..5 recorded.
  const auto& maps = recorder.maps().at("output.3.0");
  EXPECT_EQ(maps.sizes(), at::IntArrayRef({4, 2, 4, 4}));
  EXPECT_EQ(recorder.features().at("output.3.0").sizes(), at::IntArrayRef({4, 16, kHeads * kDim}));
  // Features are the image side (the query projection), not the attention output.
  EXPECT_TRUE(at::equal(recorder.features().at("output.3.0"), q.narrow(0, 2, 4)));
  recorder.clear();
  recorder.set_feature_source(pickdraw::FeatureSource::kAttentionOutput);
  recorder.cross_attention(q, k, v, {"output.3.0", kHeads, {1, 0, 0}, 4, 4});
  EXPECT_TRUE(at::allclose(recorder.features().at("output.3.0"), out.narrow(0, 2, 4), 1e-5, 1e-5));
  EXPECT_EQ(pickdraw::feature_source_from_name("attn2_query"), pickdraw::FeatureSource::kQuery);
  EXPECT_STREQ(pickdraw::feature_source_name(pickdraw::FeatureSource::kAttentionOutput), "attn2_output");
  EXPECT_THROW(pickdraw::feature_source_from_name("attn2_value"), c10::ValueError);
}

TEST(AttentionRecorder, RecordsOnlyWithGradientsOrCapture) {
  auto recorder = make_recorder();
  const auto q = at::randn({2, 16, kHeads * kDim});
  const auto k = at::randn({2, kTokens, kHeads * kDim});
  {
    at::NoGradGuard no_grad;
    EXPECT_FALSE(recorder.recording());
    recorder.cross_attention(q, k, k, {"output.3.0", kHeads, {1, 0}, 4, 4});
    EXPECT_EQ(recorder.captured_bytes(), 0);
  }
  EXPECT_TRUE(recorder.recording());  // grad mode is on by default
  recorder.cross_attention(q, k, k, {"output.3.0", kHeads, {1, 0}, 4, 4});
  EXPECT_GT(recorder.captured_bytes(), 0);
  recorder.clear();
  EXPECT_EQ(recorder.captured_bytes(), 0);
}

TEST(AttentionRecorder, RejectsInconsistentCalls) {
  auto recorder = make_recorder();
  recorder.set_capture(true);
  const auto q = at::randn({3, 16, kHeads * kDim});
  const auto k = at::randn({3, kTokens, kHeads * kDim});
  EXPECT_THROW(recorder.cross_attention(q, k, k, {"output.3.0", kHeads, {1, 0}, 4, 4}), c10::Error);
  EXPECT_THROW(recorder.cross_attention(q, k, k, {"output.3.0", kHeads, {1, 0, 0}, 4, 5}), c10::Error);
  EXPECT_THROW(recorder.cross_attention(q, k, k, {"output.3.0", 3, {1, 0, 0}, 4, 4}), c10::Error);
  EXPECT_THROW(pickdraw::AttentionRecorder({{"a", {false, false}}}, {1}), c10::Error);
  EXPECT_THROW(pickdraw::AttentionRecorder({{"a", {true, false}}}, {}), c10::Error);
}

TEST(AttentionRecorder, RecomputedMapsGiveTheSameMapsAndGradients) {
  pickdraw::testing::seed_for_test();
  const auto q = at::randn({2, 6, kHeads * kDim}, at::kDouble).requires_grad_();
  const auto k = at::randn({2, kTokens, kHeads * kDim}, at::kDouble).requires_grad_();
  const auto v = at::randn({2, kTokens, kHeads * kDim}, at::kDouble);
  std::vector<at::Tensor> maps, grads;
  for (const bool recompute : {false, true}) {
    auto recorder = make_recorder();
    recorder.set_recompute_maps(recompute);
    EXPECT_EQ(recorder.recompute_maps(), recompute);
    recorder.cross_attention(q, k, v, {"output.3.0", kHeads, {1, 0}, 2, 3});
    const auto recorded = recorder.maps().at("output.3.0");
    maps.push_back(recorded.detach());
    const auto g = torch::autograd::grad({recorded.pow(2).sum()}, {q, k});
    grads.push_back(at::cat({g[0].flatten(), g[1].flatten()}));
  }
  EXPECT_TRUE(at::allclose(maps[0], maps[1]));
  EXPECT_TRUE(at::allclose(grads[0], grads[1]));
  EXPECT_GT(grads[0].abs().max().item<double>(), 0.0);
}

}  // namespace
