#include "pickdraw/gaussian_smoothing.h"

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "pickdraw/checks.h"

namespace pickdraw {

at::Tensor gaussian_kernel_1d(int64_t kernel_size, double std_dev) {
  TORCH_CHECK(kernel_size >= 1 && kernel_size % 2 == 1,
              "kernel_size must be a positive odd number, got ", kernel_size);
  TORCH_CHECK(std_dev > 0.0 && std::isfinite(std_dev), "std_dev must be positive and finite, got ",
              std_dev);
  const int64_t half = kernel_size / 2;
  std::vector<double> taps(static_cast<size_t>(kernel_size));
  double total = 0.0;
  for (int64_t i = 0; i < kernel_size; ++i) {
    const double x = static_cast<double>(i - half);
    taps[static_cast<size_t>(i)] = std::exp(-0.5 * x * x / (std_dev * std_dev));
    total += taps[static_cast<size_t>(i)];
  }
  for (auto& t : taps) t /= total;
  return at::tensor(taps, at::kDouble);
}

at::Tensor gaussian_smooth(const at::Tensor& maps, int64_t kernel_size, double std_dev) {
  TORCH_CHECK(maps.dim() >= 2, "maps must be [..., H, W], got shape ", maps.sizes());
  PICKDRAW_CHECK_FLOATING(maps);
  const auto taps = gaussian_kernel_1d(kernel_size, std_dev).to(maps.options());
  const int64_t half = kernel_size / 2;
  const int64_t H = maps.size(-2), W = maps.size(-1);
  if (half == 0 || maps.numel() == 0) return maps.clone();
  TORCH_CHECK(H > half && W > half, "maps of ", H, "x", W, " are too small for reflect padding "
              "with kernel_size ", kernel_size, ": both sides must exceed ", half,
              ". Use a smaller kernel_size for this layer.");
  auto x = maps.reshape({-1, 1, H, W});
  x = at::reflection_pad2d(x, {half, half, half, half});
  // Separable: rows then columns, k + k taps per pixel instead of k * k.
  x = at::conv2d(x, taps.view({1, 1, kernel_size, 1}));
  x = at::conv2d(x, taps.view({1, 1, 1, kernel_size}));
  return x.reshape(maps.sizes());
}

}  // namespace pickdraw
