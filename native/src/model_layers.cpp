#include "pickdraw/model_layers.h"

#include <algorithm>
#include <sstream>
#include <stdexcept>

namespace pickdraw {
namespace {

[[noreturn]] void invalid(const std::string& what) { throw std::invalid_argument(what); }

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& s : items) out += (out.empty() ? "" : ", ") + s;
  return out;
}

}  // namespace

const std::vector<std::string>& supported_families() {
  static const std::vector<std::string> families{"sd1", "sd2", "sdxl"};
  return families;
}

ModelLayerTable::ModelLayerTable(const UNetLayout& layout) : family_(layout.family) {
  const auto& families = supported_families();
  if (std::find(families.begin(), families.end(), family_) == families.end()) {
    invalid("model family '" + family_ + "' is not supported: Pick-and-Draw guides the "
            "cross-attention of UNet models (" + join(families) + "); transformer (DiT) models "
            "such as SD3 or Flux have no such layers");
  }
  const auto levels = static_cast<int64_t>(layout.channel_mult.size());
  const int64_t nrb = layout.num_res_blocks;
  if (levels < 1 || nrb < 1 || layout.model_channels < 1) {
    invalid("UNet layout needs model_channels, channel_mult and num_res_blocks");
  }
  if (static_cast<int64_t>(layout.transformer_depth.size()) != levels * nrb ||
      static_cast<int64_t>(layout.transformer_depth_output.size()) != levels * (nrb + 1)) {
    std::ostringstream msg;
    msg << "UNet layout: transformer_depth needs " << levels * nrb << " entries and "
        << "transformer_depth_output " << levels * (nrb + 1) << ", got "
        << layout.transformer_depth.size() << " and " << layout.transformer_depth_output.size();
    invalid(msg.str());
  }
  auto add = [&](const std::string& block, int64_t id, int64_t depth, int64_t level) {
    for (int64_t t = 0; t < depth; ++t) {
      layers_.push_back(CrossAttentionLayer{
          block + "." + std::to_string(id) + "." + std::to_string(t), block, id, t,
          int64_t(1) << level, layout.model_channels * layout.channel_mult[static_cast<size_t>(level)]});
    }
  };
  // input_blocks[0] is the input convolution; each level has num_res_blocks blocks followed by
  // a downsampling block, except the last level.
  for (int64_t level = 0; level < levels; ++level) {
    for (int64_t i = 0; i < nrb; ++i) {
      add("input", 1 + level * (nrb + 1) + i, layout.transformer_depth[static_cast<size_t>(level * nrb + i)], level);
    }
  }
  add("middle", 0, layout.transformer_depth_middle, levels - 1);
  // output_blocks run from the deepest level up, num_res_blocks + 1 blocks per level. ComfyUI lists
  // transformer_depth_output from the shallowest level down and its UNet pops from the end, so
  // output block `id` takes the entry counted from the back.
  const int64_t outputs = levels * (nrb + 1);
  for (int64_t level = levels - 1, id = 0; level >= 0; --level) {
    for (int64_t i = 0; i <= nrb; ++i, ++id) {
      add("output", id, layout.transformer_depth_output[static_cast<size_t>(outputs - 1 - id)], level);
    }
  }
  if (layers_.empty()) invalid("this UNet layout has no cross-attention layers");
}

const CrossAttentionLayer& ModelLayerTable::layer(const std::string& key) const {
  for (const auto& l : layers_) {
    if (l.key == key) return l;
  }
  invalid("layer '" + key + "' is not a cross-attention layer of this " + family_ + " model");
}

std::vector<std::string> ModelLayerTable::default_appearance_layers(int64_t latent_height,
                                                                  int64_t latent_width) const {
  if (latent_height < 1 || latent_width < 1) invalid("latent size must be positive");
  std::vector<const CrossAttentionLayer*> last_of_decoder_blocks;
  for (size_t i = 0; i < layers_.size(); ++i) {
    const auto& l = layers_[i];
    const bool last_of_block = i + 1 == layers_.size() || layers_[i + 1].block != l.block ||
                               layers_[i + 1].block_id != l.block_id;
    if (l.block == "output" && last_of_block) last_of_decoder_blocks.push_back(&l);
  }
  if (last_of_decoder_blocks.empty()) invalid("this UNet has no cross-attention in its decoder");
  std::vector<int64_t> downscales;  // finest first
  for (const auto* l : last_of_decoder_blocks) downscales.push_back(l->downscale);
  std::sort(downscales.begin(), downscales.end());
  downscales.erase(std::unique(downscales.begin(), downscales.end()), downscales.end());
  std::vector<int64_t> fine_enough;
  for (const auto d : downscales) {
    const auto grid = token_grid_at(d, latent_height, latent_width);
    if (std::min(grid[0], grid[1]) >= kAppearanceMinTokens) fine_enough.push_back(d);
  }
  std::vector<int64_t> chosen;
  if (fine_enough.empty()) {
    chosen.push_back(downscales.front());
  } else {
    chosen.assign(fine_enough.size() > 2 ? fine_enough.end() - 2 : fine_enough.begin(), fine_enough.end());
  }
  std::vector<std::string> keys;
  for (const auto* l : last_of_decoder_blocks) {
    if (std::find(chosen.begin(), chosen.end(), l->downscale) != chosen.end()) keys.push_back(l->key);
  }
  return keys;
}

std::vector<std::string> ModelLayerTable::default_layout_layers() const {
  std::vector<std::string> keys;
  for (const auto& l : layers_) keys.push_back(l.key);
  return keys;
}

std::array<int64_t, 2> ModelLayerTable::token_grid(const std::string& key, int64_t latent_height,
                                                   int64_t latent_width) const {
  if (latent_height < 1 || latent_width < 1) invalid("latent size must be positive");
  return token_grid_at(layer(key).downscale, latent_height, latent_width);
}

std::array<int64_t, 2> ModelLayerTable::token_grid_at(int64_t downscale, int64_t latent_height,
                                                      int64_t latent_width) {
  int64_t h = latent_height, w = latent_width;
  for (int64_t d = downscale; d > 1; d /= 2) {
    h = (h + 1) / 2;
    w = (w + 1) / 2;
  }
  return {h, w};
}

}  // namespace pickdraw
