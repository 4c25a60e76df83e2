#include "pickdraw/layout_loss.h"

#include <ATen/ATen.h>

#include <cmath>
#include <map>
#include <utility>
#include <vector>

#include "pickdraw/checks.h"
#include "pickdraw/gaussian_smoothing.h"

namespace pickdraw {

namespace {

// Each map over its own mean: the template is another model's map of another token (the vanilla model's
// class noun), whose attention mass differs from the personalised run's; only where the subject lies is compared.
at::Tensor relative_to_mean(const at::Tensor& maps) {
  return maps / maps.mean({-2, -1}, /*keepdim=*/true).clamp_min(1e-12);
}

}  // namespace

at::Tensor layout_loss(at::TensorList maps, at::TensorList templates, int64_t kernel_size,
                       double std_dev, bool templates_smoothed) {
  TORCH_CHECK(!maps.empty(), "layout_loss needs at least one layer");
  TORCH_CHECK(maps.size() == templates.size(), "layout_loss got ", maps.size(),
              " map layers but ", templates.size(), " template layers; they must pair up");
  // Layers of one map shape are smoothed and compared in one stacked call: SD1.x's 16 layers come
  // in 4 shapes, and a guided step is bound by how many ops it launches.
  std::map<std::vector<int64_t>, std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>>> by_shape;
  for (size_t l = 0; l < maps.size(); ++l) {
    const auto& a = maps[l];
    const auto& t = templates[l];
    TORCH_CHECK(a.dim() == 3, "maps[", l, "] must be [B, H, W], got ", a.sizes());
    TORCH_CHECK(t.dim() == 3, "templates[", l, "] must be [B, H, W] or [1, H, W], got ",
                t.sizes());
    PICKDRAW_CHECK_FLOATING(a);
    TORCH_CHECK(t.scalar_type() == a.scalar_type() && t.device() == a.device(), "templates[",
                l, "] must have the dtype and device of maps[", l, "] (", a.scalar_type(), ", ",
                a.device(), "), got ", t.scalar_type(), ", ", t.device());
    TORCH_CHECK_VALUE(t.size(1) == a.size(1) && t.size(2) == a.size(2) &&
                          (t.size(0) == a.size(0) || t.size(0) == 1),
                      "templates[", l, "] of shape ", t.sizes(), " does not match maps[", l, "] of shape ",
                      a.sizes(), ": was the template drawn at another image size, or with a MODEL patched to "
                      "another UNet resolution (PatchModelAddDownscale)? Draw it with the guided run's MODEL "
                      "patches and latent size");
    auto& group = by_shape[a.sizes().vec()];
    group.first.push_back(a);
    group.second.push_back(t.expand_as(a));
  }
  at::Tensor total;
  for (const auto& [shape, group] : by_shape) {
    const auto a = at::stack(group.first);  // [L, B, H, W]
    const auto t = at::stack(group.second);
    const auto smoothed_t = templates_smoothed ? t : gaussian_smooth(t, kernel_size, std_dev);
    const auto diff = relative_to_mean(gaussian_smooth(a, kernel_size, std_dev)) - relative_to_mean(smoothed_t);
    // The root mean square over a map's tokens, so that a 64x64 layer weighs as much as an 8x8 one.
    const auto tokens = static_cast<double>(shape[1] * shape[2]);  // shape is one layer's [B, H, W]
    const auto frob = at::linalg_vector_norm(diff, 2, {2, 3}, /*keepdim=*/false).sum(0) / std::sqrt(tokens);  // [B]
    total = total.defined() ? total + frob : frob;
  }
  return total / static_cast<double>(maps.size());
}

}  // namespace pickdraw
