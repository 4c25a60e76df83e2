#pragma once
// Gaussian smoothing of attention maps, as the layout term compares them: blurring first makes
// the loss tolerant of one-token shifts and prevents it from chasing individual noisy tokens.
#include <ATen/core/Tensor.h>

namespace pickdraw {

// Normalised 1-D Gaussian kernel of odd length kernel_size (>= 1) and standard deviation std_dev
// (> 0), in float64 on the CPU. Its taps sum to 1, so a constant map stays constant.
at::Tensor gaussian_kernel_1d(int64_t kernel_size, double std_dev);

// maps: [..., H, W] floating. Separable Gaussian blur with reflect padding (the border is
// mirrored without repeating the edge value), so H and W must exceed kernel_size / 2.
// Differentiable in maps. Returns a tensor of the same shape, dtype and device.
at::Tensor gaussian_smooth(const at::Tensor& maps, int64_t kernel_size, double std_dev);

}  // namespace pickdraw
