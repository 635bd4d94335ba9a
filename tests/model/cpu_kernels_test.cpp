#include "model/cpu_kernels.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "lorarecycle/util/error.h"

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
  // Below AVX-512 the bf16 kernels compute in float what the float kernels compute from the same
  // values and round once: bit for bit the float kernel's result rounded to nearest even. Under
  // AVX-512 they compute to bf16's precision (cpu_kernels.h): each result within one bf16 step of
  // the formula (and of the float kernel's rounded result), and equal to that rounded result for
  // at least 99 % of the values, the tails (0 with x's sign, x itself) and NaN exactly. No result
  // here is a float denormal, which the AVX512-BF16 path flushes to zero (softmax test below).
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
    const bool bf16_precision = isa >= Isa::kAvx512;
    std::vector<uint16_t> y(x.size()), gx(x.size());
    std::vector<float> yf(x.size()), gxf(x.size());
    quick_gelu_forward(x.data(), y.data(), n, isa);
    quick_gelu_backward(x.data(), g.data(), gx.data(), n, isa);
    quick_gelu_forward(xf.data(), yf.data(), n, isa);
    quick_gelu_backward(xf.data(), gf.data(), gxf.data(), n, isa);
    size_t off_forward = 0, off_backward = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const std::string where = " at " + std::to_string(xf[i]) + " (" + isa_name(isa) + ")";
      if (!bf16_precision) {
        EXPECT_EQ(y[i], to_bf16(yf[i])) << "forward" << where;
        EXPECT_EQ(gx[i], to_bf16(gxf[i])) << "backward" << where;
        continue;
      }
      off_forward += y[i] != to_bf16(yf[i]);
      off_backward += gx[i] != to_bf16(gxf[i]);
      const double step = 1.0 / 128;  // a bf16 step, relative, at most
      EXPECT_LE(std::abs(from_bf16(y[i]) - ref_forward(xf[i])), step * std::abs(ref_forward(xf[i])) + kTinyAbs)
          << "forward" << where;
      EXPECT_LE(std::abs(from_bf16(gx[i]) - ref_backward(xf[i], gf[i])),
                step * std::abs(ref_backward(xf[i], gf[i])) + kRelTol * backward_scale(xf[i], gf[i]) + kTinyAbs)
          << "backward" << where;
      if (std::abs(xf[i]) >= 60.0f) {
        EXPECT_EQ(y[i], to_bf16(yf[i])) << "forward tail" << where;
      }
    }
    EXPECT_LE(off_forward, x.size() / 100) << isa_name(isa);
    EXPECT_LE(off_backward, x.size() / 100) << isa_name(isa);
    std::vector<uint16_t> nan{0x7FC0u, 0xFFC1u};
    quick_gelu_forward(nan.data(), nan.data(), 2, isa);
    EXPECT_TRUE(std::isnan(from_bf16(nan[0])) && std::isnan(from_bf16(nan[1])));
  }
}

TEST(QuickGeluKernel, ForwardWithGradIsTheForwardAndItsDerivative) {
  // Where it runs (AVX-512): y bit for bit quick_gelu_forward's; d within one bf16 step of the
  // derivative at x, so that g * d rounded (the node's backward) is within two steps of the
  // formula's gradient; the tails as the forward's; everywhere else it throws.
  std::vector<uint16_t> x, g;
  for (const float v : inputs()) x.push_back(to_bf16(v));
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (size_t i = 0; i < x.size(); ++i) g.push_back(to_bf16(normal(rng)));
  const auto n = int64_t(x.size());
  for (const Isa isa : {Isa::kGeneric, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16}) {
    std::vector<uint16_t> y(x.size()), d(x.size()), y_ref(x.size());
    if (!quick_gelu_with_grad_supported(isa)) {
      EXPECT_TRUE(isa < Isa::kAvx512 || isa > best_isa()) << isa_name(isa);
      EXPECT_THROW(quick_gelu_forward_with_grad(x.data(), y.data(), d.data(), n, isa), RuntimeError);
      continue;
    }
    quick_gelu_forward_with_grad(x.data(), y.data(), d.data(), n, isa);
    quick_gelu_forward(x.data(), y_ref.data(), n, isa);
    const double step = 1.0 / 128;  // a bf16 step, relative, at most
    for (size_t i = 0; i < x.size(); ++i) {
      const float xi = from_bf16(x[i]), gi = from_bf16(g[i]);
      const std::string where = " at " + std::to_string(xi) + " (" + isa_name(isa) + ")";
      EXPECT_EQ(y[i], y_ref[i]) << "forward" << where;
      const double di = ref_backward(xi, 1.0f), gxi = ref_backward(xi, gi);
      EXPECT_LE(std::abs(from_bf16(d[i]) - di), step * std::abs(di) + kRelTol * backward_scale(xi, 1.0f) + kTinyAbs)
          << "derivative" << where;
      const float gx = from_bf16(to_bf16(gi * from_bf16(d[i])));
      EXPECT_LE(std::abs(gx - gxi), 2 * step * std::abs(gxi) + kRelTol * backward_scale(xi, gi) + kTinyAbs)
          << "gradient" << where;
    }
    std::vector<uint16_t> nan{0x7FC0u, 0xFFC1u}, nd(2);
    quick_gelu_forward_with_grad(nan.data(), nan.data(), nd.data(), 2, isa);
    EXPECT_TRUE(std::isnan(from_bf16(nan[0])) && std::isnan(from_bf16(nan[1])) && std::isnan(from_bf16(nd[0])));
  }
}

// Rows of several lengths (shorter than, equal to and longer than the 16 lanes, the ViT's 17 and
// 65) with a wide spread, one row holding -inf (probability 0) and one a NaN (a NaN row).
struct Rows {
  int64_t n;
  std::vector<float> x, g;
};
std::vector<Rows> softmax_inputs() {
  std::mt19937 rng(10);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  std::vector<Rows> out;
  for (const int64_t n : {1, 5, 16, 17, 33, 65}) {
    Rows r{n, std::vector<float>(size_t(7 * n)), std::vector<float>(size_t(7 * n))};
    for (float& v : r.x) v = normal(rng);
    for (float& v : r.g) v = normal(rng) / 4;
    r.x[size_t(n)] += 150.0f;  // far above the rest: the others underflow
    if (n > 1) r.x[size_t(2 * n + 1)] = -std::numeric_limits<float>::infinity();
    r.x[size_t(3 * n)] = std::numeric_limits<float>::quiet_NaN();
    out.push_back(std::move(r));
  }
  return out;
}

TEST(SoftmaxKernel, EveryInstructionSetMatchesTheFormulaInFloat) {
  for (const Isa isa : supported_isas()) {
    for (const Rows& in : softmax_inputs()) {
      const int64_t n = in.n, rows = int64_t(in.x.size()) / n;
      std::vector<float> y(in.x.size()), gx(in.x.size());
      softmax_rows(in.x.data(), y.data(), rows, n, isa);
      softmax_rows_backward(y.data(), in.g.data(), gx.data(), rows, n, isa);
      for (int64_t r = 0; r < rows; ++r) {
        const float* x = in.x.data() + r * n;
        if (r == 3) {  // the NaN row
          for (int64_t i = 0; i < n; ++i) EXPECT_TRUE(std::isnan(y[size_t(r * n + i)])) << isa_name(isa);
          continue;
        }
        double mx = -INFINITY, sum = 0, dot = 0;
        for (int64_t i = 0; i < n; ++i) mx = std::max(mx, double(x[i]));
        for (int64_t i = 0; i < n; ++i) sum += std::exp(double(x[i] - float(mx)));
        std::vector<double> p(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) p[size_t(i)] = std::exp(double(x[i] - float(mx))) / sum;
        for (int64_t i = 0; i < n; ++i) dot += p[size_t(i)] * in.g[size_t(r * n + i)];
        for (int64_t i = 0; i < n; ++i) {
          if (std::isinf(x[i])) {  // -inf: probability 0 and gradient 0, exactly
            EXPECT_EQ(y[size_t(r * n + i)], 0.0f) << isa_name(isa);
            EXPECT_EQ(gx[size_t(r * n + i)], 0.0f) << isa_name(isa);
            continue;
          }
          // exp multiplies the rounding of x - max by |x - max|; below exp's clamp the value is 0.
          const double t = std::abs(double(x[i]) - mx), got = y[size_t(r * n + i)], want = p[size_t(i)];
          EXPECT_LE(std::abs(got - want), 1e-6 * want * (1 + t) + 1e-37)
              << "n " << n << " row " << r << " x " << x[i] << " (" << isa_name(isa) << ")";
          const double gw = p[size_t(i)] * (in.g[size_t(r * n + i)] - dot);
          const double scale = p[size_t(i)] * (std::abs(in.g[size_t(r * n + i)]) + std::abs(dot));
          EXPECT_LE(std::abs(gx[size_t(r * n + i)] - gw), 1e-6 * scale * (1 + t) + 1e-37)
              << "backward, n " << n << " row " << r << " (" << isa_name(isa) << ")";
        }
      }
    }
  }
}

TEST(SoftmaxKernel, Bf16IsTheFloatResultRoundedOnce) {
  for (const Isa isa : supported_isas()) {
    for (const Rows& in : softmax_inputs()) {
      const int64_t n = in.n, rows = int64_t(in.x.size()) / n;
      std::vector<uint16_t> xb, gb;
      std::vector<float> xf, gf;
      for (size_t i = 0; i < in.x.size(); ++i) {
        xb.push_back(to_bf16(in.x[i]));
        gb.push_back(to_bf16(in.g[i]));
        xf.push_back(from_bf16(xb.back()));
        gf.push_back(from_bf16(gb.back()));
      }
      std::vector<uint16_t> yb(xb.size()), gxb(xb.size());
      std::vector<float> yf(xb.size()), gxf(xb.size()), yr(xb.size());
      softmax_rows(xb.data(), yb.data(), rows, n, isa);
      softmax_rows(xf.data(), yf.data(), rows, n, isa);
      // The backward from the same (bf16) output: in float from its values.
      for (size_t i = 0; i < yb.size(); ++i) yr[i] = from_bf16(yb[i]);
      softmax_rows_backward(yb.data(), gb.data(), gxb.data(), rows, n, isa);
      softmax_rows_backward(yr.data(), gf.data(), gxf.data(), rows, n, isa);
      for (size_t i = 0; i < yb.size(); ++i) {
        if (std::isnan(yf[i])) {
          EXPECT_TRUE(std::isnan(from_bf16(yb[i])));
          continue;
        }
        EXPECT_EQ(yb[i], to_bf16(yf[i])) << "n " << n << " at " << i << " (" << isa_name(isa) << ")";
        EXPECT_EQ(gxb[i], to_bf16(gxf[i])) << "backward, n " << n << " at " << i << " (" << isa_name(isa) << ")";
      }
    }
  }
}

TEST(SoftmaxKernel, Bf16DenormalResultsFollowTheInstructionSet) {
  // Row [0, 0, -87]: the last probability, e^-87 / 2 ~ 8.2e-39, is a float denormal. bf16 results
  // are the float result rounded (a bf16 denormal), except under AVX512-BF16's conversion
  // instruction, which flushes denormals to zero (cpu_kernels.h).
  const std::vector<uint16_t> x{to_bf16(0.0f), to_bf16(0.0f), to_bf16(-87.0f)};
  const std::vector<float> xf{0.0f, 0.0f, -87.0f};
  for (const Isa isa : supported_isas()) {
    std::vector<uint16_t> y(3);
    std::vector<float> yf(3);
    softmax_rows(x.data(), y.data(), 1, 3, isa);
    softmax_rows(xf.data(), yf.data(), 1, 3, isa);
    ASSERT_GT(yf[2], 0.0f) << isa_name(isa);
    ASSERT_LT(yf[2], std::numeric_limits<float>::min()) << isa_name(isa);
    EXPECT_EQ(y[0], to_bf16(yf[0])) << isa_name(isa);
    EXPECT_EQ(y[2], isa == Isa::kAvx512Bf16 ? uint16_t(0) : to_bf16(yf[2])) << isa_name(isa);
  }
}

// Rows for LayerNorm: lengths below, at and above the 16 lanes (5, 17: the loops; 16, 128: the
// AVX-512 rows), an offset far from zero (the second pass keeps the variance exact where one pass
// of sum and sum of squares would cancel), a constant row (variance 0: eps alone) and a NaN row.
struct NormRows {
  int64_t n;
  std::vector<float> x, g, w, b;
};
std::vector<NormRows> layer_norm_inputs() {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<NormRows> out;
  for (const int64_t n : {5, 16, 17, 128}) {
    NormRows r{n, std::vector<float>(size_t(6 * n)), std::vector<float>(size_t(6 * n)), {}, {}};
    for (float& v : r.x) v = normal(rng);
    for (float& v : r.g) v = normal(rng);
    for (int64_t i = 0; i < n; ++i) {
      r.w.push_back(1.0f + normal(rng) / 4);
      r.b.push_back(normal(rng) / 4);
      r.x[size_t(n + i)] += 1000.0f;
      r.x[size_t(2 * n + i)] = 3.0f;
    }
    r.x[size_t(3 * n)] = std::numeric_limits<float>::quiet_NaN();
    out.push_back(std::move(r));
  }
  return out;
}

TEST(LayerNormKernel, EveryInstructionSetMatchesTheFormulaInFloat) {
  // Against the formulas in double (two-pass moments), relative to the terms' size: y against
  // |xh w| + |b|, gx against rstd (|d| + |mean d| + |xh mean(d xh)|), each plus the rounding of the
  // float mean carried by x - mean; the NaN row stays NaN.
  const float eps = 1e-5f;
  for (const Isa isa : supported_isas()) {
    for (const NormRows& in : layer_norm_inputs()) {
      const int64_t n = in.n, rows = int64_t(in.x.size()) / n;
      std::vector<float> y(in.x.size()), gx(in.x.size()), mean(static_cast<size_t>(rows)),
          rstd(static_cast<size_t>(rows));
      layer_norm_rows(in.x.data(), in.w.data(), in.b.data(), y.data(), mean.data(), rstd.data(), rows, n, eps, isa);
      layer_norm_rows_backward(in.x.data(), mean.data(), rstd.data(), in.w.data(), in.g.data(), gx.data(), rows, n,
                               isa);
      for (int64_t r = 0; r < rows; ++r) {
        const float* x = in.x.data() + r * n;
        const float* g = in.g.data() + r * n;
        if (r == 3) {
          for (int64_t i = 0; i < n; ++i) EXPECT_TRUE(std::isnan(y[size_t(r * n + i)])) << isa_name(isa);
          continue;
        }
        double m = 0, v = 0, md = 0, mdx = 0;
        for (int64_t i = 0; i < n; ++i) m += x[i];
        m /= double(n);
        for (int64_t i = 0; i < n; ++i) v += (x[i] - m) * (x[i] - m);
        const double rs = 1.0 / std::sqrt(v / double(n) + eps);
        EXPECT_NEAR(mean[size_t(r)], m, 1e-6 * (std::abs(m) + 1)) << isa_name(isa);
        EXPECT_NEAR(rstd[size_t(r)], rs, 1e-5 * rs) << "n " << n << " row " << r << " (" << isa_name(isa) << ")";
        for (int64_t i = 0; i < n; ++i) {
          const double xh = (x[i] - m) * rs, d = double(g[i]) * in.w[size_t(i)];
          md += d / double(n);
          mdx += d * xh / double(n);
        }
        for (int64_t i = 0; i < n; ++i) {
          const double xh = (x[i] - m) * rs, d = double(g[i]) * in.w[size_t(i)];
          const double want = xh * in.w[size_t(i)] + in.b[size_t(i)];
          // x - mean carries the rounding of the float mean (2 ulps of |mean|; the offset row).
          const double xh_err = 2.4e-7 * std::abs(m) * rs;
          const double scale = std::abs(xh * in.w[size_t(i)]) + std::abs(in.b[size_t(i)]);
          EXPECT_LE(std::abs(y[size_t(r * n + i)] - want), 2e-5 * scale + xh_err * std::abs(in.w[size_t(i)]))
              << "n " << n << " row " << r << " (" << isa_name(isa) << ")";
          const double gw = rs * (d - md - xh * mdx);
          const double gscale = rs * (std::abs(d) + std::abs(md) + std::abs(xh * mdx));
          EXPECT_LE(std::abs(gx[size_t(r * n + i)] - gw), 2e-5 * gscale + rs * xh_err * std::abs(mdx))
              << "backward, n " << n << " row " << r << " (" << isa_name(isa) << ")";
        }
      }
    }
  }
}

TEST(LayerNormKernel, Bf16IsTheFloatResultRoundedOnce) {
  // bf16 output: bit for bit the float kernel's output rounded to nearest even (same moments); the
  // backward from a bf16 gradient: bit for bit the float backward from the same values.
  const float eps = 1e-5f;
  for (const Isa isa : supported_isas()) {
    for (const NormRows& in : layer_norm_inputs()) {
      const int64_t n = in.n, rows = int64_t(in.x.size()) / n;
      std::vector<uint16_t> yb(in.x.size()), gb;
      std::vector<float> yf(in.x.size()), gf, mb(static_cast<size_t>(rows)), rb(static_cast<size_t>(rows)),
          mf(static_cast<size_t>(rows)), rf(static_cast<size_t>(rows));
      layer_norm_rows(in.x.data(), in.w.data(), in.b.data(), yb.data(), mb.data(), rb.data(), rows, n, eps, isa);
      layer_norm_rows(in.x.data(), in.w.data(), in.b.data(), yf.data(), mf.data(), rf.data(), rows, n, eps, isa);
      for (const float v : in.g) {
        gb.push_back(to_bf16(v));
        gf.push_back(from_bf16(gb.back()));
      }
      std::vector<float> gxb(in.x.size()), gxf(in.x.size());
      layer_norm_rows_backward(in.x.data(), mb.data(), rb.data(), in.w.data(), gb.data(), gxb.data(), rows, n, isa);
      layer_norm_rows_backward(in.x.data(), mf.data(), rf.data(), in.w.data(), gf.data(), gxf.data(), rows, n, isa);
      for (size_t i = 0; i < yb.size(); ++i) {
        if (std::isnan(yf[i])) {
          EXPECT_TRUE(std::isnan(from_bf16(yb[i])));
          continue;
        }
        EXPECT_EQ(yb[i], to_bf16(yf[i])) << "n " << n << " at " << i << " (" << isa_name(isa) << ")";
        EXPECT_EQ(gxb[i], gxf[i]) << "backward, n " << n << " at " << i << " (" << isa_name(isa) << ")";
      }
    }
  }
}

TEST(AddLayerNormKernel, IsTheAddThenTheLayerNorm) {
  // add_layer_norm_rows against its two steps: v exactly (x + y) + bias in float, with y float or
  // bf16 and with and without a bias; h against layer_norm_rows of v (float within rounding, bf16
  // within one bf16 step: the two may run differently compiled loops); the backward against
  // layer_norm_rows_backward plus the gradient from further on (or none), and y's bf16 gradient
  // exactly that sum rounded once.
  const float eps = 1e-5f;
  for (const Isa isa : supported_isas()) {
    for (const NormRows& in : layer_norm_inputs()) {
      const int64_t n = in.n, rows = int64_t(in.x.size()) / n;
      const size_t N = in.x.size(), R = static_cast<size_t>(rows);
      std::vector<float> y(N), gout(N), bias(static_cast<size_t>(n));
      std::vector<uint16_t> y16(N);
      std::mt19937 rng(12);
      std::normal_distribution<float> normal(0.0f, 1.0f);
      for (size_t i = 0; i < N; ++i) {
        y16[i] = to_bf16(normal(rng));
        y[i] = normal(rng);
        gout[i] = normal(rng);
      }
      for (float& b : bias) b = normal(rng);
      for (const bool bf16_y : {false, true}) {
        for (const bool with_bias : {false, true}) {
          const float* bp = with_bias ? bias.data() : nullptr;
          std::vector<float> v(N), h(N), mean(R), rstd(R), want_v(N), want_h(N), m2(R), r2(R);
          std::vector<uint16_t> h16(N);
          if (bf16_y) {
            add_layer_norm_rows(in.x.data(), y16.data(), bp, v.data(), in.w.data(), in.b.data(), h.data(), mean.data(),
                                rstd.data(), rows, n, eps, isa);
            add_layer_norm_rows(in.x.data(), y16.data(), bp, v.data(), in.w.data(), in.b.data(), h16.data(),
                                mean.data(), rstd.data(), rows, n, eps, isa);
          } else {
            add_layer_norm_rows(in.x.data(), y.data(), bp, v.data(), in.w.data(), in.b.data(), h.data(), mean.data(),
                                rstd.data(), rows, n, eps, isa);
            add_layer_norm_rows(in.x.data(), y.data(), bp, v.data(), in.w.data(), in.b.data(), h16.data(), mean.data(),
                                rstd.data(), rows, n, eps, isa);
          }
          for (size_t i = 0; i < N; ++i)
            want_v[i] = (in.x[i] + (bf16_y ? from_bf16(y16[i]) : y[i])) + (with_bias ? bias[i % size_t(n)] : 0.0f);
          layer_norm_rows(want_v.data(), in.w.data(), in.b.data(), want_h.data(), m2.data(), r2.data(), rows, n, eps,
                          isa);
          for (size_t i = 0; i < N; ++i) {
            const std::string where = std::string(isa_name(isa)) + " n " + std::to_string(n) + " at " +
                                      std::to_string(i) + (bf16_y ? " bf16 y" : "") + (with_bias ? " bias" : "");
            if (std::isnan(want_v[i]) || std::isnan(want_h[i])) {
              EXPECT_TRUE(std::isnan(h[i])) << where;
              continue;
            }
            EXPECT_EQ(v[i], want_v[i]) << where;
            EXPECT_NEAR(h[i], want_h[i], 1e-6 * (std::abs(want_h[i]) + 1)) << where;
            EXPECT_NEAR(from_bf16(h16[i]), h[i], std::abs(h[i]) / 128 + 1e-30) << where;
          }
          // The backward, with and without a gradient from further on.
          for (const bool with_out : {false, true}) {
            std::vector<float> gv(N), want(N);
            std::vector<uint16_t> gy16(N);
            add_layer_norm_rows_backward(v.data(), mean.data(), rstd.data(), in.w.data(), in.g.data(),
                                         with_out ? gout.data() : nullptr, gv.data(), gy16.data(), rows, n, isa);
            layer_norm_rows_backward(v.data(), mean.data(), rstd.data(), in.w.data(), in.g.data(), want.data(), rows, n,
                                     isa);
            for (size_t i = 0; i < N; ++i) {
              if (std::isnan(want[i])) continue;
              const float w = want[i] + (with_out ? gout[i] : 0.0f);
              EXPECT_NEAR(gv[i], w, 1e-6 * (std::abs(w) + 1)) << isa_name(isa) << " n " << n << " at " << i;
              EXPECT_EQ(gy16[i], to_bf16(gv[i])) << isa_name(isa) << " n " << n << " at " << i;
            }
          }
        }
      }
    }
  }
}

TEST(QuickGeluKernel, TheBestInstructionSetIsAmongTheSupportedOnes) {
  const std::vector<Isa> all = supported_isas();
  EXPECT_EQ(all.back(), best_isa());
  EXPECT_STRNE(isa_name(best_isa()), "");
}

}  // namespace
}  // namespace lorarec::model::kernel
