#include "pickdraw/guidance_engine.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>

#include <cmath>
#include <map>
#include <set>
#include <utility>

#include "pickdraw/gaussian_smoothing.h"
#include "pickdraw/layout_loss.h"
#include "pickdraw/saliency_mask.h"
#include "pickdraw/uremd.h"

namespace pickdraw {
namespace {

bool in_window(double start, double end, int64_t step, int64_t steps) {
  TORCH_CHECK(steps >= 1 && step >= 0 && step < steps, "step ", step, " is outside 0..", steps - 1);
  // A fraction such as 0.3 has no exact binary value: 0.3 * 10 is 3.0000000000000004, which would
  // move the window's first step to 4. Boundaries within 1e-9 of a whole step are that step, so
  // that 0.3 of 10 steps starts at step 3 and 0.5 of 20 ends before step 10 on every platform.
  constexpr double kSlack = 1e-9;
  const auto at = static_cast<double>(step), n = static_cast<double>(steps);
  return at >= start * n - kSlack && at < end * n - kSlack;
}

void check_window(const char* name, double start, double end) {
  TORCH_CHECK_VALUE(start >= 0.0 && end <= 1.0 && start <= end, name,
                    " window must satisfy 0 <= start <= end <= 1, got [", start, ", ", end, "]");
}

const at::Tensor& capture_of(const std::map<std::string, at::Tensor>& captures,
                             const std::string& layer, const char* what) {
  const auto it = captures.find(layer);
  TORCH_CHECK(it != captures.end(), "no ", what, " were recorded for layer '", layer,
              "' in this step: is the recorder attached to that layer, and did the step run the "
              "conditional rows?");
  return it->second;
}

// Stores filled under torch.inference_mode() (ComfyUI runs every prompt there) hold inference
// tensors, which autograd refuses to save; outside inference mode a copy is an ordinary tensor.
at::Tensor usable_in_autograd(const at::Tensor& t) {
  return t.is_inference() && !c10::InferenceMode::is_enabled() ? t.clone() : t;
}

}  // namespace

GuidanceEngine::GuidanceEngine(GuidanceConfig config) : config_(std::move(config)) {
  check_window("appearance", config_.appearance_start, config_.appearance_end);
  check_window("layout", config_.layout_start, config_.layout_end);
  TORCH_CHECK_VALUE(!config_.token_indices.empty(), "the subject's token indices are empty");
  TORCH_CHECK_VALUE(config_.appearance_weight >= 0 && config_.layout_weight >= 0,
                    "term weights must be >= 0");
  TORCH_CHECK_VALUE(config_.tau >= 0.0 && config_.tau <= 1.0, "tau must be in [0, 1]");
}

bool GuidanceEngine::appearance_active(int64_t step, int64_t steps) const {
  return config_.appearance_weight > 0 && !config_.appearance_layers.empty() &&
         in_window(config_.appearance_start, config_.appearance_end, step, steps);
}

bool GuidanceEngine::layout_active(int64_t step, int64_t steps) const {
  return config_.layout_weight > 0 && !config_.layout_layers.empty() &&
         in_window(config_.layout_start, config_.layout_end, step, steps);
}

std::map<std::string, LayerCapture> GuidanceEngine::recorder_layers() const {
  std::map<std::string, LayerCapture> layers;
  for (const auto& l : config_.layout_layers) layers[l].maps = true;
  for (const auto& l : config_.mask_layers) layers[l].maps = true;
  for (const auto& l : config_.appearance_layers) {
    layers[l].maps = true;
    layers[l].features = true;
  }
  return layers;
}

const std::vector<std::string>& GuidanceEngine::effective_mask_layers() const {
  return config_.mask_layers.empty() ? config_.appearance_layers : config_.mask_layers;
}

at::Tensor GuidanceEngine::subject_mask(const AttentionRecorder& recorder, int64_t height,
                                        int64_t width) const {
  const auto& layers = effective_mask_layers();
  TORCH_CHECK_VALUE(!layers.empty(), "the subject mask needs mask layers or appearance layers");
  std::vector<at::Tensor> token_averaged;
  for (const auto& layer : layers) {
    token_averaged.push_back(capture_of(recorder.maps(), layer, "maps").detach().mean(1));
  }
  const auto averaged = average_token_maps(token_averaged, {height, width});
  const auto mask = saliency_mask(averaged, config_.tau, config_.min_mask_pixels,
                                  std::array<int64_t, 2>{height, width});
  return mask.reshape({mask.size(0), height * width});
}

StepLoss GuidanceEngine::step_loss(const AttentionRecorder& recorder, const Palette* palette,
                                   const LayoutTemplate* layout_template, double sigma,
                                   int64_t step, int64_t steps) const {
  StepLoss result;
  result.appearance_on = appearance_active(step, steps);
  result.layout_on = layout_active(step, steps);
  at::Tensor total;
  if (result.appearance_on) {
    TORCH_CHECK(palette != nullptr, "the appearance term is on at step ", step,
                " but no palette was given");
    result.palette_sigma_index =
        static_cast<int64_t>(palette->match_sigma(sigma, config_.sigma_tolerance).index);
    at::Tensor sum;
    // The mask depends only on the resolution, and the appearance layers share a few: one mask (and one
    // pixel count, left on the device) per resolution.
    std::map<std::pair<int64_t, int64_t>, std::pair<at::Tensor, at::Tensor>> masks;
    for (const auto& layer : config_.appearance_layers) {
      const auto& features = capture_of(recorder.features(), layer, "features");
      const auto& maps = capture_of(recorder.maps(), layer, "maps");
      auto found = masks.find({maps.size(2), maps.size(3)});
      if (found == masks.end()) {
        auto made = subject_mask(recorder, maps.size(2), maps.size(3)).to(features.scalar_type());
        const auto pixels = made.detach().sum(at::kLong);
        found = masks.emplace(std::make_pair(maps.size(2), maps.size(3)), std::make_pair(made, pixels)).first;
      }
      const auto& mask = found->second.first;
      result.mask_pixels[layer] = found->second.second;
      const auto entry = usable_in_autograd(
          palette->get(static_cast<size_t>(result.palette_sigma_index), layer)
              .to(features.device(), features.scalar_type()));
      TORCH_CHECK(entry.size(1) == features.size(2), "palette features of layer '", layer,
                  "' have ", entry.size(1), " channels but the model's have ", features.size(2),
                  ": was the palette picked with another model family?");
      const auto term = uremd(features, entry.unsqueeze(0), mask);
      sum = sum.defined() ? sum + term : term;
    }
    result.appearance = sum / static_cast<double>(config_.appearance_layers.size());
    total = config_.appearance_weight * result.appearance;
  }
  if (result.layout_on) {
    TORCH_CHECK(layout_template != nullptr, "the layout term is on at step ", step,
                " but no layout template was given");
    result.template_sigma_index = static_cast<int64_t>(
        layout_template->match_sigma(sigma, config_.sigma_tolerance).index);
    std::vector<at::Tensor> maps, templates;
    for (const auto& layer : config_.layout_layers) {
      const auto& m = capture_of(recorder.maps(), layer, "maps");
      maps.push_back(m.mean(1));
      const auto& t = layout_template->get(static_cast<size_t>(result.template_sigma_index), layer);
      templates.push_back(usable_in_autograd(t.to(m.device(), m.scalar_type())));
    }
    result.layout = layout_loss(maps, templates, config_.smoothing_kernel, config_.smoothing_std_dev,
                                /*templates_smoothed=*/true);
    const auto weighted = config_.layout_weight * result.layout;
    total = total.defined() ? total + weighted : weighted;
  }
  if (!total.defined()) {
    const auto& any = recorder.maps().empty() ? at::Tensor() : recorder.maps().begin()->second;
    total = any.defined() ? at::zeros({any.size(0)}, any.options()) : at::zeros({0});
  }
  result.total = total;
  return result;
}

at::Tensor GuidanceEngine::palette_mask(const AttentionRecorder& recorder, int64_t height,
                                        int64_t width, int64_t row,
                                        const std::optional<at::Tensor>& user_mask) const {
  at::NoGradGuard no_grad;
  if (!user_mask.has_value()) {
    const auto mask = subject_mask(recorder, height, width);
    TORCH_CHECK(row >= 0 && row < mask.size(0), "row ", row, " is not among the ", mask.size(0),
                      " recorded conditional rows");
    return mask[row].to(at::kBool);
  }
  const auto& given = *user_mask;
  TORCH_CHECK_VALUE(given.dim() >= 2 && given.numel() == given.size(-2) * given.size(-1),
                    "user_mask must be one [H, W] mask, got shape ", given.sizes());
  // Area averaging, as torch.nn.functional.interpolate(mode="area") resizes.
  const auto covered = at::adaptive_avg_pool2d(
      given.reshape({1, 1, given.size(-2), given.size(-1)}).to(at::kFloat), {height, width});
  const auto keep = covered.flatten().gt(0.5);
  TORCH_CHECK_VALUE(keep.any().item<bool>(), "the mask covers no part of the subject at the feature "
                    "resolution (", height, "x", width, " tokens): widen it");
  return keep;
}

void GuidanceEngine::record_palette_entry(const AttentionRecorder& recorder, Palette& palette,
                                          size_t sigma_index, int64_t row,
                                          const std::optional<at::Tensor>& user_mask) const {
  at::NoGradGuard no_grad;
  for (const auto& layer : config_.appearance_layers) {
    const auto& features = capture_of(recorder.features(), layer, "features");
    const auto& maps = capture_of(recorder.maps(), layer, "maps");
    TORCH_CHECK(row >= 0 && row < features.size(0), "row ", row, " is not among the ",
                      features.size(0), " recorded conditional rows");
    const auto keep = palette_mask(recorder, maps.size(2), maps.size(3), row, user_mask);
    const auto rows = at::nonzero(keep.to(features.device())).view({-1});
    palette.set(sigma_index, layer, features[row].index_select(0, rows).detach().contiguous());
  }
}

void GuidanceEngine::record_template_entry(const AttentionRecorder& recorder,
                                           LayoutTemplate& layout_template,
                                           size_t sigma_index) const {
  at::NoGradGuard no_grad;
  for (const auto& layer : config_.layout_layers) {
    const auto& maps = capture_of(recorder.maps(), layer, "maps");
    layout_template.set(sigma_index, layer,
                        gaussian_smooth(maps.mean(1), config_.smoothing_kernel,
                                        config_.smoothing_std_dev)
                            .detach()
                            .contiguous());
  }
}

}  // namespace pickdraw
