// Masked crop, CUDA: one launch samples every crop centre (inverse CDF by binary search) and
// gathers every crop, for all members and samples, on the current stream. No host round trip.
// Semantics: see masked_crop.h (identical to gather_crops_reference and to the CPU path).

#include "masked_crop.h"

#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace mkgan {
namespace {

constexpr int kThreads = 256;
constexpr int kItemsPerThread = 4;

// grid.x = one crop (m * n + j); grid.y = slices of that crop's C*cs*cs elements.
// Thread 0 of each block finds the crop's centre (every slice of a crop finds the same one: a
// handful of cached loads, cheaper than a second launch or a grid-wide sync).
template <typename scalar_t>
__global__ void masked_crop_kernel(const scalar_t* __restrict__ images, const float* __restrict__ cdf,
                                   const float* __restrict__ uniforms, scalar_t* __restrict__ crops,
                                   int64_t* __restrict__ centres, int64_t n, int64_t channels, int64_t h,
                                   int64_t w, int64_t cs) {
  const int64_t crop = blockIdx.x;
  const int64_t member = crop / n;
  const int64_t hw = h * w;
  __shared__ int64_t s_top;
  __shared__ int64_t s_left;
  if (threadIdx.x == 0) {
    const float* row = cdf + member * hw;
    // __fmul_rn: a correctly rounded float32 product, never contracted (same as torch's mul).
    const float target = __fmul_rn(uniforms[crop], row[hw - 1]);
    int64_t flat = upper_bound_f32(row, hw, target);
    if (flat > hw - 1) flat = hw - 1;
    const int64_t cy = flat / w;
    const int64_t cx = flat - cy * w;
    const int64_t half = cs / 2;
    int64_t top = cy - half;
    top = top < 0 ? 0 : top;
    top = top > h - cs ? h - cs : top;
    int64_t left = cx - half;
    left = left < 0 ? 0 : left;
    left = left > w - cs ? w - cs : left;
    s_top = top;
    s_left = left;
    if (blockIdx.y == 0) {
      centres[2 * crop] = cy;
      centres[2 * crop + 1] = cx;
    }
  }
  __syncthreads();
  const int64_t top = s_top;
  const int64_t left = s_left;
  const int area = static_cast<int>(cs * cs);
  const int per_crop = static_cast<int>(channels) * area;
  const int side = static_cast<int>(cs);
  const scalar_t* src = images + member * channels * hw;
  scalar_t* dst = crops + crop * static_cast<int64_t>(per_crop);
  const int stride = static_cast<int>(gridDim.y) * blockDim.x;
  for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < per_crop; e += stride) {
    const int c = e / area;
    const int rem = e - c * area;
    const int r = rem / side;
    const int col = rem - r * side;
    dst[e] = src[(static_cast<int64_t>(c) * h + top + r) * w + left + col];
  }
}

}  // namespace

void masked_crop_cuda(const at::Tensor& images, const at::Tensor& cdf, const at::Tensor& uniforms, at::Tensor& crops,
                      at::Tensor& centres) {
  const c10::cuda::CUDAGuard device_guard(images.device());
  const int64_t channels = images.size(1);
  const int64_t h = images.size(2);
  const int64_t w = images.size(3);
  const int64_t n = uniforms.size(1);
  const int64_t cs = crops.size(-1);
  const int64_t total = crops.size(0) * n;
  const int64_t per_crop = channels * cs * cs;
  TORCH_CHECK(per_crop < (int64_t{1} << 31), "masked_crop: crop too large (", per_crop, " elements)");
  TORCH_CHECK(total < (int64_t{1} << 31), "masked_crop: too many crops (", total, ")");
  const int64_t per_block = int64_t{kThreads} * kItemsPerThread;
  const int64_t slices = std::min<int64_t>(std::max<int64_t>(1, (per_crop + per_block - 1) / per_block), 65535);
  const dim3 grid(static_cast<unsigned int>(total), static_cast<unsigned int>(slices));
  const dim3 block(kThreads);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, images.scalar_type(), "masked_crop_cuda", [&] {
    masked_crop_kernel<scalar_t><<<grid, block, 0, stream>>>(
        images.const_data_ptr<scalar_t>(), cdf.const_data_ptr<float>(), uniforms.const_data_ptr<float>(),
        crops.mutable_data_ptr<scalar_t>(), centres.mutable_data_ptr<int64_t>(), n, channels, h, w, cs);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace mkgan
