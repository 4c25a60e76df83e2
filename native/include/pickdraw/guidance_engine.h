#pragma once
// The guidance engine: turns what the attention recorder captured in one step into the
// Pick-and-Draw energy, and fills palettes and templates on capture passes.
//
//   L = w_app * L_app + w_lay * L_lay   per sample, each term on in its own step window
//   L_app = mean over appearance layers of UREMD(features inside the subject mask, palette)
//   L_lay = mean over layout layers of ||S(A) - S(T)||_F   (layout_loss.h)
// The subject mask of a layer is the saliency mask (saliency_mask.h) of the token maps averaged
// over the mask layers (by default the appearance layers), resampled to that layer's resolution.
// The palette records its mask layers, so that a guided run masks the generated subject exactly
// as the reference subject was masked.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "pickdraw/attention_recorder.h"
#include "pickdraw/guidance_store.h"

namespace pickdraw {

struct GuidanceConfig {
  std::vector<std::string> appearance_layers;  // features compared with the palette
  std::vector<std::string> layout_layers;      // maps compared with the template
  std::vector<int64_t> token_indices;          // subject tokens in the prompt
  std::vector<std::string> mask_layers;        // maps averaged into the subject mask; empty: the
                                               // appearance layers
  double appearance_weight = 1.0;
  double layout_weight = 1.0;
  // Step windows as fractions of the sampling steps: a term is on at step i of n when
  // start * n <= i < end * n. The appearance term waits for the first steps to pass: there the
  // subject maps do not yet separate the subject from the background, so the saliency mask lets the
  // reference's scene into the palette and the picture.
  double appearance_start = 0.3, appearance_end = 0.8;
  double layout_start = 0.0, layout_end = 0.5;
  double tau = 0.5;                // saliency threshold
  int64_t min_mask_pixels = 4;     // top-k fallback of the saliency mask
  int64_t smoothing_kernel = 3;    // Gaussian smoothing of the layout maps
  double smoothing_std_dev = 0.5;
  double strength = 1.0;           // guidance strength v (applied by the host to the gradient)
  double sigma_tolerance = 0.05;   // relative tolerance of the palette/template sigma lookup
};

// One step's energy and what it was made of.
struct StepLoss {
  at::Tensor total;       // [Bc] per conditional sample, differentiable; zeros when no term is on
  bool appearance_on = false;
  bool layout_on = false;
  at::Tensor appearance;  // [Bc] when appearance_on
  at::Tensor layout;      // [Bc] when layout_on
  // Per appearance layer, summed over the batch: a 0-dim int64 tensor on the sampling device, so that
  // taking the loss never waits for the GPU (read it when the step log is read).
  std::map<std::string, at::Tensor> mask_pixels;
  int64_t palette_sigma_index = -1;
  int64_t template_sigma_index = -1;
};

class GuidanceEngine {
 public:
  explicit GuidanceEngine(GuidanceConfig config);
  const GuidanceConfig& config() const { return config_; }

  bool appearance_active(int64_t step, int64_t steps) const;
  bool layout_active(int64_t step, int64_t steps) const;
  bool any_active(int64_t step, int64_t steps) const {
    return appearance_active(step, steps) || layout_active(step, steps);
  }

  // What the recorder must keep: maps on every layer (the masks and the layout term read them),
  // features on the appearance layers.
  std::map<std::string, LayerCapture> recorder_layers() const;

  // The energy of one guided step from the recorder's captures. palette / template may be null
  // when their term is off at this step; a term that is on needs its store.
  StepLoss step_loss(const AttentionRecorder& recorder, const Palette* palette,
                     const LayoutTemplate* layout_template, double sigma, int64_t step,
                     int64_t steps) const;

  // Capture passes. Palette: the features of conditional row `row` of each appearance layer
  // inside its palette_mask become entry (sigma_index, layer). Template: the smoothed,
  // token-averaged maps of each layout layer (all conditional rows) become entry (sigma_index, layer).
  void record_palette_entry(const AttentionRecorder& recorder, Palette& palette,
                            size_t sigma_index, int64_t row = 0,
                            const std::optional<at::Tensor>& user_mask = std::nullopt) const;
  void record_template_entry(const AttentionRecorder& recorder, LayoutTemplate& layout_template,
                             size_t sigma_index) const;

  // The layers whose maps make the subject mask (mask_layers, or the appearance layers).
  const std::vector<std::string>& effective_mask_layers() const;
  // Subject mask [Bc, N] (0/1) for a layer of height x width tokens, from the mask layers' maps.
  at::Tensor subject_mask(const AttentionRecorder& recorder, int64_t height, int64_t width) const;
  // Which of a layer's height x width tokens a palette keeps, [height * width] bool: row `row` of the
  // subject mask, or, given user_mask [H, W] (1 on the subject, any size; leading dimensions of size 1
  // allowed), that mask averaged over each token's area (> 0.5 kept). A user mask that keeps no token
  // is an error naming the fix.
  at::Tensor palette_mask(const AttentionRecorder& recorder, int64_t height, int64_t width,
                          int64_t row = 0,
                          const std::optional<at::Tensor>& user_mask = std::nullopt) const;

 private:
  GuidanceConfig config_;
};

}  // namespace pickdraw
