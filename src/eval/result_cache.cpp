#include "result_cache.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <sstream>
#include <vector>

#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"
#include "lorarecycle/util/log.h"
#include "lorarecycle/util/provenance.h"

namespace lorarec::eval {
namespace {
using json = nlohmann::json;
namespace stdfs = std::filesystem;
}  // namespace

namespace {
std::string fnv_hex(const std::string& s) { return prov::hex(dist::fnv1a64(s.data(), s.size())); }

}  // namespace

json row_json(const EvalRow& r) {
  return {{"dataset", r.dataset},
          {"method", r.method},
          {"way", r.way},
          {"shot", r.shot},
          {"query", r.query},
          {"episodes", r.acc.episodes},
          {"mean", r.acc.mean},
          {"ci95", r.acc.ci95},
          {"tasks_per_s", r.tasks_per_s},
          {"timed_tasks", r.timed_tasks},
          {"episode_acc", r.acc.values}};
}
namespace {
EvalRow row_from_json(const json& j) {
  EvalRow r;
  r.dataset = j.at("dataset"), r.method = j.at("method"), r.way = j.at("way"), r.shot = j.at("shot");
  r.query = j.at("query"), r.acc.mean = j.at("mean"), r.acc.ci95 = j.at("ci95"), r.acc.episodes = j.at("episodes");
  r.tasks_per_s = j.at("tasks_per_s"), r.timed_tasks = j.at("timed_tasks");
  r.acc.values = j.at("episode_acc").get<std::vector<double>>();
  return r;
}

}  // namespace

std::string fingerprint(const std::string& path) {
  std::error_code ec;
  const auto one = [&](const stdfs::path& p) {
    const auto t = stdfs::last_write_time(p, ec).time_since_epoch().count();
    return p.filename().string() + ":" + std::to_string(stdfs::file_size(p, ec)) + ":" + std::to_string(t);
  };
  if (!stdfs::is_directory(path)) return one(path);
  std::vector<std::string> parts;
  for (const auto& e : stdfs::directory_iterator(path, ec))
    if (e.is_regular_file()) parts.push_back(one(e.path()));
  std::sort(parts.begin(), parts.end());
  std::string out;
  for (const auto& p : parts) out += p + ";";
  return out;
}

ResultCache::ResultCache(const std::string& out, const json& settings, dist::Communicator& comm)
    : comm_(comm), dir_(out.empty() ? stdfs::path() : stdfs::path(out) / "partial") {
  if (dir_.empty()) return;
  const std::string want = settings.dump();
  if (comm_.rank() == 0) {
    const stdfs::path sp = dir_ / "settings.json";
    std::string have;
    if (stdfs::exists(sp)) have = fs::read_text(sp);
    if (have != want + "\n") {
      if (!have.empty()) LOG_WARN("eval", dir_.string() << ": settings changed, previous partial results discarded");
      std::error_code ec;
      stdfs::remove_all(dir_, ec);
      fs::make_dirs(dir_);
      fs::write_text(sp, want + "\n");
    } else {
      LOG_INFO("eval", "reusing finished results under " << dir_.string());
    }
  }
  comm_.barrier();
}
std::optional<EvalRow> ResultCache::row(const std::string& key, const std::string& source) {
  if (!enabled()) return std::nullopt;
  std::string text;
  if (comm_.rank() == 0) {
    const stdfs::path p = dir_ / (safe(key) + ".json");
    if (stdfs::exists(p)) text = fs::read_text(p);
  }
  text = comm_.broadcast_string(text, 0);
  if (text.empty()) return std::nullopt;
  try {
    json j = json::parse(text);
    if (j.at("source") != source) return std::nullopt;
    // The row's own digest: a row whose bytes changed since it was written is recomputed.
    const std::string digest = j.value("digest", std::string());
    j.erase("digest");
    if (digest != fnv_hex(j.dump())) {
      if (comm_.rank() == 0)
        LOG_WARN("eval", (dir_ / (safe(key) + ".json")).string()
                             << ": corrupt (its digest does not match), recomputed");
      return std::nullopt;
    }
    if (!j.contains("episode_acc")) {  // written before rows kept their episodes (paired comparisons)
      if (comm_.rank() == 0)
        LOG_INFO("eval", (dir_ / (safe(key) + ".json")).string()
                             << ": no per-episode accuracies (an older version's row), recomputed");
      return std::nullopt;
    }
    return row_from_json(j);
  } catch (const json::exception&) {
    if (comm_.rank() == 0)
      LOG_WARN("eval", (dir_ / (safe(key) + ".json")).string() << ": corrupt (not a valid result row), recomputed");
    return std::nullopt;
  }
}
void ResultCache::put_row(const std::string& key, const std::string& source, const EvalRow& r) {
  if (!enabled() || comm_.rank() != 0) return;
  json j = row_json(r);
  j["source"] = source;
  j["digest"] = fnv_hex(j.dump());
  fs::write_text(dir_ / (safe(key) + ".json"), j.dump() + "\n");
}

std::map<int64_t, std::pair<double, double>> ResultCache::episodes(const std::string& key, const std::string& source) {
  std::map<int64_t, std::pair<double, double>> done;
  if (!enabled()) return done;
  std::string text;
  if (comm_.rank() == 0) {
    const std::string prefix = safe(key) + ".r";
    for (const auto& e : stdfs::directory_iterator(dir_)) {
      const std::string name = e.path().filename().string();
      if (name.rfind(prefix, 0) == 0 && name.size() > 4 && name.substr(name.size() - 4) == ".txt")
        text += fs::read_text(e.path());
    }
  }
  text = comm_.broadcast_string(text, 0);
  const std::string h = fnv_hex(source);
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (in.eof()) break;  // no newline: cut short
    const auto cut = line.rfind(' ');
    if (cut == std::string::npos || fnv_hex(line.substr(0, cut)) != line.substr(cut + 1)) {
      if (!line.empty()) LOG_DEBUG("eval", "lora-ft episode line not reused (cut short or changed): " << line);
      continue;
    }
    std::istringstream ls(line.substr(0, cut));
    int64_t i;
    double acc, secs;
    std::string hs;
    if (ls >> i >> acc >> secs >> hs && hs == h) done[i] = {acc, secs};
  }
  return done;
}
void ResultCache::put_episode(const std::string& key, const std::string& source, int64_t i, double acc, double secs) {
  if (!enabled()) return;
  const stdfs::path p = dir_ / (safe(key) + ".r" + std::to_string(comm_.rank()) + ".txt");
  std::FILE* f = std::fopen(p.c_str(), "a");
  if (f == nullptr) fs::throw_write_error(p);
  char fields[128];
  std::snprintf(fields, sizeof fields, "%lld %.17g %.9g %s", static_cast<long long>(i), acc, secs,
                fnv_hex(source).c_str());
  std::fprintf(f, "%s %s\n", fields, fnv_hex(fields).c_str());
  const bool ok = std::fflush(f) == 0;
  if (std::fclose(f) != 0 || !ok) fs::throw_write_error(p);
}

std::string ResultCache::safe(std::string s) {
  for (char& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') c = '_';
  return s;
}

}  // namespace lorarec::eval
