// cuda/trainable.cu — the trainable family on CUDA (issue 14; card nsa;
// contracts in sparselab.h). trainable.compress, nsa, fsa, sparsek and
// routing run one CTA of 32 lanes per row (see each kernel); nsa keeps the
// selected block list in its row of `blocks` (no per-lane arrays).
// Compiled with `make CUDA=1`; run under the CUDA simulator by
// `make test-cudasim`.
#include "dialect.cuh"
#include "cuda.cuh"
#include "stage.cuh"
#include "trainable_select.h"

#include <math.h>
#include <string.h>

#include <vector>

namespace {

// trainable.compress: one CTA of 32 lanes per (head, window) (issue 14,
// session 3c; was one thread per output element). Per window position r the
// lanes stage x[r] + pe[r] in shared memory (float64), then each lane adds
// its channels' terms into a float64 accumulator row in shared memory.
__global__ void compress_kernel(const float *x, const float *w, const float *pe, float *y, int H, int N, int D,
                                int C, int l, int s, int mode)
{
    SL_DYN_SMEM(double, smem); // row[D], acc[D]
    double *row = smem, *acc = smem + D;
    int item = blockIdx.x, lane = threadIdx.x;
    int i = item % C, h = item / C;
    (void)H;
    for (int c = lane; c < D; c += 32)
        acc[c] = 0;
    for (int r = 0; r < l && (long long)i * s + r < N; r++) {
        const float *xr = x + ((size_t)h * N + (size_t)i * s + r) * D;
        __syncthreads();
        for (int e = lane; e < D; e += 32)
            row[e] = (double)xr[e] + (pe ? pe[((size_t)h * l + r) * D + e] : 0.f);
        __syncthreads();
        for (int c = lane; c < D; c += 32) {
            if (mode == 0) {
                acc[c] += row[c];
                continue;
            }
            const float *wr = w + ((size_t)h * l + r) * D * D + c;
            double sum = 0;
            for (int e = 0; e < D; e++)
                sum += row[e] * wr[(size_t)e * D];
            acc[c] += sum;
        }
    }
    float *yo = y + (size_t)item * D;
    for (int c = lane; c < D; c += 32)
        yo[c] = (float)(mode == 0 ? acc[c] / l : acc[c]);
}

__device__ float dotf(const float *a, const float *b, int D)
{
    float s = 0.f;
    for (int e = 0; e < D; e++)
        s += a[e] * b[e];
    return s;
}

__device__ int in_list(const int *list, int cnt, int j)
{
    for (int c = 0; c < cnt; c++)
        if (list[c] == j)
            return 1;
    return 0;
}

// Sum over the 32 lanes of one double (red: 32 doubles of shared memory).
__device__ double sk_lane_sum(double x, double *red)
{
    __syncthreads();
    red[threadIdx.x] = x;
    __syncthreads();
    double t = 0;
    for (int i = 0; i < 32; i++)
        t += red[i];
    return t;
}

__device__ float sk_lane_max(float x, double *red)
{
    __syncthreads();
    red[threadIdx.x] = x;
    __syncthreads();
    float t = -INFINITY;
    for (int i = 0; i < 32; i++)
        t = fmaxf(t, (float)red[i]);
    return t;
}

// Adds (put = 0) or writes (put = 1) the 32 lanes' accumulator rows into
// o[0..D), each lane summing its channels; syncs before and after.
__device__ void lane_rows_out(const float *acc_all, float *o, int D, int put)
{
    __syncthreads();
    for (int e = threadIdx.x; e < D; e += 32) {
        float sum = 0.f;
        for (int l2 = 0; l2 < 32; l2++)
            sum += acc_all[(size_t)l2 * D + e];
        o[e] = put ? sum : o[e] + sum;
    }
    __syncthreads();
}

struct nsa_args {
    const float *q, *k, *v, *kc, *vc, *gc, *gs, *gw;
    float *o, *lse, *imp;
    int *blocks;
    int Hq, Hkv, Nq, Nk, Nc, D, l, s, bs, n, init, local, window;
    float scale;
};

// trainable.nsa: one CTA of 32 lanes per (kv head, query row) (issue 14,
// session 3c; was one thread per row). Per query head of the group:
// compressed softmax with the lanes splitting the visible compressed tokens
// (max and sum reduced in shared memory, each lane's P·V in its own row of
// dynamic shared memory); the importance with the lanes splitting the key
// blocks (each block's sum in the same order as before: heads, then
// compressed tokens ascending). Selection: forced blocks by lane 0, then each
// pick an argmax reduced across the lanes (ties to the lower block). The
// selected-block and window softmaxes in three passes over the selected
// blocks' keys and then the window keys outside them, split across lanes.
__global__ void nsa_kernel(nsa_args a)
{
    SL_DYN_SMEM(float, acc_all); // 32 rows of D floats
    SL_SHARED(double, red, [32]);
    SL_SHARED(int, redi, [32]);
    SL_SHARED(int, shcnt, [1]);
    int item = blockIdx.x, lane = threadIdx.x;
    int kv = item / a.Nq, t = item % a.Nq, g = a.Hq / a.Hkv;
    int nb = (a.Nk + a.bs - 1) / a.bs, pos = a.Nk - a.Nq + t, jq = pos / a.bs;
    const float *K = a.k + (size_t)kv * a.Nk * a.D, *V = a.v + (size_t)kv * a.Nk * a.D;
    const float *KC = a.kc + (size_t)kv * a.Nc * a.D, *VC = a.vc + (size_t)kv * a.Nc * a.D;
    float *imp = a.imp + ((size_t)kv * a.Nq + t) * nb;
    int *brow = a.blocks + ((size_t)kv * a.Nq + t) * a.n;
    float *acc = acc_all + (size_t)lane * a.D;
    int nvis = pos + 1 >= a.l ? (pos + 1 - a.l) / a.s + 1 : 0;
    if (nvis > a.Nc)
        nvis = a.Nc;
    for (int j = lane; j < nb; j += 32)
        imp[j] = 0.f;
    for (int hh = 0; hh < g; hh++) {
        int h = kv * g + hh;
        const float *qv = a.q + ((size_t)h * a.Nq + t) * a.D;
        float *o = a.o + ((size_t)h * a.Nq + t) * a.D;
        for (int e = 0; e < a.D; e++)
            acc[e] = 0.f;
        float m = -INFINITY, z = 0.f;
        if (nvis > 0) {
            float part = -INFINITY;
            for (int i = lane; i < nvis; i += 32)
                part = fmaxf(part, dotf(qv, KC + (size_t)i * a.D, a.D) * a.scale);
            m = sk_lane_max(part, red);
            part = 0.f;
            for (int i = lane; i < nvis; i += 32)
                part += expf(dotf(qv, KC + (size_t)i * a.D, a.D) * a.scale - m);
            z = (float)sk_lane_sum((double)part, red);
            float gc = a.gc[(size_t)h * a.Nq + t];
            for (int i = lane; i < nvis; i += 32) {
                float pr = expf(dotf(qv, KC + (size_t)i * a.D, a.D) * a.scale - m) / z;
                for (int e = 0; e < a.D; e++)
                    acc[e] += gc * pr * VC[(size_t)i * a.D + e];
            }
            // importance: block j gathers the tokens whose window meets it
            for (int j = lane; j < nb; j += 32) {
                int ilo = j * a.bs - a.l + 1, ihi = ((j + 1) * a.bs - 1) / a.s;
                ilo = ilo <= 0 ? 0 : (ilo + a.s - 1) / a.s;
                for (int i = ilo; i <= ihi && i < nvis; i++) {
                    int t0 = i * a.s, t1 = i * a.s + a.l;
                    int lo = max(t0, j * a.bs), hi = min(t1, (j + 1) * a.bs);
                    if (hi <= lo)
                        continue;
                    float pr = expf(dotf(qv, KC + (size_t)i * a.D, a.D) * a.scale - m) / z;
                    imp[j] += pr * (float)(hi - lo) / (float)a.s;
                }
            }
        }
        lane_rows_out(acc_all, o, a.D, 1);
    }
    // selection into brow: forced blocks, then the largest importance
    __syncthreads();
    if (lane == 0) {
        int cnt = 0;
        for (int j = 0; j <= jq; j++)
            if (j < a.init || j > jq - a.local)
                brow[cnt++] = j;
        shcnt[0] = cnt;
    }
    __syncthreads();
    int cnt = shcnt[0], want = min(a.n, jq + 1);
    while (cnt < want) {
        int best = -1;
        for (int j = lane; j <= jq; j += 32)
            if (!in_list(brow, cnt, j) && (best < 0 || imp[j] > imp[best]))
                best = j;
        __syncthreads();
        redi[lane] = best;
        __syncthreads();
        best = -1;
        for (int l2 = 0; l2 < 32; l2++) {
            int j = redi[l2];
            if (j >= 0 && (best < 0 || imp[j] > imp[best] || (imp[j] == imp[best] && j < best)))
                best = j;
        }
        __syncthreads();
        if (lane == 0)
            brow[cnt] = best;
        __syncthreads();
        cnt++;
    }
    if (lane == 0) {
        for (int x = 1; x < cnt; x++)
            for (int y = x; y > 0 && brow[y - 1] > brow[y]; y--) {
                int tmp = brow[y];
                brow[y] = brow[y - 1];
                brow[y - 1] = tmp;
            }
        for (int c = cnt; c < a.n; c++)
            brow[c] = -1;
    }
    __syncthreads();
    int w0 = max(pos - a.window + 1, 0);
    for (int hh = 0; hh < g; hh++) {
        int h = kv * g + hh;
        const float *qv = a.q + ((size_t)h * a.Nq + t) * a.D;
        float *o = a.o + ((size_t)h * a.Nq + t) * a.D;
        float ms = -INFINITY, mw = -INFINITY, mu = -INFINITY, zs = 0.f, zw = 0.f, zu = 0.f;
        for (int e = 0; e < a.D; e++)
            acc[e] = 0.f;
        for (int pass = 0; pass < 3; pass++) {
            float fs = pass == 2 && zs > 0.f ? a.gs[(size_t)h * a.Nq + t] / zs : 0.f;
            float fw = pass == 2 && zw > 0.f ? a.gw[(size_t)h * a.Nq + t] / zw : 0.f;
            float ps = pass == 0 ? -INFINITY : 0.f, pw = ps, pu = ps;
            // keys of the selected blocks, then window keys outside them
            for (int part = 0; part < 2; part++) {
                int nseg = part == 0 ? cnt : 1;
                for (int c = 0; c < nseg; c++) {
                    int k0 = part == 0 ? brow[c] * a.bs : w0;
                    int k1 = part == 0 ? min((brow[c] + 1) * a.bs, pos + 1) : pos + 1;
                    for (int kk = k0 + lane; kk < k1; kk += 32) {
                        int sel = part == 0, win = kk >= w0;
                        if (!sel && in_list(brow, cnt, kk / a.bs))
                            continue;
                        float sc = dotf(qv, K + (size_t)kk * a.D, a.D) * a.scale;
                        if (pass == 0) {
                            if (sel)
                                ps = fmaxf(ps, sc);
                            if (win)
                                pw = fmaxf(pw, sc);
                            pu = fmaxf(pu, sc);
                        } else if (pass == 1) {
                            if (sel)
                                ps += expf(sc - ms);
                            if (win)
                                pw += expf(sc - mw);
                            pu += expf(sc - mu);
                        } else {
                            float wgt = (sel ? fs * expf(sc - ms) : 0.f) + (win ? fw * expf(sc - mw) : 0.f);
                            for (int e = 0; e < a.D; e++)
                                acc[e] += wgt * V[(size_t)kk * a.D + e];
                        }
                    }
                }
            }
            if (pass == 0) {
                ms = sk_lane_max(ps, red);
                mw = sk_lane_max(pw, red);
                mu = sk_lane_max(pu, red);
            } else if (pass == 1) {
                zs = (float)sk_lane_sum((double)ps, red);
                zw = (float)sk_lane_sum((double)pw, red);
                zu = (float)sk_lane_sum((double)pu, red);
            }
        }
        lane_rows_out(acc_all, o, a.D, 0);
        if (lane == 0)
            a.lse[(size_t)h * a.Nq + t] = mu == -INFINITY ? -INFINITY : mu + logf(zu);
    }
}

// trainable.sparsek: one warp per (kv head, query row) (issue 14, session 3;
// was one thread per row). A key's membership in S is its rank among the
// prefix (O(m) per key; the lanes split the keys, so O(m^2 / 32) per row);
// tau by the same 200 float64 bisection steps as ref, the lanes summing the
// capped-simplex mass in shared memory; the softmax in three passes over
// the row's keys split across the lanes (max and sum reduced in shared
// memory, each lane's P·V in its own row of dynamic shared memory, summed
// per channel at the end).
struct sparsek_args {
    const float *q, *k, *v, *u;
    float *o, *lse;
    int *count;
    int Hq, Hkv, Nq, Nk, D, kb, window, weight, bias;
    float scale;
};

__device__ int sk_selected(const float *u, int m, int kk, int j)
{
    int rank = 0;
    for (int i = 0; i < m && rank < kk; i++)
        rank += u[i] > u[j] || (u[i] == u[j] && i < j);
    return rank < kk;
}

__global__ void sparsek_kernel(sparsek_args a)
{
    SL_DYN_SMEM(float, acc_all); // 32 rows of D floats
    SL_SHARED(double, red, [32]);
    int item = blockIdx.x, lane = threadIdx.x;
    int kv = item / a.Nq, t = item % a.Nq, g = a.Hq / a.Hkv;
    int pos = a.Nk - a.Nq + t, m = pos + 1, kk = min(a.kb, m);
    const float *u = a.u + (size_t)kv * a.Nk;
    const float *K = a.k + (size_t)kv * a.Nk * a.D, *V = a.v + (size_t)kv * a.Nk * a.D;
    float *acc = acc_all + (size_t)lane * a.D;
    double tau = 0;
    if (a.weight && kk > 0 && kk < m) {
        double lo = INFINITY, hi = -INFINITY;
        for (int j = 0; j < m; j++) {
            lo = fmin(lo, (double)u[j] - 1.0);
            hi = fmax(hi, (double)u[j]);
        }
        for (int it = 0; it < 200; it++) {
            double mid = 0.5 * (lo + hi), f = 0;
            for (int j = lane; j < m; j += 32) {
                double x = (double)u[j] - mid;
                f += x <= 0 ? 0 : x >= 1 ? 1 : x;
            }
            if (sk_lane_sum(f, red) > kk)
                lo = mid;
            else
                hi = mid;
        }
        tau = 0.5 * (lo + hi);
    }
    int cnt = 0;
    for (int j = lane; j < m; j += 32)
        cnt += sk_selected(u, m, kk, j) || j > pos - a.window;
    cnt = (int)sk_lane_sum((double)cnt, red);
    if (lane == 0)
        a.count[item] = cnt;
    for (int hh = 0; hh < g; hh++) {
        int h = kv * g + hh;
        const float *qv = a.q + ((size_t)h * a.Nq + t) * a.D;
        float mx = -INFINITY, z = 0.f;
        for (int e = 0; e < a.D; e++)
            acc[e] = 0.f;
        for (int pass = 0; pass < 3; pass++) {
            float part = pass == 0 ? -INFINITY : 0.f;
            for (int j = lane; j < m; j += 32) {
                int sel = sk_selected(u, m, kk, j);
                if (!sel && j <= pos - a.window)
                    continue;
                float w = 1.f;
                if (sel && a.weight && kk < m) {
                    double x = (double)u[j] - tau;
                    w = (float)(x <= 0 ? 0 : x >= 1 ? 1 : x);
                }
                float sc = dotf(qv, K + (size_t)j * a.D, a.D) * w * a.scale + (a.bias ? u[j] : 0.f);
                if (pass == 0) {
                    part = fmaxf(part, sc);
                } else if (pass == 1) {
                    part += expf(sc - mx);
                } else {
                    float pr = expf(sc - mx) / z * w;
                    for (int e = 0; e < a.D; e++)
                        acc[e] += pr * V[(size_t)j * a.D + e];
                }
            }
            if (pass == 0)
                mx = sk_lane_max(part, red);
            else if (pass == 1)
                z = (float)sk_lane_sum((double)part, red);
        }
        __syncthreads();
        float *o = a.o + ((size_t)h * a.Nq + t) * a.D;
        for (int e = lane; e < a.D; e += 32) {
            float sum = 0.f;
            for (int l2 = 0; l2 < 32; l2++)
                sum += acc_all[(size_t)l2 * a.D + e];
            o[e] = sum;
        }
        __syncthreads();
        if (lane == 0)
            a.lse[(size_t)h * a.Nq + t] = z > 0.f ? mx + logf(z) : -INFINITY;
    }
}

// trainable.fsa in FSA's order (issue 14, session 3c; was one thread per
// block and per row): fsa_block_kernel, one CTA of 32 lanes per (kv head,
// key block b), walks the rows that selected b (the inverse index, found by
// scanning each row's slots) and writes per (query head, row, slot) the
// partial (max, sum, O), the lanes splitting the block's keys (max and sum
// reduced in shared memory, P·V in per-lane rows of dynamic shared memory);
// fsa_merge_kernel, one CTA of 32 lanes per (query head, row): the slots'
// maximum reduced across lanes, then each lane merges its channels through
// the slots' log-sum-exps.
struct fsa_args {
    const float *q, *k, *v, *gate, *base;
    const int *blocks;
    float *o, *lse, *part;
    int Hq, Hkv, Nq, Nk, D, n, bs, nb;
    float scale;
};

__global__ void fsa_block_kernel(fsa_args a)
{
    SL_DYN_SMEM(float, acc_all); // 32 rows of D floats
    SL_SHARED(double, red, [32]);
    int item = blockIdx.x, lane = threadIdx.x;
    int kv = item / a.nb, b = item % a.nb, g = a.Hq / a.Hkv;
    const float *K = a.k + (size_t)kv * a.Nk * a.D, *V = a.v + (size_t)kv * a.Nk * a.D;
    float *acc = acc_all + (size_t)lane * a.D;
    for (int t = 0; t < a.Nq; t++) {
        const int *row = a.blocks + ((size_t)kv * a.Nq + t) * a.n;
        int pos = a.Nk - a.Nq + t;
        for (int x = 0; x < a.n; x++) {
            if (row[x] != b)
                continue;
            int k0 = b * a.bs, k1 = min(min((b + 1) * a.bs, pos + 1), a.Nk);
            for (int hh = 0; hh < g; hh++) {
                int h = kv * g + hh;
                const float *qv = a.q + ((size_t)h * a.Nq + t) * a.D;
                float *slot = a.part + (((size_t)h * a.Nq + t) * a.n + x) * (a.D + 2);
                for (int e = 0; e < a.D; e++)
                    acc[e] = 0.f;
                float part = -INFINITY;
                for (int j = k0 + lane; j < k1; j += 32)
                    part = fmaxf(part, dotf(qv, K + (size_t)j * a.D, a.D) * a.scale);
                float m = sk_lane_max(part, red);
                part = 0.f;
                for (int j = k0 + lane; j < k1; j += 32) {
                    float w = expf(dotf(qv, K + (size_t)j * a.D, a.D) * a.scale - m);
                    part += w;
                    for (int e = 0; e < a.D; e++)
                        acc[e] += w * V[(size_t)j * a.D + e];
                }
                float l = (float)sk_lane_sum((double)part, red);
                lane_rows_out(acc_all, slot + 2, a.D, 1);
                if (lane == 0)
                    slot[0] = m, slot[1] = l;
            }
        }
    }
}

__global__ void fsa_merge_kernel(fsa_args a)
{
    SL_SHARED(double, red, [32]);
    int item = blockIdx.x, lane = threadIdx.x;
    int h = item / a.Nq, t = item % a.Nq, kv = h / (a.Hq / a.Hkv);
    const int *row = a.blocks + ((size_t)kv * a.Nq + t) * a.n;
    const float *slots = a.part + (size_t)item * a.n * (a.D + 2);
    float part = -INFINITY;
    for (int x = lane; x < a.n; x += 32)
        if (row[x] >= 0)
            part = fmaxf(part, slots[(size_t)x * (a.D + 2)]);
    float m = sk_lane_max(part, red), l = 0.f;
    if (m > -INFINITY)
        for (int x = 0; x < a.n; x++) {
            const float *s = slots + (size_t)x * (a.D + 2);
            if (row[x] >= 0 && s[0] != -INFINITY)
                l += s[1] * expf(s[0] - m);
        }
    float gate = a.gate ? a.gate[item] : 1.f;
    float *o = a.o + (size_t)item * a.D;
    for (int e = lane; e < a.D; e += 32) {
        float sum = 0.f;
        if (m > -INFINITY)
            for (int x = 0; x < a.n; x++) {
                const float *s = slots + (size_t)x * (a.D + 2);
                if (row[x] >= 0 && s[0] != -INFINITY)
                    sum += expf(s[0] - m) * s[2 + e];
            }
        o[e] = (a.base ? a.base[(size_t)item * a.D + e] : 0.f) + (l > 0.f ? gate * sum / l : 0.f);
    }
    if (lane == 0)
        a.lse[item] = l > 0.f ? m + logf(l) : -INFINITY;
}

// trainable.routing: one warp per (query head, row) (issue 14, session 3;
// was one thread per row); it finds the clusters holding the row by
// scanning qsel (O(C W) per row), runs each cluster's softmax in three
// passes over the cluster's keys split across the lanes (max and sum reduced
// in shared memory, each lane's P·V in its own row of dynamic shared memory),
// and the union's log-sum-exp over keys counted once (a key also held by an
// earlier cluster of the row is skipped by rescanning those clusters).
struct routing_args {
    const float *q, *k, *v;
    const int *qsel, *ksel;
    float *o, *lse;
    int *count;
    int Hq, Hkv, Nq, Nk, D, C, W;
    float scale;
};

__global__ void routing_kernel(routing_args a)
{
    SL_DYN_SMEM(float, acc_all); // 32 rows of D floats
    SL_SHARED(double, red, [32]);
    int item = blockIdx.x, lane = threadIdx.x;
    int h = item / a.Nq, t = item % a.Nq, kv = h / (a.Hq / a.Hkv), pos = a.Nk - a.Nq + t;
    const float *qv = a.q + (size_t)item * a.D;
    const float *K = a.k + (size_t)kv * a.Nk * a.D, *V = a.v + (size_t)kv * a.Nk * a.D;
    float *acc = acc_all + (size_t)lane * a.D;
    for (int e = 0; e < a.D; e++)
        acc[e] = 0.f;
    int used = 0, cnt = 0;
    float um = -INFINITY, uz = 0.f;
    for (int pass = 0; pass < 2; pass++)
        for (int c = 0; c < a.C; c++) {
            if (!in_list(a.qsel + ((size_t)h * a.C + c) * a.W, a.W, t))
                continue;
            const int *keys = a.ksel + ((size_t)h * a.C + c) * a.W;
            // the union: keys not held by an earlier cluster of this row
            float part = pass == 0 ? -INFINITY : 0.f;
            for (int x = lane; x < a.W; x += 32) {
                int j = keys[x];
                if (j < 0 || j > pos)
                    continue;
                int seen = 0;
                for (int c2 = 0; c2 < c && !seen; c2++)
                    seen = in_list(a.qsel + ((size_t)h * a.C + c2) * a.W, a.W, t) &&
                           in_list(a.ksel + ((size_t)h * a.C + c2) * a.W, a.W, j);
                if (seen)
                    continue;
                float sc = dotf(qv, K + (size_t)j * a.D, a.D) * a.scale;
                if (pass == 0)
                    part = fmaxf(part, sc);
                else
                    part += expf(sc - um);
            }
            if (pass == 0) {
                um = fmaxf(um, sk_lane_max(part, red));
                continue;
            }
            uz += (float)sk_lane_sum((double)part, red);
            cnt++;
            float m = -INFINITY, z = 0.f;
            for (int x = lane; x < a.W; x += 32)
                if (keys[x] >= 0 && keys[x] <= pos)
                    m = fmaxf(m, dotf(qv, K + (size_t)keys[x] * a.D, a.D) * a.scale);
            m = sk_lane_max(m, red);
            if (m == -INFINITY)
                continue;
            for (int x = lane; x < a.W; x += 32)
                if (keys[x] >= 0 && keys[x] <= pos)
                    z += expf(dotf(qv, K + (size_t)keys[x] * a.D, a.D) * a.scale - m);
            z = (float)sk_lane_sum((double)z, red);
            for (int x = lane; x < a.W; x += 32)
                if (keys[x] >= 0 && keys[x] <= pos) {
                    float w = expf(dotf(qv, K + (size_t)keys[x] * a.D, a.D) * a.scale - m) / z;
                    for (int e = 0; e < a.D; e++)
                        acc[e] += w * V[(size_t)keys[x] * a.D + e];
                }
            used++;
        }
    __syncthreads();
    float *o = a.o + (size_t)item * a.D;
    for (int e = lane; e < a.D; e += 32) {
        float sum = 0.f;
        for (int l2 = 0; l2 < 32; l2++)
            sum += acc_all[(size_t)l2 * a.D + e];
        o[e] = used > 0 ? sum / (float)used : 0.f;
    }
    if (lane == 0) {
        a.lse[item] = um == -INFINITY ? -INFINITY : um + logf(uz);
        a.count[item] = cnt;
    }
}


// ---- trainable.select (issue 14, session 3) ----
// Features as float64 (one thread per (head, row, channel)); then one warp
// per query row: the row's entry scores are recomputed per pass, the lanes
// count in shared memory; the exact top-take cut is found by bisection over
// the scores' ordered 64-bit keys (64 counting passes, no per-row arrays),
// then the kept keys are written ascending by a shared-memory prefix per
// chunk of 32 keys (ties at the cut: the lower keys first). Mode 1's mean
// and variance are summed by lane 0 in key order (the same rounding as ref).
// Rows write padded lists into scratch; one thread prefixes the counts; one
// thread per row compacts into col.

#if defined(__CUDA_ARCH__)
#define TS_MUL(a, b) __dmul_rn(a, b)
#define TS_ADD(a, b) __dadd_rn(a, b)
#else
#define TS_MUL(a, b) ((a) * (b))
#define TS_ADD(a, b) ((a) + (b))
#endif

__global__ void select_features_kernel(const float *x, const float *w, double *f, int H, int Hx, int n, int D, int r)
{
    long long item = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (item >= (long long)H * n * r)
        return;
    int c = (int)(item % r), t = (int)((item / r) % n), h = (int)(item / ((long long)r * n));
    const float *row = x + ((size_t)(w ? h / (H / Hx) : h) * n + t) * D;
    if (!w) {
        f[item] = row[c];
        return;
    }
    const float *W = w + (size_t)h * D * r;
    double acc = 0;
    for (int e = 0; e < D; e++)
        acc = TS_ADD(acc, TS_MUL((double)row[e], (double)W[(size_t)e * r + c]));
    f[item] = acc;
}

struct select_args {
    const double *qf, *kf;
    const long long *off;
    int *pad, *cnt, *row_ptr, *col;
    int Hq, Hkv, Nq, Nk, r, kf_per_q, mode, causal;
    long long k, cap, group, per_head, total, bound;
};

__device__ double select_score(const select_args &a, int h, int g0, int g1, int j)
{
    const double *kr = a.kf + ((size_t)(a.kf_per_q ? h : h / (a.Hq / a.Hkv)) * a.Nk + j) * a.r;
    double acc = 0;
    for (int u = g0; u <= g1; u++) {
        const double *qr = a.qf + ((size_t)h * a.Nq + u) * a.r;
        double z = 0;
        for (int c = 0; c < a.r; c++)
            z = TS_ADD(z, TS_MUL(qr[c], kr[c]));
        acc = TS_ADD(acc, z);
    }
    return acc;
}

// Order-preserving 64-bit key of a double (larger score, larger key).
__device__ unsigned long long select_key(double s)
{
    long long b;
    memcpy(&b, &s, sizeof b);
    return b < 0 ? ~(unsigned long long)b : (unsigned long long)b | 0x8000000000000000ull;
}

// Sum of one value per lane over the 32 lanes of the block (shared sh[32]).
__device__ long long select_lane_sum(long long v, long long *sh)
{
    __syncthreads();
    sh[threadIdx.x] = v;
    __syncthreads();
    long long t = 0;
    for (int i = 0; i < 32; i++)
        t += sh[i];
    return t;
}

__global__ void select_row_kernel(select_args a)
{
    SL_SHARED(long long, sh, [32]);
    SL_SHARED(double, theta_sh, [1]);
    int item = blockIdx.x, lane = threadIdx.x;
    int h = item / a.Nq, t = item % a.Nq;
    int g0 = a.mode == 0 ? (int)(t / a.group * a.group) : t;
    int g1 = a.mode == 0 ? (int)(g0 + a.group - 1) : t;
    g1 = g1 < a.Nq ? g1 : a.Nq - 1;
    int m = (int)sl__ts_vis(g1, a.Nq, a.Nk, a.causal), lim = (int)sl__ts_vis(t, a.Nq, a.Nk, a.causal);
    // the candidate pool: every visible key, or (mode 1, k < m) those above theta
    int stat = a.mode == 1 && a.k < m;
    if (lane == 0) {
        double th = -INFINITY;
        if (stat) {
            double mean = 0, var = 0;
            for (int j = 0; j < m; j++)
                mean += select_score(a, h, g0, g1, j);
            mean /= (double)m;
            for (int j = 0; j < m; j++) {
                double d = select_score(a, h, g0, g1, j) - mean;
                var = TS_ADD(var, TS_MUL(d, d));
            }
            th = TS_ADD(mean, TS_MUL(sqrt(var / (double)m), sl__ts_norm_inv(1.0 - (double)a.k / (double)m)));
        }
        theta_sh[0] = th;
    }
    __syncthreads();
    double theta = theta_sh[0];
    long long pool = m;
    if (stat) {
        long long c = 0;
        for (int j = lane; j < m; j += 32)
            c += select_score(a, h, g0, g1, j) - theta > 0;
        pool = select_lane_sum(c, sh);
    }
    long long take = a.mode == 0 ? (m < a.k ? m : a.k) : (a.cap > 0 && pool > a.cap ? a.cap : pool);
    // the cut: the largest key u with #{key >= u} >= take (none when take = pool)
    unsigned long long cut = 0;
    if (take < pool && take > 0) {
        unsigned long long lo = 0, hi = ~0ull; // invariant: count(>= lo) >= take, count(>= hi + 1) < take
        while (lo < hi) {
            unsigned long long mid = lo + (hi - lo) / 2 + 1, c = 0;
            for (int j = lane; j < m; j += 32) {
                double z = select_score(a, h, g0, g1, j);
                c += (!stat || z - theta > 0) && select_key(z) >= mid;
            }
            if (select_lane_sum((long long)c, sh) >= take)
                lo = mid;
            else
                hi = mid - 1;
        }
        cut = lo;
    }
    long long above = 0;
    if (take < pool && take > 0) {
        long long c = 0;
        for (int j = lane; j < m; j += 32) {
            double z = select_score(a, h, g0, g1, j);
            c += (!stat || z - theta > 0) && select_key(z) > cut;
        }
        above = select_lane_sum(c, sh);
    }
    long long need_eq = take - above, eq_seen = 0, written = 0;
    int *dst = a.pad + (size_t)h * a.per_head + a.off[t];
    for (int base = 0; base < m && take > 0; base += 32) {
        int j = base + lane, keep = 0, eq = 0;
        if (j < m) {
            double z = select_score(a, h, g0, g1, j);
            int member = !stat || z - theta > 0;
            if (take >= pool) {
                keep = member;
            } else {
                unsigned long long kk = select_key(z);
                keep = member && kk > cut;
                eq = member && kk == cut;
            }
        }
        __syncthreads();
        sh[lane] = eq;
        __syncthreads();
        long long eq_before = eq_seen, eq_all = 0;
        for (int i = 0; i < 32; i++) {
            if (i < lane)
                eq_before += sh[i];
            eq_all += sh[i];
        }
        if (eq && eq_before < need_eq)
            keep = 1;
        keep = keep && j < lim;
        __syncthreads();
        sh[lane] = keep;
        __syncthreads();
        long long at = written, all = 0;
        for (int i = 0; i < 32; i++) {
            if (i < lane)
                at += sh[i];
            all += sh[i];
        }
        if (keep)
            dst[at] = j;
        written += all;
        eq_seen += eq_all;
    }
    if (lane == 0)
        a.cnt[item] = (int)written;
}

__global__ void select_prefix_kernel(select_args a)
{
    if (blockIdx.x != 0 || threadIdx.x != 0)
        return;
    long long at = 0;
    for (int h = 0; h < a.Hq; h++) {
        for (int t = 0; t < a.Nq; t++) {
            a.row_ptr[(size_t)h * (a.Nq + 1) + t] = (int)at;
            at += a.cnt[(size_t)h * a.Nq + t];
        }
        a.row_ptr[(size_t)h * (a.Nq + 1) + a.Nq] = (int)at;
    }
}

__global__ void select_compact_kernel(select_args a)
{
    long long item = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (item < (long long)a.Hq * a.Nq) {
        int h = (int)(item / a.Nq), t = (int)(item % a.Nq);
        const int *src = a.pad + (size_t)h * a.per_head + a.off[t];
        int *dst = a.col + a.row_ptr[(size_t)h * (a.Nq + 1) + t];
        for (int x = 0; x < a.cnt[item]; x++)
            dst[x] = src[x];
    }
    long long used = a.row_ptr[(size_t)(a.Hq - 1) * (a.Nq + 1) + a.Nq];
    for (long long x = used + item; x < a.bound; x += (long long)gridDim.x * blockDim.x)
        a.col[x] = -1;
}


// ---- trainable.cells (issue 14, session 3; card sea) ----
// One warp per row: the budget's cut over the H·T_M cell values by
// bisection over their ordered 32-bit keys (lanes count, shared-memory
// sums), then lane 0 walks the cells in flat order (ties at the cut: the
// lower flat index first) and writes each kept cell's keys, found from the
// cell's first key by binary search. Then one thread prefixes the counts
// head-major and one thread per (head, row) copies its keys into col.

struct cells_args {
    const float *a;
    const long long *off;
    int *pad, *cnt, *start, *row_ptr, *col;
    int H, N, tm;
    double k;
    long long bound;
};

__device__ unsigned cells_key(float x)
{
    unsigned b;
    memcpy(&b, &x, sizeof b);
    return (b & 0x80000000u) ? ~b : b | 0x80000000u;
}

__global__ void cells_row_kernel(cells_args a)
{
    SL_SHARED(long long, sh, [32]);
    int t = blockIdx.x, lane = threadIdx.x, HT = a.H * a.tm, w = t + 1;
    long long b = sl__ts_budget(a.H, a.k, a.tm, w);
    unsigned cut = 0;
    if (b < HT) {
        unsigned lo = 0, hi = 0xffffffffu; // the largest u with #{key >= u} >= b
        while (lo < hi) {
            unsigned mid = lo + (hi - lo) / 2 + 1;
            long long c = 0;
            for (int f = lane; f < HT; f += 32)
                c += cells_key(a.a[((size_t)(f / a.tm) * a.N + t) * a.tm + f % a.tm]) >= mid;
            if (select_lane_sum(c, sh) >= b)
                lo = mid;
            else
                hi = mid - 1;
        }
        cut = lo;
    }
    long long above = 0;
    if (b < HT) {
        long long c = 0;
        for (int f = lane; f < HT; f += 32)
            c += cells_key(a.a[((size_t)(f / a.tm) * a.N + t) * a.tm + f % a.tm]) > cut;
        above = select_lane_sum(c, sh);
    }
    if (lane != 0)
        return;
    long long eq_left = b - above;
    int *dst = a.pad + a.off[t];
    int n = 0;
    for (int h = 0; h < a.H; h++) {
        a.start[(size_t)h * a.N + t] = n;
        for (int c = 0; c < a.tm; c++) {
            int kept = 1;
            if (b < HT) {
                unsigned key = cells_key(a.a[((size_t)h * a.N + t) * a.tm + c]);
                kept = key > cut || (key == cut && eq_left > 0);
                if (key == cut && eq_left > 0)
                    eq_left--;
            }
            if (!kept)
                continue;
            for (long long j = sl__ts_cell_first(c, w, a.tm); j < w && sl__ts_cell(j, w, a.tm) == c; j++)
                dst[n++] = (int)j;
        }
        a.cnt[(size_t)h * a.N + t] = n - a.start[(size_t)h * a.N + t];
    }
}

__global__ void cells_prefix_kernel(cells_args a)
{
    if (blockIdx.x != 0 || threadIdx.x != 0)
        return;
    long long at = 0;
    for (int h = 0; h < a.H; h++) {
        for (int t = 0; t < a.N; t++) {
            a.row_ptr[(size_t)h * (a.N + 1) + t] = (int)at;
            at += a.cnt[(size_t)h * a.N + t];
        }
        a.row_ptr[(size_t)h * (a.N + 1) + a.N] = (int)at;
    }
}

__global__ void cells_compact_kernel(cells_args a)
{
    long long item = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (item < (long long)a.H * a.N) {
        int h = (int)(item / a.N), t = (int)(item % a.N);
        const int *src = a.pad + a.off[t] + a.start[item];
        int *dst = a.col + a.row_ptr[(size_t)h * (a.N + 1) + t];
        for (int x = 0; x < a.cnt[item]; x++)
            dst[x] = src[x];
    }
    long long used = a.row_ptr[(size_t)(a.H - 1) * (a.N + 1) + a.N];
    for (long long x = used + item; x < a.bound; x += (long long)gridDim.x * blockDim.x)
        a.col[x] = -1;
}

// ---- trainable.performer (issue 14, session 3b; card sea) ----
// Three launches per call: exponents of every key and query row (one thread
// per row, float64, into scratch), the key prefix sums S (one thread per (kv
// head, feature), a sequential scan after the head's maximum), then one
// thread per (query head, row): phi(q_t) in place, the T_M + 1 dots
// d_b = phi(q_t) . S[first key of cell b], a[c] = (d_{c+1} - d_c) / d_{T_M}.
struct perf_args {
    const float *q, *k, *w;
    double *eq, *ek, *rmx, *S; // [Hq N m], [Hkv N m], [Hkv N], [Hkv (N + 1) m]
    float *a;
    int Hq, Hkv, N, D, m, tm;
};

__global__ void perf_exp_kernel(perf_args p)
{
    long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long nq = (long long)p.Hq * p.N;
    if (r >= nq + (long long)p.Hkv * p.N)
        return;
    const float *x = r < nq ? p.q + (size_t)r * p.D : p.k + (size_t)(r - nq) * p.D;
    double *e = r < nq ? p.eq + (size_t)r * p.m : p.ek + (size_t)(r - nq) * p.m;
    double s = pow((double)p.D, -0.25), nrm = 0, mx = -INFINITY;
    for (int c = 0; c < p.D; c++)
        nrm += ((double)x[c] * s) * ((double)x[c] * s);
    for (int f = 0; f < p.m; f++) {
        double d = 0;
        for (int c = 0; c < p.D; c++)
            d += (double)p.w[(size_t)f * p.D + c] * ((double)x[c] * s);
        e[f] = d - nrm / 2;
        mx = e[f] > mx ? e[f] : mx;
    }
    if (r >= nq)
        p.rmx[r - nq] = mx;
}

__global__ void perf_prefix_kernel(perf_args p)
{
    long long item = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (item >= (long long)p.Hkv * p.m)
        return;
    int g = (int)(item / p.m), f = (int)(item % p.m);
    double gmax = -INFINITY, acc = 0, sm = sqrt((double)p.m);
    for (int j = 0; j < p.N; j++)
        gmax = p.rmx[(size_t)g * p.N + j] > gmax ? p.rmx[(size_t)g * p.N + j] : gmax;
    double *S = p.S + (size_t)g * (p.N + 1) * p.m;
    S[f] = 0;
    for (int j = 0; j < p.N; j++) {
        acc += exp(p.ek[((size_t)g * p.N + j) * p.m + f] - gmax) / sm;
        S[(size_t)(j + 1) * p.m + f] = acc;
    }
}

__global__ void perf_row_kernel(perf_args p)
{
    long long item = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (item >= (long long)p.Hq * p.N)
        return;
    int h = (int)(item / p.N), t = (int)(item % p.N), w = t + 1, kv = h / (p.Hq / p.Hkv);
    double *fq = p.eq + (size_t)item * p.m, mx = -INFINITY, sm = sqrt((double)p.m);
    for (int f = 0; f < p.m; f++)
        mx = fq[f] > mx ? fq[f] : mx;
    for (int f = 0; f < p.m; f++)
        fq[f] = exp(fq[f] - mx) / sm;
    const double *S = p.S + (size_t)kv * (p.N + 1) * p.m;
    float *A = p.a + (size_t)item * p.tm;
    int lo = w; // d over all keys first: the row's normaliser
    double z = 0;
    for (int f = 0; f < p.m; f++)
        z += fq[f] * S[(size_t)lo * p.m + f];
    double prev = 0;
    for (int c = 0; c < p.tm; c++) {
        int hi = c + 1 == p.tm ? w : (int)sl__ts_cell_first(c + 1, w, p.tm);
        double d = 0;
        if (hi == w)
            d = z;
        else if (hi > 0)
            for (int f = 0; f < p.m; f++)
                d += fq[f] * S[(size_t)hi * p.m + f];
        A[c] = (float)(z > 0 ? (d - prev) / z : 0);
        prev = d;
    }
}

}  // namespace

sl_status sl__cuda_trainable_compress(const sl__kargs *a)
{
    const sl_trainable_compress_params *p = static_cast<const sl_trainable_compress_params *>(a->params);
    int64_t H = a->in[0].shape[0], N = a->in[0].shape[1], D = a->in[0].shape[2], C = a->out[0].shape[1];
    if (H * N * D > (int64_t)1 << 40 || N > (1 << 30) || D > (1 << 20))
        return sl__cuda_unsupported(a, "more than 2^30 tokens or 2^20 channels");
    int64_t total = H * C * D;
    if (total == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    if (H * C > (int64_t)1 << 31)
        return sl__cuda_unsupported(a, "more than 2^31 (head, window) pairs");
    if (2 * D * (int64_t)sizeof(double) > 48 * 1024)
        return sl__cuda_unsupported(a, "%lld channels: the window row and accumulator pass 48 KiB of shared memory",
                                    (long long)D);
    SL_LAUNCH(compress_kernel, dim3((unsigned)(H * C)), 32, (size_t)(2 * D) * sizeof(double), 0)(
        st.input<float>(0), st.input<float>(1), st.input<float>(2), st.output<float>(0), (int)H, (int)N, (int)D,
        (int)C, (int)p->l, (int)p->s, (int)p->mode);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_trainable_nsa(const sl__kargs *a)
{
    const sl_trainable_nsa_params *p = static_cast<const sl_trainable_nsa_params *>(a->params);
    int64_t Hq = a->in[0].shape[0], Nq = a->in[0].shape[1], D = a->in[0].shape[2];
    int64_t Hkv = a->in[1].shape[0], Nk = a->in[1].shape[1], Nc = a->in[3].shape[1];
    if (Nk > (1 << 30) || Nc > (1 << 30) || D > (1 << 20) || p->window > (1 << 30))
        return sl__cuda_unsupported(a, "more than 2^30 keys or 2^20 channels");
    int64_t items = Hkv * Nq;
    if (items == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    nsa_args x;
    x.q = st.input<float>(0), x.k = st.input<float>(1), x.v = st.input<float>(2), x.kc = st.input<float>(3);
    x.vc = st.input<float>(4), x.gc = st.input<float>(5), x.gs = st.input<float>(6), x.gw = st.input<float>(7);
    x.o = st.output<float>(0), x.lse = st.output<float>(1), x.blocks = st.output<int>(2), x.imp = st.output<float>(3);
    x.Hq = (int)Hq, x.Hkv = (int)Hkv, x.Nq = (int)Nq, x.Nk = (int)Nk, x.Nc = (int)Nc, x.D = (int)D;
    x.l = (int)p->l, x.s = (int)p->s, x.bs = (int)p->bs, x.n = (int)p->n, x.init = (int)p->init;
    x.local = (int)p->local, x.window = (int)p->window;
    x.scale = (float)(p->scale > 0 ? p->scale : 1.0 / sqrt((double)D));
    if (32 * D * (int64_t)sizeof(float) > 48 * 1024)
        return sl__cuda_unsupported(a, "head_dim %lld: the warp's 32 accumulator rows pass 48 KiB of shared memory",
                                    (long long)D);
    SL_LAUNCH(nsa_kernel, dim3((unsigned)items), 32, (size_t)(32 * D) * sizeof(float), 0)(x);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_trainable_sparsek(const sl__kargs *a)
{
    const sl_trainable_sparsek_params *p = static_cast<const sl_trainable_sparsek_params *>(a->params);
    int64_t Hq = a->in[0].shape[0], Nq = a->in[0].shape[1], D = a->in[0].shape[2];
    int64_t Hkv = a->in[1].shape[0], Nk = a->in[1].shape[1];
    if (Nk > (1 << 30) || D > (1 << 20))
        return sl__cuda_unsupported(a, "more than 2^30 keys or 2^20 channels");
    int64_t items = Hkv * Nq;
    if (items == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    sparsek_args x;
    x.q = st.input<float>(0), x.k = st.input<float>(1), x.v = st.input<float>(2), x.u = st.input<float>(3);
    x.o = st.output<float>(0), x.lse = st.output<float>(1), x.count = st.output<int>(2);
    x.Hq = (int)Hq, x.Hkv = (int)Hkv, x.Nq = (int)Nq, x.Nk = (int)Nk, x.D = (int)D;
    x.kb = (int)(p->k < Nk ? p->k : Nk), x.window = (int)(p->window < Nk ? p->window : Nk), x.weight = (int)p->weight;
    x.bias = (int)p->bias;
    x.scale = (float)(p->scale > 0 ? p->scale : 1.0 / sqrt((double)D));
    if (32 * D * (int64_t)sizeof(float) > 48 * 1024)
        return sl__cuda_unsupported(a, "head_dim %lld: the warp's 32 accumulator rows pass 48 KiB of shared memory",
                                    (long long)D);
    SL_LAUNCH(sparsek_kernel, dim3((unsigned)items), 32, (size_t)(32 * D) * sizeof(float), 0)(x);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_trainable_fsa(const sl__kargs *a)
{
    const sl_trainable_fsa_params *p = static_cast<const sl_trainable_fsa_params *>(a->params);
    int64_t Hq = a->in[0].shape[0], Nq = a->in[0].shape[1], D = a->in[0].shape[2];
    int64_t Hkv = a->in[1].shape[0], Nk = a->in[1].shape[1], n = a->in[3].shape[2];
    int64_t nb = (Nk + p->bs - 1) / p->bs;
    if (Nk > (1 << 30) || D > (1 << 20) || n > (1 << 20))
        return sl__cuda_unsupported(a, "more than 2^30 keys, 2^20 channels or 2^20 slots");
    if (Hq * Nq == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    void *part = nullptr;
    if (sl_status s = sl__cuda_scratch(&st, (size_t)(Hq * Nq * n * (D + 2)) * sizeof(float), &part); s != SL_OK)
        return s;
    fsa_args x;
    x.q = st.input<float>(0), x.k = st.input<float>(1), x.v = st.input<float>(2), x.blocks = st.input<int>(3);
    x.gate = st.input<float>(4), x.base = st.input<float>(5);
    x.o = st.output<float>(0), x.lse = st.output<float>(1), x.part = static_cast<float *>(part);
    x.Hq = (int)Hq, x.Hkv = (int)Hkv, x.Nq = (int)Nq, x.Nk = (int)Nk, x.D = (int)D, x.n = (int)n, x.bs = (int)p->bs;
    x.nb = (int)nb;
    x.scale = (float)(p->scale > 0 ? p->scale : 1.0 / sqrt((double)D));
    if (32 * D * (int64_t)sizeof(float) > 48 * 1024)
        return sl__cuda_unsupported(a, "head_dim %lld: the warp's 32 accumulator rows pass 48 KiB of shared memory",
                                    (long long)D);
    if (Hkv * nb > 0)
        SL_LAUNCH(fsa_block_kernel, dim3((unsigned)(Hkv * nb)), 32, (size_t)(32 * D) * sizeof(float), 0)(x);
    SL_LAUNCH(fsa_merge_kernel, dim3((unsigned)(Hq * Nq)), 32, 0, 0)(x);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_trainable_routing(const sl__kargs *a)
{
    const sl_trainable_routing_params *p = static_cast<const sl_trainable_routing_params *>(a->params);
    int64_t Hq = a->in[0].shape[0], Nq = a->in[0].shape[1], D = a->in[0].shape[2];
    int64_t Hkv = a->in[1].shape[0], Nk = a->in[1].shape[1], C = a->in[3].shape[1], W = a->in[3].shape[2];
    if (Nk > (1 << 30) || D > (1 << 20) || C * W > (1 << 30))
        return sl__cuda_unsupported(a, "more than 2^30 keys or members, or 2^20 channels");
    if (Hq * Nq == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    routing_args x;
    x.q = st.input<float>(0), x.k = st.input<float>(1), x.v = st.input<float>(2);
    x.qsel = st.input<int>(3), x.ksel = st.input<int>(4);
    x.o = st.output<float>(0), x.lse = st.output<float>(1), x.count = st.output<int>(2);
    x.Hq = (int)Hq, x.Hkv = (int)Hkv, x.Nq = (int)Nq, x.Nk = (int)Nk, x.D = (int)D, x.C = (int)C, x.W = (int)W;
    x.scale = (float)(p->scale > 0 ? p->scale : 1.0 / sqrt((double)D));
    if (32 * D * (int64_t)sizeof(float) > 48 * 1024)
        return sl__cuda_unsupported(a, "head_dim %lld: the warp's 32 accumulator rows pass 48 KiB of shared memory",
                                    (long long)D);
    SL_LAUNCH(routing_kernel, dim3((unsigned)(Hq * Nq)), 32, (size_t)(32 * D) * sizeof(float), 0)(x);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_trainable_select(const sl__kargs *a)
{
    const sl_trainable_select_params *p = static_cast<const sl_trainable_select_params *>(a->params);
    int64_t Hq = a->in[0].shape[0], Nq = a->in[0].shape[1], D = a->in[0].shape[2];
    int64_t Hkv = a->in[1].shape[0], Nk = a->in[1].shape[1];
    int has_w = a->in[2].buf != nullptr;
    int64_t r = sl__ts_rank(has_w, has_w ? a->in[2].shape[2] : 0, p->split, D), hk = has_w ? Hq : Hkv;
    if (Nk > (1 << 30) || Nq > (1 << 30) || D > (1 << 20) || Hq * Nq > (1 << 30))
        return sl__cuda_unsupported(a, "more than 2^30 keys or rows, or 2^20 channels");
    if (Hq * Nq == 0)
        return SL_OK;
    std::vector<long long> off((size_t)Nq + 1, 0);
    for (int64_t t = 0; t < Nq; t++)
        off[(size_t)t + 1] = off[(size_t)t] + sl__ts_bound(p->mode, p->k, p->cap, p->group, (int)p->causal, t, Nq, Nk);
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    void *qf = nullptr, *kf = nullptr, *pad = nullptr, *cnt = nullptr, *doff = nullptr;
    int64_t bound = a->out[1].shape[0];
    if (sl_status s = sl__cuda_scratch(&st, sizeof(double) * (size_t)(Hq * Nq * r), &qf); s != SL_OK)
        return s;
    if (sl_status s = sl__cuda_scratch(&st, sizeof(double) * (size_t)(hk * Nk * r), &kf); s != SL_OK)
        return s;
    if (sl_status s = sl__cuda_scratch(&st, sizeof(int) * (size_t)(bound > 0 ? bound : 1), &pad); s != SL_OK)
        return s;
    if (sl_status s = sl__cuda_scratch(&st, sizeof(int) * (size_t)(Hq * Nq), &cnt); s != SL_OK)
        return s;
    if (sl_status s = sl__cuda_upload(&st, off.data(), sizeof(long long) * off.size(), &doff); s != SL_OK)
        return s;
    const float *wq = has_w ? st.input<float>(2) : nullptr, *wk = has_w ? st.input<float>(3) : nullptr;
    int64_t nqf = Hq * Nq * r, nkf = hk * Nk * r;
    SL_LAUNCH(select_features_kernel, dim3((unsigned)((nqf + 127) / 128)), 128, 0, 0)(
        st.input<float>(0), wq, static_cast<double *>(qf), (int)Hq, (int)Hq, (int)Nq, (int)D, (int)r);
    if (nkf > 0)
        SL_LAUNCH(select_features_kernel, dim3((unsigned)((nkf + 127) / 128)), 128, 0, 0)(
            st.input<float>(1), wk, static_cast<double *>(kf), (int)hk, (int)Hkv, (int)Nk, (int)D, (int)r);
    select_args x;
    x.qf = static_cast<const double *>(qf), x.kf = static_cast<const double *>(kf);
    x.off = static_cast<const long long *>(doff), x.pad = static_cast<int *>(pad), x.cnt = static_cast<int *>(cnt);
    x.row_ptr = st.output<int>(0), x.col = st.output<int>(1);
    x.Hq = (int)Hq, x.Hkv = (int)Hkv, x.Nq = (int)Nq, x.Nk = (int)Nk, x.r = (int)r, x.kf_per_q = has_w;
    x.mode = (int)p->mode, x.causal = (int)p->causal;
    x.k = p->k, x.cap = p->cap, x.group = p->group, x.per_head = off[(size_t)Nq], x.bound = bound;
    SL_LAUNCH(select_row_kernel, dim3((unsigned)(Hq * Nq)), 32, 0, 0)(x);
    SL_LAUNCH(select_prefix_kernel, dim3(1), 1, 0, 0)(x);
    SL_LAUNCH(select_compact_kernel, dim3((unsigned)((Hq * Nq + 127) / 128)), 128, 0, 0)(x);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_trainable_cells(const sl__kargs *a)
{
    const sl_trainable_cells_params *p = static_cast<const sl_trainable_cells_params *>(a->params);
    int64_t H = a->in[0].shape[0], N = a->in[0].shape[1], tm = a->in[0].shape[2];
    if (N > (1 << 30) || H * tm > (1 << 30) || H * N > (1 << 30))
        return sl__cuda_unsupported(a, "more than 2^30 rows or cells");
    if (H * N == 0)
        return SL_OK;
    std::vector<long long> off((size_t)N + 1, 0);
    for (int64_t t = 0; t < N; t++)
        off[(size_t)t + 1] = off[(size_t)t] + sl__ts_cell_bound(H, p->k, tm, t);
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    int64_t bound = a->out[1].shape[0];
    void *pad = nullptr, *cnt = nullptr, *start = nullptr, *doff = nullptr;
    if (sl_status s = sl__cuda_scratch(&st, sizeof(int) * (size_t)(bound > 0 ? bound : 1), &pad); s != SL_OK)
        return s;
    if (sl_status s = sl__cuda_scratch(&st, sizeof(int) * (size_t)(H * N), &cnt); s != SL_OK)
        return s;
    if (sl_status s = sl__cuda_scratch(&st, sizeof(int) * (size_t)(H * N), &start); s != SL_OK)
        return s;
    if (sl_status s = sl__cuda_upload(&st, off.data(), sizeof(long long) * off.size(), &doff); s != SL_OK)
        return s;
    cells_args x;
    x.a = st.input<float>(0), x.off = static_cast<const long long *>(doff), x.pad = static_cast<int *>(pad);
    x.cnt = static_cast<int *>(cnt), x.start = static_cast<int *>(start);
    x.row_ptr = st.output<int>(0), x.col = st.output<int>(1);
    x.H = (int)H, x.N = (int)N, x.tm = (int)tm, x.k = p->k, x.bound = bound;
    SL_LAUNCH(cells_row_kernel, dim3((unsigned)N), 32, 0, 0)(x);
    SL_LAUNCH(cells_prefix_kernel, dim3(1), 1, 0, 0)(x);
    SL_LAUNCH(cells_compact_kernel, dim3((unsigned)((H * N + 127) / 128)), 128, 0, 0)(x);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_trainable_performer(const sl__kargs *a)
{
    int64_t Hq = a->in[0].shape[0], N = a->in[0].shape[1], D = a->in[0].shape[2], Hkv = a->in[1].shape[0];
    int64_t m = a->in[2].shape[0], tm = a->out[0].shape[2];
    if (N >= (1 << 30) || Hq * N > (1 << 30) || Hq * N * tm > ((int64_t)1 << 40))
        return sl__cuda_unsupported(a, "more than 2^30 rows");
    if (Hq * N == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    void *eq = nullptr, *ek = nullptr, *rmx = nullptr, *S = nullptr;
    if (sl_status s = sl__cuda_scratch(&st, sizeof(double) * (size_t)(Hq * N * m), &eq); s != SL_OK)
        return s;
    if (sl_status s = sl__cuda_scratch(&st, sizeof(double) * (size_t)(Hkv * N * m), &ek); s != SL_OK)
        return s;
    if (sl_status s = sl__cuda_scratch(&st, sizeof(double) * (size_t)(Hkv * N), &rmx); s != SL_OK)
        return s;
    if (sl_status s = sl__cuda_scratch(&st, sizeof(double) * (size_t)(Hkv * (N + 1) * m), &S); s != SL_OK)
        return s;
    perf_args x;
    x.q = st.input<float>(0), x.k = st.input<float>(1), x.w = st.input<float>(2);
    x.eq = static_cast<double *>(eq), x.ek = static_cast<double *>(ek), x.rmx = static_cast<double *>(rmx);
    x.S = static_cast<double *>(S), x.a = st.output<float>(0);
    x.Hq = (int)Hq, x.Hkv = (int)Hkv, x.N = (int)N, x.D = (int)D, x.m = (int)m, x.tm = (int)tm;
    int64_t rows = (Hq + Hkv) * N;
    SL_LAUNCH(perf_exp_kernel, dim3((unsigned)((rows + 127) / 128)), 128, 0, 0)(x);
    SL_LAUNCH(perf_prefix_kernel, dim3((unsigned)((Hkv * m + 127) / 128)), 128, 0, 0)(x);
    SL_LAUNCH(perf_row_kernel, dim3((unsigned)((Hq * N + 127) / 128)), 128, 0, 0)(x);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}
