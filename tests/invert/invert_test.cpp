#include "lorarecycle/invert/invert.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "lorarecycle/data/image_set.h"
#include "lorarecycle/invert/pool.h"
#include "lorarecycle/io/hdf5.h"
#include "lorarecycle/util/error.h"
#include "test_util.h"

namespace lorarec::invert {
namespace {

TEST(InversionLoss, TermsEqualDirectComputations) {
  at::manual_seed(0);
  const at::Tensor logits = at::randn({4, 3});
  const at::Tensor y = at::tensor({0, 2, 1, 2}, at::kLong);
  const at::Tensor x = at::randn({2, 3, 4, 5});
  model::BnStat s1{at::tensor({0.1f, 0.2f}), at::tensor({1.0f, 2.0f}), at::tensor({0.0f, 0.0f}),
                   at::tensor({1.5f, 1.0f})};
  model::BnStat s2{at::tensor({1.0f}), at::tensor({3.0f}), at::tensor({0.0f}), at::tensor({1.0f})};
  const std::vector<model::BnStat> stats{s1, s2};
  InversionConfig cfg;
  cfg.w_ce = 1.0, cfg.w_bn = 0.5, cfg.w_tv = 2.0, cfg.w_l2 = 0.1;
  const LossTerms t = loss_terms(logits, y, &stats, x, cfg);
  // cross-entropy, by hand
  double ce = 0;
  for (int i = 0; i < 4; ++i) {
    double z = 0;
    for (int c = 0; c < 3; ++c) z += std::exp(logits[i][c].item<double>());
    ce += std::log(z) - logits[i][y[i].item<int64_t>()].item<double>();
  }
  EXPECT_NEAR(t.ce.item<double>(), ce / 4, 1e-5);
  // BN: ||rv - v|| + ||rm - m|| per layer
  const double bn = std::sqrt(0.25 + 1.0) + std::sqrt(0.01 + 0.04) + std::sqrt(4.0) + 1.0;
  EXPECT_NEAR(t.bn.item<double>(), bn, 1e-5);
  // TV: mean squared vertical + horizontal differences
  double v = 0, h = 0;
  const auto a = x.accessor<float, 4>();
  for (int n = 0; n < 2; ++n)
    for (int c = 0; c < 3; ++c)
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 5; ++j) {
          if (i + 1 < 4) v += std::pow(a[n][c][i + 1][j] - a[n][c][i][j], 2);
          if (j + 1 < 5) h += std::pow(a[n][c][i][j + 1] - a[n][c][i][j], 2);
        }
  EXPECT_NEAR(t.tv.item<double>(), v / (2 * 3 * 3 * 5) + h / (2 * 3 * 4 * 4), 1e-5);
  EXPECT_NEAR(t.l2.item<double>(), std::sqrt(x.pow(2).sum().item<double>()), 1e-4);
  EXPECT_NEAR(t.total.item<double>(), ce / 4 + 0.5 * bn + 2.0 * t.tv.item<double>() + 0.1 * t.l2.item<double>(), 1e-4);
  // Without stats the BN term is 0.
  EXPECT_EQ(loss_terms(logits, y, nullptr, x, cfg).bn.item<double>(), 0.0);
}

TEST(InversionLoss, DiversityIsTheMeanCosineOfSameClassPairs) {
  at::manual_seed(1);
  const at::Tensor logits = at::randn({5, 3});
  const at::Tensor y = at::tensor({0, 2, 1, 2, 2}, at::kLong);  // same-class pairs: (1,3), (1,4), (3,4)
  const at::Tensor x = at::randn({5, 3, 4, 4});
  const at::Tensor f = at::randn({5, 6});
  InversionConfig cfg;
  cfg.w_div = 0.7;
  const LossTerms t = loss_terms(logits, y, nullptr, x, cfg, &f);
  auto cos = [&](int i, int j) {
    return (f[i] * f[j]).sum().item<double>() / (f[i].norm().item<double>() * f[j].norm().item<double>());
  };
  const double div = (cos(1, 3) + cos(1, 4) + cos(3, 4)) / 3.0;
  EXPECT_NEAR(t.div.item<double>(), div, 1e-5);
  EXPECT_NEAR(t.total.item<double>(), t.ce.item<double>() + 0.7 * div, 1e-5);
  // Without features, or without two images of one class, the term is 0.
  EXPECT_EQ(loss_terms(logits, y, nullptr, x, cfg).div.item<double>(), 0.0);
  const at::Tensor distinct = at::tensor({0, 1, 2, 3, 4}, at::kLong);
  EXPECT_EQ(loss_terms(at::randn({5, 5}), distinct, nullptr, x, cfg, &f).div.item<double>(), 0.0);
  // Its gradient pushes two same-class features apart.
  const at::Tensor g = f.clone().requires_grad_(true);
  loss_terms(logits, y, nullptr, x, cfg, &g).div.backward();
  const at::Tensor step = g.detach() - 0.1 * g.grad();
  const LossTerms after = loss_terms(logits, y, nullptr, x, cfg, &step);
  EXPECT_LT(after.div.item<double>(), t.div.item<double>());
}

TEST(InversionLoss, ClampKeepsEveryChannelInItsRange) {
  at::Tensor x = at::randn({3, 3, 4, 4}) * 5;
  const at::Tensor lo = at::tensor({-1.0f, -2.0f, -0.5f}), hi = at::tensor({1.0f, 0.5f, 2.0f});
  const at::Tensor before = x.clone();
  clamp_pixels(x, lo, hi);
  for (int c = 0; c < 3; ++c) {
    EXPECT_GE(x.select(1, c).min().item<float>(), lo[c].item<float>());
    EXPECT_LE(x.select(1, c).max().item<float>(), hi[c].item<float>());
  }
  const at::Tensor inside = (before >= lo.view({1, 3, 1, 1})) & (before <= hi.view({1, 3, 1, 1}));
  EXPECT_TRUE(at::equal(x.masked_select(inside), before.masked_select(inside)));
}

struct Teacher {
  model::ClipVision vit;
  model::Lora lora;
};

Teacher tiny_teacher() {
  Teacher t{model::ClipVision::random(test::tiny_config(), 3),
            model::Lora(test::tiny_config(), model::LoraConfig{}, 4)};
  for (const auto& [key, ad] : t.lora.adapters())
    t.lora.find(key.first, static_cast<model::Module>(key.second))->b.normal_(0, 0.2);
  t.lora.init_head(3, 5);
  return t;
}

TEST(Inversion, KeepsTheLowestLossIterate) {
  const Teacher t = tiny_teacher();
  InversionConfig cfg;
  cfg.per_class = 2;
  cfg.iterations = 40;
  cfg.lr = 0.5;  // large steps: the loss is not monotone
  const Surrogates s = invert_lora(t.vit, t.lora, nullptr, cfg, 1);
  ASSERT_EQ(static_cast<int>(s.losses.size()), 40);
  const auto best = std::min_element(s.losses.begin(), s.losses.end());
  EXPECT_EQ(s.best_iteration, best - s.losses.begin());
  EXPECT_DOUBLE_EQ(s.best_loss, *best);
  EXPECT_DOUBLE_EQ(s.final_loss, s.losses.back());
  // The stored images are the iterate at best_iteration: a run stopped right after it stores the same.
  InversionConfig shorter = cfg;
  shorter.iterations = s.best_iteration + 1;
  const Surrogates p = invert_lora(t.vit, t.lora, nullptr, shorter, 1);
  EXPECT_TRUE(at::equal(p.images, s.images));
  EXPECT_EQ(s.images.sizes(), (std::vector<int64_t>{6, 16, 16, 3}));
  EXPECT_TRUE(at::equal(s.labels, at::tensor({0, 1, 2, 0, 1, 2}, at::kInt)));
}

TEST(Inversion, RollEachIsAPerImageRollThenFlip) {
  at::manual_seed(3);
  const at::Tensor x = at::randn({3, 2, 5, 7}).requires_grad_(true);
  const std::vector<int> dy{1, -2, 7}, dx{0, 3, -9};
  const std::vector<bool> fl{false, true, true};
  const at::Tensor r = roll_each(x, dy, dx, fl);
  for (int b = 0; b < 3; ++b) {
    at::Tensor want = at::roll(x[b], {dy[b], dx[b]}, {1, 2});
    if (fl[b]) want = want.flip({2});
    EXPECT_TRUE(at::equal(r[b], want)) << "image " << b;
  }
  EXPECT_TRUE(at::equal(
      roll_each(x, dy, dx, {}),
      at::stack({at::roll(x[0], {1, 0}, {1, 2}), at::roll(x[1], {-2, 3}, {1, 2}), at::roll(x[2], {7, -9}, {1, 2})})));
  // A permutation of each image's pixels: the gradient of a sum of weighted outputs routes every
  // weight back to its source pixel.
  const at::Tensor w = at::randn(r.sizes());
  (r * w).sum().backward();
  for (int b = 0; b < 3; ++b) {
    at::Tensor back = w[b];
    if (fl[b]) back = back.flip({2});
    EXPECT_TRUE(at::allclose(x.grad()[b], at::roll(back, {-dy[b], -dx[b]}, {1, 2})));
  }
  EXPECT_THROW(roll_each(x, {1, 2}, dx, fl), lorarec::InputError);
}

// A short inversion of the tiny teacher: 2 images per class, 20 iterations, a roll of `jitter`.
InversionConfig short_run(int jitter) {
  InversionConfig cfg;
  cfg.per_class = 2;
  cfg.iterations = 20;
  cfg.jitter = jitter;
  return cfg;
}

TEST(Inversion, PerImageJitterGivesEachImageItsOwnViews) {
  const Teacher t = tiny_teacher();
  InversionConfig cfg = short_run(3);
  const Surrogates shared = invert_lora(t.vit, t.lora, nullptr, cfg, 1);
  cfg.per_image = true;
  const Surrogates own = invert_lora(t.vit, t.lora, nullptr, cfg, 1);
  const Surrogates again = invert_lora(t.vit, t.lora, nullptr, cfg, 1);
  EXPECT_TRUE(at::equal(own.images, again.images));    // seeded: the same views every run
  EXPECT_FALSE(at::equal(own.images, shared.images));  // other views, other images
  EXPECT_LT(own.best_loss, own.losses.front());
  EXPECT_EQ(own.images.sizes(), shared.images.sizes());
}

TEST(InversionLoss, SoftTargetsGiveTheCrossEntropyOfTheMixture) {
  at::manual_seed(5);
  const at::Tensor logits = at::randn({6, 4});
  const at::Tensor y = at::tensor({0, 1, 2, 3, 0, 1}, at::kLong);
  const at::Tensor x = at::randn({6, 3, 4, 4});
  InversionConfig cfg;
  const at::Tensor onehot = at::one_hot(y, 4).to(at::kFloat);
  EXPECT_NEAR(loss_terms(logits, y, nullptr, x, cfg, nullptr, &onehot).ce.item<double>(),
              loss_terms(logits, y, nullptr, x, cfg).ce.item<double>(), 1e-6);
  const at::Tensor soft = mixed_targets(y, 4, 0.4, 11, 2);
  ASSERT_EQ(soft.sizes(), (std::vector<int64_t>{6, 4}));
  EXPECT_TRUE(at::allclose(soft.sum(1), at::ones({6})));
  for (int i = 0; i < 6; ++i) {
    const int yi = static_cast<int>(y[i].item<int64_t>());
    EXPECT_GE(soft[i][yi].item<float>(), 0.6f - 1e-6f);  // at most 0.4 moved
    EXPECT_EQ(soft[i].gt(0).sum().item<int64_t>(), 2);   // its class and one other
  }
  EXPECT_TRUE(at::equal(soft, mixed_targets(y, 4, 0.4, 11, 2)));   // seeded
  EXPECT_FALSE(at::equal(soft, mixed_targets(y, 4, 0.4, 11, 3)));  // per LoRA (stream)
  const at::Tensor ls = at::log_softmax(logits, -1);
  double want = 0;
  for (int i = 0; i < 6; ++i)
    for (int c = 0; c < 4; ++c) want -= soft[i][c].item<double>() * ls[i][c].item<double>();
  EXPECT_NEAR(loss_terms(logits, y, nullptr, x, cfg, nullptr, &soft).ce.item<double>(), want / 6, 1e-5);
  EXPECT_THROW(mixed_targets(y, 1, 0.4, 0, 0), lorarec::InputError);
}

TEST(InversionLoss, StopConfidenceDropsConfidentImagesFromTheCrossEntropy) {
  // Image 0 is its class at p ~ 0.99, image 1 at p ~ 0.33, image 2 at ~ 0.58.
  const at::Tensor logits =
      at::tensor({6.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 1.0f, 0.0f, 0.0f}).view({3, 3}).requires_grad_(true);
  const at::Tensor y = at::tensor({0, 1, 0}, at::kLong);
  const at::Tensor x = at::zeros({3, 1, 2, 2});
  InversionConfig cfg;
  const at::Tensor each = at::cross_entropy_loss(logits.detach(), y, {}, at::Reduction::None);
  EXPECT_NEAR(loss_terms(logits, y, nullptr, x, cfg).ce.item<double>(), each.mean().item<double>(), 1e-6);
  cfg.stop_confidence = 0.9;  // image 0 drops out; the mean stays over 3
  const LossTerms t = loss_terms(logits, y, nullptr, x, cfg);
  EXPECT_NEAR(t.ce.item<double>(), (each[1] + each[2]).item<double>() / 3, 1e-6);
  t.ce.backward();
  EXPECT_TRUE(at::equal(logits.grad()[0], at::zeros({3})));
  EXPECT_GT(logits.grad()[1].abs().sum().item<double>(), 0.0);
  cfg.stop_confidence = 0.5;  // images 0 and 2 drop out
  EXPECT_NEAR(loss_terms(logits, y, nullptr, x, cfg).ce.item<double>(), each[1].item<double>() / 3, 1e-6);
}

TEST(Inversion, ZoomViewIsTheCropResizedBack) {
  at::manual_seed(2);
  const at::Tensor x = at::randn({2, 1, 8, 8}).requires_grad_(true);
  EXPECT_TRUE(at::equal(zoom_view(x, 8, 0, 0), x));
  const at::Tensor z = zoom_view(x, 4, 1, 3);
  ASSERT_EQ(z.sizes(), x.sizes());
  // A 4 x 4 square doubled: the bilinear resize of that square, and constant where the square is.
  const at::Tensor crop = x.detach().slice(2, 1, 5).slice(3, 3, 7);
  EXPECT_TRUE(at::allclose(z.detach(), at::upsample_bilinear2d(crop, {8, 8}, false)));
  const at::Tensor c = at::ones({1, 1, 8, 8});
  EXPECT_TRUE(at::allclose(zoom_view(c, 5, 2, 2), c));
  z.sum().backward();  // only the square's pixels get a gradient
  EXPECT_GT(x.grad().slice(2, 1, 5).slice(3, 3, 7).abs().sum().item<double>(), 0.0);
  EXPECT_EQ(x.grad().slice(2, 5).abs().sum().item<double>(), 0.0);
  EXPECT_EQ(x.grad().slice(3, 0, 3).abs().sum().item<double>(), 0.0);
  EXPECT_THROW(zoom_view(x, 4, 5, 0), lorarec::InputError);
  EXPECT_THROW(zoom_view(x, 0, 0, 0), lorarec::InputError);
}

TEST(Inversion, LowresNoiseIsSmoothUnitNoiseOfSeveralSizes) {
  auto rng = data::make_rng(3, 0, 0);
  at::manual_seed(3);
  const at::Tensor z = lowres_noise(12, 1, 16, 2, rng, c10::Device(at::kCPU));
  ASSERT_EQ(z.sizes(), (std::vector<int64_t>{12, 1, 16, 16}));
  const at::Tensor sd = z.view({12, -1}).std(1);
  EXPECT_TRUE(at::allclose(sd, at::ones({12}), 1e-4, 1e-4));
  // Neighbouring pixels: white noise differs by ~sqrt(2) std; upsampled noise much less, and the
  // images do not share one size (the mean step varies across them).
  const at::Tensor step = (z.slice(3, 1) - z.slice(3, 0, -1)).abs().mean({1, 2, 3});
  EXPECT_LT(step.min().item<double>(), 0.6);
  EXPECT_GT(step.max().item<double>() - step.min().item<double>(), 0.05);
  auto rng2 = data::make_rng(3, 0, 0);
  at::manual_seed(3);
  EXPECT_TRUE(at::equal(z, lowres_noise(12, 1, 16, 2, rng2, c10::Device(at::kCPU))));  // seeded
  EXPECT_THROW(lowres_noise(1, 1, 16, 32, rng, c10::Device(at::kCPU)), lorarec::InputError);
}

TEST(Inversion, ZoomAffineAndStopConfidenceChangeTheSurrogatesSeeded) {
  const Teacher t = tiny_teacher();
  InversionConfig cfg = short_run(2);
  const Surrogates plain = invert_lora(t.vit, t.lora, nullptr, cfg, 1);
  cfg.zoom = 0.5;
  const Surrogates zoomed = invert_lora(t.vit, t.lora, nullptr, cfg, 1);
  EXPECT_TRUE(at::equal(zoomed.images, invert_lora(t.vit, t.lora, nullptr, cfg, 1).images));  // seeded
  EXPECT_FALSE(at::equal(zoomed.images, plain.images));
  EXPECT_LT(zoomed.best_loss, zoomed.losses.front());
  cfg.zoom = 0;
  cfg.affine = 1;  // the same for the affine maps
  const Surrogates mapped = invert_lora(t.vit, t.lora, nullptr, cfg, 1);
  EXPECT_TRUE(at::equal(mapped.images, invert_lora(t.vit, t.lora, nullptr, cfg, 1).images));
  EXPECT_FALSE(at::equal(mapped.images, plain.images));
  EXPECT_LT(mapped.best_loss, mapped.losses.front());
  cfg.affine = 0;
  cfg.stop_confidence = 1e-6;  // every image is past it from the start: no CE gradient at all
  const Surrogates stopped = invert_lora(t.vit, t.lora, nullptr, cfg, 1);
  EXPECT_EQ(stopped.best_loss, 0.0);
  EXPECT_EQ(stopped.best_iteration, 0);  // the start, unchanged
}

// The share of an image's (or a batch's) energy above half the Nyquist frequency, |f| > 0.25 cycles/px.
double high_frequency_share(const at::Tensor& x) {
  const int64_t S = x.size(-1);
  const at::Tensor p = at::fft_fft2(x.to(at::kDouble)).abs().pow(2);
  const at::Tensor f = at::fft_fftfreq(S, 1.0, at::TensorOptions().dtype(at::kDouble));
  const at::Tensor high = (f.view({S, 1}).pow(2) + f.view({1, S}).pow(2)).sqrt().gt(0.25);
  return (p * high).sum().item<double>() / p.sum().item<double>();
}

TEST(Inversion, FourierSpectrumRoundTripsAndItsStepsAreBroadStrokes) {
  const c10::Device cpu(at::kCPU);
  // The scale: [S, S/2 + 1], 1/|f| falling with the frequency, root mean square 1 over the full
  // spectrum (columns 1 .. S/2 - 1 stand for two columns each); decay 0 is all ones.
  const at::Tensor s = fourier_scale(8, 1.0, cpu);
  ASSERT_EQ(s.sizes(), (std::vector<int64_t>{8, 5}));
  const at::Tensor twice = at::tensor({1.0, 2.0, 2.0, 2.0, 1.0}, at::kDouble).view({1, 5});
  EXPECT_NEAR((s.to(at::kDouble).pow(2) * twice).sum().item<double>() / 64.0, 1.0, 1e-5);
  EXPECT_DOUBLE_EQ(s[0][0].item<double>(), s[0][1].item<double>());         // |f| = 0 counts as the lowest frequency
  EXPECT_NEAR(s[0][1].item<double>() / s[0][4].item<double>(), 4.0, 1e-5);  // 1/8 against 1/2 cycles/px
  EXPECT_TRUE(at::allclose(fourier_scale(8, 0.0, cpu), at::ones({8, 5})));
  EXPECT_THROW(fourier_scale(8, -1.0, cpu), InputError);
  // The spectrum round-trips to the same image, and gradients reach it.
  at::manual_seed(5);
  const at::Tensor x = at::randn({3, 1, 8, 8});
  const at::Tensor v = to_spectrum(x, s);
  ASSERT_EQ(v.sizes(), (std::vector<int64_t>{3, 1, 8, 5, 2}));
  EXPECT_TRUE(at::allclose(from_spectrum(v, s, 8), x, 1e-5, 1e-5));
  const at::Tensor w = v.clone().requires_grad_(true);
  (from_spectrum(w, s, 8) * x).sum().backward();
  EXPECT_GT(w.grad().abs().sum().item<double>(), 0.0);
  // Through an inversion from a flat grey start: what the steps add to the pixels is broad strokes
  // with --fourier 1, where pixel steps put much of it in the high frequencies; the loss still
  // falls, the run is seeded, and the margin and the pixel range hold.
  const Teacher t = tiny_teacher();
  const int64_t S = t.vit.config().image_size;
  InversionConfig cfg = short_run(2);
  cfg.init_images = at::full({4, S, S, 1}, 128, at::kByte);
  cfg.gray = true;
  const Surrogates pixel = invert_lora(t.vit, t.lora, nullptr, cfg, 1);
  cfg.fourier = 1.0;
  const Surrogates spectral = invert_lora(t.vit, t.lora, nullptr, cfg, 1);
  EXPECT_TRUE(at::equal(spectral.images, invert_lora(t.vit, t.lora, nullptr, cfg, 1).images));
  EXPECT_LT(spectral.best_loss, spectral.losses.front());
  const auto added = [](const Surrogates& r) { return r.images.select(3, 0).to(at::kDouble) - 128.0; };
  ASSERT_GT(added(spectral).abs().max().item<double>(), 10.0);  // the images moved
  const double hs = high_frequency_share(added(spectral)), hp = high_frequency_share(added(pixel));
  EXPECT_LT(hs, 0.5 * hp) << hs << " " << hp;
  cfg.white_border = 2;
  const Surrogates framed = invert_lora(t.vit, t.lora, nullptr, cfg, 1);
  for (int dim : {1, 2}) EXPECT_EQ(framed.images.narrow(dim, 0, 2).min().item<int>(), 255);
}

// Parameters of one segment from pixel coordinates (the inverse of render_strokes' mapping).
std::vector<float> segment(double x0, double y0, double x1, double y1, int S, double width, double ink) {
  const auto logit = [](double u) { return static_cast<float>(std::log(u / (1.0 - u))); };
  return {logit(x0 / (S - 1)), logit(y0 / (S - 1)),        logit(x1 / (S - 1)),
          logit(y1 / (S - 1)), logit((width - 1.0) / 3.0), logit(ink)};
}

TEST(Inversion, StrokesDrawSoftSegmentsOnWhiteAndInvertAsDrawings) {
  // One horizontal segment of width 2 px from (4, 8) to (12, 8) in a 16 px image: dark on it, white
  // away from it, half-dark at its width's edge; a second one crossing it adds its ink.
  const int S = 16;
  std::vector<float> p = segment(4, 8, 12, 8, S, 2.0, 0.99);
  const at::Tensor one = render_strokes(at::tensor(p).view({1, 1, 6}), S);
  ASSERT_EQ(one.sizes(), (std::vector<int64_t>{1, 1, S, S}));
  const auto px = [](const at::Tensor& v, int row, int col) { return v[0][0][row][col].item<double>(); };
  EXPECT_LT(px(one, 8, 8), 0.15);         // on the segment
  EXPECT_GT(px(one, 2, 8), 0.999);        // 6 px above it
  EXPECT_GT(px(one, 8, 15), 0.97);        // 3 px past its end
  EXPECT_NEAR(px(one, 9, 8), 0.5, 0.06);  // 1 px off its axis: the edge of a 2 px stroke
  EXPECT_GE(one.min().item<double>(), 0.0);
  EXPECT_LE(one.max().item<double>(), 1.0);
  const std::vector<float> q = segment(8, 2, 8, 14, S, 2.0, 0.5);
  p.insert(p.end(), q.begin(), q.end());
  const at::Tensor two = render_strokes(at::tensor(p).view({1, 2, 6}), S);
  EXPECT_NEAR(px(two, 4, 8), 1.0 - 0.5 / (1.0 + std::exp(-2.0)), 0.01);  // the faint one alone, on its axis
  EXPECT_NEAR(px(two, 8, 8), px(one, 8, 8) * (1.0 - 0.5 * 0.88), 0.03);  // inks multiply where they cross
  // Gradients reach every parameter of a segment that touches the image.
  const at::Tensor w = at::tensor(p).view({1, 2, 6}).requires_grad_(true);
  render_strokes(w, S).sum().backward();
  EXPECT_TRUE(w.grad().abs().gt(0).all().item<bool>());
  EXPECT_THROW(render_strokes(at::zeros({1, 2, 5}), S), InputError);
  // The start: K segments per image inside the image, seeded.
  auto rng = data::make_rng(3, 0, 0);
  const at::Tensor s0 = init_strokes(4, 6, S, rng, c10::Device(at::kCPU));
  ASSERT_EQ(s0.sizes(), (std::vector<int64_t>{4, 6, 6}));
  auto rng2 = data::make_rng(3, 0, 0);
  EXPECT_TRUE(at::equal(s0, init_strokes(4, 6, S, rng2, c10::Device(at::kCPU))));
  const at::Tensor drawn = render_strokes(s0, S);
  EXPECT_LT(drawn.mean().item<double>(), 0.97);  // some ink
  EXPECT_GT(drawn.mean().item<double>(), 0.4);   // mostly paper
  // An inversion as drawings: the loss falls, the run is seeded, the stored images are drawings
  // (pixels paper white or ink dark), and the margin holds.
  const Teacher t = tiny_teacher();
  InversionConfig cfg = short_run(2);
  cfg.gray = true;
  cfg.strokes = 8;
  cfg.lr = 0.1;
  const Surrogates r = invert_lora(t.vit, t.lora, nullptr, cfg, 1);
  EXPECT_TRUE(at::equal(r.images, invert_lora(t.vit, t.lora, nullptr, cfg, 1).images));
  EXPECT_LT(r.best_loss, r.losses.front());
  const at::Tensor g = r.images.select(3, 0).to(at::kDouble);
  const double paper = g.ge(230).to(at::kDouble).mean().item<double>(),
               ink = g.le(60).to(at::kDouble).mean().item<double>();
  EXPECT_GT(paper, 0.2);        // 16 px images with 8 strokes: 29 % paper, 37 % ink
  EXPECT_GT(paper + ink, 0.5);  // few grey pixels, as in a drawing
  cfg.white_border = 2;
  const Surrogates framed = invert_lora(t.vit, t.lora, nullptr, cfg, 1);
  for (int dim : {1, 2}) EXPECT_EQ(framed.images.narrow(dim, 0, 2).min().item<int>(), 255);
  cfg.fourier = 1.0;  // a drawing has no spectrum to step on
  EXPECT_THROW(invert_lora(t.vit, t.lora, nullptr, cfg, 1), InputError);
}

TEST(Inversion, StartImagesAreRowsOfTheSetNormalisedLikeTheVariable) {
  const model::ClipVisionConfig mc = test::tiny_config();
  const int64_t S = mc.image_size;
  const at::Tensor set = at::randint(0, 256, {5, S, S, 3}, at::kByte);
  auto rng = data::make_rng(1, 0, 0);
  const at::Tensor x = start_images(set, 7, false, mc, rng, c10::Device(at::kCPU));
  ASSERT_EQ(x.sizes(), (std::vector<int64_t>{7, 3, S, S}));
  // Each start is one of the set's images: back to pixels, it matches some row to the rounding.
  const at::Tensor mean = at::tensor(std::vector<float>(mc.image_mean.begin(), mc.image_mean.end())).view({1, 3, 1, 1});
  const at::Tensor sd = at::tensor(std::vector<float>(mc.image_std.begin(), mc.image_std.end())).view({1, 3, 1, 1});
  const at::Tensor px = (x * sd + mean).mul(255).round().permute({0, 2, 3, 1});
  for (int64_t i = 0; i < 7; ++i) {
    const at::Tensor d = (set.to(at::kFloat) - px[i].unsqueeze(0)).abs().amax({1, 2, 3});
    EXPECT_LT(d.min().item<float>(), 0.51f) << "start " << i << " is no image of the set";
  }
  auto rng2 = data::make_rng(1, 0, 0);
  EXPECT_TRUE(at::equal(x, start_images(set, 7, false, mc, rng2, c10::Device(at::kCPU))));  // seeded
  // Grey: one channel, the mean of the three.
  auto rng3 = data::make_rng(1, 0, 0);
  const at::Tensor g = start_images(set, 7, true, mc, rng3, c10::Device(at::kCPU));
  ASSERT_EQ(g.sizes(), (std::vector<int64_t>{7, 1, S, S}));
  const double gm = (mc.image_mean[0] + mc.image_mean[1] + mc.image_mean[2]) / 3.0;
  const double gs = (mc.image_std[0] + mc.image_std[1] + mc.image_std[2]) / 3.0;
  EXPECT_TRUE(at::allclose(g * gs + gm, (x * sd + mean).mean(1, true), 1e-5, 1e-5));
  EXPECT_THROW(start_images(at::zeros({2, S + 1, S + 1, 3}, at::kByte), 1, false, mc, rng, c10::Device(at::kCPU)),
               lorarec::InputError);
}

TEST(Inversion, FeaturePriorMatchesTheTokenStatisticsOfTheSet) {
  const Teacher t = tiny_teacher();
  const model::ClipVisionConfig& mc = t.vit.config();
  const int64_t S = mc.image_size;
  at::manual_seed(3);
  const at::Tensor set = at::randint(0, 256, {24, S, S, 3}, at::kByte);
  const at::Tensor px = model::preprocess_images(set, mc, c10::Device(at::kCPU));
  model::ForwardOptions fo;
  // One input per layer, the first after the pre-LayerNorm; chunks give the statistics of the whole.
  std::vector<at::Tensor> inputs;
  fo.layer_inputs = &inputs;
  (void)t.vit.forward(px, fo, &t.lora);
  ASSERT_EQ(static_cast<int>(inputs.size()), mc.num_hidden_layers);
  EXPECT_EQ(inputs[0].sizes(), (std::vector<int64_t>{24, mc.num_patches() + 1, mc.hidden_size}));
  const std::vector<TokenStat> whole = token_stats(t.vit, &t.lora, px, fo, 24);
  const std::vector<TokenStat> chunked = token_stats(t.vit, &t.lora, px, fo, 5);
  ASSERT_EQ(whole.size(), inputs.size());
  for (size_t l = 0; l < whole.size(); ++l) {
    const at::Tensor flat = inputs[l].reshape({-1, mc.hidden_size});
    EXPECT_TRUE(at::allclose(whole[l].mean, flat.mean(0), 1e-5, 1e-5));
    EXPECT_TRUE(at::allclose(whole[l].var, flat.var(0, /*unbiased=*/false), 1e-4, 1e-5));
    EXPECT_TRUE(at::allclose(chunked[l].mean, whole[l].mean, 1e-5, 1e-5));
    EXPECT_TRUE(at::allclose(chunked[l].var, whole[l].var, 1e-4, 1e-5));
  }
  // With pruning, a layer after the pruning one has fewer tokens: its statistics are over them.
  model::ForwardOptions pruned = fo;
  pruned.prune = {{0, 0.5}};
  std::vector<at::Tensor> pruned_inputs;
  pruned.layer_inputs = &pruned_inputs;
  (void)t.vit.forward(px, pruned, &t.lora);
  ASSERT_LT(pruned_inputs[1].size(1), inputs[1].size(1));
  const std::vector<TokenStat> ps = token_stats(t.vit, &t.lora, px, pruned, 5);
  const at::Tensor pflat = pruned_inputs[1].reshape({-1, mc.hidden_size});
  EXPECT_TRUE(at::allclose(ps[1].mean, pflat.mean(0), 1e-5, 1e-5));
  EXPECT_TRUE(at::allclose(ps[1].var, pflat.var(0, false), 1e-4, 1e-5));
  // The loss is 0 on the set itself and the BN form (norms of the differences) elsewhere.
  EXPECT_LT(token_stat_loss(inputs, whole).item<double>(), 1e-4);
  std::vector<at::Tensor> noise_inputs;
  fo.layer_inputs = &noise_inputs;
  (void)t.vit.forward(at::randn({6, 3, S, S}), fo, &t.lora);
  double expected = 0;
  for (size_t l = 0; l < whole.size(); ++l) {
    const at::Tensor flat = noise_inputs[l].reshape({-1, mc.hidden_size});
    expected += (flat.mean(0) - whole[l].mean).norm().item<double>() +
                (flat.var(0, false) - whole[l].var).norm().item<double>();
  }
  EXPECT_NEAR(token_stat_loss(noise_inputs, whole).item<double>(), expected, 1e-4 * expected);
  EXPECT_GT(expected, 0.01);
  EXPECT_THROW(token_stat_loss({noise_inputs[0]}, whole), lorarec::InputError);
  // In the inversion: the term is added with its weight, and the optimisation lowers it.
  InversionConfig cfg = short_run(2);
  cfg.feature_prior = set;
  cfg.feature_prior_samples = 16;
  cfg.w_feat = 0;
  const Surrogates off = invert_lora(t.vit, t.lora, nullptr, InversionConfig(short_run(2)), 1);
  const Surrogates zero = invert_lora(t.vit, t.lora, nullptr, cfg, 1);
  EXPECT_DOUBLE_EQ(zero.losses.front(), off.losses.front());  // the same start and view
  cfg.w_feat = 1;
  const Surrogates on = invert_lora(t.vit, t.lora, nullptr, cfg, 1);
  EXPECT_GT(on.losses.front(), off.losses.front() + 0.01);
  EXPECT_LT(on.best_loss, on.losses.front());
  EXPECT_TRUE(at::equal(on.images, invert_lora(t.vit, t.lora, nullptr, cfg, 1).images));  // seeded
}

TEST(Pool, CoTeachersAreOtherLorasOfTheClassWithItsColumnAndWeight) {
  // LoRA 0 has classes {7, 8, 9}; 7 is also in LoRAs 1 and 2, 8 in LoRA 3, 9 nowhere else. LoRA 4
  // is LoRA 0's own directory under another id (a sub-zoo's link): never its own co-teacher.
  const auto e = [](int id, std::string dir, std::vector<int64_t> c) { return data::ZooEntry{id, dir, c, 0, 0}; };
  const std::vector<data::ZooEntry> zoo = {e(0, "/z/a", {7, 8, 9}), e(1, "/z/b", {1, 7, 2}), e(2, "/z/c", {7, 3, 4}),
                                           e(3, "/z/d", {5, 6, 8}), e(4, "/z/a", {7, 8, 9})};
  const int N = 3, K = 2;
  for (const int M : {1, 2, 5}) {
    const std::vector<CoTeacherPlan> plans = plan_co_teachers(zoo[0], zoo, M, K, 11);
    std::map<int64_t, int> per_class;  // class column of LoRA 0 -> co-teachers
    for (const CoTeacherPlan& p : plans) {
      EXPECT_NE(p.zoo_index, 0u);
      EXPECT_NE(p.zoo_index, 4u);
      ASSERT_EQ(p.rows.size(), p.labels.size());
      for (size_t r = 0; r < p.rows.size(); ++r) {
        // The row's class column in LoRA 0.
        const int64_t l = p.rows[r] % N;
        EXPECT_EQ(zoo[p.zoo_index].classes[p.labels[r]], zoo[0].classes[l]);  // the same dataset class
        per_class[l] += r % K == 0;
      }
    }
    EXPECT_EQ(per_class[0], std::min(M, 2));
    EXPECT_EQ(per_class[1], 1);
    EXPECT_EQ(per_class[2], 0);
    float total = 0;
    for (const CoTeacherPlan& p : plans)
      for (float w : p.weight) total += w;
    EXPECT_NEAR(total, 2.0f / 3.0f, 1e-6);  // two of the three classes have co-teachers: their rows weigh 1 / (N K)
  }
  EXPECT_TRUE(plan_co_teachers(zoo[0], zoo, 0, K, 11).empty());
}

TEST(Inversion, CoTeachersAddTheirWeightedCrossEntropyOnTheSameView) {
  // A co-teacher that is the LoRA itself, judging every row with weight 1 / n: at the first
  // iteration (same start, same view) its term equals the own cross-entropy, so the loss doubles
  // with w_co 1 and is 1.5 x with 0.5.
  const Teacher t = tiny_teacher();
  InversionConfig cfg = short_run(2);
  const Surrogates plain = invert_lora(t.vit, t.lora, nullptr, cfg, 1);
  const int n = 3 * cfg.per_class;
  CoTeacher self{t.lora, at::arange(n, at::kLong), at::arange(3, at::kLong).repeat({cfg.per_class}),
                 at::full({n}, 1.0f / float(n))};
  for (const double w : {1.0, 0.5}) {
    cfg.w_co = w;
    const Surrogates co = invert_lora(t.vit, t.lora, nullptr, cfg, 1, {}, {self});
    EXPECT_NEAR(co.losses.front(), (1 + w) * plain.losses.front(), 1e-5 * plain.losses.front());
    EXPECT_LT(co.best_loss, co.losses.front());
  }
}

TEST(InversionLoss, StudentTermIsTheComplementLogLikelihoodOfLeaveOneOutPrototypes) {
  at::manual_seed(4);
  const int64_t N = 3, B = 7, D = 4;
  const double T = 2.5;
  const at::Tensor f = at::randn({B, D});
  const at::Tensor y = at::tensor({0, 1, 2, 0, 1, 2, 0}, at::kLong);
  double want = 0;
  for (int64_t i = 0; i < B; ++i) {
    std::vector<double> logit(N);
    for (int64_t c = 0; c < N; ++c) {  // the class's mean, without image i
      at::Tensor sum = at::zeros({D});
      int n = 0;
      for (int64_t j = 0; j < B; ++j)
        if (y[j].item<int64_t>() == c && j != i) sum += f[j], ++n;
      logit[c] = -(f[i] - sum / n).pow(2).sum().item<double>() / T;
    }
    double z = 0;
    for (double l : logit) z += std::exp(l);
    want += -std::log(1 - std::exp(logit[y[i].item<int64_t>()]) / z);
  }
  EXPECT_NEAR(student_term(f, y, N, T).item<double>(), want / B, 1e-5);
  // A class with one image has no prototype without it.
  EXPECT_THROW(student_term(f.slice(0, 0, 5), y.slice(0, 0, 5), N, T), InputError);
  EXPECT_THROW(student_term(f, y, N, 0), InputError);
}

TEST(Inversion, AgainstAStudentTheSurrogatesEndHarderForIt) {
  // The student is another LoRA on the same VFM. With w_adv > 0 the first loss adds the (positive)
  // student term, and the stored surrogates are harder for the student's prototypes than those of
  // the same run without it, while the loss still falls.
  const Teacher t = tiny_teacher();
  model::Lora student(test::tiny_config(), model::LoraConfig{}, 9);
  for (const auto& [key, ad] : student.adapters())
    student.find(key.first, static_cast<model::Module>(key.second))->b.normal_(0, 0.2);
  InversionConfig cfg = short_run(2);
  cfg.per_class = 3;
  cfg.iterations = 30;
  const Surrogates plain = invert_lora(t.vit, t.lora, nullptr, cfg, 1, {}, {}, &student);  // w_adv 0: unused
  cfg.w_adv = 1.0;
  cfg.adv_temperature = 1.0;
  const Surrogates adv = invert_lora(t.vit, t.lora, nullptr, cfg, 1, {}, {}, &student);
  EXPECT_GT(adv.losses.front(), plain.losses.front());
  EXPECT_LT(adv.best_loss, adv.losses.front());
  const auto hardness = [&](const Surrogates& s) {
    at::NoGradGuard ng;
    const at::Tensor f = t.vit.forward(t.vit.preprocess(s.images), {}, &student).feature;
    return student_term(f, s.labels.to(at::kLong), 3, cfg.adv_temperature).item<double>();
  };
  EXPECT_LT(hardness(adv), hardness(plain));
  cfg.per_class = 1;
  EXPECT_THROW(invert_lora(t.vit, t.lora, nullptr, cfg, 1, {}, {}, &student), InputError);
}

TEST(Inversion, GrayOptimisesOneChannelSharedByRGB) {
  const Teacher t = tiny_teacher();
  InversionConfig cfg;
  cfg.per_class = 2;
  cfg.iterations = 30;
  cfg.gray = true;
  const Surrogates g = invert_lora(t.vit, t.lora, nullptr, cfg, 1);
  const at::Tensor px = g.images.to(at::kInt);
  // Rounding of the per-channel normalisation may differ by one level, no more.
  EXPECT_LE((px.select(3, 0) - px.select(3, 1)).abs().max().item<int>(), 1);
  EXPECT_LE((px.select(3, 0) - px.select(3, 2)).abs().max().item<int>(), 1);
  EXPECT_GT(px.to(at::kFloat).std().item<float>(), 5.0f);  // an image, not a constant
  EXPECT_LT(g.best_loss, g.losses.front());                // the grey variable is optimised
  cfg.gray = false;
  const Surrogates c = invert_lora(t.vit, t.lora, nullptr, cfg, 1);
  const at::Tensor cx = c.images.to(at::kInt);
  EXPECT_GT((cx.select(3, 0) - cx.select(3, 1)).abs().max().item<int>(), 1);  // colour noise without it
}

TEST(Inversion, WhiteBorderHoldsTheMarginWhiteInColourAndGrey) {
  at::Tensor x = at::randn({2, 3, 8, 8});
  const at::Tensor before = x.clone();
  const at::Tensor white = at::tensor({1.5f, 2.0f, 2.5f});
  hold_white_border(x, 0, white);
  EXPECT_TRUE(at::equal(x, before));  // 0: off
  hold_white_border(x, 2, white);
  for (int c = 0; c < 3; ++c) {
    at::Tensor ring = at::ones({8, 8}, at::kBool);
    ring.narrow(0, 2, 4).narrow(1, 2, 4).fill_(false);
    EXPECT_TRUE(x.select(1, c).masked_select(ring.expand({2, 8, 8})).eq(white[c]).all().item<bool>());
    EXPECT_TRUE(
        at::equal(x.select(1, c).narrow(1, 2, 4).narrow(2, 2, 4), before.select(1, c).narrow(1, 2, 4).narrow(2, 2, 4)));
  }
  // Through a whole inversion: the stored images are white (255) in the margin in colour and in
  // grey, the inside is optimised; a margin that leaves nothing is refused.
  const Teacher t = tiny_teacher();
  InversionConfig cfg = short_run(2);
  cfg.white_border = 2;
  for (bool gray : {false, true}) {
    cfg.gray = gray;
    const Surrogates s = invert_lora(t.vit, t.lora, nullptr, cfg, 1);
    const int64_t S = s.images.size(1);
    const at::Tensor px = s.images.to(at::kInt);
    for (int dim : {1, 2})
      for (int64_t from : {int64_t(0), S - 2}) EXPECT_EQ(px.narrow(dim, from, 2).min().item<int>(), 255) << gray;
    EXPECT_LT(px.narrow(1, 2, S - 4).narrow(2, 2, S - 4).min().item<int>(), 200) << gray;
    EXPECT_LT(s.best_loss, s.losses.front());
  }
  cfg.white_border = static_cast<int>(t.vit.config().image_size / 2);
  EXPECT_THROW(invert_lora(t.vit, t.lora, nullptr, cfg, 1), InputError);
}

TEST(Inversion, RetrieveRowsMatchImagesToTheirMostConfidentClassEachOnce) {
  // Label 0 takes images 0 and 1; image 2 prefers label 0 too but finds it full; label 1 takes its
  // argmax images 3 and 4 (0.6, 0.55) before image 2 (0.3). Class-interleaved: 0, 3, 1, 4.
  const at::Tensor p =
      at::tensor({0.9f, 0.1f, 0.8f, 0.2f, 0.7f, 0.3f, 0.4f, 0.6f, 0.45f, 0.55f, 0.5f, 0.5f}).view({6, 2});
  EXPECT_EQ(retrieve_rows(p, 2), (std::vector<int64_t>{0, 3, 1, 4}));
  // Every image prefers label 0: label 1 gets the most probable of the rest (3 at 0.4, then 2).
  const at::Tensor q = at::tensor({0.9f, 0.1f, 0.8f, 0.2f, 0.7f, 0.3f, 0.6f, 0.4f}).view({4, 2});
  EXPECT_EQ(retrieve_rows(q, 2), (std::vector<int64_t>{0, 3, 1, 2}));
  EXPECT_THROW(retrieve_rows(q, 3), InputError);  // 4 images cannot fill 2 classes x 3
  // Random probabilities: distinct rows, and each label's images in descending probability.
  at::manual_seed(3);
  const at::Tensor r = at::softmax(at::randn({50, 5}), -1);
  const std::vector<int64_t> rows = retrieve_rows(r, 6);
  ASSERT_EQ(rows.size(), 30u);
  EXPECT_EQ(std::set<int64_t>(rows.begin(), rows.end()).size(), rows.size());
  for (int l = 0; l < 5; ++l)
    for (int k = 1; k < 6; ++k)
      EXPECT_GE(r[rows[(k - 1) * 5 + l]][l].item<float>(), r[rows[k * 5 + l]][l].item<float>());
}

TEST(Inversion, StoredScoresMasksAndLogitsMatchASeparateForwardPass) {
  const Teacher t = tiny_teacher();
  InversionConfig cfg;
  cfg.per_class = 2;
  cfg.iterations = 8;
  cfg.prune = {{1, 0.5}};
  cfg.prune_start = 0.5;
  model::ResNetConfig rc;
  rc.width = 4;
  rc.num_classes = 3;
  const model::ResNet prior = model::ResNet::random(rc, 2);
  const Surrogates s = invert_lora(t.vit, t.lora, &prior, cfg, 2);
  test::TempDir dir;
  const std::string path = dir.file("pool.h5");
  io::h5::write_file_atomically(path, [&](io::h5::File& f) {
    f.write("/images", s.images);
    f.write("/patch_scores", s.patch_scores);
    f.write("/keep_mask", s.keep_mask);
    f.write("/teacher_logits", s.teacher_logits);
  });
  const io::h5::File f = io::h5::File::open_read(path);
  const at::Tensor px = t.vit.preprocess(f.read("/images"));
  model::ForwardOptions dense, pruned;
  dense.want_scores = pruned.want_scores = true;
  dense.cls_only_last = false;  // the plain path as the reference
  pruned.prune = {{1, 0.5}};
  const model::ForwardOutput d = t.vit.forward(px, dense, &t.lora);
  EXPECT_LT(test::rel_error(f.read("/patch_scores"), d.patch_scores), 1e-5);
  EXPECT_LT(test::rel_error(f.read("/teacher_logits"), t.lora.head(d.feature)), 1e-5);
  EXPECT_TRUE(at::equal(f.read("/keep_mask").to(at::kBool), t.vit.forward(px, pruned, &t.lora).keep_mask));
  EXPECT_EQ(f.read("/keep_mask").sum(1).min().item<int64_t>(), 8);  // 16 patches, half pruned at layer 1
}

TEST(Pool, LongestProcessingTimeFirstBalances) {
  const std::vector<int> bins = lpt_assign({5, 4, 3, 3, 3}, 2);
  double a = 0, b = 0;
  const double costs[] = {5, 4, 3, 3, 3};
  for (int i = 0; i < 5; ++i) (bins[i] == 0 ? a : b) += costs[i];
  EXPECT_EQ(std::max(a, b), 10);  // LPT: {5, 3} and {4, 3, 3} (the optimum is 9; LPT is within 4/3)
  EXPECT_EQ(lpt_assign({1, 1, 1, 1}, 2), (std::vector<int>{0, 1, 0, 1}));
}

}  // namespace
}  // namespace lorarec::invert
