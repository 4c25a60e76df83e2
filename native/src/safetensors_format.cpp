#include "pickdraw/safetensors_format.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <stdexcept>

namespace pickdraw {
namespace {

using nlohmann::json;

static_assert(sizeof(double) == 8 && sizeof(float) == 4, "IEEE types expected");

[[noreturn]] void malformed(const std::string& what) {
  throw std::invalid_argument("malformed safetensors file: " + what);
}

bool little_endian_host() {
  const uint16_t probe = 1;
  uint8_t first = 0;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

struct DtypeInfo {
  StoredDtype dtype;
  const char* name;
  size_t size;
};
constexpr DtypeInfo kDtypes[] = {
    {StoredDtype::kF16, "F16", 2},  {StoredDtype::kBF16, "BF16", 2}, {StoredDtype::kF32, "F32", 4},
    {StoredDtype::kF64, "F64", 8},  {StoredDtype::kI64, "I64", 8},   {StoredDtype::kI32, "I32", 4},
    {StoredDtype::kU8, "U8", 1},    {StoredDtype::kBool, "BOOL", 1},
};

const DtypeInfo& info(StoredDtype dtype) {
  for (const auto& d : kDtypes) {
    if (d.dtype == dtype) return d;
  }
  throw std::logic_error("unknown StoredDtype");
}

// a * b, or nullopt-like false on overflow past 2^62 (far beyond any real file).
bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) {
  constexpr uint64_t kLimit = uint64_t(1) << 62;
  if (a != 0 && b > kLimit / a) return false;
  *out = a * b;
  return *out <= kLimit;
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

StoredTensor parse_entry(const std::string& name, const json& entry, uint64_t data_size) {
  if (name.empty()) malformed("a tensor has an empty name");
  if (!entry.is_object()) malformed("entry '" + name + "' is not an object");
  const auto dtype_it = entry.find("dtype");
  const auto shape_it = entry.find("shape");
  const auto offsets_it = entry.find("data_offsets");
  if (dtype_it == entry.end() || shape_it == entry.end() || offsets_it == entry.end()) {
    malformed("entry '" + name + "' needs dtype, shape and data_offsets");
  }
  if (!dtype_it->is_string()) malformed("dtype of '" + name + "' is not a string");
  StoredTensor t;
  t.name = name;
  const auto& dtype_name = dtype_it->get_ref<const std::string&>();
  bool known = false;
  for (const auto& d : kDtypes) {
    if (dtype_name == d.name) {
      t.dtype = d.dtype;
      known = true;
    }
  }
  if (!known) malformed("tensor '" + name + "' has unsupported dtype '" + dtype_name + "'");
  if (!shape_it->is_array() || shape_it->size() > 16) {
    malformed("shape of '" + name + "' must be an array of at most 16 sizes");
  }
  uint64_t elements = 1;
  for (const auto& s : *shape_it) {
    if (!s.is_number_unsigned()) malformed("shape of '" + name + "' has a non-integer or negative size");
    const auto v = s.get<uint64_t>();
    if (!checked_mul(elements, v, &elements)) malformed("shape of '" + name + "' overflows");
    t.shape.push_back(static_cast<int64_t>(v));
  }
  if (!offsets_it->is_array() || offsets_it->size() != 2 || !(*offsets_it)[0].is_number_unsigned() ||
      !(*offsets_it)[1].is_number_unsigned()) {
    malformed("data_offsets of '" + name + "' must be two non-negative integers");
  }
  t.begin = (*offsets_it)[0].get<uint64_t>();
  t.end = (*offsets_it)[1].get<uint64_t>();
  if (t.begin > t.end || t.end > data_size) {
    malformed("data_offsets of '" + name + "' lie outside the data section");
  }
  uint64_t nbytes = 0;
  if (!checked_mul(elements, info(t.dtype).size, &nbytes) || nbytes != t.end - t.begin) {
    malformed("tensor '" + name + "' has " + std::to_string(t.end - t.begin) +
              " bytes but its dtype and shape need " + std::to_string(nbytes));
  }
  return t;
}

}  // namespace

const char* stored_dtype_name(StoredDtype dtype) { return info(dtype).name; }
size_t stored_dtype_size(StoredDtype dtype) { return info(dtype).size; }

SafetensorsLayout parse_safetensors(const uint8_t* data, size_t size) {
  if (!little_endian_host()) malformed("big-endian hosts are not supported");
  if (data == nullptr || size < 8) malformed("shorter than its 8-byte header length");
  const uint64_t header_len = read_u64_le(data);
  if (header_len > kMaxHeaderBytes) malformed("header length " + std::to_string(header_len) + " is too large");
  if (header_len > size - 8) malformed("header length runs past the end of the file");
  SafetensorsLayout layout;
  layout.data_offset = 8 + header_len;
  const uint64_t data_size = size - layout.data_offset;

  json header;
  try {
    header = json::parse(data + 8, data + 8 + header_len);
  } catch (const json::exception& e) {
    malformed(std::string("header is not JSON (") + e.what() + ")");
  }
  if (!header.is_object()) malformed("header is not a JSON object");
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) malformed("__metadata__ is not an object");
      for (const auto& [mkey, mvalue] : value.items()) {
        if (!mvalue.is_string()) malformed("__metadata__ value of '" + mkey + "' is not a string");
        layout.metadata[mkey] = mvalue.get<std::string>();
      }
      continue;
    }
    layout.tensors.push_back(parse_entry(key, value, data_size));
  }
  std::sort(layout.tensors.begin(), layout.tensors.end(),
            [](const StoredTensor& a, const StoredTensor& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  uint64_t cursor = 0;
  for (const auto& t : layout.tensors) {
    if (t.begin != cursor) {
      malformed(t.begin < cursor ? "tensor '" + t.name + "' overlaps another"
                                 : "gap in the data section before '" + t.name + "'");
    }
    cursor = t.end;
  }
  if (cursor != data_size) malformed("the data section has bytes that belong to no tensor");
  return layout;
}

std::string serialize_safetensors(const std::map<std::string, std::string>& metadata,
                                  const std::vector<TensorBytes>& tensors) {
  if (!little_endian_host()) throw std::runtime_error("big-endian hosts are not supported");
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__" || header.contains(t.name)) {
      throw std::invalid_argument("tensor names must be non-empty and unique, got '" + t.name + "'");
    }
    uint64_t elements = 1;
    for (auto s : t.shape) {
      if (s < 0 || !checked_mul(elements, static_cast<uint64_t>(s), &elements)) {
        throw std::invalid_argument("bad shape for tensor '" + t.name + "'");
      }
    }
    if (elements * stored_dtype_size(t.dtype) != t.nbytes) {
      throw std::invalid_argument("tensor '" + t.name + "': byte count does not match its shape");
    }
    header[t.name] = {{"dtype", stored_dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.nbytes}}};
    offset += t.nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data section 8-byte aligned
  std::string out;
  out.reserve(8 + text.size() + offset);
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += text;
  for (const auto& t : tensors) out.append(static_cast<const char*>(t.data), t.nbytes);
  return out;
}

std::string read_file_bytes(const std::string& path, uint64_t max_bytes) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw std::invalid_argument("cannot open '" + path + "' for reading");
  const auto end = in.tellg();
  if (end < 0) throw std::invalid_argument("cannot read '" + path + "'");
  if (static_cast<uint64_t>(end) > max_bytes) {
    throw std::invalid_argument("'" + path + "' is larger than the " +
                                std::to_string(max_bytes >> 20) + " MiB a guidance file may have");
  }
  std::string bytes(static_cast<size_t>(end), '\0');
  in.seekg(0);
  if (!in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()))) {
    throw std::invalid_argument("cannot read '" + path + "'");
  }
  return bytes;
}

void write_file_atomically(const std::string& path, const std::string& bytes) {
  std::random_device rd;
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(rd());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    throw std::runtime_error("cannot write next to '" + path + "': " + std::strerror(errno));
  }
  const char* p = bytes.data();
  size_t left = bytes.size();
  bool ok = true;
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      ok = false;
      break;
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  const int saved_errno = errno;
  ok = ok && ::fsync(fd) == 0;
  ok = (::close(fd) == 0) && ok;
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = ok ? errno : saved_errno;
    ::unlink(tmp.c_str());
    throw std::runtime_error("writing '" + path + "' failed: " + std::strerror(err));
  }
}

}  // namespace pickdraw
