// ckpt — inspect, verify and convert model checkpoints without Python.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <memory>
#include <string>

#include "ckpt/error.hpp"
#include "commands.hpp"
#include "common.hpp"

#ifndef CKPT_VERSION_STRING
#define CKPT_VERSION_STRING "0.0.0"
#endif

namespace {
// "Usage: ckpt diff ..." rather than CLI11's "Usage: diff ...".
class Formatter : public CLI::Formatter {
 public:
  std::string make_usage(const CLI::App* app, std::string name) const override {
    if (app->get_parent() != nullptr) name = "ckpt " + app->get_name();
    return CLI::Formatter::make_usage(app, std::move(name));
  }
};
}  // namespace

int main(int argc, char** argv) {
  using namespace ckpt::cli;
  CLI::App app{"ckpt: read, verify and convert PyTorch checkpoints without Python", "ckpt"};
  app.set_version_flag("--version", std::string("ckpt ") + CKPT_VERSION_STRING);
  app.require_subcommand(1);
  app.formatter(std::make_shared<Formatter>());  // before the subcommands, which inherit it
  int exit_code = kExitOk;
  register_ls(app, &exit_code);
  register_verify(app, &exit_code);
  register_convert(app, &exit_code);
  register_info(app, &exit_code);
  register_scan(app, &exit_code);
  register_diff(app, &exit_code);
  register_stats(app, &exit_code);
  register_extract(app, &exit_code);
  register_manage(app, &exit_code);
  register_help(app, &exit_code);  // last: it lists the commands above
  if (argc > 1 && argv[1][0] != '-') {
    try {
      (void)app.get_subcommand(argv[1]);
    } catch (const CLI::OptionNotFound&) {
      print_error(std::string("unknown command '") + argv[1] + "' (see 'ckpt help')");
      return kExitError;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    print_error(e.what());
    std::fprintf(stderr, "Run 'ckpt --help' for usage.\n");
    return kExitError;
  } catch (const ckpt::Error& e) {
    print_error(e.what());
    return kExitError;
  } catch (const std::bad_alloc&) {
    print_error("out of memory");
    return kExitError;
  } catch (const std::exception& e) {
    print_error(e.what());
    return kExitError;
  }
  return exit_code;
}
