#include "lorarecycle/train/zoo.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <limits>
#include <map>
#include <numeric>

#include "lorarecycle/data/image_set.h"
#include "lorarecycle/data/zoo_manifest.h"
#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/io/safetensors.h"
#include "lorarecycle/model/peft.h"
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
constexpr std::uint64_t kTaskStream = 0x200, kSplitStream = 0x201, kTrainStream = 0x202, kCoverStream = 0x203;
}  // namespace

void ZooConfig::validate() const {
  if (model.empty() || data.empty() || out.empty()) throw InputError("zoo: --model, --data and --out are required");
  if (num_loras < 1) throw InputError("zoo: --num-loras must be >= 1");
  if (n_way < 2) throw InputError("zoo: --way must be >= 2");
  if (!(train_fraction > 0 && train_fraction < 1)) throw InputError("zoo: --train-fraction must be in (0, 1)");
  if (epochs < 1 || batch_size < 1) throw InputError("zoo: --epochs and --batch-size must be >= 1");
  if (!(lr > 0)) throw InputError("zoo: --lr must be positive");
  if (cover_classes < 0 || (cover_classes > 0 && cover_classes < n_way))
    throw InputError("zoo: --classes must be 0 (all) or at least --way (" + std::to_string(n_way) + ")");
}

std::vector<int64_t> zoo_task_classes(std::uint64_t seed, int id, int n_way, int64_t num_classes) {
  if (num_classes < n_way)
    throw InputError("zoo: " + std::to_string(num_classes) + " classes, fewer than the " + std::to_string(n_way) +
                     " of a task");
  auto rng = data::make_rng(seed, kTaskStream, static_cast<std::uint64_t>(id));
  return data::sample_without_replacement(num_classes, n_way, rng);
}

std::vector<std::vector<int64_t>> zoo_tasks(std::uint64_t seed, int num_loras, int n_way, int64_t num_classes,
                                            int cover_classes) {
  std::vector<std::vector<int64_t>> tasks;
  if (cover_classes == 0) {
    for (int id = 0; id < num_loras; ++id) tasks.push_back(zoo_task_classes(seed, id, n_way, num_classes));
    return tasks;
  }
  if (cover_classes > num_classes)
    throw InputError("zoo: --classes " + std::to_string(cover_classes) + " but the data has only " +
                     std::to_string(num_classes) + " classes");
  if (cover_classes < n_way) throw InputError("zoo: --classes must be at least --way");
  auto rng = data::make_rng(seed, kCoverStream, 0);
  std::vector<int64_t> chosen = data::sample_without_replacement(num_classes, cover_classes, rng);
  std::sort(chosen.begin(), chosen.end());
  std::deque<int64_t> deck;
  for (int id = 0; id < num_loras; ++id) {
    std::vector<int64_t> task, back;
    while (static_cast<int>(task.size()) < n_way) {
      if (deck.empty()) {
        std::vector<int64_t> perm = chosen;
        std::shuffle(perm.begin(), perm.end(), rng);
        deck.insert(deck.end(), perm.begin(), perm.end());
      }
      const int64_t c = deck.front();
      deck.pop_front();
      if (std::find(task.begin(), task.end(), c) != task.end())
        back.push_back(c);  // already in this task: next task gets it
      else
        task.push_back(c);
    }
    deck.insert(deck.begin(), back.begin(), back.end());
    tasks.push_back(std::move(task));
  }
  return tasks;
}

namespace {

// Training images of a class of a task: InputError when the split leaves either side empty.
size_t train_cut(const data::ImageSet& set, int64_t cls, double fraction) {
  const size_t n = set.by_class()[cls].size();
  const size_t cut = static_cast<size_t>(std::lround(fraction * double(n)));
  if (cut < 1 || cut >= n)
    throw InputError(set.origin() + ": class '" + set.class_names()[cls] + "' has " + std::to_string(n) +
                     " images: too few to split into training and held-out images at --train-fraction " +
                     log::fixed(fraction, 2));
  return cut;
}

// The task's images split into training and held-out rows (seeded per LoRA and class).
struct TaskSplit {
  std::vector<int64_t> train_rows, train_y, held_rows, held_y;
};
TaskSplit split_task(const ZooConfig& cfg, int id, const std::vector<int64_t>& classes, const data::ImageSet& set) {
  TaskSplit t;
  for (int j = 0; j < cfg.n_way; ++j) {
    std::vector<int64_t> rows = set.by_class()[classes[j]];
    auto rng = data::make_rng(cfg.seed, kSplitStream, static_cast<std::uint64_t>(id) * 1000 + j);
    std::shuffle(rows.begin(), rows.end(), rng);
    const size_t cut = train_cut(set, classes[j], cfg.train_fraction);
    for (size_t i = 0; i < rows.size(); ++i) {
      (i < cut ? t.train_rows : t.held_rows).push_back(rows[i]);
      (i < cut ? t.train_y : t.held_y).push_back(j);
    }
  }
  return t;
}

// Adam over the LoRA and its head, cfg.epochs passes over the training rows; returns the mean
// training loss of the last epoch.
double train_epochs(const ZooConfig& cfg, int id, const TaskSplit& t, const model::ClipVision& vit,
                    const data::ImageSet& set, const c10::Device& device, int rank, model::Lora& lora) {
  optim::AdamW opt(lora.parameters(true), optim::AdamWConfig{});
  const at::Tensor train_x = vit.preprocess(set.gather(t.train_rows));  // small: one task
  const at::Tensor train_t = at::tensor(t.train_y, at::kLong).to(device);
  const int64_t n = static_cast<int64_t>(t.train_rows.size());
  optim::BadStepGuard guard("zoo", cfg.max_bad_steps, " while training " + data::zoo_entry_name(id));
  int64_t step = 0;
  // Inside one LoRA: epochs with the training loss and accuracy (rank 0's LoRAs, every 10 s).
  Progress progress("zoo", data::zoo_entry_name(id) + " epochs", cfg.epochs, "epochs", 10.0);
  double loss_sum = 0;
  int64_t correct = 0, seen = 0;
  for (int epoch = 0; epoch < cfg.epochs; ++epoch) {
    loss_sum = 0, correct = 0, seen = 0;
    auto rng = data::make_rng(cfg.seed, kTrainStream, static_cast<std::uint64_t>(id) * 100000 + epoch);
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    for (int64_t s = 0; s < n; s += cfg.batch_size) {
      const std::vector<int64_t> b(order.begin() + s, order.begin() + std::min<int64_t>(n, s + cfg.batch_size));
      const at::Tensor idx = at::tensor(b, at::kLong).to(device);
      const at::Tensor target = train_t.index_select(0, idx);
      const at::Tensor logits = lora.head(vit.forward(train_x.index_select(0, idx), {}, &lora).feature);
      at::Tensor loss = at::cross_entropy_loss(logits, target);
      // (test hook; LoRAs train without a communicator, so the point is "0:zoo-step" on every rank)
      if (env::fault_point(rank, "zoo-step")) loss = loss * std::numeric_limits<double>::quiet_NaN();
      opt.zero_grad();
      loss.backward();
      const double value = loss.item<double>();
      const bool finite = std::isfinite(value) && optim::grads_finite(lora.parameters(true));
      if (guard.ok(finite, step++)) opt.step(cfg.lr);
      const int64_t nb = static_cast<int64_t>(b.size());
      loss_sum += value * static_cast<double>(nb);
      correct += logits.detach().argmax(-1).eq(target).sum().item<int64_t>();
      seen += nb;
    }
    progress.note("loss " + log::fixed(loss_sum / static_cast<double>(seen), 3) + ", train accuracy " +
                  log::fixed(100.0 * static_cast<double>(correct) / static_cast<double>(seen), 1) + "%");
    progress.advance(1);
  }
  return loss_sum / static_cast<double>(std::max<int64_t>(seen, 1));
}

data::ZooEntry train_one(const ZooConfig& cfg, const json& settings, int id, const std::vector<int64_t>& classes,
                         const model::ClipVision& vit, const data::ImageSet& set, const c10::Device& device, int rank) {
  const TaskSplit t = split_task(cfg, id, classes, set);
  model::Lora lora(vit.config(), cfg.lora, cfg.seed * 1000003 + id);
  lora.init_head(cfg.n_way, cfg.seed * 1000003 + id + 500000);
  lora.to(device);
  lora.set_requires_grad(true, true);
  data::ZooEntry e;
  e.train_loss = train_epochs(cfg, id, t, vit, set, device, rank, lora);
  lora.set_requires_grad(false, true);
  {
    at::NoGradGuard ng;
    const at::Tensor logits = lora.head(vit.forward(vit.preprocess(set.gather(t.held_rows)), {}, &lora).feature);
    e.heldout_accuracy =
        100.0 * logits.argmax(-1).cpu().eq(at::tensor(t.held_y, at::kLong)).to(at::kDouble).mean().item<double>();
  }
  e.id = id;
  e.dir = (stdfs::path(cfg.out) / data::zoo_entry_name(id)).string();
  e.classes = classes;
  std::vector<std::string> names;
  for (int64_t c : classes) names.push_back(set.class_names()[c]);
  const json task = {{"lora_id", id},
                     {"settings", settings},
                     {"classes", classes},
                     {"class_names", names},
                     {"source_dataset", set.origin()},
                     {"base_model", cfg.model},
                     {"n_way", cfg.n_way},
                     {"cover_classes", cfg.cover_classes},
                     {"train_images", t.train_rows.size()},
                     {"heldout_images", t.held_rows.size()},
                     {"heldout_accuracy", e.heldout_accuracy},
                     {"last_epoch_loss", e.train_loss},
                     {"epochs", cfg.epochs},
                     {"batch_size", cfg.batch_size},
                     {"lr", cfg.lr},
                     {"seed", cfg.seed},
                     {"producer", std::string("lorarecycle zoo ") + LORAREC_VERSION}};
  lora.to(c10::Device(at::kCPU));
  model::save_peft(e.dir, lora, cfg.model, {{data::kZooTaskFile, task.dump(2) + "\n"}});
  return e;
}

// Before any work, on every rank (each reaches the same verdict): do the finished LoRAs in --out
// have today's settings, and are they intact? Returns every entry directory (--restart removes them).
std::vector<std::string> check_finished(const ZooConfig& cfg, const json& settings) {
  std::vector<std::string> finished;
  if (!stdfs::is_directory(cfg.out)) return finished;
  std::vector<stdfs::path> dirs;
  for (const auto& e : stdfs::directory_iterator(cfg.out))
    if (e.is_directory() && e.path().filename().string().rfind("lora_", 0) == 0) dirs.push_back(e.path());
  std::sort(dirs.begin(), dirs.end());
  for (const auto& d : dirs) {
    finished.push_back(d.string());
    if (cfg.restart || !data::zoo_entry_complete(d.string())) continue;
    const json task = json::parse(fs::read_text(d / data::kZooTaskFile));
    if (!task.contains("settings"))
      throw InputError(d.string() +
                       ": recorded no settings (written by an older lorarecycle), so it cannot be "
                       "reused safely; --restart discards the finished LoRAs, or choose a new --out");
    const std::string diff = prov::first_difference(task.at("settings"), settings, d.string());
    if (!diff.empty()) throw InputError(diff + "; --restart discards the finished LoRAs, or choose a new --out");
    // A finished LoRA is reused only when intact: opening it verifies its content digest.
    try {
      (void)io::SafetensorsFile::open((d / model::kPeftWeights).string());
    } catch (const InputError& e) {
      throw InputError(std::string(e.what()) + "; delete " + d.string() + " and re-run zoo (or --restart)");
    }
  }
  return finished;
}

// This rank's LoRAs still to train; a finished one is reused only for the same task.
std::vector<int> my_loras(const ZooConfig& cfg, const std::vector<std::vector<int64_t>>& tasks, int rank, int world,
                          int* reused) {
  std::vector<int> mine;
  for (int id = rank; id < cfg.num_loras; id += world) {
    const stdfs::path dir = stdfs::path(cfg.out) / data::zoo_entry_name(id);
    if (!data::zoo_entry_complete(dir.string())) {
      mine.push_back(id);
      continue;
    }
    // Other --classes, --way or --seed: refuse.
    const auto had = json::parse(fs::read_text(dir / data::kZooTaskFile)).at("classes").get<std::vector<int64_t>>();
    if (had != tasks[id])
      throw InputError((dir / data::kZooTaskFile).string() +
                       ": this finished LoRA was tuned on other classes than --classes/" +
                       "--way/--seed give now; use a new --out (or delete " + dir.string() + ")");
    ++*reused;
  }
  return mine;
}

}  // namespace

json zoo_settings(const ZooConfig& cfg) {
  json targets = json::array();
  for (auto m : cfg.lora.target_modules) targets.push_back(model::module_name(m));
  return {{"--data (content digest)", prov::file_digest(cfg.data)},
          {"--model (content digest)", io::checked_model_digest(cfg.model)},
          {"--way", cfg.n_way},
          {"--classes", cfg.cover_classes},
          {"--train-fraction", cfg.train_fraction},
          {"--epochs", cfg.epochs},
          {"--batch-size", cfg.batch_size},
          {"--lr", cfg.lr},
          {"--rank", cfg.lora.r},
          {"--alpha", cfg.lora.alpha},
          {"--targets", targets},
          {"--seed", cfg.seed}};
}

std::vector<data::ZooEntry> run_zoo(const ZooConfig& cfg, dist::Communicator& comm, const c10::Device& device) {
  cfg.validate();
  // Before any work, on every rank (each reaches the same verdict): whose directory is --out, and
  // do its finished LoRAs have today's settings?
  (void)prov::check_output_dir(cfg.out, "zoo");
  if (!stdfs::exists(cfg.data)) throw InputError("--data " + cfg.data + ": no such file");
  if (!stdfs::exists(cfg.model)) throw InputError("--model " + cfg.model + ": no such directory");
  const json settings = zoo_settings(cfg);
  const std::vector<std::string> finished = check_finished(cfg, settings);
  comm.barrier();
  if (comm.rank() == 0) {
    if (cfg.restart) {
      for (const auto& d : finished) stdfs::remove_all(d);
      stdfs::remove(stdfs::path(cfg.out) / data::kZooManifestFile);
      if (!finished.empty())
        LOG_INFO("zoo", "--restart: removed " << finished.size() << " LoRAs of an earlier run from " << cfg.out);
    }
    prov::claim_output_dir(cfg.out, "zoo", settings);
    (void)fs::remove_temporaries(cfg.out, "zoo");
  }
  comm.barrier();
  model::ClipVision vit = model::ClipVision::load(cfg.model);
  vit.to(device);
  const data::ImageSet set = data::ImageSet::load(cfg.data);
  model::check_image_shape(set.images().sizes(), vit.config(), cfg.data);
  if (set.num_classes() < cfg.n_way)
    throw InputError(cfg.data + ": " + std::to_string(set.num_classes()) + " classes, fewer than --way " +
                     std::to_string(cfg.n_way) + " of a LoRA's task");
  const auto tasks = zoo_tasks(cfg.seed, cfg.num_loras, cfg.n_way, set.num_classes(), cfg.cover_classes);
  for (const auto& task : tasks)  // every task's split, checked before any LoRA is trained
    for (int64_t c : task) (void)train_cut(set, c, cfg.train_fraction);
  int reused = 0;
  const std::vector<int> mine = my_loras(cfg, tasks, comm.rank(), comm.size(), &reused);
  std::uint64_t total_reused = 0;
  for (auto v : comm.all_gather_u64(static_cast<std::uint64_t>(reused))) total_reused += v;
  LOG_INFO("zoo", cfg.num_loras << " LoRAs of " << cfg.n_way << " classes from " << cfg.data << " ("
                                << set.num_classes() << " classes); rank 0 trains " << mine.size() << ", skips "
                                << reused << " finished; all ranks: " << (cfg.num_loras - total_reused) << " to train, "
                                << total_reused << " finished earlier");
  Progress progress("zoo", "LoRAs (rank 0)", static_cast<int64_t>(mine.size()), "LoRAs", 5.0);
  for (int id : mine) {
    const auto t0 = std::chrono::steady_clock::now();
    const data::ZooEntry e = train_one(cfg, settings, id, tasks[id], vit, set, device, comm.rank());
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    LOG_INFO_EVERY_RANK("zoo", data::zoo_entry_name(id) << ": held-out accuracy " << log::fixed(e.heldout_accuracy, 1)
                                                        << "%, last-epoch loss " << log::fixed(e.train_loss, 3) << ", "
                                                        << log::fixed(seconds, 1) << " s");
    progress.advance(1);
    env::fault_point(comm.rank(), "zoo");
  }
  progress.finish();
  comm.barrier();

  const json header = {{"model", cfg.model},
                       {"data", cfg.data},
                       {"num_loras", cfg.num_loras},
                       {"n_way", cfg.n_way},
                       {"cover_classes", cfg.cover_classes},
                       {"settings", settings}};
  const data::ZooManifest manifest = data::ZooManifest::build(cfg.out, header, cfg.num_loras);
  if (comm.rank() == 0) {
    manifest.write();
    const json& cov = manifest.content.at("coverage");
    LOG_INFO("zoo", cov.at("classes").get<int64_t>()
                        << " classes covered by " << cov.at("min_loras_per_class").get<int>() << " to "
                        << cov.at("max_loras_per_class").get<int>() << " LoRAs each");
    LOG_INFO("zoo", "mean held-out accuracy over "
                        << cfg.num_loras
                        << " LoRAs: " << log::fixed(manifest.content.at("mean_heldout_accuracy").get<double>(), 1)
                        << "%; wrote " << cfg.out << "/" << data::kZooManifestFile);
  }
  comm.barrier();
  return manifest.loras;
}

}  // namespace lorarec::train
