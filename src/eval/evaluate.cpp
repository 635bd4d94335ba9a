#include "lorarecycle/eval/evaluate.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "lorarecycle/data/image_set.h"
#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/io/peft.h"
#include "lorarecycle/train/optim.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"
#include "lorarecycle/util/log.h"
#include "lorarecycle/util/progress.h"

namespace lorarec::eval {
namespace {
using json = nlohmann::json;
namespace stdfs = std::filesystem;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::pair<std::string, std::string> split_named(const std::string& spec, const std::string& default_name) {
  const auto eq = spec.find('=');
  if (eq != std::string::npos && eq > 0) return {spec.substr(0, eq), spec.substr(eq + 1)};
  return {default_name, spec};
}

double slowest(double seconds, dist::Communicator& comm) {
  double m = 0;
  for (double s : comm.all_gather_f64(seconds)) m = std::max(m, s);
  return m;
}

struct Method {
  std::string name;
  std::string kind;  // nn | lora-avg | lora-ft | meta
  std::unique_ptr<model::Lora> lora;
};

}  // namespace

void EvalConfig::validate() const {
  if (model.empty()) throw InputError("eval: --model is required");
  if (data.empty()) throw InputError("eval: at least one --data set is required");
  if (way < 2 || query < 1) throw InputError("eval: need --way >= 2 and --query >= 1");
  if (shots.empty()) throw InputError("eval: --shots is empty");
  for (int s : shots)
    if (s < 1) throw InputError("eval: --shots must be positive");
  if (episodes < 1 || ft_episodes < 0 || timing_episodes < 0)
    throw InputError("eval: need --episodes >= 1, --ft-episodes >= 0, --timing-episodes >= 0");
  if (ft_steps < 0 || !(ft_lr > 0)) throw InputError("eval: need --ft-steps >= 0 and --ft-lr > 0");
  for (const auto& m : methods)
    if (m != "nn" && m != "lora-avg" && m != "lora-ft" && m != "meta")
      throw InputError("eval: unknown method '" + m + "' (nn, lora-avg, lora-ft, meta)");
  const auto wants = [&](const char* m) { return methods.empty() || std::count(methods.begin(), methods.end(), m) > 0; };
  if (!methods.empty() && wants("lora-avg") && zoo.empty()) throw InputError("eval: method lora-avg needs --zoo");
  if (!methods.empty() && wants("meta") && meta.empty()) throw InputError("eval: method meta needs --meta");
}

model::Lora average_loras(const std::vector<model::Lora>& loras, const model::ClipVisionConfig& vit) {
  if (loras.empty()) throw InputError("lora-avg: no LoRAs to average");
  const model::LoraConfig& c0 = loras[0].config();
  const int K = static_cast<int>(loras.size());
  for (const auto& l : loras) {
    if (l.config().r != c0.r || l.config().scale() != c0.scale() || l.adapters().size() != loras[0].adapters().size())
      throw InputError("lora-avg: the zoo's LoRAs differ in rank, scale or targets; they cannot be averaged");
    for (const auto& [key, _] : loras[0].adapters())
      if (!l.adapters().count(key)) throw InputError("lora-avg: the zoo's LoRAs differ in their targets");
  }
  model::LoraConfig cfg = c0;
  cfg.r = c0.r * K;
  cfg.alpha = c0.scale() * cfg.r;  // same scale
  model::Lora avg = model::Lora::empty(vit, cfg);
  for (const auto& [key, _] : loras[0].adapters()) {
    std::vector<at::Tensor> as, bs;
    for (const auto& l : loras) {
      const auto& ad = l.adapters().at(key);
      as.push_back(ad.a.to(at::kCPU, at::kFloat));
      bs.push_back(ad.b.to(at::kCPU, at::kFloat) / double(K));
    }
    avg.set(key.first, static_cast<model::Module>(key.second), model::Adapter{at::cat(as, 0), at::cat(bs, 1)});
  }
  return avg;
}

double finetune_episode(const model::ClipVision& vit, const at::Tensor& support_px, const at::Tensor& query_px,
                        int way, int shot, const model::LoraConfig& lora_cfg, int steps, double lr, std::uint64_t seed) {
  model::Lora ft(vit.config(), lora_cfg, seed);
  ft.to(vit.device());
  const at::Tensor y = data::episode_labels(way, shot).to(vit.device());
  {
    // Head = the prototype classifier: logits 2 f.p - |p|^2 (= -|f - p|^2 up to a per-query constant).
    at::NoGradGuard ng;
    const at::Tensor f = vit.forward(support_px).feature;
    const at::Tensor p = f.view({way, shot, f.size(-1)}).mean(1);
    ft.set_head((2.0 * p).contiguous(), (-p.pow(2).sum(-1)).contiguous());
  }
  ft.set_requires_grad(true, true);
  train::AdamW opt(ft.parameters(true), train::AdamWConfig{});
  for (int s = 0; s < steps; ++s) {
    const at::Tensor loss = at::cross_entropy_loss(ft.head(vit.forward(support_px, {}, &ft).feature), y);
    opt.zero_grad();
    loss.backward();
    opt.step(lr);
  }
  at::NoGradGuard ng;
  const int q = static_cast<int>(query_px.size(0) / way);
  const at::Tensor pred = ft.head(vit.forward(query_px, {}, &ft).feature).argmax(-1);
  return 100.0 * pred.eq(data::episode_labels(way, q).to(pred.device())).to(at::kDouble).mean().item<double>();
}

std::string format_table(const std::vector<EvalRow>& rows) {
  std::ostringstream os;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-14s %-16s %-10s %-18s %10s\n", "dataset", "method", "setting", "accuracy % (95% CI)",
                "tasks/s");
  os << buf;
  for (const auto& r : rows) {
    char setting[32], acc[48];
    std::snprintf(setting, sizeof setting, "%dw%ds", r.way, r.shot);
    std::snprintf(acc, sizeof acc, "%6.2f +- %4.2f", r.acc.mean, r.acc.ci95);
    std::snprintf(buf, sizeof buf, "%-14s %-16s %-10s %-18s %10.2f\n", r.dataset.c_str(), r.method.c_str(), setting, acc,
                  r.tasks_per_s);
    os << buf;
  }
  return os.str();
}

std::vector<EvalRow> run_eval(const EvalConfig& cfg, dist::Communicator& comm, const c10::Device& device) {
  cfg.validate();
  model::ClipVision vit = model::ClipVision::load(cfg.model);
  vit.to(device);
  const auto wants = [&](const char* m) {
    return cfg.methods.empty() || std::count(cfg.methods.begin(), cfg.methods.end(), m) > 0;
  };
  std::vector<Method> methods;
  if (wants("nn")) methods.push_back({"nn", "nn", nullptr});
  if (wants("lora-avg") && !cfg.zoo.empty()) {
    const stdfs::path manifest = stdfs::path(cfg.zoo) / "manifest.json";
    json m;
    try {
      m = json::parse(fs::read_text(manifest));
    } catch (const json::exception& e) {
      throw InputError(manifest.string() + ": not valid JSON: " + e.what());
    }
    std::vector<model::Lora> loras;
    for (const auto& e : m.at("loras")) loras.push_back(io::load_peft((stdfs::path(cfg.zoo) / e.at("dir").get<std::string>()).string(), vit.config()));
    auto avg = std::make_unique<model::Lora>(average_loras(loras, vit.config()));
    avg->to(device);
    LOG_INFO("eval", "lora-avg: the mean of " << loras.size() << " zoo LoRAs of " << cfg.zoo);
    methods.push_back({"lora-avg", "lora-avg", std::move(avg)});
  }
  if (wants("meta"))
    for (const auto& spec : cfg.meta) {
      auto [name, dir] = split_named(spec, cfg.meta.size() == 1 ? "meta" : stdfs::path(spec).filename().string());
      auto l = std::make_unique<model::Lora>(io::load_peft(dir, vit.config()));
      l->to(device);
      methods.push_back({name, "meta", std::move(l)});
    }
  const bool ft = wants("lora-ft");
  if (methods.empty() && !ft) throw InputError("eval: no method to run");

  std::vector<EvalRow> rows;
  for (const auto& dspec : cfg.data) {
    auto [dname, path] = split_named(dspec, stdfs::path(dspec).stem().string());
    const data::ImageSet set = data::ImageSet::load(path);
    LOG_INFO("eval", dname << " (" << path << "): " << set.num_classes() << " classes, " << set.size() << " images");
    for (const auto& m : methods) {
      const at::Tensor feats = embed_all(vit, m.lora.get(), set, comm, cfg.batch_size);
      for (int shot : cfg.shots) {
        const data::EpisodeSpec spec{cfg.way, shot, cfg.query};
        EvalRow r;
        r.dataset = dname, r.method = m.name, r.way = cfg.way, r.shot = shot, r.query = cfg.query;
        r.acc = evaluate_prototypes(feats, set, spec, cfg.episodes, cfg.seed, comm);
        // Throughput as a user sees it: each task's own images through the network, then prototypes.
        const int T = std::min(cfg.episodes, cfg.timing_episodes);
        const data::EpisodeSampler sampler(set, spec);
        comm.barrier();
        const auto t0 = Clock::now();
        {
          at::NoGradGuard ng;
          for (int i = comm.rank(); i < T; i += comm.size()) {
            auto rng = data::make_rng(cfg.seed, 0, static_cast<std::uint64_t>(i));
            const data::Episode e = sampler.sample(rng);
            std::vector<int64_t> all = e.support;
            all.insert(all.end(), e.query.begin(), e.query.end());
            const at::Tensor f = vit.forward(vit.preprocess(set.gather(all)), {}, m.lora.get()).feature;
            const int ns = spec.n_way * spec.k_shot;
            (void)prototype_logits(f.narrow(0, 0, ns), f.narrow(0, ns, f.size(0) - ns), spec.n_way, spec.k_shot)
                .argmax(-1)
                .cpu();
          }
        }
        const double secs = slowest(since(t0), comm);
        r.timed_tasks = T;
        r.tasks_per_s = secs > 0 ? T / secs : 0;
        LOG_INFO("eval", dname << " " << m.name << " " << cfg.way << "w" << shot << "s: " << r.acc.mean << " +- "
                               << r.acc.ci95 << " % over " << r.acc.episodes << " episodes; " << r.tasks_per_s
                               << " tasks/s");
        rows.push_back(r);
      }
    }
    if (ft) {
      for (int shot : cfg.shots) {
        const data::EpisodeSpec spec{cfg.way, shot, cfg.query};
        const data::EpisodeSampler sampler(set, spec);
        const int n = cfg.ft_episodes > 0 ? std::min(cfg.ft_episodes, cfg.episodes) : cfg.episodes;
        Progress progress("eval", dname + " lora-ft " + std::to_string(shot) + "-shot", (n + comm.size() - 1) / comm.size(),
                          "tasks", 10.0);
        comm.barrier();
        const auto t0 = Clock::now();
        std::vector<double> mine;
        for (int i = comm.rank(); i < n; i += comm.size()) {
          auto rng = data::make_rng(cfg.seed, 0, static_cast<std::uint64_t>(i));
          const data::Episode e = sampler.sample(rng);
          mine.push_back(finetune_episode(vit, vit.preprocess(set.gather(e.support)), vit.preprocess(set.gather(e.query)),
                                          cfg.way, shot, cfg.ft_lora, cfg.ft_steps, cfg.ft_lr,
                                          cfg.seed * 1000003 + static_cast<std::uint64_t>(i)));
          progress.advance(1, comm.size());
        }
        const double secs = slowest(since(t0), comm);
        progress.finish();
        EvalRow r;
        r.dataset = dname, r.method = "lora-ft", r.way = cfg.way, r.shot = shot, r.query = cfg.query;
        r.acc = summarize(all_gather_values(mine, n, comm), secs);
        r.timed_tasks = n;
        r.tasks_per_s = secs > 0 ? n / secs : 0;
        LOG_INFO("eval", dname << " lora-ft " << cfg.way << "w" << shot << "s: " << r.acc.mean << " +- " << r.acc.ci95
                               << " % over " << n << " episodes (" << cfg.ft_steps << " steps, lr " << cfg.ft_lr
                               << "); " << r.tasks_per_s << " tasks/s");
        rows.push_back(r);
      }
    }
  }

  if (comm.rank() == 0) {
    std::fputs(format_table(rows).c_str(), stdout);
    std::fflush(stdout);
    if (!cfg.out.empty()) {
      stdfs::create_directories(cfg.out);
      std::string csv = "dataset,method,way,shot,query,episodes,mean,ci95,tasks_per_s,timed_tasks\n";
      json j = {{"model", cfg.model}, {"seed", cfg.seed}, {"world_size", comm.size()}, {"ft_steps", cfg.ft_steps},
                {"ft_lr", cfg.ft_lr}, {"rows", json::array()}};
      for (const auto& r : rows) {
        char line[512];
        std::snprintf(line, sizeof line, "%s,%s,%d,%d,%d,%lld,%.4f,%.4f,%.4f,%lld\n", r.dataset.c_str(), r.method.c_str(),
                      r.way, r.shot, r.query, static_cast<long long>(r.acc.episodes), r.acc.mean, r.acc.ci95,
                      r.tasks_per_s, static_cast<long long>(r.timed_tasks));
        csv += line;
        j["rows"].push_back({{"dataset", r.dataset}, {"method", r.method}, {"way", r.way}, {"shot", r.shot},
                             {"query", r.query}, {"episodes", r.acc.episodes}, {"mean", r.acc.mean},
                             {"ci95", r.acc.ci95}, {"tasks_per_s", r.tasks_per_s}, {"timed_tasks", r.timed_tasks}});
      }
      fs::write_text(stdfs::path(cfg.out) / "results.csv", csv);
      fs::write_text(stdfs::path(cfg.out) / "results.json", j.dump(2) + "\n");
      LOG_INFO("eval", "wrote " << cfg.out << "/results.csv and results.json");
    }
  }
  comm.barrier();
  return rows;
}

}  // namespace lorarec::eval
