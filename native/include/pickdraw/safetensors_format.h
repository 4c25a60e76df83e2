#pragma once
// Reading and writing the safetensors container (https://github.com/huggingface/safetensors):
//   [8 bytes: little-endian u64 header length n][n bytes: JSON header][tensor bytes]
// The JSON maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
// relative to the end of the header) and may hold "__metadata__", a map of strings.
//
// Torch-free on purpose: this is the code that sees untrusted bytes, and the fuzzer links it
// alone. The parser validates every length, offset, dtype and shape before anything is used
// and reports a malformed file as std::invalid_argument; it never reads outside `data`.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace pickdraw {

enum class StoredDtype { kF16, kBF16, kF32, kF64, kI64, kI32, kU8, kBool };

// "F16", "BF16", ... as the safetensors format spells them.
const char* stored_dtype_name(StoredDtype dtype);
size_t stored_dtype_size(StoredDtype dtype);

struct StoredTensor {
  std::string name;
  StoredDtype dtype = StoredDtype::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section
  uint64_t end = 0;
};

struct SafetensorsLayout {
  std::map<std::string, std::string> metadata;
  std::vector<StoredTensor> tensors;  // sorted by begin
  uint64_t data_offset = 0;           // where the data section starts in the file
};

// Files above this header size are refused before the JSON is parsed.
constexpr uint64_t kMaxHeaderBytes = uint64_t(100) << 20;

// Parses and validates a whole file held in memory. Requirements, as in the reference
// implementation: the header fits the file, is a JSON object, names non-empty and unique, dtypes
// known, shapes non-negative with the byte size matching the offsets (overflow-checked), and the
// tensors tile the data section exactly, without overlap or gap.
SafetensorsLayout parse_safetensors(const uint8_t* data, size_t size);

// A tensor to be written: its bytes are copied as they are (little-endian, row-major).
struct TensorBytes {
  std::string name;
  StoredDtype dtype = StoredDtype::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
};

// The complete file, header padded with spaces to a multiple of 8 bytes as the reference writer
// does, tensors in the given order.
std::string serialize_safetensors(const std::map<std::string, std::string>& metadata,
                                  const std::vector<TensorBytes>& tensors);

// Reads a whole file (at most max_bytes) or throws std::invalid_argument naming the path.
std::string read_file_bytes(const std::string& path, uint64_t max_bytes);

// Writes to a temporary file in the same folder, flushes it to disk and renames it over `path`,
// so a reader never sees a half-written file and a failed write leaves any old file intact.
void write_file_atomically(const std::string& path, const std::string& bytes);

}  // namespace pickdraw
