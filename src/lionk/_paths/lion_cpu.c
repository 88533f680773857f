/*
 * lionk's fused CPU step: one pass over memory for a list of tensors, elementwise Lion-K kernels.
 *
 * For each element, in opmath precision (float for float32/bfloat16/float16 storage, double for float64):
 *     g = maximize ? -g : g;  skip mode: g = m where g is not finite
 *     c = m*b1 + g*(1-b1);  u = gradK(c) + (c - c);   (c - c is NaN where c is not finite)
 *     p = p*(1 - lr*wd) - u*lr;  m = m*b2 + g*(1-b2);  skip mode: p, m unchanged where g was not finite
 * This is the reference path's formula op for op; built with -ffp-contract=off so that no multiply-add
 * is fused and each operation is rounded as torch rounds it.
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

static inline uint16_t bf16_store(float f) {  /* round to nearest even, as c10::BFloat16 */
    uint32_t x;
    memcpy(&x, &f, 4);
    if (f != f) return 0x7FC0;
    x += 0x7FFFu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

#define ID_LOAD(x) (x)
#define F16_LOAD(x) ((float)(x))
#define F32_STORE(x) (x)
#define F16_STORE(x) ((_Float16)(x))

#define SIGN(OT, c) ((OT)(((c) > 0) - ((c) < 0)))

/* One segment loop for kernel expression KEXPR (of c, with parameter kp). */
#define SEGMENT_LOOP(ST, OT, LOAD, STORE, KEXPR)                                   \
    for (int64_t i = lo; i < hi; ++i) {                                           \
        OT g = LOAD(gs[i]) * gsign;                                               \
        OT m = LOAD(ms[i]);                                                       \
        OT p = LOAD(ps[i]);                                                       \
        int bad = skip && !isfinite(g);                                           \
        if (bad) g = m;                                                           \
        OT c = m * b1 + g * omb1;                                                 \
        OT u = (KEXPR) + (c - c);                                                 \
        OT np = p * decay - u * lr;                                               \
        OT nm = m * b2 + g * omb2;                                                \
        ps[i] = STORE(bad ? p : np);                                              \
        ms[i] = STORE(bad ? m : nm);                                              \
    }

#define DEFINE_STEP(NAME, ST, OT, LOAD, STORE, POW, FABS, HYPOT, TANH, FMIN, FMAX)                          \
    void NAME(int64_t ntensors, void **pp, void **gp, void **mp, const int64_t *numels, int64_t worker,      \
              int64_t nworkers, int kernel, double kparam_d, double lr_d, double decay_d, double b1_d,       \
              double omb1_d, double b2_d, double omb2_d, int maximize, int skip) {                           \
        const OT kp = (OT)kparam_d, lr = (OT)lr_d, decay = (OT)decay_d, b1 = (OT)b1_d, omb1 = (OT)omb1_d;   \
        const OT b2 = (OT)b2_d, omb2 = (OT)omb2_d, gsign = maximize ? (OT)-1 : (OT)1;                       \
        int64_t total = 0;                                                                                  \
        for (int64_t t = 0; t < ntensors; ++t) total += numels[t];                                          \
        int64_t begin = (int64_t)((__int128)total * worker / nworkers);                                     \
        int64_t end = (int64_t)((__int128)total * (worker + 1) / nworkers);                                 \
        int64_t offset = 0;                                                                                 \
        for (int64_t t = 0; t < ntensors && offset < end; offset += numels[t], ++t) {                       \
            int64_t lo = begin > offset ? begin - offset : 0;                                               \
            int64_t hi = end - offset < numels[t] ? end - offset : numels[t];                               \
            if (lo >= hi) continue;                                                                         \
            ST *restrict ps = (ST *)pp[t];                                                                  \
            const ST *restrict gs = (const ST *)gp[t];                                                      \
            ST *restrict ms = (ST *)mp[t];                                                                  \
            switch (kernel) {                                                                               \
                case K_SIGN: SEGMENT_LOOP(ST, OT, LOAD, STORE, SIGN(OT, c)) break;                          \
                case K_POWER: SEGMENT_LOOP(ST, OT, LOAD, STORE, SIGN(OT, c) * POW(FABS(c), kp)) break;      \
                case K_QUADRATIC: SEGMENT_LOOP(ST, OT, LOAD, STORE, c) break;                               \
                case K_HUBER: SEGMENT_LOOP(ST, OT, LOAD, STORE, FMIN(FMAX(c / kp, (OT)-1), (OT)1)) break;   \
                case K_RELATIVISTIC: SEGMENT_LOOP(ST, OT, LOAD, STORE, c / HYPOT(c, kp)) break;             \
                case K_TANH: SEGMENT_LOOP(ST, OT, LOAD, STORE, TANH(c / kp)) break;                         \
            }                                                                                               \
        }                                                                                                   \
    }

DEFINE_STEP(lion_step_f32, float, float, ID_LOAD, F32_STORE, powf, fabsf, hypotf, tanhf, fminf, fmaxf)
DEFINE_STEP(lion_step_f64, double, double, ID_LOAD, F32_STORE, pow, fabs, hypot, tanh, fmin, fmax)
DEFINE_STEP(lion_step_bf16, uint16_t, float, bf16_load, bf16_store, powf, fabsf, hypotf, tanhf, fminf, fmaxf)
DEFINE_STEP(lion_step_f16, _Float16, float, F16_LOAD, F16_STORE, powf, fabsf, hypotf, tanhf, fminf, fmaxf)
