#pragma once
// The layout term of Pick-and-Draw: the personalised run's subject attention maps are pulled
// towards those of the vanilla model's template run,
//   L_lay[b] = mean over layers l of || R(S(A_l[b])) - R(S(T_l[b])) ||_F / sqrt(H_l W_l)
// with S the Gaussian smoothing of gaussian_smoothing.h and R a map divided by its mean. The paper
// compares the smoothed maps themselves; a template's map is the vanilla model's, of the class noun,
// and its attention mass differs from the personalised model's, so that loss also pulls on how much
// the subject is attended and is lowered by a subject grown over the template's place. R keeps
// only where the subject lies: the loss is unchanged when either map is scaled.
#include <ATen/core/Tensor.h>

namespace pickdraw {

// maps: one [B, H_l, W_l] tensor per layer (the generated subject maps), differentiable.
// templates: one [B, H_l, W_l] or [1, H_l, W_l] tensor per layer (broadcast over the batch), same
//   dtype and device as maps. When templates_smoothed is true they are taken as already smoothed
//   (a LayoutTemplate stores them so), otherwise they are smoothed here with the same kernel.
// Returns [B]. At least one layer is required.
at::Tensor layout_loss(at::TensorList maps, at::TensorList templates, int64_t kernel_size,
                       double std_dev, bool templates_smoothed = false);

}  // namespace pickdraw
