#pragma once
// Model-family layer tables: which cross-attention layers a UNet has, at which resolution, and
// which of them the guidance terms watch by default. Derived from the UNet's configuration (the
// fields ComfyUI's unet_config carries), not from per-model lists, so fine-tunes, LoRA/DreamBooth
// checkpoints and custom depths of a supported family need nothing new.
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace pickdraw {

// The part of a UNet's configuration that places its cross-attention layers (ComfyUI field names).
struct UNetLayout {
  std::string family;                            // "sd1", "sd2", "sdxl"
  int64_t model_channels = 0;                    // 320 for SD1.x/SD2.x/SDXL
  std::vector<int64_t> channel_mult;             // per level, e.g. {1, 2, 4, 4}
  int64_t num_res_blocks = 0;                    // per level, e.g. 2
  std::vector<int64_t> transformer_depth;        // per input res block (levels x num_res_blocks)
  int64_t transformer_depth_middle = 0;
  // per output block (levels x (num_res_blocks + 1)), listed as ComfyUI does: shallowest level first,
  // i.e. the last entry belongs to output block 0
  std::vector<int64_t> transformer_depth_output;
};

struct CrossAttentionLayer {
  std::string key;            // "<block>.<block id>.<transformer index>", as ComfyUI's attn2 patches
  std::string block;          // "input", "middle" or "output"
  int64_t block_id = 0;
  int64_t transformer_index = 0;
  int64_t downscale = 1;      // latent side / token-grid side
  int64_t channels = 0;       // feature channels of the layer
};

// The shorter side, in tokens, of the coarsest token grid the appearance term reads by default.
inline constexpr int64_t kAppearanceMinTokens = 16;

// The families whose UNet cross-attention the method is defined on.
const std::vector<std::string>& supported_families();

class ModelLayerTable {
 public:
  // Throws std::invalid_argument for an unsupported family (DiT models such as SD3 or Flux have
  // no UNet cross-attention to hook) or an inconsistent layout.
  explicit ModelLayerTable(const UNetLayout& layout);

  const std::string& family() const { return family_; }
  const std::vector<CrossAttentionLayer>& layers() const { return layers_; }
  const CrossAttentionLayer& layer(const std::string& key) const;

  // The appearance layers for a latent of latent_height x latent_width: the last transformer of each
  // decoder block at the two coarsest resolutions whose token grid has at least
  // kAppearanceMinTokens tokens on its shorter side (SD1.x at 512 px: the 32x32 and 16x16 grids,
  // ComfyUI keys output.3.0 .. output.8.0). On a coarser grid a subject covers a few tokens, each of
  // which also covers the scene around it, so a palette read there carries the reference's scene.
  // Where no resolution is that fine (a small latent), the finest one.
  std::vector<std::string> default_appearance_layers(int64_t latent_height, int64_t latent_width) const;
  // Every cross-attention layer.
  std::vector<std::string> default_layout_layers() const;

  // Token grid {height, width} of a layer for a latent of latent_height x latent_width: each
  // downsampling halves a side, rounding up (stride-2 convolution with padding 1).
  std::array<int64_t, 2> token_grid(const std::string& key, int64_t latent_height,
                                    int64_t latent_width) const;

 private:
  static std::array<int64_t, 2> token_grid_at(int64_t downscale, int64_t latent_height, int64_t latent_width);

  std::string family_;
  std::vector<CrossAttentionLayer> layers_;
};

}  // namespace pickdraw
