#include "pickdraw/token_attention_maps.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>

#include "attention_heads.h"
#include "pickdraw/checks.h"

namespace pickdraw {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// [B, N, heads * dim] -> [B, heads, N, dim] in the compute dtype
at::Tensor heads_of(const at::Tensor& x, int64_t heads, at::ScalarType compute) {
  return detail::split_heads(x, heads).to(compute);
}

at::ScalarType compute_type(const at::Tensor& q) {
  return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// softmax over the context tokens of the scaled logits: [B, heads, N, T]
at::Tensor probabilities(const at::Tensor& qh, const at::Tensor& kh) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(qh.size(-1)));
  return at::softmax(at::matmul(qh, kh.transpose(-1, -2)) * scale, -1);
}

struct TokenAttentionMaps : public torch::autograd::Function<TokenAttentionMaps> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            int64_t heads, const at::Tensor& token_index) {
    ctx->save_for_backward({q, k, token_index});
    ctx->saved_data["heads"] = heads;
    // Autograd runs this without recording: the probabilities die here, and the backward recomputes them.
    const auto compute = compute_type(q);
    const auto probs = probabilities(heads_of(q, heads, compute), heads_of(k, heads, compute));
    return probs.index_select(-1, token_index).mean(1);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& q = saved[0];
    const auto& k = saved[1];
    const auto& token_index = saved[2];
    const int64_t heads = ctx->saved_data["heads"].toInt();
    const auto compute = compute_type(q);
    const auto qh = heads_of(q, heads, compute);
    const auto kh = heads_of(k, heads, compute);
    const auto probs = probabilities(qh, kh);
    // d maps / d probs is 1/heads at the chosen tokens of every head, 0 elsewhere, so the softmax's
    // backward, g * p - p * sum(g * p), needs the chosen tokens' probabilities only in its first part.
    const auto grad_chosen = grads[0].to(compute).unsqueeze(1) / static_cast<double>(heads);  // [B,1,N,K]
    const auto weighted = grad_chosen * probs.index_select(-1, token_index);                 // [B,h,N,K]
    const double scale = 1.0 / std::sqrt(static_cast<double>(qh.size(-1)));
    const auto grad_scaled_logits =
        (probs * (weighted.sum(-1, true) * -scale)).index_add_(-1, token_index, weighted * scale);
    const auto merge = [](const at::Tensor& x, const at::Tensor& like) {  // [B, heads, N, dim] -> like
      return x.transpose(1, 2).reshape(like.sizes()).to(like.scalar_type());
    };
    return {merge(at::matmul(grad_scaled_logits, kh), q),
            merge(at::matmul(grad_scaled_logits.transpose(-1, -2), qh), k), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor token_attention_maps(const at::Tensor& q, const at::Tensor& k, int64_t heads,
                                const at::Tensor& token_index, bool recompute_in_backward) {
  PICKDRAW_CHECK_DIM(q, 3);
  PICKDRAW_CHECK_DIM(k, 3);
  PICKDRAW_CHECK_FLOATING(q);
  PICKDRAW_CHECK_SAME_DTYPE(q, k);
  PICKDRAW_CHECK_SAME_DEVICE(q, k);
  PICKDRAW_CHECK_SAME_DEVICE(q, token_index);
  TORCH_CHECK(heads >= 1 && q.size(2) % heads == 0 && k.size(2) == q.size(2),
              "q and k must have heads * dim channels (heads = ", heads, "), got ", q.sizes(),
              " and ", k.sizes());
  TORCH_CHECK(k.size(0) == q.size(0), "q and k must share the batch, got ", q.sizes(), " and ",
              k.sizes());
  TORCH_CHECK(token_index.dim() == 1 && token_index.scalar_type() == at::kLong,
              "token_index must be a 1-D int64 tensor, got ", token_index.scalar_type(), " ",
              token_index.sizes());
  if (recompute_in_backward) return TokenAttentionMaps::apply(q, k, heads, token_index);
  const auto compute = compute_type(q);
  return probabilities(heads_of(q, heads, compute), heads_of(k, heads, compute))
      .index_select(-1, token_index)
      .mean(1);
}

}  // namespace pickdraw
