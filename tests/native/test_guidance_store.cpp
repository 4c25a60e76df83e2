// Sigma lookup, metadata JSON, and the Palette / LayoutTemplate stores.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>

#include "pickdraw/guidance_metadata.h"
#include "pickdraw/guidance_store.h"
#include "pickdraw/sigma_lookup.h"

namespace {

using pickdraw::GuidanceMetadata;

GuidanceMetadata sample_metadata() {
  GuidanceMetadata m;
  m.model_family = "sd1";
  m.layer_keys = {"output.3.0", "output.6.0"};
  m.tokens = {"sks dog", "a photo of sks dog", {4, 5}};
  m.image_height = 512;
  m.image_width = 512;
  m.sigmas = {14.6, 7.0, 2.0, 0.5, 0.03};
  m.feature_source = "attn2_query";
  m.tau = 0.5;
  m.extra = {{"seed", "42"}, {"sampler", "euler"}};
  return m;
}

TEST(NearestSigma, ChoosesInLogSpace) {
  const std::vector<double> s = {10.0, 1.0, 0.1};
  // 3.0 is nearer 1.0 than 10.0 in log space (log 3 = 1.10 vs log(10/3) = 1.20), though not linearly.
  EXPECT_EQ(pickdraw::nearest_sigma(s, 3.0).index, 1u);
  EXPECT_EQ(pickdraw::nearest_sigma(s, 3.3).index, 0u);
  EXPECT_EQ(pickdraw::nearest_sigma(s, 0.1).index, 2u);
  const auto m = pickdraw::nearest_sigma(s, 0.2);
  EXPECT_EQ(m.index, 2u);
  EXPECT_NEAR(m.log_distance, std::log(2.0), 1e-12);
  // Equidistant in log space: the lower index wins.
  EXPECT_EQ(pickdraw::nearest_sigma({4.0, 1.0}, 2.0).index, 0u);
}

TEST(NearestSigma, RefusesRequestsOutsideTheRecordedRange) {
  const std::vector<double> s = {10.0, 1.0};
  EXPECT_NO_THROW(pickdraw::nearest_sigma(s, 10.4, 0.05));
  EXPECT_THROW(pickdraw::nearest_sigma(s, 10.6, 0.05), std::invalid_argument);
  EXPECT_THROW(pickdraw::nearest_sigma(s, 0.9, 0.05), std::invalid_argument);
  EXPECT_THROW(pickdraw::nearest_sigma(s, 0.0), std::invalid_argument);
  EXPECT_THROW(pickdraw::nearest_sigma(s, NAN), std::invalid_argument);
  EXPECT_THROW(pickdraw::nearest_sigma({}, 1.0), std::invalid_argument);
  EXPECT_THROW(pickdraw::nearest_sigma({1.0, -1.0}, 1.0), std::invalid_argument);
  try {
    pickdraw::nearest_sigma(s, 20.0);
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("outside the recorded range"), std::string::npos);
  }
}

TEST(GuidanceMetadata, JsonRoundTrip) {
  const auto m = sample_metadata();
  const auto back = pickdraw::metadata_from_json(pickdraw::metadata_to_json(m, "palette"), "palette");
  EXPECT_EQ(back.model_family, m.model_family);
  EXPECT_EQ(back.layer_keys, m.layer_keys);
  EXPECT_EQ(back.tokens.subject, m.tokens.subject);
  EXPECT_EQ(back.tokens.prompt, m.tokens.prompt);
  EXPECT_EQ(back.tokens.indices, m.tokens.indices);
  EXPECT_EQ(back.image_height, 512);
  EXPECT_EQ(back.sigmas, m.sigmas);
  EXPECT_EQ(back.feature_source, m.feature_source);
  EXPECT_EQ(back.tau, m.tau);
  EXPECT_EQ(back.extra, m.extra);
}

TEST(GuidanceMetadata, RejectsForeignOrNewerOrMalformedJson) {
  const auto json = pickdraw::metadata_to_json(sample_metadata(), "palette");
  EXPECT_THROW(pickdraw::metadata_from_json(json, "layout_template"), std::invalid_argument);
  EXPECT_THROW(pickdraw::metadata_from_json("{", "palette"), std::invalid_argument);
  EXPECT_THROW(pickdraw::metadata_from_json("[]", "palette"), std::invalid_argument);
  EXPECT_THROW(pickdraw::metadata_from_json(R"({"format_version": 1})", "palette"), std::invalid_argument);
  std::string newer = json;
  newer.replace(newer.find("\"format_version\":1"), 18, "\"format_version\":99");
  try {
    pickdraw::metadata_from_json(newer, "palette");
    ADD_FAILURE() << "newer format accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("update"), std::string::npos) << e.what();
  }
  std::string bad_type = json;
  bad_type.replace(bad_type.find("\"tau\":0.5"), 9, "\"tau\":\"x\"");
  EXPECT_THROW(pickdraw::metadata_from_json(bad_type, "palette"), std::invalid_argument);
}

TEST(Palette, StoresLooksUpAndValidatesEntries) {
  pickdraw::Palette palette(sample_metadata());
  EXPECT_STREQ(palette.kind(), "palette");
  for (size_t i = 0; i < 5; ++i) {
    palette.set(i, "output.3.0", at::full({10 + static_cast<int64_t>(i), 8}, static_cast<double>(i)));
    palette.set(i, "output.6.0", at::randn({3, 4}));
  }
  palette.check_complete();
  EXPECT_EQ(palette.num_entries(), 10u);
  // 6.0 is nearest 7.0 (index 1) in log space.
  EXPECT_EQ(palette.lookup(6.0, "output.3.0").size(0), 11);
  EXPECT_EQ(palette.match_sigma(0.04).index, 4u);
  EXPECT_THROW(palette.lookup(30.0, "output.3.0"), std::invalid_argument);
  EXPECT_THROW(palette.set(5, "output.3.0", at::randn({2, 8})), c10::Error);         // no sigma 5
  EXPECT_THROW(palette.set(0, "input.1.0", at::randn({2, 8})), c10::Error);          // unknown layer
  EXPECT_THROW(palette.set(0, "output.3.0", at::randn({2, 9})), c10::Error);         // C differs
  EXPECT_THROW(palette.set(0, "output.3.0", at::randn({0, 8})), c10::Error);         // empty
  EXPECT_THROW(palette.set(0, "output.3.0", at::randn({2, 8, 1})), c10::Error);      // rank
  EXPECT_THROW(palette.set(0, "output.3.0", at::ones({2, 8}, at::kLong)), c10::Error);
  EXPECT_THROW(palette.get(0, "nope"), c10::Error);
}

TEST(Palette, IncompleteStoresAreReported) {
  pickdraw::Palette palette(sample_metadata());
  palette.set(0, "output.3.0", at::randn({2, 8}));
  try {
    palette.check_complete();
    ADD_FAILURE() << "incomplete palette accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("output.6.0"), std::string::npos) << e.what();
  }
}

TEST(Palette, RejectsBadMetadata) {
  auto m = sample_metadata();
  m.sigmas.clear();
  EXPECT_THROW(pickdraw::Palette{m}, c10::Error);
  m = sample_metadata();
  m.layer_keys = {"a", "a"};
  EXPECT_THROW(pickdraw::Palette{m}, c10::Error);
  m.layer_keys = {"a/b"};
  EXPECT_THROW(pickdraw::Palette{m}, c10::Error);
  m = sample_metadata();
  m.sigmas = {1.0, -2.0};
  EXPECT_THROW(pickdraw::Palette{m}, c10::Error);
}

TEST(LayoutTemplate, EntriesShareOneShapePerLayer) {
  pickdraw::LayoutTemplate t(sample_metadata());
  t.set(0, "output.3.0", at::rand({2, 16, 16}));
  EXPECT_THROW(t.set(1, "output.3.0", at::rand({2, 16, 8})), c10::Error);
  EXPECT_THROW(t.set(1, "output.3.0", at::rand({16, 16})), c10::Error);
  t.set(1, "output.3.0", at::rand({2, 16, 16}));
  t.set(0, "output.6.0", at::rand({2, 32, 32}));
  EXPECT_EQ(t.lookup(14.0, "output.3.0").sizes(), at::IntArrayRef({2, 16, 16}));
}

}  // namespace
