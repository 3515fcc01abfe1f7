// ckpt/error.hpp — the exceptions ckpt throws.
//
// Every failure is reported as a ckpt::Error (a std::runtime_error) or one of
// its subclasses. Errors about file contents carry where it went wrong: the
// file, the record inside an archive (a zip entry, a tar member, a pickle)
// and the byte offset inside that record. what() renders all of it as
//   model.pt: record 'archive/data.pkl': offset 0x1a3: <message>
// so that a user can act on it. Errors are values; they are thread-safe to
// copy and to read.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

namespace ckpt {

// Where in a file something went wrong. Every part is optional.
struct ErrorContext {
  std::string file;                // path (or "<memory>") of the outer file
  std::string record;              // archive entry / member / logical section
  std::optional<uint64_t> offset;  // byte offset inside `record` (or the file)

  ErrorContext() = default;
  ErrorContext(std::string file_, std::string record_ = {},
               std::optional<uint64_t> offset_ = std::nullopt)
      : file(std::move(file_)), record(std::move(record_)), offset(offset_) {}
};

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message, ErrorContext context = {});

  // The message without the context prefix.
  const std::string& message() const noexcept { return message_; }
  const ErrorContext& context() const noexcept { return context_; }

  // Returns a copy of this error with missing context filled in (used when an
  // error thrown deep inside a parser travels up through the layer that knows
  // the file name). Existing context is kept.
  void add_context(const ErrorContext& outer);

 private:
  void render();
  std::string message_;
  ErrorContext context_;
  std::string rendered_;

 public:
  const char* what() const noexcept override { return rendered_.c_str(); }
};

// The operating system refused: open, read, write, fsync, rename... `code`
// is the errno value.
class IoError : public Error {
 public:
  IoError(const std::string& message, int code, ErrorContext context = {})
      : Error(message, std::move(context)), code_(code) {}
  int code() const noexcept { return code_; }

 private:
  int code_;
};

// The bytes are damaged or not what the format says: truncation, bad CRC,
// offsets out of bounds, malformed pickle.
class FormatError : public Error {
 public:
  using Error::Error;
};

// A size or count from the file passes a configured limit (memo entries,
// nesting depth, container length, allocation size).
class LimitError : public FormatError {
 public:
  using FormatError::FormatError;
};

// The file is recognised but uses something ckpt does not implement (e.g. a
// nested tensor, a lite-interpreter bytecode archive).
class UnsupportedError : public Error {
 public:
  using Error::Error;
};

// Loading would require executing or importing something that is not on the
// weights-only allow-list (e.g. GLOBAL 'os.system').
class UnsafeError : public Error {
 public:
  using Error::Error;
};

// The content is valid but not what the caller asked for (e.g. a state dict
// was requested and the file holds a list), or a key is missing.
class TypeError : public Error {
 public:
  using Error::Error;
};

}  // namespace ckpt
