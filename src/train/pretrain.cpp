#include "lorarecycle/train/pretrain.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>

#include "lorarecycle/data/image_set.h"
#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/fewshot/fewshot.h"
#include "lorarecycle/io/safetensors.h"
#include "lorarecycle/model/resnet.h"
#include "lorarecycle/model/vit.h"
#include "lorarecycle/optim/optim.h"
#include "lorarecycle/util/env.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"
#include "lorarecycle/util/log.h"
#include "lorarecycle/util/progress.h"
#include "lorarecycle/util/provenance.h"

namespace lorarec::train {
namespace {
using json = nlohmann::json;
namespace stdfs = std::filesystem;

constexpr const char* kCheckpoint = "checkpoint.safetensors";

json accuracy_json(const fewshot::Accuracy& a, const data::EpisodeSpec& spec) {
  return {{"mean", a.mean}, {"ci95", a.ci95}, {"episodes", a.episodes}, {"queries", spec.q_query}};
}

// What the training loop needs of a network: ViT + linear head, or ResNet.
class Trainee {
 public:
  virtual ~Trainee() = default;
  virtual std::string arch() const = 0;  // identifies the architecture in checkpoints
  virtual std::vector<at::Tensor> params() = 0;
  virtual at::Tensor preprocess(const at::Tensor& u8) const = 0;
  virtual at::Tensor logits(const at::Tensor& px, bool train) = 0;
  virtual std::map<std::string, at::Tensor> state() const = 0;  // weights (+ buffers, head)
  virtual void load(const std::map<std::string, at::Tensor>& t, const std::string& origin) = 0;
  // Collective: after each step (the ResNet averages its BN running statistics).
  virtual void after_step(dist::Communicator&) {}
  virtual void freeze() = 0;
  virtual void save(const std::string& dir) = 0;
  // Adds entries to the report (features for prototype checks when the network has them).
  virtual void report(json& r, const data::ImageSet& held, const PretrainConfig& cfg, dist::Communicator& comm) = 0;
};

class VitTrainee final : public Trainee {
 public:
  VitTrainee(const PretrainConfig& cfg, int64_t classes, const c10::Device& device)
      : vit_(model::ClipVision::random(cfg.vit, cfg.seed)),
        head_(model::Lora::empty(cfg.vit, model::LoraConfig{})),
        device_(device) {
    head_.init_head(static_cast<int>(classes), cfg.seed + 1);
    vit_.to(device);
    head_.to(device);
    vit_.set_requires_grad(true);
    head_.set_requires_grad(true, true);
  }
  std::string arch() const override { return model::to_config_json(vit_.config()); }
  std::vector<at::Tensor> params() override {
    auto p = vit_.parameters();
    p.push_back(head_.head_weight());
    p.push_back(head_.head_bias());
    return p;
  }
  at::Tensor preprocess(const at::Tensor& u8) const override { return vit_.preprocess(u8); }
  at::Tensor logits(const at::Tensor& px, bool) override { return head_.head(vit_.forward(px).feature); }
  std::map<std::string, at::Tensor> state() const override {
    auto t = vit_.state_dict();
    t["head.weight"] = head_.head_weight();
    t["head.bias"] = head_.head_bias();
    return t;
  }
  void load(const std::map<std::string, at::Tensor>& t, const std::string& origin) override {
    vit_.load_values(t, origin);
    at::NoGradGuard ng;
    at::Tensor hw = head_.head_weight(), hb = head_.head_bias();
    hw.copy_(t.at("head.weight"));
    hb.copy_(t.at("head.bias"));
  }
  void freeze() override {
    vit_.set_requires_grad(false);
    head_.set_requires_grad(false, true);
  }
  void save(const std::string& dir) override {
    vit_.to(c10::Device(at::kCPU));
    vit_.save(dir);
  }
  void report(json& r, const data::ImageSet& held, const PretrainConfig& cfg, dist::Communicator& comm) override {
    const at::Tensor feats = fewshot::embed_all(vit_, nullptr, held, comm);
    at::Tensor pred;
    {
      at::NoGradGuard ng;
      pred = head_.head(feats.to(device_)).argmax(-1).cpu();
    }
    r["heldout_head_acc"] = 100.0 * pred.eq(held.labels()).to(at::kDouble).mean().item<double>();
    int64_t min_per_class = INT64_MAX;
    for (const auto& c : held.by_class()) min_per_class = std::min<int64_t>(min_per_class, c.size());
    if (min_per_class >= 2 && held.num_classes() >= 5) {
      const data::EpisodeSpec spec{5, 1, static_cast<int>(std::min<int64_t>(15, min_per_class - 1))};
      const auto a = fewshot::evaluate_prototypes(feats, held, spec, cfg.eval_episodes, cfg.seed + 7, comm);
      r["heldout_proto_5w1s"] = accuracy_json(a, spec);
    }
    if (!cfg.eval_data.empty()) {
      const data::ImageSet ev = data::ImageSet::load(cfg.eval_data);
      const at::Tensor f = fewshot::embed_all(vit_, nullptr, ev, comm);
      const data::EpisodeSpec spec{5, 1, 15};
      const auto a = fewshot::evaluate_prototypes(f, ev, spec, cfg.eval_episodes, cfg.seed + 11, comm);
      r["eval_data"] = cfg.eval_data;
      r["eval_proto_5w1s"] = accuracy_json(a, spec);
    }
  }

 private:
  model::ClipVision vit_;
  model::Lora head_;  // no adapters: only its classifier head
  c10::Device device_;
};

class ResNetTrainee final : public Trainee {
 public:
  ResNetTrainee(const PretrainConfig& cfg, int64_t classes, const c10::Device& device)
      : pixels_(cfg.vit), device_(device) {
    model::ResNetConfig rc = cfg.resnet;
    rc.num_classes = static_cast<int>(classes);
    net_ = model::ResNet::random(rc, cfg.seed);
    net_.to(device);
    net_.set_requires_grad(true);
  }
  std::string arch() const override {
    const auto& c = net_.config();
    std::string s = std::string(c.bottleneck ? "bottleneck" : "basic") + " width " + std::to_string(c.width) +
                    " stem " + (c.imagenet_stem ? "imagenet" : "cifar") + " classes " + std::to_string(c.num_classes) +
                    " layers";
    for (int l : c.layers) s += " " + std::to_string(l);
    return s;
  }
  std::vector<at::Tensor> params() override { return net_.parameters(); }
  at::Tensor preprocess(const at::Tensor& u8) const override { return model::preprocess_images(u8, pixels_, device_); }
  at::Tensor logits(const at::Tensor& px, bool train) override { return net_.forward(px, train); }
  std::map<std::string, at::Tensor> state() const override { return net_.state_dict(); }
  void load(const std::map<std::string, at::Tensor>& t, const std::string& origin) override {
    net_.load_values(t, origin);
  }
  void after_step(dist::Communicator& comm) override { comm.all_reduce_mean(net_.buffers()); }
  void freeze() override { net_.set_requires_grad(false); }
  void save(const std::string& dir) override {
    net_.to(c10::Device(at::kCPU));
    net_.save(dir);
  }
  void report(json& r, const data::ImageSet& held, const PretrainConfig&, dist::Communicator& comm) override {
    int64_t correct = 0;
    {
      at::NoGradGuard ng;
      for (int64_t s = comm.rank() * 256; s < held.size(); s += 256 * comm.size()) {
        const int64_t e = std::min<int64_t>(held.size(), s + 256);
        const at::Tensor pred = net_.forward(preprocess(held.images().slice(0, s, e)), false).argmax(-1).cpu();
        correct += pred.eq(held.labels().slice(0, s, e)).sum().item<int64_t>();
      }
    }
    double total = 0;
    for (double c : comm.all_gather_f64(double(correct))) total += c;
    r["heldout_head_acc"] = 100.0 * total / double(held.size());
  }

 private:
  model::ClipVisionConfig pixels_;  // only its pixel pipeline (image size, mean/std) is used
  c10::Device device_;
  model::ResNet net_;
};

}  // namespace

void PretrainConfig::validate() const {
  if (data.empty()) throw InputError("pretrain: --data is required");
  if (out.empty()) throw InputError("pretrain: --out is required");
  if (steps < 1) throw InputError("pretrain: --steps must be >= 1");
  if (batch_size < 1) throw InputError("pretrain: --batch-size must be >= 1");
  if (!(lr > 0) || !(min_lr >= 0) || min_lr > lr) throw InputError("pretrain: need 0 <= --min-lr <= --lr, --lr > 0");
  if (warmup < 0 || warmup >= steps) throw InputError("pretrain: --warmup must be in [0, steps)");
  if (!(holdout >= 0 && holdout < 1)) throw InputError("pretrain: --holdout must be in [0, 1)");
  if (shift < 0) throw InputError("pretrain: --shift must be >= 0");
  if (checkpoint_every < 1 || log_every < 1)
    throw InputError("pretrain: --checkpoint-every and --log-every must be >= 1");
  vit.validate("pretrain");
  if (arch != "vit" && arch != "resnet") throw InputError("pretrain: --arch must be vit or resnet, got '" + arch + "'");
}

namespace {

// The checkpoint's weights and Adam state; returns the step to continue from.
int64_t resume_from(const PretrainConfig& cfg, const stdfs::path& ckpt, Trainee& net, optim::AdamW& opt) {
  const io::SafetensorsFile f = io::SafetensorsFile::open(ckpt.string());
  const auto meta = f.metadata();
  if (!meta.count("arch") || meta.at("arch") != net.arch() || !meta.count("seed") ||
      meta.at("seed") != std::to_string(cfg.seed) || !meta.count("data") || meta.at("data") != cfg.data)
    throw InputError(ckpt.string() +
                     ": checkpoint of another architecture, seed or dataset; remove it or use --no-resume");
  std::map<std::string, at::Tensor> t;
  for (const auto& [name, _] : f.tensors()) t[name] = f.tensor(name);
  net.load(t, ckpt.string());
  opt.load_state(t);
  LOG_INFO("pretrain", "resumed from " << ckpt.string() << " at step " << opt.steps());
  return opt.steps();
}

// Sums over the steps of one metrics window (this rank's).
struct Window {
  double loss = 0, correct = 0, seen = 0;
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
};

// Collective. The window's metrics line (rank 0 appends it to metrics.jsonl) and a new window.
void log_window(const PretrainConfig& cfg, dist::Communicator& comm, int64_t step, double lr, Window& w,
                std::ofstream& metrics, const stdfs::path& metrics_path) {
  const auto losses = comm.all_gather_f64(w.loss);
  const auto corrects = comm.all_gather_f64(w.correct);
  double l = 0, c = 0;
  for (size_t i = 0; i < losses.size(); ++i) l += losses[i], c += corrects[i];
  const double steps_in = w.seen / cfg.batch_size;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - w.t0).count();
  const json line = {{"step", step},
                     {"loss", l / (steps_in * comm.size())},
                     {"train_acc", 100.0 * c / (w.seen * comm.size())},
                     {"lr", lr},
                     {"images_per_s", w.seen * comm.size() / secs}};
  if (comm.rank() == 0) {
    metrics << line.dump() << "\n" << std::flush;
    if (!metrics) fs::throw_write_error(metrics_path);
  }
  LOG_INFO("pretrain", line.dump());
  w = Window();
}

// One data-parallel step: this rank's batch (drawn from make_rng(seed, rank, step)), gradients
// all-reduced, and the update on every rank alike unless the step is not finite.
void train_step(const PretrainConfig& cfg, dist::Communicator& comm, const c10::Device& device,
                const data::ImageSet& all, const std::vector<int64_t>& train_rows, Trainee& net,
                std::vector<at::Tensor>& params, optim::AdamW& opt, optim::BadStepGuard& guard, int64_t step, double lr,
                Window& w) {
  auto rng = data::make_rng(cfg.seed, comm.rank(), step);
  std::uniform_int_distribution<size_t> pick(0, train_rows.size() - 1);
  std::vector<int64_t> rows(cfg.batch_size);
  for (auto& r : rows) r = train_rows[pick(rng)];
  const at::Tensor y = all.labels().index_select(0, at::tensor(rows, at::kLong)).to(device);
  at::Tensor x = net.preprocess(all.gather(rows));
  x = data::random_shift_flip(x, cfg.shift, false, rng);
  const at::Tensor logits = net.logits(x, true);
  at::Tensor loss = at::cross_entropy_loss(logits, y);
  if (env::fault_point(comm.rank(), "pretrain")) loss = loss * std::numeric_limits<double>::quiet_NaN();  // test hook
  opt.zero_grad();
  loss.backward();
  optim::all_reduce_grads(params, comm);
  // The reduced gradients are the same on every rank: all apply or all skip the step.
  const bool finite = optim::grads_finite(params);
  if (guard.ok(finite, step)) {
    optim::clip_grad_norm(params, cfg.clip_norm);
    opt.step(lr);
    net.after_step(comm);
    w.loss += loss.item<double>();
    w.correct += logits.argmax(-1).eq(y).sum().item<double>();
    w.seen += cfg.batch_size;
  }
}

// Held-out base accuracy (head); for the ViT also prototype 5-way 1-shot accuracy on the held-out
// base images and on the evaluation set. Rank 0 writes the model, the report and the marker.
std::string write_report(const PretrainConfig& cfg, dist::Communicator& comm, Trainee& net, const data::ImageSet& all,
                         const std::vector<int64_t>& held_rows) {
  json report = {{"arch", cfg.arch},
                 {"data", cfg.data},
                 {"steps", cfg.steps},
                 {"world_size", comm.size()},
                 {"batch_size_global", cfg.batch_size * comm.size()}};
  if (!held_rows.empty()) net.report(report, all.subset(held_rows, cfg.data + " (held out)"), cfg, comm);
  if (comm.rank() == 0) {
    net.save(cfg.out);
    fs::write_text(stdfs::path(cfg.out) / "pretrain_report.json", report.dump(2) + "\n");
    fs::write_text(stdfs::path(cfg.out) / prov::kMarker, prov::marker_text("pretrain", nullptr));
    LOG_INFO("pretrain", "wrote " << cfg.out << ": " << report.dump());
  }
  comm.barrier();
  return report.dump();
}

}  // namespace

std::string run_pretrain(const PretrainConfig& cfg, dist::Communicator& comm, const c10::Device& device) {
  cfg.validate();
  const std::string work = cfg.work.empty() ? cfg.out + ".work" : cfg.work;
  // Before any work, on every rank: --out and its work directory are new, empty or this command's.
  (void)prov::check_output_dir(cfg.out, "pretrain");
  (void)prov::check_output_dir(work, "pretrain-work");
  comm.barrier();
  if (comm.rank() == 0) prov::claim_output_dir(work, "pretrain-work", nullptr);
  comm.barrier();

  const data::ImageSet all = data::ImageSet::load(cfg.data);
  const auto [train_rows, held_rows] = all.split_per_class(1.0 - cfg.holdout, cfg.seed);
  if (train_rows.empty()) throw InputError(cfg.data + ": no training images");
  const int64_t n_classes = all.num_classes();
  LOG_INFO("pretrain", cfg.data << ": " << n_classes << " classes, " << train_rows.size() << " training and "
                                << held_rows.size() << " held-out images");
  std::unique_ptr<Trainee> net;
  if (cfg.arch == "vit")
    net = std::make_unique<VitTrainee>(cfg, n_classes, device);
  else
    net = std::make_unique<ResNetTrainee>(cfg, n_classes, device);
  std::vector<at::Tensor> params = net->params();
  optim::AdamWConfig ocfg;
  ocfg.weight_decay = cfg.weight_decay;
  optim::AdamW opt(params, ocfg);
  const stdfs::path ckpt = stdfs::path(work) / kCheckpoint;
  const int64_t start = cfg.resume && stdfs::exists(ckpt) ? resume_from(cfg, ckpt, *net, opt) : 0;
  auto save_checkpoint = [&](int64_t step) {
    if (comm.rank() != 0) return;
    std::map<std::string, at::Tensor> t = net->state();
    for (auto& [k, v] : opt.state()) t[k] = v;
    io::save_safetensors(ckpt.string(), t,
                         {{"arch", net->arch()},
                          {"seed", std::to_string(cfg.seed)},
                          {"data", cfg.data},
                          {"step", std::to_string(step)}});
  };
  const stdfs::path metrics_path = stdfs::path(work) / "metrics.jsonl";
  std::ofstream metrics;
  if (comm.rank() == 0) metrics.open(metrics_path, std::ios::app);
  Progress progress("pretrain", "training", cfg.steps - start, "steps", 10.0);
  Window window;
  optim::BadStepGuard guard("pretrain", cfg.max_bad_steps, "; last good checkpoint under " + work);
  for (int64_t step = start; step < cfg.steps; ++step) {
    const double lr = optim::warmup_cosine(step, cfg.steps, cfg.warmup, cfg.lr, cfg.min_lr);
    train_step(cfg, comm, device, all, train_rows, *net, params, opt, guard, step, lr, window);
    progress.advance(1);
    const bool last = step + 1 == cfg.steps;
    if ((step + 1) % cfg.log_every == 0 || last) log_window(cfg, comm, step + 1, lr, window, metrics, metrics_path);
    if ((step + 1) % cfg.checkpoint_every == 0 || last) save_checkpoint(step + 1);
    if (cfg.stop_after > 0 && step + 1 - start >= cfg.stop_after && !last) {
      save_checkpoint(step + 1);
      comm.barrier();
      LOG_INFO("pretrain", "stopping after " << cfg.stop_after << " steps at step " << step + 1
                                             << " (checkpoint saved; the same command resumes)");
      return json({{"stopped_at", step + 1}}).dump();
    }
  }
  progress.finish();
  net->freeze();
  return write_report(cfg, comm, *net, all, held_rows);
}

}  // namespace lorarec::train
