// The emulator's metal_stdlib: included ahead of every rewritten kernel source.
#pragma once

#include "types.h"
#include "traits.h"
#include "math.h"
#include "runtime.h"
#include "array.h"
#include "simd.h"
#include "atomic.h"
#include "matrix.h"
#include "matrix_types.h"
#include "packed.h"
#include "internals.h"
#include "exports.h"
#include "sanitizer.h"

// Metal has no double; the pre-pass reports it, this catches what it cannot see.
#define double __metal_has_no_double
