// cuda/tsel.cu — the tsel family on CUDA (prefill token selectors, issue 16).
//   attn.threshold: one thread per (head, row): a pass for the row's largest
//       score (keep_max), then an online softmax over the kept keys.
//   select.pq_match: key codes (one thread per key row), then one thread per
//       (head, row): a count per slot, the cut slot, and an ascending pass
//       writing the row's keys sorted; row offsets come from the host.
//   select.hip_tree: one CTA per (head, query block), the tree's levels in
//       lockstep (see the kernel).
//   select.token_budget, select.theta_rows (issue 20, session 5): see their kernels.
#include "dialect.cuh"
#include "cuda.cuh"
#include "stage.cuh"
#include "chunks_select.h"

#include <math.h>
#include <vector>

namespace {

constexpr int kThreads = 128;
constexpr int kMaxD = 256;
constexpr int kMaxS = 256;

__global__ void threshold_kernel(const float *q, const float *k, const float *v, const float *theta, float *o,
                                 float *lse, int32_t *count, int hq, int group, int nq, int nk, int d, int causal,
                                 float scale, int64_t dense_upto, int keep_max)
{
    int64_t item = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (item >= (int64_t)hq * nq)
        return;
    int r = (int)(item % nq), g = (int)(item / nq) / group;
    const float *qr = q + item * d, *K = k + (int64_t)g * nk * d, *V = v + (int64_t)g * nk * d;
    int n = causal ? nk - nq + r + 1 : nk;
    n = n > nk ? nk : n;
    float best = -INFINITY;
    int arg = -1;
    if (keep_max)
        for (int j = 0; j < n; j++) {
            float s = 0.f;
            for (int c = 0; c < d; c++)
                s += qr[c] * K[(int64_t)j * d + c];
            s *= scale;
            if (arg < 0 || s > best) {
                best = s;
                arg = j;
            }
        }
    int dense = n <= dense_upto;
    float th = theta[item], m = -INFINITY, l = 0.f, acc[kMaxD];
    for (int c = 0; c < d; c++)
        acc[c] = 0.f;
    int cnt = 0;
    for (int j = 0; j < n; j++) {
        float s = 0.f;
        for (int c = 0; c < d; c++)
            s += qr[c] * K[(int64_t)j * d + c];
        s *= scale;
        if (!(dense || s > th || (keep_max && j == arg)))
            continue;
        cnt++;
        float mn = fmaxf(m, s), f = expf(m - mn), w = expf(s - mn);
        l = l * f + w;
        for (int c = 0; c < d; c++)
            acc[c] = acc[c] * f + w * V[(int64_t)j * d + c];
        m = mn;
    }
    for (int c = 0; c < d; c++)
        o[item * d + c] = cnt ? acc[c] / l : 0.f;
    lse[item] = cnt ? m + logf(l) : -INFINITY;
    count[item] = cnt;
}

__device__ void pq_encode(const float *x, const float *cb, int S, int C, int dc, int32_t *code)
{
    for (int s = 0; s < S; s++) {
        float best = INFINITY;
        int arg = 0;
        for (int c = 0; c < C; c++) {
            float dist = 0.f;
            for (int e = 0; e < dc; e++)
                dist += fabsf(x[s * dc + e] - cb[((int64_t)s * C + c) * dc + e]);
            if (dist < best) {
                best = dist;
                arg = c;
            }
        }
        code[s] = arg;
    }
}

__global__ void pq_key_kernel(const float *k, const float *cb, int32_t *kcode, int64_t rows, int nk, int hkv, int hc,
                              int S, int C, int dc)
{
    int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= rows)
        return;
    int g = (int)(t / nk);
    pq_encode(k + t * S * dc, cb + (int64_t)(g / (hkv / hc)) * S * C * dc, S, C, dc, kcode + t * S);
}

__global__ void pq_row_kernel(const float *q, const float *cb, const int32_t *kcode, const int64_t *off,
                              int32_t *row_ptr, int32_t *col, int hq, int group, int nq, int nk, int hkv, int hc, int S,
                              int C, int dc, int causal, int64_t nnz, int slots, int64_t per_head)
{
    int64_t item = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (item >= (int64_t)hq * nq)
        return;
    int h = (int)(item / nq), r = (int)(item % nq), g = h / group;
    int32_t qcode[kMaxS];
    int per_slot[64];
    for (int s = 0; s < slots; s++)
        per_slot[s] = 0;
    pq_encode(q + item * S * dc, cb + (int64_t)(g / (hkv / hc)) * S * C * dc, S, C, dc, qcode);
    const int32_t *kc = kcode + (int64_t)g * nk * S;
    int n = causal ? nk - nq + r + 1 : nk;
    n = n > nk ? nk : n;
    for (int t = 0; t < n; t++) {
        int m = 0;
        for (int s = 0; s < S; s++)
            m += qcode[s] == kc[(int64_t)t * S + s];
        int slot = slots * m / S;
        per_slot[slot < slots - 1 ? slot : slots - 1]++;
    }
    int64_t want = n < nnz ? n : nnz, above = 0;
    int cut = slots - 1;
    while (cut > 0 && above + per_slot[cut] < want) {
        above += per_slot[cut];
        cut--;
    }
    int64_t need = want - above, at = h * per_head + off[r];
    for (int t = 0; t < n; t++) {
        int m = 0;
        for (int s = 0; s < S; s++)
            m += qcode[s] == kc[(int64_t)t * S + s];
        int slot = slots * m / S;
        slot = slot < slots - 1 ? slot : slots - 1;
        if (slot > cut || (slot == cut && need > 0)) {
            if (slot == cut)
                need--;
            col[at++] = t;
        }
    }
    row_ptr[(int64_t)h * (nq + 1) + r] = (int32_t)(h * per_head + off[r]);
    if (r == nq - 1)
        row_ptr[(int64_t)h * (nq + 1) + nq] = (int32_t)((h + 1) * per_head);
}

// select.hip_tree: one CTA per (head, query block). The block's used query
// rows sit in dynamic shared memory; per level every group expands into the
// slots 2g, 2g+1 (a one-block group carries over in 2g, 2g+1 stays empty),
// the threads score the new halves (one half per thread: the max over its
// representative block's keys and the rows), then every slot's rank
// (score desc, start asc) is counted and the kb best land in cur[rank].
// The nodes (kb kept, 2.kb slots) live in a global scratch slice per CTA.
struct HipNode {
    int a, b;
    float s;
};

__device__ float hip_rep(const float *qs, int rows, const float *kh, int c, int bk, int nk, int d, float scale)
{
    float best = -INFINITY;
    for (int t = c * bk; t < (c + 1) * bk && t < nk; t++) {
        const float *kr = kh + (int64_t)t * d;
        for (int i = 0; i < rows; i++) {
            float s = 0.f;
            for (int e = 0; e < d; e++)
                s += qs[i * d + e] * kr[e];
            best = fmaxf(best, s);
        }
    }
    return scale * best;
}

__global__ void hip_tree_kernel(const float *q, const float *k, uint8_t *keep, int32_t *evals, HipNode *nodes, int group,
                                int nq, int nk, int d, int R, int C, int bq, int bk, int kb, int64_t window, int causal,
                                int qstride, float scale)
{
    SL_DYN_SMEM(float, qs);
    SL_SHARED(int, sh, [3]); // groups, splits, evaluations
    int64_t item = blockIdx.x;
    int h = (int)(item / R), r = (int)(item % R), tid = threadIdx.x, nt = blockDim.x;
    uint8_t *row = keep + item * C;
    int kbl = kb < C ? kb : C;
    HipNode *cur = nodes + item * 3 * (int64_t)kbl, *next = cur + kbl;
    const float *kh = k + (int64_t)(h / group) * nk * d;
    int i0 = r * bq, i1 = i0 + bq < nq ? i0 + bq - 1 : nq - 1, T = C, vis = C, w0 = C;
    if (causal) {
        int64_t off = (int64_t)nk - nq, w = i0 + off - window;
        vis = (int)((i1 + off) / bk + 1);
        vis = vis < C ? vis : C;
        w0 = w > 0 ? (int)(w / bk) : 0;
        T = w0 < vis ? w0 : vis;
    }
    for (int c = tid; c < C; c += nt)
        row[c] = (causal && c >= w0 && c < vis) || (T <= kb && c < T);
    if (T <= kb) {
        if (tid == 0)
            evals[item] = 0;
        return;
    }
    int f = i0 + qstride - 1 < i1 ? i0 + qstride - 1 : i1, rows = (i1 - f) / qstride + 1;
    for (int x = tid; x < rows * d; x += nt)
        qs[x] = q[((int64_t)h * nq + f + (x / d) * qstride) * d + x % d];
    __syncthreads();
    for (int g = tid; g < kb; g += nt) {
        HipNode x;
        x.a = (int)((int64_t)g * T / kb);
        x.b = (int)((int64_t)(g + 1) * T / kb - 1);
        x.s = x.a == x.b ? hip_rep(qs, rows, kh, x.a, bk, nk, d, scale) : 0.f;
        cur[g] = x;
    }
    if (tid == 0) {
        int singles = 0;
        for (int g = 0; g < kb; g++)
            singles += (int64_t)(g + 1) * T / kb - (int64_t)g * T / kb == 1;
        sh[0] = kb;
        sh[2] = singles;
    }
    __syncthreads();
    for (;;) {
        int groups = sh[0];
        if (tid == 0)
            sh[1] = 0;
        __syncthreads();
        int split = 0;
        for (int g = tid; g < groups; g += nt) {
            HipNode x = cur[g], l, rr;
            if (x.a == x.b) {
                l = x;
                rr.a = rr.b = -1;
                rr.s = -INFINITY;
            } else {
                int mid = x.a + (x.b - x.a + 1) / 2 - 1; // left: floor(size / 2)
                l.a = x.a;
                l.b = mid;
                l.s = hip_rep(qs, rows, kh, x.a, bk, nk, d, scale);
                rr.a = mid + 1;
                rr.b = x.b;
                rr.s = hip_rep(qs, rows, kh, mid + 1, bk, nk, d, scale);
                split++;
            }
            next[2 * g] = l;
            next[2 * g + 1] = rr;
        }
        if (split)
            atomicAdd(&sh[1], split);
        __syncthreads();
        int splits = sh[1], m = 2 * groups;
        if (splits == 0)
            break;
        for (int x = tid; x < m; x += nt) {
            HipNode nx = next[x];
            if (nx.a < 0)
                continue;
            int rank = 0;
            for (int y = 0; y < m && rank < kb; y++) {
                HipNode ny = next[y];
                rank += ny.a >= 0 && (ny.s > nx.s || (ny.s == nx.s && ny.a < nx.a));
            }
            if (rank < kb)
                cur[rank] = nx;
        }
        __syncthreads();
        if (tid == 0) {
            sh[0] = groups + splits < kb ? groups + splits : kb;
            sh[2] += 2 * splits;
        }
        __syncthreads();
    }
    int groups = sh[0];
    for (int g = tid; g < groups; g += nt)
        row[cur[g].a] = 1;
    if (tid == 0)
        evals[item] = sh[2];
}

// ---- select.chunks (issue 20, session 4) ----
// Head means of the chunk keys (one thread per chunk), then one thread per
// query block: the eligible chunks' scores into its scratch row, the budget
// handed out by repeated selection of the next chunk in the order (score
// descending, chunk descending: no sort, O(picks . chunks)), the taken
// tokens written ascending into the block's padded slot; one thread packs
// the slots into row_ptr / col.
__global__ void chunks_keys_kernel(const float *kp, double *ka, int64_t Hk, int64_t C, int64_t d)
{
    int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C)
        return;
    for (int64_t e = 0; e < d; e++) {
        double s = 0;
        for (int64_t h = 0; h < Hk; h++)
            s += kp[(h * C + c) * d + e];
        ka[c * d + e] = s / (double)Hk;
    }
}

__global__ void chunks_row_kernel(const float *qp, const double *ka, const int32_t *st, const int64_t *off,
                                  double *S, int64_t *take, int32_t *pad, int64_t *cnt, sl_select_chunks_params p,
                                  int64_t Hq, int64_t R, int64_t C, int64_t d)
{
    int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= R)
        return;
    int64_t budget = sl__chunks_capacity(&p, r), lo = sl__chunks_lo(&p, r), n_out = 0;
    cnt[r] = 0;
    if (budget <= 0)
        return;
    double *Sr = S + r * C;
    int64_t *tk = take + r * C, ne = 0;
    while (ne < C && st[ne] < lo)
        ne++;
    for (int64_t c = 0; c < ne; c++) {
        double s = 0;
        for (int64_t e = 0; e < d; e++) {
            double q = 0;
            for (int64_t h = 0; h < Hq; h++)
                q += qp[(h * R + r) * d + e];
            s += (q / (double)Hq) * ka[c * d + e];
        }
        Sr[c] = s;
        tk[c] = 0;
    }
    int64_t prev = -1, left = budget;
    while (left > 0) {
        int64_t best = -1;
        for (int64_t c = 0; c < ne; c++) {
            bool after = prev < 0 || Sr[c] < Sr[prev] || (Sr[c] == Sr[prev] && c < prev);
            if (after && (best < 0 || Sr[c] > Sr[best] || (Sr[c] == Sr[best] && c > best)))
                best = c;
        }
        if (best < 0)
            break;
        int64_t c1 = best + 1 < C && st[best + 1] < lo ? st[best + 1] : lo;
        tk[best] = c1 - st[best] < left ? c1 - st[best] : left;
        left -= tk[best];
        prev = best;
    }
    int32_t *out = pad + off[r];
    int64_t skip = p.splice ? p.globals : 0;
    for (int64_t c = 0; c < ne; c++) {
        int64_t c1 = c + 1 < C && st[c + 1] < lo ? st[c + 1] : lo;
        for (int64_t t = c1 - tk[c]; t < c1; t++) {
            if (skip > 0) {
                skip--;
                continue;
            }
            if (t >= p.globals)
                out[n_out++] = (int32_t)t;
        }
    }
    cnt[r] = n_out;
}

__global__ void chunks_pack_kernel(const int32_t *pad, const int64_t *off, const int64_t *cnt, int32_t *rp,
                                   int32_t *col, int64_t R, int64_t cap)
{
    if (blockIdx.x != 0 || threadIdx.x != 0)
        return;
    int64_t n = 0;
    rp[0] = 0;
    for (int64_t r = 0; r < R; r++) {
        for (int64_t i = 0; i < cnt[r]; i++)
            col[n + i] = pad[off[r] + i];
        n += cnt[r];
        rp[r + 1] = (int32_t)n;
    }
    for (int64_t i = n; i < cap; i++)
        col[i] = -1;
}

// ---- select.token_budget (issue 20, session 5) ----
// One thread per (head, prefix key) for the column sums and the smoothing,
// one per head for its total, one per key for the head mean, one thread for
// the budget (gs heapsorted in scratch) and one per head for its cut (its
// importance heapsorted in scratch); every float64 sum in the contract's
// order, so the lists equal ref's.
__device__ void tb_heapsort(double *a, int64_t n)
{
    for (int64_t start = n / 2 - 1; start >= 0; start--) {
        int64_t r = start;
        for (;;) {
            int64_t c = 2 * r + 1;
            if (c >= n)
                break;
            if (c + 1 < n && a[c] < a[c + 1])
                c++;
            if (!(a[r] < a[c]))
                break;
            double t = a[r];
            a[r] = a[c];
            a[c] = t;
            r = c;
        }
    }
    for (int64_t end = n - 1; end > 0; end--) {
        double t = a[0];
        a[0] = a[end];
        a[end] = t;
        int64_t r = 0;
        for (;;) {
            int64_t c = 2 * r + 1;
            if (c >= end)
                break;
            if (c + 1 < end && a[c] < a[c + 1])
                c++;
            if (!(a[r] < a[c]))
                break;
            double u = a[r];
            a[r] = a[c];
            a[c] = u;
            r = c;
        }
    }
}

__global__ void tb_raw_kernel(const float *x, double *raw, int64_t H, int64_t W, int64_t C, int64_t P)
{
    int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (i >= H * P)
        return;
    int64_t h = i / P, j = i % P;
    double s = 0;
    for (int64_t r = 0; r < W; r++)
        s += x[(h * W + r) * C + j];
    raw[i] = s / (double)W;
}

__global__ void tb_smooth_kernel(const double *raw, double *imp, int64_t H, int64_t P, int64_t half, int64_t ks)
{
    int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (i >= H * P)
        return;
    int64_t h = i / P, j = i % P;
    int64_t lo = j - half > 0 ? j - half : 0, hi = j + half < P - 1 ? j + half : P - 1;
    double s = 0;
    for (int64_t t = lo; t <= hi; t++)
        s += raw[h * P + t];
    imp[i] = s / (double)ks;
}

__global__ void tb_norm_kernel(double *imp, int64_t H, int64_t P)
{
    int64_t h = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (h >= H)
        return;
    double tot = 0;
    for (int64_t j = 0; j < P; j++)
        tot += imp[h * P + j];
    for (int64_t j = 0; j < P; j++)
        imp[h * P + j] = tot > 0 ? imp[h * P + j] / tot : 0;
}

__global__ void tb_mean_kernel(const double *imp, double *g, int64_t H, int64_t P)
{
    int64_t j = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (j >= P)
        return;
    double s = 0;
    for (int64_t h = 0; h < H; h++)
        s += imp[h * P + j] / (double)H;
    g[j] = s;
}

__global__ void tb_budget_kernel(double *g, int32_t *info, int64_t P, double coverage, int64_t m_min)
{
    if (blockIdx.x != 0 || threadIdx.x != 0)
        return;
    double gt = 0;
    for (int64_t j = 0; j < P; j++)
        gt += g[j];
    for (int64_t j = 0; j < P; j++)
        g[j] = gt > 0 ? g[j] / gt : 0;
    tb_heapsort(g, P);
    int64_t count = 0;
    double cum = 0;
    while (count < P && (cum += g[count]) < coverage)
        count++;
    int64_t B = P;
    if (count > 0) {
        B = P - count - 1 > m_min ? P - count - 1 : m_min;
        B = B < P ? B : P;
    }
    info[0] = (int32_t)count;
    info[1] = (int32_t)B;
}

__global__ void tb_cut_kernel(const double *imp, double *work, const int32_t *info, int32_t *idx, int64_t H,
                              int64_t C, int64_t P)
{
    int64_t h = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (h >= H)
        return;
    int32_t *row = idx + h * C;
    int64_t B = info[1], n = 0;
    if (B >= P) {
        for (int64_t c = 0; c < C; c++)
            row[c] = (int32_t)c;
        return;
    }
    const double *x = imp + h * P;
    double *w = work + h * P;
    for (int64_t c = 0; c < P; c++)
        w[c] = x[c];
    tb_heapsort(w, P);
    int64_t D = P - B, need = D;
    double v = w[D - 1];
    for (int64_t c = 0; c < P; c++) {
        w[c] = x[c] < v ? 1.0 : 0.0;
        need -= x[c] < v;
    }
    for (int64_t c = P - 1; c >= 0 && need > 0; c--)
        if (x[c] == v) {
            w[c] = 1.0;
            need--;
        }
    for (int64_t c = 0; c < P; c++)
        if (w[c] == 0.0)
            row[n++] = (int32_t)c;
    for (int64_t c = P; c < C; c++)
        row[n++] = (int32_t)c;
    for (; n < C; n++)
        row[n] = -1;
}

// ---- select.theta_rows (issue 20, session 5) ----
// One thread per (head, row): a binary search for the first key >= r among
// the head's keys (padding -1 at the end), then the key before it when it
// is as near.
__global__ void theta_rows_kernel(const int32_t *keys, const float *vals, float *th, int64_t H, int64_t L,
                                  int64_t rows, int64_t r0, int64_t step, int64_t k)
{
    int64_t item = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (item >= H * rows)
        return;
    int64_t h = item / rows, i = item % rows, r = r0 + step * i;
    const int32_t *kh = keys + h * L;
    int64_t n = 0, lo = 0, hi = L;
    while (lo < hi) { // n = the number of keys (>= 0) before the padding
        int64_t mid = (lo + hi) / 2;
        if (kh[mid] >= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    n = lo;
    if (r <= k || n == 0) {
        th[item] = -1e30f;
        return;
    }
    lo = 0;
    hi = n - 1;
    while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        if (kh[mid] < r)
            lo = mid + 1;
        else
            hi = mid;
    }
    int64_t best = lo;
    if (lo > 0) {
        int64_t a = kh[lo - 1] - r, b = kh[lo] - r;
        if ((a < 0 ? -a : a) <= (b < 0 ? -b : b))
            best = lo - 1;
    }
    th[item] = vals[h * L + best];
}

}  // namespace

sl_status sl__cuda_select_chunks(const sl__kargs *a)
{
    const sl_select_chunks_params *p = static_cast<const sl_select_chunks_params *>(a->params);
    int64_t Hq = a->in[0].shape[0], R = a->in[0].shape[1], d = a->in[0].shape[2];
    int64_t Hk = a->in[1].shape[0], C = a->in[1].shape[1], cap = a->out[1].shape[0];
    if (R * C > ((int64_t)1 << 28))
        return sl__cuda_unsupported(a, "at most 2^28 (query block, chunk) pairs; found %lld", (long long)(R * C));
    std::vector<int64_t> off((size_t)R);
    for (int64_t r = 0, o = 0; r < R; r++) {
        off[(size_t)r] = o;
        o += sl__chunks_capacity(p, r);
    }
    sl__cuda_stage st(a);
    sl_status s = sl__cuda_stage_in(&st);
    if (s != SL_OK)
        return s;
    void *ka = nullptr, *doff = nullptr, *S = nullptr, *take = nullptr, *pad = nullptr, *cnt = nullptr;
    if ((s = sl__cuda_scratch(&st, (size_t)(C * d) * sizeof(double), &ka)) != SL_OK ||
        (s = sl__cuda_upload(&st, off.data(), off.size() * sizeof(int64_t), &doff)) != SL_OK ||
        (s = sl__cuda_scratch(&st, (size_t)(R * C) * sizeof(double), &S)) != SL_OK ||
        (s = sl__cuda_scratch(&st, (size_t)(R * C) * sizeof(int64_t), &take)) != SL_OK ||
        (s = sl__cuda_scratch(&st, (size_t)(cap > 0 ? cap : 1) * sizeof(int32_t), &pad)) != SL_OK ||
        (s = sl__cuda_scratch(&st, (size_t)R * sizeof(int64_t), &cnt)) != SL_OK)
        return s;
    SL_LAUNCH(chunks_keys_kernel, (int)((C + kThreads - 1) / kThreads), kThreads, 0, 0)(
        st.input<float>(1), static_cast<double *>(ka), Hk, C, d);
    SL_LAUNCH(chunks_row_kernel, (int)((R + kThreads - 1) / kThreads), kThreads, 0, 0)(
        st.input<float>(0), static_cast<const double *>(ka), st.input<int32_t>(2), static_cast<const int64_t *>(doff),
        static_cast<double *>(S), static_cast<int64_t *>(take), static_cast<int32_t *>(pad),
        static_cast<int64_t *>(cnt), *p, Hq, R, C, d);
    SL_LAUNCH(chunks_pack_kernel, 1, 1, 0, 0)(static_cast<const int32_t *>(pad), static_cast<const int64_t *>(doff),
                                              static_cast<const int64_t *>(cnt), st.output<int32_t>(0),
                                              st.output<int32_t>(1), R, cap);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_select_hip_tree(const sl__kargs *a)
{
    const sl_select_hip_tree_params *p = static_cast<const sl_select_hip_tree_params *>(a->params);
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    int64_t R = (dm.nq + p->bq - 1) / p->bq, C = (dm.nk + p->bk - 1) / p->bk, items = dm.hq * R;
    int64_t rows = (p->bq + p->qstride - 1) / p->qstride;
    size_t smem = (size_t)(rows * dm.d) * sizeof(float);
    if (dm.nq > INT32_MAX || dm.nk > INT32_MAX || items > INT32_MAX || p->kb > INT32_MAX / 3 || smem > 48 * 1024)
        return sl__cuda_unsupported(a, "query-block rows x head_dim up to 12288 floats (48 KiB of shared memory), "
                                    "sizes within int32; found %lld rows x %lld, Nq %lld, Nk %lld, kb %lld",
                                    (long long)rows, (long long)dm.d, (long long)dm.nq, (long long)dm.nk,
                                    (long long)p->kb);
    sl__cuda_stage st(a);
    sl_status s = sl__cuda_stage_in(&st);
    if (s != SL_OK)
        return s;
    if (items == 0)
        return sl__cuda_stage_out(&st, cudaGetLastError());
    void *nodes = nullptr;
    int64_t kbl = p->kb < C ? p->kb : C; // nodes exist only when T > kb, so kb < C
    if ((s = sl__cuda_scratch(&st, (size_t)items * 3 * (size_t)kbl * sizeof(HipNode), &nodes)) != SL_OK)
        return s;
    SL_LAUNCH(hip_tree_kernel, (int)items, kThreads, smem, 0)(
        st.input<float>(0), st.input<float>(1), st.output<uint8_t>(0), st.output<int32_t>(1),
        static_cast<HipNode *>(nodes), (int)dm.group, (int)dm.nq, (int)dm.nk, (int)dm.d, (int)R, (int)C, (int)p->bq,
        (int)p->bk, (int)p->kb, (int64_t)p->window, (int)p->causal, (int)p->qstride, (float)dm.scale);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_attn_threshold(const sl__kargs *a)
{
    const sl_attn_threshold_params *p = static_cast<const sl_attn_threshold_params *>(a->params);
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    int64_t items = dm.hq * dm.nq;
    if (dm.d > kMaxD || (items + kThreads - 1) / kThreads > INT32_MAX || dm.nk > INT32_MAX)
        return sl__cuda_unsupported(a, "head_dim up to %d; found head_dim %lld", kMaxD, (long long)dm.d);
    if (items == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    sl_status s = sl__cuda_stage_in(&st);
    if (s != SL_OK)
        return s;
    SL_LAUNCH(threshold_kernel, (int)((items + kThreads - 1) / kThreads), kThreads, 0, 0)(
        st.input<float>(0), st.input<float>(1), st.input<float>(2), st.input<float>(3), st.output<float>(0),
        st.output<float>(1), st.output<int32_t>(2), (int)dm.hq, (int)dm.group, (int)dm.nq, (int)dm.nk, (int)dm.d,
        (int)p->causal, (float)dm.scale, (int64_t)p->dense_upto, (int)p->keep_max);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_select_pq_match(const sl__kargs *a)
{
    const sl_select_pq_match_params *p = static_cast<const sl_select_pq_match_params *>(a->params);
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], 0);
    int64_t hc = a->in[2].shape[0], S = a->in[2].shape[1], C = a->in[2].shape[2], dc = a->in[2].shape[3];
    if (S > kMaxS || dm.hq * dm.nq > INT32_MAX || dm.nk > INT32_MAX || C > INT32_MAX)
        return sl__cuda_unsupported(a, "at most %d subspaces; found %lld", kMaxS, (long long)S);
    std::vector<int64_t> off((size_t)(dm.nq > 0 ? dm.nq : 1));
    int64_t per_head = 0;
    for (int64_t r = 0; r < dm.nq; r++) {
        int64_t n = p->causal ? dm.offset + r + 1 : dm.nk;
        n = n > dm.nk ? dm.nk : n;
        off[(size_t)r] = per_head;
        per_head += n < p->nnz ? n : p->nnz;
    }
    sl__cuda_stage st(a);
    sl_status s = sl__cuda_stage_in(&st);
    if (s != SL_OK)
        return s;
    if (dm.nq == 0) {
        if ((s = sl__cuda_clear_out(&st, 0)) != SL_OK)
            return s;
        return sl__cuda_stage_out(&st, cudaGetLastError());
    }
    void *kcode = nullptr, *doff = nullptr;
    int64_t krows = dm.hkv * dm.nk;
    if ((s = sl__cuda_scratch(&st, (size_t)(krows * S > 0 ? krows * S : 1) * sizeof(int32_t), &kcode)) != SL_OK ||
        (s = sl__cuda_upload(&st, off.data(), off.size() * sizeof(int64_t), &doff)) != SL_OK)
        return s;
    if (krows > 0)
        SL_LAUNCH(pq_key_kernel, (int)((krows + kThreads - 1) / kThreads), kThreads, 0, 0)(
            st.input<float>(1), st.input<float>(2), static_cast<int32_t *>(kcode), krows, (int)dm.nk, (int)dm.hkv,
            (int)hc, (int)S, (int)C, (int)dc);
    int64_t items = dm.hq * dm.nq;
    SL_LAUNCH(pq_row_kernel, (int)((items + kThreads - 1) / kThreads), kThreads, 0, 0)(
        st.input<float>(0), st.input<float>(2), static_cast<const int32_t *>(kcode), static_cast<const int64_t *>(doff),
        st.output<int32_t>(0), st.output<int32_t>(1), (int)dm.hq, (int)dm.group, (int)dm.nq, (int)dm.nk, (int)dm.hkv,
        (int)hc, (int)S, (int)C, (int)dc, (int)p->causal, (int64_t)p->nnz, (int)p->slots, per_head);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_select_token_budget(const sl__kargs *a)
{
    const sl_select_token_budget_params *p = static_cast<const sl_select_token_budget_params *>(a->params);
    int64_t H = a->in[0].shape[0], W = a->in[0].shape[1], C = a->in[0].shape[2], P = C - W;
    if ((H * P + kThreads - 1) / kThreads > INT32_MAX)
        return sl__cuda_unsupported(a, "at most 2^31 thread blocks; found %lld (head, key) pairs", (long long)(H * P));
    sl__cuda_stage st(a);
    sl_status s = sl__cuda_stage_in(&st);
    if (s != SL_OK)
        return s;
    void *raw = nullptr, *imp = nullptr, *g = nullptr;
    if ((s = sl__cuda_scratch(&st, (size_t)(H * P) * sizeof(double), &raw)) != SL_OK ||
        (s = sl__cuda_scratch(&st, (size_t)(H * P) * sizeof(double), &imp)) != SL_OK ||
        (s = sl__cuda_scratch(&st, (size_t)P * sizeof(double), &g)) != SL_OK)
        return s;
    int grid_hp = (int)((H * P + kThreads - 1) / kThreads), grid_h = (int)((H + kThreads - 1) / kThreads);
    int grid_p = (int)((P + kThreads - 1) / kThreads);
    double *rd = static_cast<double *>(raw), *id = static_cast<double *>(imp), *gd = static_cast<double *>(g);
    SL_LAUNCH(tb_raw_kernel, grid_hp, kThreads, 0, 0)(st.input<float>(0), rd, H, W, C, P);
    SL_LAUNCH(tb_smooth_kernel, grid_hp, kThreads, 0, 0)(rd, id, H, P, p->ks / 2, p->ks);
    SL_LAUNCH(tb_norm_kernel, grid_h, kThreads, 0, 0)(id, H, P);
    SL_LAUNCH(tb_mean_kernel, grid_p, kThreads, 0, 0)(id, gd, H, P);
    SL_LAUNCH(tb_budget_kernel, 1, 1, 0, 0)(gd, st.output<int32_t>(1), P, p->coverage, p->m_min);
    // raw is free after the smoothing: the cut's per-head work area
    SL_LAUNCH(tb_cut_kernel, grid_h, kThreads, 0, 0)(id, rd, st.output<int32_t>(1), st.output<int32_t>(0), H, C, P);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_select_theta_rows(const sl__kargs *a)
{
    const sl_select_theta_rows_params *p = static_cast<const sl_select_theta_rows_params *>(a->params);
    int64_t H = a->in[0].shape[0], L = a->in[0].shape[1], n = H * p->rows;
    if ((n + kThreads - 1) / kThreads > INT32_MAX)
        return sl__cuda_unsupported(a, "at most 2^31 thread blocks; found %lld (head, row) pairs", (long long)n);
    sl__cuda_stage st(a);
    sl_status s = sl__cuda_stage_in(&st);
    if (s != SL_OK || n == 0)
        return s != SL_OK ? s : sl__cuda_stage_out(&st, cudaSuccess);
    SL_LAUNCH(theta_rows_kernel, (int)((n + kThreads - 1) / kThreads), kThreads, 0, 0)(
        st.input<int32_t>(0), st.input<float>(1), st.output<float>(0), H, L, p->rows, p->r0, p->step, p->k);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}
