/*
 * lionk's fused CPU step, one instruction set's copy (included by native.c once per ISA, with LK_ISA set).
 *
 * The unit of work is a chunk: up to LK_CHUNK consecutive elements of one tensor, starting at a multiple of
 * LK_CHUNK (so an int8 momentum's quantisation blocks of LK_BLOCK never straddle two workers). Worker w of W
 * takes chunks [N*w/W, N*(w+1)/W) of the N chunks of all tensors. Per chunk, in opmath OT (double for float64
 * weights, float otherwise), three kinds of vectorised loops:
 *     front:  G, M = g, m (negated if maximize; skip mode: bad = !isfinite(G), G = bad ? M : G);
 *             C = M*b1 + G*(1-b1)
 *     kernel: U = the kernel's program on C (an interpreter: one loop per instruction)
 *     back:   cautious: U = U * (U*G > 0) / denom[t];  U = U + (C - C)   (NaN where C is not finite)
 *             P = bad ? P : P*decay[t] - U*lr[t];  M = bad ? M : M*b2 + G*(1-b2)
 * then P and M are stored (to nearest or stochastically; an int8 momentum gets new block scales, then codes).
 * That is lionk.update's formula op for op (built with -ffp-contract=off: no fused multiply-add). A tensor
 * already in opmath is read and updated in place; others go through a buffer (the cautious count pass,
 * LK_COUNT, stops after the kernel and writes nothing).
 */

/* Software prefetch: while a block of 256 elements is computed, the cache lines LK_AHEAD elements ahead are
   requested for every stream. The hardware prefetchers alone left a core's loads waiting (measured here: one
   thread at 75% of the stream roof without, 89% with; two threads 90% -> 100%). */
#define LK_AHEAD 1024

#define LK_CAT_(a, b) a##_##b
#define LK_CAT(a, b) LK_CAT_(a, b)
#define LK_FN(name) LK_CAT(name, LK_ISA)

/* ---- storage <-> opmath ----------------------------------------------------------------------------------------- */

#define LK_DEFINE_LOAD(OT)                                                                                    \
    static void LK_FN(load_##OT)(OT *restrict dst, const void *src, int dtype, int64_t off, int64_t n,          \
                                 const float *absmax) {                                                       \
        switch (dtype) {                                                                                      \
            case LK_F32: { const float *restrict s = (const float *)src + off;                                \
                for (int64_t i = 0; i < n; ++i) dst[i] = (OT)s[i]; break; }                                   \
            case LK_F64: { const double *restrict s = (const double *)src + off;                              \
                for (int64_t i = 0; i < n; ++i) dst[i] = (OT)s[i]; break; }                                   \
            case LK_BF16: { const uint16_t *restrict s = (const uint16_t *)src + off;                         \
                for (int64_t i = 0; i < n; ++i) dst[i] = (OT)bf16_load(s[i]); break; }                        \
            case LK_F16: { const uint16_t *restrict s = (const uint16_t *)src + off;                          \
                for (int64_t i = 0; i < n; ++i) dst[i] = (OT)f16_load(s[i]); break; }                         \
            default: { /* LK_Q8: m = code * (A / 127), A the scale of the element's block */                  \
                const int8_t *restrict s = (const int8_t *)src + off;                                         \
                for (int64_t b = 0; b < n; b += LK_BLOCK) {                                                   \
                    const float scale = absmax[(off + b) / LK_BLOCK] / 127.0f;                                \
                    const int64_t e = n - b < LK_BLOCK ? n - b : LK_BLOCK;                                    \
                    for (int64_t i = 0; i < e; ++i) dst[b + i] = (OT)((float)s[b + i] * scale);               \
                }                                                                                             \
                break; }                                                                                      \
        }                                                                                                     \
    }

/* Stores with round to nearest, or stochastically with 16 bits of each element's hash H[i] (computed once per
   element for both stores: the weight takes the high half, the momentum and the int8 codes the low half). */
#define LK_HIGH(h) ((h) >> 16)
#define LK_LOW(h) ((h) & 0xFFFFu)
#define LK_SR_LOOP(STORE_SR)                                                                                  \
    if (high) { for (int64_t i = 0; i < n; ++i) d[i] = STORE_SR((float)src[i], LK_HIGH(H[i])); }            \
    else { for (int64_t i = 0; i < n; ++i) d[i] = STORE_SR((float)src[i], LK_LOW(H[i])); }
#define LK_DEFINE_STORE(OT)                                                                                   \
    static void LK_FN(store_##OT)(void *dst, int dtype, int64_t off, int64_t n, const OT *restrict src,        \
                                  const uint32_t *restrict H, float *absmax, int high) {                     \
        switch (dtype) {                                                                                      \
            case LK_F32: { float *restrict d = (float *)dst + off;                                            \
                for (int64_t i = 0; i < n; ++i) d[i] = (float)src[i]; break; }                                \
            case LK_F64: { double *restrict d = (double *)dst + off;                                          \
                for (int64_t i = 0; i < n; ++i) d[i] = (double)src[i]; break; }                               \
            case LK_BF16: { uint16_t *restrict d = (uint16_t *)dst + off;                                     \
                if (!H) { for (int64_t i = 0; i < n; ++i) d[i] = bf16_store((float)src[i]); }                \
                else { LK_SR_LOOP(bf16_store_sr) }                                                            \
                break; }                                                                                      \
            case LK_F16: { uint16_t *restrict d = (uint16_t *)dst + off;                                      \
                if (!H) { for (int64_t i = 0; i < n; ++i) d[i] = f16_store((float)src[i]); }                 \
                else { LK_SR_LOOP(f16_store_sr) }                                                             \
                break; }                                                                                      \
            default: { /* LK_Q8, per block: A' = max |m'| (NaN wins), codes round(m' * 127/max(A', FLT_MIN)) */ \
                int8_t *restrict q = (int8_t *)dst + off;                                                     \
                for (int64_t b = 0; b < n; b += LK_BLOCK) {                                                   \
                    const int64_t e = n - b < LK_BLOCK ? n - b : LK_BLOCK;                                    \
                    float buf[LK_BLOCK];                                                                      \
                    uint32_t amax_bits = 0; /* max of |m'|'s bit patterns: orders as the values, NaN on top */ \
                    for (int64_t i = 0; i < e; ++i) {                                                         \
                        buf[i] = (float)src[b + i];                                                           \
                        const uint32_t a = f32_to_bits(buf[i]) & 0x7FFFFFFFu;                                \
                        amax_bits = a > amax_bits ? a : amax_bits;                                            \
                    }                                                                                         \
                    const float amax = bits_to_f32(amax_bits);                                               \
                    absmax[(off + b) / LK_BLOCK] = amax;                                                      \
                    const float inv = 127.0f / (amax < 0x1.0p-126f ? 0x1.0p-126f : amax);                     \
                    if (H) {                                                                                  \
                        for (int64_t i = 0; i < e; ++i)                                                       \
                            q[b + i] = q8_code(floorf(buf[i] * inv + (float)LK_LOW(H[b + i]) * 0x1.0p-16f));  \
                    } else {                                                                                  \
                        for (int64_t i = 0; i < e; ++i) q[b + i] = q8_code(rintf(buf[i] * inv));              \
                    }                                                                                         \
                }                                                                                             \
                break; }                                                                                      \
        }                                                                                                     \
    }

/* ---- the kernel's program: one loop per instruction over the chunk's registers ------------------------------- */

#define LK_UNARY_CASE(OT, NAME, EXPR)                                                                         \
    case LK_OP_##NAME: { OT *restrict d = R[dst]; const OT *restrict x = R[ra];                              \
        for (int64_t i = 0; i < n; ++i) { const OT a = x[i]; d[i] = (EXPR); } break; }
#define LK_BINARY_CASE(OT, NAME, EXPR)                                                                        \
    case LK_OP_##NAME: { OT *restrict d = R[dst];                                                            \
        if (ra >= 0 && rb >= 0) { const OT *restrict x = R[ra], *restrict y = R[rb];                         \
            for (int64_t i = 0; i < n; ++i) { const OT a = x[i], b = y[i]; d[i] = (EXPR); } }                \
        else if (ra >= 0) { const OT *restrict x = R[ra]; const OT b = (OT)consts[-rb - 1];                  \
            for (int64_t i = 0; i < n; ++i) { const OT a = x[i]; d[i] = (EXPR); } }                          \
        else { const OT *restrict y = R[rb]; const OT a = (OT)consts[-ra - 1];                               \
            for (int64_t i = 0; i < n; ++i) { const OT b = y[i]; d[i] = (EXPR); } }                          \
        break; }
#define LK_CASE_1(OT, NAME, EXPR) LK_UNARY_CASE(OT, NAME, EXPR)
#define LK_CASE_2(OT, NAME, EXPR) LK_BINARY_CASE(OT, NAME, EXPR)
#define LK_CASE_F(NAME, ARITY, EXPR) LK_CASE_##ARITY(float, NAME, EXPR)
#define LK_CASE_D(NAME, ARITY, EXPR) LK_CASE_##ARITY(double, NAME, EXPR)

/* Registers: R[0] holds c (never written), R[1..] the program's values. An operand >= 0 is a register,
   operand -k-1 is consts[k] (at most one operand of an instruction is a constant). Instruction k is
   prog[4k..4k+3] = (op, dst, a, b). */
#define LK_DEFINE_RUN(OT, CASE)                                                                               \
    static void LK_FN(run_##OT)(OT (*R)[LK_CHUNK], int64_t n, const int32_t *prog, int32_t nprog,            \
                                const double *consts) {                                                       \
        for (int32_t k = 0; k < nprog; ++k) {                                                                 \
            const int32_t op = prog[4 * k], dst = prog[4 * k + 1], ra = prog[4 * k + 2], rb = prog[4 * k + 3]; \
            (void)rb;                                                                                         \
            switch (op) { LK_OPS(CASE) default: break; }                                                      \
        }                                                                                                     \
    }

/* ---- one chunk of one tensor ------------------------------------------------------------------------------------- */

#define LK_DEFINE_CHUNK(OT, NATIVE)                                                                           \
    static int64_t LK_FN(chunk_##OT)(const lk_job *job, const int64_t *row, const double *drow, int64_t off, \
                                     int64_t n) {                                                             \
        OT R[LK_MAX_REGISTERS][LK_CHUNK], gbuf[LK_CHUNK], mbuf[LK_CHUNK], pbuf[LK_CHUNK];                     \
        unsigned char bad[LK_CHUNK];                                                                          \
        const int pdt = (int)(row[LK_DTYPES] & 0xFF), gdt = (int)((row[LK_DTYPES] >> 8) & 0xFF);            \
        const int mdt = (int)((row[LK_DTYPES] >> 16) & 0xFF);                                                \
        const int maximize = job->flags & LK_MAXIMIZE, skip = job->flags & LK_SKIP;                          \
        void *p = (void *)(intptr_t)row[LK_P], *m = (void *)(intptr_t)row[LK_M];                            \
        const void *g = (const void *)(intptr_t)row[LK_G];                                                   \
        const float *absmax = (const float *)(intptr_t)row[LK_ABSMAX];                                      \
        const OT b1 = (OT)job->b1, omb1 = (OT)job->omb1, b2 = (OT)job->b2, omb2 = (OT)job->omb2;             \
        /* ask for p's chunk now, so that it streams in with g and m (the back loop reads it) */              \
        for (int64_t i = 0; i < n * lk_dtype_sizes[pdt]; i += 64) __builtin_prefetch((const char *)p + off * lk_dtype_sizes[pdt] + i, 1); \
        /* front: G and M in place where the storage is opmath (and G is not changed), else in buffers */    \
        OT *restrict G = gbuf, *restrict M = mbuf, *restrict C = R[0];                                        \
        if (gdt == NATIVE && !maximize && !skip) G = (OT *)g + off;                                          \
        else LK_FN(load_##OT)(gbuf, g, gdt, off, n, NULL);                                                    \
        if (mdt == NATIVE) M = (OT *)m + off;                                                                 \
        else LK_FN(load_##OT)(mbuf, m, mdt, off, n, absmax);                                                  \
        if (maximize)                                                                                         \
            for (int64_t i = 0; i < n; ++i) G[i] = -G[i];                                                     \
        if (skip)                                                                                             \
            for (int64_t i = 0; i < n; ++i) { bad[i] = !isfinite(G[i]); G[i] = bad[i] ? M[i] : G[i]; }       \
        for (int64_t i = 0; i < n; ++i) C[i] = M[i] * b1 + G[i] * omb1;                                       \
        /* kernel */                                                                                          \
        LK_FN(run_##OT)(R, n, job->prog, job->nprog, job->consts);                                           \
        const OT *restrict U = R[job->result];                                                                \
        if (job->flags & LK_COUNT) {                                                                          \
            int64_t agree = 0;                                                                                \
            for (int64_t i = 0; i < n; ++i) agree += U[i] * G[i] > 0;                                         \
            return agree;                                                                                     \
        }                                                                                                     \
        /* back */                                                                                            \
        const OT lr = (OT)drow[LK_LR], decay = (OT)drow[LK_DECAY], denom = (OT)drow[LK_DENOM];               \
        OT *restrict P = pbuf;                                                                                \
        if (pdt == NATIVE) P = (OT *)p + off;                                                                 \
        else LK_FN(load_##OT)(pbuf, p, pdt, off, n, NULL);                                                    \
        if (job->flags & LK_CAUTIOUS) {                                                                       \
            OT *restrict V = R[LK_MAX_REGISTERS - 1];                                                         \
            for (int64_t i = 0; i < n; ++i) V[i] = U[i] * (OT)(U[i] * G[i] > 0) / denom;                      \
            U = V;                                                                                            \
        }                                                                                                     \
        /* cautious weight decay: decay only where u * p > 0 (elsewhere p * 1, which is p exactly) */          \
        const int cd = (job->flags & LK_CAUTIOUS_DECAY) != 0;                                                 \
        if (skip) {                                                                                           \
            for (int64_t i = 0; i < n; ++i) {                                                                 \
                const OT u = U[i] + (C[i] - C[i]);                                                            \
                const OT d = cd && !(u * P[i] > 0) ? (OT)1 : decay;                                           \
                const OT np = P[i] * d - u * lr, nm = M[i] * b2 + G[i] * omb2;                                \
                P[i] = bad[i] ? P[i] : np;                                                                    \
                M[i] = bad[i] ? M[i] : nm;                                                                    \
            }                                                                                                 \
        } else {                                                                                              \
            for (int64_t i = 0; i < n; ++i) {                                                                 \
                const OT u = U[i] + (C[i] - C[i]);                                                            \
                const OT d = cd && !(u * P[i] > 0) ? (OT)1 : decay;                                           \
                P[i] = P[i] * d - u * lr;                                                                     \
                M[i] = M[i] * b2 + G[i] * omb2;                                                               \
            }                                                                                                 \
        }                                                                                                     \
        uint32_t hbuf[LK_CHUNK];                                                                              \
        const uint32_t *H = NULL; /* the elements' random bits, when this tensor rounds stochastically */      \
        if (row[LK_FLAGS] & 1) {                                                                              \
            const uint32_t key = (uint32_t)row[LK_KEY];                                                      \
            for (int64_t i = 0; i < n; ++i) hbuf[i] = random_bits(off + i, key);                              \
            H = hbuf;                                                                                         \
        }                                                                                                     \
        float *scales = (float *)(intptr_t)row[LK_ABSMAX];                                                    \
        if (pdt != NATIVE) LK_FN(store_##OT)(p, pdt, off, n, P, H, scales, 1);                                \
        if (mdt != NATIVE) LK_FN(store_##OT)(m, mdt, off, n, M, H, scales, 0);                                \
        return 0;                                                                                             \
    }

/* ---- one chunk in a single pass, for the common case: p, g and m stored in opmath, a program of at most one
   unary operation on c (sign: Lion), no skip mode and no cautious masking: the front, the kernel and the back
   above fused into one loop, the operation inlined (each unary operation of LK_OPS gets its own loop). ---------- */

#define LK_FUSED_LOOP(OT, EXPR)                                                                               \
    for (int64_t b = 0; b < n; b += 256) {                                                                    \
        const int64_t e = n - b < 256 ? n : b + 256;                                                          \
        for (int64_t j = b + LK_AHEAD; j < e + LK_AHEAD && j < n; j += 64 / (int64_t)sizeof(OT)) {            \
            __builtin_prefetch(G + j, 0);                                                                     \
            __builtin_prefetch(M + j, 1);                                                                     \
            __builtin_prefetch(P + j, 1);                                                                     \
        }                                                                                                     \
        for (int64_t i = b; i < e; ++i) {                                                                     \
            const OT gi = G[i], mi = M[i];                                                                    \
            const OT a = mi * b1 + gi * gb1;                                                                  \
            const OT u = (EXPR) + (a - a);                                                                    \
            P[i] = P[i] * decay - u * lr;                                                                     \
            M[i] = mi * b2 + gi * gb2;                                                                        \
        }                                                                                                     \
    }
#define LK_FUSED_1(OT, NAME, EXPR) case LK_OP_##NAME: LK_FUSED_LOOP(OT, EXPR) break;
#define LK_FUSED_2(OT, NAME, EXPR)
#define LK_FUSED_F(NAME, ARITY, EXPR) LK_FUSED_##ARITY(float, NAME, EXPR)
#define LK_FUSED_D(NAME, ARITY, EXPR) LK_FUSED_##ARITY(double, NAME, EXPR)

#define LK_DEFINE_FUSED(OT, CASE)                                                                             \
    static void LK_FN(fused_##OT)(const lk_job *job, const int64_t *row, const double *drow, int64_t off,    \
                                  int64_t n) {                                                                \
        OT *restrict P = (OT *)(intptr_t)row[LK_P] + off, *restrict M = (OT *)(intptr_t)row[LK_M] + off;     \
        const OT *restrict G = (const OT *)(intptr_t)row[LK_G] + off;                                        \
        const OT b1 = (OT)job->b1, omb1 = (OT)job->omb1, b2 = (OT)job->b2, omb2 = (OT)job->omb2;             \
        const OT lr = (OT)drow[LK_LR], decay = (OT)drow[LK_DECAY];                                           \
        /* maximize: (-g) * x is -(g * x) exactly, so the sign goes into the gradient's coefficients */       \
        const OT gb1 = (job->flags & LK_MAXIMIZE) ? -omb1 : omb1, gb2 = (job->flags & LK_MAXIMIZE) ? -omb2 : omb2; \
        if (job->nprog == 0) { LK_FUSED_LOOP(OT, a) }                                                         \
        else switch (job->prog[0]) { LK_OPS(CASE) default: break; }                                          \
    }

/* ---- Lion's own kernel (sign) in a single pass for the usual 16-bit storages: bfloat16/float16 weights with
   their own or float32 momentum, float32 weights with 16-bit momentum; rounded to nearest or stochastically
   (one hash per element: the weight takes its high 16 bits, the momentum the low 16). The same formula as the
   chunk path, op for op; tensors of other storages and kernels take the chunk path. ------------------------------ */

#define LK_L_F32(x) (x)
#define LK_S_F32(x, k) (x)
#define LK_S_BF16_RTN(x, k) bf16_store(x)
#define LK_S_BF16_SR(x, k) bf16_store_sr(x, k)
#define LK_S_F16_RTN(x, k) f16_store(x)
#define LK_S_F16_SR(x, k) f16_store_sr(x, k)
#define LK_CONV_LOOP(PT, PL, PS, GT, GL, MT, ML, MS)                                                          \
    {                                                                                                         \
        PT *restrict P = (PT *)(intptr_t)row[LK_P] + off;                                                     \
        const GT *restrict G = (const GT *)(intptr_t)row[LK_G] + off;                                         \
        MT *restrict M = (MT *)(intptr_t)row[LK_M] + off;                                                     \
        for (int64_t b = 0; b < n; b += 256) {                                                                \
            const int64_t e = n - b < 256 ? n : b + 256;                                                      \
            for (int64_t j = b + LK_AHEAD; j < e + LK_AHEAD && j < n; j += 32) { /* 32 16-bit values a line */ \
                __builtin_prefetch(G + j, 0);                                                                 \
                __builtin_prefetch(M + j, 1);                                                                 \
                __builtin_prefetch(P + j, 1);                                                                 \
                if (sizeof(MT) == 4 || sizeof(PT) == 4) { /* a 4-byte stream has two lines per 32 values */  \
                    __builtin_prefetch((const char *)(M + j) + 64, 1);                                        \
                    __builtin_prefetch((const char *)(P + j) + 64, 1);                                        \
                    __builtin_prefetch((const char *)(G + j) + 64, 0);                                        \
                }                                                                                             \
            }                                                                                                 \
            uint32_t hb[256]; /* the block's random bits (random_bits(off + i, key)), in a loop of their own */ \
            if (sr) {                                                                                         \
                uint32_t x = (uint32_t)(off + b) * 0x9E3779B1u + key;                                         \
                for (int64_t i = 0; i < e - b; ++i, x += 0x9E3779B1u) hb[i] = mix32(x);                       \
            }                                                                                                 \
            for (int64_t i = b; i < e; ++i) {                                                                 \
                const float gi = GL(G[i]), mi = ML(M[i]);                                                     \
                const float a = mi * b1 + gi * gb1;                                                           \
                const float u = LK_SIGN(a) + (a - a);                                                         \
                const uint32_t h = sr ? hb[i - b] : 0u;                                                       \
                P[i] = PS(PL(P[i]) * decay - u * lr, h >> 16);                                                \
                M[i] = MS(mi * b2 + gi * gb2, h & 0xFFFFu);                                                   \
            }                                                                                                 \
        }                                                                                                     \
        return 1;                                                                                             \
    }
/* int8 momentum, per block of LK_BLOCK: dequantise (code * A/127), step, then the block's new scale A' = max |m'|
   (NaN on top) and its codes round(m' * 127/max(A', FLT_MIN)) clamped to [-127, 127] (NaN -> 0): to nearest, or
   floor(x + r) with r from the low 16 bits of the element's hash. As the chunk path's load and store do it. */
#define LK_Q8_LOOP(PT, PL, PS, GT, GL)                                                                        \
    {                                                                                                         \
        PT *restrict P = (PT *)(intptr_t)row[LK_P] + off;                                                     \
        const GT *restrict G = (const GT *)(intptr_t)row[LK_G] + off;                                         \
        int8_t *restrict Q = (int8_t *)(intptr_t)row[LK_M] + off;                                             \
        float *restrict A = (float *)(intptr_t)row[LK_ABSMAX] + off / LK_BLOCK;                               \
        for (int64_t b = 0; b < n; b += LK_BLOCK) {                                                           \
            const int64_t e = n - b < LK_BLOCK ? n : b + LK_BLOCK;                                            \
            for (int64_t j = b + LK_AHEAD; j < e + LK_AHEAD && j < n; j += 64) {                              \
                __builtin_prefetch(Q + j, 1);                                                                 \
                for (int64_t l = 0; l < 64 * (int64_t)sizeof(PT); l += 64) {                                  \
                    __builtin_prefetch((const char *)(G + j) + l, 0);                                         \
                    __builtin_prefetch((char *)(P + j) + l, 1);                                               \
                }                                                                                             \
            }                                                                                                 \
            uint32_t hb[LK_BLOCK];                                                                            \
            if (sr) {                                                                                         \
                uint32_t x = (uint32_t)(off + b) * 0x9E3779B1u + key;                                         \
                for (int64_t i = 0; i < e - b; ++i, x += 0x9E3779B1u) hb[i] = mix32(x);                       \
            }                                                                                                 \
            const float scale = A[b / LK_BLOCK] / 127.0f;                                                     \
            float mn[LK_BLOCK];                                                                               \
            for (int64_t i = b; i < e; ++i) {                                                                 \
                const float gi = GL(G[i]), mi = (float)Q[i] * scale;                                          \
                const float a = mi * b1 + gi * gb1;                                                           \
                const float u = LK_SIGN(a) + (a - a);                                                         \
                const uint32_t h = sr ? hb[i - b] : 0u;                                                       \
                P[i] = PS(PL(P[i]) * decay - u * lr, h >> 16);                                                \
                mn[i - b] = mi * b2 + gi * gb2;                                                               \
            }                                                                                                 \
            uint32_t amax_bits = 0;                                                                           \
            for (int64_t i = 0; i < e - b; ++i) {                                                             \
                const uint32_t v = f32_to_bits(mn[i]) & 0x7FFFFFFFu;                                         \
                amax_bits = v > amax_bits ? v : amax_bits;                                                    \
            }                                                                                                 \
            const float amax = bits_to_f32(amax_bits);                                                       \
            A[b / LK_BLOCK] = amax;                                                                           \
            const float inv = 127.0f / (amax < 0x1.0p-126f ? 0x1.0p-126f : amax);                             \
            if (sr) {                                                                                         \
                for (int64_t i = 0; i < e - b; ++i)                                                           \
                    Q[b + i] = q8_code(floorf(mn[i] * inv + (float)(hb[i] & 0xFFFFu) * 0x1.0p-16f));          \
            } else {                                                                                          \
                for (int64_t i = 0; i < e - b; ++i) Q[b + i] = q8_code(rintf(mn[i] * inv));                   \
            }                                                                                                 \
        }                                                                                                     \
        return 1;                                                                                             \
    }

#define LK_DT3(p, g, m) ((p) | (g) << 8 | (m) << 16)

/* 1 if this tensor took a single-pass 16-bit loop, 0 if it must take the chunk path */
static int LK_FN(conv_float)(const lk_job *job, const int64_t *row, const double *drow, int64_t off, int64_t n) {
    const float b1 = (float)job->b1, omb1 = (float)job->omb1, b2 = (float)job->b2, omb2 = (float)job->omb2;
    const float lr = (float)drow[LK_LR], decay = (float)drow[LK_DECAY];
    const float gb1 = (job->flags & LK_MAXIMIZE) ? -omb1 : omb1, gb2 = (job->flags & LK_MAXIMIZE) ? -omb2 : omb2;
    const uint32_t key = (uint32_t)row[LK_KEY];
    const int sr = (int)(row[LK_FLAGS] & 1);
    switch (row[LK_DTYPES] | (int64_t)sr << 24) {
        case LK_DT3(LK_BF16, LK_BF16, LK_BF16): LK_CONV_LOOP(uint16_t, bf16_load, LK_S_BF16_RTN, uint16_t, bf16_load, uint16_t, bf16_load, LK_S_BF16_RTN)
        case LK_DT3(LK_BF16, LK_BF16, LK_BF16) | 1 << 24: LK_CONV_LOOP(uint16_t, bf16_load, LK_S_BF16_SR, uint16_t, bf16_load, uint16_t, bf16_load, LK_S_BF16_SR)
        case LK_DT3(LK_BF16, LK_BF16, LK_F32): LK_CONV_LOOP(uint16_t, bf16_load, LK_S_BF16_RTN, uint16_t, bf16_load, float, LK_L_F32, LK_S_F32)
        case LK_DT3(LK_BF16, LK_BF16, LK_F32) | 1 << 24: LK_CONV_LOOP(uint16_t, bf16_load, LK_S_BF16_SR, uint16_t, bf16_load, float, LK_L_F32, LK_S_F32)
        case LK_DT3(LK_F32, LK_F32, LK_BF16): LK_CONV_LOOP(float, LK_L_F32, LK_S_F32, float, LK_L_F32, uint16_t, bf16_load, LK_S_BF16_RTN)
        case LK_DT3(LK_F32, LK_F32, LK_BF16) | 1 << 24: LK_CONV_LOOP(float, LK_L_F32, LK_S_F32, float, LK_L_F32, uint16_t, bf16_load, LK_S_BF16_SR)
        case LK_DT3(LK_F16, LK_F16, LK_F16): LK_CONV_LOOP(uint16_t, f16_load, LK_S_F16_RTN, uint16_t, f16_load, uint16_t, f16_load, LK_S_F16_RTN)
        case LK_DT3(LK_F16, LK_F16, LK_F16) | 1 << 24: LK_CONV_LOOP(uint16_t, f16_load, LK_S_F16_SR, uint16_t, f16_load, uint16_t, f16_load, LK_S_F16_SR)
        case LK_DT3(LK_F16, LK_F16, LK_F32): LK_CONV_LOOP(uint16_t, f16_load, LK_S_F16_RTN, uint16_t, f16_load, float, LK_L_F32, LK_S_F32)
        case LK_DT3(LK_F16, LK_F16, LK_F32) | 1 << 24: LK_CONV_LOOP(uint16_t, f16_load, LK_S_F16_SR, uint16_t, f16_load, float, LK_L_F32, LK_S_F32)
        case LK_DT3(LK_F32, LK_F32, LK_Q8): LK_Q8_LOOP(float, LK_L_F32, LK_S_F32, float, LK_L_F32)
        case LK_DT3(LK_F32, LK_F32, LK_Q8) | 1 << 24: LK_Q8_LOOP(float, LK_L_F32, LK_S_F32, float, LK_L_F32)
        case LK_DT3(LK_BF16, LK_BF16, LK_Q8): LK_Q8_LOOP(uint16_t, bf16_load, LK_S_BF16_RTN, uint16_t, bf16_load)
        case LK_DT3(LK_BF16, LK_BF16, LK_Q8) | 1 << 24: LK_Q8_LOOP(uint16_t, bf16_load, LK_S_BF16_SR, uint16_t, bf16_load)
        default: return 0;
    }
}

/* whether a tensor (row) of this job can take the single-pass loop */
static inline int LK_FN(fusable)(const lk_job *job, const int64_t *row, int native) {
    const int64_t dt = row[LK_DTYPES];
    return (job->flags & (LK_SKIP | LK_CAUTIOUS | LK_COUNT | LK_CAUTIOUS_DECAY)) == 0 && (dt & 0xFF) == native && ((dt >> 8) & 0xFF) == native &&
           ((dt >> 16) & 0xFF) == native &&
           (job->nprog == 0 || (job->nprog == 1 && lk_op_arities[job->prog[0]] == 1 && job->prog[2] == 0 && job->result == job->prog[1]));
}

/* whether the job is plain Lion (the sign kernel, no skip mode, no cautious masking or decay) */
static inline int LK_FN(sign_only)(const lk_job *job) {
    return (job->flags & (LK_SKIP | LK_CAUTIOUS | LK_COUNT | LK_CAUTIOUS_DECAY)) == 0 && job->nprog == 1 &&
           job->prog[0] == LK_OP_sign && job->prog[2] == 0 && job->result == job->prog[1];
}

LK_DEFINE_LOAD(float)
LK_DEFINE_LOAD(double)
LK_DEFINE_STORE(float)
LK_DEFINE_STORE(double)
LK_DEFINE_RUN(float, LK_CASE_F)
LK_DEFINE_RUN(double, LK_CASE_D)
LK_DEFINE_CHUNK(float, LK_F32)
LK_DEFINE_CHUNK(double, LK_F64)
LK_DEFINE_FUSED(float, LK_FUSED_F)
LK_DEFINE_FUSED(double, LK_FUSED_D)

/* ---- a worker's share of the chunks of all tensors ----------------------------------------------------------- */

static void LK_FN(work)(const lk_job *job, int64_t worker, int64_t nworkers) {
    int64_t total = 0;
    for (int64_t t = 0; t < job->ntensors; ++t) total += (job->rows[t * LK_ROW + LK_NUMEL] + LK_CHUNK - 1) / LK_CHUNK;
    const int64_t begin = (int64_t)((__int128)total * worker / nworkers);
    const int64_t end = (int64_t)((__int128)total * (worker + 1) / nworkers);
    int64_t offset = 0; /* chunks before tensor t */
    for (int64_t t = 0; t < job->ntensors && offset < end; ++t) {
        const int64_t *row = job->rows + t * LK_ROW;
        const double *drow = job->drows + t * LK_DROW;
        const int64_t numel = row[LK_NUMEL], nchunks = (numel + LK_CHUNK - 1) / LK_CHUNK;
        const int64_t c_lo = begin > offset ? begin - offset : 0;
        const int64_t c_hi = end - offset < nchunks ? end - offset : nchunks;
        const int f64 = (row[LK_DTYPES] & 0xFF) == LK_F64;
        int64_t agree = 0;
        const int64_t seg_off = c_lo * LK_CHUNK, seg_n = (c_hi * LK_CHUNK < numel ? c_hi * LK_CHUNK : numel) - seg_off;
        if (c_lo < c_hi && LK_FN(fusable)(job, row, f64 ? LK_F64 : LK_F32)) {
            if (f64) LK_FN(fused_double)(job, row, drow, seg_off, seg_n);
            else LK_FN(fused_float)(job, row, drow, seg_off, seg_n);
        } else if (c_lo < c_hi && !f64 && LK_FN(sign_only)(job) && LK_FN(conv_float)(job, row, drow, seg_off, seg_n)) {
        } else {
            for (int64_t c = c_lo; c < c_hi; ++c) {
                const int64_t off = c * LK_CHUNK, n = numel - off < LK_CHUNK ? numel - off : LK_CHUNK;
                agree += f64 ? LK_FN(chunk_double)(job, row, drow, off, n) : LK_FN(chunk_float)(job, row, drow, off, n);
            }
        }
        if ((job->flags & LK_COUNT) && c_lo < c_hi) job->counts[worker * job->ntensors + t] = agree;
        offset += nchunks;
    }
}

/* ---- the roof: the simplest loop with a Lion step's memory traffic (read p, g, m; write p, m; float32) -------------
   p += g * s; m += g * s over the worker's share of the elements of all tensors: what the memory system gives the
   step's stream pattern, measured by lionk bench in the same run. */
static void LK_FN(stream)(const int64_t *rows, int64_t ntensors, float s, int64_t worker, int64_t nworkers) {
    int64_t total = 0;
    for (int64_t t = 0; t < ntensors; ++t) total += rows[t * LK_ROW + LK_NUMEL];
    const int64_t begin = (int64_t)((__int128)total * worker / nworkers);
    const int64_t end = (int64_t)((__int128)total * (worker + 1) / nworkers);
    int64_t offset = 0;
    for (int64_t t = 0; t < ntensors && offset < end; offset += rows[t * LK_ROW + LK_NUMEL], ++t) {
        const int64_t *row = rows + t * LK_ROW, n = row[LK_NUMEL];
        const int64_t lo = begin > offset ? begin - offset : 0, hi = end - offset < n ? end - offset : n;
        float *restrict p = (float *)(intptr_t)row[LK_P], *restrict m = (float *)(intptr_t)row[LK_M];
        const float *restrict g = (const float *)(intptr_t)row[LK_G];
        for (int64_t b = lo; b < hi; b += 256) { /* streamed as the step streams: lines requested LK_AHEAD ahead */
            const int64_t e = hi - b < 256 ? hi : b + 256;
            for (int64_t j = b + LK_AHEAD; j < e + LK_AHEAD && j < hi; j += 16) {
                __builtin_prefetch(g + j, 0);
                __builtin_prefetch(m + j, 1);
                __builtin_prefetch(p + j, 1);
            }
            for (int64_t i = b; i < e; ++i) {
                p[i] += g[i] * s;
                m[i] += g[i] * s;
            }
        }
    }
}

#undef LK_FN
