/* linear_bn.c twice: float (suffix _f32) and double (_f64). */
#include <math.h>

/* x86-64: an AVX2 build of each function beside the baseline one, picked at load time by the CPU (GCC's
 * function multi-versioning); elsewhere the one build. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VECTORISED __attribute__((target_clones("avx2", "default")))
#else
#define VECTORISED
#endif

#define T float
#define NAME(f) f##_f32
#define SQRT sqrtf
#include "linear_bn.c"
#undef T
#undef NAME
#undef SQRT

#define T double
#define NAME(f) f##_f64
#define SQRT sqrt
#include "linear_bn.c"
