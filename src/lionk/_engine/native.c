/*
 * lionk's native library: the fused CPU step of lionk._engine.native, built by `pip install` (setup.py) and
 * called through ctypes. Everything Python needs to drive it is read from the library itself when it is
 * loaded (lk_layout, lk_op_name, lk_dtype_name), so no table is written twice.
 *
 * One loop for every kernel, storage and option: the kernel's direction arrives as a short register program
 * (lionk.expr compiles a kernel's formula into it) that an interpreter runs over blocks of LK_BLOCK elements,
 * each instruction a vectorised loop (native_pipeline.h). The pipeline is compiled once per instruction set
 * (baseline; AVX2 and AVX-512 on x86-64 with GCC or Clang) and the best one the CPU and the OS support is
 * chosen when the library is loaded: a wheel built anywhere runs everywhere, at full speed where it can.
 *
 * Stochastic rounding (bfloat16/float16 stores, int8 codes): the 32 random bits of element i of a tensor with
 * key k are mix32(i * 0x9E3779B1 + k) (Wellons' lowbias32); the weight takes the high 16 bits, the momentum the
 * low 16 (lionk/precision.py defines the same bits and rounding rules).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define LK_ABI_VERSION 2
#define LK_BLOCK 256
#define LK_MAX_REGISTERS 8
#define LK_CHUNK 1024 /* elements per unit of work: a multiple of LK_BLOCK */

/* The per-tensor rows (int64 and double) that Python fills; lk_layout() tells it the indices. */
enum { LK_P, LK_G, LK_M, LK_ABSMAX, LK_NUMEL, LK_DTYPES, LK_KEY, LK_FLAGS, LK_ROW };
enum { LK_LR, LK_DECAY, LK_DENOM, LK_DROW };
/* storage codes (the names lk_dtype_name gives) and the job flags */
enum { LK_F32, LK_F64, LK_BF16, LK_F16, LK_Q8, LK_NDTYPES };
enum { LK_MAXIMIZE = 1, LK_SKIP = 2, LK_CAUTIOUS = 4, LK_COUNT = 8, LK_CAUTIOUS_DECAY = 16 };
static const char *const lk_dtype_names[LK_NDTYPES] = {"float32", "float64", "bfloat16", "float16", "int8"};
static const int64_t lk_dtype_sizes[LK_NDTYPES] = {4, 8, 2, 2, 1};

typedef struct {
    int64_t ntensors;
    const int64_t *rows;
    const double *drows;
    int64_t *counts; /* LK_COUNT: [worker * ntensors + t] = agreeing entries of tensor t in that worker's share */
    double b1, omb1, b2, omb2;
    int32_t flags;
    const int32_t *prog;
    int32_t nprog;
    const double *consts;
    int32_t result;
} lk_job;

/* ---- scalar helpers shared by every ISA copy ----------------------------------------------------------------- */

static inline float bits_to_f32(uint32_t x) { float f; memcpy(&f, &x, 4); return f; }
static inline uint32_t f32_to_bits(float f) { uint32_t x; memcpy(&x, &f, 4); return x; }
static inline uint32_t select32(uint32_t mask, uint32_t a, uint32_t b) { return (a & mask) | (b & ~mask); }

static inline float bf16_load(uint16_t h) { return bits_to_f32((uint32_t)h << 16); }

static inline uint16_t bf16_store(float f) { /* round to nearest even, as c10::BFloat16; NaN -> 0x7FC0 */
    const uint32_t x = f32_to_bits(f);
    const uint32_t rounded = (x + 0x7FFFu + ((x >> 16) & 1u)) >> 16;
    return (uint16_t)((x & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : rounded);
}

/* IEEE half <-> float without branches, as c10::Half (the FP16 library's fp16_ieee_to/from_fp32_value). */
static inline float f16_load(uint16_t h) {
    const uint32_t w = (uint32_t)h << 16, sign = w & 0x80000000u, two_w = w + w;
    const float normalized = bits_to_f32((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const float denormalized = bits_to_f32((two_w >> 17) | (126u << 23)) - 0.5f;
    return bits_to_f32(sign | (two_w < (1u << 27) ? f32_to_bits(denormalized) : f32_to_bits(normalized)));
}

static inline uint16_t f16_store(float f) {
    float base = (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    const uint32_t w = f32_to_bits(f), shl1_w = w + w, sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    bias = bias < 0x71000000u ? 0x71000000u : bias;
    base = bits_to_f32((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = f32_to_bits(base);
    const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16; x *= 0x7FEB352Du; x ^= x >> 15; x *= 0x846CA68Bu;
    return x ^ (x >> 16);
}
static inline uint32_t random_bits(int64_t i, uint32_t key) { return mix32((uint32_t)i * 0x9E3779B1u + key); }

/* bfloat16 stochastic rounding: the neighbours of x are its truncation t and t + 1 ulp, and "t + 1 with
   probability (|x| - |t|) / ulp" is "t + 1 where k < the low 16 bits of x" (r = k * 2^-16 and the probability
   are both multiples of 2^-16), i.e. a carry out of the low half when 0xFFFF - k is added to it. From the largest
   finite magnitude up (|x| >= 0x7F7F0000: the far neighbour would be infinity, which has probability 0) the
   result is t; NaN -> 0x7FC0. */
static inline uint16_t bf16_store_sr(float x, uint32_t k) {
    const uint32_t bits = f32_to_bits(x), mag = bits & 0x7FFFFFFFu;
    const uint32_t up = (bits + (0xFFFFu - k)) >> 16;
    const uint32_t special = 0u - (uint32_t)(mag >= 0x7F7F0000u);
    const uint32_t nan = 0u - (uint32_t)(mag > 0x7F800000u);
    return (uint16_t)select32(special, select32(nan, 0x7FC0u, bits >> 16), up);
}

/* float16 stochastic rounding by the neighbour rule: the nearest y, the other neighbour o one ulp away, far
   (the one of larger magnitude) with probability (|x| - |near|) / (|far| - |near|); selects, not branches. */
static inline uint16_t f16_store_sr(float x, uint32_t k) {
    const float r = (float)k * 0x1.0p-16f;
    const uint32_t y = f16_store(x);
    const float yf = f16_load((uint16_t)y), ax = fabsf(x), ay = fabsf(yf);
    const uint32_t up = 0u - (uint32_t)(ay < ax); /* nearest went towards zero: o is one ulp further out */
    const uint32_t o = (y + select32(up, 1u, 0xFFFFu)) & 0xFFFFu;
    const float ao = fabsf(f16_load((uint16_t)o));
    const float a = bits_to_f32(select32(up, f32_to_bits(ay), f32_to_bits(ao)));
    const float b = bits_to_f32(select32(up, f32_to_bits(ao), f32_to_bits(ay)));
    const float prob = (ax - a) / (b - a);
    const uint32_t far = 0u - (uint32_t)(r < prob);
    const uint32_t rounded = select32(far, select32(up, o, y), select32(up, y, o));
    const uint32_t keep = 0u - (uint32_t)((yf == x) | (x != x));
    return (uint16_t)select32(keep, y, rounded);
}

static inline int8_t q8_code(float x) { /* clamped to [-127, 127], NaN -> 0 */
    x = x < -127.0f ? -127.0f : (x > 127.0f ? 127.0f : x);
    return (int8_t)(x == x ? x : 0.0f);
}

/* ---- the operations kernels are written in (lionk/expr.py names the same ones) -------------------------------
   X(name, arity, expression of a (and b)). Type-generic: the same text serves float and double. */
#define LK_SIGN(a) ((__typeof__(a))(((a) > 0) - ((a) < 0))) /* sign(0) = 0, sign(NaN) = 0 as torch.sign */
/* NaN-propagating min/max, as torch.minimum/maximum and clamp */
#define LK_MIN(a, b) ((a) != (a) ? (a) : ((b) != (b) ? (b) : ((a) < (b) ? (a) : (b))))
#define LK_MAX(a, b) ((a) != (a) ? (a) : ((b) != (b) ? (b) : ((a) > (b) ? (a) : (b))))
#define LK_GENERIC1(fn, a) _Generic((a), float: fn##f, default: fn)(a)
#define LK_GENERIC2(fn, a, b) _Generic((a), float: fn##f, default: fn)(a, b)
#define LK_OPS(X)                                          \
    X(neg, 1, -a)                                          \
    X(abs, 1, LK_GENERIC1(fabs, a))                        \
    X(sign, 1, LK_SIGN(a))                                 \
    X(sqrt, 1, LK_GENERIC1(sqrt, a))                       \
    X(exp, 1, LK_GENERIC1(exp, a))                         \
    X(expm1, 1, LK_GENERIC1(expm1, a))                     \
    X(log, 1, LK_GENERIC1(log, a))                         \
    X(log1p, 1, LK_GENERIC1(log1p, a))                     \
    X(tanh, 1, LK_GENERIC1(tanh, a))                       \
    X(add, 2, a + b)                                       \
    X(sub, 2, a - b)                                       \
    X(mul, 2, a * b)                                       \
    X(div, 2, a / b)                                       \
    X(pow, 2, LK_GENERIC2(pow, a, b))                      \
    X(hypot, 2, LK_GENERIC2(hypot, a, b))                  \
    X(minimum, 2, LK_MIN(a, b))                            \
    X(maximum, 2, LK_MAX(a, b))

#define LK_OP_ENUM(NAME, ARITY, EXPR) LK_OP_##NAME,
#define LK_OP_NAME(NAME, ARITY, EXPR) #NAME,
#define LK_OP_ARITY(NAME, ARITY, EXPR) ARITY,
enum { LK_OPS(LK_OP_ENUM) LK_NOPS };
static const char *const lk_op_names[LK_NOPS] = {LK_OPS(LK_OP_NAME)};
static const int lk_op_arities[LK_NOPS] = {LK_OPS(LK_OP_ARITY)};

/* ---- one copy of the pipeline per instruction set -------------------------------------------------------------- */

#define LK_ISA generic
#include "native_pipeline.h"
#undef LK_ISA

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LK_X86 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2")
#endif
#define LK_ISA avx2
#include "native_pipeline.h"
#undef LK_ISA
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")
#endif
#define LK_ISA avx512
#include "native_pipeline.h"
#undef LK_ISA
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

typedef void (*lk_work_fn)(const lk_job *, int64_t, int64_t);
typedef void (*lk_stream_fn)(const int64_t *, int64_t, float, int64_t, int64_t);
typedef struct { const char *name; lk_work_fn work; lk_stream_fn stream; int (*supported)(void); } lk_isa_entry;

static int lk_always(void) { return 1; }
#ifdef LK_X86
static int lk_has_avx2(void) { __builtin_cpu_init(); return __builtin_cpu_supports("avx2"); }
static int lk_has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq");
}
#endif

/* best last */
static const lk_isa_entry lk_isas[] = {
    {"generic", work_generic, stream_generic, lk_always},
#ifdef LK_X86
    {"avx2", work_avx2, stream_avx2, lk_has_avx2},
    {"avx512", work_avx512, stream_avx512, lk_has_avx512},
#endif
};
#define LK_NISAS ((int)(sizeof(lk_isas) / sizeof(lk_isas[0])))
static int lk_chosen = -1;

static int lk_best(void) {
    for (int i = LK_NISAS - 1; i > 0; --i)
        if (lk_isas[i].supported()) return i;
    return 0;
}

/* ---- the exported interface ------------------------------------------------------------------------------------ */

int32_t lk_abi_version(void) { return LK_ABI_VERSION; }

/* out[0..20]: row ints, row doubles, the row indices (P, G, M, ABSMAX, NUMEL, DTYPES, KEY, FLAGS, LR, DECAY, DENOM),
   block, max registers, the number of operations, and the flag bits (MAXIMIZE, SKIP, CAUTIOUS, COUNT, CAUTIOUS_DECAY) */
void lk_layout(int64_t *out) {
    const int64_t layout[] = {LK_ROW,   LK_DROW,  LK_P,  LK_G,     LK_M,      LK_ABSMAX,        LK_NUMEL, LK_DTYPES, LK_KEY,  LK_FLAGS,
                              LK_LR,    LK_DECAY, LK_DENOM, LK_BLOCK, LK_MAX_REGISTERS, LK_NOPS, LK_MAXIMIZE, LK_SKIP, LK_CAUTIOUS, LK_COUNT, LK_CAUTIOUS_DECAY};
    memcpy(out, layout, sizeof(layout));
}

const char *lk_op_name(int32_t i) { return i >= 0 && i < LK_NOPS ? lk_op_names[i] : NULL; }
int32_t lk_op_arity(int32_t i) { return i >= 0 && i < LK_NOPS ? lk_op_arities[i] : 0; }
const char *lk_dtype_name(int32_t i) { return i >= 0 && i < LK_NDTYPES ? lk_dtype_names[i] : NULL; }
const char *lk_isa_name(int32_t i) { return i >= 0 && i < LK_NISAS && lk_isas[i].supported() ? lk_isas[i].name : NULL; }

/* The instruction set in use: the best supported unless lk_select_isa chose another. */
const char *lk_isa(void) {
    if (lk_chosen < 0) lk_chosen = lk_best();
    return lk_isas[lk_chosen].name;
}

/* Use the named instruction set (for tests and benchmarks); returns 0 if it is unknown or unsupported here. */
int32_t lk_select_isa(const char *name) {
    for (int i = 0; i < LK_NISAS; ++i)
        if (strcmp(name, lk_isas[i].name) == 0 && lk_isas[i].supported()) { lk_chosen = i; return 1; }
    return 0;
}

/* One worker's share of one step (or, with LK_COUNT in flags, of the cautious counting pass). */
void lk_step(int64_t ntensors, const int64_t *rows, const double *drows, int64_t *counts, double b1, double omb1,
             double b2, double omb2, int32_t flags, const int32_t *prog, int32_t nprog, const double *consts,
             int32_t result, int64_t worker, int64_t nworkers) {
    const lk_job job = {ntensors, rows, drows, counts, b1, omb1, b2, omb2, flags, prog, nprog, consts, result};
    if (lk_chosen < 0) lk_chosen = lk_best();
    lk_isas[lk_chosen].work(&job, worker, nworkers);
}

/* The roof of lionk bench: one worker's share of p += g * s; m += g * s over float32 tensors (rows as lk_step's). */
void lk_stream(const int64_t *rows, int64_t ntensors, float s, int64_t worker, int64_t nworkers) {
    if (lk_chosen < 0) lk_chosen = lk_best();
    lk_isas[lk_chosen].stream(rows, ntensors, s, worker, nworkers);
}

/* An importable module, so that the library is found and loaded like any part of the package. */
static struct PyModuleDef lk_module = {PyModuleDef_HEAD_INIT, "_native",
                                       "lionk's fused CPU step, driven through ctypes by lionk._engine.native", -1, NULL};
PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&lk_module); }
