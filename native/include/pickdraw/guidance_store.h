#pragma once
// Palette and LayoutTemplate: tensors recorded per (sigma, layer key), with their metadata.
//
//   Palette         entry [M, C]    the masked reference features of one layer at one sigma
//   LayoutTemplate  entry [B, H, W] the smoothed subject maps of one layer at one sigma
//
// Both are looked up by the sigma of the current sampling step: the nearest recorded sigma in log
// space (sigma_lookup.h), with an error when the request is outside the recorded range.
#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "pickdraw/guidance_metadata.h"
#include "pickdraw/sigma_lookup.h"

namespace pickdraw {

class GuidanceStore {
 public:
  virtual ~GuidanceStore() = default;

  const GuidanceMetadata& metadata() const { return metadata_; }
  // "palette" or "layout_template": the kind recorded in files.
  virtual const char* kind() const = 0;

  // Stores the entry of (sigma_index, layer_key); both must be in the metadata. The tensor is
  // validated for this kind (dtype, rank, consistency with the layer's other sigmas) and kept
  // detached, as given (no copy).
  void set(size_t sigma_index, const std::string& layer_key, const at::Tensor& value);
  bool has(size_t sigma_index, const std::string& layer_key) const;
  const at::Tensor& get(size_t sigma_index, const std::string& layer_key) const;

  // The recorded sigma nearest to `sigma` (see sigma_lookup.h).
  SigmaMatch match_sigma(double sigma, double sigma_tolerance = 0.05) const;
  // The entry of layer_key at the recorded sigma nearest to `sigma`.
  const at::Tensor& lookup(double sigma, const std::string& layer_key,
                           double sigma_tolerance = 0.05) const;

  // Throws when some (sigma, layer) entry was never set.
  void check_complete() const;
  size_t num_entries() const { return entries_.size(); }
  const std::map<std::pair<size_t, std::string>, at::Tensor>& entries() const { return entries_; }

 protected:
  explicit GuidanceStore(GuidanceMetadata metadata);
  // Kind-specific checks of one entry, given the entries already stored for the same layer.
  virtual void check_entry(const std::string& layer_key, const at::Tensor& value,
                           const at::Tensor* same_layer_entry) const = 0;

 private:
  GuidanceMetadata metadata_;
  std::map<std::pair<size_t, std::string>, at::Tensor> entries_;
};

class Palette final : public GuidanceStore {
 public:
  explicit Palette(GuidanceMetadata metadata) : GuidanceStore(std::move(metadata)) {}
  const char* kind() const override { return "palette"; }

 protected:
  // [M, C] floating, M >= 1; C equal across the sigmas of a layer.
  void check_entry(const std::string& layer_key, const at::Tensor& value,
                   const at::Tensor* same_layer_entry) const override;
};

class LayoutTemplate final : public GuidanceStore {
 public:
  explicit LayoutTemplate(GuidanceMetadata metadata) : GuidanceStore(std::move(metadata)) {}
  const char* kind() const override { return "layout_template"; }

 protected:
  // [B, H, W] floating; the same shape across the sigmas of a layer.
  void check_entry(const std::string& layer_key, const at::Tensor& value,
                   const at::Tensor* same_layer_entry) const override;
};

}  // namespace pickdraw
