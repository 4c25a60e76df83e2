// Guidance files: round trips, atomic writes, and untrusted input (truncations, corruptions,
// forged headers) that must be rejected with std::invalid_argument, never a crash.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "pickdraw/guidance_files.h"
#include "pickdraw/safetensors_format.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;

pickdraw::GuidanceMetadata sample_metadata() {
  pickdraw::GuidanceMetadata m;
  m.model_family = "sdxl";
  m.layer_keys = {"output.1.0", "output.2.1"};
  m.tokens = {"cat_toy", "a cat_toy on a beach", {2}};
  m.image_height = 1024;
  m.image_width = 768;
  m.sigmas = {14.6, 3.1, 0.4};
  m.feature_source = "attn2_query";
  m.tau = 0.45;
  m.extra = {{"seed", "7"}};
  return m;
}

pickdraw::Palette sample_palette() {
  pickdraw::Palette p(sample_metadata());
  for (size_t i = 0; i < 3; ++i) {
    p.set(i, "output.1.0", at::randn({5 + static_cast<int64_t>(i), 16}).to(at::kHalf));
    p.set(i, "output.2.1", at::randn({4, 8}, at::kDouble));
  }
  return p;
}

class TempDir : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("pickdraw_test_" + std::to_string(std::random_device{}()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

using GuidanceFiles = TempDir;

TEST_F(GuidanceFiles, PaletteRoundTripsThroughAFile) {
  pickdraw::testing::seed_for_test();
  const auto palette = sample_palette();
  const auto path = (dir_ / "subject.safetensors").string();
  pickdraw::save_palette(palette, path);
  const auto loaded = pickdraw::load_palette(path);
  EXPECT_EQ(loaded.metadata().model_family, "sdxl");
  EXPECT_EQ(loaded.metadata().sigmas, palette.metadata().sigmas);
  EXPECT_EQ(loaded.metadata().tokens.indices, std::vector<int64_t>{2});
  EXPECT_EQ(loaded.metadata().extra.at("seed"), "7");
  ASSERT_EQ(loaded.num_entries(), palette.num_entries());
  for (const auto& [key, tensor] : palette.entries()) {
    const auto& other = loaded.get(key.first, key.second);
    EXPECT_EQ(other.scalar_type(), tensor.scalar_type());
    EXPECT_TRUE(at::equal(other, tensor)) << key.second;
  }
  // Only the final file is left: the temporary was renamed, not copied.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator{}), 1);
}

TEST_F(GuidanceFiles, LayoutTemplateRoundTripsAndKindsAreNotConfused) {
  pickdraw::LayoutTemplate t(sample_metadata());
  for (size_t i = 0; i < 3; ++i) {
    t.set(i, "output.1.0", at::rand({2, 32, 24}));
    t.set(i, "output.2.1", at::rand({2, 64, 48}));
  }
  const auto path = (dir_ / "layout.safetensors").string();
  pickdraw::save_layout_template(t, path);
  const auto loaded = pickdraw::load_layout_template(path);
  EXPECT_TRUE(at::equal(loaded.get(2, "output.2.1"), t.get(2, "output.2.1")));
  EXPECT_THROW(pickdraw::load_palette(path), std::invalid_argument);
}

TEST_F(GuidanceFiles, IncompleteStoresAreNotWritten) {
  pickdraw::Palette p(sample_metadata());
  p.set(0, "output.1.0", at::randn({2, 16}));
  const auto path = (dir_ / "partial.safetensors").string();
  EXPECT_THROW(pickdraw::save_palette(p, path), c10::Error);
  EXPECT_FALSE(fs::exists(path));
}

TEST_F(GuidanceFiles, FailedWritesLeaveTheOldFile) {
  const auto path = (dir_ / "missing_dir" / "x.safetensors").string();
  EXPECT_THROW(pickdraw::save_palette(sample_palette(), path), std::runtime_error);
  const auto good = (dir_ / "good.safetensors").string();
  pickdraw::save_palette(sample_palette(), good);
  const auto before = fs::file_size(good);
  pickdraw::Palette partial(sample_metadata());
  EXPECT_ANY_THROW(pickdraw::save_palette(partial, good));
  EXPECT_EQ(fs::file_size(good), before);
}

TEST(GuidanceFileParsing, EveryTruncationIsRejected) {
  const auto bytes = pickdraw::palette_to_bytes(sample_palette());
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  EXPECT_NO_THROW(pickdraw::palette_from_bytes(data, bytes.size()));
  for (size_t n = 0; n < bytes.size(); ++n) {
    // A fresh heap copy of exactly n bytes, so that a read past the end is caught by ASan/valgrind.
    std::vector<uint8_t> prefix(data, data + n);
    EXPECT_THROW(pickdraw::palette_from_bytes(prefix.data(), prefix.size()), std::invalid_argument)
        << "prefix of " << n << " bytes";
  }
}

TEST(GuidanceFileParsing, RandomCorruptionsNeverCrash) {
  const auto bytes = pickdraw::palette_to_bytes(sample_palette());
  std::mt19937 rng(12345);
  int rejected = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    std::vector<uint8_t> copy(bytes.begin(), bytes.end());
    const int flips = 1 + trial % 4;
    for (int f = 0; f < flips; ++f) {
      copy[rng() % copy.size()] = static_cast<uint8_t>(rng());
    }
    try {
      pickdraw::palette_from_bytes(copy.data(), copy.size());
    } catch (const std::invalid_argument&) {
      ++rejected;
    }
  }
  // Flips inside tensor data are legitimately accepted; flips in the header mostly are not.
  EXPECT_GT(rejected, 100);
}

std::string forge(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + std::string(data_bytes, '\0');
}

void expect_rejected(const std::string& file, const std::string& fragment) {
  try {
    pickdraw::parse_safetensors(reinterpret_cast<const uint8_t*>(file.data()), file.size());
    ADD_FAILURE() << "accepted; expected an error about '" << fragment << "'";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(SafetensorsParsing, ForgedHeadersAreRejected) {
  expect_rejected(forge(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4), "outside");
  expect_rejected(forge(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "need");
  expect_rejected(forge(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,8]}})", 8), "negative");
  expect_rejected(forge(R"({"a":{"dtype":"X9","shape":[2],"data_offsets":[0,8]}})", 8), "unsupported dtype");
  expect_rejected(forge(R"({"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})", 8), "overflows");
  expect_rejected(forge(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12), "overlaps");
  expect_rejected(forge(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12), "gap");
  expect_rejected(forge(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 12), "belong to no tensor");
  expect_rejected(forge(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8), "outside");
  expect_rejected(forge(R"({"a":{"dtype":"F32","shape":[2]}})", 8), "needs dtype");
  expect_rejected(forge(R"({"__metadata__":{"k":1}})", 0), "not a string");
  expect_rejected(forge(R"([1,2])", 0), "not a JSON object");
  expect_rejected(forge(R"({"a":)", 0), "not JSON");
  std::string huge(8, '\xff');
  expect_rejected(huge, "too large");
  expect_rejected("abc", "shorter");
}

TEST(SafetensorsParsing, EmptyTensorsAndMetadataAreFine) {
  const auto layout = pickdraw::parse_safetensors(
      reinterpret_cast<const uint8_t*>(forge(R"({"__metadata__":{"k":"v"},"e":{"dtype":"F16","shape":[0,3],"data_offsets":[0,0]}})", 0).data()),
      forge(R"({"__metadata__":{"k":"v"},"e":{"dtype":"F16","shape":[0,3],"data_offsets":[0,0]}})", 0).size());
  EXPECT_EQ(layout.metadata.at("k"), "v");
  ASSERT_EQ(layout.tensors.size(), 1u);
  EXPECT_EQ(layout.tensors[0].shape, (std::vector<int64_t>{0, 3}));
}

TEST(GuidanceFileParsing, ForeignSafetensorsFilesAreNamedAsSuch) {
  const float values[2] = {1.f, 2.f};
  const auto bytes = pickdraw::serialize_safetensors(
      {{"format", "pt"}}, {{"weight", pickdraw::StoredDtype::kF32, {2}, values, sizeof(values)}});
  try {
    pickdraw::palette_from_bytes(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    ADD_FAILURE() << "a model file was accepted as a palette";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("not a Pick-and-Draw file"), std::string::npos) << e.what();
  }
}

TEST_F(GuidanceFiles, MissingFilesNameThePath) {
  const auto path = (dir_ / "nope.safetensors").string();
  try {
    pickdraw::load_palette(path);
    ADD_FAILURE();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("nope.safetensors"), std::string::npos);
  }
}

}  // namespace
