#include "lorarecycle/optim/optim.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "lorarecycle/util/error.h"
#include "test_util.h"

namespace lorarec::train {
namespace {

TEST(BadStepGuard, SkipsCountsAndAbortsAfterTooManyInARow) {
  optim::BadStepGuard g("unit", 3, "; hint", /*skipped_before=*/5);
  EXPECT_TRUE(g.ok(true, 0));
  EXPECT_FALSE(g.ok(false, 1));
  EXPECT_FALSE(g.ok(false, 2));
  EXPECT_TRUE(g.ok(true, 3));  // a good step resets the run
  EXPECT_FALSE(g.ok(false, 4));
  EXPECT_FALSE(g.ok(false, 5));
  EXPECT_EQ(g.skipped(), 9);
  try {
    g.ok(false, 6);
    FAIL() << "the third bad step in a row must throw";
  } catch (const RuntimeError& e) {
    EXPECT_STREQ(e.what(), "unit: 3 steps in a row with a non-finite loss or gradient (--max-bad-steps); hint");
  }
  EXPECT_THROW(optim::BadStepGuard("unit", 0), InputError);
}

TEST(AdamW, MatchesTheTextbookUpdate) {
  at::Tensor p = at::tensor({1.0f, -2.0f}).requires_grad_(true);
  optim::AdamWConfig cfg;
  cfg.weight_decay = 0.1;
  optim::AdamW opt({p}, cfg);
  double ref[2] = {1.0, -2.0}, m[2] = {0, 0}, v[2] = {0, 0};
  const double lr = 0.01;
  for (int t = 1; t <= 3; ++t) {
    opt.zero_grad();
    (p * p).sum().backward();  // grad = 2p
    opt.step(lr);
    for (int i = 0; i < 2; ++i) {
      const double g = 2 * ref[i];
      ref[i] *= 1 - lr * cfg.weight_decay;
      m[i] = 0.9 * m[i] + 0.1 * g;
      v[i] = 0.999 * v[i] + 0.001 * g * g;
      const double mh = m[i] / (1 - std::pow(0.9, t)), vh = v[i] / (1 - std::pow(0.999, t));
      ref[i] -= lr * mh / (std::sqrt(vh) + 1e-8);
      EXPECT_NEAR(p[i].item<double>(), ref[i], 1e-6) << "step " << t;
    }
  }
  // State round trip.
  at::Tensor q = p.detach().clone().requires_grad_(true);
  optim::AdamW other({q}, cfg);
  other.load_state(opt.state());
  EXPECT_EQ(other.steps(), 3);
}

TEST(Schedules, WarmupCosineAndTheOfficialCycle) {
  EXPECT_DOUBLE_EQ(optim::warmup_cosine(0, 100, 10, 1.0, 0.0), 0.1);
  EXPECT_DOUBLE_EQ(optim::warmup_cosine(9, 100, 10, 1.0, 0.0), 1.0);
  EXPECT_NEAR(optim::warmup_cosine(10, 100, 10, 1.0, 0.0), 1.0, 1e-12);
  EXPECT_NEAR(optim::warmup_cosine(100, 100, 10, 1.0, 0.1), 0.1, 1e-12);
  EXPECT_DOUBLE_EQ(optim::cyclic_warmup_cosine(0, 100, 25, 1e-5, 1e-3), 1e-5);
  EXPECT_NEAR(optim::cyclic_warmup_cosine(25, 100, 25, 1e-5, 1e-3), 1e-3, 1e-12);
  EXPECT_NEAR(optim::cyclic_warmup_cosine(99, 100, 25, 1e-5, 1e-3), 1e-5, 1e-6);
  EXPECT_DOUBLE_EQ(optim::cyclic_warmup_cosine(100, 100, 25, 1e-5, 1e-3), 1e-5);
}

// step_masked: where `apply` is true the update of step() (up to rounding), where false nothing
// changes, not even the step count; a NaN gradient of a skipped step leaves no trace.
TEST(AdamW, MaskedStepsApplyOrSkipOnTheDevice) {
  optim::AdamWConfig cfg;
  cfg.weight_decay = 0.1;
  at::Tensor a = at::tensor({1.0f, -2.0f, 0.5f}).requires_grad_(true);
  at::Tensor b = a.detach().clone().requires_grad_(true);
  optim::AdamW host({a}, cfg), dev({b}, cfg);
  const bool apply[] = {true, false, true, true, false};
  for (int t = 0; t < 5; ++t) {
    for (auto* x : {&a, &b}) {
      x->mutable_grad() = at::Tensor();
      (*x * *x * float(t + 1)).sum().backward();
    }
    if (!apply[t]) b.mutable_grad().index_put_({1}, std::nanf(""));  // what a skipped step may hold
    const at::Tensor before = b.detach().clone();
    if (apply[t]) host.step(0.01);
    dev.step_masked(0.01, at::scalar_tensor(apply[t], at::kBool));
    if (!apply[t]) {
      EXPECT_TRUE(b.detach().equal(before)) << "step " << t;
    }
    EXPECT_LT(test::rel_error(b.detach(), a.detach()), 1e-6) << "step " << t;
  }
  EXPECT_EQ(dev.steps(), 3);
  const auto hs = host.state(), ds = dev.state();
  EXPECT_EQ(ds.at("adam.step").item<int64_t>(), 3);
  EXPECT_LT(test::rel_error(ds.at("adam.m.0"), hs.at("adam.m.0")), 1e-6);
  EXPECT_LT(test::rel_error(ds.at("adam.v.0"), hs.at("adam.v.0")), 1e-6);
}

// The flat clip (metatrain's reduced buffer) equals the per-tensor one: the same norm, the same
// scaled gradients, untouched below the bound; the device-side variant returns the norm as a tensor.
TEST(ClipGradNorm, FlatBufferEqualsPerTensorClip) {
  at::manual_seed(3);
  std::vector<at::Tensor> params{at::zeros({4, 3}).requires_grad_(), at::zeros({5}).requires_grad_()};
  params[0].mutable_grad() = at::randn({4, 3});
  params[1].mutable_grad() = at::randn({5});
  const at::Tensor flat = at::cat({params[0].grad().reshape({-1}), params[1].grad().reshape({-1})});
  for (const double max_norm : {1e9, 0.5, 0.0}) {
    at::Tensor a = flat.clone(), b = flat.clone();
    std::vector<at::Tensor> ps{params[0].detach().clone().requires_grad_(),
                               params[1].detach().clone().requires_grad_()};
    ps[0].mutable_grad() = params[0].grad().clone(), ps[1].mutable_grad() = params[1].grad().clone();
    const double want = optim::clip_grad_norm(ps, max_norm);
    EXPECT_NEAR(optim::clip_grad_norm(a, max_norm), want, 1e-5 * want);
    const at::Tensor on_device = optim::clip_grad_norm_on_device(b, max_norm);
    EXPECT_EQ(on_device.scalar_type(), at::kDouble);
    EXPECT_NEAR(on_device.item<double>(), want, 1e-5 * want);
    const at::Tensor clipped = at::cat({ps[0].grad().reshape({-1}), ps[1].grad().reshape({-1})});
    EXPECT_LT(test::rel_error(a, clipped), 1e-6) << max_norm;
    EXPECT_TRUE(a.equal(b)) << max_norm;
    if (max_norm != 0.5) {  // below the bound or off: untouched
      EXPECT_TRUE(a.equal(flat)) << max_norm;
    }
  }
}

// AdamWConfig::flat: the params move into one buffer (the same tensors, values kept) and every
// update equals the per-tensor one, whether the gradients come from autograd (separate tensors),
// as one flat buffer passed to step() (metatrain's reduced gradients; also in the masked step), or
// with one missing (that param skipped); the params' version counters move with each update; the
// state keeps its per-param names; a flat buffer of the wrong size is refused.
TEST(AdamW, FlatBufferEqualsPerTensorUpdates) {
  optim::AdamWConfig cfg;
  cfg.weight_decay = 0.1;
  optim::AdamWConfig fcfg = cfg;
  fcfg.flat = true;
  const std::vector<at::Tensor> init = {at::randn({4, 3}), at::randn({3}), at::randn({2, 5})};
  std::vector<at::Tensor> ref, flat;
  for (const auto& t : init) {
    ref.push_back(t.clone().requires_grad_(true));
    flat.push_back(t.clone().requires_grad_(true));
  }
  optim::AdamW a(ref, cfg), b(flat, fcfg);
  for (size_t i = 0; i < init.size(); ++i) EXPECT_TRUE(flat[i].detach().equal(init[i])) << "values kept";
  const auto loss = [](const std::vector<at::Tensor>& ps, int t) {
    at::Tensor l = at::zeros({});
    for (const auto& p : ps) l = l + (p * p * p).sum() * double(t + 1);
    return l;
  };
  for (int t = 0; t < 6; ++t) {
    for (auto* ps : {&ref, &flat}) {
      for (auto& p : *ps) p.mutable_grad() = at::Tensor();
      loss(*ps, t).backward();
    }
    at::Tensor buf;  // as metatrain: the gradients handed over as one flat buffer
    if (t == 2 || t == 3 || t == 5) {
      std::vector<at::Tensor> parts;
      for (auto& p : flat) parts.push_back(p.grad().reshape({-1}));
      buf = at::cat(parts);
      for (auto& p : flat) p.mutable_grad() = at::Tensor();  // not read
    }
    if (t == 4) ref[1].mutable_grad() = at::Tensor(), flat[1].mutable_grad() = at::Tensor();  // one missing
    const auto version = flat[0]._version();
    if (t == 5) {
      a.step_masked(0.01, at::scalar_tensor(true, at::kBool));
      b.step_masked(0.01, at::scalar_tensor(true, at::kBool), buf);
    } else {
      a.step(0.01), b.step(0.01, buf);
    }
    EXPECT_GT(flat[0]._version(), version) << "step " << t;
    for (size_t i = 0; i < init.size(); ++i)
      EXPECT_LT(test::rel_error(flat[i].detach(), ref[i].detach()), 1e-6) << "step " << t << " param " << i;
  }
  EXPECT_FALSE(flat[0].detach().equal(init[0]));
  EXPECT_THROW(b.step(0.01, at::zeros({3})), RuntimeError);
  const auto sa = a.state(), sb = b.state();
  EXPECT_EQ(sa.size(), sb.size());
  for (const auto& [k, v] : sa) EXPECT_LT(test::rel_error(sb.at(k).to(at::kDouble), v.to(at::kDouble)), 1e-6) << k;
  std::vector<at::Tensor> again;
  for (const auto& t : init) again.push_back(t.clone().requires_grad_(true));
  optim::AdamW c(again, fcfg);
  c.load_state(sb);
  EXPECT_EQ(c.steps(), 6);
  EXPECT_TRUE(c.state().at("adam.v.2").equal(sb.at("adam.v.2")));
}

}  // namespace
}  // namespace lorarec::train
