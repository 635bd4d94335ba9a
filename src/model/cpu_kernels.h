#pragma once
// One-pass CPU kernels of two element-wise pieces of the ViT, on raw float or bf16 buffers
// (model::quick_gelu and model::softmax_last_dim wrap them as autograd nodes):
// - QuickGELU, y = x * sigmoid(1.702 x), and its derivative. As ATen ops the forward is three
//   passes (scale, sigmoid, multiply) and autograd's backward five; in bf16 each pass rounds, and
//   on the main job's shapes the composite took a quarter of the CPU step.
// - The attention's softmax over rows and its backward: ATen's over the 65 keys of the main job's
//   dense step ran at a third of the speed of exp alone over the same tensor.
// - LayerNorm over rows of float values, its result in float or bf16 (the bf16 matmuls' input, so
//   that no cast follows it), and its input gradient from a float or bf16 output gradient: ATen's
//   took 0.49 ms over the main job's 5200 x 128 values, about 1 ns per value.
//   The residual add before a LayerNorm is fused with it (add_layer_norm_rows): one pass that
//   writes the residual stream and the LayerNorm's output, and a backward that adds the two
//   gradients of the residual stream in the same pass.
// All compute in float whatever the storage. Each function is compiled for several instruction
// sets and the best one this CPU runs is chosen at run time (best_isa); tests call every
// supported one against the formulas.

#include <cstdint>
#include <vector>

namespace lorarec::model::kernel {

// Ordered: each set runs on every CPU that runs the next. kAvx512Bf16 is kAvx512 plus AVX512-BF16's
// conversion instruction for bf16 results (which flushes denormal results to zero).
enum class Isa { kGeneric, kAvx2, kAvx512, kAvx512Bf16 };

// The best instruction set of this CPU among those the kernels are built for (detected once;
// kGeneric off x86-64), at most what env::kKernelIsa names when it is set.
Isa best_isa();
// kGeneric first, then every other one up to best_isa() (for tests and benchmarks).
std::vector<Isa> supported_isas();
const char* isa_name(Isa isa);

// y[i] = x[i] * sigmoid(1.702 x[i]), i < n; computed in float, bf16 stored as its raw 16 bits
// (round to nearest even). x and y may be the same buffer. exp is a degree-6 polynomial after
// range reduction; the float result is within 1e-6 (relative) of the formula evaluated exactly
// from the float product 1.702 x, or below 1e-30 in magnitude (tests/model/cpu_kernels_test).
// bf16 under kAvx512 and kAvx512Bf16 is computed to bf16's precision instead (a degree-4 exp and
// the reciprocal estimate with one Newton step: about 30 % fewer vector operations, which bound
// these loops): within one bf16 step of the formula, and the float result rounded once for all
// but about 0.1 % of the values; the tails and NaN as in float.
void quick_gelu_forward(const float* x, float* y, int64_t n, Isa isa);
void quick_gelu_forward(const uint16_t* x, uint16_t* y, int64_t n, Isa isa);
// gx[i] = g[i] * s (1 + 1.702 x[i] (1 - s)), s = sigmoid(1.702 x[i]): the gradient of the forward
// at x. gx may alias g or x.
void quick_gelu_backward(const float* x, const float* g, float* gx, int64_t n, Isa isa);
void quick_gelu_backward(const uint16_t* x, const uint16_t* g, uint16_t* gx, int64_t n, Isa isa);

// The bf16 forward under kAvx512 and kAvx512Bf16 (as quick_gelu_forward there: the same y) that
// also writes d[i] = s (1 + 1.702 x[i] (1 - s)), the derivative at x[i], rounded to bf16 once, so
// that the backward is g * d (one more rounding than quick_gelu_backward: within two bf16 steps
// of the formula). quick_gelu_with_grad_supported says where it runs; elsewhere it throws.
bool quick_gelu_with_grad_supported(Isa isa);
void quick_gelu_forward_with_grad(const uint16_t* x, uint16_t* y, uint16_t* d, int64_t n, Isa isa);

// y = softmax(x) over each of `rows` contiguous rows of n values, computed in float (bf16 stored
// once, rounded to nearest even); a -inf value gets probability 0, a row with a NaN or +inf is
// NaN. x and y must not overlap. The generic build is slower than ATen's softmax: callers use it
// only where best_isa() is not kGeneric.
void softmax_rows(const float* x, float* y, int64_t rows, int64_t n, Isa isa);
void softmax_rows(const uint16_t* x, uint16_t* y, int64_t rows, int64_t n, Isa isa);
// gx = y (g - <g, y>) per row: the gradient of the softmax whose output is y. gx may alias g;
// y must not overlap either.
void softmax_rows_backward(const float* y, const float* g, float* gx, int64_t rows, int64_t n, Isa isa);
void softmax_rows_backward(const uint16_t* y, const uint16_t* g, uint16_t* gx, int64_t rows, int64_t n, Isa isa);

// y = (x - mean) rstd w + b over each of `rows` contiguous rows of n floats, rstd = 1 / sqrt(var +
// eps) (var the biased variance, both moments in two passes over the row), stored in float or bf16
// (rounded once, as above); mean and rstd per row are written for the backward. y must not
// overlap x.
void layer_norm_rows(const float* x, const float* w, const float* b, float* y, float* mean, float* rstd, int64_t rows,
                     int64_t n, float eps, Isa isa);
void layer_norm_rows(const float* x, const float* w, const float* b, uint16_t* y, float* mean, float* rstd,
                     int64_t rows, int64_t n, float eps, Isa isa);
// The input gradient of layer_norm_rows: with xh = (x - mean) rstd and d = g w, gx = rstd (d -
// mean(d) - xh mean(d xh)) per row, in float from a float or bf16 output gradient g. gx must not
// overlap the inputs.
void layer_norm_rows_backward(const float* x, const float* mean, const float* rstd, const float* w, const float* g,
                              float* gx, int64_t rows, int64_t n, Isa isa);
void layer_norm_rows_backward(const float* x, const float* mean, const float* rstd, const float* w, const uint16_t* g,
                              float* gx, int64_t rows, int64_t n, Isa isa);

// The residual add fused with the next LayerNorm: v = x + y (+ bias) per row (x float, y float or
// bf16, bias float or null), written to v (float), then h = layer_norm_rows(v) in float or bf16
// (bf16 rounded once, to nearest even, without AVX512-BF16's flush of denormals), mean and rstd
// per row. v must not overlap the inputs.
void add_layer_norm_rows(const float* x, const float* y, const float* bias, float* v, const float* w, const float* b,
                         float* h, float* mean, float* rstd, int64_t rows, int64_t n, float eps, Isa isa);
void add_layer_norm_rows(const float* x, const uint16_t* y, const float* bias, float* v, const float* w, const float* b,
                         float* h, float* mean, float* rstd, int64_t rows, int64_t n, float eps, Isa isa);
void add_layer_norm_rows(const float* x, const float* y, const float* bias, float* v, const float* w, const float* b,
                         uint16_t* h, float* mean, float* rstd, int64_t rows, int64_t n, float eps, Isa isa);
void add_layer_norm_rows(const float* x, const uint16_t* y, const float* bias, float* v, const float* w, const float* b,
                         uint16_t* h, float* mean, float* rstd, int64_t rows, int64_t n, float eps, Isa isa);
// Its backward: gv = gv_out + the LayerNorm's input gradient from gh (as layer_norm_rows_backward),
// in float (gv_out, the gradient that reaches v from further on, may be null: 0); gy16, where not
// null, gets gv rounded to bf16 (the gradient of a bf16 y; a float y's is gv itself).
void add_layer_norm_rows_backward(const float* v, const float* mean, const float* rstd, const float* w, const float* gh,
                                  const float* gv_out, float* gv, uint16_t* gy16, int64_t rows, int64_t n, Isa isa);
void add_layer_norm_rows_backward(const float* v, const float* mean, const float* rstd, const float* w,
                                  const uint16_t* gh, const float* gv_out, float* gv, uint16_t* gy16, int64_t rows,
                                  int64_t n, Isa isa);

}  // namespace lorarec::model::kernel
