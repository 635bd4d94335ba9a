#include "model/quick_gelu_kernel.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace lorarec::model::kernel {
namespace {

// The kernels' tolerance: relative, against the formulas evaluated in double from the float
// product 1.702 x that the kernels compute (exp multiplies that product's rounding error by
// |1.702 x|, which no float evaluation avoids), where the result is not tiny (exp's argument is
// clamped to [-87, 88], so results below ~1e-36 are not the exact tail).
constexpr double kRelTol = 1e-6;
constexpr double kTinyAbs = 1e-30;

double sigmoid_of_scaled(float x) { return 1.0 / (1.0 + std::exp(double(-1.702f * x))); }
double ref_forward(float x) { return x * sigmoid_of_scaled(x); }
double ref_backward(float x, float g) {
  const double s = sigmoid_of_scaled(x);
  return g * s * (1.0 + 1.702 * x * (1.0 - s));
}
// The size of the backward's terms: near its root (x ~ -0.75) they cancel, so its error is
// relative to them, not to the result.
double backward_scale(float x, float g) {
  const double s = sigmoid_of_scaled(x);
  return std::abs(g) * s * (1.0 + 1.702 * std::abs(x) * (1.0 - s));
}

uint16_t to_bf16(float f) {  // round to nearest even, as the kernels store
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
float from_bf16(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Values across the whole range: the tails, zero, the steep middle, and a length that is not a
// multiple of any vector width (the loops' remainders).
std::vector<float> inputs() {
  std::vector<float> v{0.0f, -0.0f, 1e-30f, -1e-30f, 50.0f, -50.0f, 60.0f, -60.0f, 1e6f, -1e6f, 3e38f, -3e38f};
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::uniform_real_distribution<float> wide(-120.0f, 120.0f);
  for (int i = 0; i < 2000; ++i) v.push_back(normal(rng));
  for (int i = 0; i < 1001; ++i) v.push_back(wide(rng));
  return v;
}

void expect_close(double got, double want, double scale, const char* what, float x, Isa isa) {
  const double err = std::abs(got - want);
  EXPECT_TRUE(err <= kTinyAbs || err <= kRelTol * scale)
      << what << " at x = " << x << " (" << isa_name(isa) << "): " << got << " against " << want;
}

TEST(QuickGeluKernel, EveryInstructionSetMatchesTheFormulaInFloat) {
  const std::vector<float> x = inputs();
  std::vector<float> g(x.size());
  std::mt19937 rng(8);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : g) v = normal(rng);
  ASSERT_EQ(supported_isas().front(), Isa::kGeneric);
  for (const Isa isa : supported_isas()) {
    std::vector<float> y(x.size()), gx(x.size());
    quick_gelu_forward(x.data(), y.data(), int64_t(x.size()), isa);
    quick_gelu_backward(x.data(), g.data(), gx.data(), int64_t(x.size()), isa);
    for (size_t i = 0; i < x.size(); ++i) {
      expect_close(y[i], ref_forward(x[i]), std::abs(ref_forward(x[i])), "forward", x[i], isa);
      expect_close(gx[i], ref_backward(x[i], g[i]), backward_scale(x[i], g[i]), "backward", x[i], isa);
    }
    // In place, and a NaN stays a NaN.
    std::vector<float> z = x;
    z[5] = std::numeric_limits<float>::quiet_NaN();
    quick_gelu_forward(z.data(), z.data(), int64_t(z.size()), isa);
    EXPECT_TRUE(std::isnan(z[5]));
    EXPECT_EQ(z[6], y[6]);
  }
}

TEST(QuickGeluKernel, Bf16IsTheFloatResultRoundedOnce) {
  // The bf16 kernels compute in float what the float kernels compute from the same values and
  // round once: bit for bit the float kernel's result rounded to nearest even.
  std::vector<uint16_t> x, g;
  for (const float v : inputs()) x.push_back(to_bf16(v));
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (size_t i = 0; i < x.size(); ++i) g.push_back(to_bf16(normal(rng)));
  std::vector<float> xf, gf;
  for (size_t i = 0; i < x.size(); ++i) {
    xf.push_back(from_bf16(x[i]));
    gf.push_back(from_bf16(g[i]));
  }
  const auto n = int64_t(x.size());
  for (const Isa isa : supported_isas()) {
    std::vector<uint16_t> y(x.size()), gx(x.size());
    std::vector<float> yf(x.size()), gxf(x.size());
    quick_gelu_forward(x.data(), y.data(), n, isa);
    quick_gelu_backward(x.data(), g.data(), gx.data(), n, isa);
    quick_gelu_forward(xf.data(), yf.data(), n, isa);
    quick_gelu_backward(xf.data(), gf.data(), gxf.data(), n, isa);
    for (size_t i = 0; i < x.size(); ++i) {
      EXPECT_EQ(y[i], to_bf16(yf[i])) << "forward at " << xf[i] << " (" << isa_name(isa) << ")";
      EXPECT_EQ(gx[i], to_bf16(gxf[i])) << "backward at " << xf[i] << " (" << isa_name(isa) << ")";
    }
    std::vector<uint16_t> nan{0x7FC0u, 0xFFC1u};
    quick_gelu_forward(nan.data(), nan.data(), 2, isa);
    EXPECT_TRUE(std::isnan(from_bf16(nan[0])) && std::isnan(from_bf16(nan[1])));
  }
}

TEST(QuickGeluKernel, TheBestInstructionSetIsAmongTheSupportedOnes) {
  const std::vector<Isa> all = supported_isas();
  EXPECT_EQ(all.back(), best_isa());
  EXPECT_STRNE(isa_name(best_isa()), "");
}

}  // namespace
}  // namespace lorarec::model::kernel
