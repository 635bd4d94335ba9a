#include "lorarecycle/model/vit.h"

#include "model/cpu_kernels.h"
#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/function.h>

#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "lorarecycle/util/error.h"
#include "test_util.h"

namespace lorarec::model {
namespace {

using test::kFloatTol;
using test::rel_error;

// A random ViT with non-trivial LayerNorm parameters and biases (the HF-like init has LN = 1/0).
ClipVision random_vit(Activation act = Activation::kQuickGelu) {
  ClipVision v = ClipVision::random(test::tiny_config(act), 5);
  auto sd = v.state_dict();
  at::manual_seed(9);
  for (auto& [k, t] : sd) t = t + 0.05 * at::randn(t.sizes());
  return ClipVision::from_tensors(v.config(), sd, "perturbed");
}

at::Tensor pixels(int64_t b, std::uint64_t seed = 1) {
  at::manual_seed(seed);
  return at::randn({b, 3, 16, 16});
}

// A LoRA of lc whose B is not zero (N(0, 0.3)), so that it changes the model.
Lora nonzero_lora(const ClipVisionConfig& c, const LoraConfig& lc, std::uint64_t seed) {
  Lora l(c, lc, seed);
  for (const auto& [key, ad] : l.adapters()) l.find(key.first, static_cast<Module>(key.second))->b.normal_(0, 0.3);
  return l;
}

Lora nonzero_lora(const ClipVisionConfig& c, std::uint64_t seed = 4) {
  LoraConfig lc;
  lc.r = 2;
  lc.alpha = 3;
  return nonzero_lora(c, lc, seed);
}

TEST(Lora, InitialisationFollowsThePaper) {
  const auto c = test::tiny_config();
  Lora l(c, LoraConfig{}, 1);
  EXPECT_EQ(l.adapters().size(), 2u * c.num_hidden_layers);
  EXPECT_EQ(l.num_parameters(false), 2 * c.num_hidden_layers * 2 * c.hidden_size * 4);
  for (const auto& [key, ad] : l.adapters()) {
    EXPECT_TRUE(at::equal(ad.b, at::zeros_like(ad.b)));
    EXPECT_LE(ad.a.abs().max().item<double>(), 1.0 / std::sqrt(double(c.hidden_size)));
    EXPECT_GT(ad.a.abs().max().item<double>(), 0.5 / std::sqrt(double(c.hidden_size)));
  }
}

TEST(Lora, CountMatchesThePaperForB16) {
  ClipVisionConfig b16;  // HF defaults + patch 16: ViT-B/16
  b16.patch_size = 16;
  EXPECT_EQ(Lora(b16, LoraConfig{}, 1).num_parameters(false), 147456);
}

// The weight delta scale * B A of one adapter, in double.
at::Tensor delta(const Lora& l, const std::pair<int, int>& key) {
  const Adapter& ad = l.adapters().at(key);
  return at::matmul(ad.b.to(at::kDouble), ad.a.to(at::kDouble)) * l.scale();
}

TEST(Lora, AverageIsTheMeanWeightDelta) {
  const auto c = test::tiny_config();
  std::vector<Lora> zoo{nonzero_lora(c, 10), nonzero_lora(c, 11), nonzero_lora(c, 12)};
  const Lora avg = average_loras(zoo, c);
  EXPECT_EQ(avg.config().r, 6);
  EXPECT_DOUBLE_EQ(avg.scale(), zoo[0].scale());
  for (const auto& [key, _] : zoo[0].adapters()) {
    const at::Tensor mean = (delta(zoo[0], key) + delta(zoo[1], key) + delta(zoo[2], key)) / 3.0;
    EXPECT_LT(rel_error(delta(avg, key), mean), kFloatTol);
  }
  zoo.push_back(Lora(c, LoraConfig{}, 1));  // rank 4
  EXPECT_THROW_MSG(average_loras(zoo, c), InputError, "differ in rank");
}

TEST(Lora, LowRankIsTheTruncatedSvdOfEachDelta) {
  const auto c = test::tiny_config();
  const Lora src = nonzero_lora(c);  // rank 2, alpha 3
  // at a rank >= the source's, the same deltas (any alpha)
  double kept = 0;
  const Lora same = low_rank(src, 4, 8, &kept);
  EXPECT_EQ(same.config().r, 4);
  EXPECT_DOUBLE_EQ(same.scale(), 2.0);
  EXPECT_NEAR(kept, 1.0, 1e-9);
  ASSERT_EQ(same.adapters().size(), src.adapters().size());
  for (const auto& [key, _] : src.adapters()) EXPECT_LT(rel_error(delta(same, key), delta(src, key)), kFloatTol);
  // at rank 1, the best rank-1 approximation: the top singular triple of a direct SVD
  const Lora one = low_rank(src, 1, 1, &kept);
  double total = 0, kept_direct = 0;
  for (const auto& [key, ad] : one.adapters()) {
    const at::Tensor d = delta(src, key);
    auto [u, s, vh] = at::linalg_svd(d, false);
    const at::Tensor best = s[0].item<double>() * at::outer(u.select(1, 0), vh.select(0, 0));
    EXPECT_LT(rel_error(delta(one, key), best), kFloatTol);
    // balanced factors: |B| = |A|
    EXPECT_NEAR(ad.a.norm().item<double>(), ad.b.norm().item<double>(), 1e-4 * ad.a.norm().item<double>());
    total += s.pow(2).sum().item<double>();
    kept_direct += s[0].item<double>() * s[0].item<double>();
  }
  EXPECT_NEAR(kept, kept_direct / total, 1e-9);
  EXPECT_LT(kept, 1.0);
  // the features of the ViT under the rank-2 copy equal those under the source
  const ClipVision v = random_vit();
  const at::Tensor x = pixels(2);
  const Lora again = low_rank(src, 2, 5);
  EXPECT_LT(rel_error(v.forward(x, {}, &again).feature, v.forward(x, {}, &src).feature), kFloatTol);
}

TEST(Vit, LoraWithZeroBEqualsTheBaseModel) {
  const ClipVision v = random_vit();
  const Lora l(v.config(), LoraConfig{}, 3);
  const at::Tensor x = pixels(3);
  EXPECT_TRUE(at::equal(v.forward(x).feature, v.forward(x, {}, &l).feature));
}

TEST(Vit, LoraEqualsMergedWeights) {
  // y = W x + b + s B A x  ==  (W + s B A) x + b: compare against a model with merged weights.
  const ClipVision v = random_vit();
  const Lora l = nonzero_lora(v.config());
  auto sd = v.state_dict();
  for (const auto& [key, ad] : l.adapters()) {
    const std::string name = "vision_model.encoder.layers." + std::to_string(key.first) + "." +
                             module_path(static_cast<Module>(key.second)) + ".weight";
    sd[name] = sd[name] + l.scale() * at::matmul(ad.b, ad.a);
  }
  const ClipVision merged = ClipVision::from_tensors(v.config(), sd, "merged");
  const at::Tensor x = pixels(2);
  const at::Tensor a = v.forward(x, {}, &l).feature, b = merged.forward(x).feature;
  EXPECT_LT(rel_error(a, b), kFloatTol);
  EXPECT_GT(rel_error(a, v.forward(x).feature), 1e-3) << "the LoRA should change the feature";
}

TEST(Vit, ClsOnlyLastLayerEqualsTheFullLastLayer) {
  const ClipVision v = random_vit(Activation::kGelu);
  const at::Tensor x = pixels(4);
  ForwardOptions full;
  full.cls_only_last = false;
  EXPECT_LT(rel_error(v.forward(x).feature, v.forward(x, full).feature), kFloatTol);
}

TEST(Vit, StackedQkvOfFrozenWeightsEqualsSeparateProjections) {
  // Frozen weights run q, k and v as one matmul; weights that train (pretrain) run three. Both
  // with LoRAs on q, k and v, the CLS-only last layer and pruning, in fp32 and bf16.
  const ClipVision frozen = random_vit();
  ClipVision trained = random_vit();
  trained.set_requires_grad(true);
  LoraConfig lc;
  lc.r = 2;
  lc.target_modules = {Module::kQ, Module::kK, Module::kV, Module::kFc1};
  Lora l = nonzero_lora(frozen.config(), lc, 6);
  const at::Tensor x = pixels(3);
  ForwardOptions fo;
  fo.prune = {{0, 0.5}};
  fo.want_scores = true;
  for (const Precision p : {Precision::kFp32, Precision::kBf16}) {
    ClipVision a = frozen;
    a.set_precision(p);
    trained.set_precision(p);
    const ForwardOutput fa = a.forward(x, fo, &l), fb = trained.forward(x, fo, &l);
    EXPECT_LT(rel_error(fa.feature, fb.feature.detach()), p == Precision::kFp32 ? kFloatTol : 2e-2);
    if (p == Precision::kFp32) {
      EXPECT_TRUE(at::equal(fa.patch_index, fb.patch_index));
    }
  }
  // Gradients reach the LoRA through the stacked projections as through the separate ones.
  l.set_requires_grad(true, false);
  const Adapter* k0 = l.find(0, Module::kK);
  frozen.forward(x, {}, &l).feature.pow(2).sum().backward();
  const at::Tensor ga = k0->a.grad().clone();
  k0->a.grad().zero_();
  ClipVision t32 = random_vit();
  t32.set_requires_grad(true);
  t32.forward(x, {}, &l).feature.pow(2).sum().backward();
  EXPECT_GT(ga.abs().sum().item<double>(), 0.0);
  EXPECT_LT(rel_error(ga, k0->a.grad()), 1e-4);
}

TEST(Vit, LoraAddIsOneNodeWithTheUnfusedGradients) {
  // lora_add against the same delta written as separate ops, value and every input's gradient, in
  // fp32 and (under autocast) bf16; one autograd node whose edges are its four tensor inputs.
  at::manual_seed(12);
  const auto leaf = [](const at::Tensor& t) { return t.clone().requires_grad_(true); };
  const at::Tensor y0 = at::randn({2, 7, 6}), x0 = at::randn({2, 7, 5}), a0 = at::randn({3, 5}), b0 = at::randn({6, 3});
  const at::Tensor g = at::randn({2, 7, 6});
  for (const Precision p : {Precision::kFp32, Precision::kBf16}) {
    const at::ScalarType dt = p == Precision::kBf16 ? at::kBFloat16 : at::kFloat;
    const double tol = p == Precision::kBf16 ? 3e-2 : 1e-5;
    at::Tensor yf = leaf(y0.to(dt)), xf = leaf(x0), af = leaf(a0), bf = leaf(b0);
    at::Tensor yu = leaf(y0.to(dt)), xu = leaf(x0), au = leaf(a0), bu = leaf(b0);
    at::Tensor fused, unfused;
    {
      AutocastScope autocast(c10::DeviceType::CPU, p == Precision::kBf16);
      fused = lora_add(yf, xf, af, bf, 0.7);
      unfused = at::add(yu, at::linear(at::linear(xu, au), bu), 0.7);
    }
    ASSERT_EQ(fused.scalar_type(), dt);
    EXPECT_LT(rel_error(fused.to(at::kFloat), unfused.to(at::kFloat).detach()), tol);
    ASSERT_TRUE(fused.grad_fn() != nullptr);
    EXPECT_EQ(fused.grad_fn()->next_edges().size(), 4u);
    fused.backward(g.to(dt));
    unfused.backward(g.to(dt));
    for (const auto& [f, u] : {std::pair{xf, xu}, {af, au}, {bf, bu}}) {
      ASSERT_TRUE(f.grad().defined());
      EXPECT_EQ(f.grad().scalar_type(), at::kFloat);
      EXPECT_LT(rel_error(f.grad(), u.grad()), tol);
    }
    EXPECT_LT(rel_error(yf.grad().to(at::kFloat), yu.grad().to(at::kFloat)), tol);
  }
  // Only what needs a gradient gets one (the frozen teacher in the inversion: x alone).
  const at::Tensor x = leaf(x0);
  lora_add(y0, x, a0, b0, 1.0).backward(g);
  EXPECT_LT(rel_error(x.grad(), at::matmul(at::matmul(g, b0), a0)), 1e-5);
}

// Whether the autograd graph behind t has a node whose name contains `what`.
bool graph_has(const at::Tensor& t, const std::string& what) {
  std::vector<torch::autograd::Node*> todo{t.grad_fn().get()};
  std::set<torch::autograd::Node*> seen;
  while (!todo.empty()) {
    torch::autograd::Node* n = todo.back();
    todo.pop_back();
    if (n == nullptr || !seen.insert(n).second) continue;
    if (n->name().find(what) != std::string::npos) return true;
    for (const auto& e : n->next_edges()) todo.push_back(e.function.get());
  }
  return false;
}

TEST(Vit, MergedAdaptersGiveTheSeparateGradients) {
  // merged_lora_linear against the frozen product plus the delta as separate ops in float: value and
  // the gradients of x, A and B, with w in fp32 and in bf16.
  at::manual_seed(14);
  const auto leaf = [](const at::Tensor& t) { return t.clone().requires_grad_(true); };
  const at::Tensor x0 = at::randn({2, 7, 5}), w0 = at::randn({6, 5}), bias0 = at::randn({6}), a0 = at::randn({3, 5}),
                   b0 = at::randn({6, 3}), g = at::randn({2, 7, 6});
  for (const at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
    const double tol = dt == at::kBFloat16 ? 3e-2 : 1e-5;
    at::Tensor xm = leaf(x0), am = leaf(a0), bm = leaf(b0), xu = leaf(x0), au = leaf(a0), bu = leaf(b0);
    const at::Tensor merged = merged_lora_linear(xm, w0.to(dt), bias0.to(dt), am, bm, 0.7);
    const at::Tensor separate = at::linear(xu, w0, bias0) + 0.7 * at::linear(at::linear(xu, au), bu);
    ASSERT_EQ(merged.scalar_type(), dt);
    ASSERT_EQ(merged.sizes(), separate.sizes());
    EXPECT_LT(rel_error(merged.to(at::kFloat), separate.detach()), tol);
    merged.backward(g.to(dt));
    separate.backward(g);
    for (const auto& [m, u] : {std::pair{xm, xu}, {am, au}, {bm, bu}}) {
      ASSERT_TRUE(m.grad().defined());
      EXPECT_EQ(m.grad().scalar_type(), at::kFloat);
      EXPECT_LT(rel_error(m.grad(), u.grad()), tol);
    }
  }
  // x alone with a gradient (frozen adapter), no bias; no second derivatives.
  const at::Tensor x = leaf(x0);
  merged_lora_linear(x, w0, at::Tensor(), a0, b0, 1.0).backward(g);
  EXPECT_LT(rel_error(x.grad(), at::matmul(g, w0 + at::mm(b0, a0))), 1e-5);
  EXPECT_THROW(merged_lora_linear(leaf(x0), w0, bias0, leaf(a0), b0, 1.0).sum().backward({}, true, true), RuntimeError);
  EXPECT_THROW_MSG(merged_lora_linear(x0, w0, bias0, a0.t(), b0, 1.0), InputError, "a [r, in]");
  // When merging costs less, with the adapter's gradients.
  EXPECT_TRUE(merged_adapter_pays(100, 128, 128, 80));
  EXPECT_FALSE(merged_adapter_pays(80, 128, 128, 80));  // the CLS row of a step's few images
  EXPECT_TRUE(merged_adapter_pays(200, 128, 512, 80));
  EXPECT_FALSE(merged_adapter_pays(170, 128, 512, 80));
  EXPECT_FALSE(merged_adapter_pays(int64_t(1) << 30, 128, 128, 4));  // the zoo's rank-4 LoRAs: never

  // In the ViT: a trained rank-16 LoRA on q, out_proj, fc1 and fc2 of the tiny ViT (17 tokens, 6
  // images: merged in every layer but the last one's CLS row) gives the features and adapter
  // gradients of the separate form, in fp32 and bf16; with merging off no merged node is built.
  const ClipVision vit = random_vit();
  LoraConfig lc;
  lc.r = 16;
  lc.target_modules = {Module::kQ, Module::kOut, Module::kFc1, Module::kFc2};
  Lora l = nonzero_lora(vit.config(), lc, 7);
  l.set_requires_grad(true, false);
  const at::Tensor px = pixels(6);
  for (const Precision p : {Precision::kFp32, Precision::kBf16}) {
    ClipVision v = vit;
    v.set_precision(p);
    std::map<bool, std::pair<at::Tensor, std::vector<at::Tensor>>> got;
    for (const bool merge : {true, false}) {
      set_adapter_merging(merge);
      for (const auto& [key, ad] : l.adapters())
        for (const at::Tensor& t : {ad.a, ad.b})
          if (t.grad().defined()) t.grad().zero_();
      const at::Tensor f = v.forward(px, {}, &l).feature;
      EXPECT_EQ(graph_has(f, "MergedLinear"), merge);
      f.pow(2).sum().backward();
      std::vector<at::Tensor> grads;
      for (const auto& [key, ad] : l.adapters())
        for (const at::Tensor& t : {ad.a, ad.b}) grads.push_back(t.grad().clone());
      got[merge] = {f.detach().to(at::kFloat), grads};
    }
    set_adapter_merging(true);
    const double tol = p == Precision::kBf16 ? 5e-2 : 1e-4;
    EXPECT_LT(rel_error(got[true].first, got[false].first), tol);
    for (size_t i = 0; i < got[true].second.size(); ++i) {
      EXPECT_GT(got[false].second[i].abs().sum().item<double>(), 0.0) << i;
      EXPECT_LT(rel_error(got[true].second[i], got[false].second[i]), tol) << i;
    }
  }
}

TEST(Vit, QuickGeluIsOneNodeWithTheCompositeGradients) {
  // quick_gelu against x * sigmoid(1.702 x) as ATen ops: value and gradient in fp32 (within float
  // rounding) and bf16 (the composite rounds three times, the kernel once), on a non-contiguous
  // input too; one autograd node with one edge; double (no kernel) through the same node.
  at::manual_seed(13);
  const at::Tensor x0 = 4 * at::randn({3, 40, 37}), g0 = at::randn({3, 40, 37});
  for (const at::ScalarType dt : {at::kFloat, at::kBFloat16, at::kDouble}) {
    const double tol = dt == at::kBFloat16 ? 1e-2 : 1e-6;
    for (const bool transposed : {false, true}) {
      const at::Tensor base = (transposed ? x0.transpose(1, 2).contiguous() : x0).to(dt);
      at::Tensor xf = base.clone().requires_grad_(true), xu = base.clone().requires_grad_(true);
      const at::Tensor in_f = transposed ? xf.transpose(1, 2) : xf, in_u = transposed ? xu.transpose(1, 2) : xu;
      ASSERT_EQ(in_f.is_contiguous(), !transposed);
      const at::Tensor fused = quick_gelu(in_f), composite = in_u * at::sigmoid(1.702 * in_u);
      ASSERT_EQ(fused.scalar_type(), dt);
      EXPECT_LT(rel_error(fused.to(at::kDouble), composite.to(at::kDouble).detach()), tol) << dt << transposed;
      ASSERT_TRUE(fused.grad_fn() != nullptr);
      EXPECT_EQ(fused.grad_fn()->next_edges().size(), 1u);
      fused.backward(g0.to(dt));
      composite.backward(g0.to(dt));
      EXPECT_LT(rel_error(xf.grad().to(at::kDouble), xu.grad().to(at::kDouble)), tol) << dt << transposed;
    }
  }
  // bf16: one rounding is closer to the exact values than the composite's three.
  const at::Tensor xb = x0.to(at::kBFloat16), exact = xb.to(at::kDouble) * at::sigmoid(1.702 * xb.to(at::kDouble));
  EXPECT_LE(rel_error(quick_gelu(xb).to(at::kDouble), exact),
            rel_error((xb * at::sigmoid(1.702 * xb)).to(at::kDouble), exact));
  // Without a gradient no node is made; a second derivative is refused, not silently wrong.
  EXPECT_TRUE(quick_gelu(x0).grad_fn() == nullptr);
  for (const at::ScalarType dt : {at::kFloat, at::kBFloat16}) {  // bf16: the node that saves the derivative
    const at::Tensor x = x0.to(dt).requires_grad_(true);
    EXPECT_THROW(quick_gelu(x).sum().backward({}, /*retain_graph=*/true, /*create_graph=*/true), RuntimeError);
  }
}

TEST(Vit, SoftmaxLastDimIsOneNodeWithAtensGradients) {
  // softmax_last_dim against at::softmax: value and gradient in fp32 (within float rounding) and
  // bf16, on the attention's shapes (rows of 65 and 17) and a non-contiguous input; double runs
  // ATen's inside the node; one node with one edge; no node without a gradient; a second
  // derivative is refused.
  at::manual_seed(14);
  for (const int64_t T : {65, 17}) {
    const at::Tensor x0 = 3 * at::randn({2, 4, T, T}), g0 = at::randn({2, 4, T, T});
    for (const at::ScalarType dt : {at::kFloat, at::kBFloat16, at::kDouble}) {
      const double tol = dt == at::kBFloat16 ? 2e-2 : 1e-6;
      for (const bool transposed : {false, true}) {
        at::Tensor xf = x0.to(dt).clone().requires_grad_(true), xu = x0.to(dt).clone().requires_grad_(true);
        const at::Tensor in_f = transposed ? xf.transpose(2, 3) : xf, in_u = transposed ? xu.transpose(2, 3) : xu;
        const at::Tensor fused = softmax_last_dim(in_f), ref = at::softmax(in_u, -1);
        ASSERT_EQ(fused.scalar_type(), dt);
        EXPECT_LT(rel_error(fused.to(at::kDouble), ref.to(at::kDouble).detach()), tol) << dt << " " << T;
        ASSERT_TRUE(fused.grad_fn() != nullptr);
        EXPECT_EQ(fused.grad_fn()->next_edges().size(), 1u);
        fused.backward(g0.to(dt));
        ref.backward(g0.to(dt));
        EXPECT_LT(rel_error(xf.grad().to(at::kDouble), xu.grad().to(at::kDouble)), tol) << dt << " " << T;
      }
    }
    EXPECT_TRUE(softmax_last_dim(x0).grad_fn() == nullptr);
    const at::Tensor x = x0.clone().requires_grad_(true);
    EXPECT_THROW(softmax_last_dim(x).sum().backward({}, /*retain_graph=*/true, /*create_graph=*/true), RuntimeError);
  }
}

// Counts the ATen ops named `name` that run on this thread while it lives.
class OpCounter {
 public:
  explicit OpCounter(std::string name) {
    target() = std::move(name);
    seen() = 0;
    handle_ = at::addThreadLocalCallback(
        at::RecordFunctionCallback([](const at::RecordFunction& fn) -> std::unique_ptr<at::ObserverContext> {
          if (fn.name() == target()) ++seen();
          return nullptr;
        }));
  }
  ~OpCounter() { at::removeCallback(handle_); }
  int64_t count() const { return seen(); }

 private:
  static std::string& target() {
    static thread_local std::string t;
    return t;
  }
  static int64_t& seen() {
    static thread_local int64_t n = 0;
    return n;
  }
  at::CallbackHandle handle_;
};

TEST(Vit, BmmNogradIsAtenBmmWithoutAnOpPerMatrix) {
  // bmm_nograd against the products in double, for the layouts the attention node gives it:
  // contiguous, either operand a transposed view, a column block of a wider matrix (a row stride
  // other than the width), the attention's shapes (65 and 17 tokens, 32 per head, the CLS query
  // alone), an empty contraction and an empty batch; strides BLAS cannot take, bf16 and double
  // go through at::bmm (the same values). With CBLAS no select op runs (ATen 1.13's float bmm
  // makes one per matrix), and the result is contiguous.
  at::manual_seed(16);
  const auto ref = [](const at::Tensor& a, const at::Tensor& b) {
    return at::bmm(a.to(at::kDouble), b.to(at::kDouble)).to(at::kFloat);
  };
  struct Case {
    int64_t n, m, k, p;
  };
  for (const Case c :
       {Case{320, 65, 32, 65}, Case{320, 17, 32, 17}, Case{320, 1, 32, 65}, Case{320, 65, 1, 32}, Case{3, 5, 7, 4}}) {
    const at::Tensor a = at::randn({c.n, c.m, c.k}), b = at::randn({c.n, c.k, c.p});
    const at::Tensor at_ = at::randn({c.n, c.k, c.m}).transpose(1, 2), bt = at::randn({c.n, c.p, c.k}).transpose(1, 2);
    const at::Tensor wide = at::randn({c.n, c.m, 3 * c.k}), ablock = wide.narrow(2, c.k, c.k);  // row stride 3k
    for (const auto& [x, y] : std::vector<std::pair<at::Tensor, at::Tensor>>{
             {a, b}, {at_, b}, {a, bt}, {at_, bt}, {ablock, b}, {ablock, bt}}) {
      OpCounter selects("aten::select");
      const at::Tensor out = bmm_nograd(x, y);
      if (blas_bmm_available()) {
        EXPECT_EQ(selects.count(), 0) << c.m << " " << c.k << " " << c.p;
      }
      ASSERT_EQ(out.sizes(), (std::vector<int64_t>{c.n, c.m, c.p}));
      EXPECT_TRUE(out.is_contiguous());
      EXPECT_LT(rel_error(out, ref(x, y)), 1e-5) << c.m << " " << c.k << " " << c.p;
    }
  }
  const at::Tensor a = at::randn({4, 6, 5}), b = at::randn({4, 5, 3});
  const at::Tensor every_other = at::randn({4, 6, 10}).slice(2, 0, 10, 2);  // neither dimension unit-stride
  EXPECT_LT(rel_error(bmm_nograd(every_other, b), ref(every_other, b)), 1e-5);
  EXPECT_LT(rel_error(bmm_nograd(a.to(at::kDouble), b.to(at::kDouble)).to(at::kFloat), ref(a, b)), 1e-6);
  EXPECT_LT(rel_error(bmm_nograd(a.to(at::kBFloat16), b.to(at::kBFloat16)).to(at::kFloat), ref(a, b)), 2e-2);
  const at::Tensor empty_k = bmm_nograd(at::randn({4, 6, 0}), at::randn({4, 0, 3}));
  EXPECT_EQ(empty_k.sizes(), (std::vector<int64_t>{4, 6, 3}));
  EXPECT_EQ(empty_k.abs().sum().item<float>(), 0.0f);
  EXPECT_EQ(bmm_nograd(at::randn({0, 6, 5}), at::randn({0, 5, 3})).sizes(), (std::vector<int64_t>{0, 6, 3}));
}

TEST(Vit, LayerNormAsIsOneNodeWithAtensGradients) {
  // layer_norm_as against at::layer_norm: value and input gradient with a float output (within
  // float rounding) and a bf16 one (the float result rounded once; its gradient from a bf16
  // output gradient), rows of the ViT's 128 and of 40 (the row kernels' two paths), on a
  // non-contiguous input too; one node, whose one live edge is x's; weights that need a gradient run ATen's and
  // get it; no node without a gradient; a second derivative is refused. Without AVX2 or AVX-512
  // (LORAREC_KERNEL_ISA=generic) it is at::layer_norm itself: float out, the same values.
  const bool kernels = kernel::best_isa() != kernel::Isa::kGeneric;
  at::manual_seed(15);
  for (const int64_t D : {128, 40}) {
    const at::Tensor x0 = 3 * at::randn({4, 9, D}) + 2, g0 = at::randn({4, 9, D});
    const at::Tensor w = 1 + at::randn({D}) / 4, b = at::randn({D}) / 4;
    for (const at::ScalarType out : {at::kFloat, at::kBFloat16}) {
      const double tol = out == at::kBFloat16 ? 1e-2 : 1e-5;
      for (const bool transposed : {false, true}) {
        const at::Tensor base = transposed ? x0.transpose(0, 1).contiguous() : x0;
        at::Tensor xf = base.clone().requires_grad_(true), xu = base.clone().requires_grad_(true);
        const at::Tensor in_f = transposed ? xf.transpose(0, 1) : xf, in_u = transposed ? xu.transpose(0, 1) : xu;
        const at::Tensor fused = layer_norm_as(in_f, w, b, 1e-5, out);
        const at::Tensor ref = at::layer_norm(in_u, {D}, w, b, 1e-5);
        ASSERT_EQ(fused.scalar_type(), kernels ? out : at::kFloat);
        EXPECT_LT(rel_error(fused.to(at::kFloat), ref.detach()), tol) << D << " " << out << " " << transposed;
        ASSERT_TRUE(fused.grad_fn() != nullptr);
        if (kernels) {
          ASSERT_EQ(fused.grad_fn()->next_edges().size(), 3u);  // x, w, b; only x's leads anywhere
          EXPECT_TRUE(fused.grad_fn()->next_edges()[0].is_valid());
          EXPECT_FALSE(fused.grad_fn()->next_edges()[1].is_valid() || fused.grad_fn()->next_edges()[2].is_valid());
        }
        fused.backward(g0.to(out).to(fused.scalar_type()));
        ref.backward(g0.to(out).to(at::kFloat));
        EXPECT_EQ(xf.grad().scalar_type(), at::kFloat);
        EXPECT_LT(rel_error(xf.grad(), xu.grad()), 1e-5) << D << " " << out << " " << transposed;
      }
    }
    EXPECT_TRUE(layer_norm_as(x0, w, b, 1e-5, at::kBFloat16).grad_fn() == nullptr);
    // Weights that learn (pretraining): ATen's LayerNorm, float out, their gradients too.
    const at::Tensor wl = w.clone().requires_grad_(true), x = x0.clone().requires_grad_(true);
    const at::Tensor y = layer_norm_as(x, wl, b, 1e-5, at::kBFloat16);
    EXPECT_EQ(y.scalar_type(), at::kFloat);
    y.backward(g0);
    EXPECT_TRUE(wl.grad().defined());
    if (kernels) {
      EXPECT_THROW(layer_norm_as(x, w, b, 1e-5, at::kFloat).sum().backward({}, true, true), RuntimeError);
    }
  }
}

TEST(Vit, AddLayerNormAsIsOneNodeWithTheGradientsOfSeparateOps) {
  // add_layer_norm_as against x + y + bias and at::layer_norm as ATen ops: both outputs and the
  // gradients of x and y (both outputs used downstream), y float or bf16, h float or bf16, with and
  // without a bias, rows of 128 and 40, a non-contiguous x; one node; a second derivative refused.
  // Without AVX2 or AVX-512 the separate ops themselves (h float).
  const bool kernels = kernel::best_isa() != kernel::Isa::kGeneric;
  at::manual_seed(16);
  for (const int64_t D : {128, 40}) {
    const at::Tensor x0 = 2 * at::randn({3, 7, D}), y0 = at::randn({3, 7, D});
    const at::Tensor gv0 = at::randn({3, 7, D}), gh0 = at::randn({3, 7, D});
    const at::Tensor w = 1 + at::randn({D}) / 4, b = at::randn({D}) / 4, bias = at::randn({D});
    for (const at::ScalarType yt : {at::kFloat, at::kBFloat16})
      for (const at::ScalarType out : {at::kFloat, at::kBFloat16})
        for (const bool with_bias : {false, true}) {
          const double tol = (yt == at::kBFloat16 || out == at::kBFloat16) ? 1e-2 : 1e-5;
          const std::string where = std::to_string(D) + " " + std::string(c10::toString(yt)) + " " +
                                    c10::toString(out) + (with_bias ? " bias" : "");
          const at::Tensor xt = x0.transpose(0, 1).contiguous().requires_grad_(true), xf = xt.transpose(0, 1);
          const at::Tensor xu = x0.clone().requires_grad_(true);
          const at::Tensor yf = y0.to(yt).clone().requires_grad_(true), yu = y0.to(yt).clone().requires_grad_(true);
          ASSERT_FALSE(xf.is_contiguous());
          const at::Tensor bb = with_bias ? bias : at::Tensor();
          const auto [v, h] = add_layer_norm_as(xf, yf, bb, w, b, 1e-5, out);
          const at::Tensor vu = with_bias ? xu + yu + bias : xu + yu;
          const at::Tensor hu = at::layer_norm(vu, {D}, w, b, 1e-5);
          ASSERT_EQ(v.scalar_type(), at::kFloat);
          ASSERT_EQ(h.scalar_type(), kernels ? out : at::kFloat);
          EXPECT_LT(rel_error(v, vu.detach()), 1e-6) << where;
          EXPECT_LT(rel_error(h.to(at::kFloat), hu.detach()), tol) << where;
          if (kernels) {
            EXPECT_EQ(v.grad_fn(), h.grad_fn()) << where;
          }
          const at::Tensor gh = gh0.to(out).to(at::kFloat);  // h's gradient as its dtype holds it
          ((v * gv0).sum() + (h.to(at::kFloat) * gh).sum()).backward();
          ((vu * gv0).sum() + (hu * gh).sum()).backward();
          EXPECT_LT(rel_error(xt.grad().transpose(0, 1), xu.grad()), 1e-5) << where;
          EXPECT_EQ(yf.grad().scalar_type(), yt);
          EXPECT_LT(rel_error(yf.grad().to(at::kFloat), yu.grad().to(at::kFloat)), yt == at::kBFloat16 ? 1e-2 : 1e-5)
              << where;
        }
    const at::Tensor x = x0.clone().requires_grad_(true);
    if (kernels) {
      EXPECT_THROW(add_layer_norm_as(x, y0, bias, w, b, 1e-5, at::kFloat).second.sum().backward({}, true, true),
                   RuntimeError);
    }
  }
}

// The attention of one layer written as separate ops (HF CLIPAttention): what attention_block
// replaces.
at::Tensor attention_by_ops(const at::Tensor& h, const at::Tensor& w, const at::Tensor& b,
                            const std::array<const Adapter*, 3>& ad, int64_t H, int64_t tq, double s) {
  const int64_t B = h.size(0), T = h.size(1), D = h.size(2);
  const at::Tensor hq = h.slice(1, 0, tq);
  std::array<at::Tensor, 3> p;
  for (int m = 0; m < 3; ++m) {
    const at::Tensor& in = m == 0 ? hq : h;
    p[m] = at::linear(in, w.narrow(0, m * D, D), b.defined() ? b.narrow(0, m * D, D) : at::Tensor());
    if (ad[m] != nullptr) p[m] = p[m] + s * at::linear(at::linear(in, ad[m]->a), ad[m]->b);
    p[m] = p[m].view({B, m == 0 ? tq : T, H, D / H}).transpose(1, 2);
  }
  const at::Tensor attn = at::softmax(at::matmul(p[0] / std::sqrt(double(D / H)), p[1].transpose(-2, -1)), -1);
  return at::matmul(attn, p[2]).transpose(1, 2).reshape({B, tq, D});
}

TEST(Vit, AttentionBlockIsOneNodeWithTheGradientsOfSeparateOps) {
  // attention_block against the same attention as separate ops: value and the gradients of h and
  // of every adapter, in fp32 and bf16 (against the ops in float), all queries and the CLS query alone, with and
  // without biases, adapters on any of q, k and v; one node whose edges are its tensor inputs; only what needs a
  // gradient gets one; a second derivative and bad shapes are refused. Rank 2 keeps the adapters as products of their
  // own, rank 3 (> D / 6) merges them into the projection's weights.
  at::manual_seed(15);
  const int64_t B = 3, T = 9, D = 16, H = 4;
  const auto leaf = [](const at::Tensor& t) { return t.clone().requires_grad_(true); };
  const at::Tensor h0 = at::randn({B, T, D}), w = 0.3 * at::randn({3 * D, D}), bias = 0.1 * at::randn({3 * D});
  std::array<Adapter, 3> ad0;
  for (const int64_t r : {2, 3})
    for (const at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
      for (auto& a : ad0) a = Adapter{0.4 * at::randn({r, D}), 0.4 * at::randn({D, r})};
      // bf16 against the float ops: measured up to 3.0 % for the A and B gradients (either form).
      const double tol = dt == at::kBFloat16 ? 4e-2 : 1e-5;
      for (const int64_t tq : {T, int64_t(1)}) {
        for (const std::array<bool, 3> on : {std::array{true, false, true}, {true, true, true}, {false, true, false}}) {
          for (const bool with_bias : {true, false}) {
            const at::Tensor b = with_bias ? bias.to(dt) : at::Tensor();
            at::Tensor hf = leaf(h0), hu = leaf(h0);
            std::array<Adapter, 3> af, au;
            std::array<const Adapter*, 3> pf{}, pu{};
            for (int m = 0; m < 3; ++m) {
              af[m] = {leaf(ad0[m].a), leaf(ad0[m].b)};
              au[m] = {leaf(ad0[m].a), leaf(ad0[m].b)};
              if (on[m]) pf[m] = &af[m], pu[m] = &au[m];
            }
            const at::Tensor fused = attention_block(hf, w.to(dt), b, pf, H, tq, 0.7);
            const at::Tensor ref = attention_by_ops(hu, w, with_bias ? bias : at::Tensor(), pu, H, tq, 0.7);  // float
            ASSERT_EQ(fused.scalar_type(), dt);
            ASSERT_EQ(fused.sizes(), (std::vector<int64_t>{B, tq, D}));
            const std::string where = std::string(dt == at::kFloat ? "fp32" : "bf16") + " tq " + std::to_string(tq) +
                                      " r " + std::to_string(r);
            EXPECT_LT(rel_error(fused, ref.detach()), tol) << where;
            ASSERT_TRUE(fused.grad_fn() != nullptr);
            EXPECT_EQ(fused.grad_fn()->next_edges().size(), 2u + 2u * (on[0] + on[1] + on[2]) + (with_bias ? 1 : 0));
            const at::Tensor g = at::randn({B, tq, D});
            fused.backward(g.to(dt));
            ref.backward(g.to(ref.scalar_type()));
            EXPECT_EQ(hf.grad().scalar_type(), at::kFloat);
            EXPECT_LT(rel_error(hf.grad(), hu.grad()), tol) << where;
            for (int m = 0; m < 3; ++m) {
              if (!on[m]) continue;
              EXPECT_LT(rel_error(af[m].a.grad(), au[m].a.grad()), tol) << where << " A of " << m;
              EXPECT_LT(rel_error(af[m].b.grad(), au[m].b.grad()), tol) << where << " B of " << m;
            }
          }
        }
      }
    }
  // The inversion's case: a frozen LoRA, the gradient of h alone.
  const at::Tensor h = leaf(h0);
  attention_block(h, w, bias, {&ad0[0], nullptr, &ad0[2]}, H, T, 1.0).pow(2).sum().backward();
  const at::Tensor hu = leaf(h0);
  attention_by_ops(hu, w, bias, {&ad0[0], nullptr, &ad0[2]}, H, T, 1.0).pow(2).sum().backward();
  EXPECT_LT(rel_error(h.grad(), hu.grad()), 1e-5);
  EXPECT_TRUE(attention_block(h0, w, bias, {}, H, T, 1.0).grad_fn() == nullptr);
  EXPECT_THROW(attention_block(leaf(h0), w, bias, {}, H, T, 1.0).sum().backward({}, true, /*create_graph=*/true),
               RuntimeError);
  EXPECT_THROW_MSG(attention_block(h0, w, bias, {}, 3, T, 1.0), InputError, "a multiple of the 3 heads");
  EXPECT_THROW_MSG(attention_block(h0, w, bias, {}, H, 2, 1.0), InputError, "Tq T or 1");
  EXPECT_THROW_MSG(attention_block(h0, w.narrow(0, 0, D), bias, {}, H, T, 1.0), InputError, "w_qkv [3D, D]");
}

TEST(Vit, AttentionNodeForwardEqualsSeparateOps) {
  // ClipVision's explicit path (attention_block where it applies) against kExplicitOps: features
  // and LoRA gradients, dense and sparse input, CLS-only last layer, fp32 and bf16, LoRAs on q, v,
  // out_proj and fc1; with pruning (the CLS row) both take the ops.
  ClipVision v = random_vit();
  if (fused_attention_available()) v.set_attention(Attention::kExplicit);
  LoraConfig lc;
  lc.r = 2;
  lc.target_modules = {Module::kQ, Module::kV, Module::kOut, Module::kFc1};
  Lora l = nonzero_lora(v.config(), lc, 3);
  l.set_requires_grad(true, false);
  const at::Tensor x = pixels(3, 6);
  ForwardOptions sparse;
  sparse.patch_index = at::tensor({0, 2, 3, 5, 7, 8, 11, 12, 13, 15}, at::kLong).repeat({3, 1});
  for (const Precision p : {Precision::kFp32, Precision::kBf16}) {
    v.set_precision(p);
    for (const ForwardOptions& o : {ForwardOptions{}, sparse}) {
      const auto run = [&](Attention a) {
        v.set_attention(a);
        for (auto& t : l.parameters(false))
          if (t.grad().defined()) t.mutable_grad().zero_();
        const at::Tensor f = v.forward(x, o, &l).feature;
        f.pow(2).sum().backward();
        std::vector<at::Tensor> out{f.detach()};
        for (const auto& t : l.parameters(false)) out.push_back(t.grad().clone());
        return out;
      };
      const std::vector<at::Tensor> node = run(Attention::kExplicit), ops = run(Attention::kExplicitOps);
      // bf16: two orders of rounding; where LibTorch sums a bf16 product's terms in bf16 (its
      // fallback on CPUs without AVX-512) each product is off by 1-3 % and the gradients by more.
      const double tol = p == Precision::kFp32 ? 1e-4 : bf16_matmul_accumulates_in_float() ? 5e-2 : 0.2;
      for (size_t i = 0; i < node.size(); ++i)
        EXPECT_LT(rel_error(node[i], ops[i]), tol) << precision_name(p) << " " << i;
    }
  }
}

TEST(Vit, PruningWithRatioZeroEqualsDense) {
  const ClipVision v = random_vit();
  const at::Tensor x = pixels(3);
  ForwardOptions o;
  o.prune = {{0, 0.0}, {1, 0.0}, {2, 0.0}};
  o.want_scores = true;
  const ForwardOutput r = v.forward(x, o);
  EXPECT_TRUE(at::equal(r.feature, v.forward(x).feature));
  EXPECT_TRUE(r.keep_mask.all().item<bool>());
  EXPECT_EQ(r.patch_index.size(1), v.config().num_patches());
}

TEST(Vit, SparseInputWithAllTokensEqualsDenseInAnyOrder) {
  const ClipVision v = random_vit();
  const at::Tensor x = pixels(3);
  const int64_t P = v.config().num_patches();
  const at::Tensor dense = v.forward(x).feature;
  ForwardOptions o;
  o.patch_index = at::arange(P, at::kLong).unsqueeze(0).repeat({3, 1});
  EXPECT_LT(rel_error(v.forward(x, o).feature, dense), kFloatTol);
  o.patch_index = at::stack({at::randperm(P, at::kLong), at::randperm(P, at::kLong), at::randperm(P, at::kLong)});
  EXPECT_LT(rel_error(v.forward(x, o).feature, dense), kFloatTol) << "tokens carry their own position embeddings";
}

TEST(Vit, SparseInputEqualsZeroingNothingButDropsTokens) {
  // A subset of patches differs from dense, and equals the per-image forward of the same subset.
  const ClipVision v = random_vit();
  const at::Tensor x = pixels(2);
  ForwardOptions o;
  o.patch_index = at::tensor({0, 3, 5, 9, 10, 15, 1, 2, 4, 6, 7, 8}, at::kLong).view({2, 6});
  const at::Tensor batched = v.forward(x, o).feature;
  EXPECT_GT(rel_error(batched, v.forward(x).feature), 1e-3);
  for (int i = 0; i < 2; ++i) {
    ForwardOptions one;
    one.patch_index = o.patch_index.slice(0, i, i + 1);
    EXPECT_LT(rel_error(v.forward(x.slice(0, i, i + 1), one).feature, batched.slice(0, i, i + 1)), kFloatTol);
  }
}

// Plain reference of pruning at layer l for one image: the layer run densely, the kept set
// chosen by a sort of the head-averaged CLS attention, then the rest of the network on it.
TEST(Vit, PruningKeepsTheHighestScoringPatchesInOrderAndMatchesPerImageRuns) {
  const ClipVision v = random_vit();
  const at::Tensor x = pixels(3, 4);
  ForwardOptions o;
  o.prune = {{1, 0.5}, {2, 0.25}};
  o.want_scores = true;
  const ForwardOutput r = v.forward(x, o);
  const int64_t P = v.config().num_patches();
  // 16 -> drop 8 at layer 1 -> 8 -> drop 2 at layer 2 -> 6
  EXPECT_EQ(r.patch_index.size(1), 6);
  EXPECT_TRUE(at::equal(r.keep_mask.sum(1), at::full({3}, 6, at::kLong)));
  // Survivors keep their original order.
  EXPECT_TRUE(at::equal(r.patch_index, std::get<0>(r.patch_index.sort(1))));
  // The last layer's pruning keeps the top scores of that layer among the 8 present patches.
  for (int i = 0; i < 3; ++i) {
    const at::Tensor present = r.patch_scores[i] > 0;
    EXPECT_EQ(present.sum().item<int64_t>(), 8);
    const at::Tensor s = r.patch_scores[i].masked_fill(~present, -1.0);
    const at::Tensor top = std::get<0>(std::get<1>(s.topk(6)).sort());
    EXPECT_TRUE(at::equal(top, r.patch_index[i])) << i;
  }
  // Batched = per image.
  for (int i = 0; i < 3; ++i) {
    const ForwardOutput one = v.forward(x.slice(0, i, i + 1), o);
    EXPECT_LT(rel_error(one.feature, r.feature.slice(0, i, i + 1)), kFloatTol);
    EXPECT_TRUE(at::equal(one.patch_index, r.patch_index.slice(0, i, i + 1)));
  }
  // Pruning at the last layer does not change the feature (only CLS matters there).
  ForwardOptions last;
  last.prune = {{2, 0.75}};
  EXPECT_LT(rel_error(v.forward(x, last).feature, v.forward(x).feature), kFloatTol);
  // Scores: a probability row restricted to patches, so in (0, 1].
  EXPECT_LE(r.patch_scores.sum(1).max().item<double>(), 1.0 + 1e-6);
  (void)P;
}

TEST(Vit, ScoresAtTheLastLayerEqualAFullForwardComputation) {
  // cls-only last layer vs the full last layer: the CLS attention row is the same.
  const ClipVision v = random_vit();
  const at::Tensor x = pixels(2);
  ForwardOptions a, b;
  a.want_scores = b.want_scores = true;
  b.cls_only_last = false;
  EXPECT_LT(rel_error(v.forward(x, a).patch_scores, v.forward(x, b).patch_scores), kFloatTol);
}

TEST(Vit, FusedAttentionEqualsExplicitOrIsRefused) {
  ClipVision v = random_vit();
  if (!fused_attention_available()) {
    EXPECT_EQ(v.attention(), Attention::kExplicit);
    EXPECT_THROW_MSG(v.set_attention(Attention::kFused), InputError, "fused attention needs LibTorch >= 2.0");
    GTEST_SKIP() << "this LibTorch (< 2.0) has no scaled_dot_product_attention: only the explicit path is built";
  }
  EXPECT_EQ(v.attention(), Attention::kFused);  // the default where the build has it
  Lora l = nonzero_lora(v.config());
  l.set_requires_grad(true, false);
  const at::Tensor x = pixels(3, 6);
  // Sparse input, pruning at a middle and the last layer, scores: every use of the CLS row.
  ForwardOptions o;
  o.patch_index = at::tensor({0, 2, 3, 5, 7, 8, 11, 12, 13, 15}, at::kLong).repeat({3, 1});
  o.prune = {{1, 0.5}, {2, 0.25}};
  o.want_scores = true;
  struct Run {
    ForwardOutput out;
    std::vector<at::Tensor> grads;
  };
  auto run = [&](Attention a) {
    v.set_attention(a);
    for (auto& p : l.parameters(false))
      if (p.grad().defined()) p.mutable_grad().zero_();
    Run r{v.forward(x, o, &l), {}};
    r.out.feature.pow(2).sum().backward();
    for (const auto& p : l.parameters(false)) r.grads.push_back(p.grad().clone());
    return r;
  };
  const Run e = run(Attention::kExplicit), f = run(Attention::kFused);
  EXPECT_LT(rel_error(f.out.feature, e.out.feature), kFloatTol);
  EXPECT_LT(rel_error(f.out.patch_scores, e.out.patch_scores), kFloatTol);
  EXPECT_TRUE(at::equal(f.out.patch_index, e.out.patch_index));
  for (size_t i = 0; i < e.grads.size(); ++i) EXPECT_LT(rel_error(f.grads[i], e.grads[i]), 1e-4) << i;
}

TEST(Vit, OfficialResidualBugIsOptIn) {
  const ClipVision v = random_vit();
  const at::Tensor x = pixels(2);
  ForwardOptions fixed, bug;
  fixed.prune = bug.prune = {{0, 0.25}};
  bug.official_prune_residual = true;
  EXPECT_GT(rel_error(v.forward(x, bug).feature, v.forward(x, fixed).feature), 1e-3);
}

TEST(Vit, BadInputsAreRejected) {
  const ClipVision v = random_vit();
  EXPECT_THROW(v.forward(at::randn({1, 3, 8, 8})), InputError);
  ForwardOptions o;
  o.prune = {{7, 0.5}};
  EXPECT_THROW(v.forward(pixels(1), o), InputError);
  o.prune = {{0, 1.0}};
  EXPECT_THROW(v.forward(pixels(1), o), InputError);
  ForwardOptions s;
  s.patch_index = at::tensor({0, 16}, at::kLong).view({1, 2});
  EXPECT_THROW(v.forward(pixels(1), s), InputError);
}

TEST(Vit, SaveAndLoadInHfFormatRoundTrips) {
  test::TempDir dir;
  const ClipVision v = random_vit(Activation::kGelu);
  v.save(dir.file("m"));
  const ClipVision r = ClipVision::load(dir.file("m"));
  EXPECT_EQ(r.config().hidden_act, Activation::kGelu);
  const at::Tensor x = pixels(2);
  EXPECT_TRUE(at::equal(v.forward(x).feature, r.forward(x).feature));
}

TEST(Vit, LoaderRejectsMissingUnexpectedWrongShapeAndNanTensors) {
  const ClipVision v = random_vit();
  const auto good = v.state_dict();
  auto expect_error = [&](std::map<std::string, at::Tensor> sd, const std::string& needle) {
    try {
      ClipVision::from_tensors(v.config(), sd, "file.safetensors");
      FAIL() << "accepted; expected " << needle;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto sd = good;
  sd.erase("vision_model.post_layernorm.bias");
  expect_error(sd, "missing tensor 'vision_model.post_layernorm.bias'");
  sd = good;
  sd["vision_model.encoder.layers.9.mlp.fc1.bias"] = at::zeros({64});
  expect_error(sd, "unexpected tensor");
  sd = good;
  sd["vision_model.encoder.layers.0.mlp.fc1.weight"] = at::zeros({64, 31});
  expect_error(sd, "has shape [64, 31], the config implies [64, 32]");
  sd = good;
  sd["vision_model.pre_layrnorm.weight"] = at::full({32}, NAN);
  expect_error(sd, "NaN");
  sd = good;  // text tower and position_ids are ignored
  sd["text_model.embeddings.token_embedding.weight"] = at::zeros({3, 3});
  sd["vision_model.embeddings.position_ids"] = at::arange(17, at::kLong);
  EXPECT_NO_THROW(ClipVision::from_tensors(v.config(), sd, "ok"));
}

TEST(Vit, PreprocessNormalisesResizesAndRepeatsGray) {
  const ClipVision v = random_vit();
  const at::Tensor img = at::full({1, 16, 16, 3}, 255, at::kByte);
  const at::Tensor p = v.preprocess(img);
  const auto [lo, hi] = v.pixel_bounds();
  EXPECT_LT(rel_error(p[0].amax({1, 2}), hi), 1e-6);
  EXPECT_EQ(v.preprocess(at::zeros({2, 8, 8, 1}, at::kByte)).sizes(), (std::vector<int64_t>{2, 3, 16, 16}));
  EXPECT_LT(rel_error(v.preprocess(at::zeros({1, 8, 8, 1}, at::kByte))[0].amin({1, 2}), lo), 1e-6);
  EXPECT_THROW(v.preprocess(at::zeros({1, 16, 16, 2}, at::kByte)), InputError);
}

TEST(Vit, PreprocessAtTheModelsSizeIsTheGeneralFormulaBitForBit) {
  // The one-pass CPU path for uint8 images at the model's size and channels against
  // (v / 255 - mean) / std in ATen's ops, the general path's order.
  const ClipVision v = random_vit();
  at::manual_seed(3);
  const at::Tensor img = at::randint(0, 256, {5, 16, 16, 3}, at::kByte);
  const auto& c = v.config();
  const at::Tensor m = at::tensor(std::vector<float>(c.image_mean.begin(), c.image_mean.end())).view({1, 3, 1, 1});
  const at::Tensor d = at::tensor(std::vector<float>(c.image_std.begin(), c.image_std.end())).view({1, 3, 1, 1});
  const at::Tensor ref = (img.permute({0, 3, 1, 2}).to(at::kFloat).div_(255.0) - m) / d;
  const at::Tensor got = v.preprocess(img);
  EXPECT_TRUE(got.is_contiguous());
  EXPECT_TRUE(at::equal(got, ref));
  EXPECT_TRUE(at::equal(v.preprocess(img.permute({0, 2, 1, 3})), ref.transpose(2, 3)));  // a strided input
  const at::Tensor grey = img.narrow(3, 0, 1);                                           // one channel, repeated
  EXPECT_TRUE(at::equal(v.preprocess(grey), (grey.permute({0, 3, 1, 2}).to(at::kFloat).div_(255.0) - m) / d));
}

TEST(Vit, PatchesCopiedByRowsEqualAtensIndexing) {
  // Pixels without a gradient take the row copies, pixels with one ATen's indexing (the
  // inversion): the same features, dense and sparse, and the gradient still reaches the pixels.
  const ClipVision v = random_vit();
  const Lora l = nonzero_lora(v.config());
  const at::Tensor x = pixels(3, 8);
  ForwardOptions sparse;
  sparse.patch_index = at::tensor({15, 2, 3, 5, 7, 0, 1, 4, 6, 8, 9, 14, 0, 1, 2, 3, 12, 13}, at::kLong).view({3, 6});
  for (const ForwardOptions& o : {ForwardOptions{}, sparse}) {
    const at::Tensor rows = v.forward(x, o, &l).feature;
    const at::Tensor px = x.clone().requires_grad_(true);
    const at::Tensor aten = v.forward(px, o, &l).feature;
    EXPECT_TRUE(at::equal(rows, aten.detach()));
    aten.sum().backward();
    EXPECT_GT(px.grad().abs().sum().item<double>(), 0.0);
  }
}

TEST(Vit, ResizeTakesTheShorterSideThenTheCentreCropAsClip) {
  // Shorter side already at size: no resampling, only the centre crop of the longer side.
  const at::Tensor wide = at::rand({2, 3, 4, 8});
  EXPECT_TRUE(at::equal(resize_center_crop(wide, 4), wide.narrow(3, 2, 4)));
  const at::Tensor tall = at::rand({1, 3, 10, 4});
  EXPECT_TRUE(at::equal(resize_center_crop(tall, 4), tall.narrow(2, 3, 4)));
  // Shrinking is antialiased (as PIL's bicubic): a one-pixel checkerboard halved is grey, not a
  // sample of its black or white pixels.
  const at::Tensor idx = at::arange(16);
  const at::Tensor board = (idx.view({-1, 1}) + idx.view({1, -1})).remainder(2).to(at::kFloat).expand({1, 3, 16, 16});
  const at::Tensor half = resize_center_crop(board, 8);
  EXPECT_EQ(half.sizes(), (std::vector<int64_t>{1, 3, 8, 8}));
  EXPECT_LT((half.narrow(2, 2, 4).narrow(3, 2, 4) - 0.5).abs().max().item<float>(), 0.05);
  // A non-square image: 12 x 6 to 3 keeps the aspect (6 x 3), then the centre 3 x 3.
  EXPECT_EQ(resize_center_crop(at::rand({1, 1, 12, 6}), 3).sizes(), (std::vector<int64_t>{1, 1, 3, 3}));
  // uint8 images of any size come back at size x size, a constant image unchanged.
  const at::Tensor grey = at::full({1, 30, 20, 3}, 77, at::kByte);
  EXPECT_TRUE(at::equal(fit_images(grey, 16), at::full({1, 16, 16, 3}, 77, at::kByte)));
  EXPECT_TRUE(at::equal(fit_images(grey.narrow(1, 0, 20), 20), grey.narrow(1, 0, 20)));
}

TEST(Vit, Bf16AutocastRunsAndStaysClose) {
  const ClipVision v = random_vit();
  const at::Tensor x = pixels(2);
  at::Tensor f;
  {
    AutocastScope scope(c10::DeviceType::CPU, true);
    f = v.forward(x).feature;
  }
  EXPECT_LT(rel_error(f.to(at::kFloat), v.forward(x).feature), 0.1);
}

TEST(Vit, Bf16PrecisionIsTheAutocastForwardWithFloatOutputs) {
  ClipVision v = random_vit();
  const Lora l = nonzero_lora(v.config());
  const at::Tensor x = pixels(3);
  ForwardOptions fo;
  fo.want_scores = true;
  const ForwardOutput ref = v.forward(x, fo, &l);
  at::Tensor scoped;
  {
    AutocastScope scope(c10::DeviceType::CPU, true);
    scoped = v.forward(x, fo, &l).feature.to(at::kFloat);
  }
  v.set_precision(Precision::kBf16);
  EXPECT_EQ(v.precision(), Precision::kBf16);
  const ForwardOutput b = v.forward(x, fo, &l);
  EXPECT_EQ(b.feature.scalar_type(), at::kFloat);
  EXPECT_EQ(b.patch_scores.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(b.feature, scoped));          // exactly the autocast pass
  EXPECT_GT(rel_error(b.feature, ref.feature), 0.0);  // and not the fp32 one
  EXPECT_LT(rel_error(b.feature, ref.feature), 0.1);
  // Gradients reach the pixels (inversion) in float32.
  const at::Tensor px = x.clone().requires_grad_(true);
  v.forward(px, {}, &l).feature.pow(2).sum().backward();
  ASSERT_TRUE(px.grad().defined());
  EXPECT_EQ(px.grad().scalar_type(), at::kFloat);
  EXPECT_GT(px.grad().abs().sum().item<double>(), 0.0);
  // Autocast is off again after the pass: a matmul outside it stays float32.
  EXPECT_EQ(at::mm(at::ones({2, 2}), at::ones({2, 2})).scalar_type(), at::kFloat);
}

TEST(Precision, Tf32IsSetProcessWide) {
  set_tf32(false);
  EXPECT_FALSE(tf32_enabled());
  set_tf32(true);
  EXPECT_TRUE(tf32_enabled());
}

TEST(Precision, ResolvesFixedAndAutoChoices) {
  const c10::Device cpu(at::kCPU);
  EXPECT_EQ(resolve_precision("fp32", cpu).precision, Precision::kFp32);
  EXPECT_EQ(resolve_precision("bf16", cpu).precision, Precision::kBf16);
  EXPECT_THROW(resolve_precision("fp16", cpu), InputError);
  EXPECT_STREQ(precision_name(Precision::kBf16), "bf16");
  EXPECT_STREQ(precision_name(Precision::kFp32), "fp32");
  // auto follows the CPU's bf16 instructions, and says which it found.
  const PrecisionChoice a = resolve_precision("auto", cpu);
  const std::string f = cpu_bf16_features();
  EXPECT_EQ(a.precision, f.empty() ? Precision::kFp32 : Precision::kBf16);
  if (!f.empty()) {
    EXPECT_NE(a.reason.find(f), std::string::npos) << a.reason;
  }
  // bf16 asked for is kept; on a CPU without bf16 instructions with a warning that says so, and
  // that says where the emulation sums in bf16.
  const std::string w = resolve_precision("bf16", cpu).warning;
  EXPECT_EQ(w.empty(), !f.empty());
  if (!f.empty()) {
    EXPECT_TRUE(bf16_matmul_accumulates_in_float());
  }
  if (!w.empty()) {
    EXPECT_EQ(w.find("sums their products in bf16") == std::string::npos, bf16_matmul_accumulates_in_float()) << w;
  }
  EXPECT_TRUE(resolve_precision("fp32", cpu).warning.empty());
  EXPECT_TRUE(a.warning.empty());
}

TEST(Vit, GradientsFlowToLoraOnly) {
  const ClipVision v = random_vit();
  Lora l = nonzero_lora(v.config());
  l.init_head(3, 1);
  l.set_requires_grad(true, true);
  const at::Tensor loss = l.head(v.forward(pixels(2), {}, &l).feature).pow(2).sum();
  loss.backward();
  for (const auto& p : l.parameters(true)) {
    ASSERT_TRUE(p.grad().defined());
    EXPECT_GT(p.grad().abs().sum().item<double>(), 0.0);
  }
}

TEST(Device, CudaIsRefusedClearlyWithoutIt) {
  if (at::hasCUDA()) GTEST_SKIP() << "CUDA present: nothing to refuse";
  EXPECT_THROW(select_device("cuda", 0), InputError);
  EXPECT_EQ(select_device("auto", 1).type(), c10::DeviceType::CPU);
  EXPECT_THROW(select_device("tpu", 0), InputError);
}

TEST(Device, ForwardOnCudaMatchesCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA in this LibTorch build or no GPU";
  ClipVision v = random_vit();
  const at::Tensor x = pixels(2);
  const at::Tensor cpu = v.forward(x).feature;
  v.to(select_device("cuda", 0));
  EXPECT_LT(rel_error(v.forward(x.cuda()).feature.cpu(), cpu), 1e-4);
}

}  // namespace
}  // namespace lorarec::model
