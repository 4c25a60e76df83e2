#pragma once
// Saliency mask: where the subject is, from its cross-attention token map.
//
//   map -> resample to the feature resolution -> min-max normalise per sample -> (> tau) -> mask
//
// with a top-k fallback so that a flat or weak map never yields an empty mask (the UREMD of an
// empty set is undefined and a palette without entries is useless). Masks never carry gradient.
#include <ATen/core/Tensor.h>
#include <array>
#include <optional>

namespace pickdraw {

// token_map: [B, H, W] floating, already averaged over heads and layers (average_token_maps).
// tau in [0, 1]: a pixel is salient when its normalised value is strictly greater than tau.
// min_mask_pixels >= 0: when fewer pixels pass, the mask becomes the min_mask_pixels largest values of the
//   map instead (capped at H*W; equal values keep the lower flat index). 0 disables the fallback.
// out_size: {height, width} of the features the mask will weight; the map is resampled there
//   with antialiased bilinear filtering before thresholding. Default: the map's own size.
// Returns [B, out_h, out_w] of 0s and 1s in the map's dtype, on its device, without gradient.
at::Tensor saliency_mask(const at::Tensor& token_map, double tau, int64_t min_mask_pixels = 4,
                         std::optional<std::array<int64_t, 2>> out_size = std::nullopt);

// Averages token maps taken at different resolutions (one [B, h_i, w_i] per layer) after
// resampling each to `size` = {height, width}. Differentiable. Returns [B, height, width].
at::Tensor average_token_maps(at::TensorList maps, std::array<int64_t, 2> size);

// Resamples [B, H, W] maps to {height, width} with antialiased bilinear filtering
// (align_corners = false). Differentiable; a no-op when the size already matches.
at::Tensor resample_maps(const at::Tensor& maps, std::array<int64_t, 2> size);

}  // namespace pickdraw
