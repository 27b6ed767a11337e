// Python bindings and device dispatch of the spatial correlation op.
#include <torch/extension.h>

#include "correlation.h"

namespace ovisnet {

Geometry make_geometry(const at::Tensor& input1, const at::Tensor& input2, int64_t kernel_size,
                       int64_t patch_size, int64_t stride, int64_t padding, int64_t dilation,
                       int64_t dilation_patch) {
  TORCH_CHECK(input1.dim() == 4, "correlation: input1 must be B x C x H x W, got ", input1.sizes());
  TORCH_CHECK(input1.sizes() == input2.sizes(), "correlation: input shapes differ: ",
              input1.sizes(), " vs ", input2.sizes());
  TORCH_CHECK(input1.scalar_type() == input2.scalar_type(), "correlation: input dtypes differ");
  TORCH_CHECK(input1.device() == input2.device(), "correlation: inputs on different devices");
  TORCH_CHECK(kernel_size >= 1 && patch_size >= 1 && stride >= 1 && dilation >= 1 &&
                  dilation_patch >= 1 && padding >= 0,
              "correlation: kernel_size, patch_size, stride, dilation, dilation_patch must be "
              ">= 1 and padding >= 0");
  Geometry g{};
  g.batch = input1.size(0);
  g.channels = input1.size(1);
  g.height = input1.size(2);
  g.width = input1.size(3);
  const int64_t extent = dilation * (kernel_size - 1) + 1;
  TORCH_CHECK(g.height + 2 * padding >= extent && g.width + 2 * padding >= extent,
              "correlation: the dilated kernel does not fit in the padded input");
  g.out_height = (g.height + 2 * padding - extent) / stride + 1;
  g.out_width = (g.width + 2 * padding - extent) / stride + 1;
  g.kernel_size = kernel_size;
  g.patch_size = patch_size;
  g.stride = stride;
  g.padding = padding;
  g.dilation = dilation;
  g.dilation_patch = dilation_patch;
  g.radius = dilation_patch * (patch_size - 1) / 2;
  return g;
}

namespace {

at::Tensor forward(const at::Tensor& input1, const at::Tensor& input2, int64_t kernel_size,
                   int64_t patch_size, int64_t stride, int64_t padding, int64_t dilation,
                   int64_t dilation_patch) {
  const Geometry g = make_geometry(input1, input2, kernel_size, patch_size, stride, padding,
                                   dilation, dilation_patch);
  const at::Tensor q = input1.contiguous();
  const at::Tensor r = input2.contiguous();
  if (q.is_cuda()) {
#if defined(OVISNET_WITH_CUDA)
    return correlation_forward_cuda(q, r, g);
#else
    TORCH_CHECK(false, "correlation: this build of the extension has no CUDA kernels");
#endif
  }
  TORCH_CHECK(q.is_cpu(), "correlation: unsupported device ", q.device());
  return correlation_forward_cpu(q, r, g);
}

std::vector<at::Tensor> backward(const at::Tensor& grad_output, const at::Tensor& input1,
                                 const at::Tensor& input2, int64_t kernel_size,
                                 int64_t patch_size, int64_t stride, int64_t padding,
                                 int64_t dilation, int64_t dilation_patch, bool need_grad1,
                                 bool need_grad2) {
  const Geometry g = make_geometry(input1, input2, kernel_size, patch_size, stride, padding,
                                   dilation, dilation_patch);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({g.batch, g.patch_size, g.patch_size,
                                                      g.out_height, g.out_width}),
              "correlation: grad_output has shape ", grad_output.sizes());
  const at::Tensor go = grad_output.to(input1.scalar_type()).contiguous();
  const at::Tensor q = input1.contiguous();
  const at::Tensor r = input2.contiguous();
  if (q.is_cuda()) {
#if defined(OVISNET_WITH_CUDA)
    return correlation_backward_cuda(go, q, r, g, need_grad1, need_grad2);
#else
    TORCH_CHECK(false, "correlation: this build of the extension has no CUDA kernels");
#endif
  }
  TORCH_CHECK(q.is_cpu(), "correlation: unsupported device ", q.device());
  return correlation_backward_cpu(go, q, r, g, need_grad1, need_grad2);
}

bool has_cuda() {
#if defined(OVISNET_WITH_CUDA)
  return true;
#else
  return false;
#endif
}

}  // namespace
}  // namespace ovisnet

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ovisnet spatial correlation (C++ CPU kernels, optional CUDA kernels)";
  m.def("forward", &ovisnet::forward, "correlation forward -> B x P x P x H_out x W_out");
  m.def("backward", &ovisnet::backward,
        "correlation backward -> [grad_input1, grad_input2] (None where not requested)");
  m.def("has_cuda", &ovisnet::has_cuda, "whether the CUDA kernels were compiled in");
}
