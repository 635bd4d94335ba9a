#include "model/cpu_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "lorarecycle/util/env.h"
#include "lorarecycle/util/error.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LORAREC_X86_KERNELS 1
#include <immintrin.h>
#define LORAREC_AVX2 __attribute__((target("avx2,fma")))
#define LORAREC_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define LORAREC_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx512bf16")))
#endif

// Built with -O3 and, under GCC, -fno-tree-pre (CMakeLists.txt says why) so that the loops below vectorise; every line
// of them is plain float arithmetic the compiler can map to SIMD (no libm calls, no branches).

#define LORAREC_ALWAYS_INLINE inline __attribute__((always_inline))

namespace lorarec::model::kernel {
namespace {

constexpr float kAlpha = 1.702f;  // QuickGELU's slope (CLIP)

LORAREC_ALWAYS_INLINE uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

LORAREC_ALWAYS_INLINE float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

LORAREC_ALWAYS_INLINE float load(float v) { return v; }
LORAREC_ALWAYS_INLINE float load(uint16_t v) { return float_of(uint32_t(v) << 16); }

LORAREC_ALWAYS_INLINE void store(float v, float* out) { *out = v; }
// bf16, round to nearest even; a NaN stays a (quiet) NaN.
LORAREC_ALWAYS_INLINE void store(float v, uint16_t* out) {
  const uint32_t u = bits_of(v);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  *out = static_cast<uint16_t>(v != v ? 0x7FC0u : rounded);
}

// n floats stored as bf16 by AVX512-BF16's conversion instruction (round to nearest even, a NaN
// stays a quiet NaN; unlike store() above it flushes denormal values to zero, as every bf16
// instruction does). Its loop's float results go through a buffer to reach it; a call per block, as
// a function of another target cannot be inlined into the loops.
#ifdef LORAREC_X86_KERNELS
LORAREC_AVX512BF16 void store_bf16_native(const float* v, uint16_t* out, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(v + i)));
  if (i < n) {
    const auto m = static_cast<__mmask16>((1u << (n - i)) - 1u);
    _mm256_mask_storeu_epi16(out + i, m, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, v + i)));
  }
}
#else
[[maybe_unused]] LORAREC_ALWAYS_INLINE void store_bf16_native(const float* v, uint16_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) store(v[i], out + i);
}
#endif

// Values a loop writes through a float buffer per block under kNative (bf16 only).
constexpr int64_t kBlock = 256;

// exp(t) for the sigmoid: t clamped to [-87, 88] (normal results; exp(-87) is 1.6e-38, so
// sigmoid's tails come out as exact 0 and 1 as libm's do in float). t = n ln2 + r with |r| <= ln2/2
// (n by the 1.5 * 2^23 rounding trick), exp(r) by the Cephes expf polynomial, 2^n by the exponent
// bits.
LORAREC_ALWAYS_INLINE float exp_clamped(float t) {
  t = t < -87.0f ? -87.0f : t;
  t = t > 88.0f ? 88.0f : t;
  const float shifted = t * 1.44269504088896341f + 12582912.0f;  // 1.5 * 2^23: n lands in the low bits
  const float n = shifted - 12582912.0f;
  const float r = (t - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t k = static_cast<int32_t>(bits_of(shifted) - bits_of(12582912.0f));  // n as an integer
  return p * float_of(static_cast<uint32_t>(k + 127) << 23);
}

// s = sigmoid(1.702 x) and 1 - s = e s with e = exp(-1.702 x) (no cancellation where s is near 1).
// Past exp's clamp at either end s and 1 - s are 0 exactly, so that x s and x (1 - s) are 0 for the
// largest |x| too (not x e^-88).
struct Sigmoid {
  float s, one_minus_s;
};
LORAREC_ALWAYS_INLINE Sigmoid sigmoid_of_scaled(float x) {
  const float t = -kAlpha * x;
  const float e = exp_clamped(t);
  // Multiplied by 0 or 1 rather than selected: a select of a division is a branch that the AVX2
  // and SSE loops do not vectorise (GCC 12), and both factors are finite.
  const float s = (1.0f / (1.0f + e)) * static_cast<float>(t <= 88.0f);
  return {s, (e * s) * static_cast<float>(t >= -87.0f)};
}

template <typename T>
LORAREC_ALWAYS_INLINE float forward_value(const T* x, int64_t i) {
  const float v = load(x[i]);
  return v * sigmoid_of_scaled(v).s;
}

template <bool kNative, typename T>
LORAREC_ALWAYS_INLINE void forward_loop(const T* x, T* y, int64_t n) {
  if constexpr (kNative) {
    float buf[kBlock];
    for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
      const int64_t m = std::min(kBlock, n - i0);
      for (int64_t i = 0; i < m; ++i) buf[i] = forward_value(x + i0, i);
      store_bf16_native(buf, y + i0, m);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) store(forward_value(x, i), y + i);
  }
}

// d/dx [x s] = s + 1.702 x s (1 - s), multiplied in an order that stays finite at both ends of the
// float range (x s first, then 1 - s, then 1.702).
template <typename T>
LORAREC_ALWAYS_INLINE float backward_value(const T* x, const T* g, int64_t i) {
  const float v = load(x[i]);
  const Sigmoid sg = sigmoid_of_scaled(v);
  return load(g[i]) * (sg.s + kAlpha * ((v * sg.s) * sg.one_minus_s));
}

template <bool kNative, typename T>
LORAREC_ALWAYS_INLINE void backward_loop(const T* x, const T* g, T* gx, int64_t n) {
  if constexpr (kNative) {
    float buf[kBlock];
    for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
      const int64_t m = std::min(kBlock, n - i0);
      for (int64_t i = 0; i < m; ++i) buf[i] = backward_value(x + i0, g + i0, i);
      store_bf16_native(buf, gx + i0, m);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) store(backward_value(x, g, i), gx + i);
  }
}

// ---- softmax over rows --------------------------------------------------------------------

// Lanes of the sums: independent accumulators that the compiler maps to vector registers (one
// running sum would be one long dependency chain, and float sums are not reordered for it).
constexpr int kLanes = 16;

// exp(t), exactly 0 below exp's clamp (a -inf logit gets probability 0).
LORAREC_ALWAYS_INLINE float exp_or_zero(float t) { return exp_clamped(t) * static_cast<float>(t >= -87.0f); }

// A float's bits as an int that orders as the float does (NaNs above +inf): the row's max as an
// integer max, which vectorises where a float max (NaN and -0 rules) does not.
LORAREC_ALWAYS_INLINE int32_t order_key(float v) {
  const auto b = static_cast<int32_t>(bits_of(v));
  return b ^ ((b >> 31) & 0x7FFFFFFF);
}
LORAREC_ALWAYS_INLINE float from_order_key(int32_t k) {
  return float_of(static_cast<uint32_t>(k ^ ((k >> 31) & 0x7FFFFFFF)));
}

LORAREC_ALWAYS_INLINE float lane_sum(const float* lane) {
  float sum = 0.0f;
  for (int j = 0; j < kLanes; ++j) sum += lane[j];
  return sum;
}

// y = softmax(x) over one row of n, in float; e holds the row's exponentials.
template <bool kNative, typename T>
LORAREC_ALWAYS_INLINE void softmax_row(const T* __restrict x, T* __restrict y, float* __restrict e, int64_t n) {
  int32_t key = order_key(-__builtin_inff());
  for (int64_t i = 0; i < n; ++i) {
    const int32_t k = order_key(load(x[i]));
    key = k > key ? k : key;
  }
  const float mx = from_order_key(key);
  for (int64_t i = 0; i < n; ++i) e[i] = exp_or_zero(load(x[i]) - mx);
  float lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lane[j] += e[i + j];
  float sum = lane_sum(lane);
  for (; i < n; ++i) sum += e[i];
  const float inv = 1.0f / sum;
  if constexpr (kNative) {
    for (i = 0; i < n; ++i) e[i] *= inv;
    store_bf16_native(e, y, n);
  } else {
    for (i = 0; i < n; ++i) store(e[i] * inv, y + i);
  }
}

// gx = y (g - <g, y>) over one row of n (through e, n floats, under kNative only).
template <bool kNative, typename T>
LORAREC_ALWAYS_INLINE void softmax_backward_row(const T* __restrict y, const T* g, T* gx, float* __restrict e,
                                                int64_t n) {
  float lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lane[j] += load(g[i + j]) * load(y[i + j]);
  float dot = lane_sum(lane);
  for (; i < n; ++i) dot += load(g[i]) * load(y[i]);
  if constexpr (kNative) {
    for (i = 0; i < n; ++i) e[i] = load(y[i]) * (load(g[i]) - dot);
    store_bf16_native(e, gx, n);
  } else {
    for (i = 0; i < n; ++i) store(load(y[i]) * (load(g[i]) - dot), gx + i);
  }
}

template <bool kNative, typename T>
LORAREC_ALWAYS_INLINE void softmax_loop(const T* x, T* y, int64_t rows, int64_t n, float* e) {
  for (int64_t r = 0; r < rows; ++r) softmax_row<kNative>(x + r * n, y + r * n, e, n);
}

template <bool kNative, typename T>
LORAREC_ALWAYS_INLINE void softmax_backward_loop(const T* y, const T* g, T* gx, int64_t rows, int64_t n, float* e) {
  for (int64_t r = 0; r < rows; ++r) softmax_backward_row<kNative>(y + r * n, g + r * n, gx + r * n, e, n);
}

// ---- LayerNorm over rows ------------------------------------------------------------------

LORAREC_ALWAYS_INLINE float row_sum(const float* __restrict v, int64_t n) {
  float lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lane[j] += v[i + j];
  float sum = lane_sum(lane);
  for (; i < n; ++i) sum += v[i];
  return sum;
}

// One row: its moments (two passes, the second over x - mean), then y; e holds n floats.
template <bool kNative, typename T>
LORAREC_ALWAYS_INLINE void layer_norm_row(const float* __restrict x, const float* __restrict w,
                                          const float* __restrict b, T* __restrict y, float* __restrict e,
                                          float* mean_out, float* rstd_out, int64_t n, float eps) {
  const float mean = row_sum(x, n) / static_cast<float>(n);
  for (int64_t i = 0; i < n; ++i) e[i] = (x[i] - mean) * (x[i] - mean);
  const float rstd = 1.0f / std::sqrt(row_sum(e, n) / static_cast<float>(n) + eps);
  *mean_out = mean;
  *rstd_out = rstd;
  if constexpr (kNative) {
    for (int64_t i = 0; i < n; ++i) e[i] = (x[i] - mean) * rstd * w[i] + b[i];
    store_bf16_native(e, y, n);
  } else {
    for (int64_t i = 0; i < n; ++i) store((x[i] - mean) * rstd * w[i] + b[i], y + i);
  }
}

template <bool kNative, typename T>
LORAREC_ALWAYS_INLINE void layer_norm_loop(const float* x, const float* w, const float* b, T* y, float* mean,
                                           float* rstd, int64_t rows, int64_t n, float eps, float* e) {
  for (int64_t r = 0; r < rows; ++r) layer_norm_row<kNative>(x + r * n, w, b, y + r * n, e, mean + r, rstd + r, n, eps);
}

// One row of the backward: e = g w, then its two means, then gx (+ add, where not null; also
// rounded to bf16 into out16, where not null: the fused residual's backward in the same pass).
template <typename T>
LORAREC_ALWAYS_INLINE void layer_norm_backward_row(const float* __restrict x, float mean, float rstd,
                                                   const float* __restrict w, const T* __restrict g, float* gx,
                                                   float* __restrict e, int64_t n, const float* add, uint16_t* out16) {
  for (int64_t i = 0; i < n; ++i) e[i] = load(g[i]) * w[i];
  const float mean_d = row_sum(e, n) / static_cast<float>(n);
  float lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lane[j] += e[i + j] * ((x[i + j] - mean) * rstd);
  float dot = lane_sum(lane);
  for (; i < n; ++i) dot += e[i] * ((x[i] - mean) * rstd);
  const float mean_dx = dot / static_cast<float>(n);
  for (i = 0; i < n; ++i) {
    const float v = rstd * (e[i] - mean_d - (x[i] - mean) * rstd * mean_dx) + (add != nullptr ? add[i] : 0.0f);
    gx[i] = v;
    if (out16 != nullptr) store(v, out16 + i);
  }
}

template <typename T>
LORAREC_ALWAYS_INLINE void layer_norm_backward_loop(const float* x, const float* mean, const float* rstd,
                                                    const float* w, const T* g, float* gx, int64_t rows, int64_t n,
                                                    float* e, const float* add, uint16_t* out16) {
  for (int64_t r = 0; r < rows; ++r)
    layer_norm_backward_row(x + r * n, mean[r], rstd[r], w, g + r * n, gx + r * n, e, n,
                            add != nullptr ? add + r * n : nullptr, out16 != nullptr ? out16 + r * n : nullptr);
}

// The residual add and LayerNorm (add_layer_norm_rows) as loops: v's row, then layer_norm_row.
template <typename Y, typename H>
LORAREC_ALWAYS_INLINE void add_layer_norm_loop(const float* x, const Y* y, const float* bias, float* v, const float* w,
                                               const float* b, H* h, float* mean, float* rstd, int64_t rows, int64_t n,
                                               float eps, float* e) {
  for (int64_t r = 0; r < rows; ++r) {
    float* vr = v + r * n;
    for (int64_t i = 0; i < n; ++i) vr[i] = x[r * n + i] + load(y[r * n + i]) + (bias != nullptr ? bias[i] : 0.0f);
    layer_norm_row<false>(vr, w, b, h + r * n, e, mean + r, rstd + r, n, eps);
  }
}

// Rows of n = 16 k floats under AVX-512, written with intrinsics: the loops above leave the lanes
// in memory and cost 0.28 ms over 5200 rows of 128 (twice what these take). The same formulas;
// the sums in another order, so results differ from the loops' by rounding.
#ifdef LORAREC_X86_KERNELS
// GCC 12 warns that the undefined vectors inside some intrinsics (_mm512_reduce_add_ps,
// _mm512_cvtepu16_epi32) may be used uninitialised: a false alarm of the headers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// 16 floats as bf16 bits, rounded as store() rounds: to nearest even, a NaN a quiet NaN.
LORAREC_AVX512 LORAREC_ALWAYS_INLINE __m256i bf16_bits16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(r);
}
// 16 bf16 bits as floats.
LORAREC_AVX512 LORAREC_ALWAYS_INLINE __m512 from_bf16_bits16(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
LORAREC_AVX512 inline void store16(__m512 v, float* out) { _mm512_storeu_ps(out, v); }
LORAREC_AVX512 inline void store16(__m512 v, uint16_t* out) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), bf16_bits16(v));
}
LORAREC_AVX512 inline __m512 load16(const float* in) { return _mm512_loadu_ps(in); }
LORAREC_AVX512 inline __m512 load16(const uint16_t* in) {
  return from_bf16_bits16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in)));
}

// A row's mean and rstd (also written out), as broadcast vectors.
struct Moments16 {
  __m512 mean, rstd;
};
LORAREC_AVX512 LORAREC_ALWAYS_INLINE Moments16 row_moments16(const float* x, int64_t n, float eps, float* mean,
                                                             float* rstd) {
  __m512 s = _mm512_setzero_ps(), q = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) s = _mm512_add_ps(s, _mm512_loadu_ps(x + i));
  *mean = _mm512_reduce_add_ps(s) / static_cast<float>(n);
  const __m512 vm = _mm512_set1_ps(*mean);
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x + i), vm);
    q = _mm512_fmadd_ps(d, d, q);
  }
  *rstd = 1.0f / std::sqrt(_mm512_reduce_add_ps(q) / static_cast<float>(n) + eps);
  return {vm, _mm512_set1_ps(*rstd)};
}
LORAREC_AVX512 LORAREC_ALWAYS_INLINE __m512 layer_norm16(const float* x, const float* w, const float* b,
                                                         const Moments16& mo, int64_t i) {
  const __m512 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), mo.mean), mo.rstd);
  return _mm512_fmadd_ps(xh, _mm512_loadu_ps(w + i), _mm512_loadu_ps(b + i));
}

template <typename T>
LORAREC_AVX512 void layer_norm_rows16(const float* x, const float* w, const float* b, T* y, float* mean, float* rstd,
                                      int64_t rows, int64_t n, float eps) {
  for (int64_t r = 0; r < rows; ++r, x += n, y += n) {
    const Moments16 mo = row_moments16(x, n, eps, mean + r, rstd + r);
    for (int64_t i = 0; i < n; i += 16) store16(layer_norm16(x, w, b, mo, i), y + i);
  }
}
// bf16 results by AVX512-BF16's conversion.
LORAREC_AVX512BF16 void layer_norm_rows16_native(const float* x, const float* w, const float* b, uint16_t* y,
                                                 float* mean, float* rstd, int64_t rows, int64_t n, float eps) {
  for (int64_t r = 0; r < rows; ++r, x += n, y += n) {
    const Moments16 mo = row_moments16(x, n, eps, mean + r, rstd + r);
    for (int64_t i = 0; i < n; i += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), (__m256i)_mm512_cvtneps_pbh(layer_norm16(x, w, b, mo, i)));
  }
}

// gx = the LayerNorm's input gradient (+ add, where not null), also stored rounded to bf16 in
// out16 where not null (the fused residual's backward, in the same pass).
template <typename T>
LORAREC_AVX512 void layer_norm_backward_rows16(const float* x, const float* mean, const float* rstd, const float* w,
                                               const T* g, float* gx, int64_t rows, int64_t n, const float* add,
                                               uint16_t* out16) {
  for (int64_t r = 0; r < rows; ++r, x += n, g += n, gx += n) {
    const __m512 vm = _mm512_set1_ps(mean[r]), vr = _mm512_set1_ps(rstd[r]);
    __m512 sd = _mm512_setzero_ps(), sdx = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
      const __m512 d = _mm512_mul_ps(load16(g + i), _mm512_loadu_ps(w + i));
      sd = _mm512_add_ps(sd, d);
      sdx = _mm512_fmadd_ps(d, _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm), vr), sdx);
    }
    const __m512 md = _mm512_set1_ps(_mm512_reduce_add_ps(sd) / static_cast<float>(n));
    const __m512 mdx = _mm512_set1_ps(_mm512_reduce_add_ps(sdx) / static_cast<float>(n));
    for (int64_t i = 0; i < n; i += 16) {
      const __m512 d = _mm512_mul_ps(load16(g + i), _mm512_loadu_ps(w + i));
      const __m512 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm), vr);
      __m512 out = _mm512_mul_ps(vr, _mm512_sub_ps(_mm512_sub_ps(d, md), _mm512_mul_ps(xh, mdx)));
      if (add != nullptr) out = _mm512_add_ps(out, _mm512_loadu_ps(add + r * n + i));
      _mm512_storeu_ps(gx + i, out);
      if (out16 != nullptr) store16(out, out16 + r * n + i);
    }
  }
}

// ---- bf16 QuickGELU at bf16's precision (AVX-512) -----------------------------------------
// The loops above are bound by their vector arithmetic here (about 27 operations per 16 values;
// this CPU retires about one 512-bit floating-point operation per cycle), and their float
// precision is lost in the bf16 store (steps of 2^-8, relative). For bf16 values under AVX-512:
// exp by a degree-4 minimax polynomial after range reduction (relative error 2.6e-6), 2^n by
// scalef, and 1 / (1 + e) by the 14-bit reciprocal estimate with one Newton step: each result
// within a few 1e-6 (relative) of the formula before its one rounding, so it may differ from the
// float kernel's rounded result by one bf16 step (1 of the test's 6,000 values). The tails are
// exact as in the loops: s is 0 past exp's clamp at the top and 1 - s is 0 at the bottom; a NaN x
// gives a NaN.

// load16 and store16 of the lanes in k only (a row's last, partial vector).
LORAREC_AVX512 LORAREC_ALWAYS_INLINE __m512 load16m(const uint16_t* in, __mmask16 k) {
  return from_bf16_bits16(_mm256_maskz_loadu_epi16(k, in));
}
LORAREC_AVX512 LORAREC_ALWAYS_INLINE void store16m(__m512 v, uint16_t* out, __mmask16 k) {
  _mm256_mask_storeu_epi16(out, k, bf16_bits16(v));
}
LORAREC_ALWAYS_INLINE __mmask16 lanes16(int64_t i, int64_t n) {  // the lanes of values i.. of n
  return n - i >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1u);
}

// s = sigmoid(1.702 x) and 1 - s = e s; `top`: lanes where s is kept (1.702 x >= -88 or NaN).
struct SigmoidLite16 {
  __m512 s, one_minus_s;
  __mmask16 top;
};
LORAREC_AVX512 LORAREC_ALWAYS_INLINE SigmoidLite16 sigmoid_lite16(__m512 x) {
  const __m512 t0 = _mm512_mul_ps(_mm512_set1_ps(-kAlpha), x);
  const __m512 t = _mm512_min_ps(_mm512_max_ps(t0, _mm512_set1_ps(-88.0f)), _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(t, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693147180559945309f), t);
  __m512 p = _mm512_set1_ps(0.0414619f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.16790926f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.50004321f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.9999634f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.99999928f));
  const __m512 e = _mm512_scalef_ps(p, n);
  const __m512 d = _mm512_add_ps(e, _mm512_set1_ps(1.0f));
  const __m512 s0 = _mm512_rcp14_ps(d);
  const __m512 s = _mm512_mul_ps(s0, _mm512_fnmadd_ps(d, s0, _mm512_set1_ps(2.0f)));  // one Newton step
  const __mmask16 top = _mm512_cmp_ps_mask(t0, _mm512_set1_ps(88.0f), _CMP_NGT_UQ);
  const __mmask16 bottom = _mm512_cmp_ps_mask(t0, _mm512_set1_ps(-87.0f), _CMP_NLT_UQ);
  return {s, _mm512_maskz_mul_ps(bottom, e, s), top};
}
LORAREC_AVX512 LORAREC_ALWAYS_INLINE __m512 gelu_lite16(__m512 x) {
  const SigmoidLite16 sg = sigmoid_lite16(x);
  return _mm512_mul_ps(x, _mm512_maskz_mov_ps(sg.top, sg.s));  // x 0 keeps x's sign, as the loops
}
// s (0 where it is not kept) and the derivative s + 1.702 x s (1 - s) at x.
struct GeluParts16 {
  __m512 s, derivative;
};
LORAREC_AVX512 LORAREC_ALWAYS_INLINE GeluParts16 gelu_parts16(__m512 x) {
  const SigmoidLite16 sg = sigmoid_lite16(x);
  const __m512 s = _mm512_maskz_mov_ps(sg.top, sg.s);
  const __m512 inner = _mm512_mul_ps(_mm512_mul_ps(x, s), sg.one_minus_s);
  return {s, _mm512_fmadd_ps(_mm512_set1_ps(kAlpha), inner, s)};
}
LORAREC_AVX512 LORAREC_ALWAYS_INLINE __m512 gelu_grad_lite16(__m512 x, __m512 g) {
  return _mm512_mul_ps(g, gelu_parts16(x).derivative);
}
LORAREC_AVX512 void gelu_lite_forward16(const uint16_t* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = lanes16(i, n);
    store16m(gelu_lite16(load16m(x + i, k)), y + i, k);
  }
}
LORAREC_AVX512 void gelu_lite_backward16(const uint16_t* x, const uint16_t* g, uint16_t* gx, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = lanes16(i, n);
    store16m(gelu_grad_lite16(load16m(x + i, k), load16m(g + i, k)), gx + i, k);
  }
}
// The same with AVX512-BF16's conversion for the store.
LORAREC_AVX512BF16 void gelu_lite_forward16_native(const uint16_t* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = lanes16(i, n);
    _mm256_mask_storeu_epi16(y + i, k, (__m256i)_mm512_cvtneps_pbh(gelu_lite16(load16m(x + i, k))));
  }
}
LORAREC_AVX512BF16 void gelu_lite_backward16_native(const uint16_t* x, const uint16_t* g, uint16_t* gx, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = lanes16(i, n);
    _mm256_mask_storeu_epi16(gx + i, k,
                             (__m256i)_mm512_cvtneps_pbh(gelu_grad_lite16(load16m(x + i, k), load16m(g + i, k))));
  }
}

// The forward that also writes its derivative (gelu_parts16), so that the backward is one
// multiplication: y and d rounded to bf16 once each.
// to_bits: the bf16 conversion of the caller's target (inlined there).
LORAREC_AVX512 LORAREC_ALWAYS_INLINE void gelu_lite_with_grad16_body(const uint16_t* x, uint16_t* y, uint16_t* d,
                                                                     int64_t n, __m256i (*to_bits)(__m512)) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = lanes16(i, n);
    const __m512 xv = load16m(x + i, k);
    const GeluParts16 p = gelu_parts16(xv);
    _mm256_mask_storeu_epi16(y + i, k, to_bits(_mm512_mul_ps(xv, p.s)));
    _mm256_mask_storeu_epi16(d + i, k, to_bits(p.derivative));
  }
}
LORAREC_AVX512 __m256i bf16_bits16_fn(__m512 v) { return bf16_bits16(v); }
LORAREC_AVX512BF16 __m256i bf16_bits16_native_fn(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); }
LORAREC_AVX512 void gelu_lite_with_grad16(const uint16_t* x, uint16_t* y, uint16_t* d, int64_t n) {
  gelu_lite_with_grad16_body(x, y, d, n, bf16_bits16_fn);
}
LORAREC_AVX512BF16 void gelu_lite_with_grad16_native(const uint16_t* x, uint16_t* y, uint16_t* d, int64_t n) {
  gelu_lite_with_grad16_body(x, y, d, n, bf16_bits16_native_fn);
}

// The residual add and LayerNorm (add_layer_norm_rows), AVX-512 rows of n = 16 k.
template <typename Y, typename H>
LORAREC_AVX512 void add_layer_norm_rows16(const float* x, const Y* y, const float* bias, float* v, const float* w,
                                          const float* b, H* h, float* mean, float* rstd, int64_t rows, int64_t n,
                                          float eps) {
  for (int64_t r = 0; r < rows; ++r, x += n, y += n, v += n, h += n) {
    for (int64_t i = 0; i < n; i += 16) {
      __m512 s = _mm512_add_ps(_mm512_loadu_ps(x + i), load16(y + i));
      if (bias != nullptr) s = _mm512_add_ps(s, _mm512_loadu_ps(bias + i));
      _mm512_storeu_ps(v + i, s);
    }
    const Moments16 mo = row_moments16(v, n, eps, mean + r, rstd + r);
    for (int64_t i = 0; i < n; i += 16) store16(layer_norm16(v, w, b, mo, i), h + i);
  }
}

#pragma GCC diagnostic pop
#endif

// The intrinsic rows where ROWS16 is 1 (AVX-512 builds); a no-op expression elsewhere, never reached.
#ifdef LORAREC_X86_KERNELS
#define LORAREC_ROWS16(F, ...) F(__VA_ARGS__)
#else
#define LORAREC_ROWS16(F, ...) void()
#endif
// bf16 rows by NATIVE (true: AVX512-BF16's conversion).
#define LORAREC_LN16_BF16_true layer_norm_rows16_native
#define LORAREC_LN16_BF16_false layer_norm_rows16<uint16_t>
// bf16 QuickGELU at bf16's precision by NATIVE.
#define LORAREC_GELU_LITE_FWD_true gelu_lite_forward16_native
#define LORAREC_GELU_LITE_FWD_false gelu_lite_forward16
#define LORAREC_GELU_LITE_BWD_true gelu_lite_backward16_native
#define LORAREC_GELU_LITE_BWD_false gelu_lite_backward16

// One function per instruction set and buffer type: the same loop, compiled for that target.
// NATIVE: bf16 results stored by the AVX512-BF16 conversion (store_bf16_native).
#define LORAREC_KERNELS(SUFFIX, TARGET, NATIVE, LITE)                                                 \
  TARGET void fwd_f32_##SUFFIX(const float* x, float* y, int64_t n) { forward_loop<false>(x, y, n); } \
  TARGET void fwd_bf16_##SUFFIX(const uint16_t* x, uint16_t* y, int64_t n) {                          \
    if (LITE) return LORAREC_ROWS16(LORAREC_GELU_LITE_FWD_##NATIVE, x, y, n);                         \
    forward_loop<NATIVE>(x, y, n);                                                                    \
  }                                                                                                   \
  TARGET void bwd_f32_##SUFFIX(const float* x, const float* g, float* gx, int64_t n) {                \
    backward_loop<false>(x, g, gx, n);                                                                \
  }                                                                                                   \
  TARGET void bwd_bf16_##SUFFIX(const uint16_t* x, const uint16_t* g, uint16_t* gx, int64_t n) {      \
    if (LITE) return LORAREC_ROWS16(LORAREC_GELU_LITE_BWD_##NATIVE, x, g, gx, n);                     \
    backward_loop<NATIVE>(x, g, gx, n);                                                               \
  }

#define LORAREC_SOFTMAX_KERNELS(SUFFIX, TARGET, NATIVE)                                                      \
  TARGET void smx_f32_##SUFFIX(const float* x, float* y, int64_t rows, int64_t n, float* e) {                \
    softmax_loop<false>(x, y, rows, n, e);                                                                   \
  }                                                                                                          \
  TARGET void smx_bf16_##SUFFIX(const uint16_t* x, uint16_t* y, int64_t rows, int64_t n, float* e) {         \
    softmax_loop<NATIVE>(x, y, rows, n, e);                                                                  \
  }                                                                                                          \
  TARGET void smb_f32_##SUFFIX(const float* y, const float* g, float* gx, int64_t rows, int64_t n) {         \
    softmax_backward_loop<false>(y, g, gx, rows, n, nullptr);                                                \
  }                                                                                                          \
  TARGET void smb_bf16_##SUFFIX(const uint16_t* y, const uint16_t* g, uint16_t* gx, int64_t rows, int64_t n, \
                                float* e) {                                                                  \
    softmax_backward_loop<NATIVE>(y, g, gx, rows, n, e);                                                     \
  }

// LayerNorm: lnf (bf16 results by NATIVE), the residual add fused with it (alnf; bf16 results
// rounded in integer instructions), and one backward for both (lnb: add and out16 may be null).
#define LORAREC_LAYER_NORM_KERNELS(SUFFIX, TARGET, NATIVE, ROWS16)                                                     \
  TARGET void lnf_f32_##SUFFIX(const float* x, const float* w, const float* b, float* y, float* mean, float* rstd,     \
                               int64_t rows, int64_t n, float eps, float* e) {                                         \
    if (ROWS16 && n % 16 == 0) return LORAREC_ROWS16(layer_norm_rows16<float>, x, w, b, y, mean, rstd, rows, n, eps);  \
    layer_norm_loop<false>(x, w, b, y, mean, rstd, rows, n, eps, e);                                                   \
  }                                                                                                                    \
  TARGET void lnf_bf16_##SUFFIX(const float* x, const float* w, const float* b, uint16_t* y, float* mean, float* rstd, \
                                int64_t rows, int64_t n, float eps, float* e) {                                        \
    if (ROWS16 && n % 16 == 0)                                                                                         \
      return LORAREC_ROWS16(LORAREC_LN16_BF16_##NATIVE, x, w, b, y, mean, rstd, rows, n, eps);                         \
    layer_norm_loop<NATIVE>(x, w, b, y, mean, rstd, rows, n, eps, e);                                                  \
  }                                                                                                                    \
  template <typename Y, typename H>                                                                                    \
  TARGET void alnf_##SUFFIX(const float* x, const Y* y, const float* bias, float* v, const float* w, const float* b,   \
                            H* h, float* mean, float* rstd, int64_t rows, int64_t n, float eps, float* e) {            \
    if (ROWS16 && n % 16 == 0)                                                                                         \
      return LORAREC_ROWS16(add_layer_norm_rows16, x, y, bias, v, w, b, h, mean, rstd, rows, n, eps);                  \
    add_layer_norm_loop(x, y, bias, v, w, b, h, mean, rstd, rows, n, eps, e);                                          \
  }                                                                                                                    \
  template <typename G>                                                                                                \
  TARGET void lnb_##SUFFIX(const float* x, const float* mean, const float* rstd, const float* w, const G* g,           \
                           const float* add, float* gx, uint16_t* out16, int64_t rows, int64_t n, float* e) {          \
    if (ROWS16 && n % 16 == 0)                                                                                         \
      return LORAREC_ROWS16(layer_norm_backward_rows16, x, mean, rstd, w, g, gx, rows, n, add, out16);                 \
    layer_norm_backward_loop(x, mean, rstd, w, g, gx, rows, n, e, add, out16);                                         \
  }

LORAREC_KERNELS(generic, , false, 0)
LORAREC_LAYER_NORM_KERNELS(generic, , false, 0)
LORAREC_SOFTMAX_KERNELS(generic, , false)
#ifdef LORAREC_X86_KERNELS
LORAREC_KERNELS(avx2, LORAREC_AVX2, false, 0)
LORAREC_SOFTMAX_KERNELS(avx2, LORAREC_AVX2, false)
LORAREC_LAYER_NORM_KERNELS(avx2, LORAREC_AVX2, false, 0)
LORAREC_KERNELS(avx512, LORAREC_AVX512, false, 1)
LORAREC_SOFTMAX_KERNELS(avx512, LORAREC_AVX512, false)
LORAREC_LAYER_NORM_KERNELS(avx512, LORAREC_AVX512, false, 1)
LORAREC_KERNELS(avx512bf16, LORAREC_AVX512BF16, true, 1)
LORAREC_SOFTMAX_KERNELS(avx512bf16, LORAREC_AVX512BF16, true)
LORAREC_LAYER_NORM_KERNELS(avx512bf16, LORAREC_AVX512BF16, true, 1)
#endif

Isa detect() {
#ifdef LORAREC_X86_KERNELS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    return __builtin_cpu_supports("avx512bf16") ? Isa::kAvx512Bf16 : Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kGeneric;
}

// Every set, in order.
constexpr Isa kAllIsas[] = {Isa::kGeneric, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16};

// env::kKernelIsa: a cap on the detected set, for side-by-side benchmarks.
Isa capped(Isa detected) {
  const char* e = env::get(env::kKernelIsa);
  if (e == nullptr || *e == '\0') return detected;
  for (const Isa isa : kAllIsas)
    if (std::string(e) == isa_name(isa)) return std::min(isa, detected);
  throw InputError(std::string(env::kKernelIsa) + "=" + e + ": expected generic, avx2, avx512 or avx512bf16");
}

}  // namespace

Isa best_isa() {
  static const Isa isa = capped(detect());
  return isa;
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (const Isa isa : kAllIsas)
    if (isa <= best_isa()) out.push_back(isa);
  return out;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx512Bf16:
      return "avx512bf16";
    default:
      return "generic";
  }
}

// A request for an instruction set this build or CPU lacks runs the generic loop.
#ifdef LORAREC_X86_KERNELS
#define LORAREC_DISPATCH(NAME, ...)            \
  if (isa <= best_isa()) switch (isa) {        \
      case Isa::kAvx512Bf16:                   \
        return NAME##_avx512bf16(__VA_ARGS__); \
      case Isa::kAvx512:                       \
        return NAME##_avx512(__VA_ARGS__);     \
      case Isa::kAvx2:                         \
        return NAME##_avx2(__VA_ARGS__);       \
      default:                                 \
        break;                                 \
    }                                          \
  return NAME##_generic(__VA_ARGS__)
#else
#define LORAREC_DISPATCH(NAME, ...) \
  (void)isa;                        \
  return NAME##_generic(__VA_ARGS__)
#endif

void quick_gelu_forward(const float* x, float* y, int64_t n, Isa isa) { LORAREC_DISPATCH(fwd_f32, x, y, n); }
void quick_gelu_forward(const uint16_t* x, uint16_t* y, int64_t n, Isa isa) { LORAREC_DISPATCH(fwd_bf16, x, y, n); }
void quick_gelu_backward(const float* x, const float* g, float* gx, int64_t n, Isa isa) {
  LORAREC_DISPATCH(bwd_f32, x, g, gx, n);
}
void quick_gelu_backward(const uint16_t* x, const uint16_t* g, uint16_t* gx, int64_t n, Isa isa) {
  LORAREC_DISPATCH(bwd_bf16, x, g, gx, n);
}

bool quick_gelu_with_grad_supported(Isa isa) { return isa >= Isa::kAvx512 && isa <= best_isa(); }
void quick_gelu_forward_with_grad(const uint16_t* x, uint16_t* y, uint16_t* d, int64_t n, Isa isa) {
  if (!quick_gelu_with_grad_supported(isa))
    throw RuntimeError(std::string("quick_gelu_forward_with_grad: not built or not run here for ") + isa_name(isa));
#ifdef LORAREC_X86_KERNELS
  if (isa == Isa::kAvx512Bf16) return gelu_lite_with_grad16_native(x, y, d, n);
  gelu_lite_with_grad16(x, y, d, n);
#else
  (void)x, (void)y, (void)d, (void)n;
#endif
}

void softmax_rows(const float* x, float* y, int64_t rows, int64_t n, Isa isa) {
  std::vector<float> e(static_cast<size_t>(n));
  LORAREC_DISPATCH(smx_f32, x, y, rows, n, e.data());
}
void softmax_rows(const uint16_t* x, uint16_t* y, int64_t rows, int64_t n, Isa isa) {
  std::vector<float> e(static_cast<size_t>(n));
  LORAREC_DISPATCH(smx_bf16, x, y, rows, n, e.data());
}
void softmax_rows_backward(const float* y, const float* g, float* gx, int64_t rows, int64_t n, Isa isa) {
  LORAREC_DISPATCH(smb_f32, y, g, gx, rows, n);
}
void softmax_rows_backward(const uint16_t* y, const uint16_t* g, uint16_t* gx, int64_t rows, int64_t n, Isa isa) {
  std::vector<float> e(static_cast<size_t>(n));  // the rows' results before their conversion (AVX512-BF16)
  LORAREC_DISPATCH(smb_bf16, y, g, gx, rows, n, e.data());
}

void layer_norm_rows(const float* x, const float* w, const float* b, float* y, float* mean, float* rstd, int64_t rows,
                     int64_t n, float eps, Isa isa) {
  std::vector<float> e(static_cast<size_t>(n));
  LORAREC_DISPATCH(lnf_f32, x, w, b, y, mean, rstd, rows, n, eps, e.data());
}
void layer_norm_rows(const float* x, const float* w, const float* b, uint16_t* y, float* mean, float* rstd,
                     int64_t rows, int64_t n, float eps, Isa isa) {
  std::vector<float> e(static_cast<size_t>(n));
  LORAREC_DISPATCH(lnf_bf16, x, w, b, y, mean, rstd, rows, n, eps, e.data());
}
void layer_norm_rows_backward(const float* x, const float* mean, const float* rstd, const float* w, const float* g,
                              float* gx, int64_t rows, int64_t n, Isa isa) {
  std::vector<float> e(static_cast<size_t>(n));
  LORAREC_DISPATCH(lnb, x, mean, rstd, w, g, nullptr, gx, nullptr, rows, n, e.data());
}
void layer_norm_rows_backward(const float* x, const float* mean, const float* rstd, const float* w, const uint16_t* g,
                              float* gx, int64_t rows, int64_t n, Isa isa) {
  std::vector<float> e(static_cast<size_t>(n));
  LORAREC_DISPATCH(lnb, x, mean, rstd, w, g, nullptr, gx, nullptr, rows, n, e.data());
}

namespace {
template <typename Y, typename H>
void add_layer_norm(const float* x, const Y* y, const float* bias, float* v, const float* w, const float* b, H* h,
                    float* mean, float* rstd, int64_t rows, int64_t n, float eps, Isa isa) {
  std::vector<float> e(static_cast<size_t>(n));
  LORAREC_DISPATCH(alnf, x, y, bias, v, w, b, h, mean, rstd, rows, n, eps, e.data());
}
template <typename G>
void add_layer_norm_backward(const float* v, const float* mean, const float* rstd, const float* w, const G* gh,
                             const float* gv_out, float* gv, uint16_t* gy16, int64_t rows, int64_t n, Isa isa) {
  std::vector<float> e(static_cast<size_t>(n));
  LORAREC_DISPATCH(lnb, v, mean, rstd, w, gh, gv_out, gv, gy16, rows, n, e.data());
}
}  // namespace

void add_layer_norm_rows(const float* x, const float* y, const float* bias, float* v, const float* w, const float* b,
                         float* h, float* mean, float* rstd, int64_t rows, int64_t n, float eps, Isa isa) {
  add_layer_norm(x, y, bias, v, w, b, h, mean, rstd, rows, n, eps, isa);
}
void add_layer_norm_rows(const float* x, const uint16_t* y, const float* bias, float* v, const float* w, const float* b,
                         float* h, float* mean, float* rstd, int64_t rows, int64_t n, float eps, Isa isa) {
  add_layer_norm(x, y, bias, v, w, b, h, mean, rstd, rows, n, eps, isa);
}
void add_layer_norm_rows(const float* x, const float* y, const float* bias, float* v, const float* w, const float* b,
                         uint16_t* h, float* mean, float* rstd, int64_t rows, int64_t n, float eps, Isa isa) {
  add_layer_norm(x, y, bias, v, w, b, h, mean, rstd, rows, n, eps, isa);
}
void add_layer_norm_rows(const float* x, const uint16_t* y, const float* bias, float* v, const float* w, const float* b,
                         uint16_t* h, float* mean, float* rstd, int64_t rows, int64_t n, float eps, Isa isa) {
  add_layer_norm(x, y, bias, v, w, b, h, mean, rstd, rows, n, eps, isa);
}
void add_layer_norm_rows_backward(const float* v, const float* mean, const float* rstd, const float* w, const float* gh,
                                  const float* gv_out, float* gv, uint16_t* gy16, int64_t rows, int64_t n, Isa isa) {
  add_layer_norm_backward(v, mean, rstd, w, gh, gv_out, gv, gy16, rows, n, isa);
}
void add_layer_norm_rows_backward(const float* v, const float* mean, const float* rstd, const float* w,
                                  const uint16_t* gh, const float* gv_out, float* gv, uint16_t* gy16, int64_t rows,
                                  int64_t n, Isa isa) {
  add_layer_norm_backward(v, mean, rstd, w, gh, gv_out, gv, gy16, rows, n, isa);
}

}  // namespace lorarec::model::kernel
