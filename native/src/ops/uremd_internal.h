#pragma once
// Internal pieces of the UREMD op shared by its CPU and CUDA kernels. Not installed, not public.
//
// Both kernels have the shape of FAISS's brute-force k=1 search (Johnson et al., "Billion-scale
// similarity search with GPUs"): the cross term of the distance comes from a GEMM into a bounded
// scratch tile, and one fused select pass turns a tile into costs
//   cost[n, m] = 1 - (g_n . p_m) * inv_norm(g_n) * inv_norm(p_m)
// and merges them into a running row minimum and argmin. Scratch memory is one tile plus the
// inverse norms, whatever N and M are.
#include <ATen/core/Tensor.h>
#include <array>
#include <optional>
#include <tuple>

namespace pickdraw::detail {

// Same clamp as torch.nn.functional.normalize, so the Python reference agrees bit for bit in
// which vectors count as "zero".
constexpr double kCosineEps = 1e-8;

// One tile handed to a select pass. All tensors are on the kernel's device; the tile covers rows
// [row_offset, row_offset + rows) and palette columns [col_offset, col_offset + cols). The other
// tensors are passed whole (no per-tile views: on a GPU each view is host time).
struct TileSelect {
  const at::Tensor& dots;        // [B, rows, cols] accumulate dtype, contiguous: dot products
  const at::Tensor& g_inv_norm;  // [B, N] contiguous: inverse norms of the generated features
  const at::Tensor& p_inv_norm;  // [Bp, M] contiguous (Bp = 1: shared palette)
  int64_t row_offset;
  int64_t col_offset;
  at::Tensor& best_cost;         // [B, N] contiguous, in/out: running minimum cost
  at::Tensor& best_index;        // [B, N] contiguous, in/out: running argmin (int64)
};
using TileSelectFn = void (*)(const TileSelect&);
// Inverse norms 1 / max(|x|, eps) over the last dim of [B, R, C], as [B, R] in `acc`.
using InverseNormsFn = at::Tensor (*)(const at::Tensor& x, at::ScalarType acc);

// What a device provides to the tiled driver.
struct RowMinKernels {
  TileSelectFn select;
  InverseNormsFn inverse_norms;
};

// The device-generic inverse norms (ATen ops), for devices without a fused kernel.
at::Tensor inverse_norms_aten(const at::Tensor& x, at::ScalarType acc);

// Validates the public arguments of uremd; every kernel entry calls it (the C++ API can reach a
// kernel without the Python wrapper).
void check_uremd_inputs(const at::Tensor& generated, const at::Tensor& palette,
                        const std::optional<at::Tensor>& weight);

// Validates the arguments of the fused backward (_uremd_backward), the same way.
void check_uremd_backward_inputs(const at::Tensor& grad_loss, const at::Tensor& generated,
                                 const at::Tensor& palette, const std::optional<at::Tensor>& weight,
                                 const at::Tensor& argmin);

// The fused backward kernels' results in the schema's form: each gradient converted to its
// input's dtype, an empty tensor where a gradient was not requested (undefined here).
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_results(
    const at::Tensor& grad_generated, const at::Tensor& grad_palette, const at::Tensor& grad_weight,
    const at::Tensor& generated, const at::Tensor& palette, const std::optional<at::Tensor>& weight);

// t converted to `type`, or t itself (without a dispatcher call) when it already has that dtype.
at::Tensor as_type(const at::Tensor& t, at::ScalarType type);

// Accumulate dtype: float64 for float64 inputs, float32 otherwise.
at::ScalarType uremd_accumulate_type(at::ScalarType input);

// The tiled driver. Tiles are visited in increasing palette index and `select` must replace the
// running minimum only when strictly smaller: that is the lowest-index tie rule. The running
// minimum is not initialised: a tile with col_offset 0 starts it.
// `tile_elements` bounds the scratch tile; `gemm_in_accumulate_type` converts reduced-precision
// inputs before the GEMM (CPU) instead of asking the GEMM for a float32 result (CUDA).
std::tuple<at::Tensor, at::Tensor> tiled_row_min(const at::Tensor& generated,
                                                 const at::Tensor& palette,
                                                 int64_t tile_elements,
                                                 bool gemm_in_accumulate_type,
                                                 const RowMinKernels& kernels);

// The running row-min and argmin with a select pass of ATen ops instead of a fused kernel: any device,
// same tiling, same costs and tie rule (lowest index). A build without CUDA kernels runs CUDA tensors
// through it.
std::tuple<at::Tensor, at::Tensor> row_min_aten(const at::Tensor& generated, const at::Tensor& palette);

// The row-min op through the dispatcher (the device's kernel): per-row minimum cost [B, N] in the
// accumulate dtype, and its argmin.
std::tuple<at::Tensor, at::Tensor> call_row_min(const at::Tensor& generated, const at::Tensor& palette);

// Weighted mean of the row minima: sum_n w_n c_n / sum_n w_n, 0 where the weights sum to 0.
// In the accumulate dtype of min_cost.
at::Tensor weighted_mean(const at::Tensor& min_cost, const std::optional<at::Tensor>& weight);

// The backward as differentiable ATen ops on any device (ops/autograd/uremd_autograd.cpp): used for a
// double backward and by devices without a fused backward kernel. Undefined where not requested.
std::tuple<at::Tensor, at::Tensor, at::Tensor> uremd_backward_composite(
    const at::Tensor& grad_loss, const at::Tensor& generated, const at::Tensor& palette,
    const std::optional<at::Tensor>& weight, const at::Tensor& argmin,
    std::array<bool, 3> output_mask);

}  // namespace pickdraw::detail
