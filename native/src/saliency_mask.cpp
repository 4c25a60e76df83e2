#include "pickdraw/saliency_mask.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>

#include "pickdraw/checks.h"

namespace pickdraw {

at::Tensor resample_maps(const at::Tensor& maps, std::array<int64_t, 2> size) {
  PICKDRAW_CHECK_DIM(maps, 3);
  PICKDRAW_CHECK_FLOATING(maps);
  TORCH_CHECK(size[0] > 0 && size[1] > 0, "size must be positive, got {", size[0], ", ",
              size[1], "}");
  if (maps.size(1) == size[0] && maps.size(2) == size[1]) return maps;
  TORCH_CHECK(maps.size(1) > 0 && maps.size(2) > 0, "maps must not be empty to be resampled, got ",
              maps.sizes());
  // Antialiased so that a downsampled map averages its tokens instead of sampling a few of them.
  auto resampled = at::_upsample_bilinear2d_aa(maps.unsqueeze(1), {size[0], size[1]},
                                               /*align_corners=*/false);
  return resampled.squeeze(1);
}

at::Tensor average_token_maps(at::TensorList maps, std::array<int64_t, 2> size) {
  TORCH_CHECK(!maps.empty(), "average_token_maps needs at least one map");
  at::Tensor sum;
  for (size_t i = 0; i < maps.size(); ++i) {
    TORCH_CHECK(maps[i].dim() == 3, "maps[", i, "] must be [B, H, W], got ", maps[i].sizes());
    TORCH_CHECK(maps[i].size(0) == maps[0].size(0), "maps[", i, "] has batch ",
                maps[i].size(0), " but maps[0] has ", maps[0].size(0));
    auto r = resample_maps(maps[i], size);
    sum = sum.defined() ? sum + r : r;
  }
  return sum / static_cast<double>(maps.size());
}

at::Tensor saliency_mask(const at::Tensor& token_map, double tau, int64_t min_mask_pixels,
                         std::optional<std::array<int64_t, 2>> out_size) {
  PICKDRAW_CHECK_DIM(token_map, 3);
  PICKDRAW_CHECK_FLOATING(token_map);
  TORCH_CHECK(tau >= 0.0 && tau <= 1.0, "tau must be in [0, 1] (it applies to the min-max "
              "normalised map), got ", tau);
  TORCH_CHECK(min_mask_pixels >= 0, "min_mask_pixels must be >= 0, got ", min_mask_pixels);
  at::NoGradGuard no_grad;
  const auto size = out_size.value_or(std::array<int64_t, 2>{token_map.size(1), token_map.size(2)});
  const int64_t B = token_map.size(0);
  auto map = resample_maps(token_map.detach(), size).reshape({B, size[0] * size[1]});
  const int64_t pixels = map.size(1);
  if (B == 0 || pixels == 0) return at::zeros({B, size[0], size[1]}, token_map.options());

  const auto lo = std::get<0>(map.min(1, /*keepdim=*/true));
  const auto hi = std::get<0>(map.max(1, /*keepdim=*/true));
  // The 1e-8 keeps a flat map at 0 everywhere, so it falls through to the top-k fallback.
  const auto normalised = (map - lo) / (hi - lo + 1e-8);
  auto mask = normalised > tau;

  const int64_t k = std::min(min_mask_pixels, pixels);
  if (k > 0) {
    // Stable descending sort: equal values keep increasing flat index, the documented tie rule.
    const auto order = std::get<1>(map.sort(/*stable=*/true, /*dim=*/1, /*descending=*/true));
    const auto top_k = at::zeros_like(mask).scatter_(1, order.narrow(1, 0, k), true);
    const auto too_small = mask.sum(1, /*keepdim=*/true) < k;
    mask = at::where(too_small, top_k, mask);
  }
  return mask.to(token_map.scalar_type()).view({B, size[0], size[1]});
}

}  // namespace pickdraw
