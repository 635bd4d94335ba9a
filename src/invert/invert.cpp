#include "lorarecycle/invert/invert.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>

#include "lorarecycle/data/image_set.h"
#include "lorarecycle/fewshot/fewshot.h"
#include "lorarecycle/optim/optim.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/log.h"
#include "lorarecycle/util/op_trace.h"
#include "lorarecycle/util/progress.h"

namespace lorarec::invert {

namespace {
// DeepInversion's distance of a batch's statistics from the stored ones: ||var gap||_2 + ||mean gap||_2
// (the BN prior's term per layer, and the feature prior's).
at::Tensor stat_gap(const model::BnStat& s) {
  return (s.running_var - s.var).norm() + (s.running_mean - s.mean).norm();
}
}  // namespace

LossTerms loss_terms(const at::Tensor& logits, const at::Tensor& targets, const std::vector<model::BnStat>* stats,
                     const at::Tensor& x, const InversionConfig& cfg, const at::Tensor* features,
                     const at::Tensor* soft_targets) {
  LossTerms t;
  at::Tensor ce_each = soft_targets != nullptr ? -(*soft_targets * at::log_softmax(logits, -1)).sum(-1)
                                               : at::cross_entropy_loss(logits, targets, {}, at::Reduction::None);
  if (cfg.stop_confidence > 0) {  // confident images drop out of this iteration's CE (no host sync)
    const at::Tensor p = at::softmax(logits.detach(), -1).gather(1, targets.view({-1, 1})).view({-1});
    ce_each = ce_each * p.lt(cfg.stop_confidence).to(ce_each.scalar_type());
  }
  t.ce = ce_each.mean();
  t.bn = at::zeros({}, x.options());
  if (stats != nullptr)
    for (const auto& s : *stats) t.bn = t.bn + stat_gap(s);
  const at::Tensor dv = x.slice(2, 1) - x.slice(2, 0, -1);
  const at::Tensor dh = x.slice(3, 1) - x.slice(3, 0, -1);
  t.tv = dv.pow(2).mean() + dh.pow(2).mean();
  t.l2 = x.norm();
  t.div = at::zeros({}, x.options());
  if (features != nullptr) {
    const at::Tensor f = *features / features->norm(2, -1, true).clamp_min(1e-12);
    const at::Tensor same = targets.unsqueeze(0).eq(targets.unsqueeze(1)) &
                            at::eye(targets.size(0), targets.options().dtype(at::kBool)).logical_not();
    // No host sync: without a same-class pair the sum is 0 and so is the term.
    t.div = at::matmul(f, f.t()).masked_select(same).sum() / same.sum().clamp_min(1);
  }
  t.total = cfg.w_ce * t.ce + cfg.w_bn * t.bn + cfg.w_tv * t.tv + cfg.w_l2 * t.l2 + cfg.w_div * t.div;
  return t;
}

at::Tensor student_term(const at::Tensor& student_features, const at::Tensor& y, int64_t N, double temperature) {
  if (!(temperature > 0)) throw InputError("student term: the temperature must be > 0");
  const at::Tensor f = student_features.to(at::kFloat);
  const at::Tensor per_class = at::bincount(y, {}, N);  // [N]
  if (per_class.size(0) != N || per_class.min().item<int64_t>() < 2)
    throw InputError("student term: every class needs at least 2 images in the batch (--per-class >= 2)");
  const at::Tensor count = per_class.to(at::kFloat).index_select(0, y).unsqueeze(1);  // [B, 1], per image
  const at::Tensor proto = fewshot::class_prototypes(f, y, N);
  const at::Tensor own = (proto.index_select(0, y) * count - f) / (count - 1);  // its class's mean without it
  const at::Tensor logits =
      fewshot::prototype_distances(f, proto).scatter(1, y.unsqueeze(1), -(f - own).pow(2).sum(1, /*keepdim=*/true));
  const at::Tensor log_ps = at::log_softmax(logits / temperature, -1);
  // log(1 - p_S(y)) = logsumexp of the other classes' log-probabilities
  const at::Tensor others = log_ps.scatter(1, y.unsqueeze(1), -std::numeric_limits<float>::infinity());
  return -at::logsumexp(others, 1).mean();
}

at::Tensor mixed_targets(const at::Tensor& y, int64_t N, double target_mix, std::uint64_t seed, std::uint64_t stream) {
  if (N < 2 || !(target_mix > 0 && target_mix <= 1))
    throw InputError("--target-mix needs a LoRA of at least 2 classes and a share in (0, 1]");
  const at::Tensor yc = y.to(at::kCPU, at::kLong).contiguous();
  const int64_t n = yc.size(0);
  at::Tensor t = at::zeros({n, N}, at::kFloat);
  auto rng = data::make_rng(seed, stream, std::numeric_limits<std::uint32_t>::max() - 1);
  std::uniform_real_distribution<double> share(0.0, target_mix);
  std::uniform_int_distribution<int64_t> other(0, N - 2);
  const int64_t* yp = yc.data_ptr<int64_t>();
  auto acc = t.accessor<float, 2>();
  for (int64_t i = 0; i < n; ++i) {
    const double u = share(rng);
    int64_t c = other(rng);
    if (c >= yp[i]) ++c;  // any class but its own
    acc[i][yp[i]] = static_cast<float>(1.0 - u);
    acc[i][c] = static_cast<float>(u);
  }
  return t.to(y.device());
}

at::Tensor fourier_scale(int S, double decay, const c10::Device& dev) {
  if (S < 2 || !(decay >= 0)) throw InputError("--fourier: needs an image of at least 2 px and a decay >= 0");
  const at::Tensor f = at::fft_fftfreq(S, 1.0, at::TensorOptions().dtype(at::kDouble));
  const at::Tensor mag = (f.view({S, 1}).pow(2) + f.view({1, S}).pow(2)).sqrt();  // the full spectrum's |f|
  at::Tensor s = mag.clamp_min(1.0 / S).pow(-decay);
  s = s / s.pow(2).mean().sqrt();
  return s.narrow(1, 0, S / 2 + 1).contiguous().to(at::kFloat).to(dev);  // rfft2's columns: f_x >= 0
}

at::Tensor to_spectrum(const at::Tensor& x, const at::Tensor& scale) {
  const at::Tensor c = at::fft_rfft2(x.to(at::kFloat), c10::nullopt, {-2, -1}, "ortho");
  return (at::view_as_real(c) / scale.unsqueeze(-1)).contiguous();
}

at::Tensor from_spectrum(const at::Tensor& v, const at::Tensor& scale, int S) {
  const at::Tensor c = at::view_as_complex((v * scale.unsqueeze(-1)).contiguous());
  return at::fft_irfft2(c, std::vector<int64_t>{S, S}, {-2, -1}, "ortho");
}

at::Tensor render_strokes(const at::Tensor& params, int S) {
  if (params.dim() != 3 || params.size(2) != 6 || S < 2)
    throw InputError("render_strokes: params must be [n, K, 6] and the image at least 2 px");
  const int64_t n = params.size(0), K = params.size(1);
  const at::Tensor p = params.to(at::kFloat);
  const at::Tensor coord = at::arange(S, p.options());
  const at::Tensor py = coord.view({1, 1, S, 1}), px = coord.view({1, 1, 1, S});
  const auto col = [&](int i) { return p.select(2, i).view({n, K, 1, 1}); };
  const at::Tensor ax = at::sigmoid(col(0)) * (S - 1), ay = at::sigmoid(col(1)) * (S - 1);
  const at::Tensor dx = at::sigmoid(col(2)) * (S - 1) - ax, dy = at::sigmoid(col(3)) * (S - 1) - ay;
  // The nearest point of each segment to each pixel: a + t (b - a), t clamped to the segment.
  const at::Tensor t = (((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy + 1e-6)).clamp(0.0, 1.0);
  const at::Tensor ex = px - ax - t * dx, ey = py - ay - t * dy;
  const at::Tensor d = (ex * ex + ey * ey + 1e-6).sqrt();
  const at::Tensor half = (1.0 + 3.0 * at::sigmoid(col(4))) * 0.5;
  const at::Tensor ink = at::sigmoid((half - d) / 0.5) * at::sigmoid(col(5));  // [n, K, S, S]
  return (1.0 - ink).prod(1, true);
}

void check_strokes(const InversionConfig& cfg, bool init_images) {
  if (cfg.strokes < 0 || cfg.strokes > 64) throw InputError("invert: --strokes must be in [0, 64]");
  if (cfg.strokes > 0 && (cfg.fourier > 0 || cfg.init_lowres > 0 || init_images))
    throw InputError(
        "invert: --strokes draws its own start; it cannot be combined with --fourier, --init-lowres or "
        "--init-images");
}

at::Tensor init_strokes(int64_t n, int K, int S, std::mt19937_64& rng, const c10::Device& dev) {
  if (n < 0 || K < 1 || S < 2) throw InputError("init_strokes: needs K >= 1 segments and an image of at least 2 px");
  std::uniform_real_distribution<double> centre(0.2 * (S - 1), 0.8 * (S - 1)), angle(0.0, std::acos(-1.0)),
      length(0.15 * S, 0.5 * S);
  const auto logit = [&](double px) {
    const double u = std::clamp(px / (S - 1), 0.02, 0.98);
    return std::log(u / (1.0 - u));
  };
  std::vector<float> v;
  v.reserve(static_cast<size_t>(n * K * 6));
  for (int64_t i = 0; i < n * K; ++i) {
    const double cx = centre(rng), cy = centre(rng), a = angle(rng), h = 0.5 * length(rng);
    for (double e : {cx - h * std::cos(a), cy - h * std::sin(a), cx + h * std::cos(a), cy + h * std::sin(a)})
      v.push_back(static_cast<float>(logit(e)));
    v.push_back(static_cast<float>(-std::log(2.0)));  // width 1 + 3 / 3 = 2 px
    v.push_back(2.0f);                                // ink sigmoid(2) = 0.88
  }
  return at::tensor(v, at::kFloat).view({n, K, 6}).to(dev);
}

void clamp_pixels(at::Tensor& x, const at::Tensor& lo, const at::Tensor& hi) {
  at::NoGradGuard ng;
  x.copy_(at::max(at::min(x, hi.view({1, -1, 1, 1})), lo.view({1, -1, 1, 1})));
}

void hold_white_border(at::Tensor& x, int border, const at::Tensor& white) {
  if (border <= 0) return;
  at::NoGradGuard ng;
  const int64_t S = x.size(2);
  const at::Tensor w = white.view({1, -1, 1, 1}).to(x.scalar_type());
  const int64_t b = std::min<int64_t>(border, S);
  for (int dim : {2, 3}) {
    x.narrow(dim, 0, b).copy_(w.expand_as(x.narrow(dim, 0, b)));
    x.narrow(dim, S - b, b).copy_(w.expand_as(x.narrow(dim, S - b, b)));
  }
}

namespace {
// image_mean, image_std as float [1, 3, 1, 1] tensors on the CPU.
std::pair<at::Tensor, at::Tensor> channel_constants(const model::ClipVisionConfig& c) {
  return {at::tensor(std::vector<float>(c.image_mean.begin(), c.image_mean.end())).view({1, 3, 1, 1}),
          at::tensor(std::vector<float>(c.image_std.begin(), c.image_std.end())).view({1, 3, 1, 1})};
}
// The grey variable's normalisation (--gray): the means of image_mean and of image_std.
std::pair<double, double> gray_constants(const model::ClipVisionConfig& c) {
  return {(c.image_mean[0] + c.image_mean[1] + c.image_mean[2]) / 3.0,
          (c.image_std[0] + c.image_std[1] + c.image_std[2]) / 3.0};
}
}  // namespace

at::Tensor to_uint8(const model::ClipVision& vit, const at::Tensor& x) {
  const auto [mean, std] = channel_constants(vit.config());
  const at::Tensor px = (x.detach().to(at::kCPU) * std + mean).clamp(0.0, 1.0);
  return px.mul(255.0).round().to(at::kByte).permute({0, 2, 3, 1}).contiguous();
}

namespace {

// This iteration's view of the batch: a roll by up to `jitter` pixels and a flip (one for the
// batch, or per image), then with cfg.zoom a random crop resized back, then with cfg.affine a
// random affine map per image that brings in `white` [C] (the ViT's input for a white pixel).
// Consumes rng in that order.
at::Tensor augmented_view(const at::Tensor& xp, const InversionConfig& cfg, int jitter, const at::Tensor& white,
                          std::mt19937_64& rng) {
  const int n = static_cast<int>(xp.size(0)), S = static_cast<int>(xp.size(-1));
  std::uniform_int_distribution<int> shift(-jitter, jitter);
  at::Tensor xa = xp;
  if (cfg.per_image) {  // every image its own view (the batch is not seen through one shared shift)
    std::vector<int> dy(n), dx(n);
    std::vector<bool> fl(cfg.flip ? n : 0);
    for (int b = 0; b < n; ++b) {
      dy[b] = shift(rng), dx[b] = shift(rng);
      if (cfg.flip) fl[b] = std::bernoulli_distribution(0.5)(rng);
    }
    if (jitter > 0 || cfg.flip) xa = roll_each(xp, dy, dx, fl);
  } else {
    const int dy = shift(rng), dx = shift(rng);
    const bool flip = cfg.flip && std::bernoulli_distribution(0.5)(rng);
    if (jitter > 0) xa = at::roll(xp, {dy, dx}, {2, 3});
    if (flip) xa = xa.flip({3});
  }
  if (cfg.zoom > 0) {  // drawn after the roll and flip: without zoom the views are those of before
    std::uniform_real_distribution<double> scale(1.0 - cfg.zoom, 1.0);
    const int side = std::clamp(static_cast<int>(std::lround(scale(rng) * S)), 1, S);
    std::uniform_int_distribution<int> corner(0, S - side);
    const int y0 = corner(rng), x0 = corner(rng);
    xa = zoom_view(xa, side, y0, x0);
  }
  if (cfg.affine > 0) {  // drawn last: without it the views are those of before
    std::vector<float> theta;
    for (int b = 0; b < n; ++b) {
      const std::array<float, 6> m = data::random_affine(cfg.affine, rng);
      theta.insert(theta.end(), m.begin(), m.end());
    }
    xa = data::affine_map(xa, at::tensor(theta, at::kFloat).view({n, 2, 3}), white);
  }
  return xa;
}

std::string progress_note(const LossTerms& lt, double value, const InversionConfig& cfg, int n, double rate) {
  const auto term = [](const at::Tensor& t) { return t.defined() ? log::sig(t.item<double>()) : std::string("0"); };
  return "loss " + log::sig(value) + " (ce " + term(lt.ce) + ", bn " + term(lt.bn) + ", tv " + term(lt.tv) + ", l2 " +
         term(lt.l2) + (cfg.w_div > 0 ? ", div " + term(lt.div) : std::string()) +
         (lt.co.defined() ? ", co-teachers " + term(lt.co) : std::string()) +
         (lt.feat.defined() ? ", feature prior " + term(lt.feat) : std::string()) +
         (lt.adv.defined() ? ", student " + term(lt.adv) : std::string()) + "), " + std::to_string(n) + " images, " +
         log::sig(rate) + " image-iterations/s";
}

// The optimised variable: the image u, [n, 3, S, S] normalised pixels, or with cfg.gray [n, 1, S, S]
// grey pixels normalised with the mean of the channel constants, held as x = u itself or, with
// cfg.fourier, as its spectrum (to_spectrum), or with cfg.strokes as line segments (render_strokes); image() gives u,
// pixels(u) maps it to the model's input, and [lo, hi] bound u to valid pixels (project()). The start draws from
// gen_rng (low-resolution noise, start images) or from the global generator (white noise).
struct PixelVariable {
  PixelVariable(const model::ClipVision& vit, const InversionConfig& cfg, int n, std::mt19937_64& gen_rng)
      : gray(cfg.gray) {
    const auto& mc = vit.config();
    const auto dev = vit.device();
    const int S = mc.image_size;
    std::tie(gm, gs) = gray_constants(mc);
    std::tie(cmean, cstd) = channel_constants(mc);
    cmean = cmean.to(dev), cstd = cstd.to(dev);
    std::tie(lo, hi) = vit.pixel_bounds();
    if (cfg.gray) {
      lo = at::full({1}, -gm / gs, lo.options());
      hi = at::full({1}, (1.0 - gm) / gs, hi.options());
    }
    if (2 * cfg.white_border >= S)
      throw InputError("invert: --white-border " + std::to_string(cfg.white_border) + " leaves no pixel free in a " +
                       std::to_string(S) + " px image (it must be below " + std::to_string((S + 1) / 2) + ")");
    if (cfg.strokes > 0) {  // a drawing: its segments are the variable, and the margin holds no ink
      check_strokes(cfg, cfg.init_images.defined());
      x = init_strokes(n, cfg.strokes, S, gen_rng, dev);
      drawing_size = S;
      if (const int b = cfg.white_border; b > 0) {
        ink_area = at::zeros({1, 1, S, S}, x.options());
        ink_area.narrow(2, b, S - 2 * b).narrow(3, b, S - 2 * b).fill_(1.0);
      }
    } else {
      if (cfg.init_images.defined())
        x = start_images(cfg.init_images, n, cfg.gray, mc, gen_rng, dev);
      else if (cfg.init_lowres > 0)
        x = lowres_noise(n, cfg.gray ? 1 : 3, S, cfg.init_lowres, gen_rng, dev);
      else
        x = at::randn({n, cfg.gray ? 1 : 3, S, S}, at::TensorOptions().device(dev));
      hold_white_border(x, cfg.white_border, hi);
      if (cfg.fourier > 0) {
        scale = fourier_scale(S, cfg.fourier, dev);
        x = to_spectrum(x, scale);
      }
    }
    x.requires_grad_(true);
  }
  at::Tensor image() const {
    if (drawing_size > 0) return drawn();
    return scale.defined() ? from_spectrum(x, scale, static_cast<int>(x.size(2))) : x;
  }
  // --strokes: the drawing, without ink in the white margin, in the variable's normalisation.
  at::Tensor drawn() const {
    at::Tensor v = render_strokes(x, drawing_size);
    if (ink_area.defined()) v = 1.0 - (1.0 - v) * ink_area;
    return gray ? (v - gm) / gs : (v - cmean) / cstd;
  }
  at::Tensor pixels(const at::Tensor& u) const { return gray ? (u * gs + gm - cmean) / cstd : u; }
  // After a step: the image clamped to valid pixels with its white margin held, written back to x.
  void project(int white_border) {
    if (drawing_size > 0) return;  // a drawing is always valid pixels
    if (!scale.defined()) {
      clamp_pixels(x, lo, hi);
      hold_white_border(x, white_border, hi);
      return;
    }
    at::NoGradGuard ng;
    at::Tensor u = image();
    clamp_pixels(u, lo, hi);
    hold_white_border(u, white_border, hi);
    x.copy_(to_spectrum(u, scale));
  }

  bool gray;
  double gm = 0, gs = 1;
  int drawing_size = 0;  // --strokes: the image size (0: not a drawing)
  // ink_area: --strokes with --white-border only, [1, 1, S, S] 1 inside the margin, 0 on it.
  at::Tensor cmean, cstd, x, lo, hi, scale, ink_area;
};

// The feature prior's statistics (cfg.feature_prior) under the inverted LoRA: of up to
// cfg.feature_prior_samples images of the set, drawn per LoRA (seeded); empty without a prior.
std::vector<TokenStat> feature_prior_stats(const model::ClipVision& vit, const model::Lora& lora,
                                           const InversionConfig& cfg, std::uint64_t stream) {
  if (!cfg.feature_prior.defined()) return {};
  const int64_t M = cfg.feature_prior.size(0);
  if (M < 1 || cfg.feature_prior_samples < 1) throw InputError("--feature-prior: no images to take statistics of");
  auto rng = data::make_rng(cfg.seed, stream, std::numeric_limits<std::uint32_t>::max() - 2);
  std::vector<int64_t> rows(static_cast<size_t>(M));  // without replacement: the whole set when it is small
  std::iota(rows.begin(), rows.end(), int64_t{0});
  std::shuffle(rows.begin(), rows.end(), rng);
  rows.resize(static_cast<size_t>(std::min<int64_t>(M, cfg.feature_prior_samples)));
  const at::Tensor px = model::preprocess_images(cfg.feature_prior.index_select(0, at::tensor(rows, at::kLong)),
                                                 vit.config(), vit.device());
  model::ForwardOptions fo;
  fo.cls_only_last = cfg.cls_only_last;
  return token_stats(vit, &lora, px, fo);
}

// token_stat_loss of the layers whose input is not pruned yet: the statistics are of all tokens, so
// with pruning on only the layers up to the first pruning one are compared.
at::Tensor feature_prior_loss(const std::vector<at::Tensor>& layer_inputs, const std::vector<TokenStat>& target,
                              const std::vector<std::pair<int, double>>& prune) {
  if (layer_inputs.size() != target.size()) return token_stat_loss(layer_inputs, target);  // throws, naming both
  size_t k = target.size();
  for (const auto& [l, r] : prune)
    if (r > 0) k = std::min(k, static_cast<size_t>(l) + 1);
  return token_stat_loss({layer_inputs.begin(), layer_inputs.begin() + k}, {target.begin(), target.begin() + k});
}

// The terms of the models other than the inverted LoRA on the same view xa: the co-teachers'
// weighted cross-entropy on their rows, and the student term (cfg.w_adv > 0).
void add_other_models(const model::ClipVision& vit, const at::Tensor& xa, const model::ForwardOptions& fo,
                      const at::Tensor& y, int64_t N, const InversionConfig& cfg,
                      const std::vector<CoTeacher>& co_teachers, const model::Lora* student, LossTerms& lt) {
  if (!co_teachers.empty()) {  // the same view of each co-teacher's rows, judged by that LoRA
    at::Tensor co = at::zeros({}, lt.total.options());
    for (const CoTeacher& t : co_teachers) {
      const at::Tensor f = vit.forward(xa.index_select(0, t.rows), fo, &t.lora).feature;
      co = co + (at::cross_entropy_loss(t.lora.head(f), t.labels, {}, at::Reduction::None) * t.weight).sum();
    }
    lt.co = co;
    lt.total = lt.total + cfg.w_co * co;
  }
  if (student != nullptr && cfg.w_adv > 0) {
    lt.adv = student_term(vit.forward(xa, fo, student).feature, y, N, cfg.adv_temperature);
    lt.total = lt.total + cfg.w_adv * lt.adv;
  }
}

}  // namespace

Surrogates invert_lora(const model::ClipVision& vit, const model::Lora& lora, const model::ResNet* prior,
                       const InversionConfig& cfg, std::uint64_t stream, const std::string& progress_name,
                       const std::vector<CoTeacher>& co_teachers, const model::Lora* student) {
  if (!lora.has_head()) throw InputError("inversion needs a LoRA with a classifier head");
  if (cfg.per_class < 1 || cfg.iterations < 1) throw InputError("inversion needs per-class >= 1 and iterations >= 1");
  const auto t0 = std::chrono::steady_clock::now();
  const int N = static_cast<int>(lora.head_weight().size(0));
  const int S = vit.config().image_size;
  const int n = N * cfg.per_class;
  const auto dev = vit.device();
  // Targets class-interleaved: 0, 1, .., N-1, 0, 1, ..
  const at::Tensor y = at::arange(N, at::kLong).repeat({cfg.per_class}).to(dev);
  std::optional<at::Tensor> soft;
  if (cfg.target_mix > 0) soft = mixed_targets(y, N, cfg.target_mix, cfg.seed, stream);
  auto gen_rng = data::make_rng(cfg.seed, stream, std::numeric_limits<std::uint32_t>::max());
  at::manual_seed(static_cast<std::uint64_t>(gen_rng()));
  PixelVariable var(vit, cfg, n, gen_rng);
  at::Tensor& x = var.x;
  const auto pixels = [&](const at::Tensor& v) { return var.pixels(v); };
  optim::AdamWConfig oc;
  oc.beta1 = cfg.beta1;
  oc.beta2 = cfg.beta2;
  optim::AdamW opt({x}, oc);
  const int jitter = cfg.jitter >= 0 ? cfg.jitter : S / 8;
  const at::Tensor white = vit.pixel_bounds().second;  // the ViT's input for a white pixel (--affine)
  const int prune_from = static_cast<int>(cfg.prune_start * cfg.iterations);
  const bool use_prior = prior != nullptr && cfg.w_bn > 0;
  const std::vector<TokenStat> feat_target = feature_prior_stats(vit, lora, cfg, stream);

  Surrogates out;
  double best = std::numeric_limits<double>::infinity();
  at::Tensor best_x = pixels(var.image()).detach().clone();
  std::optional<Progress> progress;
  if (!progress_name.empty())
    progress.emplace("invert", progress_name + " iterations", cfg.iterations, "iterations", 10.0);
  // LORAREC_OP_TRACE (a dev tool): the ops of LORAREC_OP_TRACE_STEPS iterations from the sixth on, first LoRA
  std::unique_ptr<util::OpTrace> trace = stream == 0 ? util::OpTrace::from_env(0) : nullptr;
  for (int it = 0; it < cfg.iterations; ++it) {
    if (trace && it >= 5) trace->before_step();
    auto rng = data::make_rng(cfg.seed, stream, static_cast<std::uint64_t>(it));
    const at::Tensor xp = pixels(var.image());
    const at::Tensor xa = augmented_view(xp, cfg, jitter, white, rng);
    model::ForwardOptions fo;
    fo.cls_only_last = cfg.cls_only_last;
    if (it >= prune_from) fo.prune = cfg.prune;
    std::vector<at::Tensor> layer_inputs;
    if (!feat_target.empty()) fo.layer_inputs = &layer_inputs;
    const at::Tensor feature = vit.forward(xa, fo, &lora).feature;
    const at::Tensor logits = lora.head(feature);
    std::vector<model::BnStat> stats;
    if (use_prior) prior->forward(xa, false, &stats);
    LossTerms lt = loss_terms(logits, y, use_prior ? &stats : nullptr, xp, cfg, cfg.w_div > 0 ? &feature : nullptr,
                              soft ? &*soft : nullptr);
    if (!feat_target.empty()) {
      lt.feat = feature_prior_loss(layer_inputs, feat_target, fo.prune);
      lt.total = lt.total + cfg.w_feat * lt.feat;
    }
    add_other_models(vit, xa, fo, y, N, cfg, co_teachers, student, lt);
    const double value = lt.total.item<double>();
    if (!std::isfinite(value)) throw RuntimeError("inversion loss is not finite at iteration " + std::to_string(it));
    if (value < best) {  // the iterate this loss was measured on (a copy: the step changes x)
      best = value;
      best_x = xp.detach().clone();
      out.best_iteration = it;
    }
    out.final_loss = value;
    out.losses.push_back(value);
    opt.zero_grad();
    lt.total.backward();
    opt.step(cfg.lr);
    var.project(cfg.white_border);
    if (progress) {
      if (progress->due())  // the terms are read only for the lines that are printed
        progress->note(progress_note(lt, value, cfg, n, double(it + 1) * n / progress->elapsed_s()));
      progress->advance(1);
    }
  }
  out.best_loss = best;

  // What is stored is the uint8 image: score, mask and teacher logits are computed on it.
  out.images = to_uint8(vit, best_x);
  out.labels = y.to(at::kCPU, at::kInt);
  describe_images(vit, lora, cfg, out);
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

std::vector<TokenStat> token_stats(const model::ClipVision& vit, const model::Lora* lora, const at::Tensor& pixels,
                                   model::ForwardOptions fo, int64_t chunk) {
  at::NoGradGuard ng;
  if (pixels.size(0) < 1 || chunk < 1) throw InputError("token_stats: no images");
  std::vector<at::Tensor> sum, sq;
  std::vector<int64_t> count;  // tokens per layer (fewer after a pruning layer)
  for (int64_t i = 0; i < pixels.size(0); i += chunk) {
    std::vector<at::Tensor> inputs;
    fo.layer_inputs = &inputs;
    (void)vit.forward(pixels.slice(0, i, std::min(i + chunk, pixels.size(0))), fo, lora);
    if (sum.empty()) sum.resize(inputs.size()), sq.resize(inputs.size()), count.assign(inputs.size(), 0);
    for (size_t l = 0; l < inputs.size(); ++l) {
      const at::Tensor t = inputs[l].to(at::kDouble).reshape({-1, inputs[l].size(-1)});
      sum[l] = sum[l].defined() ? sum[l] + t.sum(0) : t.sum(0);
      sq[l] = sq[l].defined() ? sq[l] + t.pow(2).sum(0) : t.pow(2).sum(0);
      count[l] += t.size(0);
    }
  }
  std::vector<TokenStat> out(sum.size());
  for (size_t l = 0; l < sum.size(); ++l) {
    const at::Tensor mean = sum[l] / double(count[l]);
    out[l].mean = mean.to(at::kFloat);
    out[l].var = (sq[l] / double(count[l]) - mean.pow(2)).clamp_min(0).to(at::kFloat);
  }
  return out;
}

at::Tensor token_stat_loss(const std::vector<at::Tensor>& layer_inputs, const std::vector<TokenStat>& target) {
  if (layer_inputs.size() != target.size())
    throw InputError("feature prior: " + std::to_string(layer_inputs.size()) + " layers against statistics of " +
                     std::to_string(target.size()));
  at::Tensor loss;
  for (size_t l = 0; l < target.size(); ++l) {
    const at::Tensor t = layer_inputs[l].to(at::kFloat);
    if (t.size(-1) != target[l].mean.size(0))
      throw InputError("feature prior: layer " + std::to_string(l) + " is " + std::to_string(t.size(-1)) +
                       " wide, its statistics " + std::to_string(target[l].mean.size(0)));
    const auto [var, mean] = at::var_mean(t.reshape({-1, t.size(-1)}), 0, /*unbiased=*/false);
    const at::Tensor term = stat_gap({mean, var, target[l].mean.to(t.device()), target[l].var.to(t.device())});
    loss = loss.defined() ? loss + term : term;
  }
  return loss.defined() ? loss : at::zeros({});
}

at::Tensor lowres_noise(int64_t n, int64_t C, int S, int init_lowres, std::mt19937_64& rng, const c10::Device& dev) {
  if (init_lowres < 2 || init_lowres > S) throw InputError("--init-lowres must be in [2, image size]");
  int levels = 1;  // resolutions init_lowres * 2^k <= S
  while (init_lowres << levels <= S) ++levels;
  std::uniform_int_distribution<int> level(0, levels - 1);
  std::vector<at::Tensor> imgs;
  for (int64_t i = 0; i < n; ++i) {
    const int r = init_lowres << level(rng);
    at::Tensor z = at::randn({1, C, r, r});
    if (r != S) z = at::upsample_bilinear2d(z, {S, S}, /*align_corners=*/false);
    imgs.push_back(z / z.std().clamp_min(1e-6));
  }
  return at::cat(imgs).to(dev);
}

at::Tensor start_images(const at::Tensor& set, int64_t n, bool gray, const model::ClipVisionConfig& mc,
                        std::mt19937_64& rng, const c10::Device& dev) {
  const int64_t S = mc.image_size;
  if (set.dim() != 4 || set.size(0) < 1 || set.size(1) != S || set.size(2) != S ||
      (set.size(3) != 1 && set.size(3) != 3))
    throw InputError("--init-images: the images must be [M, " + std::to_string(S) + ", " + std::to_string(S) +
                     ", 1 or 3] (the VFM's input size)");
  std::uniform_int_distribution<int64_t> row(0, set.size(0) - 1);
  std::vector<int64_t> rows(static_cast<size_t>(n));
  for (auto& r : rows) r = row(rng);
  const at::Tensor x = model::preprocess_images(set.index_select(0, at::tensor(rows, at::kLong)), mc, dev);
  if (!gray) return x;
  const auto [gm, gs] = gray_constants(mc);
  const auto [mean, std] = channel_constants(mc);
  return ((x * std.to(dev) + mean.to(dev)).mean(1, /*keepdim=*/true) - gm) / gs;
}

at::Tensor zoom_view(const at::Tensor& x, int side, int y0, int x0) {
  const int64_t H = x.size(2), W = x.size(3);
  if (side >= H && side >= W) return x;
  if (side < 1 || y0 < 0 || x0 < 0 || y0 + side > H || x0 + side > W)
    throw InputError("zoom_view: the square does not lie inside the image");
  return at::upsample_bilinear2d(x.slice(2, y0, y0 + side).slice(3, x0, x0 + side), {H, W}, /*align_corners=*/false);
}

at::Tensor roll_each(const at::Tensor& x, const std::vector<int>& dy, const std::vector<int>& dx,
                     const std::vector<bool>& flip) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  if (static_cast<int64_t>(dy.size()) != B || static_cast<int64_t>(dx.size()) != B ||
      (!flip.empty() && static_cast<int64_t>(flip.size()) != B))
    throw InputError("roll_each: one shift (and flip) per image expected");
  // Source row and column of every output pixel, per image: roll by d reads index (i - d) mod size;
  // a flip reads the rolled image's column W - 1 - j.
  std::vector<int64_t> rows(B * H), cols(B * W);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < H; ++i) rows[b * H + i] = (((i - dy[b]) % H) + H) % H;
    for (int64_t j = 0; j < W; ++j) {
      const int64_t jj = !flip.empty() && flip[b] ? W - 1 - j : j;
      cols[b * W + j] = (((jj - dx[b]) % W) + W) % W;
    }
  }
  const auto opts = at::TensorOptions().dtype(at::kLong).device(x.device());
  const at::Tensor ri = at::tensor(rows, opts).view({B, 1, H, 1}).expand({B, C, H, W});
  const at::Tensor ci = at::tensor(cols, opts).view({B, 1, 1, W}).expand({B, C, H, W});
  return x.gather(2, ri).gather(3, ci);
}

std::vector<int64_t> retrieve_rows(const at::Tensor& probs, int per_class) {
  if (probs.dim() != 2 || per_class < 1) throw InputError("retrieve_rows: probs must be [M, N] and per_class >= 1");
  const int64_t M = probs.size(0), N = probs.size(1);
  if (M < N * per_class)
    throw InputError("retrieval: " + std::to_string(M) + " candidate images cannot fill " + std::to_string(N) +
                     " classes x " + std::to_string(per_class) + " (raise --retrieve-candidates or use a larger set)");
  const at::Tensor p = probs.to(at::kCPU, at::kFloat).contiguous().reshape({-1});
  const at::Tensor order = std::get<1>(p.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const int64_t* o = order.data_ptr<int64_t>();
  std::vector<char> used(static_cast<size_t>(M), 0);
  std::vector<std::vector<int64_t>> by_label(static_cast<size_t>(N));
  int64_t filled = 0;
  for (int64_t i = 0; i < M * N && filled < N * per_class; ++i) {
    const int64_t img = o[i] / N, label = o[i] % N;
    auto& mine = by_label[static_cast<size_t>(label)];
    if (used[static_cast<size_t>(img)] || static_cast<int>(mine.size()) >= per_class) continue;
    used[static_cast<size_t>(img)] = 1;
    mine.push_back(img);
    ++filled;
  }
  std::vector<int64_t> rows(static_cast<size_t>(N * per_class));
  for (int64_t l = 0; l < N; ++l)
    for (int k = 0; k < per_class; ++k) rows[static_cast<size_t>(k * N + l)] = by_label[static_cast<size_t>(l)][k];
  return rows;
}

void describe_images(const model::ClipVision& vit, const model::Lora& lora, const InversionConfig& cfg,
                     Surrogates& out) {
  at::NoGradGuard ng;
  const at::Tensor px = vit.preprocess(out.images);
  model::ForwardOptions dense;
  dense.want_scores = true;
  const model::ForwardOutput d = vit.forward(px, dense, &lora);
  out.teacher_logits = lora.head(d.feature).to(at::kCPU, at::kFloat);
  out.patch_scores = d.patch_scores.to(at::kCPU, at::kFloat);
  if (cfg.prune.empty()) {
    out.keep_mask = at::ones(out.patch_scores.sizes(), at::kByte);
  } else {
    model::ForwardOptions pruned;
    pruned.prune = cfg.prune;
    pruned.want_scores = true;
    out.keep_mask = vit.forward(px, pruned, &lora).keep_mask.to(at::kCPU, at::kByte);
  }
  out.teacher_accuracy =
      100.0 * out.teacher_logits.argmax(-1).eq(out.labels.to(at::kLong)).to(at::kDouble).mean().item<double>();
}

}  // namespace lorarec::invert
