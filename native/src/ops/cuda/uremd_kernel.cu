// CUDA kernel of pickdraw::_uremd_row_min: cuBLAS GEMM into a bounded tile + fused select.
//
// The GEMM is torch's own (cuBLAS on the current stream; float16/bfloat16 inputs run on tensor
// cores with a float32 result). The select kernel below fuses, for each row of the tile,
//   cost = 1 - dot * inv_norm(g) * inv_norm(p)   ->   row minimum and argmin   ->   merge
// with the running minimum of earlier tiles: one read of the tile, nothing else N x M is kept
// (FAISS's l2SelectMin1 does the same for L2 distances).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>

#include "ops/cuda/cuda_helpers.h"
#include "ops/uremd_internal.h"

namespace pickdraw {
namespace {

using cuda::kWarp;
using cuda::kWarpRowThreads;
using cuda::warp_row;
using cuda::warp_row_blocks;
using cuda::warp_sum;
// 3 * 2^20 float32 = 12 MiB of scratch: under 10% of the N x M cost matrix the plain torch
// version allocates at N = M = 4096, in 6 tiles there. Fewer, larger tiles matter on a GPU: each
// tile costs a GEMM launch and a select launch of host time.
constexpr int64_t kCudaTileElements = int64_t(3) << 20;

template <typename acc_t>
struct TileParams {
  const acc_t* dots;   // [B, rows, cols] contiguous
  const acc_t* g_inv;  // [B, N] contiguous
  const acc_t* p_inv;  // [Bp, M] contiguous
  acc_t* best_cost;    // [B, N] contiguous
  int64_t* best_index; // [B, N] contiguous
  int64_t batches, rows, cols, N, M, row_offset, col_offset, shared_palette;
};

template <typename acc_t>
__global__ void select_tile_kernel(TileParams<acc_t> t) {
  const auto [r, lane] = warp_row();
  if (r >= t.batches * t.rows) return;  // whole warp leaves together: r is uniform per warp
  const int64_t b = r / t.rows, i = t.row_offset + r % t.rows;
  const acc_t* row = t.dots + r * t.cols;
  const acc_t gi = t.g_inv[b * t.N + i];
  const acc_t* pi = t.p_inv + (t.shared_palette ? 0 : b * t.M) + t.col_offset;

  // Each lane scans columns lane, lane + 32, ... in increasing order; strict '<' keeps the
  // lowest index of a tie within the lane.
  acc_t best = INFINITY;
  int64_t arg = INT64_MAX;
  for (int64_t j = lane; j < t.cols; j += kWarp) {
    const acc_t cost = acc_t(1) - row[j] * gi * pi[j];
    if (cost < best) {
      best = cost;
      arg = j;
    }
  }
  // Warp reduction of (cost, index) pairs; equal costs keep the lower index.
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const acc_t other = __shfl_down_sync(0xffffffffu, best, offset);
    const int64_t other_arg = __shfl_down_sync(0xffffffffu, arg, offset);
    if (other < best || (other == best && other_arg < arg)) {
      best = other;
      arg = other_arg;
    }
  }
  if (lane == 0) {
    acc_t* out_cost = t.best_cost + b * t.N + i;
    int64_t* out_index = t.best_index + b * t.N + i;
    // Earlier tiles hold lower indices, so only a strictly smaller cost replaces them; the first
    // tile of a row starts its running minimum.
    if (t.col_offset == 0 || best < *out_cost) {
      *out_cost = best;
      *out_index = t.col_offset + arg;
    }
  }
}

template <typename acc_t>
void launch_select(const detail::TileSelect& t) {
  TileParams<acc_t> p{};
  p.dots = t.dots.data_ptr<acc_t>();
  p.g_inv = t.g_inv_norm.data_ptr<acc_t>();
  p.p_inv = t.p_inv_norm.data_ptr<acc_t>();
  p.best_cost = t.best_cost.data_ptr<acc_t>();
  p.best_index = t.best_index.data_ptr<int64_t>();
  p.batches = t.dots.size(0);
  p.rows = t.dots.size(1);
  p.cols = t.dots.size(2);
  p.N = t.best_cost.size(1);
  p.M = t.p_inv_norm.size(1);
  p.row_offset = t.row_offset;
  p.col_offset = t.col_offset;
  p.shared_palette = t.p_inv_norm.size(0) == 1 ? 1 : 0;
  const int64_t total_rows = p.batches * p.rows;
  const int64_t blocks = warp_row_blocks(total_rows);
  TORCH_CHECK(blocks <= INT32_MAX, "uremd: too many rows for one launch (", total_rows, ")");
  select_tile_kernel<acc_t><<<static_cast<unsigned>(blocks), kWarpRowThreads, 0,
                              at::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void select_tile_cuda(const detail::TileSelect& t) {
  if (t.dots.scalar_type() == at::kDouble) {
    launch_select<double>(t);
  } else {
    launch_select<float>(t);
  }
}

// One warp per row of [R, C] (contiguous): out[r] = 1 / max(|x_r|, eps), in acc_t.
template <typename scalar_t, typename acc_t>
__global__ void inverse_norms_kernel(const scalar_t* x, acc_t* out, int64_t rows, int64_t C) {
  const auto [r, lane] = warp_row();
  if (r >= rows) return;
  acc_t sum = 0;
  for (int64_t c = lane; c < C; c += kWarp) {
    const acc_t v = static_cast<acc_t>(x[r * C + c]);
    sum += v * v;
  }
  sum = warp_sum(sum);
  if (lane == 0) out[r] = acc_t(1) / max(sqrt(sum), acc_t(detail::kCosineEps));
}

at::Tensor inverse_norms_cuda(const at::Tensor& x_in, at::ScalarType acc) {
  const auto x = x_in.contiguous();
  auto out = at::empty({x.size(0), x.size(1)}, x.options().dtype(acc));
  const int64_t rows = x.size(0) * x.size(1);
  if (rows == 0) return out;
  const int64_t blocks = warp_row_blocks(rows);
  TORCH_CHECK(blocks <= INT32_MAX, "uremd: too many rows for one launch (", rows, ")");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "uremd_inverse_norms", [&] {
    if (acc == at::kDouble) {
      inverse_norms_kernel<scalar_t, double><<<static_cast<unsigned>(blocks), kWarpRowThreads, 0,
                                               at::cuda::getCurrentCUDAStream()>>>(
          x.data_ptr<scalar_t>(), out.data_ptr<double>(), rows, x.size(2));
    } else {
      inverse_norms_kernel<scalar_t, float><<<static_cast<unsigned>(blocks), kWarpRowThreads, 0,
                                              at::cuda::getCurrentCUDAStream()>>>(
          x.data_ptr<scalar_t>(), out.data_ptr<float>(), rows, x.size(2));
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> uremd_row_min_cuda(const at::Tensor& generated,
                                                      const at::Tensor& palette) {
  detail::check_uremd_inputs(generated, palette, std::nullopt);
  const c10::cuda::CUDAGuard device_guard(generated.device());
  return detail::tiled_row_min(generated, palette, kCudaTileElements,
                               /*gemm_in_accumulate_type=*/false,
                               {select_tile_cuda, inverse_norms_cuda});
}

// --- fused backward: the formula of uremd_backward_composite (ops/uremd.cpp) -------------------

template <typename acc_t>
struct BackwardParams {
  const acc_t* g;         // [B, N, C] contiguous
  const acc_t* p;         // [Bp, M, C] contiguous
  const int64_t* argmin;  // [B, N]
  acc_t* cos;             // [B, N] out of pass 1
  acc_t* g_norm;          // [B, N]
  acc_t* p_norm;          // [B, N]
  const acc_t* coef;      // [B, N] dL/dc times grad_output (pass 2)
  acc_t* grad_g;          // [B, N, C] or null
  acc_t* grad_p;          // [Bp, M, C] zero-initialised, or null
  int64_t rows, N, C, M, shared_palette;
};

template <typename acc_t>
__device__ const acc_t* chosen_entry(const BackwardParams<acc_t>& t, int64_t r) {
  const int64_t b = t.shared_palette ? 0 : r / t.N;
  return t.p + (b * t.M + t.argmin[r]) * t.C;
}

// Pass 1, one warp per row: norms and cosine of (g_n, p_argmin(n)).
template <typename acc_t>
__global__ void backward_cosine_kernel(BackwardParams<acc_t> t) {
  const auto [r, lane] = warp_row();
  if (r >= t.rows) return;
  const acc_t* gr = t.g + r * t.C;
  const acc_t* pr = chosen_entry(t, r);
  acc_t gg = 0, pp = 0, gp = 0;
  for (int64_t c = lane; c < t.C; c += kWarp) {
    gg += gr[c] * gr[c];
    pp += pr[c] * pr[c];
    gp += gr[c] * pr[c];
  }
  gg = warp_sum(gg);
  pp = warp_sum(pp);
  gp = warp_sum(gp);
  if (lane == 0) {
    const acc_t eps = acc_t(detail::kCosineEps);
    const acc_t gn = sqrt(gg), pn = sqrt(pp);
    t.g_norm[r] = gn;
    t.p_norm[r] = pn;
    t.cos[r] = gp / (max(gn, eps) * max(pn, eps));
  }
}

// Pass 2, one warp per row: d cost / d g written, d cost / d p accumulated atomically.
template <typename acc_t>
__global__ void backward_grad_kernel(BackwardParams<acc_t> t) {
  const auto [r, lane] = warp_row();
  if (r >= t.rows) return;
  const acc_t eps = acc_t(detail::kCosineEps);
  const acc_t coef = t.coef[r];
  const acc_t cos = t.cos[r];
  const acc_t gn = max(t.g_norm[r], eps), pn = max(t.p_norm[r], eps);
  const bool g_big = t.g_norm[r] > eps, p_big = t.p_norm[r] > eps;
  const acc_t* gr = t.g + r * t.C;
  const acc_t* pr = chosen_entry(t, r);
  for (int64_t c = lane; c < t.C; c += kWarp) {
    const acc_t g_hat = gr[c] / gn, p_hat = pr[c] / pn;
    if (t.grad_g != nullptr) {
      t.grad_g[r * t.C + c] = -coef * (g_big ? (p_hat - cos * g_hat) / gn : p_hat / eps);
    }
    if (t.grad_p != nullptr && coef != acc_t(0)) {
      atomicAdd(t.grad_p + (pr - t.p) + c, -coef * (p_big ? (g_hat - cos * p_hat) / pn : g_hat / eps));
    }
  }
}

// One block per problem b: scale[b] = grad_loss[b] / sum_n w[b,n] (0 when that sum is 0), and
// coef[b,n] = w[b,n] * scale[b], the incoming gradient of each row's cost. w == nullptr means 1.
constexpr int kScaleThreads = 256;
template <typename acc_t>
__global__ void backward_scale_kernel(const acc_t* grad_loss, const acc_t* w, acc_t* scale,
                                      acc_t* coef, int64_t N) {
  __shared__ acc_t partial[kScaleThreads];
  const int64_t b = blockIdx.x;
  acc_t sum = 0;
  for (int64_t n = threadIdx.x; n < N; n += kScaleThreads) sum += w ? w[b * N + n] : acc_t(1);
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = kScaleThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  const acc_t w_sum = partial[0];
  const acc_t s = w_sum > 0 ? grad_loss[b] / w_sum : acc_t(0);
  if (threadIdx.x == 0) scale[b] = s;
  for (int64_t n = threadIdx.x; n < N; n += kScaleThreads) coef[b * N + n] = (w ? w[b * N + n] : acc_t(1)) * s;
}

template <typename acc_t>
void launch_backward(BackwardParams<acc_t> params, const at::Tensor& grad_loss,
                     const at::Tensor* w, const at::Tensor& cos, at::Tensor* grad_w) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t B = grad_loss.size(0);
  const int64_t blocks = warp_row_blocks(params.rows);
  TORCH_CHECK(blocks <= INT32_MAX && B <= INT32_MAX, "uremd: too many rows for one launch (",
              params.rows, ")");
  backward_cosine_kernel<acc_t><<<static_cast<unsigned>(blocks), kWarpRowThreads, 0, stream>>>(params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto scale = at::empty({B}, cos.options());
  auto coef = at::empty_like(cos);
  backward_scale_kernel<acc_t><<<static_cast<unsigned>(B), kScaleThreads, 0, stream>>>(
      grad_loss.data_ptr<acc_t>(), w ? w->data_ptr<acc_t>() : nullptr, scale.data_ptr<acc_t>(),
      coef.data_ptr<acc_t>(), params.N);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  params.coef = coef.data_ptr<acc_t>();
  if (grad_w != nullptr) {  // d L / d w_n = (c_n - L) * grad_output / W, with L the weighted mean
    const auto cost = 1 - cos;
    const auto w_sum = w->sum(1, true);
    const auto loss = (*w * cost).sum(1, true) / at::where(w_sum > 0, w_sum, at::ones_like(w_sum));
    *grad_w = (cost - loss) * scale.unsqueeze(1);
  }
  if (params.grad_g != nullptr || params.grad_p != nullptr) {
    backward_grad_kernel<acc_t><<<static_cast<unsigned>(blocks), kWarpRowThreads, 0, stream>>>(params);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> uremd_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& generated, const at::Tensor& palette,
    const std::optional<at::Tensor>& weight, const at::Tensor& argmin,
    std::array<bool, 3> output_mask) {
  detail::check_uremd_backward_inputs(grad_loss, generated, palette, weight, argmin);
  const c10::cuda::CUDAGuard device_guard(generated.device());
  const bool has_weight = weight.has_value() && weight->defined();
  const auto acc = detail::uremd_accumulate_type(generated.scalar_type());
  const auto g = detail::as_type(generated, acc).contiguous();
  const auto p = detail::as_type(palette, acc).contiguous();
  const int64_t B = g.size(0), N = g.size(1);
  const auto w = has_weight ? detail::as_type(*weight, acc).contiguous() : at::Tensor();
  const auto gl = detail::as_type(grad_loss, acc).contiguous();
  const auto a = argmin.contiguous();
  auto grad_g = output_mask[0] ? at::empty_like(g) : at::Tensor();  // every row is written
  auto grad_p = output_mask[1] ? at::zeros_like(p) : at::Tensor();
  at::Tensor grad_w;
  if (g.numel() > 0) {
    auto cos = at::empty({B, N}, g.options());
    auto g_norm = at::empty({B, N}, g.options());
    auto p_norm = at::empty({B, N}, g.options());
    AT_DISPATCH_FLOATING_TYPES(acc, "uremd_backward_cuda", [&] {
      BackwardParams<scalar_t> params{};
      params.g = g.data_ptr<scalar_t>();
      params.p = p.data_ptr<scalar_t>();
      params.argmin = a.data_ptr<int64_t>();
      params.cos = cos.data_ptr<scalar_t>();
      params.g_norm = g_norm.data_ptr<scalar_t>();
      params.p_norm = p_norm.data_ptr<scalar_t>();
      params.grad_g = grad_g.defined() ? grad_g.data_ptr<scalar_t>() : nullptr;
      params.grad_p = grad_p.defined() ? grad_p.data_ptr<scalar_t>() : nullptr;
      params.rows = B * N;
      params.N = N;
      params.C = g.size(2);
      params.M = p.size(1);
      params.shared_palette = p.size(0) == 1 ? 1 : 0;
      launch_backward<scalar_t>(params, gl, has_weight ? &w : nullptr, cos,
                                (output_mask[2] && has_weight) ? &grad_w : nullptr);
    });
  } else {
    if (grad_g.defined()) grad_g.zero_();
    if (output_mask[2] && has_weight) grad_w = at::zeros_like(w);
  }
  return detail::backward_results(grad_g, grad_p, grad_w, generated, palette, weight);
}

}  // namespace
}  // namespace pickdraw

TORCH_LIBRARY_IMPL(pickdraw, CUDA, m) {
  m.impl("_uremd_row_min", TORCH_FN(pickdraw::uremd_row_min_cuda));
  m.impl("_uremd_backward", TORCH_FN(pickdraw::uremd_backward_cuda));
}
