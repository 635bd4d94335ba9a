// libFuzzer target: the safetensors header/layout validator on arbitrary bytes. Any refusal must
// be an InputError; anything else (crash, sanitizer report, other exception) is a finding.
#include <cstddef>
#include <cstdint>

#include "lorarecycle/io/safetensors.h"
#include "lorarecycle/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto index = lorarec::io::parse_safetensors_index(data, size, "fuzz.safetensors");
    // A valid index must describe bytes inside the buffer.
    for (const auto& [name, t] : index.tensors)
      if (t.end > size - 8 - index.header_bytes || t.begin > t.end) __builtin_trap();
  } catch (const lorarec::InputError&) {
  }
  return 0;
}
