// CPU kernel of pickdraw::_uremd_row_min: BLAS GEMM into a small tile + fused select.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops/uremd_internal.h"

namespace pickdraw {
namespace {

// 256 x 1024 float32 = 1 MiB: large enough for an efficient GEMM call, small enough to stay in
// the last-level cache between the GEMM writing it and the select reading it.
constexpr int64_t kCpuTileElements = 256 * 1024;

template <typename acc_t>
void select_tile_impl(const detail::TileSelect& t) {
  const int64_t B = t.dots.size(0), rows = t.dots.size(1), cols = t.dots.size(2);
  const acc_t* dots = t.dots.data_ptr<acc_t>();
  const auto g_inv = t.g_inv_norm.accessor<acc_t, 2>();
  const auto p_inv = t.p_inv_norm.accessor<acc_t, 2>();
  auto best_cost = t.best_cost.accessor<acc_t, 2>();
  auto best_index = t.best_index.accessor<int64_t, 2>();
  const int64_t p_batch_stride = t.p_inv_norm.size(0) == 1 ? 0 : 1;
  at::parallel_for(0, B * rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / rows, i = r % rows;
      const acc_t* row = dots + r * cols;
      const acc_t gi = g_inv[b][i];
      const auto pi = p_inv[b * p_batch_stride];
      acc_t best = best_cost[b][i];
      int64_t arg = best_index[b][i];
      for (int64_t j = 0; j < cols; ++j) {
        const acc_t cost = acc_t(1) - row[j] * gi * pi[j];
        if (cost < best) {  // strict: earlier (lower) indices win ties
          best = cost;
          arg = t.col_offset + j;
        }
      }
      best_cost[b][i] = best;
      best_index[b][i] = arg;
    }
  });
}

void select_tile_cpu(const detail::TileSelect& t) {
  if (t.dots.scalar_type() == at::kDouble) {
    select_tile_impl<double>(t);
  } else {
    select_tile_impl<float>(t);
  }
}

std::tuple<at::Tensor, at::Tensor> uremd_row_min_cpu(const at::Tensor& generated,
                                                     const at::Tensor& palette) {
  detail::check_uremd_inputs(generated, palette, std::nullopt);
  // Reduced-precision inputs are converted once (O((N + M) * C)): CPU half GEMMs are slow and
  // would round the dot products to half before the minimum is taken.
  return detail::tiled_row_min(generated, palette, kCpuTileElements,
                               /*gemm_in_accumulate_type=*/true, select_tile_cpu);
}

}  // namespace
}  // namespace pickdraw

TORCH_LIBRARY_IMPL(pickdraw, CPU, m) {
  m.impl("_uremd_row_min", TORCH_FN(pickdraw::uremd_row_min_cpu));
}
