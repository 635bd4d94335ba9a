// Private to the CLI: one entry point per subcommand (one file each).
#pragma once

namespace lorarec::dist {
class Runtime;
}

namespace lorarec::cli {

// argv[0] is the command name. Returns the exit status; throws on error.
int run_embed(int argc, char** argv, dist::Runtime& runtime);
int run_pretrain(int argc, char** argv, dist::Runtime& runtime);
int run_zoo(int argc, char** argv, dist::Runtime& runtime);
int run_invert(int argc, char** argv, dist::Runtime& runtime);
int run_metatrain(int argc, char** argv, dist::Runtime& runtime);
int run_eval(int argc, char** argv, dist::Runtime& runtime);
int run_predict(int argc, char** argv, dist::Runtime& runtime);
int run_verify(int argc, char** argv, dist::Runtime& runtime);

}  // namespace lorarec::cli
