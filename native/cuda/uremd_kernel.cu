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

#include "ops/uremd_internal.h"

namespace pickdraw {
namespace {

constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 8;  // one warp per row, 256 threads
// 2^21 float32 = 8 MiB of scratch: 6% of what the plain torch version allocates at
// N = M = 4096 (the N x M cost matrix and its gradient), and each tile GEMM is still large.
constexpr int64_t kCudaTileElements = int64_t(1) << 21;

template <typename acc_t>
struct TileParams {
  const acc_t* dots;  // [B, rows, cols] contiguous
  const acc_t* g_inv;
  int64_t g_inv_stride_b, g_inv_stride_r;
  const acc_t* p_inv;
  int64_t p_inv_stride_b, p_inv_stride_c;
  acc_t* best_cost;
  int64_t best_stride_b, best_stride_r;
  int64_t* best_index;
  int64_t index_stride_b, index_stride_r;
  int64_t batches, rows, cols, col_offset;
};

template <typename acc_t>
__global__ void select_tile_kernel(TileParams<acc_t> t) {
  const int lane = threadIdx.x % kWarp;
  const int64_t r = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (r >= t.batches * t.rows) return;  // whole warp leaves together: r is uniform per warp
  const int64_t b = r / t.rows, i = r % t.rows;
  const acc_t* row = t.dots + r * t.cols;
  const acc_t gi = t.g_inv[b * t.g_inv_stride_b + i * t.g_inv_stride_r];
  const acc_t* pi = t.p_inv + b * t.p_inv_stride_b;

  // Each lane scans columns lane, lane + 32, ... in increasing order; strict '<' keeps the
  // lowest index of a tie within the lane.
  acc_t best = INFINITY;
  int64_t arg = INT64_MAX;
  for (int64_t j = lane; j < t.cols; j += kWarp) {
    const acc_t cost = acc_t(1) - row[j] * gi * pi[j * t.p_inv_stride_c];
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
    acc_t* out_cost = t.best_cost + b * t.best_stride_b + i * t.best_stride_r;
    int64_t* out_index = t.best_index + b * t.index_stride_b + i * t.index_stride_r;
    // Earlier tiles hold lower indices, so only a strictly smaller cost replaces them.
    if (best < *out_cost) {
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
  p.g_inv_stride_b = t.g_inv_norm.stride(0);
  p.g_inv_stride_r = t.g_inv_norm.stride(1);
  p.p_inv = t.p_inv_norm.data_ptr<acc_t>();
  p.p_inv_stride_b = t.p_inv_norm.size(0) == 1 ? 0 : t.p_inv_norm.stride(0);
  p.p_inv_stride_c = t.p_inv_norm.stride(1);
  p.best_cost = t.best_cost.data_ptr<acc_t>();
  p.best_stride_b = t.best_cost.stride(0);
  p.best_stride_r = t.best_cost.stride(1);
  p.best_index = t.best_index.data_ptr<int64_t>();
  p.index_stride_b = t.best_index.stride(0);
  p.index_stride_r = t.best_index.stride(1);
  p.batches = t.dots.size(0);
  p.rows = t.dots.size(1);
  p.cols = t.dots.size(2);
  p.col_offset = t.col_offset;
  const int64_t total_rows = p.batches * p.rows;
  const int64_t blocks = (total_rows + kRowsPerBlock - 1) / kRowsPerBlock;
  TORCH_CHECK(blocks <= INT32_MAX, "uremd: too many rows for one launch (", total_rows, ")");
  select_tile_kernel<acc_t><<<static_cast<unsigned>(blocks), kRowsPerBlock * kWarp, 0,
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

std::tuple<at::Tensor, at::Tensor> uremd_row_min_cuda(const at::Tensor& generated,
                                                      const at::Tensor& palette) {
  detail::check_uremd_inputs(generated, palette, std::nullopt);
  const c10::cuda::CUDAGuard device_guard(generated.device());
  return detail::tiled_row_min(generated, palette, kCudaTileElements,
                               /*gemm_in_accumulate_type=*/false, select_tile_cuda);
}

}  // namespace
}  // namespace pickdraw

TORCH_LIBRARY_IMPL(pickdraw, CUDA, m) {
  m.impl("_uremd_row_min", TORCH_FN(pickdraw::uremd_row_min_cuda));
}
