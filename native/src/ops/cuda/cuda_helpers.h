// What the CUDA kernels share: the one-warp-per-row launch shape, its row/lane preamble, warp sums
// and ceil-div.
#pragma once

#include <cstdint>

namespace pickdraw::cuda {

constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 8;  // one warp per row, 256 threads
constexpr int kWarpRowThreads = kRowsPerBlock * kWarp;

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks of a one-warp-per-row launch over `rows` rows.
constexpr int64_t warp_row_blocks(int64_t rows) { return ceil_div(rows, kRowsPerBlock); }

// The row this thread's warp works on in a one-warp-per-row launch, and its lane in the warp.
struct WarpRow {
  int64_t row;
  int lane;
};

__device__ inline WarpRow warp_row() {
  return {int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp, int(threadIdx.x % kWarp)};
}

// The sum of v over the warp, returned to every lane.
template <typename acc_t>
__device__ acc_t warp_sum(acc_t v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return __shfl_sync(0xffffffffu, v, 0);
}

}  // namespace pickdraw::cuda
