#pragma once
// The attention recorder: the callback a host (ComfyUI, through its attn2 replace patch) calls on
// each cross-attention layer it wants watched. It returns the attention output, as the host's own
// attention would, and keeps what the guidance terms read:
//   maps      the subject tokens' attention probabilities of the conditional rows, head-averaged,
//             [Bc, T, H, W] (T = number of recorded token indices)
//   features  image features of the conditional rows, [Bc, N, heads * dim]: by default the layer's
//             query projection of the image hidden states (FeatureSource::kQuery). The attention
//             output is a convex mix of the prompt's value vectors, the same wherever a generated and
//             a reference subject attend to the same words, so it carries almost no appearance; it
//             stays selectable (kAttentionOutput) only to measure that.
// The output always comes from scaled_dot_product_attention. The
// conditional rows' probabilities are computed explicitly (softmax in float32 for reduced-precision
// models, as ComfyUI's attention_basic does) only when something is recorded: while gradients are
// being taken or when a capture pass asks for it. Otherwise the call is a pass-through.
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace pickdraw {

// Which per-token tensor of a watched layer the appearance features are.
enum class FeatureSource {
  kQuery,            // "attn2_query": to_q of the image hidden states the layer reads
  kAttentionOutput,  // "attn2_output": softmax(q k^T) v, before the output projection
};

// The name a palette's metadata records for a source, and back (std::invalid_argument naming the
// known sources for an unknown name).
const char* feature_source_name(FeatureSource source);
FeatureSource feature_source_from_name(const std::string& name);

// What to keep from one watched layer.
struct LayerCapture {
  bool maps = false;
  bool features = false;
};

// What the host knows about one attention call.
struct AttentionCall {
  std::string layer_key;               // e.g. "output.3.0"
  int64_t heads = 1;                   // q, k, v carry heads * dim channels
  std::vector<int64_t> cond_or_uncond; // one entry per batch chunk: 0 conditional, 1 unconditional
  int64_t height = 0;                  // spatial shape of the query tokens (height * width = N)
  int64_t width = 0;
};

class AttentionRecorder {
 public:
  // layers: the watched layer keys and what to keep from each. token_indices: the columns of the
  // attention probabilities (positions in the prompt's tokens) whose maps are kept.
  AttentionRecorder(std::map<std::string, LayerCapture> layers, std::vector<int64_t> token_indices);

  // q: [B, N, heads * dim]; k, v: [B, L, heads * dim] (same dtype and device). The batch is
  // len(cond_or_uncond) chunks of B / len(cond_or_uncond) rows, in the order given. Returns the
  // attention output [B, N, heads * dim]. Differentiable when recording.
  at::Tensor cross_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const AttentionCall& call);

  // Capture passes (palette and template recording) run without gradients; this forces
  // recording there. Guided steps record because gradients are enabled.
  void set_capture(bool capture) { capture_ = capture; }
  bool capture() const { return capture_; }
  // Whether a call made now would record.
  bool recording() const;
  // Whether the maps' backward recomputes the attention probabilities instead of keeping them
  // (less memory, more kernels; see token_attention_maps.h). Off by default.
  void set_recompute_maps(bool recompute) { recompute_maps_ = recompute; }
  bool recompute_maps() const { return recompute_maps_; }
  void set_feature_source(FeatureSource source) { feature_source_ = source; }
  FeatureSource feature_source() const { return feature_source_; }

  bool watches(const std::string& layer_key) const { return layers_.count(layer_key) != 0; }
  const std::map<std::string, LayerCapture>& layers() const { return layers_; }
  const std::vector<int64_t>& token_indices() const { return token_indices_; }

  // What was recorded since the last clear(), per layer. Several calls with conditional rows in
  // one step (split batches) append their rows in call order.
  const std::map<std::string, at::Tensor>& maps() const { return maps_; }
  const std::map<std::string, at::Tensor>& features() const { return features_; }
  // Drops every capture (the host calls it between steps), releasing their memory.
  void clear();
  // Bytes held by the captures (to check that nothing accumulates across steps).
  int64_t captured_bytes() const;

 private:
  const at::Tensor& token_index_on(const c10::Device& device);

  std::map<std::string, LayerCapture> layers_;
  std::vector<int64_t> token_indices_;
  bool capture_ = false;
  bool recompute_maps_ = false;
  FeatureSource feature_source_ = FeatureSource::kQuery;
  std::map<std::string, at::Tensor> maps_;
  std::map<std::string, at::Tensor> features_;
  at::Tensor token_index_;  // token_indices_ as an int64 tensor on the device of the last call
};

}  // namespace pickdraw
