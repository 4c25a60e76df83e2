#pragma once
// UREMD: Unidirectional Relaxed Earth Mover's Distance (Kolkin et al., STROTSS, CVPR 2019, one
// direction only), the appearance term of Pick-and-Draw.
//
//   uremd(G, P, w)[b] = sum_n w[b,n] * min_m (1 - cos(G[b,n], P[b,m])) / sum_n w[b,n]
//
// Every generated feature is pulled towards its *nearest* palette entry, so the palette need not
// be covered (pose is not copied). The op is registered as torch.ops.pickdraw.uremd with a CPU and
// (when built) a CUDA kernel and its own backward; no kernel ever materialises the N x M cost
// matrix: costs are computed tile by tile and reduced to a running row minimum and argmin.
//
// Cosine: cos(g, p) = g.p / (max(|g|, eps) * max(|p|, eps)), eps = 1e-8, as
// torch.nn.functional.normalize. A zero vector therefore has cosine 0 to everything (cost 1).
//
// Tie rule: among palette entries with equal computed cost the lowest index wins. "Equal" is
// bitwise equality of the cost as computed on that device, so two devices (or dtypes) may pick
// different entries among near-ties whose costs differ by rounding; the loss agrees within
// rounding either way, and the gradient follows the chosen entry.
#include <ATen/core/Tensor.h>
#include <optional>
#include <tuple>

namespace pickdraw {

// generated: [B, N, C] floating; palette: [B, M, C] (same dtype and device), M >= 1 when N >= 1;
// weight: optional [B, N] non-negative weights or a 0/1 mask (same dtype and device).
// Returns the loss [B] in the input dtype (float16/bfloat16 inputs are accumulated in float32).
// A problem whose weights sum to 0, or with N = 0, has loss 0 and zero gradient.
// Differentiable in generated, palette and weight (through the argmin, which is held fixed).
at::Tensor uremd(const at::Tensor& generated, const at::Tensor& palette,
                 const std::optional<at::Tensor>& weight = std::nullopt);

// Forward with the intermediate results: (loss [B], min_cost [B, N] (float32, float64 for
// float64 inputs), argmin [B, N] int64). Not differentiable; for diagnostics and tests.
std::tuple<at::Tensor, at::Tensor, at::Tensor> uremd_with_argmin(
    const at::Tensor& generated, const at::Tensor& palette,
    const std::optional<at::Tensor>& weight = std::nullopt);

}  // namespace pickdraw
