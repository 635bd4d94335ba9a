// eval's result cache (resumable evaluation) and the file identities it keys on. Internal to eval.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>

#include "lorarecycle/eval/evaluate.h"

namespace lorarec::dist {
class Communicator;
}

namespace lorarec::eval {

// A file's or directory's identity for the result cache: sizes and modification times.
std::string fingerprint(const std::string& path);

// Resumable evaluation. With --out, every finished result row and every lora-ft episode is
// recorded under OUT/partial/, keyed by the settings and by the identity (size, mtime) of the
// files it depends on; a re-run with the same settings reuses them, so a killed eval loses at most
// the rows (prototype methods) or episodes (per-task methods) in flight. Rank 0 reads, every rank
// gets the same answer.
class ResultCache {
 public:
  ResultCache(const std::string& out, const nlohmann::json& settings, dist::Communicator& comm);
  bool enabled() const { return !dir_.empty(); }
  // The cached row for key whose dependencies have identity `source`, if any.
  std::optional<EvalRow> row(const std::string& key, const std::string& source);
  void put_row(const std::string& key, const std::string& source, const EvalRow& r);
  // Per-task episodes already finished for key: episode -> (accuracy, seconds). Lines are
  // "EPISODE ACCURACY SECONDS SOURCE-HASH LINE-HASH" (LINE-HASH: of the four fields before it);
  // a line cut short by a kill, or whose bytes changed since, is ignored (the episode is re-run).
  std::map<int64_t, std::pair<double, double>> episodes(const std::string& key, const std::string& source);
  void put_episode(const std::string& key, const std::string& source, int64_t i, double acc, double secs);

 private:
  static std::string safe(std::string s);
  dist::Communicator& comm_;
  std::filesystem::path dir_;
};

// One result row as results.json and the result cache store it.
nlohmann::json row_json(const EvalRow& r);

}  // namespace lorarec::eval
