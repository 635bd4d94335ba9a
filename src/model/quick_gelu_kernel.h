#pragma once
// The ViT's QuickGELU, y = x * sigmoid(1.702 x), and its derivative as one pass over memory each,
// on raw float or bf16 buffers (model::quick_gelu wraps them as one autograd node). As ATen ops the
// forward is three passes (scale, sigmoid, multiply) and autograd's backward five; in bf16 each
// pass rounds, and on the main job's shapes the composite took a quarter of the CPU step.
//
// Each function is compiled for several instruction sets and the best one this CPU runs is chosen
// at run time (best_isa); tests call every supported one against the plain C++ loop.

#include <cstdint>
#include <vector>

namespace lorarec::model::kernel {

enum class Isa { kGeneric, kAvx2, kAvx512 };

// The best instruction set of this CPU among those the kernels are built for (detected once;
// kGeneric off x86-64).
Isa best_isa();
// kGeneric first, then every other one this CPU runs (for tests and benchmarks).
std::vector<Isa> supported_isas();
const char* isa_name(Isa isa);

// y[i] = x[i] * sigmoid(1.702 x[i]), i < n; computed in float, bf16 stored as its raw 16 bits
// (round to nearest even). x and y may be the same buffer. exp is a degree-6 polynomial after
// range reduction; the float result is within 1e-6 (relative) of the formula evaluated exactly
// from the float product 1.702 x, or below 1e-30 in magnitude (tests/model/quick_gelu_kernel_test).
void quick_gelu_forward(const float* x, float* y, int64_t n, Isa isa);
void quick_gelu_forward(const uint16_t* x, uint16_t* y, int64_t n, Isa isa);
// gx[i] = g[i] * s (1 + 1.702 x[i] (1 - s)), s = sigmoid(1.702 x[i]): the gradient of the forward
// at x. gx may alias g or x.
void quick_gelu_backward(const float* x, const float* g, float* gx, int64_t n, Isa isa);
void quick_gelu_backward(const uint16_t* x, const uint16_t* g, uint16_t* gx, int64_t n, Isa isa);

}  // namespace lorarec::model::kernel
