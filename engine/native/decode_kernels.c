/* retserve's CPU kernels: a batch-invariant linear, and one RetNet layer's decode step.
 *
 * Every output element is one fixed chain of operations in a fixed order, whatever the number
 * of rows and whichever row tile computes it: a row's numbers never depend on the rest of the
 * batch, for every batch size, 1 included. Written with GCC vector extensions, so the same
 * source compiles to AVX-512, AVX2 or NEON (-O3 -march=native -ffp-contract=fast).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define LANES 16
#define BLOCK 64 /* output columns of one packed weight block: 4 vectors */
#define VECS (BLOCK / LANES)
#define TILE 6 /* rows of one tile: 6 x 4 accumulators */
#define PF_MIN_TILES 3 /* fewer tiles stream a block once: the hardware prefetcher does */

typedef float vf __attribute__((vector_size(LANES * 4), aligned(4)));
typedef int32_t vi __attribute__((vector_size(LANES * 4), aligned(4)));
typedef uint16_t vh __attribute__((vector_size(LANES * 2), aligned(2)));
typedef uint32_t vu __attribute__((vector_size(LANES * 4), aligned(4)));

static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline vf load_bf16(const uint16_t *p) {
    vh h; memcpy(&h, p, sizeof h);
    vu u = __builtin_convertvector(h, vu) << 16; /* bf16 is the top half of an fp32 */
    vf v; memcpy(&v, &u, sizeof v); return v;
}
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf splat(float a) { return (vf){0} + a; }
static inline float hsum(vf v) {
    float s = 0.0f;
    for (int i = 0; i < LANES; i++) s += v[i];
    return s;
}

/* ---- linear: y [M, N] = x [M, K] @ w, w packed as [ceil(N / BLOCK)][K][BLOCK] ---------- */

#define TILE_KERNEL(NAME, WTYPE, LOAD)                                                      \
static inline void NAME(int R, const float *x, int K, const WTYPE *w, float *y, int ldy,   \
                        int cols, const char *pf, int64_t lines) {                          \
    vf acc[TILE][VECS];                                                                     \
    int64_t per_k = (lines + K - 1) / K;                                                    \
    for (int r = 0; r < R; r++)                                                             \
        for (int j = 0; j < VECS; j++) acc[r][j] = (vf){0};                                 \
    for (int k = 0; k < K; k++) {                                                           \
        for (int64_t l = k * per_k; l < (k + 1) * per_k && l < lines; l++)                  \
            __builtin_prefetch(pf + l * 64, 0, 0);                                           \
        vf wv[VECS];                                                                        \
        for (int j = 0; j < VECS; j++) wv[j] = LOAD(w + (int64_t)k * BLOCK + j * LANES);    \
        for (int r = 0; r < R; r++) {                                                       \
            float a = x[(int64_t)r * K + k];                                                \
            for (int j = 0; j < VECS; j++) acc[r][j] += a * wv[j];                          \
        }                                                                                   \
    }                                                                                       \
    for (int r = 0; r < R; r++) {                                                           \
        if (cols == BLOCK) {                                                                \
            for (int j = 0; j < VECS; j++) store(y + (int64_t)r * ldy + j * LANES, acc[r][j]); \
        } else {                                                                            \
            float tmp[BLOCK];                                                               \
            for (int j = 0; j < VECS; j++) store(tmp + j * LANES, acc[r][j]);               \
            memcpy(y + (int64_t)r * ldy, tmp, cols * sizeof(float));                        \
        }                                                                                   \
    }                                                                                       \
}

TILE_KERNEL(tile_f32, float, load)
TILE_KERNEL(tile_bf16, uint16_t, load_bf16)

/* Constant row counts let the compiler keep the accumulators in registers. While a block's
 * tiles compute, the next block is prefetched (non-temporal), spread over them: its first
 * tile then finds it in cache instead of waiting on memory (8% of a 64-session step). */
#define LINEAR(NAME, WTYPE, TILEFN)                                                         \
static void NAME(const float *x, const WTYPE *w, float *y, int64_t M, int K, int N,        \
                 int threads) {                                                             \
    int blocks = (N + BLOCK - 1) / BLOCK;                                                   \
    int64_t tiles = (M + TILE - 1) / TILE;                                                  \
    int64_t lines = (int64_t)K * BLOCK * sizeof(WTYPE) / 64;                                \
    int64_t per_tile = (lines + tiles - 1) / tiles;                                         \
    _Pragma("omp parallel for num_threads(threads) schedule(static) if(threads > 1)")       \
    for (int b = 0; b < blocks; b++) {                                                      \
        const WTYPE *wb = w + (int64_t)b * K * BLOCK;                                       \
        const char *next = b + 1 < blocks && tiles >= PF_MIN_TILES                          \
            ? (const char *)(wb + (int64_t)K * BLOCK) : NULL;                               \
        int cols = N - b * BLOCK < BLOCK ? N - b * BLOCK : BLOCK;                           \
        float *yb = y + b * BLOCK;                                                          \
        for (int64_t t = 0; t < tiles; t++) {                                               \
            int64_t m = t * TILE, first = t * per_tile;                                     \
            int64_t n = !next || first >= lines ? 0 :                                       \
                (lines - first < per_tile ? lines - first : per_tile);                      \
            const char *p = next ? next + first * 64 : NULL;                                \
            const float *xm = x + m * K;                                                    \
            float *ym = yb + m * N;                                                         \
            switch (M - m < TILE ? M - m : TILE) {                                          \
            case 6: TILEFN(6, xm, K, wb, ym, N, cols, p, n); break;                         \
            case 5: TILEFN(5, xm, K, wb, ym, N, cols, p, n); break;                         \
            case 4: TILEFN(4, xm, K, wb, ym, N, cols, p, n); break;                         \
            case 3: TILEFN(3, xm, K, wb, ym, N, cols, p, n); break;                         \
            case 2: TILEFN(2, xm, K, wb, ym, N, cols, p, n); break;                         \
            default: TILEFN(1, xm, K, wb, ym, N, cols, p, n); break;                        \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
}

LINEAR(linear_f32, float, tile_f32)
LINEAR(linear_bf16, uint16_t, tile_bf16)

static void linear(const float *x, const void *w, int bf16, float *y, int64_t M, int K, int N,
                   int threads) {
    if (bf16) linear_bf16(x, (const uint16_t *)w, y, M, K, N, threads);
    else linear_f32(x, (const float *)w, y, M, K, N, threads);
}

void retserve_linear(const float *x, const void *w, int bf16, float *y, int64_t M, int K,
                     int N, int threads) {
    linear(x, w, bf16, y, M, K, N, threads);
}

/* ---- elementwise ------------------------------------------------------------------------ */

static inline vf vselect(vi mask, vf a, vf b) { /* mask lanes -1: a, 0: b */
    vi ai, bi; memcpy(&ai, &a, sizeof ai); memcpy(&bi, &b, sizeof bi);
    vi r = (ai & mask) | (bi & ~mask);
    vf out; memcpy(&out, &r, sizeof out); return out;
}

/* e^x: 2^n * e^r with |r| <= ln2 / 2, a degree-6 polynomial (Cephes' expf, ~1 ulp). */
static inline vf vexp(vf x) {
    x = vselect(x < -87.0f, splat(-87.0f), x);
    x = vselect(x > 88.0f, splat(88.0f), x);
    vf t = x * 1.44269504f + 0.5f;
    vf n = __builtin_convertvector(__builtin_convertvector(t, vi), vf); /* toward zero */
    n = vselect(n > t, n - 1.0f, n); /* floor */
    vf r = x - n * 0.693359375f + n * 2.12194440e-4f;
    vf p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
    vf scale; memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline vf vsilu(vf x) { return x / (1.0f + vexp(-x)); }
static inline float silu(float x) { return x / (1.0f + expf(-x)); }

static void silu_inplace(float *x, int64_t n) {
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) store(x + i, vsilu(load(x + i)));
    for (; i < n; i++) x[i] = silu(x[i]);
}

static inline float gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

/* erf by Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7): gelu(x) = x/2 (1 + erf(x/sqrt 2)) */
static inline vf vgelu(vf x) {
    vf z = x * 0.70710678118654752f;
    vi negative = z < 0.0f;
    vf a = vselect(negative, -z, z);
    vf t = 1.0f / (1.0f + 0.3275911f * a);
    vf poly = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t
               + 0.254829592f) * t;
    vf erf = 1.0f - poly * vexp(-a * a);
    return 0.5f * x * (1.0f + vselect(negative, -erf, erf));
}

/* out = act(gate) * up over n values (out may be up); act: gelu or SiLU */
static void glu(const float *gate, const float *up, float *out, int64_t n, int use_gelu) {
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        vf g = load(gate + i);
        store(out + i, (use_gelu ? vgelu(g) : vsilu(g)) * load(up + i));
    }
    for (; i < n; i++)
        out[i] = (use_gelu ? gelu(gate[i]) : silu(gate[i])) * up[i];
}

/* y = x / rms(x) * w over dim (w NULL: no weight) */
static void rms_norm(const float *x, const float *w, float *y, int dim, float eps) {
    vf acc = (vf){0};
    float tail = 0.0f;
    int i = 0;
    for (; i + LANES <= dim; i += LANES) { vf v = load(x + i); acc += v * v; }
    for (; i < dim; i++) tail += x[i] * x[i];
    float scale = 1.0f / sqrtf((hsum(acc) + tail) / dim + eps);
    for (i = 0; i < dim; i++) y[i] = w ? x[i] * scale * w[i] : x[i] * scale;
}

/* ---- one layer's decode step ------------------------------------------------------------ */

typedef struct {
    int hidden, heads, head_qk, head_v, ffn, conv_kernel; /* conv_kernel 0: no convolution */
    int rope;      /* 0: torchscale's interleaved pairs, 1: rotate-half */
    int group_norm; /* head norm: 0 RMS (head_w optional, [head_v]), 1 GroupNorm ([v] w, b) */
    int gelu;      /* FFN: 0 swish, 1 gelu */
    int conv_silu;
    int bf16;      /* packed weights' dtype */
    float norm_eps, head_eps;
    const float *attn_norm, *ffn_norm;       /* [hidden] */
    const void *qkvg, *o_proj, *gate_up, *down; /* packed */
    const float *conv_w;                     /* [conv_kernel, channels], tap-major */
    const float *head_w, *head_b;
} Layer;

#define RET_VECS 8 /* value columns a pass keeps in registers: 128 */

/* S = decay * S + k^T (inject * v); o = q S: one pass over one head's state [dk, dv], row
 * after row (sequential memory, the prefetcher's best case). */
static void retention_head(float *restrict s, const float *restrict q, const float *restrict k,
                           const float *restrict v, float decay, float inject,
                           float *restrict o, int dk, int dv) {
    int j0 = 0;
    while (dv - j0 >= LANES) {
        int n = (dv - j0) / LANES < RET_VECS ? (dv - j0) / LANES : RET_VECS;
        vf vv[RET_VECS], out[RET_VECS];
        for (int j = 0; j < n; j++) { vv[j] = load(v + j0 + j * LANES) * inject; out[j] = (vf){0}; }
        for (int i = 0; i < dk; i++) {
            float *row = s + (int64_t)i * dv + j0;
            for (int j = 0; j < n; j++) {
                vf r = load(row + j * LANES) * decay;
                r += k[i] * vv[j];
                store(row + j * LANES, r);
                out[j] += q[i] * r;
            }
        }
        for (int j = 0; j < n; j++) store(o + j0 + j * LANES, out[j]);
        j0 += n * LANES;
    }
    for (int j = j0; j < dv; j++) {
        float vv = v[j] * inject, out = 0.0f;
        for (int i = 0; i < dk; i++) {
            float r = s[(int64_t)i * dv + j] * decay;
            r = fmaf(k[i], vv, r);
            s[(int64_t)i * dv + j] = r;
            out = fmaf(q[i], r, out);
        }
        o[j] = out;
    }
}

/* rot: [2][dk / 2][2] (cos, sin) for q then k, scales folded in. */
static void rotate(float *x, const float *rot, int heads, int dk, int rope) {
    int half = dk / 2;
    for (int h = 0; h < heads; h++) {
        float *xh = x + h * dk;
        for (int i = 0; i < half; i++) {
            float c = rot[2 * i], s = rot[2 * i + 1];
            int a = rope ? i : 2 * i, b = rope ? i + half : 2 * i + 1;
            float xa = xh[a], xb = xh[b];
            xh[a] = xa * c - xb * s;
            xh[b] = xa * s + xb * c;
        }
    }
}

/* Causal depthwise convolution of one token: x [channels] in place, state [kernel - 1][channels]
 * (oldest first) shifted; taps w [kernel][channels]. */
static void conv_step(float *restrict x, float *restrict state, const float *restrict w,
                      int kernel, int channels, int silu) {
    int64_t C = channels, last = kernel - 1;
    int64_t c = 0;
    for (; c + LANES <= C; c += LANES) {
        vf xv = load(x + c), y = load(state + c) * load(w + c);
        for (int64_t j = 1; j < last; j++) y += load(state + j * C + c) * load(w + j * C + c);
        y += xv * load(w + last * C + c);
        for (int64_t j = 0; j + 1 < last; j++) store(state + j * C + c, load(state + (j + 1) * C + c));
        store(state + (last - 1) * C + c, xv);
        store(x + c, y);
    }
    for (; c < C; c++) {
        float xv = x[c], y = state[c] * w[c];
        for (int64_t j = 1; j < last; j++) y = fmaf(state[j * C + c], w[j * C + c], y);
        y = fmaf(xv, w[last * C + c], y);
        for (int64_t j = 0; j + 1 < last; j++) state[j * C + c] = state[(j + 1) * C + c];
        state[(last - 1) * C + c] = xv;
        x[c] = y;
    }
    if (silu) silu_inplace(x, channels);
}

static void head_norm(const Layer *L, float *o) {
    int dv = L->head_v;
    for (int h = 0; h < L->heads; h++) {
        float *oh = o + h * dv;
        if (!L->group_norm) { rms_norm(oh, L->head_w, oh, dv, L->head_eps); continue; }
        float mean = 0.0f, var = 0.0f;
        for (int j = 0; j < dv; j++) mean += oh[j];
        mean /= dv;
        for (int j = 0; j < dv; j++) { oh[j] -= mean; var += oh[j] * oh[j]; }
        float scale = 1.0f / sqrtf(var / dv + L->head_eps);
        for (int j = 0; j < dv; j++)
            oh[j] = oh[j] * scale * L->head_w[h * dv + j] + L->head_b[h * dv + j];
    }
}

/* Scratch floats per row a layer needs (see the layout below). */
int64_t retserve_layer_scratch(const Layer *L) {
    int64_t qk = (int64_t)L->heads * L->head_qk, v = (int64_t)L->heads * L->head_v;
    return L->hidden + (2 * qk + 2 * v) + v + 2 * (int64_t)L->ffn + L->ffn;
}

/* x [B, hidden] (the residual stream) through one layer, states updated in place:
 * state [B, heads, head_qk, head_v], conv_state [B, conv_kernel - 1, channels],
 * rot [B, 2, head_qk / 2, 2], decay / inject [B, heads] (inject NULL: 1). */
void retserve_decode_layer(const Layer *L, float *x, int64_t B, float *state,
                           float *conv_state, const float *rot, const float *decay,
                           const float *inject, float *scratch, int threads) {
    int D = L->hidden, H = L->heads, dk = L->head_qk, dv = L->head_v, F = L->ffn;
    int qk = H * dk, v = H * dv, P = 2 * qk + 2 * v, C = 2 * qk + v;
    float *h = scratch, *p = h + B * D, *o = p + B * P, *gu = o + B * v, *a = gu + B * 2 * F;

    for (int64_t b = 0; b < B; b++) rms_norm(x + b * D, L->attn_norm, h + b * D, D, L->norm_eps);
    linear(h, L->qkvg, L->bf16, p, B, D, P, threads);
    _Pragma("omp parallel for num_threads(threads) schedule(static) if(threads > 1)")
    for (int64_t b = 0; b < B; b++) {
        float *pb = p + b * P, *ob = o + b * v;
        if (L->conv_kernel)
            conv_step(pb, conv_state + b * (L->conv_kernel - 1) * C, L->conv_w, L->conv_kernel,
                      C, L->conv_silu);
        rotate(pb, rot + b * 2 * dk, H, dk, L->rope);
        rotate(pb + qk, rot + b * 2 * dk + dk, H, dk, L->rope);
        for (int hh = 0; hh < H; hh++)
            retention_head(state + (b * H + hh) * (int64_t)dk * dv, pb + hh * dk,
                           pb + qk + hh * dk, pb + 2 * qk + hh * dv, decay[b * H + hh],
                           inject ? inject[b * H + hh] : 1.0f, ob + hh * dv, dk, dv);
        head_norm(L, ob);
        glu(pb + C, ob, ob, v, 0); /* swish(g) * norm(o) */
    }
    linear(o, L->o_proj, L->bf16, h, B, v, D, threads);
    for (int64_t i = 0; i < B * D; i++) x[i] += h[i];

    for (int64_t b = 0; b < B; b++) rms_norm(x + b * D, L->ffn_norm, h + b * D, D, L->norm_eps);
    linear(h, L->gate_up, L->bf16, gu, B, D, 2 * F, threads);
    for (int64_t b = 0; b < B; b++) {
        float *gate = gu + b * 2 * F;
        glu(gate, gate + F, a + b * F, F, L->gelu);
    }
    linear(a, L->down, L->bf16, h, B, F, D, threads);
    for (int64_t i = 0; i < B * D; i++) x[i] += h[i];
}
