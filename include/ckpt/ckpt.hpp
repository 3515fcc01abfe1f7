// ckpt/ckpt.hpp — everything in one include.
#pragma once

#include "ckpt/distributed.hpp"
#include "ckpt/dtype.hpp"
#include "ckpt/error.hpp"
#include "ckpt/inspect.hpp"
#include "ckpt/load.hpp"
#include "ckpt/manager.hpp"
#include "ckpt/open.hpp"
#include "ckpt/safetensors.hpp"
#include "ckpt/save.hpp"
#include "ckpt/scan.hpp"
#include "ckpt/sharded.hpp"
#include "ckpt/state_dict.hpp"
#include "ckpt/storage.hpp"
#include "ckpt/tensor.hpp"
#include "ckpt/value.hpp"
#include "ckpt/version.hpp"
