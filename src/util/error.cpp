#include "lorarecycle/util/error.h"

namespace lorarec {

void check_input(bool cond, const std::string& message) {
  if (!cond) throw InputError(message);
}

}  // namespace lorarec
