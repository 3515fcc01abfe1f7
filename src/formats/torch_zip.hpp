// Private: reading PyTorch's zip checkpoint format (torch.save, 1.6+).
//
// A torch zip archive holds `<prefix>/data.pkl` (the object pickle, protocol
// 2 by default), `<prefix>/data/<key>` (one record per storage, raw bytes in
// the byte order named by `<prefix>/byteorder`, little-endian when absent)
// and `<prefix>/version`. The prefix is the folder of the first entry, never
// assumed to be "archive". See docs/formats/torch_zip.md.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ckpt/options.hpp"
#include "ckpt/value.hpp"
#include "container/zip.hpp"
#include "pickle/unpickler.hpp"

namespace ckpt::formats {

struct TorchZipInfo {
  std::string prefix;          // archive folder ("archive", "model", ...)
  uint64_t version = 0;        // the `version` record (file format version)
  std::string byteorder;       // "little" or "big"
  bool torchscript = false;    // has constants.pkl (a TorchScript archive)
};

// Archive-level facts; throws FormatError when the archive has no folder.
TorchZipInfo inspect_torch_zip(const zip::ZipReader& zip);

// Unpickles `<prefix>/<pickle_record>` with storages resolved from
// `<prefix>/<storage_dir>/<key>`; `accept_inert` is passed to the unpickler.
Value unpickle_record(const zip::ZipReader& zip, const TorchZipInfo& info, const std::string& pickle_record,
                      const std::string& storage_dir, const LoadOptions& options, pickle::Observer* observer,
                      std::function<bool(std::string_view, std::string_view)> accept_inert = {},
                      const zip::Entry* pickle_entry = nullptr, std::vector<const zip::Entry*>* storages_out = nullptr);
// `pickle_entry` overrides where the pickle is read from (the scanner reads
// every case variant of data.pkl); `storages_out` receives each storage
// record the pickle resolved (tensor bytes, never pickles).

// Loads the object tree. `observer` (may be null) sees every pickle event.
Value load_torch_zip(const zip::ZipReader& zip, const LoadOptions& options,
                     pickle::Observer* observer = nullptr);

// Structure, bounds and CRC of every record; that data.pkl parses (in
// inspection mode) and that every storage it references exists with the
// right size. Throws FormatError naming the damaged record.
void verify_torch_zip(const zip::ZipReader& zip);

// TorchScript's typed-container wrappers in pickles (torch.jit._pickle.
// restore_type_tag(value, "List[int]"), build_intlist(list), ...): identity
// functions whose first argument is the plain value. The pickle VM keeps them
// as inert objects (accept_inert) and unwrap_jit_containers() replaces each
// by that argument, everywhere in the tree.
bool is_jit_container_wrapper(std::string_view module, std::string_view name);
Value unwrap_jit_containers(const Value& v);

}  // namespace ckpt::formats
