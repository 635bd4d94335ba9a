#include "lorarecycle/util/provenance.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <map>
#include <mutex>
#include <regex>
#include <tuple>

#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"

namespace lorarec::prov {

namespace {

constexpr std::uint64_t kMul = 0x9E3779B97F4A7C15ull;

inline std::uint64_t mix(std::uint64_t h, std::uint64_t w) {
  h ^= w;
  h *= kMul;
  return h ^ (h >> 29);
}

std::string value_text(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

}  // namespace

std::uint64_t hash_bytes(const void* data, std::size_t n, std::uint64_t h) {
  const auto* p = static_cast<const unsigned char*>(data);
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = mix(h, w);
  }
  std::uint64_t tail = 0;
  if (n > i) std::memcpy(&tail, p + i, n - i);  // (never with a null pointer: UBSan)
  return mix(mix(h, tail), static_cast<std::uint64_t>(n));
}

std::string now_iso() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string hex(std::uint64_t h) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::string file_digest(const stdfs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw InputError("cannot open '" + file.string() + "': " + std::strerror(errno));
  std::vector<char> buf(std::size_t{1} << 20);
  std::uint64_t h = kHashSeed;
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto got = static_cast<std::size_t>(in.gcount());
    if (got > 0) h = hash_bytes(buf.data(), got, h);
  }
  if (in.bad()) throw InputError("cannot read '" + file.string() + "'");
  return hex(h);
}

std::string model_digest(const stdfs::path& path) {
  static std::mutex mu;
  static std::map<std::tuple<std::string, std::uintmax_t, std::int64_t>, std::string> cache;
  std::error_code ec;
  if (!stdfs::exists(path, ec)) throw InputError("'" + path.string() + "': no such file or directory");
  std::vector<stdfs::path> files;
  if (stdfs::is_directory(path)) {
    // What the loaders read: the configs and the safetensors weights (other formats are converted
    // first, data_tools/convert_weights.py, and may be deleted after).
    static const std::regex kWeights(R"((config|preprocessor_config)\.json|.*\.safetensors)");
    for (const auto& e : stdfs::directory_iterator(path))
      if (e.is_regular_file() && std::regex_match(e.path().filename().string(), kWeights)) files.push_back(e.path());
    std::sort(files.begin(), files.end());
  } else {
    files.push_back(path);
  }
  std::uint64_t h = kHashSeed;
  for (const auto& f : files) {
    const std::string name = f.filename().string();
    const auto key = std::make_tuple(stdfs::weakly_canonical(f).string(), stdfs::file_size(f),
                                     static_cast<std::int64_t>(stdfs::last_write_time(f).time_since_epoch().count()));
    std::string d;
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = cache.find(key);
      if (it != cache.end()) d = it->second;
    }
    if (d.empty()) {
      d = file_digest(f);
      std::lock_guard<std::mutex> lock(mu);
      cache[key] = d;
    }
    h = hash_bytes(name.data(), name.size(), h);
    h = hash_bytes(d.data(), d.size(), h);
  }
  return hex(h);
}

const OutputKind& output_kind(const std::string& name) {
  // Temporaries of atomic writes (".<name>.tmp.<pid>") and the marker belong to every kind.
  static const std::vector<OutputKind> kinds = {
      {"pretrain",
       "pretrain",
       {"pretrain_report.json"},
       {"config\\.json", "preprocessor_config\\.json", "model\\.safetensors", "pretrain_report\\.json"}},
      {"pretrain-work",
       "pretrain",
       {"checkpoint.safetensors", "metrics.jsonl"},
       {"checkpoint\\.safetensors", "metrics\\.jsonl", ".*\\.json"}},
      {"zoo", "zoo", {"manifest.json", "lora_000"}, {"manifest\\.json", "lora_\\d+"}},
      {"pool",
       "invert",
       {"index.json", "lora_000.h5"},
       {"index\\.json", "summary\\.json", "lora_\\d+\\.(h5|png)", "\\.progress"}},
      {"metatrain",
       "metatrain",
       {"metatrain.json"},
       {"adapter_model\\.safetensors", "adapter_config\\.json", "metatrain\\.json"}},
      {"metatrain-work",
       "metatrain",
       {"checkpoint.safetensors", "metrics.jsonl"},
       {"checkpoint\\.safetensors", "metrics\\.jsonl"}},
      {"eval", "eval", {"results.json", "partial"}, {"results\\.(csv|json)", "partial", "report.*"}},
  };
  for (const auto& k : kinds)
    if (k.name == name) return k;
  throw RuntimeError("unknown output kind '" + name + "'");
}

json check_output_dir(const stdfs::path& dir, const std::string& kind) {
  const OutputKind& k = output_kind(kind);
  std::error_code ec;
  if (!stdfs::exists(dir, ec)) {
    const stdfs::path parent = stdfs::absolute(dir).parent_path();
    stdfs::path p = parent;  // the nearest existing ancestor must be a writable directory
    while (!p.empty() && !stdfs::exists(p, ec) && p != p.parent_path()) p = p.parent_path();
    if (stdfs::exists(p, ec) && !stdfs::is_directory(p))
      throw InputError(dir.string() + ": cannot be created: " + p.string() + " is a file");
    if (stdfs::exists(p, ec) && ::access(p.c_str(), W_OK) != 0)
      throw InputError(dir.string() + ": cannot be created: " + p.string() + " is not writable");
    return json::object();
  }
  if (!stdfs::is_directory(dir))
    throw InputError(dir.string() + ": is a file, not a directory; " + k.command + " writes a " + kind +
                     " directory there: choose another --out");
  if (::access(dir.c_str(), W_OK) != 0) throw InputError(dir.string() + ": directory is not writable");
  const stdfs::path marker = dir / kMarker;
  if (stdfs::exists(marker)) {
    json m;
    try {
      m = json::parse(fs::read_text(marker));
    } catch (const json::exception& e) {
      throw InputError(marker.string() + ": unreadable marker (" + e.what() +
                       "); remove the directory or choose another --out");
    }
    const std::string had = m.value("kind", std::string("?"));
    if (had != kind)
      throw InputError(dir.string() + ": holds the output of lorarecycle " + m.value("command", had) + " (a " + had +
                       " directory), not of " + k.command + "; choose another --out");
    return m;
  }
  // No marker: new if empty; adopted if it is an output of this kind from before markers.
  std::vector<std::string> foreign;
  bool signed_by_kind = false;
  std::vector<std::regex> patterns;  // compiled once, not per entry
  for (const auto& pat : k.patterns) patterns.emplace_back(pat);
  for (const auto& e : stdfs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.size() > 1 && name[0] == '.' && name.find(".tmp.") != std::string::npos) continue;
    if (std::find(k.signature.begin(), k.signature.end(), name) != k.signature.end()) signed_by_kind = true;
    bool ours = false;
    for (const auto& re : patterns) ours = ours || std::regex_match(name, re);
    if (!ours) foreign.push_back(name);
  }
  std::sort(foreign.begin(), foreign.end());
  if (!foreign.empty())
    throw InputError(dir.string() + ": not empty and not a " + kind + " directory of lorarecycle " + k.command +
                     " (it holds " + foreign.front() +
                     (foreign.size() > 1 ? " and " + std::to_string(foreign.size() - 1) + " more" : std::string()) +
                     "); choose a new or empty --out");
  if (!signed_by_kind && stdfs::directory_iterator(dir) != stdfs::directory_iterator())
    throw InputError(dir.string() + ": not empty and not a " + kind + " directory of lorarecycle " + k.command +
                     "; choose a new or empty --out");
  return json::object();
}

std::string marker_text(const std::string& kind, const json& settings) {
  json m = {{"kind", kind}, {"command", output_kind(kind).command}, {"time", now_iso()}};
#ifdef LORAREC_VERSION
  m["software"] = std::string("lorarecycle ") + LORAREC_VERSION;
#endif
  if (!settings.is_null()) m["settings"] = settings;
  return m.dump(2) + "\n";
}

void claim_output_dir(const stdfs::path& dir, const std::string& kind, const json& settings) {
  fs::make_dirs(dir);
  const stdfs::path marker = dir / kMarker;
  if (stdfs::exists(marker)) {  // unchanged when it already says the same
    try {
      const json m = json::parse(fs::read_text(marker));
      if (m.value("kind", std::string()) == kind && m.value("settings", json()) == settings) return;
    } catch (const json::exception&) {
    }
  }
  fs::write_text(marker, marker_text(kind, settings));
}

void check_output_file(const stdfs::path& file, const std::string& option) {
  std::error_code ec;
  if (stdfs::is_directory(file, ec))
    throw InputError(option + " " + file.string() + ": is a directory; give a file name");
  const stdfs::path p = stdfs::absolute(file).parent_path();
  if (!stdfs::exists(p, ec))
    throw InputError(option + " " + file.string() + ": directory " + p.string() + " does not exist");
  if (!stdfs::is_directory(p))
    throw InputError(option + " " + file.string() + ": " + p.string() + " is a file, not a directory");
  if (::access(p.c_str(), W_OK) != 0)
    throw InputError(option + " " + file.string() + ": " + p.string() + " is not writable");
  if (stdfs::exists(file, ec) && ::access(file.c_str(), W_OK) != 0)
    throw InputError(option + " " + file.string() + ": exists and is not writable");
}

std::string first_difference(const json& recorded, const json& now, const std::string& where) {
  auto text = [](const json& obj, const std::string& key) {
    return obj.is_object() && obj.contains(key) ? value_text(obj.at(key)) : std::string("(none)");
  };
  std::vector<std::string> keys;
  if (now.is_object())
    for (const auto& [key, _] : now.items()) keys.push_back(key);
  if (recorded.is_object())
    for (const auto& [key, _] : recorded.items())
      if (!now.is_object() || !now.contains(key)) keys.push_back(key);
  for (const auto& key : keys) {
    const bool same = recorded.is_object() && now.is_object() && recorded.contains(key) && now.contains(key) &&
                      recorded.at(key) == now.at(key);
    if (!same) return "setting " + key + ": " + text(recorded, key) + " in " + where + ", " + text(now, key) + " now";
  }
  return "";
}

}  // namespace lorarec::prov
