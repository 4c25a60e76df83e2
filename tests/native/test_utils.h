#pragma once
// Helpers shared by the native tests: seeded randomness that prints its seed, and the CUDA skip.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <iostream>

#ifdef PICKDRAW_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

namespace pickdraw::testing {

// Seeds ATen's generator and prints the seed so that a failure can be replayed
// (PICKDRAW_TEST_SEED=<seed> fixes it).
inline uint64_t seed_for_test() {
  uint64_t seed = 0;
  if (const char* fixed = std::getenv("PICKDRAW_TEST_SEED")) {
    seed = std::strtoull(fixed, nullptr, 10);
  } else {
    seed = static_cast<uint64_t>(
        std::chrono::high_resolution_clock::now().time_since_epoch().count() % 1000003);
  }
  at::manual_seed(seed);
  std::cout << "[ seed     ] PICKDRAW_TEST_SEED=" << seed << std::endl;
  return seed;
}

inline bool cuda_available() {
#ifdef PICKDRAW_WITH_CUDA
  return at::cuda::is_available();
#else
  return false;
#endif
}

#define PICKDRAW_SKIP_WITHOUT_CUDA()                                                      \
  do {                                                                                    \
    if (!::pickdraw::testing::cuda_available())                                           \
      GTEST_SKIP() << "no CUDA device, or the library was built without CUDA kernels";    \
  } while (0)

}  // namespace pickdraw::testing
