// `lorarecycle verify RUN_DIR`: walks a run (the output directories under RUN_DIR, each known
// by its .lorarecycle.json marker) and reports, for each, completeness (every unit its index
// names is there and finished), integrity (every safetensors file's content digest, every pool
// file's data digest) and the provenance chain (each output's recorded inputs, by content
// digest, found in the run or at their recorded paths, and unchanged since). docs/RELIABILITY.md.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace lorarec::verify {

// One line of the report: an output (or one file of it) and what was found.
struct Finding {
  bool problem = false;  // false: checked and fine, or a note
  std::string kind;      // "zoo", "pool", ... ("" for the run as a whole)
  std::string path;      // the output directory or file
  std::string text;
};

struct Report {
  int outputs = 0;   // output directories found
  int problems = 0;  // findings with problem = true
  std::vector<Finding> findings;
};

// Checks every output directory found under `run_dir` (itself included), in pipeline order, so
// that each link of the chain names the output it came from. Never throws for what it finds
// (a corrupt or missing file is a problem in the report); InputError when run_dir is not a
// directory.
Report verify_run(const std::filesystem::path& run_dir);

}  // namespace lorarec::verify
