#pragma once
// The attention that a cross-attention layer's queries pay to a few chosen context tokens (the
// subject's), averaged over heads: the maps of the layout term and of the subject mask.
//   maps[b, n, t] = mean over heads h of softmax_j(q_h[b, n] . k_h[b, j] / sqrt(dim))[token_index[t]]
// The softmax runs over every context token, in float32 for reduced-precision inputs (as ComfyUI's
// attention_basic). Two ways to the same values and gradients:
// - keep the probabilities for the backward (autograd over the explicit ops): the fewest kernels;
// - recompute them in the backward from q and k, which the layer's fused attention keeps for its own
//   backward anyway: the probabilities ([B, heads, N, T] in float32, 9.6 MiB per conditional row at
//   SD1.5's 64 x 64 layers) are the largest tensor a watched layer adds to a guided step's memory,
//   and dropping them costs about 17 more ops per layer in the backward.
#include <ATen/core/Tensor.h>

namespace pickdraw {

// q: [B, N, heads * dim], k: [B, T, heads * dim] (same dtype and device), token_index: int64 [K]
// with entries in [0, T). Returns [B, N, K] in float32 (float64 for float64 inputs); differentiable
// with respect to q and k, twice (the recomputing backward is made of differentiable ops).
at::Tensor token_attention_maps(const at::Tensor& q, const at::Tensor& k, int64_t heads,
                                const at::Tensor& token_index, bool recompute_in_backward);

}  // namespace pickdraw
