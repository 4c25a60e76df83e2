#include "pickdraw/guidance_metadata.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace pickdraw {
namespace {

using nlohmann::json;

[[noreturn]] void fail(const std::string& what) {
  throw std::invalid_argument("invalid guidance metadata: " + what);
}

const json& field(const json& j, const char* key, json::value_t type) {
  const auto it = j.find(key);
  if (it == j.end()) fail(std::string("missing field '") + key + "'");
  const bool ok = it->type() == type ||
                  (type == json::value_t::number_float && it->is_number()) ||
                  (type == json::value_t::number_integer && it->is_number_integer());
  if (!ok) fail(std::string("field '") + key + "' has the wrong type");
  return *it;
}

}  // namespace

std::string metadata_to_json(const GuidanceMetadata& m, std::string_view kind) {
  json j;
  j["format_version"] = kGuidanceFormatVersion;
  j["kind"] = std::string(kind);
  j["model_family"] = m.model_family;
  j["layer_keys"] = m.layer_keys;
  j["tokens"] = {{"subject", m.tokens.subject},
                 {"prompt", m.tokens.prompt},
                 {"indices", m.tokens.indices}};
  j["image_size"] = {m.image_height, m.image_width};
  j["sigmas"] = m.sigmas;
  j["feature_source"] = m.feature_source;
  j["tau"] = m.tau;
  j["extra"] = m.extra;
  return j.dump();
}

GuidanceMetadata metadata_from_json(std::string_view text, std::string_view expected_kind) {
  json j;
  try {
    j = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    fail(std::string("not JSON (") + e.what() + ")");
  }
  if (!j.is_object()) fail("not a JSON object");
  try {
    const auto version = field(j, "format_version", json::value_t::number_integer).get<int64_t>();
    if (version < 1) fail("format_version must be >= 1");
    if (version > kGuidanceFormatVersion) {
      fail("format_version " + std::to_string(version) + " is newer than this pack supports (" +
           std::to_string(kGuidanceFormatVersion) + "); update the Pick-and-Draw nodes");
    }
    const auto kind = field(j, "kind", json::value_t::string).get<std::string>();
    if (kind != expected_kind) {
      fail("this file holds a '" + kind + "', not a '" + std::string(expected_kind) + "'");
    }
    GuidanceMetadata m;
    m.model_family = field(j, "model_family", json::value_t::string).get<std::string>();
    m.layer_keys = field(j, "layer_keys", json::value_t::array).get<std::vector<std::string>>();
    const auto& tokens = field(j, "tokens", json::value_t::object);
    m.tokens.subject = field(tokens, "subject", json::value_t::string).get<std::string>();
    m.tokens.prompt = field(tokens, "prompt", json::value_t::string).get<std::string>();
    m.tokens.indices = field(tokens, "indices", json::value_t::array).get<std::vector<int64_t>>();
    const auto size = field(j, "image_size", json::value_t::array).get<std::vector<int64_t>>();
    if (size.size() != 2 || size[0] < 0 || size[1] < 0) fail("image_size must be [height, width]");
    m.image_height = size[0];
    m.image_width = size[1];
    m.sigmas = field(j, "sigmas", json::value_t::array).get<std::vector<double>>();
    for (double s : m.sigmas) {
      if (!(s > 0.0) || !std::isfinite(s)) fail("sigmas must be positive and finite");
    }
    m.feature_source = field(j, "feature_source", json::value_t::string).get<std::string>();
    m.tau = field(j, "tau", json::value_t::number_float).get<double>();
    m.extra = field(j, "extra", json::value_t::object).get<std::map<std::string, std::string>>();
    return m;
  } catch (const json::exception& e) {
    fail(std::string("a field has the wrong type (") + e.what() + ")");
  }
}

}  // namespace pickdraw
