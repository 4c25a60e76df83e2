#pragma once
// Boundary checks shared by every op. Each macro names the argument in its message, so the user
// reads which input is wrong and what was expected. TORCH_INTERNAL_ASSERT is kept for invariants
// the dispatcher guarantees (our wiring), TORCH_CHECK for what a caller can get wrong.
#include <c10/util/Exception.h>

#define PICKDRAW_CHECK_DIM(x, n)                                                              \
  TORCH_CHECK((x).dim() == (n), #x " must be a " #n "-D tensor, got shape ", (x).sizes())

#define PICKDRAW_CHECK_FLOATING(x)                                                            \
  TORCH_CHECK(at::isFloatingType((x).scalar_type()),                                          \
              #x " must be a floating-point tensor (float16, bfloat16, float32 or float64), got ", \
              (x).scalar_type())

#define PICKDRAW_CHECK_SAME_DEVICE(x, y)                                                      \
  TORCH_CHECK((x).device() == (y).device(), #x " and " #y " must be on the same device, got ", \
              (x).device(), " and ", (y).device())

#define PICKDRAW_CHECK_SAME_DTYPE(x, y)                                                       \
  TORCH_CHECK((x).scalar_type() == (y).scalar_type(), #x " and " #y                          \
              " must have the same dtype, got ", (x).scalar_type(), " and ", (y).scalar_type(), \
              "; convert one with .to(", #x ".dtype)")
