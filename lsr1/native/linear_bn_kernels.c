/* linear_bn.c twice: float (suffix _f32) and double (_f64). */
#include <math.h>

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
