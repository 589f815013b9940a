/*
 * test_reasoning.c: the reasoning features from C. A step verifier that rejects steps holding
 * an "e" (no standing step but an exhausted one keeps it; rejected_steps = the retries), one
 * that stops at the first step; self-consistency (sample i equals a standalone chat seeded
 * seed + i; the vote counts the final answers); a distillation dataset written from a chat and
 * from samples, then resumed; a batch of conversations equal to each chat alone; and the error
 * paths.
 *
 * Run by r1-ffi/tests/c_api.rs (and under valgrind and AddressSanitizer by scripts/c-memcheck.sh):
 *   test_reasoning FIXTURE_DIR SCRATCH_DIR
 */
#include "r1.h"
#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OK(call) CHECK((call) == R1_OK, "%s", #call)

/* Rejects every step that holds an "e"; counts its calls. */
static int32_t reject_e(void *user_data, const char *step, size_t step_len, const char *reasoning,
                        size_t reasoning_len) {
    (void)reasoning;
    (void)reasoning_len;
    *(int *)user_data += 1;
    return memchr(step, 'e', step_len) != NULL ? R1_VERDICT_REJECT : R1_VERDICT_ACCEPT;
}

static int32_t stop_at_once(void *user_data, const char *step, size_t step_len, const char *reasoning,
                            size_t reasoning_len) {
    (void)user_data;
    (void)step;
    (void)step_len;
    (void)reasoning;
    (void)reasoning_len;
    return R1_VERDICT_STOP;
}

/* Counts each sample's events. */
static bool count_events(void *user_data, uint32_t sample, r1_channel channel, const char *text, size_t len,
                         uint32_t token) {
    (void)channel;
    (void)text;
    (void)len;
    (void)token;
    if (sample < 3) {
        ((int *)user_data)[sample] += 1;
    }
    return true;
}

static const char *const SPACE[] = {" "};

static r1_gen_params sampled(uint64_t seed, uint32_t max_tokens) {
    r1_gen_params p = r1_gen_params_default();
    p.sampling.temperature = 1.0f;
    p.sampling.seed = seed;
    p.max_tokens = max_tokens;
    return p;
}

static void verifiers(const r1_model *model) {
    r1_session *s = NULL;
    OK(r1_session_new(model, &s));
    r1_message chat[] = {{"user", "Think it through."}};
    int calls = 0;
    r1_gen_params p = sampled(3, 60);
    p.verifier = reject_e;
    p.verifier_user_data = &calls;
    p.max_step_retries = 30;
    p.step_separators = SPACE;
    p.n_step_separators = 1;
    r1_result result;
    OK(r1_session_chat(s, chat, 1, &p, NULL, NULL, &result));
    size_t n = r1_session_step_count(s);
    CHECK(n > 1 && calls > 0, "%zu steps, %d calls", n, calls);
    CHECK(result.usage.rejected_steps > 0, "the pattern never came up");
    uint32_t retries = 0;
    for (size_t i = 0; i < n; i++) {
        const char *text = NULL;
        uint32_t tries = 0;
        bool exhausted = true;
        r1_verdict last = R1_VERDICT_STOP;
        OK(r1_session_step(s, i, &text, &tries, &exhausted, &last));
        retries += tries - 1;
        /* The last step may be one the generation ended inside, never checked. */
        if (i + 1 < n && !exhausted) {
            CHECK(strchr(text, 'e') == NULL && last == R1_VERDICT_ACCEPT, "step %zu \"%s\" stands", i, text);
        }
    }
    CHECK(retries == result.usage.rejected_steps, "%u retries, %u rejected", retries, result.usage.rejected_steps);
    CHECK(r1_session_step(s, n, NULL, NULL, NULL, NULL) == R1_ERROR_INVALID_ARGUMENT, "step out of range");

    /* Stop at the first step: one step, the reasoning closed after it. */
    p.verifier = stop_at_once;
    p.verifier_user_data = NULL;
    OK(r1_session_reset(s));
    OK(r1_session_chat(s, chat, 1, &p, NULL, NULL, &result));
    r1_verdict last = R1_VERDICT_ACCEPT;
    CHECK(r1_session_step_count(s) == 1, "%zu steps", r1_session_step_count(s));
    OK(r1_session_step(s, 0, NULL, NULL, NULL, &last));
    CHECK(last == R1_VERDICT_STOP, "verdict %d", (int)last);
    r1_trace *trace = NULL;
    OK(r1_session_trace(s, &trace));
    CHECK(!r1_trace_truncated(trace), "the reasoning was closed");
    r1_trace_free(trace);
    r1_session_free(s);
}

static void self_consistency(const r1_model *model, const char *scratch) {
    r1_message chat[] = {{"user", "What is 2 + 2?"}};
    r1_gen_params p = sampled(7, 8);
    p.top_logprobs = 3;
    int events[3] = {0, 0, 0};
    r1_consensus *c = NULL;
    OK(r1_self_consistency(model, chat, 1, &p, 3, count_events, events, &c));
    CHECK(r1_consensus_sample_count(c) == 3, "%zu samples", r1_consensus_sample_count(c));
    CHECK(events[0] > 0 && events[1] > 0 && events[2] > 0, "events %d %d %d", events[0], events[1], events[2]);
    /* Sample 1 is the standalone chat seeded 7 + 1. */
    uint32_t ids[64], alone[64];
    size_t n = 0, m = 0;
    OK(r1_consensus_sample_ids(c, 1, ids, 64, &n));
    r1_session *s = NULL;
    OK(r1_session_new(model, &s));
    r1_gen_params q = sampled(8, 8);
    OK(r1_session_chat(s, chat, 1, &q, NULL, NULL, NULL));
    OK(r1_session_generated_ids(s, alone, 64, &m));
    CHECK(n == m && n > 0 && memcmp(ids, alone, n * sizeof ids[0]) == 0, "%zu vs %zu ids", n, m);
    /* The vote counts the samples' final answers. */
    uint32_t total = 0, best = 0;
    size_t answered = 0;
    for (size_t i = 0; i < 3; i++) {
        answered += r1_consensus_sample_final_answer(c, i) != NULL;
    }
    for (size_t i = 0; i < r1_consensus_vote_count(c); i++) {
        const char *a = NULL;
        uint32_t v = 0;
        OK(r1_consensus_vote(c, i, &a, &v));
        total += v;
        best = v > best ? v : best;
    }
    CHECK(total == answered, "%u votes for %zu answers", total, answered);
    const char *winner = r1_consensus_answer(c);
    CHECK((winner == NULL) == (answered == 0), "a winner iff an answer");
    CHECK(r1_consensus_sample_final_answer(c, 3) == NULL, "sample out of range");
    CHECK(r1_self_consistency(model, chat, 1, &p, 0, NULL, NULL, &c) == R1_ERROR_INVALID_ARGUMENT, "0 samples");

    /* A dataset: this chat again with log-probabilities, then the three samples; resumed. */
    char path[4096];
    snprintf(path, sizeof path, "%s/d.jsonl", scratch);
    remove(path);
    r1_distill *w = NULL;
    OK(r1_distill_open(path, 3, &w));
    CHECK(r1_distill_write_last(w, s) == R1_ERROR_INVALID_ARGUMENT, "a chat without top_logprobs");
    q.top_logprobs = 3;
    OK(r1_session_reset(s));
    OK(r1_session_chat(s, chat, 1, &q, NULL, NULL, NULL));
    OK(r1_distill_write_last(w, s));
    for (size_t i = 0; i < 3; i++) {
        OK(r1_distill_write_sample(w, c, i));
    }
    CHECK(r1_distill_write_sample(w, c, 3) == R1_ERROR_INVALID_ARGUMENT, "sample out of range");
    CHECK(r1_distill_count(w) == 4, "%zu generations", r1_distill_count(w));
    OK(r1_distill_close(w));
    OK(r1_distill_open(path, 3, &w));
    char prompt[4096];
    size_t len = 0;
    OK(r1_apply_chat_template(model, chat, 1, true, prompt, sizeof prompt, &len));
    CHECK(r1_distill_count(w) == 4 && r1_distill_contains(w, prompt), "resumed");
    CHECK(!r1_distill_contains(w, "another prompt"), "an unknown prompt");
    OK(r1_distill_close(w));
    CHECK(r1_distill_open(path, 0, &w) == R1_ERROR_INVALID_ARGUMENT, "top_k 0");
    CHECK(r1_distill_open(path, 5, &w) == R1_ERROR_INVALID_ARGUMENT, "another top_k than the dataset's");
    CHECK(r1_distill_open(NULL, 3, &w) == R1_ERROR_NULL_ARGUMENT, "NULL path");
    CHECK(r1_distill_close(NULL) == R1_OK, "close(NULL)");
    CHECK(r1_distill_count(NULL) == 0 && !r1_distill_contains(NULL, "x"), "NULL writer");
    r1_consensus_free(c);
    r1_consensus_free(NULL);
    r1_session_free(s);
}

/* Collects each conversation's streamed text (3 conversations, 4 KiB each). */
static char texts[3][4096];
static size_t lens[3];

static bool collect(void *user_data, uint32_t sequence, r1_channel channel, const char *text, size_t len,
                    uint32_t token) {
    (void)user_data;
    (void)channel;
    (void)token;
    if (sequence < 3 && lens[sequence] + len < sizeof texts[0]) {
        memcpy(texts[sequence] + lens[sequence], text, len);
        lens[sequence] += len;
    }
    return true;
}

static bool collect_one(void *user_data, r1_channel channel, const char *text, size_t len, uint32_t token) {
    return collect(NULL, *(uint32_t *)user_data, channel, text, len, token);
}

static void batch(const r1_model *model) {
    r1_message a[] = {{"user", "Hi"}};
    r1_message b[] = {{"system", "Be brief."}, {"user", "What is 2 + 2?"}};
    r1_message c[] = {{"user", "A longer question, asked at some length."}};
    r1_conversation convs[] = {{a, 1}, {b, 2}, {c, 1}};
    r1_gen_params p = sampled(4, 12);
    r1_result results[3];
    OK(r1_generate_batch(model, convs, 3, &p, collect, NULL, results));
    char batched[3][4096];
    size_t batched_len[3];
    memcpy(batched, texts, sizeof texts);
    memcpy(batched_len, lens, sizeof lens);
    memset(lens, 0, sizeof lens);
    for (uint32_t i = 0; i < 3; i++) {
        r1_session *s = NULL;
        r1_result alone;
        OK(r1_session_new(model, &s));
        OK(r1_session_chat(s, convs[i].messages, convs[i].n_messages, &p, collect_one, &i, &alone));
        CHECK(lens[i] == batched_len[i] && memcmp(texts[i], batched[i], lens[i]) == 0, "conversation %u's text", i);
        CHECK(alone.finish_reason == results[i].finish_reason, "conversation %u's finish", i);
        CHECK(alone.usage.reasoning_tokens + alone.usage.answer_tokens ==
                  results[i].usage.reasoning_tokens + results[i].usage.answer_tokens,
              "conversation %u's tokens", i);
        r1_session_free(s);
    }
    CHECK(r1_generate_batch(model, NULL, 3, &p, NULL, NULL, NULL) == R1_ERROR_NULL_ARGUMENT, "NULL conversations");
    OK(r1_generate_batch(model, convs, 0, &p, NULL, NULL, NULL));
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: test_reasoning FIXTURE_DIR SCRATCH_DIR\n");
        return 2;
    }
    r1_model *model = NULL;
    if (r1_model_load(argv[1], NULL, &model) != R1_OK) {
        fprintf(stderr, "load: %s\n", r1_last_error_message());
        return 1;
    }
    verifiers(model);
    self_consistency(model, argv[2]);
    batch(model);
    r1_model_free(model);
    printf("%d checks, %d failures\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
