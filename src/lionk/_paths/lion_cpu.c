/*
 * lionk's fused CPU step: one pass over memory for a list of tensors, elementwise Lion-K kernels.
 *
 * For each element, in opmath precision (float for float32/bfloat16/float16 storage, double for float64):
 *     g = maximize ? -g : g;  skip mode: g = m where g is not finite
 *     c = m*b1 + g*(1-b1);  u = gradK(c) + (c - c);   (c - c is NaN where c is not finite)
 *     cautious: u = u * (u*g > 0) / max(count(u*g > 0)/numel, 1e-3)   (the scale per tensor comes from
 *               a first pass, lion_agree_*, that counts the agreeing entries)
 *     p = p*(1 - lr*wd) - u*lr;  m = m*b2 + g*(1-b2);  skip mode: p, m unchanged where g was not finite
 * This is the reference path's formula op for op; built with -ffp-contract=off so that no multiply-add
 * is fused and each operation is rounded as torch rounds it.
 *
 * Stochastic rounding (bfloat16/float16 storage, `keys` not NULL): the stores of p and m round to one
 * of the two neighbours of the float result, the one further from zero with probability
 * (|x| - |near|) / (|far| - |near|), comparing with r = k * 2^-16 where k is the high (for p) or the low (for m
 * and int8 codes) 16 bits of h = mix32(i * 0x9E3779B1 + key) for element i of a tensor with key `key`:
 * lionk/precision.py's formulas, so both paths draw the same bits and round alike.
 *
 * Work is split across `nworkers` callers: worker w handles the elements [N*w/W, N*(w+1)/W) of the
 * concatenation of all tensors (N elements in all), so one call per thread updates many tensors.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { K_SIGN = 0, K_POWER = 1, K_QUADRATIC = 2, K_HUBER = 3, K_RELATIVISTIC = 4, K_TANH = 5 };

static inline float bf16_load(uint16_t h) {
    uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static inline uint16_t bf16_store(float f) {  /* round to nearest even, as c10::BFloat16; branch-free */
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t rounded = (x + 0x7FFFu + ((x >> 16) & 1u)) >> 16;
    return (uint16_t)((x & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : rounded);
}

static inline float bits_to_f32(uint32_t x) {
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static inline uint32_t f32_to_bits(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    return x;
}

/* IEEE half <-> float without branches (so the loops vectorise), as c10::Half does it
   (fp16_ieee_to_fp32_value / fp16_ieee_from_fp32_value of the FP16 library): round to nearest even. */
static inline float f16_load(uint16_t h) {
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const float normalized = bits_to_f32((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const float denormalized = bits_to_f32((two_w >> 17) | (126u << 23)) - 0.5f;
    return bits_to_f32(sign | (two_w < (1u << 27) ? f32_to_bits(denormalized) : f32_to_bits(normalized)));
}

static inline uint16_t f16_store(float f) {
    float base = (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    const uint32_t w = f32_to_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    bias = bias < 0x71000000u ? 0x71000000u : bias;
    base = bits_to_f32((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = f32_to_bits(base);
    const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

/* Wellons' lowbias32 integer hash, and the 32 random bits of element i under a tensor's key. */
static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    return x ^ (x >> 16);
}

static inline uint32_t random_bits(int64_t i, uint32_t key) { return mix32((uint32_t)i * 0x9E3779B1u + key); }

/* Stochastic rounding of float x to a 16-bit format with loader LOAD and round-to-nearest STORE, with 16
   random bits k (r = k * 2^-16). The choices are bit selects, not branches (they are random). */
static inline uint32_t select32(uint32_t mask, uint32_t a, uint32_t b) { return (a & mask) | (b & ~mask); }

#define DEFINE_STOCHASTIC_STORE(NAME, LOAD, STORE)                                         \
    static inline uint16_t NAME(float x, uint32_t k) {                                     \
        const float r = (float)k * 0x1.0p-16f;                                             \
        const uint32_t y = STORE(x);                                                       \
        const float yf = LOAD((uint16_t)y), ax = fabsf(x), ay = fabsf(yf);                 \
        /* up: nearest went towards zero, the other neighbour is one ulp further out */    \
        const uint32_t up = 0u - (uint32_t)(ay < ax);                                      \
        const uint32_t o = (y + select32(up, 1u, 0xFFFFu)) & 0xFFFFu;                      \
        const float ao = fabsf(LOAD((uint16_t)o));                                         \
        const float a = bits_to_f32(select32(up, f32_to_bits(ay), f32_to_bits(ao)));       \
        const float b = bits_to_f32(select32(up, f32_to_bits(ao), f32_to_bits(ay)));       \
        const float prob = (ax - a) / (b - a);                                             \
        const uint32_t far = 0u - (uint32_t)(r < prob);                                    \
        const uint32_t rounded = select32(far, select32(up, o, y), select32(up, y, o));    \
        const uint32_t keep = 0u - (uint32_t)((yf == x) | (x != x));                       \
        return (uint16_t)select32(keep, y, rounded);                                       \
    }

#define ID_LOAD(x) (x)
#define ID_STORE(x) (x)
/* bfloat16 is the top half of a float32: the two neighbours are the truncation t and t + 1 ulp, and the
   neighbour rule above reduces to "t + 1 where k < the low 16 bits of x" (exactly: r and the probability are
   both multiples of 2^-16), a few integer operations that vectorise. Overflow past the largest
   finite value keeps t, as the rule does (the far neighbour, infinity, has probability 0). */
static inline uint16_t bf16_store_sr(float x, uint32_t k) {
    const uint32_t bits = f32_to_bits(x);
    const uint32_t t = bits >> 16;
    const uint32_t up = t + (uint32_t)(k < (bits & 0xFFFFu));
    const uint32_t overflow = 0u - (uint32_t)(((up & 0x7FFFu) == 0x7F80u) & ((bits & 0x7F800000u) != 0x7F800000u));
    const uint32_t nan = 0u - (uint32_t)((bits & 0x7FFFFFFFu) > 0x7F800000u);
    return (uint16_t)select32(nan, 0x7FC0u, select32(overflow, t, up));
}
DEFINE_STOCHASTIC_STORE(f16_store_sr, f16_load, f16_store)
#define NO_SR(x, r) (x) /* float32/float64 storage never rounds stochastically (keys is NULL) */

/* The stores of the loops: PLAIN rounds to nearest, SR stochastically with the tensor's keys. */
#define PLAIN(STORE, SRSTORE, x, k) STORE(x)
#define SR(STORE, SRSTORE, x, k) SRSTORE(x, k)
#define ROUND_BITS(i) random_bits(i, key)

#define SIGN(OT, c) ((OT)(((c) > 0) - ((c) < 0)))
/* x clamped to [-1, 1], NaN staying NaN as with torch.clamp (fmin/fmax would drop the NaN) */
#define CLAMP1(OT, x) ((x) < (OT)-1 ? (OT)-1 : ((x) > (OT)1 ? (OT)1 : (x)))

/* The direction grad K(c) of each elementwise kernel, with parameter kp. */
#define DIRECTION(OT, POW, FABS, HYPOT, TANH)                                  \
    (kernel == K_SIGN           ? SIGN(OT, c)                                              \
     : kernel == K_POWER        ? SIGN(OT, c) * POW(FABS(c), kp)                           \
     : kernel == K_QUADRATIC    ? c                                                        \
     : kernel == K_HUBER        ? CLAMP1(OT, c / kp)                        \
     : kernel == K_RELATIVISTIC ? c / HYPOT(c, kp)                                         \
                                : TANH(c / kp))

/* Loads one element and forms g (maximize, skip) and c; SKIP is a constant in the hot loops, so that
   the loop without skipping has no mask to vectorise. */
#define LOAD_GC(OT, LOAD, MLOAD, SKIP)                                                            \
    OT g = LOAD(gs[i]) * gsign;                                                            \
    OT m = MLOAD(ms[i]);                                                                   \
    int bad = (SKIP) & !isfinite(g);                                                       \
    g = bad ? m : g;                                                                       \
    OT c = m * b1 + g * omb1;

/* Walks this worker's share [N*w/W, N*(w+1)/W) of the concatenated tensors: BODY sees t, lo, hi. */
#define FOR_WORKER_SEGMENTS(BODY)                                                          \
    int64_t total = 0;                                                                     \
    for (int64_t t = 0; t < ntensors; ++t) total += numels[t];                             \
    int64_t begin = (int64_t)((__int128)total * worker / nworkers);                        \
    int64_t end = (int64_t)((__int128)total * (worker + 1) / nworkers);                    \
    int64_t offset = 0;                                                                    \
    for (int64_t t = 0; t < ntensors && offset < end; offset += numels[t], ++t) {          \
        int64_t lo = begin > offset ? begin - offset : 0;                                  \
        int64_t hi = end - offset < numels[t] ? end - offset : numels[t];                  \
        if (lo >= hi) continue;                                                            \
        BODY                                                                               \
    }

#define ARGS                                                                                                 \
    int64_t ntensors, void **pp, void **gp, void **mp, const int64_t *numels, int64_t worker, int64_t nworkers, \
        int kernel, double kparam_d, double lr_d, double decay_d, double b1_d, double omb1_d, double b2_d,     \
        double omb2_d, int maximize, int skip

#define SCALARS(OT)                                                                                        \
    const OT kp = (OT)kparam_d, lr = (OT)lr_d, decay = (OT)decay_d, b1 = (OT)b1_d, omb1 = (OT)omb1_d;     \
    const OT b2 = (OT)b2_d, omb2 = (OT)omb2_d, gsign = maximize ? (OT)-1 : (OT)1;                         \
    (void)lr; (void)decay; (void)b2; (void)omb2;

/* LOOP(ARGS..., KEXPR, SKIP) once per kernel, so that each loop vectorises with its grad K(c) inlined:
   sign, quadratic and huber get their own loops, the transcendental kernels share DIR (the DIRECTION
   expression); with skip mode one masked loop serves every kernel. */
#define KERNEL_LOOPS(LOOP, OT, DIR, ...)                                                   \
    if (skip) {                                                                            \
        LOOP(__VA_ARGS__, DIR, 1)                                                          \
    } else {                                                                               \
        switch (kernel) {                                                                  \
            case K_SIGN: LOOP(__VA_ARGS__, SIGN(OT, c), 0) break;                          \
            case K_QUADRATIC: LOOP(__VA_ARGS__, c, 0) break;                               \
            case K_HUBER: LOOP(__VA_ARGS__, CLAMP1(OT, c / kp), 0) break;                  \
            default: LOOP(__VA_ARGS__, DIR, 0)                                             \
        }                                                                                  \
    }

/* The same with sign's loop only: for the stochastic-rounding and int8 variants, whose extra loops would
   nearly double the build time (measured here: 16.9 s instead of 9.5 s) for kernels rarely used with them. */
#define SIGN_LOOPS(LOOP, OT, DIR, ...)                                                     \
    if (!skip && kernel == K_SIGN) {                                                       \
        LOOP(__VA_ARGS__, SIGN(OT, c), 0)                                                  \
    } else {                                                                               \
        LOOP(__VA_ARGS__, DIR, skip)                                                       \
    }

#define DEFINE_STEP(SUFFIX, ST, MT, OT, LOAD, STORE, SRSTORE, MLOAD, MSTORE, MSRSTORE, POW, FABS, HYPOT, TANH)   \
    /* counts[t] += number of entries of this worker's share of tensor t with u*g > 0 */                 \
    void lion_agree_##SUFFIX(ARGS, int64_t *counts) {                                                    \
        SCALARS(OT)                                                                                       \
        FOR_WORKER_SEGMENTS(                                                                              \
            const ST *restrict gs = (const ST *)gp[t]; const MT *restrict ms = (const MT *)mp[t];        \
            int64_t agree = 0;                                                                            \
            KERNEL_LOOPS(AGREE_LOOP, OT, DIRECTION(OT, POW, FABS, HYPOT, TANH), OT, LOAD, MLOAD)          \
            counts[t] += agree;)                                                                          \
    }                                                                                                     \
    /* the step; denominators[t] (cautious only, else NULL) = max(agree/numel, 1e-3) of tensor t;      \
       keys (stochastic rounding, else NULL): one per tensor */                                          \
    void lion_step_##SUFFIX(ARGS, const double *denominators, const uint32_t *keys) {                    \
        SCALARS(OT)                                                                                       \
        FOR_WORKER_SEGMENTS(                                                                              \
            ST *restrict ps = (ST *)pp[t]; const ST *restrict gs = (const ST *)gp[t];                    \
            MT *restrict ms = (MT *)mp[t];                                                                \
            const uint32_t key = keys ? keys[t] : 0u;                                                     \
            const OT denom = denominators ? (OT)denominators[t] : (OT)1;                                  \
            if (denominators && keys) { /* one loop for every kernel: rare, and each loop costs build time */ \
                CAUTIOUS_LOOP(OT, LOAD, STORE, SRSTORE, MLOAD, MSTORE, MSRSTORE, SR,                      \
                              DIRECTION(OT, POW, FABS, HYPOT, TANH), skip)                                \
            } else if (denominators) {                                                                    \
                KERNEL_LOOPS(CAUTIOUS_LOOP, OT, DIRECTION(OT, POW, FABS, HYPOT, TANH),                    \
                             OT, LOAD, STORE, SRSTORE, MLOAD, MSTORE, MSRSTORE, PLAIN)                    \
            } else if (keys) {                                                                            \
                SIGN_LOOPS(STEP_LOOP, OT, DIRECTION(OT, POW, FABS, HYPOT, TANH),                        \
                             OT, LOAD, STORE, SRSTORE, MLOAD, MSTORE, MSRSTORE, SR)                       \
            } else {                                                                                      \
                KERNEL_LOOPS(STEP_LOOP, OT, DIRECTION(OT, POW, FABS, HYPOT, TANH),                        \
                             OT, LOAD, STORE, SRSTORE, MLOAD, MSTORE, MSRSTORE, PLAIN)                    \
            })                                                                                            \
    }

#define AGREE_LOOP(OT, LOAD, MLOAD, KEXPR, SKIP)                                                  \
    for (int64_t i = lo; i < hi; ++i) {                                                    \
        LOAD_GC(OT, LOAD, MLOAD, SKIP)                                                            \
        (void)bad;                                                                         \
        OT u = (KEXPR);                                                                    \
        agree += u * g > 0;                                                                \
    }

#define CAUTIOUS_LOOP(OT, LOAD, STORE, SRSTORE, MLOAD, MSTORE, MSRSTORE, ROUND, KEXPR, SKIP)                                        \
    for (int64_t i = lo; i < hi; ++i) {                                                    \
        LOAD_GC(OT, LOAD, MLOAD, SKIP)                                                            \
        OT p = LOAD(ps[i]);                                                                \
        const uint32_t h = ROUND_BITS(i); /* unused (and removed) when rounding to nearest */ \
        OT u = (KEXPR);                                                                    \
        u = u * (OT)(u * g > 0) / denom + (c - c);                                         \
        ps[i] = ROUND(STORE, SRSTORE, bad ? p : p * decay - u * lr, h >> 16);                                 \
        ms[i] = ROUND(MSTORE, MSRSTORE, bad ? m : m * b2 + g * omb2, h & 0xFFFFu);                                 \
    }

#define STEP_LOOP(OT, LOAD, STORE, SRSTORE, MLOAD, MSTORE, MSRSTORE, ROUND, KEXPR, SKIP)                                            \
    for (int64_t i = lo; i < hi; ++i) {                                                    \
        LOAD_GC(OT, LOAD, MLOAD, SKIP)                                                            \
        OT p = LOAD(ps[i]);                                                                \
        const uint32_t h = ROUND_BITS(i);                                                  \
        OT u = (KEXPR) + (c - c);                                                          \
        ps[i] = ROUND(STORE, SRSTORE, bad ? p : p * decay - u * lr, h >> 16);                                 \
        ms[i] = ROUND(MSTORE, MSRSTORE, bad ? m : m * b2 + g * omb2, h & 0xFFFFu);                                 \
    }

/* SUFFIX: param (and grad) storage, then _m<momentum storage> where the momentum is stored otherwise */
#define F32_IO float, ID_LOAD, ID_STORE, NO_SR
#define F64_IO double, ID_LOAD, ID_STORE, NO_SR
#define BF16_IO uint16_t, bf16_load, bf16_store, bf16_store_sr
#define F16_IO uint16_t, f16_load, f16_store, f16_store_sr
#define STEP_TYPES(SUFFIX, P, M, OT, ...) DEFINE_STEP_(SUFFIX, P, M, OT, __VA_ARGS__)
#define DEFINE_STEP_(SUFFIX, ST, LOAD, STORE, SRSTORE, MT, MLOAD, MSTORE, MSRSTORE, OT, POW, FABS, HYPOT, TANH) \
    DEFINE_STEP(SUFFIX, ST, MT, OT, LOAD, STORE, SRSTORE, MLOAD, MSTORE, MSRSTORE, POW, FABS, HYPOT, TANH)
STEP_TYPES(f32, F32_IO, F32_IO, float, powf, fabsf, hypotf, tanhf)
STEP_TYPES(f64, F64_IO, F64_IO, double, pow, fabs, hypot, tanh)
STEP_TYPES(bf16, BF16_IO, BF16_IO, float, powf, fabsf, hypotf, tanhf)
STEP_TYPES(f16, F16_IO, F16_IO, float, powf, fabsf, hypotf, tanhf)
STEP_TYPES(f32_mbf16, F32_IO, BF16_IO, float, powf, fabsf, hypotf, tanhf)
STEP_TYPES(bf16_mf32, BF16_IO, F32_IO, float, powf, fabsf, hypotf, tanhf)
STEP_TYPES(f16_mf32, F16_IO, F32_IO, float, powf, fabsf, hypotf, tanhf)
STEP_TYPES(f16_mbf16, F16_IO, BF16_IO, float, powf, fabsf, hypotf, tanhf)
STEP_TYPES(f32_mf16, F32_IO, F16_IO, float, powf, fabsf, hypotf, tanhf)

/*
 * int8 blockwise momentum (lionk/precision.py): tensor t's momentum is codes q (int8) and one float scale
 * A per block of 256 values, m = q * (A / 127). Per block: dequantise, step every element as above
 * (float32 arithmetic), then A' = max |m'| over the block (NaN if any is NaN) and
 * q' = round(m' * (127 / max(A', FLT_MIN))) clamped to [-127, 127] (0 where that is NaN): rint (nearest
 * even) or, with keys, floor(x + r) with r from the low 16 bits of the element's hash. Work is split across workers by whole blocks.
 * No cautious variant (the optimizer uses the torch path for cautious int8).
 */
#define Q8_BLOCK 256

#define Q8_STEP_BLOCK(OT, LOAD, STORE, SRSTORE, ROUND, KEXPR, SKIP)                         \
    for (int64_t i = lo; i < hi; ++i) {                                                      \
        OT g = LOAD(gs[i]) * gsign;                                                          \
        OT m = (OT)qs[i] * scale;                                                            \
        int bad = (SKIP) & !isfinite(g);                                                     \
        g = bad ? m : g;                                                                     \
        OT c = m * b1 + g * omb1;                                                            \
        OT p = LOAD(ps[i]);                                                                  \
        const uint32_t h = ROUND_BITS(i);                                                    \
        OT u = (KEXPR) + (c - c);                                                            \
        ps[i] = ROUND(STORE, SRSTORE, bad ? p : p * decay - u * lr, h >> 16);               \
        buf[i - lo] = bad ? m : m * b2 + g * omb2;                                           \
    }

/* the code of a rounded value x: clamped to [-127, 127], 0 for NaN */
#define Q8_STORE(X)                                                                          \
    {                                                                                        \
        float x = (X);                                                                       \
        x = x < -127.0f ? -127.0f : (x > 127.0f ? 127.0f : x);                               \
        qs[i] = (int8_t)(x == x ? x : 0.0f);                                                 \
    }

#define DEFINE_Q8(SUFFIX, ST, LOAD, STORE, SRSTORE)                                                          \
    void lion_step_q8_##SUFFIX(int64_t ntensors, void **pp, void **gp, void **qp, void **ap,                 \
                               const int64_t *numels, int64_t worker, int64_t nworkers, int kernel,          \
                               double kparam_d, double lr_d, double decay_d, double b1_d, double omb1_d,     \
                               double b2_d, double omb2_d, int maximize, int skip, const uint32_t *keys) {   \
        SCALARS(float)                                                                                        \
        int64_t total = 0;                                                                                    \
        for (int64_t t = 0; t < ntensors; ++t) total += (numels[t] + Q8_BLOCK - 1) / Q8_BLOCK;               \
        const int64_t begin = total * worker / nworkers, end = total * (worker + 1) / nworkers;              \
        float buf[Q8_BLOCK];                                                                                  \
        int64_t offset = 0; /* blocks before tensor t */                                                     \
        for (int64_t t = 0; t < ntensors && offset < end; ++t) {                                             \
            const int64_t n = numels[t], nblocks = (n + Q8_BLOCK - 1) / Q8_BLOCK;                            \
            const int64_t b_lo = begin > offset ? begin - offset : 0;                                        \
            const int64_t b_hi = end - offset < nblocks ? end - offset : nblocks;                            \
            ST *restrict ps = (ST *)pp[t];                                                                    \
            const ST *restrict gs = (const ST *)gp[t];                                                        \
            int8_t *restrict qs = (int8_t *)qp[t];                                                            \
            float *restrict as = (float *)ap[t];                                                              \
            const uint32_t key = keys ? keys[t] : 0u;                                                         \
            for (int64_t b = b_lo; b < b_hi; ++b) {                                                          \
                const int64_t lo = b * Q8_BLOCK, hi = lo + Q8_BLOCK < n ? lo + Q8_BLOCK : n;                 \
                const float scale = as[b] / 127.0f;                                                           \
                if (keys) {                                                                                   \
                    SIGN_LOOPS(Q8_STEP_BLOCK, float, DIRECTION(float, powf, fabsf, hypotf, tanhf), float, LOAD, STORE, SRSTORE, SR) \
                } else {                                                                                      \
                    SIGN_LOOPS(Q8_STEP_BLOCK, float, DIRECTION(float, powf, fabsf, hypotf, tanhf), float, LOAD, STORE, SRSTORE, PLAIN) \
                }                                                                                             \
                /* max |m'| as an integer max of the bit patterns of |m'|: for non-negative floats it orders as \
                   the values do, and a NaN (above inf) wins, as with torch.amax */                        \
                uint32_t amax_bits = 0;                                                                       \
                for (int64_t k = 0; k < hi - lo; ++k) {                                                       \
                    const uint32_t a = f32_to_bits(buf[k]) & 0x7FFFFFFFu;                                     \
                    amax_bits = a > amax_bits ? a : amax_bits;                                                \
                }                                                                                             \
                const float amax = bits_to_f32(amax_bits);                                                    \
                as[b] = amax;                                                                                 \
                const float inv = 127.0f / (amax < 0x1.0p-126f ? 0x1.0p-126f : amax);                        \
                if (keys) {                                                                                   \
                    for (int64_t i = lo; i < hi; ++i) Q8_STORE(floorf(buf[i - lo] * inv + (float)(random_bits(i, key) & 0xFFFFu) * 0x1.0p-16f)) \
                } else {                                                                                      \
                    for (int64_t i = lo; i < hi; ++i) Q8_STORE(rintf(buf[i - lo] * inv))                      \
                }                                                                                             \
            }                                                                                                 \
            offset += nblocks;                                                                                \
        }                                                                                                     \
    }

DEFINE_Q8(f32, float, ID_LOAD, ID_STORE, NO_SR)
DEFINE_Q8(bf16, uint16_t, bf16_load, bf16_store, bf16_store_sr)
DEFINE_Q8(f16, uint16_t, f16_load, f16_store, f16_store_sr)
