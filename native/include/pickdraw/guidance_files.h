#pragma once
// Palettes and layout templates as .safetensors files, readable by the Python `safetensors`
// package. The file's __metadata__ holds
//   "format": "pickdraw.palette" | "pickdraw.layout_template"
//   "pickdraw": the JSON of guidance_metadata.h (format version, model family, layers, ...)
// and each entry is a tensor named "s<sigma index>/<layer key>" (e.g. "s3/output.3.0").
// Files are written atomically and read as untrusted input: anything malformed or inconsistent
// is a std::invalid_argument (ValueError in Python) naming what is wrong.
#include <cstdint>
#include <string>

#include "pickdraw/guidance_store.h"

namespace pickdraw {

// Guidance files larger than this are refused before they are read.
constexpr uint64_t kMaxGuidanceFileBytes = uint64_t(4) << 30;

// Writes the store (its entries copied to CPU, contiguous) to `path` atomically.
// Every (sigma, layer) entry must be present.
void save_palette(const Palette& palette, const std::string& path);
void save_layout_template(const LayoutTemplate& layout_template, const std::string& path);

// Serialises to bytes (what save_* writes).
std::string palette_to_bytes(const Palette& palette);
std::string layout_template_to_bytes(const LayoutTemplate& layout_template);

Palette load_palette(const std::string& path);
LayoutTemplate load_layout_template(const std::string& path);
Palette palette_from_bytes(const uint8_t* data, size_t size);
LayoutTemplate layout_template_from_bytes(const uint8_t* data, size_t size);

}  // namespace pickdraw
