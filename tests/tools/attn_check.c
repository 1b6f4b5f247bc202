/* attn_check.c — an independent checker for the CLI tests, sharing no code
 * with sparselab: it writes random q/k/v safetensors files with its own
 * writer, and checks an `eval --out` file's o and lse against its own naive
 * float64 attention (causal, with an optional window w and n_init sinks).
 *
 *   attn_check make OUT.safetensors HQ HKV N D SEED
 *   attn_check check QKV.safetensors OUT.safetensors TOL [w [n_init]]
 * Prints the relative L2 errors; exits 0 when both are below TOL. */
#define _DEFAULT_SOURCE
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct arr { char name[16]; long shape[3]; int ndim; float *data; } arr;

static uint64_t rng_state;
static double uniform(void)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(rng_state >> 11) * (1.0 / 9007199254740992.0);
}

static double gauss(void)
{
    double u = uniform(), v = uniform();
    return sqrt(-2 * log(u + 1e-300)) * cos(2 * M_PI * v);
}

static int make(const char *path, long hq, long hkv, long n, long d)
{
    long counts[3] = {hq * n * d, hkv * n * d, hkv * n * d};
    long heads[3] = {hq, hkv, hkv};
    const char *names[3] = {"k", "q", "v"}; /* any order; sorted here */
    int map[3] = {1, 0, 2};                 /* names[i] holds tensor map[i]: q=0,k=1,v=2 */
    char header[1024];
    long off = 0;
    int len = snprintf(header, sizeof header, "{");
    for (int i = 0; i < 3; i++) {
        long c = counts[map[i]];
        len += snprintf(header + len, sizeof header - (size_t)len,
                        "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%ld,%ld,%ld],\"data_offsets\":[%ld,%ld]}", i ? "," : "",
                        names[i], heads[map[i]], n, d, off, off + 4 * c);
        off += 4 * c;
    }
    len += snprintf(header + len, sizeof header - (size_t)len, "}");
    while (len % 8)
        header[len++] = ' ';
    FILE *f = fopen(path, "wb");
    if (!f)
        return 1;
    uint64_t hl = (uint64_t)len;
    unsigned char le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)(hl >> (8 * i));
    fwrite(le, 1, 8, f);
    fwrite(header, 1, (size_t)len, f);
    for (int i = 0; i < 3; i++)
        for (long j = 0; j < counts[map[i]]; j++) {
            float x = (float)(gauss() * (map[i] == 2 ? 1.0 : 1.3));
            fwrite(&x, 4, 1, f);
        }
    return fclose(f) != 0;
}

/* Reads the named F32 tensors of a safetensors file (tiny parser that
 * expects the header layout every writer produces: "name":{...} objects). */
static int load(const char *path, arr *out, int n_want, const char *const *want)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return 1;
    unsigned char le[8];
    if (fread(le, 1, 8, f) != 8)
        return 1;
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++)
        hl |= (uint64_t)le[i] << (8 * i);
    if (hl > (1u << 24))
        return 1;
    char *h = malloc(hl + 1);
    if (fread(h, 1, hl, f) != hl)
        return 1;
    h[hl] = 0;
    for (int t = 0; t < n_want; t++) {
        char key[32];
        snprintf(key, sizeof key, "\"%s\":", want[t]);
        char *p = strstr(h, key);
        if (!p)
            return fprintf(stderr, "%s: no tensor %s\n", path, want[t]), 1;
        char *sh = strstr(p, "\"shape\":[") + 9, *of = strstr(p, "\"data_offsets\":[") + 16;
        arr *a = &out[t];
        snprintf(a->name, sizeof a->name, "%s", want[t]);
        a->ndim = 0;
        long numel = 1;
        while (*sh != ']') {
            a->shape[a->ndim] = strtol(sh, &sh, 10);
            numel *= a->shape[a->ndim++];
            if (*sh == ',')
                sh++;
        }
        long b = strtol(of, &of, 10);
        a->data = malloc(sizeof(float) * (size_t)numel);
        fseek(f, (long)(8 + hl) + b, SEEK_SET);
        if (fread(a->data, sizeof(float), (size_t)numel, f) != (size_t)numel)
            return 1;
    }
    free(h);
    fclose(f);
    return 0;
}

static int check(const char *qkv, const char *res, double tol, long w, long n_init)
{
    const char *const qn[3] = {"q", "k", "v"}, *const rn[2] = {"o", "lse"};
    arr in[3], out[2];
    if (load(qkv, in, 3, qn) || load(res, out, 2, rn))
        return fprintf(stderr, "cannot read inputs\n"), 2;
    long hq = in[0].shape[0], n = in[0].shape[1], d = in[0].shape[2], hkv = in[1].shape[0];
    double eo = 0, no = 0, el = 0, nl = 0;
    double *s = malloc(sizeof(double) * (size_t)n);
    for (long h = 0; h < hq; h++) {
        long g = h / (hq / hkv);
        for (long i = 0; i < n; i++) {
            double m = -INFINITY;
            for (long j = 0; j <= i; j++) {
                int keep = w <= 0 || i - j < w || j < n_init;
                s[j] = -INFINITY;
                if (!keep)
                    continue;
                double dot = 0;
                for (long c = 0; c < d; c++)
                    dot += (double)in[0].data[(h * n + i) * d + c] * in[1].data[(g * n + j) * d + c];
                s[j] = dot / sqrt((double)d);
                m = fmax(m, s[j]);
            }
            double z = 0;
            for (long j = 0; j <= i; j++)
                z += isinf(s[j]) ? 0 : exp(s[j] - m);
            for (long c = 0; c < d; c++) {
                double acc = 0;
                for (long j = 0; j <= i; j++)
                    acc += isinf(s[j]) ? 0 : exp(s[j] - m) * in[2].data[(g * n + j) * d + c];
                double ref = acc / z, got = out[0].data[(h * n + i) * d + c];
                eo += (got - ref) * (got - ref);
                no += ref * ref;
            }
            double lref = m + log(z), lgot = out[1].data[h * n + i];
            el += (lgot - lref) * (lgot - lref);
            nl += lref * lref;
        }
    }
    double ro = sqrt(eo / no), rl = sqrt(el / nl);
    printf("rel_l2(o) = %.3g, rel_l2(lse) = %.3g\n", ro, rl);
    return ro < tol && rl < tol ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 8 && strcmp(argv[1], "make") == 0) {
        rng_state = strtoull(argv[7], NULL, 10) * 2654435761ULL + 1;
        return make(argv[2], atol(argv[3]), atol(argv[4]), atol(argv[5]), atol(argv[6]));
    }
    if (argc >= 5 && strcmp(argv[1], "check") == 0)
        return check(argv[2], argv[3], atof(argv[4]), argc > 5 ? atol(argv[5]) : 0, argc > 6 ? atol(argv[6]) : 0);
    fprintf(stderr, "usage: attn_check make OUT HQ HKV N D SEED | check QKV OUT TOL [w [n_init]]\n");
    return 2;
}
