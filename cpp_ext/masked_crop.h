// Masked-crop op shared declarations (CPU in masked_crop.cpp, CUDA in masked_crop_cuda.cu).
//
// Semantics (exactly those of mkgan_engine.train.masked_crop.gather_crops_reference):
//   for member m and sample j:
//     target = uniforms[m, j] * cdf[m, H*W - 1]                       (float32 multiply)
//     flat   = first i with cdf[m, i] > target (upper bound), clamped to H*W - 1
//     centre = (flat / W, flat % W)
//     top    = clamp(centre_y - cs / 2, 0, H - cs); left likewise with W
//     crops[m, j, c] = images[m, c, top:top+cs, left:left+cs]
#pragma once

#include <cstdint>
#include <tuple>

#include <ATen/ATen.h>

namespace mkgan {

// Upper bound over a non-decreasing float32 array, written exactly as PyTorch's searchsorted
// (right=True) does it, so that even unusual inputs (NaN) give the same index.
#if defined(__CUDACC__)
__host__ __device__
#endif
inline int64_t upper_bound_f32(const float* data, int64_t size, float value) {
  int64_t start = 0;
  int64_t end = size;
  while (start < end) {
    const int64_t mid = start + ((end - start) >> 1);
    const float mid_val = data[mid];
    if (!(mid_val > value)) {
      start = mid + 1;
    } else {
      end = mid;
    }
  }
  return start;
}

#if defined(MKGAN_WITH_CUDA)
// Fills crops (M, n, C, cs, cs) and centres (M, n, 2), allocated on the images' GPU, on the current
// stream. Inputs are checked and contiguous (masked_crop in masked_crop.cpp) and M * n > 0.
void masked_crop_cuda(const at::Tensor& images, const at::Tensor& cdf, const at::Tensor& uniforms, at::Tensor& crops,
                      at::Tensor& centres);
#endif

}  // namespace mkgan
