#include "pickdraw/attention_recorder.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>

#include "attention_heads.h"
#include "pickdraw/checks.h"
#include "pickdraw/token_attention_maps.h"

namespace pickdraw {
namespace {

using detail::merge_heads;
using detail::split_heads;

at::Tensor fast_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          int64_t heads) {
  return merge_heads(at::scaled_dot_product_attention(split_heads(q, heads), split_heads(k, heads),
                                                      split_heads(v, heads)));
}

at::Tensor append_rows(const at::Tensor& existing, const at::Tensor& rows) {
  return existing.defined() ? at::cat({existing, rows}, 0) : rows;
}

}  // namespace

const char* feature_source_name(FeatureSource source) {
  switch (source) {
    case FeatureSource::kQuery:
      return "attn2_query";
    case FeatureSource::kAttentionOutput:
      return "attn2_output";
  }
  return "unknown";
}

FeatureSource feature_source_from_name(const std::string& name) {
  if (name == "attn2_query") return FeatureSource::kQuery;
  TORCH_CHECK_VALUE(name == "attn2_output", "unknown feature source '", name,
                    "'; known: attn2_query, attn2_output");
  return FeatureSource::kAttentionOutput;
}

AttentionRecorder::AttentionRecorder(std::map<std::string, LayerCapture> layers,
                                     std::vector<int64_t> token_indices)
    : layers_(std::move(layers)), token_indices_(std::move(token_indices)) {
  for (const auto& [key, capture] : layers_) {
    TORCH_CHECK_VALUE(capture.maps || capture.features, "watched layer '", key,
                      "' records neither maps nor features; drop it from the watched layers");
    TORCH_CHECK_VALUE(!capture.maps || !token_indices_.empty(), "layer '", key,
                      "' records maps but no token indices were given");
  }
  for (auto t : token_indices_) {
    TORCH_CHECK_VALUE(t >= 0, "token indices must be >= 0, got ", t);
  }
}

const at::Tensor& AttentionRecorder::token_index_on(const c10::Device& device) {
  // Built once per device: a fresh host-to-device copy on every call would synchronise the stream.
  // One built under inference mode (a capture pass) cannot be saved for backward: rebuilt outside it.
  if (!token_index_.defined() || token_index_.device() != device ||
      (token_index_.is_inference() && !c10::InferenceMode::is_enabled())) {
    token_index_ = at::tensor(token_indices_, at::TensorOptions().dtype(at::kLong)).to(device);
  }
  return token_index_;
}

bool AttentionRecorder::recording() const { return capture_ || at::GradMode::is_enabled(); }

at::Tensor AttentionRecorder::cross_attention(const at::Tensor& q, const at::Tensor& k,
                                              const at::Tensor& v, const AttentionCall& call) {
  PICKDRAW_CHECK_DIM(q, 3);
  PICKDRAW_CHECK_DIM(k, 3);
  PICKDRAW_CHECK_DIM(v, 3);
  TORCH_CHECK(call.heads >= 1 && q.size(2) % call.heads == 0 && k.size(2) == q.size(2),
              "q and k must have heads * dim channels (heads = ", call.heads, "), got ", q.sizes(),
              " and ", k.sizes());
  TORCH_CHECK(k.size(0) == q.size(0) && v.size(0) == q.size(0) && v.size(1) == k.size(1),
              "q, k, v must share the batch and k, v the token count, got ", q.sizes(), ", ",
              k.sizes(), ", ", v.sizes());
  const auto layer = layers_.find(call.layer_key);
  if (layer == layers_.end() || !recording()) return fast_attention(q, k, v, call.heads);

  const int64_t B = q.size(0), N = q.size(1);
  const auto chunks = static_cast<int64_t>(call.cond_or_uncond.size());
  TORCH_CHECK(chunks >= 1 && B % chunks == 0, "cond_or_uncond has ", chunks,
              " entries but the batch has ", B, " rows; it must divide the batch");
  TORCH_CHECK(call.height * call.width == N, "height x width = ", call.height, " x ", call.width,
              " does not match the ", N, " query tokens of layer '", call.layer_key, "'");
  const LayerCapture& capture = layer->second;
  if (capture.maps) {
    for (auto t : token_indices_) {
      TORCH_CHECK(t < k.size(1), "token index ", t, " is beyond the ", k.size(1),
                  " context tokens of layer '", call.layer_key, "'");
    }
  }

  // The output of every row comes from the fused attention, as on an unwatched layer: its backward is one
  // kernel. Only the maps need the attention probabilities themselves, and only for the conditional rows:
  // those are computed explicitly.
  const auto out = fast_attention(q, k, v, call.heads);
  const int64_t per = B / chunks;
  for (int64_t c = 0; c < chunks; ++c) {
    if (call.cond_or_uncond[static_cast<size_t>(c)] != 0) continue;  // unconditional rows record nothing
    if (capture.maps) {
      // [per, N, tokens] -> [per, tokens, H, W]
      const auto maps = token_attention_maps(q.narrow(0, c * per, per), k.narrow(0, c * per, per),
                                             call.heads, token_index_on(q.device()), recompute_maps_)
                            .transpose(1, 2)
                            .reshape({per, static_cast<int64_t>(token_indices_.size()), call.height,
                                      call.width});
      maps_[call.layer_key] = append_rows(maps_[call.layer_key], maps);
    }
    if (capture.features) {
      const auto& source = feature_source_ == FeatureSource::kQuery ? q : out;
      features_[call.layer_key] = append_rows(features_[call.layer_key], source.narrow(0, c * per, per));
    }
  }
  return out;
}

void AttentionRecorder::clear() {
  maps_.clear();
  features_.clear();
}

int64_t AttentionRecorder::captured_bytes() const {
  int64_t total = 0;
  for (const auto& [key, t] : maps_) total += static_cast<int64_t>(t.nbytes());
  for (const auto& [key, t] : features_) total += static_cast<int64_t>(t.nbytes());
  return total;
}

}  // namespace pickdraw
