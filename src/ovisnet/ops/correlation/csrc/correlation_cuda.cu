// CUDA kernels of the spatial correlation op (float32, float64, float16, bfloat16).
//
// One thread per output element, grid-stride loops, channel-first (B x C x H x W) inputs with the
// x coordinate fastest across threads so that global loads coalesce. Reduced-precision inputs are
// accumulated in float32 (at::acc_type) and rounded once on store. Both backward kernels are
// gathers (one thread per gradient element, no atomics), written from the closed forms of
// SPEC-models.md §4.2 with the same displacement set as the forward. Only c10/cuda headers are
// used (not ATen/cuda/CUDAContext.h, which needs the cuBLAS / cuSPARSE headers of a full toolkit).
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "correlation.h"

namespace ovisnet {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 20;

int64_t blocks_for(int64_t total) {
  return std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks);
}

// Output coordinate whose kernel tap `tap` lands on input coordinate `pos`, or -1 if none.
__device__ __forceinline__ int64_t output_index(int64_t pos, int64_t tap, const Geometry& g,
                                                int64_t out_size) {
  const int64_t shifted = pos + g.padding - tap * g.dilation;
  if (shifted < 0 || shifted % g.stride != 0) {
    return -1;
  }
  const int64_t out = shifted / g.stride;
  return out < out_size ? out : -1;
}

// out: B x P x P x H_out x W_out, one thread per element.
template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ r,
                               scalar_t* __restrict__ out, const Geometry g, int64_t total) {
  const int64_t H = g.height, W = g.width, HW = H * W, C = g.channels, P = g.patch_size;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t xo = idx % g.out_width;
    int64_t rest = idx / g.out_width;
    const int64_t yo = rest % g.out_height;
    rest /= g.out_height;
    const int64_t j = rest % P;
    rest /= P;
    const int64_t i = rest % P;
    const int64_t b = rest / P;
    const int64_t di = g.displacement(i);
    const int64_t dj = g.displacement(j);
    acc_t acc = 0;
    for (int64_t ky = 0; ky < g.kernel_size; ++ky) {
      const int64_t y = yo * g.stride - g.padding + ky * g.dilation;
      const int64_t y2 = y + di;
      if (y < 0 || y >= H || y2 < 0 || y2 >= H) {
        continue;
      }
      for (int64_t kx = 0; kx < g.kernel_size; ++kx) {
        const int64_t x = xo * g.stride - g.padding + kx * g.dilation;
        const int64_t x2 = x + dj;
        if (x < 0 || x >= W || x2 < 0 || x2 >= W) {
          continue;
        }
        const scalar_t* qp = q + b * C * HW + y * W + x;
        const scalar_t* rp = r + b * C * HW + y2 * W + x2;
        for (int64_t c = 0; c < C; ++c) {
          acc += static_cast<acc_t>(qp[c * HW]) * static_cast<acc_t>(rp[c * HW]);
        }
      }
    }
    out[idx] = static_cast<scalar_t>(acc);
  }
}

// grad_q: B x C x H x W, one thread per element; gathers G * R over the displacements.
template <typename scalar_t, typename acc_t>
__global__ void grad_input1_kernel(const scalar_t* __restrict__ grad_out,
                                   const scalar_t* __restrict__ r, scalar_t* __restrict__ grad_q,
                                   const Geometry g, int64_t total) {
  const int64_t H = g.height, W = g.width, HW = H * W, P = g.patch_size;
  const int64_t out_hw = g.out_height * g.out_width;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t x = idx % W;
    const int64_t y = (idx / W) % H;
    const int64_t bc = idx / HW;
    const int64_t b = bc / g.channels;
    const scalar_t* r_plane = r + bc * HW;
    const scalar_t* g_batch = grad_out + b * P * P * out_hw;
    acc_t acc = 0;
    for (int64_t ky = 0; ky < g.kernel_size; ++ky) {
      const int64_t yo = output_index(y, ky, g, g.out_height);
      if (yo < 0) {
        continue;
      }
      for (int64_t kx = 0; kx < g.kernel_size; ++kx) {
        const int64_t xo = output_index(x, kx, g, g.out_width);
        if (xo < 0) {
          continue;
        }
        for (int64_t i = 0; i < P; ++i) {
          const int64_t y2 = y + g.displacement(i);
          if (y2 < 0 || y2 >= H) {
            continue;
          }
          for (int64_t j = 0; j < P; ++j) {
            const int64_t x2 = x + g.displacement(j);
            if (x2 < 0 || x2 >= W) {
              continue;
            }
            acc += static_cast<acc_t>(g_batch[(i * P + j) * out_hw + yo * g.out_width + xo]) *
                   static_cast<acc_t>(r_plane[y2 * W + x2]);
          }
        }
      }
    }
    grad_q[idx] = static_cast<scalar_t>(acc);
  }
}

// grad_r: B x C x H x W, one thread per element; gathers G * Q at the inverse displacements.
template <typename scalar_t, typename acc_t>
__global__ void grad_input2_kernel(const scalar_t* __restrict__ grad_out,
                                   const scalar_t* __restrict__ q, scalar_t* __restrict__ grad_r,
                                   const Geometry g, int64_t total) {
  const int64_t H = g.height, W = g.width, HW = H * W, P = g.patch_size;
  const int64_t out_hw = g.out_height * g.out_width;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t x2 = idx % W;
    const int64_t y2 = (idx / W) % H;
    const int64_t bc = idx / HW;
    const int64_t b = bc / g.channels;
    const scalar_t* q_plane = q + bc * HW;
    const scalar_t* g_batch = grad_out + b * P * P * out_hw;
    acc_t acc = 0;
    for (int64_t i = 0; i < P; ++i) {
      const int64_t y = y2 - g.displacement(i);
      if (y < 0 || y >= H) {
        continue;
      }
      for (int64_t ky = 0; ky < g.kernel_size; ++ky) {
        const int64_t yo = output_index(y, ky, g, g.out_height);
        if (yo < 0) {
          continue;
        }
        for (int64_t j = 0; j < P; ++j) {
          const int64_t x = x2 - g.displacement(j);
          if (x < 0 || x >= W) {
            continue;
          }
          for (int64_t kx = 0; kx < g.kernel_size; ++kx) {
            const int64_t xo = output_index(x, kx, g, g.out_width);
            if (xo < 0) {
              continue;
            }
            acc += static_cast<acc_t>(g_batch[(i * P + j) * out_hw + yo * g.out_width + xo]) *
                   static_cast<acc_t>(q_plane[y * W + x]);
          }
        }
      }
    }
    grad_r[idx] = static_cast<scalar_t>(acc);
  }
}

}  // namespace

at::Tensor correlation_forward_cuda(const at::Tensor& input1, const at::Tensor& input2,
                                    const Geometry& g) {
  const c10::cuda::CUDAGuard device_guard(input1.device());
  const int64_t P = g.patch_size;
  at::Tensor out = at::empty({g.batch, P, P, g.out_height, g.out_width}, input1.options());
  const int64_t total = out.numel();
  if (total == 0) {
    return out;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input1.scalar_type(), "correlation_forward_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
        forward_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, stream>>>(
            input1.const_data_ptr<scalar_t>(), input2.const_data_ptr<scalar_t>(),
            out.mutable_data_ptr<scalar_t>(), g, total);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

std::vector<at::Tensor> correlation_backward_cuda(const at::Tensor& grad_output,
                                                  const at::Tensor& input1,
                                                  const at::Tensor& input2, const Geometry& g,
                                                  bool need_grad1, bool need_grad2) {
  const c10::cuda::CUDAGuard device_guard(input1.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t total = input1.numel();
  at::Tensor grad1, grad2;
  if (need_grad1) {
    grad1 = at::empty_like(input1);
  }
  if (need_grad2) {
    grad2 = at::empty_like(input2);
  }
  if (total == 0) {
    return {grad1, grad2};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input1.scalar_type(), "correlation_backward_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
        if (need_grad1) {
          grad_input1_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, stream>>>(
              grad_output.const_data_ptr<scalar_t>(), input2.const_data_ptr<scalar_t>(),
              grad1.mutable_data_ptr<scalar_t>(), g, total);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        if (need_grad2) {
          grad_input2_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, stream>>>(
              grad_output.const_data_ptr<scalar_t>(), input1.const_data_ptr<scalar_t>(),
              grad2.mutable_data_ptr<scalar_t>(), g, total);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
  return {grad1, grad2};
}

}  // namespace ovisnet
