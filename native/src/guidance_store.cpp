#include "pickdraw/guidance_store.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <set>

namespace pickdraw {

GuidanceStore::GuidanceStore(GuidanceMetadata metadata) : metadata_(std::move(metadata)) {
  TORCH_CHECK_VALUE(!metadata_.sigmas.empty(), "a palette or template needs at least one sigma");
  for (double s : metadata_.sigmas) {
    TORCH_CHECK_VALUE(s > 0.0 && std::isfinite(s), "sigmas must be positive and finite, got ", s);
  }
  TORCH_CHECK_VALUE(!metadata_.layer_keys.empty(), "a palette or template needs at least one layer key");
  std::set<std::string> unique(metadata_.layer_keys.begin(), metadata_.layer_keys.end());
  TORCH_CHECK_VALUE(unique.size() == metadata_.layer_keys.size(), "layer keys must be unique");
  for (const auto& key : metadata_.layer_keys) {
    TORCH_CHECK_VALUE(!key.empty() && key.find('/') == std::string::npos,
                      "layer keys must be non-empty and contain no '/', got '", key, "'");
  }
}

void GuidanceStore::set(size_t sigma_index, const std::string& layer_key, const at::Tensor& value) {
  TORCH_CHECK_INDEX(sigma_index < metadata_.sigmas.size(), "sigma_index ", sigma_index,
                    " is out of range: ", metadata_.sigmas.size(), " sigmas were declared");
  const auto& keys = metadata_.layer_keys;
  TORCH_CHECK_VALUE(std::find(keys.begin(), keys.end(), layer_key) != keys.end(), "layer '",
                    layer_key, "' is not among the declared layer keys");
  TORCH_CHECK_VALUE(value.defined(), "the ", kind(), " entry of '", layer_key, "' is undefined");
  TORCH_CHECK_VALUE(at::isFloatingType(value.scalar_type()), "the ", kind(), " entry of '",
                    layer_key, "' must be floating point, got ", value.scalar_type());
  const at::Tensor* same_layer = nullptr;
  for (const auto& [key, tensor] : entries_) {
    if (key.second == layer_key && key.first != sigma_index) {
      same_layer = &tensor;
      break;
    }
  }
  check_entry(layer_key, value, same_layer);
  entries_[{sigma_index, layer_key}] = value.detach();
}

bool GuidanceStore::has(size_t sigma_index, const std::string& layer_key) const {
  return entries_.count({sigma_index, layer_key}) != 0;
}

const at::Tensor& GuidanceStore::get(size_t sigma_index, const std::string& layer_key) const {
  const auto it = entries_.find({sigma_index, layer_key});
  TORCH_CHECK_INDEX(it != entries_.end(), "the ", kind(), " has no entry for layer '", layer_key,
                    "' at sigma index ", sigma_index);
  return it->second;
}

SigmaMatch GuidanceStore::match_sigma(double sigma, double sigma_tolerance) const {
  return nearest_sigma(metadata_.sigmas, sigma, sigma_tolerance);
}

const at::Tensor& GuidanceStore::lookup(double sigma, const std::string& layer_key,
                                        double sigma_tolerance) const {
  return get(match_sigma(sigma, sigma_tolerance).index, layer_key);
}

void GuidanceStore::check_complete() const {
  for (size_t i = 0; i < metadata_.sigmas.size(); ++i) {
    for (const auto& key : metadata_.layer_keys) {
      TORCH_CHECK_VALUE(has(i, key), "the ", kind(), " is incomplete: no entry for layer '", key,
                        "' at sigma ", metadata_.sigmas[i], " (index ", i, ")");
    }
  }
}

void Palette::check_entry(const std::string& layer_key, const at::Tensor& value,
                          const at::Tensor* same_layer_entry) const {
  TORCH_CHECK_VALUE(value.dim() == 2 && value.size(0) >= 1,
                    "a palette entry must be [M, C] with M >= 1 features, got ", value.sizes(),
                    " for layer '", layer_key, "'");
  if (same_layer_entry != nullptr) {
    TORCH_CHECK_VALUE(same_layer_entry->size(1) == value.size(1), "palette entries of layer '",
                      layer_key, "' must share the feature size C: ", same_layer_entry->size(1),
                      " vs ", value.size(1));
  }
}

void LayoutTemplate::check_entry(const std::string& layer_key, const at::Tensor& value,
                                 const at::Tensor* same_layer_entry) const {
  TORCH_CHECK_VALUE(value.dim() == 3 && value.size(0) >= 1,
                    "a layout template entry must be [B, H, W] with B >= 1, got ", value.sizes(),
                    " for layer '", layer_key, "'");
  if (same_layer_entry != nullptr) {
    TORCH_CHECK_VALUE(same_layer_entry->sizes() == value.sizes(), "template entries of layer '",
                      layer_key, "' must share one shape: ", same_layer_entry->sizes(), " vs ",
                      value.sizes());
  }
}

}  // namespace pickdraw
