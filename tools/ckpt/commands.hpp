// The subcommands of the ckpt tool. Each registers itself on the app and
// returns its exit code through the callback it installs.
#pragma once

#include <CLI/CLI.hpp>

namespace ckpt::cli {

// Sets *exit_code when the subcommand runs.
void register_ls(CLI::App& app, int* exit_code);
void register_verify(CLI::App& app, int* exit_code);
void register_convert(CLI::App& app, int* exit_code);
void register_info(CLI::App& app, int* exit_code);
void register_scan(CLI::App& app, int* exit_code);
void register_diff(CLI::App& app, int* exit_code);
void register_stats(CLI::App& app, int* exit_code);
void register_extract(CLI::App& app, int* exit_code);
void register_manage(CLI::App& app, int* exit_code);
// `help CMD` and `completion bash|zsh`; register last (they list the others).
void register_help(CLI::App& app, int* exit_code);

}  // namespace ckpt::cli
