// Saliency masks, Gaussian smoothing and the layout loss.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "pickdraw/gaussian_smoothing.h"
#include "pickdraw/layout_loss.h"
#include "pickdraw/saliency_mask.h"
#include "test_utils.h"

namespace {

using pickdraw::testing::seed_for_test;

TEST(SaliencyMask, ThresholdsTheNormalisedMap) {
  // Values 0..15: normalised i/15; tau 0.5 keeps i >= 8.
  const auto map = at::arange(16, at::kFloat).view({1, 4, 4});
  const auto mask = pickdraw::saliency_mask(map, 0.5, 0);
  EXPECT_EQ(mask.sizes(), at::IntArrayRef({1, 4, 4}));
  EXPECT_EQ(mask.sum().item<float>(), 8.0f);
  EXPECT_TRUE(at::equal(mask.view({-1}), (at::arange(16) >= 8).to(at::kFloat)));
  // Scale and offset do not change a min-max normalised mask.
  EXPECT_TRUE(at::equal(pickdraw::saliency_mask(map * 7 + 3, 0.5, 0), mask));
  // Raising tau never adds pixels.
  EXPECT_LE(pickdraw::saliency_mask(map, 0.8, 0).sum().item<float>(), 8.0f);
}

TEST(SaliencyMask, FallsBackToTopKWhenTooFewPixelsPass) {
  auto map = at::zeros({2, 3, 3});
  map[0][1][1] = 1.0;  // one salient pixel, fewer than min_mask_pixels = 4
  const auto mask = pickdraw::saliency_mask(map, 0.5, 4);
  EXPECT_EQ(mask[0].sum().item<float>(), 4.0f);
  EXPECT_EQ(mask[0][1][1].item<float>(), 1.0f);
  // The rest are ties at 0: the lowest flat indices 0, 1, 2 win.
  EXPECT_EQ(mask[0][0][0].item<float>(), 1.0f);
  EXPECT_EQ(mask[0][0][1].item<float>(), 1.0f);
  EXPECT_EQ(mask[0][0][2].item<float>(), 1.0f);
  // A flat map is all ties: top-k of the first pixels, never an empty mask.
  EXPECT_EQ(mask[1].sum().item<float>(), 4.0f);
  // With the fallback disabled a flat map gives an empty mask.
  EXPECT_EQ(pickdraw::saliency_mask(map, 0.5, 0)[1].sum().item<float>(), 0.0f);
  // k is capped at the pixel count.
  EXPECT_EQ(pickdraw::saliency_mask(at::zeros({1, 1, 2}), 0.5, 10).sum().item<float>(), 2.0f);
}

TEST(SaliencyMask, ResamplesToTheFeatureResolutionWithoutGradient) {
  seed_for_test();
  const auto map = at::rand({2, 8, 8}).requires_grad_();
  const auto mask = pickdraw::saliency_mask(map, 0.5, 4, std::array<int64_t, 2>{16, 32});
  EXPECT_EQ(mask.sizes(), at::IntArrayRef({2, 16, 32}));
  EXPECT_FALSE(mask.requires_grad());
  EXPECT_TRUE(at::all((mask == 0) | (mask == 1)).item<bool>());
  const auto small = pickdraw::saliency_mask(map, 0.5, 4, std::array<int64_t, 2>{2, 2});
  EXPECT_EQ(small.sizes(), at::IntArrayRef({2, 2, 2}));
}

TEST(SaliencyMask, RejectsBadArguments) {
  EXPECT_THROW(pickdraw::saliency_mask(at::rand({4, 4}), 0.5), c10::Error);
  EXPECT_THROW(pickdraw::saliency_mask(at::rand({1, 4, 4}), 1.5), c10::Error);
  EXPECT_THROW(pickdraw::saliency_mask(at::rand({1, 4, 4}), 0.5, -1), c10::Error);
  EXPECT_THROW(pickdraw::saliency_mask(at::ones({1, 4, 4}, at::kLong), 0.5), c10::Error);
}

TEST(AverageTokenMaps, AveragesAtOneResolution) {
  const auto a = at::ones({1, 4, 4});
  const auto b = at::full({1, 8, 8}, 3.0);
  const auto avg = pickdraw::average_token_maps({a, b}, {8, 8});
  EXPECT_TRUE(at::allclose(avg, at::full({1, 8, 8}, 2.0)));
  EXPECT_THROW(pickdraw::average_token_maps({a, at::ones({2, 4, 4})}, {4, 4}), c10::Error);
}

TEST(GaussianSmoothing, KernelIsNormalisedAndSymmetric) {
  const auto k = pickdraw::gaussian_kernel_1d(5, 1.0);
  EXPECT_NEAR(k.sum().item<double>(), 1.0, 1e-15);
  EXPECT_TRUE(at::allclose(k, k.flip(0)));
  EXPECT_THROW(pickdraw::gaussian_kernel_1d(4, 1.0), c10::Error);
  EXPECT_THROW(pickdraw::gaussian_kernel_1d(3, 0.0), c10::Error);
}

TEST(GaussianSmoothing, PreservesConstantsAndMass) {
  const auto c = at::full({2, 3, 6, 7}, 0.25, at::kDouble);
  EXPECT_TRUE(at::allclose(pickdraw::gaussian_smooth(c, 3, 0.5), c, 1e-14, 1e-14));
  EXPECT_TRUE(at::allclose(pickdraw::gaussian_smooth(c, 5, 2.0), c, 1e-14, 1e-14));
  // An interior impulse spreads into the kernel's outer product.
  auto impulse = at::zeros({1, 9, 9}, at::kDouble);
  impulse[0][4][4] = 1;
  const auto s = pickdraw::gaussian_smooth(impulse, 3, 0.5);
  const auto k = pickdraw::gaussian_kernel_1d(3, 0.5);
  EXPECT_TRUE(at::allclose(s[0].slice(0, 3, 6).slice(1, 3, 6), at::outer(k, k)));
  EXPECT_NEAR(s.sum().item<double>(), 1.0, 1e-14);
}

TEST(GaussianSmoothing, RejectsMapsTooSmallForReflectPadding) {
  EXPECT_THROW(pickdraw::gaussian_smooth(at::rand({1, 2, 2}), 5, 1.0), c10::Error);
  EXPECT_NO_THROW(pickdraw::gaussian_smooth(at::rand({1, 3, 3}), 5, 1.0));
  EXPECT_TRUE(at::equal(pickdraw::gaussian_smooth(at::ones({1, 1, 1}), 1, 1.0), at::ones({1, 1, 1})));
}

TEST(LayoutLoss, ZeroForIdenticalMapsAndDifferentiable) {
  seed_for_test();
  const auto a16 = at::rand({2, 16, 16}, at::kDouble);
  const auto a8 = at::rand({2, 8, 8}, at::kDouble);
  const auto zero = pickdraw::layout_loss({a16, a8}, {a16, a8}, 3, 0.5);
  EXPECT_TRUE(at::allclose(zero, at::zeros({2}, at::kDouble)));

  const auto x = at::rand({2, 8, 8}, at::kDouble).requires_grad_();
  const auto t = at::rand({1, 8, 8}, at::kDouble);
  const auto loss = pickdraw::layout_loss({x}, {t}, 3, 0.5);
  EXPECT_TRUE(at::all(loss > 0).item<bool>());
  loss.sum().backward();
  ASSERT_TRUE(x.grad().defined());
  // A small step against the gradient lowers the loss.
  const auto stepped = (x.detach() - 1e-2 * x.grad()).requires_grad_(false);
  EXPECT_LT(pickdraw::layout_loss({stepped}, {t}, 3, 0.5).sum().item<double>(),
            loss.sum().item<double>());
  // Pre-smoothed templates give the same value.
  const auto pre = pickdraw::layout_loss({x.detach()}, {pickdraw::gaussian_smooth(t, 3, 0.5)}, 3,
                                         0.5, /*templates_smoothed=*/true);
  EXPECT_TRUE(at::allclose(pre, loss.detach()));
}

TEST(LayoutLoss, ComparesWhereTheSubjectIsNotHowMuchItIsAttended) {
  seed_for_test();
  const auto t = at::rand({1, 8, 8}, at::kDouble);
  const auto x = at::rand({2, 8, 8}, at::kDouble);
  const auto loss = pickdraw::layout_loss({x}, {t}, 3, 0.5);
  EXPECT_TRUE(at::allclose(pickdraw::layout_loss({3.0 * x}, {0.5 * t}, 3, 0.5), loss));
  EXPECT_TRUE(at::allclose(pickdraw::layout_loss({4.0 * t}, {t}, 3, 0.5), at::zeros({1}, at::kDouble)));
}

TEST(LayoutLoss, RejectsMismatchedLayers) {
  const auto a = at::rand({1, 8, 8});
  EXPECT_THROW(pickdraw::layout_loss({a}, {}, 3, 0.5), c10::Error);
  EXPECT_THROW(pickdraw::layout_loss({}, {}, 3, 0.5), c10::Error);
  EXPECT_THROW(pickdraw::layout_loss({a}, {at::rand({1, 4, 4})}, 3, 0.5), c10::Error);
  EXPECT_THROW(pickdraw::layout_loss({a}, {at::rand({1, 8, 8}, at::kDouble)}, 3, 0.5), c10::Error);
}

}  // namespace
