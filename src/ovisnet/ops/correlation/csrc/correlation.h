// Spatial correlation op shared declarations (see SPEC-models.md §4).
//
// out[b, i, j, yo, xo] = sum_{ky, kx} sum_c Q[b, c, y, x] * R[b, c, y + d_i, x + d_j]
//   with y = yo * stride - padding + ky * dilation, x = xo * stride - padding + kx * dilation,
//   d_i = dilation_patch * i - floor(dilation_patch * (patch_size - 1) / 2),
//   and every term whose Q or R position lies outside the image taken as zero.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#if defined(__CUDACC__)
#define OVISNET_HOST_DEVICE __host__ __device__
#else
#define OVISNET_HOST_DEVICE
#endif

namespace ovisnet {

// Sizes and hyper-parameters of one correlation call; plain data so that kernels take it by value.
struct Geometry {
  int64_t batch;
  int64_t channels;
  int64_t height;
  int64_t width;
  int64_t out_height;
  int64_t out_width;
  int64_t kernel_size;
  int64_t patch_size;
  int64_t stride;
  int64_t padding;
  int64_t dilation;
  int64_t dilation_patch;
  int64_t radius;  // floor(dilation_patch * (patch_size - 1) / 2)

  OVISNET_HOST_DEVICE int64_t displacement(int64_t index) const {
    return dilation_patch * index - radius;
  }
};

// Validates the inputs and hyper-parameters and returns the geometry (throws c10::Error).
Geometry make_geometry(const at::Tensor& input1, const at::Tensor& input2, int64_t kernel_size,
                       int64_t patch_size, int64_t stride, int64_t padding, int64_t dilation,
                       int64_t dilation_patch);

// CPU kernels (float32, float64). Inputs B x C x H x W, output B x P x P x H_out x W_out.
at::Tensor correlation_forward_cpu(const at::Tensor& input1, const at::Tensor& input2,
                                   const Geometry& geometry);
// Returns {grad_input1, grad_input2}; an entry is undefined when its flag is false.
std::vector<at::Tensor> correlation_backward_cpu(const at::Tensor& grad_output,
                                                 const at::Tensor& input1,
                                                 const at::Tensor& input2, const Geometry& geometry,
                                                 bool need_grad1, bool need_grad2);

#if defined(OVISNET_WITH_CUDA)
// CUDA kernels (float32, float64, float16, bfloat16; reduced precision accumulates in float32).
at::Tensor correlation_forward_cuda(const at::Tensor& input1, const at::Tensor& input2,
                                    const Geometry& geometry);
std::vector<at::Tensor> correlation_backward_cuda(const at::Tensor& grad_output,
                                                  const at::Tensor& input1,
                                                  const at::Tensor& input2,
                                                  const Geometry& geometry, bool need_grad1,
                                                  bool need_grad2);
#endif

}  // namespace ovisnet
