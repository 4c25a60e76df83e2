// libFuzzer entry: any byte string handed to the guidance-file reader must either parse or be
// rejected with std::invalid_argument; a crash, a sanitizer report, or another exception type is
// a bug. When a file parses, its Pick-and-Draw metadata (if any) goes through the JSON reader too,
// and every tensor's byte range is read, so an unchecked offset shows up as an ASan report.
#include <cstddef>
#include <cstdint>
#include <stdexcept>

#include "pickdraw/guidance_metadata.h"
#include "pickdraw/safetensors_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto layout = pickdraw::parse_safetensors(data, size);
    volatile uint8_t sink = 0;
    for (const auto& t : layout.tensors) {
      for (uint64_t i = t.begin; i < t.end; ++i) sink ^= data[layout.data_offset + i];
    }
    (void)sink;
    const auto it = layout.metadata.find("pickdraw");
    if (it != layout.metadata.end()) {
      for (const char* kind : {"palette", "layout_template"}) {
        try {
          pickdraw::metadata_from_json(it->second, kind);
        } catch (const std::invalid_argument&) {
        }
      }
    }
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
