// Masked crop: sample crop centres by inverse CDF and gather the crops, in one pass.
// CPU implementation, argument checks, device dispatch and the Python binding.
// See masked_crop.h for the exact semantics (those of gather_crops_reference).

#include "masked_crop.h"

#include <algorithm>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/extension.h>

namespace mkgan {
namespace {

void check_inputs(const at::Tensor& images, const at::Tensor& cdf, const at::Tensor& uniforms,
                  int64_t crop_size) {
  TORCH_CHECK(images.dim() == 4, "masked_crop: images must be (M, C, H, W), got ", images.sizes());
  TORCH_CHECK(cdf.dim() == 2, "masked_crop: cdf must be (M, H*W), got ", cdf.sizes());
  TORCH_CHECK(uniforms.dim() == 2, "masked_crop: uniforms must be (M, n), got ", uniforms.sizes());
  TORCH_CHECK(cdf.scalar_type() == at::kFloat, "masked_crop: cdf must be float32, got ", cdf.scalar_type());
  TORCH_CHECK(uniforms.scalar_type() == at::kFloat, "masked_crop: uniforms must be float32, got ",
              uniforms.scalar_type());
  TORCH_CHECK(images.device() == cdf.device() && images.device() == uniforms.device(),
              "masked_crop: images, cdf and uniforms must be on the same device, got ", images.device(),
              ", ", cdf.device(), ", ", uniforms.device());
  const int64_t m = images.size(0);
  const int64_t h = images.size(2);
  const int64_t w = images.size(3);
  TORCH_CHECK(h >= 1 && w >= 1, "masked_crop: empty image plane ", images.sizes());
  TORCH_CHECK(cdf.size(0) == m && cdf.size(1) == h * w, "masked_crop: cdf must be (M, H*W) = (", m, ", ",
              h * w, "), got ", cdf.sizes());
  TORCH_CHECK(uniforms.size(0) == m, "masked_crop: uniforms must have M = ", m, " rows, got ", uniforms.sizes());
  TORCH_CHECK(crop_size >= 1 && crop_size <= h && crop_size <= w, "masked_crop: crop_size must be in [1, min(H, W)] = [1, ",
              std::min(h, w), "], got ", crop_size);
}

// Fills crops (M, n, C, cs, cs) and centres (M, n, 2); inputs checked and contiguous, M * n > 0.
void masked_crop_cpu(const at::Tensor& images, const at::Tensor& cdf, const at::Tensor& uniforms, at::Tensor& crops,
                     at::Tensor& centres) {
  const int64_t channels = images.size(1);
  const int64_t h = images.size(2);
  const int64_t w = images.size(3);
  const int64_t n = uniforms.size(1);
  const int64_t cs = crops.size(-1);
  const int64_t hw = h * w;
  const int64_t half = cs / 2;
  const int64_t total = crops.size(0) * n;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, images.scalar_type(), "masked_crop_cpu", [&] {
    const scalar_t* src_all = images.const_data_ptr<scalar_t>();
    const float* cdf_all = cdf.const_data_ptr<float>();
    const float* u_all = uniforms.const_data_ptr<float>();
    scalar_t* dst_all = crops.mutable_data_ptr<scalar_t>();
    int64_t* centre_all = centres.mutable_data_ptr<int64_t>();
    const int64_t per_crop = channels * cs * cs;
    // A crop is at most a few tens of KB: a grain of a few crops keeps threads busy without overhead.
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, per_crop));
    at::parallel_for(0, total, grain, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const int64_t member = k / n;
        const float* row = cdf_all + member * hw;
        const float target = u_all[k] * row[hw - 1];
        int64_t flat = upper_bound_f32(row, hw, target);
        if (flat > hw - 1) flat = hw - 1;
        const int64_t cy = flat / w;
        const int64_t cx = flat % w;
        centre_all[2 * k] = cy;
        centre_all[2 * k + 1] = cx;
        const int64_t top = std::min(std::max(cy - half, int64_t{0}), h - cs);
        const int64_t left = std::min(std::max(cx - half, int64_t{0}), w - cs);
        const scalar_t* src = src_all + member * channels * hw;
        scalar_t* dst = dst_all + k * per_crop;
        for (int64_t c = 0; c < channels; ++c) {
          for (int64_t r = 0; r < cs; ++r) {
            const scalar_t* line = src + (c * h + top + r) * w + left;
            std::copy(line, line + cs, dst + (c * cs + r) * cs);
          }
        }
      }
    });
  });
}

}  // namespace

// Entry point: checks, makes inputs contiguous, allocates the outputs on the images' device and
// dispatches to the CPU or CUDA implementation.
std::tuple<at::Tensor, at::Tensor> masked_crop(const at::Tensor& images, const at::Tensor& cdf,
                                               const at::Tensor& uniforms, int64_t crop_size) {
  check_inputs(images, cdf, uniforms, crop_size);
  const at::Tensor images_c = images.contiguous();
  const at::Tensor cdf_c = cdf.contiguous();
  const at::Tensor uniforms_c = uniforms.contiguous();
  TORCH_CHECK(images_c.is_cuda() || images_c.device().is_cpu(), "masked_crop: unsupported device ", images.device());
#if !defined(MKGAN_WITH_CUDA)
  TORCH_CHECK(!images_c.is_cuda(), "masked_crop: this build has no CUDA support (tensors are on ", images.device(), ")");
#endif
  const int64_t m = images_c.size(0);
  const int64_t n = uniforms_c.size(1);
  at::Tensor crops = at::empty({m, n, images_c.size(1), crop_size, crop_size}, images_c.options());
  at::Tensor centres = at::empty({m, n, 2}, images_c.options().dtype(at::kLong));
  if (m * n > 0) {
    if (images_c.is_cuda()) {
#if defined(MKGAN_WITH_CUDA)
      masked_crop_cuda(images_c, cdf_c, uniforms_c, crops, centres);
#endif
    } else {
      masked_crop_cpu(images_c, cdf_c, uniforms_c, crops, centres);
    }
  }
  return {crops, centres};
}

bool built_with_cuda() {
#if defined(MKGAN_WITH_CUDA)
  return true;
#else
  return false;
#endif
}

}  // namespace mkgan

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "mkgan-engine masked-crop op (inverse-CDF crop centres + crop gather in one pass)";
  module.def("masked_crop", &mkgan::masked_crop, "masked_crop(images, cdf, uniforms, crop_size) -> (crops, centres)",
             pybind11::arg("images"), pybind11::arg("cdf"), pybind11::arg("uniforms"), pybind11::arg("crop_size"),
             pybind11::call_guard<pybind11::gil_scoped_release>());
  module.def("with_cuda", &mkgan::built_with_cuda, "True when this build contains the CUDA kernels");
}
