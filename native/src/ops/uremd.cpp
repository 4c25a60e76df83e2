// Schema, dispatcher entry and tiled driver of the UREMD op (see include/pickdraw/uremd.h).
//
// Dispatch layout (torchvision's pattern):
//   pickdraw::_uremd_row_min  CPU / CUDA / Meta kernels: running row-min and argmin of the costs
//   pickdraw::uremd           CompositeExplicitAutograd: row-min + weighted mean (no grad)
//                             Autograd (ops/autograd/uremd_autograd.cpp): the same inside a custom
//                             Function whose backward gathers the chosen palette entries
#include "pickdraw/uremd.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <limits>

#include "ops/uremd_internal.h"
#include "pickdraw/checks.h"

namespace pickdraw {
namespace detail {

void check_uremd_inputs(const at::Tensor& generated, const at::Tensor& palette,
                        const std::optional<at::Tensor>& weight) {
  PICKDRAW_CHECK_DIM(generated, 3);
  PICKDRAW_CHECK_DIM(palette, 3);
  PICKDRAW_CHECK_FLOATING(generated);
  PICKDRAW_CHECK_SAME_DTYPE(palette, generated);
  PICKDRAW_CHECK_SAME_DEVICE(palette, generated);
  const auto B = generated.size(0);
  TORCH_CHECK(palette.size(0) == B || palette.size(0) == 1,
              "palette must have batch size 1 (shared) or the batch size of generated (", B,
              "), got palette of shape ", palette.sizes());
  TORCH_CHECK(palette.size(2) == generated.size(2),
              "generated and palette must have the same feature size C (last dim), got ",
              generated.sizes(), " and ", palette.sizes());
  TORCH_CHECK(palette.size(1) > 0 || generated.size(1) == 0,
              "palette has no features (shape ", palette.sizes(),
              "): the distance to an empty palette is undefined. Was the reference saliency "
              "mask empty? Lower tau or pass a mask that covers the subject.");
  if (weight.has_value() && weight->defined()) {
    PICKDRAW_CHECK_DIM(*weight, 2);
    PICKDRAW_CHECK_SAME_DTYPE(*weight, generated);
    PICKDRAW_CHECK_SAME_DEVICE(*weight, generated);
    TORCH_CHECK(weight->size(0) == B && weight->size(1) == generated.size(1),
                "weight must have shape [B, N] = [", B, ", ", generated.size(1),
                "] to match generated, got ", weight->sizes());
  }
}

// Tensor::to returns `self` when the dtype already matches; the dispatcher's schema checks (and
// torch.library.opcheck) reject an op that hands one of its inputs back as an output, so the
// conversion is skipped explicitly instead.
at::Tensor as_type(const at::Tensor& t, at::ScalarType type) {
  return t.scalar_type() == type ? t : t.to(type);
}

void check_uremd_backward_inputs(const at::Tensor& grad_loss, const at::Tensor& generated,
                                 const at::Tensor& palette, const std::optional<at::Tensor>& weight,
                                 const at::Tensor& argmin) {
  check_uremd_inputs(generated, palette, weight);
  PICKDRAW_CHECK_SAME_DEVICE(grad_loss, generated);
  PICKDRAW_CHECK_SAME_DEVICE(argmin, generated);
  TORCH_CHECK(grad_loss.dim() == 1 && grad_loss.size(0) == generated.size(0),
              "grad_loss must be [B] = [", generated.size(0), "], got ", grad_loss.sizes());
  TORCH_CHECK(argmin.scalar_type() == at::kLong && argmin.dim() == 2 &&
                  argmin.size(0) == generated.size(0) && argmin.size(1) == generated.size(1),
              "argmin must be int64 [B, N] matching generated, got ", argmin.scalar_type(), " ",
              argmin.sizes());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_results(
    const at::Tensor& grad_generated, const at::Tensor& grad_palette, const at::Tensor& grad_weight,
    const at::Tensor& generated, const at::Tensor& palette, const std::optional<at::Tensor>& weight) {
  auto finish = [](const at::Tensor& t, const at::Tensor& like) {
    return t.defined() ? as_type(t, like.scalar_type()) : at::empty({0}, like.options());
  };
  const bool has_weight = weight.has_value() && weight->defined();
  return {finish(grad_generated, generated), finish(grad_palette, palette),
          has_weight ? finish(grad_weight, *weight) : at::empty({0}, generated.options())};
}

at::ScalarType uremd_accumulate_type(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor inverse_norms_aten(const at::Tensor& x, at::ScalarType acc) {
  return at::linalg_vector_norm(x, 2, {-1}, /*keepdim=*/false, acc)
      .clamp_min(kCosineEps)
      .reciprocal();
}

std::tuple<at::Tensor, at::Tensor> tiled_row_min(const at::Tensor& generated,
                                                 const at::Tensor& palette,
                                                 int64_t tile_elements,
                                                 bool gemm_in_accumulate_type,
                                                 const RowMinKernels& kernels) {
  const auto acc = uremd_accumulate_type(generated.scalar_type());
  const int64_t B = generated.size(0), N = generated.size(1), M = palette.size(1);
  auto g = generated;
  auto p = palette;
  // A shared palette turns the batch into one taller GEMM: fewer, larger calls.
  const bool shared_palette = p.size(0) == 1 && B > 1;
  if (shared_palette) g = g.reshape({1, B * N, g.size(2)});
  const int64_t Bg = g.size(0), Ng = g.size(1);

  auto best_cost = at::empty({Bg, Ng}, generated.options().dtype(acc));
  auto best_index = at::empty({Bg, Ng}, generated.options().dtype(at::kLong));
  if (Bg > 0 && Ng > 0 && M > 0) {
    const auto g_inv = kernels.inverse_norms(g, acc);
    const auto p_inv = kernels.inverse_norms(p, acc);
    if (gemm_in_accumulate_type) {
      g = detail::as_type(g, acc);
      p = detail::as_type(p, acc);
    }
    // Tile shape: all rows and as many palette columns as the budget allows (at least 32, a
    // warp's width); rows are split only when even 32 columns would not fit.
    const int64_t cols = std::min<int64_t>(M, std::max<int64_t>(32, tile_elements / (Bg * Ng)));
    const int64_t rows = std::min<int64_t>(Ng, std::max<int64_t>(1, tile_elements / (Bg * cols)));
    auto scratch = at::empty({Bg * rows * cols}, generated.options().dtype(acc));
    // One problem (the usual case: a single palette) is a plain GEMM: no batch bookkeeping.
    const auto g2 = Bg == 1 ? g[0] : at::Tensor();
    const auto p2 = Bg == 1 ? p[0] : at::Tensor();
    for (int64_t r0 = 0; r0 < Ng; r0 += rows) {
      const int64_t rn = std::min(rows, Ng - r0);
      for (int64_t c0 = 0; c0 < M; c0 += cols) {
        const int64_t cn = std::min(cols, M - c0);
        auto dots = scratch.narrow(0, 0, Bg * rn * cn).view({Bg, rn, cn});
        if (Bg == 1) {
          auto out = dots[0];
          const auto a = rn == Ng ? g2 : g2.narrow(0, r0, rn);
          const auto b = (cn == M ? p2 : p2.narrow(0, c0, cn)).t();
          if (g.scalar_type() == acc) {
            at::mm_out(out, a, b);
          } else {
            at::mm_out(out, a, b, acc);  // tensor-core GEMM, float32 result
          }
        } else {
          const auto a = g.narrow(1, r0, rn);
          const auto b = p.narrow(1, c0, cn).transpose(1, 2);
          if (g.scalar_type() == acc) {
            at::bmm_out(dots, a, b);
          } else {
            at::bmm_out(dots, a, b, acc);
          }
        }
        kernels.select(TileSelect{dots, g_inv, p_inv, r0, c0, best_cost, best_index});
      }
    }
  }
  if (shared_palette) {
    best_cost = best_cost.view({B, N});
    best_index = best_index.view({B, N});
  }
  return {best_cost, best_index};
}

namespace {

// Costs of one tile, their row minimum, and the merge into the running minimum (strictly smaller
// wins, so the lowest index is kept across tiles as within one: at::min returns the first minimum).
void select_aten(const TileSelect& tile) {
  const int64_t rows = tile.dots.size(1), cols = tile.dots.size(2);
  const auto g_inv = tile.g_inv_norm.narrow(1, tile.row_offset, rows).unsqueeze(2);
  const auto p_inv = tile.p_inv_norm.narrow(1, tile.col_offset, cols).unsqueeze(1);
  auto [value, index] = (1 - tile.dots * g_inv * p_inv).min(2);
  index.add_(tile.col_offset);
  auto best_cost = tile.best_cost.narrow(1, tile.row_offset, rows);
  auto best_index = tile.best_index.narrow(1, tile.row_offset, rows);
  if (tile.col_offset == 0) {
    best_cost.copy_(value);
    best_index.copy_(index);
    return;
  }
  const auto better = value < best_cost;
  best_cost.copy_(at::where(better, value, best_cost));
  best_index.copy_(at::where(better, index, best_index));
}

// Same scratch bound as the CUDA kernel's tile (12 MiB of float32).
constexpr int64_t kAtenTileElements = 3 * 1024 * 1024;

}  // namespace

std::tuple<at::Tensor, at::Tensor> row_min_aten(const at::Tensor& generated, const at::Tensor& palette) {
  check_uremd_inputs(generated, palette, std::nullopt);
  return tiled_row_min(generated, palette, kAtenTileElements, /*gemm_in_accumulate_type=*/false,
                       RowMinKernels{select_aten, inverse_norms_aten});
}

std::tuple<at::Tensor, at::Tensor> call_row_min(const at::Tensor& generated,
                                                const at::Tensor& palette) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pickdraw::_uremd_row_min", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&,
                                                                 const at::Tensor&)>();
  return op.call(generated, palette);
}

// Weighted mean of the row minima: sum_n w_n c_n / sum_n w_n, 0 where the weights sum to 0.
// In the accumulate dtype of min_cost.
at::Tensor weighted_mean(const at::Tensor& min_cost, const std::optional<at::Tensor>& weight) {
  if (!(weight.has_value() && weight->defined())) {
    // One reduction; a mean over N = 0 would be NaN, the loss is 0 there.
    return min_cost.size(1) > 0 ? min_cost.mean(1) : at::zeros({min_cost.size(0)}, min_cost.options());
  }
  const auto w = as_type(*weight, min_cost.scalar_type());
  const auto w_sum = w.sum(1);
  const auto safe_sum = at::where(w_sum > 0, w_sum, at::ones_like(w_sum));
  return at::where(w_sum > 0, (w * min_cost).sum(1) / safe_sum, at::zeros_like(w_sum));
}

}  // namespace detail

namespace {

std::tuple<at::Tensor, at::Tensor> row_min_meta(const at::Tensor& generated,
                                                const at::Tensor& palette) {
  detail::check_uremd_inputs(generated, palette, std::nullopt);
  const auto acc = detail::uremd_accumulate_type(generated.scalar_type());
  const auto B = generated.size(0), N = generated.size(1);
  return {at::empty({B, N}, generated.options().dtype(acc)),
          at::empty({B, N}, generated.options().dtype(at::kLong))};
}

at::Tensor uremd_no_grad(const at::Tensor& generated, const at::Tensor& palette,
                         const std::optional<at::Tensor>& weight) {
  detail::check_uremd_inputs(generated, palette, weight);
  auto [min_cost, argmin] = detail::call_row_min(generated, palette);
  return detail::as_type(detail::weighted_mean(min_cost, weight), generated.scalar_type());
}

// Shapes of the fused backward's results: unrequested gradients are empty tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_meta(
    const at::Tensor& grad_loss, const at::Tensor& generated, const at::Tensor& palette,
    const std::optional<at::Tensor>& weight, const at::Tensor& argmin,
    std::array<bool, 3> output_mask) {
  detail::check_uremd_backward_inputs(grad_loss, generated, palette, weight, argmin);
  auto empty = [&](bool needed, const at::Tensor& like) {
    return needed ? at::empty_like(like) : at::empty({0}, like.options());
  };
  const bool has_weight = weight.has_value() && weight->defined();
  return {empty(output_mask[0], generated), empty(output_mask[1], palette),
          has_weight ? empty(output_mask[2], *weight) : at::empty({0}, generated.options())};
}

#ifndef PICKDRAW_WITH_CUDA
// A build without CUDA kernels (no nvcc of torch's CUDA version: the common case) still guides on a
// GPU: CUDA tensors take the ATen path, with the same tiling and memory bound, and say so once.
constexpr const char* kNoCudaKernels =
    "Pick-and-Draw was built without its CUDA kernels: UREMD on CUDA tensors runs as tiled ATen ops "
    "(same results, slower). For the fused kernels install the CUDA toolkit matching torch's CUDA "
    "and rerun install.py.";

std::tuple<at::Tensor, at::Tensor> row_min_without_cuda_kernels(const at::Tensor& generated,
                                                                const at::Tensor& palette) {
  TORCH_WARN_ONCE(kNoCudaKernels);
  return detail::row_min_aten(generated, palette);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_without_cuda_kernels(
    const at::Tensor& grad_loss, const at::Tensor& generated, const at::Tensor& palette,
    const std::optional<at::Tensor>& weight, const at::Tensor& argmin,
    std::array<bool, 3> output_mask) {
  TORCH_WARN_ONCE(kNoCudaKernels);
  detail::check_uremd_backward_inputs(grad_loss, generated, palette, weight, argmin);
  const auto [grad_generated, grad_palette, grad_weight] =
      detail::uremd_backward_composite(grad_loss, generated, palette, weight, argmin, output_mask);
  return detail::backward_results(grad_generated, grad_palette, grad_weight, generated, palette,
                                  weight);
}
#endif

}  // namespace

at::Tensor uremd(const at::Tensor& generated, const at::Tensor& palette,
                 const std::optional<at::Tensor>& weight) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pickdraw::uremd", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&)>();
  return op.call(generated, palette, weight);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> uremd_with_argmin(
    const at::Tensor& generated, const at::Tensor& palette,
    const std::optional<at::Tensor>& weight) {
  at::NoGradGuard no_grad;
  detail::check_uremd_inputs(generated, palette, weight);
  auto [min_cost, argmin] = detail::call_row_min(generated, palette);
  auto loss = detail::as_type(detail::weighted_mean(min_cost, weight), generated.scalar_type());
  return {loss, min_cost, argmin};
}

}  // namespace pickdraw

TORCH_LIBRARY(pickdraw, m) {
  m.def("uremd(Tensor generated, Tensor palette, Tensor? weight=None) -> Tensor");
  m.def("_uremd_row_min(Tensor generated, Tensor palette) -> (Tensor min_cost, Tensor argmin)");
  m.def("_uremd_backward(Tensor grad_loss, Tensor generated, Tensor palette, Tensor? weight, "
        "Tensor argmin, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(pickdraw, CompositeExplicitAutograd, m) {
  m.impl("uremd", TORCH_FN(pickdraw::uremd_no_grad));
}

TORCH_LIBRARY_IMPL(pickdraw, Meta, m) {
  m.impl("_uremd_row_min", TORCH_FN(pickdraw::row_min_meta));
  m.impl("_uremd_backward", TORCH_FN(pickdraw::backward_meta));
}

#ifndef PICKDRAW_WITH_CUDA
TORCH_LIBRARY_IMPL(pickdraw, CUDA, m) {
  m.impl("_uremd_row_min", TORCH_FN(pickdraw::row_min_without_cuda_kernels));
  m.impl("_uremd_backward", TORCH_FN(pickdraw::backward_without_cuda_kernels));
}
#endif
