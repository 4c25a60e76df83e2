// Splitting a [B, N, heads * dim] projection into heads and merging them back, as the UNet's attention lays
// them out; shared by the recorder's attention and the token-map op.
#pragma once

#include <ATen/ATen.h>

namespace pickdraw::detail {

// [B, N, heads * dim] -> [B, heads, N, dim] (a view)
inline at::Tensor split_heads(const at::Tensor& x, int64_t heads) {
  return x.view({x.size(0), x.size(1), heads, x.size(2) / heads}).transpose(1, 2);
}

// [B, heads, N, dim] -> [B, N, heads * dim]
inline at::Tensor merge_heads(const at::Tensor& x) {
  return x.transpose(1, 2).reshape({x.size(0), x.size(2), x.size(1) * x.size(3)});
}

}  // namespace pickdraw::detail
