// CPU kernels of the spatial correlation op (float32, float64).
//
// The inputs are transposed to channel-last (B x H x W x C) so that every inner loop is a contiguous
// dot product or axpy over channels, which the compiler vectorises. The forward and both backward
// passes are written as gathers: each parallel task owns whole rows of its output (rows of the
// correlation for the forward, rows of the gradient for the backward), so no atomics are needed.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "correlation.h"

namespace ovisnet {
namespace {

// Dot product with independent partial sums, so that it vectorises without -ffast-math.
template <typename scalar_t>
inline scalar_t dot(const scalar_t* __restrict a, const scalar_t* __restrict b, int64_t n) {
  constexpr int64_t kLanes = 16;
  scalar_t partial[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      partial[l] += a[c + l] * b[c + l];
    }
  }
  scalar_t sum = 0;
  for (int64_t l = 0; l < kLanes; ++l) {
    sum += partial[l];
  }
  for (; c < n; ++c) {
    sum += a[c] * b[c];
  }
  return sum;
}

// y += alpha * x over n contiguous elements.
template <typename scalar_t>
inline void axpy(scalar_t* __restrict y, scalar_t alpha, const scalar_t* __restrict x, int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    y[c] += alpha * x[c];
  }
}

// Output coordinate whose kernel tap `tap` lands on input coordinate `pos`, or -1 if none.
inline int64_t output_index(int64_t pos, int64_t tap, const Geometry& g, int64_t out_size) {
  const int64_t shifted = pos + g.padding - tap * g.dilation;
  if (shifted < 0 || shifted % g.stride != 0) {
    return -1;
  }
  const int64_t out = shifted / g.stride;
  return out < out_size ? out : -1;
}

// q, r: B x H x W x C; out: B x H_out x W_out x P x P (zero-initialised). Rows [begin, end) of
// the B * H_out output rows.
template <typename scalar_t>
void forward_rows(const scalar_t* q, const scalar_t* r, scalar_t* out, const Geometry& g,
                  int64_t begin, int64_t end) {
  const int64_t C = g.channels, H = g.height, W = g.width, P = g.patch_size;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t b = row / g.out_height;
    const int64_t yo = row % g.out_height;
    for (int64_t xo = 0; xo < g.out_width; ++xo) {
      scalar_t* o = out + (row * g.out_width + xo) * P * P;
      for (int64_t ky = 0; ky < g.kernel_size; ++ky) {
        const int64_t y = yo * g.stride - g.padding + ky * g.dilation;
        if (y < 0 || y >= H) {
          continue;
        }
        for (int64_t kx = 0; kx < g.kernel_size; ++kx) {
          const int64_t x = xo * g.stride - g.padding + kx * g.dilation;
          if (x < 0 || x >= W) {
            continue;
          }
          const scalar_t* qv = q + ((b * H + y) * W + x) * C;
          for (int64_t i = 0; i < P; ++i) {
            const int64_t y2 = y + g.displacement(i);
            if (y2 < 0 || y2 >= H) {
              continue;
            }
            const scalar_t* r_row = r + (b * H + y2) * W * C;
            for (int64_t j = 0; j < P; ++j) {
              const int64_t x2 = x + g.displacement(j);
              if (x2 >= 0 && x2 < W) {
                o[i * P + j] += dot(qv, r_row + x2 * C, C);
              }
            }
          }
        }
      }
    }
  }
}

// grad_q[b, y, x, :] = sum over the output positions and displacements that read Q[b, y, x] of
// G * R[b, y + d_i, x + d_j]. gt: B x H_out x W_out x P x P; r, grad_q: B x H x W x C. Rows
// [begin, end) of the B * H input rows.
template <typename scalar_t>
void grad_input1_rows(const scalar_t* gt, const scalar_t* r, scalar_t* grad_q, const Geometry& g,
                      int64_t begin, int64_t end) {
  const int64_t C = g.channels, H = g.height, W = g.width, P = g.patch_size;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t b = row / H;
    const int64_t y = row % H;
    for (int64_t x = 0; x < W; ++x) {
      scalar_t* dq = grad_q + (row * W + x) * C;
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
          const scalar_t* gv = gt + ((b * g.out_height + yo) * g.out_width + xo) * P * P;
          for (int64_t i = 0; i < P; ++i) {
            const int64_t y2 = y + g.displacement(i);
            if (y2 < 0 || y2 >= H) {
              continue;
            }
            const scalar_t* r_row = r + (b * H + y2) * W * C;
            for (int64_t j = 0; j < P; ++j) {
              const int64_t x2 = x + g.displacement(j);
              if (x2 >= 0 && x2 < W) {
                axpy(dq, gv[i * P + j], r_row + x2 * C, C);
              }
            }
          }
        }
      }
    }
  }
}

// grad_r[b, y2, x2, :] = sum over the (output position, displacement) pairs that read
// R[b, y2, x2] of G * Q[b, y2 - d_i, x2 - d_j]. gt: B x H_out x W_out x P x P; q, grad_r:
// B x H x W x C. Rows [begin, end) of the B * H input rows.
template <typename scalar_t>
void grad_input2_rows(const scalar_t* gt, const scalar_t* q, scalar_t* grad_r, const Geometry& g,
                      int64_t begin, int64_t end) {
  const int64_t C = g.channels, H = g.height, W = g.width, P = g.patch_size;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t b = row / H;
    const int64_t y2 = row % H;
    for (int64_t x2 = 0; x2 < W; ++x2) {
      scalar_t* dr = grad_r + (row * W + x2) * C;
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
          const scalar_t* g_row = gt + (b * g.out_height + yo) * g.out_width * P * P;
          for (int64_t j = 0; j < P; ++j) {
            const int64_t x = x2 - g.displacement(j);
            if (x < 0 || x >= W) {
              continue;
            }
            const scalar_t* qv = q + ((b * H + y) * W + x) * C;
            for (int64_t kx = 0; kx < g.kernel_size; ++kx) {
              const int64_t xo = output_index(x, kx, g, g.out_width);
              if (xo >= 0) {
                axpy(dr, g_row[xo * P * P + i * P + j], qv, C);
              }
            }
          }
        }
      }
    }
  }
}

at::Tensor channels_last(const at::Tensor& t) { return t.permute({0, 2, 3, 1}).contiguous(); }

void check_cpu_dtype(const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "correlation (CPU kernels): expected float32 or float64, got ", t.scalar_type());
}

// Number of rows per parallel task: enough work to amortise scheduling.
int64_t grain(int64_t row_work) {
  const int64_t work = std::max<int64_t>(row_work, 1);
  return std::max<int64_t>(1, 32768 / work);
}

}  // namespace

at::Tensor correlation_forward_cpu(const at::Tensor& input1, const at::Tensor& input2,
                                   const Geometry& g) {
  check_cpu_dtype(input1);
  const at::Tensor q = channels_last(input1);
  const at::Tensor r = channels_last(input2);
  const int64_t P = g.patch_size;
  at::Tensor out = at::zeros({g.batch, g.out_height, g.out_width, P, P}, input1.options());
  const int64_t rows = g.batch * g.out_height;
  const int64_t row_work = g.out_width * g.kernel_size * g.kernel_size * P * P * g.channels;
  AT_DISPATCH_FLOATING_TYPES(input1.scalar_type(), "correlation_forward_cpu", [&] {
    const scalar_t* q_ptr = q.const_data_ptr<scalar_t>();
    const scalar_t* r_ptr = r.const_data_ptr<scalar_t>();
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain(row_work), [&](int64_t begin, int64_t end) {
      forward_rows(q_ptr, r_ptr, out_ptr, g, begin, end);
    });
  });
  return out.permute({0, 3, 4, 1, 2}).contiguous();
}

std::vector<at::Tensor> correlation_backward_cpu(const at::Tensor& grad_output,
                                                 const at::Tensor& input1,
                                                 const at::Tensor& input2, const Geometry& g,
                                                 bool need_grad1, bool need_grad2) {
  check_cpu_dtype(input1);
  const at::Tensor gt = grad_output.permute({0, 3, 4, 1, 2}).contiguous();
  const int64_t rows = g.batch * g.height;
  const int64_t row_work =
      g.width * g.kernel_size * g.kernel_size * g.patch_size * g.patch_size * g.channels;
  at::Tensor grad1, grad2;
  if (need_grad1) {
    const at::Tensor r = channels_last(input2);
    at::Tensor grad_q = at::zeros({g.batch, g.height, g.width, g.channels}, input1.options());
    AT_DISPATCH_FLOATING_TYPES(input1.scalar_type(), "correlation_backward_cpu_input1", [&] {
      const scalar_t* g_ptr = gt.const_data_ptr<scalar_t>();
      const scalar_t* r_ptr = r.const_data_ptr<scalar_t>();
      scalar_t* out_ptr = grad_q.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, rows, grain(row_work), [&](int64_t begin, int64_t end) {
        grad_input1_rows(g_ptr, r_ptr, out_ptr, g, begin, end);
      });
    });
    grad1 = grad_q.permute({0, 3, 1, 2}).contiguous();
  }
  if (need_grad2) {
    const at::Tensor q = channels_last(input1);
    at::Tensor grad_r = at::zeros({g.batch, g.height, g.width, g.channels}, input1.options());
    AT_DISPATCH_FLOATING_TYPES(input1.scalar_type(), "correlation_backward_cpu_input2", [&] {
      const scalar_t* g_ptr = gt.const_data_ptr<scalar_t>();
      const scalar_t* q_ptr = q.const_data_ptr<scalar_t>();
      scalar_t* out_ptr = grad_r.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, rows, grain(row_work), [&](int64_t begin, int64_t end) {
        grad_input2_rows(g_ptr, q_ptr, out_ptr, g, begin, end);
      });
    });
    grad2 = grad_r.permute({0, 3, 1, 2}).contiguous();
  }
  return {grad1, grad2};
}

}  // namespace ovisnet
