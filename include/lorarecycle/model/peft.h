// LoRA adapters on disk.
//
// PEFT adapter directory (DESIGN 2.3): adapter_model.safetensors with keys
//   base_model.model.vision_model.encoder.layers.{i}.self_attn.{q,v}_proj.lora_{A,B}.weight
// and the classifier head under base_model.model.classifier.{weight,bias} (listed in
// modules_to_save), plus adapter_config.json (peft_type "LORA", r, lora_alpha, target_modules,
// layers_to_transform, ...). Unknown config keys are ignored, missing ones take PEFT's defaults
// (r 8, lora_alpha 8; target modules inferred from the weights). Scaling = lora_alpha / r.
//
// Official LoRA-Recycle format: one safetensors file with w_a_000.. / w_b_000.. (index 2l = q_proj,
// 2l+1 = v_proj of layer l), head fc_512in_{N}out (no bias saved: zeros), scale 1 (alpha = r).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "lorarecycle/model/clip_config.h"
#include "lorarecycle/model/vit.h"

namespace lorarec::model {

inline constexpr const char* kPeftWeights = "adapter_model.safetensors";
inline constexpr const char* kPeftConfig = "adapter_config.json";

// Loads a PEFT adapter directory for a ViT of config `vit`. InputError naming the file for a
// malformed config, a rank that does not match the weights, unknown target modules, wrong shapes,
// NaN/Inf weights.
Lora load_peft(const std::string& dir, const ClipVisionConfig& vit);
// The same, after checking that the adapter was tuned on the VFM at `model_path`: an adapter that
// recorded its VFM's content digest (kBaseDigest in the weights' metadata; ours do) and names
// another is refused with an InputError naming both; adapters without one (PEFT's) load as before.
Lora load_peft(const std::string& dir, const ClipVisionConfig& vit, const std::string& model_path);
// That check alone (reads the weights' header only): InputError when the adapter in `dir` names
// another VFM than the one at `model_path`.
void check_base_model(const std::string& dir, const std::string& model_path);
// Metadata key of the VFM's content digest (util/provenance.h model_digest).
inline constexpr const char* kBaseDigest = "base_model_digest";
// The VFM digest the adapter in `dir` recorded (kBaseDigest), "" when it recorded none.
std::string recorded_base_digest(const std::string& dir);
// Content digest of the adapter's weights file (a pool file's lora_digest, an eval's meta input).
std::string adapter_digest(const std::string& dir);
// The adapters' digests chained in order (an eval's zoo input: every LoRA of the zoo).
std::string adapters_digest(const std::vector<std::string>& dirs);
// Writes the directory atomically (weights + config + `extra_files`, name -> text, e.g. our
// task.json): a reader sees all of it or nothing. `base_model` goes into base_model_name_or_path
// and, when it names an existing model, its content digest into the weights' metadata.
void save_peft(const std::string& dir, const Lora& lora, const std::string& base_model = "",
               const std::map<std::string, std::string>& extra_files = {});

// The official repo's single-file format.
Lora load_official(const std::string& file, const ClipVisionConfig& vit);
// Writes the official format (q and v adapters of every layer required; head without bias).
void save_official(const std::string& file, const Lora& lora);

}  // namespace lorarec::model
