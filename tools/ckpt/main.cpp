// ckpt — inspect, verify and convert model checkpoints without Python.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>

#include "ckpt/error.hpp"
#include "commands.hpp"
#include "common.hpp"

#ifndef CKPT_VERSION_STRING
#define CKPT_VERSION_STRING "0.0.0"
#endif

int main(int argc, char** argv) {
  using namespace ckpt::cli;
  CLI::App app{"ckpt: read, verify and convert PyTorch checkpoints without Python"};
  app.set_version_flag("--version", std::string("ckpt ") + CKPT_VERSION_STRING);
  app.require_subcommand(1);
  int exit_code = kExitOk;
  register_ls(app, &exit_code);
  register_verify(app, &exit_code);
  register_convert(app, &exit_code);
  register_info(app, &exit_code);
  register_diff(app, &exit_code);
  register_stats(app, &exit_code);
  register_extract(app, &exit_code);
  register_manage(app, &exit_code);
  register_help(app, &exit_code);  // last: it lists the commands above
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
