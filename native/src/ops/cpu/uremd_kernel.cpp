// CPU kernel of pickdraw::_uremd_row_min: BLAS GEMM into a small tile + fused select.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "ops/uremd_internal.h"

namespace pickdraw {
namespace {

// 256 x 1024 float32 = 1 MiB: large enough for an efficient GEMM call, small enough to stay in
// the last-level cache between the GEMM writing it and the select reading it.
constexpr int64_t kCpuTileElements = 256 * 1024;

template <typename acc_t>
void select_tile_impl(const detail::TileSelect& t) {
  const int64_t B = t.dots.size(0), rows = t.dots.size(1), cols = t.dots.size(2);
  const int64_t N = t.best_cost.size(1), M = t.p_inv_norm.size(1);
  const acc_t* dots = t.dots.data_ptr<acc_t>();
  const acc_t* g_inv = t.g_inv_norm.data_ptr<acc_t>();
  const acc_t* p_inv_base = t.p_inv_norm.data_ptr<acc_t>();
  acc_t* best_cost = t.best_cost.data_ptr<acc_t>();
  int64_t* best_index = t.best_index.data_ptr<int64_t>();
  const bool shared_palette = t.p_inv_norm.size(0) == 1;
  const bool first_tile = t.col_offset == 0;
  at::parallel_for(0, B * rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / rows, i = t.row_offset + r % rows;
      const acc_t* row = dots + r * cols;
      const acc_t gi = g_inv[b * N + i];
      const acc_t* pi = p_inv_base + (shared_palette ? 0 : b * M) + t.col_offset;
      acc_t best = first_tile ? std::numeric_limits<acc_t>::infinity() : best_cost[b * N + i];
      int64_t arg = first_tile ? 0 : best_index[b * N + i];
      for (int64_t j = 0; j < cols; ++j) {
        const acc_t cost = acc_t(1) - row[j] * gi * pi[j];
        if (cost < best) {  // strict: earlier (lower) indices win ties
          best = cost;
          arg = t.col_offset + j;
        }
      }
      best_cost[b * N + i] = best;
      best_index[b * N + i] = arg;
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
                               /*gemm_in_accumulate_type=*/true,
                               {select_tile_cpu, detail::inverse_norms_aten});
}

// Fused backward: the formula of uremd_backward_composite (ops/uremd.cpp) in two passes over
// the rows, each row touching only its own C features and its chosen palette entry.
template <typename acc_t>
void backward_impl(const at::Tensor& grad_loss, const at::Tensor& g, const at::Tensor& p,
                   const at::Tensor& w, const at::Tensor& argmin, at::Tensor* grad_g,
                   at::Tensor* grad_p, at::Tensor* grad_w) {
  const int64_t B = g.size(0), N = g.size(1), C = g.size(2), Bp = p.size(0), M = p.size(1);
  const acc_t eps = static_cast<acc_t>(detail::kCosineEps);
  const acc_t* gd = g.data_ptr<acc_t>();
  const acc_t* pd = p.data_ptr<acc_t>();
  const acc_t* wd = w.data_ptr<acc_t>();
  const acc_t* gl = grad_loss.data_ptr<acc_t>();
  const int64_t* ad = argmin.data_ptr<int64_t>();
  auto palette_row = [&](int64_t r) {
    const int64_t b = r / N;
    return pd + ((Bp == 1 ? 0 : b) * M + ad[r]) * C;
  };

  // Pass 1: cosine and norms of every (feature, chosen entry) pair.
  std::vector<acc_t> cos(static_cast<size_t>(B * N)), g_norm(cos.size()), p_norm(cos.size());
  at::parallel_for(0, B * N, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const acc_t* gr = gd + r * C;
      const acc_t* pr = palette_row(r);
      acc_t gg = 0, pp = 0, gp = 0;
      for (int64_t c = 0; c < C; ++c) {
        gg += gr[c] * gr[c];
        pp += pr[c] * pr[c];
        gp += gr[c] * pr[c];
      }
      const acc_t gn = std::sqrt(gg), pn = std::sqrt(pp);
      g_norm[r] = gn;
      p_norm[r] = pn;
      cos[r] = gp / (std::max(gn, eps) * std::max(pn, eps));
    }
  });
  // Per problem: dL/dc scale (0 for a problem without weight) and the loss itself.
  std::vector<acc_t> scale(static_cast<size_t>(B)), loss(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    acc_t w_sum = 0, num = 0;
    for (int64_t n = 0; n < N; ++n) {
      w_sum += wd[b * N + n];
      num += wd[b * N + n] * (acc_t(1) - cos[b * N + n]);
    }
    scale[b] = w_sum > 0 ? gl[b] / w_sum : acc_t(0);
    loss[b] = w_sum > 0 ? num / w_sum : acc_t(0);
  }
  // Pass 2: d cost / d g of each row (rows are independent).
  if (grad_g != nullptr) {
    acc_t* out = grad_g->data_ptr<acc_t>();
    at::parallel_for(0, B * N, 256, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const acc_t coef = wd[r] * scale[r / N];
        const acc_t* gr = gd + r * C;
        const acc_t* pr = palette_row(r);
        const acc_t gn = std::max(g_norm[r], eps), pn = std::max(p_norm[r], eps);
        acc_t* o = out + r * C;
        if (g_norm[r] > eps) {
          for (int64_t c = 0; c < C; ++c) o[c] = -coef * (pr[c] / pn - cos[r] * gr[c] / gn) / gn;
        } else {
          for (int64_t c = 0; c < C; ++c) o[c] = -coef * pr[c] / pn / eps;
        }
      }
    });
  }
  // Pass 3: palette rows are shared between features, so accumulate serially (not needed by
  // guidance, which keeps the palette fixed).
  if (grad_p != nullptr) {
    acc_t* out = grad_p->data_ptr<acc_t>();
    for (int64_t r = 0; r < B * N; ++r) {
      const acc_t coef = wd[r] * scale[r / N];
      if (coef == 0) continue;
      const acc_t* gr = gd + r * C;
      const acc_t* pr = palette_row(r);
      acc_t* o = out + (palette_row(r) - pd);
      const acc_t gn = std::max(g_norm[r], eps), pn = std::max(p_norm[r], eps);
      if (p_norm[r] > eps) {
        for (int64_t c = 0; c < C; ++c) o[c] += -coef * (gr[c] / gn - cos[r] * pr[c] / pn) / pn;
      } else {
        for (int64_t c = 0; c < C; ++c) o[c] += -coef * gr[c] / gn / eps;
      }
    }
  }
  if (grad_w != nullptr) {
    acc_t* out = grad_w->data_ptr<acc_t>();
    for (int64_t r = 0; r < B * N; ++r) out[r] = (acc_t(1) - cos[r] - loss[r / N]) * scale[r / N];
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> uremd_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& generated, const at::Tensor& palette,
    const std::optional<at::Tensor>& weight, const at::Tensor& argmin,
    std::array<bool, 3> output_mask) {
  detail::check_uremd_backward_inputs(grad_loss, generated, palette, weight, argmin);
  const bool has_weight = weight.has_value() && weight->defined();
  const auto acc = detail::uremd_accumulate_type(generated.scalar_type());
  const auto g = detail::as_type(generated, acc).contiguous();
  const auto p = detail::as_type(palette, acc).contiguous();
  const auto w = has_weight ? detail::as_type(*weight, acc).contiguous()
                            : at::ones({g.size(0), g.size(1)}, g.options());
  const auto gl = detail::as_type(grad_loss, acc).contiguous();
  const auto a = argmin.contiguous();
  auto grad_g = output_mask[0] ? at::empty_like(g) : at::Tensor();
  auto grad_p = output_mask[1] ? at::zeros_like(p) : at::Tensor();
  auto grad_w = (output_mask[2] && has_weight) ? at::empty_like(w) : at::Tensor();
  if (g.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(acc, "uremd_backward_cpu", [&] {
      backward_impl<scalar_t>(gl, g, p, w, a, grad_g.defined() ? &grad_g : nullptr,
                              grad_p.defined() ? &grad_p : nullptr,
                              grad_w.defined() ? &grad_w : nullptr);
    });
  } else {  // N = 0 or C = 0: nothing to gather; every gradient is 0
    if (grad_g.defined()) grad_g.zero_();
    if (grad_w.defined()) grad_w.zero_();
  }
  return detail::backward_results(grad_g, grad_p, grad_w, generated, palette, weight);
}

}  // namespace
}  // namespace pickdraw

TORCH_LIBRARY_IMPL(pickdraw, CPU, m) {
  m.impl("_uremd_row_min", TORCH_FN(pickdraw::uremd_row_min_cpu));
  m.impl("_uremd_backward", TORCH_FN(pickdraw::uremd_backward_cpu));
}
