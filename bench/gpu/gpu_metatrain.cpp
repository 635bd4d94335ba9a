// A CLI-free driver of run_metatrain for GPU machines without Boost.Program_options (built with
// -DLORAREC_BUILD_CLI=OFF -DLORAREC_BUILD_GPU_CHECK=ON; see bench/gpu_check.sh). Arguments are
// key=value pairs: model pool out val device comm mask steps query episodes precision (fp32|bf16|auto)
// sync (the CLI's --host-sync: auto|step|log) log (--log-every) tf32 data_threads (0 = auto) seed hash.
#include <cstdio>
#include <map>
#include <set>
#include <string>

#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/dist/runtime.h"
#include "lorarecycle/model/vit.h"
#include "lorarecycle/train/metatrain.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/log.h"

int main(int argc, char** argv) {
  std::unique_ptr<lorarec::dist::Runtime> rt;
  try {
    rt = std::make_unique<lorarec::dist::Runtime>(&argc, &argv);
    std::map<std::string, std::string> kv;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      const auto eq = a.find('=');
      if (eq == std::string::npos) throw lorarec::InputError("argument '" + a + "' is not key=value");
      kv[a.substr(0, eq)] = a.substr(eq + 1);
    }
    std::set<std::string> known;  // the keys read below
    auto get = [&](const char* k, const char* d) {
      known.insert(k);
      return kv.count(k) ? kv[k] : std::string(d);
    };
    lorarec::train::MetaTrainConfig c;
    c.model = get("model", "");
    c.pool = get("pool", "");
    c.out = get("out", "");
    c.val = get("val", "");
    c.mask_ratio = std::stod(get("mask", "0"));
    c.steps = std::stoll(get("steps", "20"));
    c.spec.q_query = std::stoi(get("query", "15"));
    c.episodes_per_step = std::stoi(get("episodes", "0"));
    c.seed = std::stoull(get("seed", "0"));
    c.hash_every = std::stoll(get("hash", "5"));
    c.host_sync = get("sync", "auto");
    c.log_every = std::stoll(get("log", "20"));
    c.val_episodes = 50;
    c.restart = true;
    auto comm = rt->make_communicator(get("comm", "auto"));
    const auto device = lorarec::model::select_device(get("device", "auto"), rt->local_rank());
    c.data_threads =
        lorarec::train::resolve_data_threads(std::stoi(get("data_threads", "0")), device, rt->cpus_for_rank());
    const auto precision = lorarec::model::resolve_precision(get("precision", "auto"), device);
    c.precision = precision.precision;
    lorarec::model::set_tf32(get("tf32", "1") == "1");  // as the CLI's --tf32 (default on)
    for (const auto& [k, v] : kv)
      if (!known.count(k))
        throw lorarec::InputError("unknown key '" + k + "' (see the comment at the top of gpu_metatrain.cpp)");
    LOG_INFO("gpu_check", "communicator " << comm->name() << ", device " << device.str() << ", precision "
                                          << lorarec::model::precision_name(c.precision) << " (" << precision.reason
                                          << "), tf32 " << (lorarec::model::tf32_enabled() ? "on" : "off")
                                          << ", data threads " << c.data_threads << " (" << rt->cpus_for_rank()
                                          << " CPUs for this rank)");
    lorarec::train::run_metatrain(c, *comm, device);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gpu_metatrain: error: %s\n", e.what());
    if (rt) rt->abort(1);
    return 1;
  }
  return 0;
}
