// Autograd of the UREMD op: a custom Function around the row-min kernel whose backward gathers the
// chosen palette entries (O(N*C), no N x M work), registered for the Autograd dispatch key.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>

#include "ops/uremd_internal.h"

namespace pickdraw {
namespace detail {

// With c_n = 1 - cos(g_n, p_a(n)), a(n) the argmin held fixed, g^ = g/|g|, p^ = p/|p|:
//   dc/dg = -(p^ - cos g^) / |g|,  dc/dp = -(g^ - cos p^) / |p|   (|.| > eps)
//   dc/dg = -p^ / eps,             dc/dp = -g^ / eps             (|.| <= eps: clamped norm)
//   dL/dc_n = w_n / W,  dL/dw_n = (c_n - L) / W,  all times the incoming grad_output[b].
// Only the argmin is taken from the forward; everything else is recomputed from the inputs.
// Written with ATen ops on any device, so a double backward differentiates this formula; the
// fused kernels (_uremd_backward) compute the same in one pass and are checked against it.
std::tuple<at::Tensor, at::Tensor, at::Tensor> uremd_backward_composite(
    const at::Tensor& grad_loss_in, const at::Tensor& generated, const at::Tensor& palette,
    const std::optional<at::Tensor>& weight, const at::Tensor& argmin,
    std::array<bool, 3> output_mask) {
  const bool has_weight = weight.has_value() && weight->defined();
  const auto acc = detail::uremd_accumulate_type(generated.scalar_type());
  const int64_t B = generated.size(0), N = generated.size(1), C = generated.size(2);
  const int64_t Bp = palette.size(0), M = palette.size(1);
  const auto grad_loss = detail::as_type(grad_loss_in, acc);  // [B]
  const auto w = has_weight ? detail::as_type(*weight, acc)
                            : at::ones({B, N}, generated.options().dtype(acc));
  const auto w_sum = w.sum(1);
  const auto safe_sum = at::where(w_sum > 0, w_sum, at::ones_like(w_sum));
  const auto live = (w_sum > 0).to(acc);
  const auto scale = grad_loss * live / safe_sum;  // [B]
  const auto coef = w * scale.unsqueeze(1);         // dL/dc_n times grad_output

  at::Tensor grad_generated, grad_palette, grad_weight;
  const auto [need_g, need_p, need_w_flag] = output_mask;
  const bool need_w = has_weight && need_w_flag;
  if (N == 0 || B == 0) {
    if (need_g) grad_generated = at::zeros_like(generated);
    if (need_p) grad_palette = at::zeros_like(palette);
    if (need_w) grad_weight = at::zeros_like(*weight);
    return {grad_generated, grad_palette, grad_weight};
  }
  const auto g = detail::as_type(generated, acc);
  const auto p = detail::as_type(palette, acc);
  const auto batch_base = Bp == 1 ? at::zeros({B, 1}, argmin.options())
                                  : (at::arange(B, argmin.options()) * M).unsqueeze(1);
  const auto flat_index = (argmin + batch_base).reshape({-1});
  const auto p_sel = p.reshape({Bp * M, C}).index_select(0, flat_index).view({B, N, C});
  const auto g_norm = at::linalg_vector_norm(g, 2, {-1}, true);
  const auto p_norm = at::linalg_vector_norm(p_sel, 2, {-1}, true);
  const auto g_hat = g / g_norm.clamp_min(detail::kCosineEps);
  const auto p_hat = p_sel / p_norm.clamp_min(detail::kCosineEps);
  const auto cos = (g_hat * p_hat).sum(-1, true);
  const auto c = coef.unsqueeze(-1);
  if (need_g) {
    const auto d = at::where(g_norm > detail::kCosineEps,
                             (p_hat - cos * g_hat) / g_norm.clamp_min(detail::kCosineEps),
                             p_hat / detail::kCosineEps);
    grad_generated = detail::as_type(-c * d, generated.scalar_type());
  }
  if (need_p) {
    const auto d = at::where(p_norm > detail::kCosineEps,
                             (g_hat - cos * p_hat) / p_norm.clamp_min(detail::kCosineEps),
                             g_hat / detail::kCosineEps);
    grad_palette = detail::as_type(at::zeros({Bp * M, C}, p.options())
                                       .index_add(0, flat_index, (-c * d).reshape({B * N, C}))
                                       .view({Bp, M, C}),
                                   palette.scalar_type());
  }
  if (need_w) {
    const auto cost = 1 - cos.squeeze(-1);
    const auto mean = (w * cost).sum(1, true) / safe_sum.unsqueeze(1);
    grad_weight = detail::as_type((cost - mean) * scale.unsqueeze(1), weight->scalar_type());
  }
  return {grad_generated, grad_palette, grad_weight};
}

}  // namespace detail

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_backward(
    const at::Tensor& grad_loss, const at::Tensor& generated, const at::Tensor& palette,
    const std::optional<at::Tensor>& weight, const at::Tensor& argmin,
    std::array<bool, 3> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pickdraw::_uremd_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const std::optional<at::Tensor>&, const at::Tensor&,
                           std::array<bool, 3>)>();
  return op.call(grad_loss, generated, palette, weight, argmin, output_mask);
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class UremdFunction : public torch::autograd::Function<UremdFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& generated,
                            const at::Tensor& palette, const std::optional<at::Tensor>& weight) {
    at::AutoDispatchBelowADInplaceOrView guard;
    detail::check_uremd_inputs(generated, palette, weight);
    auto [min_cost, argmin] = detail::call_row_min(generated, palette);
    const auto loss = detail::weighted_mean(min_cost, weight);
    const bool has_weight = weight.has_value() && weight->defined();
    ctx->saved_data["has_weight"] = has_weight;
    // Only the argmin is kept from the forward (B x N indices); the backward recomputes the rest.
    ctx->save_for_backward({generated, palette, has_weight ? *weight : at::Tensor(), argmin});
    return detail::as_type(loss, generated.scalar_type());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const bool has_weight = ctx->saved_data["has_weight"].toBool();
    const std::optional<at::Tensor> weight =
        has_weight ? std::optional<at::Tensor>(saved[2]) : std::nullopt;
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                   has_weight && ctx->needs_input_grad(2)};
    // A double backward (create_graph=True) needs the formula as differentiable ATen ops; a
    // plain backward, the guidance case, takes the fused kernel.
    auto grads = at::GradMode::is_enabled()
                     ? detail::uremd_backward_composite(grad_outputs[0], saved[0], saved[1],
                                                        weight, saved[3], mask)
                     : call_backward(grad_outputs[0], saved[0], saved[1], weight, saved[3], mask);
    variable_list out{std::get<0>(grads), std::get<1>(grads), std::get<2>(grads)};
    for (size_t i = 0; i < 3; ++i) {
      if (!mask[i]) out[i] = at::Tensor();
    }
    return out;
  }
};

at::Tensor uremd_autograd(const at::Tensor& generated, const at::Tensor& palette,
                          const std::optional<at::Tensor>& weight) {
  return UremdFunction::apply(generated, palette, weight);
}

}  // namespace
}  // namespace pickdraw

TORCH_LIBRARY_IMPL(pickdraw, Autograd, m) {
  m.impl("uremd", TORCH_FN(pickdraw::uremd_autograd));
}

