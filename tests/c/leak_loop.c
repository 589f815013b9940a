/* 1,000 short generations through the C API on one model (a session made, used and freed
 * each time), then the slope of the heap's bytes in use (glibc's mallinfo2, which counts what
 * libr1 allocates too) and of the resident set. Run by r1-ffi/tests/c_api.rs:
 *   leak_loop MODEL_DIR          prints "heap B/gen rss B/gen" and fails past 32 bytes of heap.
 * glibc's count moves by a few kilobytes with the threads' caches of freed chunks (measured:
 * 9 to 19 bytes a generation, shrinking as the run gets longer); a leak of one 64-byte
 * allocation a generation fails. */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include "r1.h"

static double heap_bytes(void) {
    struct mallinfo2 m = mallinfo2();
    return (double)m.uordblks + (double)m.hblkhd;
}

static double rss_bytes(void) {
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
        fclose(f);
    }
    return (double)resident * 4096.0;
}

/* Least-squares slope of ys[0..n) over their indices. */
static double slope(const double *ys, int n) {
    double mx = (n - 1) / 2.0, my = 0, num = 0, den = 0;
    for (int i = 0; i < n; i++) my += ys[i] / n;
    for (int i = 0; i < n; i++) {
        num += (i - mx) * (ys[i] - my);
        den += (i - mx) * (i - mx);
    }
    return num / den;
}

static int generate(r1_model *model, int i) {
    r1_session *s = NULL;
    if (r1_session_new(model, &s) != R1_OK) return 0;
    char prompt[64];
    snprintf(prompt, sizeof prompt, "question %d", i % 100);
    r1_gen_params p = r1_gen_params_default();
    p.max_tokens = 6;
    r1_result out;
    int ok = r1_session_complete(s, prompt, &p, NULL, NULL, &out) == R1_OK;
    r1_session_free(s);
    return ok;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: leak_loop MODEL_DIR\n");
        return 2;
    }
    r1_model *model = NULL;
    if (r1_model_load(argv[1], NULL, &model) != R1_OK) {
        fprintf(stderr, "load: %s\n", r1_last_error_message());
        return 1;
    }
    for (int i = 0; i < 1000; i++) /* warm-up: arenas, the pool, the tokenizer's word cache */
        if (!generate(model, i)) return 1;
    enum { SAMPLES = 20, EVERY = 50 };
    double heap[SAMPLES], rss[SAMPLES];
    for (int i = 0; i < SAMPLES * EVERY; i++) {
        if (!generate(model, i)) {
            fprintf(stderr, "generate: %s\n", r1_last_error_message());
            return 1;
        }
        if (i % EVERY == EVERY - 1) {
            heap[i / EVERY] = heap_bytes();
            rss[i / EVERY] = rss_bytes();
        }
    }
    r1_model_free(model);
    double h = slope(heap, SAMPLES) / EVERY, r = slope(rss, SAMPLES) / EVERY;
    printf("heap %.0f B/gen rss %.0f B/gen (heap %.2f -> %.2f MB, rss %.1f -> %.1f MB)\n", h, r,
           heap[0] / 1e6, heap[SAMPLES - 1] / 1e6, rss[0] / 1e6, rss[SAMPLES - 1] / 1e6);
    return h < 32.0 ? 0 : 1;
}
