// What an output was made from, and whose it is (docs/RELIABILITY.md, "Between runs").
//
// Ownership: every output directory holds a marker, `.lorarecycle.json`, naming the kind of output
// (zoo, pool, metatrain, ...) and the settings that fix its content. A command writes only into a
// directory that is new, empty, or marked as its own kind; anything else is refused before any
// work. Provenance: the settings are a flat JSON object keyed by the option that sets each value
// ("--epochs": 3), inputs included by content digest ("--data digest": "9f2c..."), so that a unit
// of work is reused only when its recorded settings equal today's, and a refusal can name the
// first difference.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace lorarec::prov {

namespace stdfs = std::filesystem;
using json = nlohmann::json;

inline constexpr const char* kMarker = ".lorarecycle.json";

// Content digest: 16 hex digits of a 64-bit hash of the bytes (not cryptographic: it detects
// changed or corrupted inputs, not adversaries). InputError naming the file if it cannot be read.
std::string file_digest(const stdfs::path& file);
// Digest of many byte ranges, chained (for in-memory content).
inline constexpr std::uint64_t kHashSeed = 0x6c6f726172656331ull;  // "lorarec1": every digest starts here
std::uint64_t hash_bytes(const void* data, std::size_t n, std::uint64_t h = kHashSeed);
std::string hex(std::uint64_t h);
// Now, UTC, as 2026-12-01T05:30:00Z (marker and pool file times).
std::string now_iso();
// Digest of a model: a file, or what the loaders read of a directory (config.json,
// preprocessor_config.json, *.safetensors), names and contents, in name order. Cached per process
// (path, size, mtime).
std::string model_digest(const stdfs::path& path);

// The kinds of output directories and the files each writes (for adopting directories written
// before markers existed: such a directory is accepted as `kind` when it holds the kind's
// signature file and nothing the kind does not write).
struct OutputKind {
  std::string name;                    // "zoo", "pool", ...
  std::string command;                 // the command that writes it, for messages
  std::vector<std::string> signature;  // any one of these marks an old output of this kind
  std::vector<std::string> patterns;   // ECMAScript regexes of the entry names it writes
};
const OutputKind& output_kind(const std::string& name);

// Before any work, on every rank: may `dir` receive output of `kind`? Returns the marker's JSON
// when the directory is already this kind's (with "settings" when it recorded them), an empty
// object for a new, empty or adopted directory. InputError (exit 2) naming the path otherwise: a
// file, another kind's marker, or foreign content.
json check_output_dir(const stdfs::path& dir, const std::string& kind);
// Rank 0, after check_output_dir: creates the directory and writes the marker (kind, settings,
// software, time) atomically.
void claim_output_dir(const stdfs::path& dir, const std::string& kind, const json& settings);
// The marker's text, for writers that replace a whole directory atomically (save_peft).
std::string marker_text(const std::string& kind, const json& settings);
// An output file (embed --out, predict --out): not a directory, and its directory exists and is
// writable. InputError naming `option` and the path otherwise.
void check_output_file(const stdfs::path& file, const std::string& option);

// The first key (in `now`'s order, then keys only in `recorded`) whose value differs, as
// "setting --epochs: 3 in <where>, 1 now"; empty when they agree. Keys absent on one side read
// "(none)".
std::string first_difference(const json& recorded, const json& now, const std::string& where);

}  // namespace lorarec::prov
