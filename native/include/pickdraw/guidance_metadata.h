#pragma once
// The metadata that travels with a palette or a layout template, inside its file's JSON header.
// Torch-free: written and parsed with nlohmann_json in guidance_metadata.cpp only.
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace pickdraw {

// Version of the file layout below. Readers accept files up to their own version and refuse
// newer ones with a message to update the pack.
constexpr int kGuidanceFormatVersion = 1;

struct SubjectTokens {
  std::string subject;           // the words the user named ("sks dog", "embedding:cat_toy")
  std::string prompt;            // the prompt they were found in
  std::vector<int64_t> indices;  // token positions of the subject in the prompt's tokens
};

struct GuidanceMetadata {
  std::string model_family;             // "sd1", "sd2", "sdxl", ...
  std::vector<std::string> layer_keys;  // recorded layers, e.g. "output.3.0"
  SubjectTokens tokens;
  int64_t image_height = 0;             // pixels of the image the features were taken from
  int64_t image_width = 0;
  std::vector<double> sigmas;           // the sigmas recorded, one entry set per sigma
  std::string feature_source;           // what was recorded, e.g. "attn2_output"
  double tau = 0.5;                     // saliency threshold used for the masks
  // Host facts that must match at use time (seed, sampler, scheduler, steps, ...), as strings.
  std::map<std::string, std::string> extra;
};

// JSON text of the metadata for a file of `kind` ("palette" or "layout_template").
std::string metadata_to_json(const GuidanceMetadata& metadata, std::string_view kind);

// Parses and validates JSON written by metadata_to_json. Throws std::invalid_argument when it
// is malformed, of another kind, or of a newer format version.
GuidanceMetadata metadata_from_json(std::string_view json, std::string_view expected_kind);

}  // namespace pickdraw
