#include "lorarecycle/train/pretrain.h"

#include <ATen/ATen.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "lorarecycle/data/image_set.h"
#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/eval/fewshot.h"
#include "lorarecycle/io/safetensors.h"
#include "lorarecycle/model/vit.h"
#include "lorarecycle/train/optim.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"
#include "lorarecycle/util/log.h"
#include "lorarecycle/util/progress.h"

namespace lorarec::train {
namespace {
using json = nlohmann::json;
namespace stdfs = std::filesystem;

constexpr const char* kCheckpoint = "checkpoint.safetensors";

std::string arch_string(const model::ClipVisionConfig& c) { return model::to_config_json(c); }

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
  if (checkpoint_every < 1 || log_every < 1) throw InputError("pretrain: --checkpoint-every and --log-every must be >= 1");
  vit.validate("pretrain");
}

std::string run_pretrain(const PretrainConfig& cfg, dist::Communicator& comm, const c10::Device& device) {
  cfg.validate();
  const std::string work = cfg.work.empty() ? cfg.out + ".work" : cfg.work;
  if (comm.rank() == 0) stdfs::create_directories(work);
  comm.barrier();

  const data::ImageSet all = data::ImageSet::load(cfg.data);
  const auto [train_rows, held_rows] = all.split_per_class(1.0 - cfg.holdout, cfg.seed);
  if (train_rows.empty()) throw InputError(cfg.data + ": no training images");
  const int64_t n_classes = all.num_classes();
  LOG_INFO("pretrain", cfg.data << ": " << n_classes << " classes, " << train_rows.size() << " training and "
                                 << held_rows.size() << " held-out images");

  model::ClipVision vit = model::ClipVision::random(cfg.vit, cfg.seed);
  model::Lora head_holder(cfg.vit, model::LoraConfig{}, cfg.seed);  // only its head is used
  head_holder.init_head(static_cast<int>(n_classes), cfg.seed + 1);
  vit.to(device);
  head_holder.to(device);
  vit.set_requires_grad(true);
  head_holder.set_requires_grad(true, true);
  std::vector<at::Tensor> params = vit.parameters();
  params.push_back(head_holder.head_weight());
  params.push_back(head_holder.head_bias());
  AdamWConfig ocfg;
  ocfg.weight_decay = cfg.weight_decay;
  AdamW opt(params, ocfg);

  // Resume.
  int64_t start = 0;
  const stdfs::path ckpt = stdfs::path(work) / kCheckpoint;
  if (cfg.resume && stdfs::exists(ckpt)) {
    const io::SafetensorsFile f = io::SafetensorsFile::open(ckpt.string());
    const auto meta = f.metadata();
    if (!meta.count("arch") || meta.at("arch") != arch_string(cfg.vit) || !meta.count("seed") ||
        meta.at("seed") != std::to_string(cfg.seed) || !meta.count("data") || meta.at("data") != cfg.data)
      throw InputError(ckpt.string() + ": checkpoint of another architecture, seed or dataset; remove it or use --no-resume");
    std::map<std::string, at::Tensor> t;
    for (const auto& [name, _] : f.tensors()) t[name] = f.tensor(name);
    vit.load_values(t, ckpt.string());
    {
      at::NoGradGuard ng;
      at::Tensor hw = head_holder.head_weight(), hb = head_holder.head_bias();
      hw.copy_(t.at("head.weight"));
      hb.copy_(t.at("head.bias"));
    }
    opt.load_state(t);
    start = opt.steps();
    LOG_INFO("pretrain", "resumed from " << ckpt.string() << " at step " << start);
  }

  auto save_checkpoint = [&](int64_t step) {
    if (comm.rank() != 0) return;
    std::map<std::string, at::Tensor> t = vit.state_dict();
    t["head.weight"] = head_holder.head_weight();
    t["head.bias"] = head_holder.head_bias();
    for (auto& [k, v] : opt.state()) t[k] = v;
    io::save_safetensors(ckpt.string(), t,
                         {{"arch", arch_string(cfg.vit)}, {"seed", std::to_string(cfg.seed)}, {"data", cfg.data},
                          {"step", std::to_string(step)}});
  };

  std::ofstream metrics;
  if (comm.rank() == 0) metrics.open(stdfs::path(work) / "metrics.jsonl", std::ios::app);
  Progress progress("pretrain", "training", cfg.steps - start, "steps", 10.0);
  double loss_acc = 0, correct_acc = 0, seen_acc = 0;
  auto t_window = std::chrono::steady_clock::now();
  for (int64_t step = start; step < cfg.steps; ++step) {
    auto rng = data::make_rng(cfg.seed, comm.rank(), step);
    std::uniform_int_distribution<size_t> pick(0, train_rows.size() - 1);
    std::vector<int64_t> rows(cfg.batch_size);
    for (auto& r : rows) r = train_rows[pick(rng)];
    const at::Tensor y = all.labels().index_select(0, at::tensor(rows, at::kLong)).to(device);
    at::Tensor x = vit.preprocess(all.gather(rows));
    x = data::random_shift_flip(x, cfg.shift, false, rng);
    const at::Tensor logits = head_holder.head(vit.forward(x).feature);
    const at::Tensor loss = at::cross_entropy_loss(logits, y);
    opt.zero_grad();
    loss.backward();
    all_reduce_grads(params, comm);
    clip_grad_norm(params, cfg.clip_norm);
    const double lr = warmup_cosine(step, cfg.steps, cfg.warmup, cfg.lr, cfg.min_lr);
    opt.step(lr);
    loss_acc += loss.item<double>();
    correct_acc += logits.argmax(-1).eq(y).sum().item<double>();
    seen_acc += cfg.batch_size;
    progress.advance(1);
    const bool last = step + 1 == cfg.steps;
    if ((step + 1) % cfg.log_every == 0 || last) {
      const auto losses = comm.all_gather_f64(loss_acc);
      const auto corrects = comm.all_gather_f64(correct_acc);
      double l = 0, c = 0;
      for (size_t i = 0; i < losses.size(); ++i) l += losses[i], c += corrects[i];
      const double steps_in = seen_acc / cfg.batch_size;
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_window).count();
      const json line = {{"step", step + 1}, {"loss", l / (steps_in * comm.size())},
                         {"train_acc", 100.0 * c / (seen_acc * comm.size())}, {"lr", lr},
                         {"images_per_s", seen_acc * comm.size() / secs}};
      if (comm.rank() == 0) metrics << line.dump() << "\n" << std::flush;
      LOG_INFO("pretrain", line.dump());
      loss_acc = correct_acc = seen_acc = 0;
      t_window = std::chrono::steady_clock::now();
    }
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
  vit.set_requires_grad(false);
  head_holder.set_requires_grad(false, true);

  // Report: held-out base accuracy (head), prototype 5-way 1-shot on held-out base images and on
  // the evaluation set.
  json report = {{"data", cfg.data}, {"steps", cfg.steps}, {"world_size", comm.size()},
                 {"batch_size_global", cfg.batch_size * comm.size()}};
  if (!held_rows.empty()) {
    const data::ImageSet held = all.subset(held_rows, cfg.data + " (held out)");
    const at::Tensor feats = eval::embed_all(vit, nullptr, held, comm);
    at::Tensor pred;
    {
      at::NoGradGuard ng;
      pred = head_holder.head(feats.to(device)).argmax(-1).cpu();
    }
    report["heldout_head_acc"] = 100.0 * pred.eq(held.labels()).to(at::kDouble).mean().item<double>();
    int64_t min_per_class = INT64_MAX;
    for (const auto& c : held.by_class()) min_per_class = std::min<int64_t>(min_per_class, c.size());
    if (min_per_class >= 2) {
      data::EpisodeSpec spec{5, 1, static_cast<int>(std::min<int64_t>(15, min_per_class - 1))};
      const auto a = eval::evaluate_prototypes(feats, held, spec, cfg.eval_episodes, cfg.seed + 7, comm);
      report["heldout_proto_5w1s"] = {{"mean", a.mean}, {"ci95", a.ci95}, {"episodes", a.episodes}, {"queries", spec.q_query}};
    }
  }
  if (!cfg.eval_data.empty()) {
    const data::ImageSet ev = data::ImageSet::load(cfg.eval_data);
    const at::Tensor feats = eval::embed_all(vit, nullptr, ev, comm);
    const data::EpisodeSpec spec{5, 1, 15};
    const auto a = eval::evaluate_prototypes(feats, ev, spec, cfg.eval_episodes, cfg.seed + 11, comm);
    report["eval_data"] = cfg.eval_data;
    report["eval_proto_5w1s"] = {{"mean", a.mean}, {"ci95", a.ci95}, {"episodes", a.episodes}, {"queries", 15}};
  }
  if (comm.rank() == 0) {
    vit.to(c10::Device(at::kCPU));
    vit.save(cfg.out);
    fs::write_text(stdfs::path(cfg.out) / "pretrain_report.json", report.dump(2) + "\n");
    LOG_INFO("pretrain", "wrote " << cfg.out << ": " << report.dump());
  }
  comm.barrier();
  return report.dump();
}

}  // namespace lorarec::train
