#pragma once
// Which recorded sigma serves a requested one. Torch-free.
//
// Noise levels are compared in log space: sigma spans ~0.03..15 for SD, and the features at 0.1
// and 0.2 differ as much as those at 5 and 10. A request outside the recorded range (beyond a
// relative tolerance) is an error, not a silent clamp: it means the palette or template was
// recorded with another schedule or denoise than the run that asks.
#include <cstddef>
#include <vector>

namespace pickdraw {

struct SigmaMatch {
  size_t index = 0;          // position in the recorded list
  double recorded = 0.0;     // the recorded sigma
  double log_distance = 0.0; // |log(requested) - log(recorded)|
};

// recorded: positive finite sigmas in any order (non-empty). sigma_tolerance >= 0: requests
// down to min/(1 + tol) and up to max*(1 + tol) are accepted. Ties go to the lower index.
// Throws std::invalid_argument on a bad argument or a request outside that range.
SigmaMatch nearest_sigma(const std::vector<double>& recorded, double requested,
                         double sigma_tolerance = 0.05);

}  // namespace pickdraw
