#include "pickdraw/guidance_files.h"

#include <ATen/ATen.h>

#include <cstring>
#include <set>
#include <stdexcept>

#include "pickdraw/safetensors_format.h"

namespace pickdraw {
namespace {

constexpr const char* kFormatKey = "format";
constexpr const char* kMetadataKey = "pickdraw";

StoredDtype stored_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return StoredDtype::kF16;
    case at::kBFloat16: return StoredDtype::kBF16;
    case at::kFloat: return StoredDtype::kF32;
    case at::kDouble: return StoredDtype::kF64;
    default: TORCH_CHECK_VALUE(false, "cannot store a ", t, " tensor in a guidance file");
  }
}

at::ScalarType scalar_type(StoredDtype d) {
  switch (d) {
    case StoredDtype::kF16: return at::kHalf;
    case StoredDtype::kBF16: return at::kBFloat16;
    case StoredDtype::kF32: return at::kFloat;
    case StoredDtype::kF64: return at::kDouble;
    default:
      throw std::invalid_argument(std::string("guidance file holds a ") + stored_dtype_name(d) +
                                  " tensor; only F16, BF16, F32 and F64 are valid");
  }
}

std::string entry_name(size_t sigma_index, const std::string& layer_key) {
  return "s" + std::to_string(sigma_index) + "/" + layer_key;
}

std::string store_to_bytes(const GuidanceStore& store) {
  store.check_complete();
  std::vector<at::Tensor> keep_alive;
  std::vector<TensorBytes> tensors;
  for (const auto& [key, tensor] : store.entries()) {
    auto cpu = tensor.to(at::kCPU).contiguous();
    tensors.push_back(TensorBytes{entry_name(key.first, key.second), stored_dtype(cpu.scalar_type()),
                                  cpu.sizes().vec(), cpu.data_ptr(),
                                  static_cast<size_t>(cpu.nbytes())});
    keep_alive.push_back(std::move(cpu));
  }
  const std::map<std::string, std::string> metadata{
      {kFormatKey, std::string("pickdraw.") + store.kind()},
      {kMetadataKey, metadata_to_json(store.metadata(), store.kind())}};
  return serialize_safetensors(metadata, tensors);
}

// Parses the sigma index and layer key out of "s<i>/<key>".
std::pair<size_t, std::string> parse_entry_name(const std::string& name, size_t num_sigmas) {
  const auto slash = name.find('/');
  if (name.size() < 3 || name[0] != 's' || slash == std::string::npos || slash < 2 ||
      slash > 7 || slash + 1 == name.size()) {
    throw std::invalid_argument("guidance file has an unexpected tensor '" + name + "'");
  }
  size_t index = 0;
  for (size_t i = 1; i < slash; ++i) {
    if (name[i] < '0' || name[i] > '9') {
      throw std::invalid_argument("guidance file has an unexpected tensor '" + name + "'");
    }
    index = index * 10 + static_cast<size_t>(name[i] - '0');
  }
  if (index >= num_sigmas) {
    throw std::invalid_argument("tensor '" + name + "' refers to sigma " + std::to_string(index) +
                                " but the file declares " + std::to_string(num_sigmas));
  }
  return {index, name.substr(slash + 1)};
}

template <typename Store>
Store store_from_bytes(const uint8_t* data, size_t size, const char* kind) {
  const auto layout = parse_safetensors(data, size);
  const auto format = layout.metadata.find(kFormatKey);
  const std::string expected_format = std::string("pickdraw.") + kind;
  if (format == layout.metadata.end() || layout.metadata.count(kMetadataKey) == 0) {
    throw std::invalid_argument(std::string("not a Pick-and-Draw file: the safetensors metadata has no '") +
                                kFormatKey + "' and '" + kMetadataKey + "' entries");
  }
  if (format->second != expected_format) {
    throw std::invalid_argument("this file holds a '" + format->second + "', expected '" +
                                expected_format + "'");
  }
  auto metadata = metadata_from_json(layout.metadata.at(kMetadataKey), kind);
  const size_t num_sigmas = metadata.sigmas.size();
  try {
    Store store(std::move(metadata));
    std::set<std::string> seen;
    for (const auto& t : layout.tensors) {
      const auto [sigma_index, layer_key] = parse_entry_name(t.name, num_sigmas);
      auto tensor = at::empty(t.shape, at::TensorOptions().dtype(scalar_type(t.dtype)));
      if (t.end > t.begin) {
        std::memcpy(tensor.data_ptr(), data + layout.data_offset + t.begin, t.end - t.begin);
      }
      store.set(sigma_index, layer_key, tensor);
    }
    store.check_complete();
    return store;
  } catch (const c10::Error& e) {
    throw std::invalid_argument(std::string("inconsistent ") + kind + " file: " +
                                e.what_without_backtrace());
  }
}

}  // namespace

std::string palette_to_bytes(const Palette& palette) { return store_to_bytes(palette); }
std::string layout_template_to_bytes(const LayoutTemplate& t) { return store_to_bytes(t); }

void save_palette(const Palette& palette, const std::string& path) {
  write_file_atomically(path, palette_to_bytes(palette));
}
void save_layout_template(const LayoutTemplate& t, const std::string& path) {
  write_file_atomically(path, layout_template_to_bytes(t));
}

Palette palette_from_bytes(const uint8_t* data, size_t size) {
  return store_from_bytes<Palette>(data, size, "palette");
}
LayoutTemplate layout_template_from_bytes(const uint8_t* data, size_t size) {
  return store_from_bytes<LayoutTemplate>(data, size, "layout_template");
}

Palette load_palette(const std::string& path) {
  const auto bytes = read_file_bytes(path, kMaxGuidanceFileBytes);
  return palette_from_bytes(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}
LayoutTemplate load_layout_template(const std::string& path) {
  const auto bytes = read_file_bytes(path, kMaxGuidanceFileBytes);
  return layout_template_from_bytes(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

}  // namespace pickdraw
