#include "pickdraw/sigma_lookup.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

namespace pickdraw {

SigmaMatch nearest_sigma(const std::vector<double>& recorded, double requested,
                         double sigma_tolerance) {
  if (recorded.empty()) throw std::invalid_argument("no sigmas were recorded");
  if (!(sigma_tolerance >= 0.0) || !std::isfinite(sigma_tolerance)) {
    throw std::invalid_argument("sigma_tolerance must be finite and >= 0");
  }
  if (!(requested > 0.0) || !std::isfinite(requested)) {
    std::ostringstream msg;
    msg << "requested sigma must be positive and finite, got " << requested
        << " (guidance does not apply at sigma 0, the end of sampling)";
    throw std::invalid_argument(msg.str());
  }
  double lo = recorded.front(), hi = recorded.front();
  for (double s : recorded) {
    if (!(s > 0.0) || !std::isfinite(s)) {
      throw std::invalid_argument("recorded sigmas must be positive and finite");
    }
    lo = std::min(lo, s);
    hi = std::max(hi, s);
  }
  if (requested < lo / (1.0 + sigma_tolerance) || requested > hi * (1.0 + sigma_tolerance)) {
    std::ostringstream msg;
    msg << "sigma " << requested << " is outside the recorded range [" << lo << ", " << hi
        << "] (tolerance " << sigma_tolerance * 100.0
        << "%): record the palette/template with the same model schedule, steps and denoise "
           "as the guided run";
    throw std::invalid_argument(msg.str());
  }
  const double log_req = std::log(requested);
  SigmaMatch best;
  best.log_distance = INFINITY;
  for (size_t i = 0; i < recorded.size(); ++i) {
    const double d = std::fabs(std::log(recorded[i]) - log_req);
    if (d < best.log_distance) {
      best = SigmaMatch{i, recorded[i], d};
    }
  }
  return best;
}

}  // namespace pickdraw
