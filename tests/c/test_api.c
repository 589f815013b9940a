/*
 * test_api.c: the C API's contract, from C. Every error path (NULL for each pointer, a bad
 * path, a truncated file, invalid UTF-8, too-small buffers, an enum out of range), a cancel from
 * a second thread, a stop from the token callback, free(NULL); and the numbers against
 * transformers' references: logits (rel 1e-4) and greedy chat tokens.
 *
 * Run by r1-ffi/tests/c_api.rs (and under valgrind and AddressSanitizer by scripts/c-memcheck.sh):
 *   test_api FIXTURE_DIR TRUNCATED_FILE LOGITS_F32_FILE INPUT_IDS USER_MESSAGE GREEDY_IDS
 * where the ids are comma-separated and the logits file holds the reference row-major f32s.
 */
#include "r1.h"
#include "check.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


/* A status and, for errors, a message that mentions `needle` (NULL: any non-empty message). */
static void expect(r1_status got, r1_status want, const char *needle, const char *what) {
    CHECK(got == want, "%s: got %s, want %s", what, r1_status_name(got), r1_status_name(want));
    const char *msg = r1_last_error_message();
    if (want == R1_OK) {
        CHECK(msg != NULL && msg[0] == '\0', "%s: message after success is \"%s\"", what, msg);
    } else {
        CHECK(msg != NULL && msg[0] != '\0', "%s: no message", what);
        if (needle != NULL) {
            CHECK(strstr(msg, needle) != NULL, "%s: message \"%s\" does not name \"%s\"", what, msg, needle);
        }
    }
}

static size_t parse_ids(const char *csv, uint32_t *out, size_t cap) {
    size_t n = 0;
    const char *p = csv;
    while (*p != '\0' && n < cap) {
        char *end = NULL;
        out[n++] = (uint32_t)strtoul(p, &end, 10);
        p = (*end == ',') ? end + 1 : end;
        if (end == p && *p != '\0') {
            break;
        }
    }
    return n;
}

/* ---- streaming callbacks ---- */

typedef struct {
    r1_session *session;
    int tokens;
    int stop_after;      /* return false at this token (0 = never) */
    int cancel_at;       /* cancel from a second thread at this token (0 = never) */
    int cancelled_by_thread;
} stream_state;

static void *cancel_thread(void *arg) {
    stream_state *s = (stream_state *)arg;
    s->cancelled_by_thread = (r1_session_cancel(s->session) == R1_OK);
    return NULL;
}

static bool on_token(void *user_data, r1_channel channel, const char *text, size_t len, uint32_t token) {
    stream_state *s = (stream_state *)user_data;
    (void)channel;
    (void)text;
    (void)len;
    if (token == UINT32_MAX) {
        return true; /* text released at the end, not a token */
    }
    s->tokens++;
    if (s->cancel_at != 0 && s->tokens == s->cancel_at) {
        pthread_t t;
        pthread_create(&t, NULL, cancel_thread, s);
        pthread_join(t, NULL);
    }
    return !(s->stop_after != 0 && s->tokens >= s->stop_after);
}

static bool stop_loading(void *user_data, uint64_t done, uint64_t total) {
    int *calls = (int *)user_data;
    (void)done;
    (void)total;
    return ++*calls < 2;
}

/* ---- the checks ---- */

static void null_arguments(r1_model *model, r1_session *session) {
    r1_model *m = NULL;
    uint32_t ids[8];
    size_t n = 0;
    char buf[64];
    float f[4];
    r1_message msg = {"user", "hi"};
    r1_message no_role = {NULL, "hi"};
    r1_session *s = NULL;
    r1_trace *t = NULL;
    expect(r1_model_load(NULL, NULL, &m), R1_ERROR_NULL_ARGUMENT, "path", "load NULL path");
    expect(r1_model_load("x", NULL, NULL), R1_ERROR_NULL_ARGUMENT, "out", "load NULL out");
    expect(r1_tokenize(NULL, "a", 1, true, ids, 8, &n), R1_ERROR_NULL_ARGUMENT, "model", "tokenize NULL model");
    expect(r1_tokenize(model, NULL, 3, true, ids, 8, &n), R1_ERROR_NULL_ARGUMENT, "text", "tokenize NULL text");
    expect(r1_tokenize(model, "abc", 3, true, ids, 8, NULL), R1_ERROR_NULL_ARGUMENT, "n_out", "tokenize NULL n_out");
    expect(r1_tokenize(model, "abc", 3, true, NULL, 8, &n), R1_ERROR_NULL_ARGUMENT, NULL, "tokenize NULL ids");
    expect(r1_detokenize(model, NULL, 2, buf, sizeof buf, &n), R1_ERROR_NULL_ARGUMENT, "ids", "detokenize NULL ids");
    expect(r1_detokenize(model, ids, 0, buf, sizeof buf, NULL), R1_ERROR_NULL_ARGUMENT, "len_out", "detokenize NULL len");
    expect(r1_apply_chat_template(model, NULL, 1, true, buf, sizeof buf, &n), R1_ERROR_NULL_ARGUMENT, "messages",
           "template NULL messages");
    expect(r1_apply_chat_template(model, &no_role, 1, true, buf, sizeof buf, &n), R1_ERROR_NULL_ARGUMENT,
           "messages[0].role", "template NULL role");
    expect(r1_model_logits(model, ids, 1, NULL, 100000), R1_ERROR_NULL_ARGUMENT, "out", "logits NULL out");
    expect(r1_model_logits(NULL, ids, 1, f, 4), R1_ERROR_NULL_ARGUMENT, "model", "logits NULL model");
    expect(r1_session_new(NULL, &s), R1_ERROR_NULL_ARGUMENT, "model", "session NULL model");
    expect(r1_session_new(model, NULL), R1_ERROR_NULL_ARGUMENT, "out", "session NULL out");
    expect(r1_session_chat(NULL, &msg, 1, NULL, NULL, NULL, NULL), R1_ERROR_NULL_ARGUMENT, "session", "chat NULL");
    expect(r1_session_chat(session, NULL, 1, NULL, NULL, NULL, NULL), R1_ERROR_NULL_ARGUMENT, "messages",
           "chat NULL messages");
    expect(r1_session_complete(session, NULL, NULL, NULL, NULL, NULL), R1_ERROR_NULL_ARGUMENT, "prompt",
           "complete NULL prompt");
    expect(r1_session_reset(NULL), R1_ERROR_NULL_ARGUMENT, "session", "reset NULL");
    expect(r1_session_cancel(NULL), R1_ERROR_NULL_ARGUMENT, "session", "cancel NULL");
    expect(r1_session_generated_ids(NULL, ids, 8, &n), R1_ERROR_NULL_ARGUMENT, "session", "ids NULL");
    expect(r1_session_trace(session, NULL), R1_ERROR_NULL_ARGUMENT, "out", "trace NULL out");
    expect(r1_trace_parse(NULL, 4, false, &t), R1_ERROR_NULL_ARGUMENT, "text", "parse NULL text");
    expect(r1_trace_parse("abc", 3, false, NULL), R1_ERROR_NULL_ARGUMENT, "out", "parse NULL out");
    /* Accessors and frees of NULL handles are harmless. */
    CHECK(r1_model_vocab_size(NULL) == 0 && r1_model_context_length(NULL) == 0, "sizes of NULL");
    CHECK(r1_trace_reasoning(NULL) == NULL && r1_trace_step(NULL, 0) == NULL, "trace of NULL");
    CHECK(r1_trace_step_count(NULL) == 0 && !r1_trace_truncated(NULL), "trace counts of NULL");
    r1_model_free(NULL);
    r1_session_free(NULL);
    r1_trace_free(NULL);
}

static void bad_files(const char *truncated) {
    r1_model *m = NULL;
    expect(r1_model_load("/nonexistent/r1-model", NULL, &m), R1_ERROR_IO, "/nonexistent/r1-model", "bad path");
    CHECK(m == NULL, "out untouched on failure");
    expect(r1_model_load(truncated, NULL, &m), R1_ERROR_FORMAT, NULL, "truncated file");
    CHECK(m == NULL, "out untouched on failure");
    r1_load_params p = r1_load_params_default();
    *(int *)&p.dtype = 7; /* an enum value C allows and r1 does not know */
    expect(r1_model_load(truncated, &p, &m), R1_ERROR_INVALID_ARGUMENT, "dtype 7", "dtype out of range");
}

static void strings_and_buffers(r1_model *model) {
    const char bad_utf8[] = {'a', (char)0xff, 'b', 0};
    uint32_t ids[256];
    size_t n = 12345;
    expect(r1_tokenize(model, bad_utf8, 3, true, ids, 256, &n), R1_ERROR_INVALID_UTF8, "UTF-8", "invalid UTF-8");
    CHECK(n == 12345, "n_out untouched on failure");
    const char *text = "Hello, world! Hello again.";
    expect(r1_tokenize(model, text, strlen(text), false, ids, 256, &n), R1_OK, NULL, "tokenize");
    size_t needed = n;
    CHECK(needed > 2, "tokens: %zu", needed);
    n = 0;
    expect(r1_tokenize(model, text, strlen(text), false, ids, 1, &n), R1_ERROR_BUFFER_TOO_SMALL, NULL, "tokenize small");
    CHECK(n == needed, "needed %zu, told %zu", needed, n);
    expect(r1_tokenize(model, text, strlen(text), false, NULL, 0, &n), R1_ERROR_BUFFER_TOO_SMALL, NULL, "size query");
    CHECK(n == needed, "size query: %zu", n);

    char buf[256];
    size_t len = 0;
    expect(r1_detokenize(model, ids, needed, buf, sizeof buf, &len), R1_OK, NULL, "detokenize");
    CHECK(len == strlen(text) && strcmp(buf, text) == 0, "round trip: \"%s\" (%zu)", buf, len);
    len = 0;
    expect(r1_detokenize(model, ids, needed, buf, 4, &len), R1_ERROR_BUFFER_TOO_SMALL, NULL, "detokenize small");
    CHECK(len == strlen(text), "needed %zu", len);
    uint32_t bad_id = 1u << 30;
    expect(r1_detokenize(model, &bad_id, 1, buf, sizeof buf, &len), R1_ERROR_INVALID_ARGUMENT, "1073741824",
           "detokenize bad id");

    r1_message msgs[2] = {{"system", "Be brief."}, {"user", "Hi"}};
    expect(r1_apply_chat_template(model, msgs, 2, true, buf, sizeof buf, &len), R1_OK, NULL, "template");
    CHECK(strstr(buf, "Be brief.") != NULL && strstr(buf, "Hi") != NULL, "rendered: %s", buf);
    size_t full = len;
    expect(r1_apply_chat_template(model, msgs, 2, true, buf, 3, &len), R1_ERROR_BUFFER_TOO_SMALL, NULL, "template small");
    CHECK(len == full, "template needed %zu, told %zu", full, len);
    r1_message bad = {"user", bad_utf8};
    expect(r1_apply_chat_template(model, &bad, 1, true, buf, sizeof buf, &len), R1_ERROR_INVALID_UTF8,
           "messages[0].content", "template invalid UTF-8");

    CHECK(strcmp(r1_status_name(R1_ERROR_IO), "R1_ERROR_IO") == 0, "status name");
    CHECK(strcmp(r1_status_name(R1_OK), "R1_OK") == 0, "status name OK");
    CHECK(r1_version()[0] != '\0', "version");
}

static void logits_against_transformers(r1_model *model, const char *logits_file, const char *ids_csv) {
    uint32_t ids[256];
    size_t n = parse_ids(ids_csv, ids, 256);
    size_t vocab = r1_model_vocab_size(model);
    size_t count = n * vocab;
    float *want = malloc(count * sizeof(float));
    float *got = malloc(count * sizeof(float));
    FILE *f = fopen(logits_file, "rb");
    CHECK(f != NULL, "open %s", logits_file);
    if (f == NULL) {
        free(want);
        free(got);
        return;
    }
    size_t read = fread(want, sizeof(float), count, f);
    fclose(f);
    CHECK(read == count, "reference has %zu floats, want %zu", read, count);
    expect(r1_model_logits(model, ids, n, got, count - 1), R1_ERROR_BUFFER_TOO_SMALL, NULL, "logits small");
    expect(r1_model_logits(model, ids, n, got, count), R1_OK, NULL, "logits");
    double num = 0, den = 0;
    for (size_t i = 0; i < count; i++) {
        double d = (double)got[i] - (double)want[i];
        num += d * d;
        den += (double)want[i] * (double)want[i];
    }
    double rel = sqrt(num / (den > 0 ? den : 1));
    CHECK(rel <= 1e-4, "logits rel L2 %.3e", rel);
    printf("logits: %zu x %zu, rel L2 %.2e against transformers\n", n, vocab, rel);
    uint32_t bad = (uint32_t)vocab;
    expect(r1_model_logits(model, &bad, 1, got, vocab), R1_ERROR_INVALID_ARGUMENT, "outside the vocabulary",
           "logits bad id");
    free(want);
    free(got);
}

static void greedy_chat(r1_session *session, const char *user, const char *greedy_csv) {
    uint32_t want[256];
    size_t n_want = parse_ids(greedy_csv, want, 256);
    r1_message msg = {"user", user};
    r1_gen_params p = r1_gen_params_default();
    p.sampling.greedy = true;
    p.max_tokens = (uint32_t)n_want;
    stream_state s = {session, 0, 0, 0, 0};
    r1_result result;
    expect(r1_session_chat(session, &msg, 1, &p, on_token, &s, &result), R1_OK, NULL, "greedy chat");
    uint32_t got[256];
    size_t n = 0;
    expect(r1_session_generated_ids(session, got, 256, &n), R1_OK, NULL, "generated ids");
    CHECK(n == n_want, "generated %zu ids, want %zu", n, n_want);
    int same = n == n_want;
    for (size_t i = 0; same && i < n; i++) {
        same = got[i] == want[i];
    }
    CHECK(same, "greedy ids differ from transformers'");
    CHECK(s.tokens == (int)n, "callback saw %d tokens for %zu ids", s.tokens, n);
    CHECK(result.usage.reasoning_tokens + result.usage.answer_tokens == n, "usage counts");
    printf("greedy chat: %zu tokens equal transformers'\n", n);
    r1_trace *trace = NULL;
    expect(r1_session_trace(session, &trace), R1_OK, NULL, "trace");
    CHECK(r1_trace_reasoning(trace) != NULL && r1_trace_answer(trace) != NULL, "trace strings");
    r1_trace_free(trace);
    /* A second turn finds the first in the cache. */
    r1_message turn2[3] = {{"user", user}, {"assistant", "ok"}, {"user", "and then?"}};
    expect(r1_session_chat(session, turn2, 3, &p, NULL, NULL, &result), R1_OK, NULL, "second turn");
    CHECK(result.usage.cached_prompt_tokens > 0, "cached prompt tokens: %u", result.usage.cached_prompt_tokens);
}

static void cancel_and_stop(r1_model *model, r1_session *session) {
    r1_message msg = {"user", "Tell me a very long story."};
    r1_gen_params p = r1_gen_params_default();
    p.sampling.greedy = true;
    p.max_tokens = 200;
    r1_result result;
    stream_state s = {session, 0, 0, 2, 0};
    expect(r1_session_chat(session, &msg, 1, &p, on_token, &s, &result), R1_OK, NULL, "chat cancelled by thread");
    CHECK(s.cancelled_by_thread, "the second thread's cancel succeeded");
    CHECK(result.finish_reason == R1_FINISH_CANCELLED, "finish %d", (int)result.finish_reason);
    CHECK(s.tokens <= 3, "cancelled within a token: %d tokens", s.tokens);
    /* The next generation starts uncancelled; a false from the callback stops it. */
    stream_state stop = {session, 0, 3, 0, 0};
    expect(r1_session_chat(session, &msg, 1, &p, on_token, &stop, &result), R1_OK, NULL, "chat stopped by callback");
    CHECK(result.finish_reason == R1_FINISH_CANCELLED, "finish %d", (int)result.finish_reason);
    size_t n = 0;
    uint32_t ids[256];
    expect(r1_session_generated_ids(session, ids, 256, &n), R1_OK, NULL, "ids after stop");
    CHECK(n == 3, "stopped after 3 tokens, generated %zu", n);
    /* Raw completion, stop sequences, bad parameters. */
    const char *stops[1] = {"\xff"};
    p.stop = stops;
    p.n_stop = 1;
    expect(r1_session_complete(session, "Once upon a time", &p, NULL, NULL, &result), R1_ERROR_INVALID_UTF8,
           "params->stop[0]", "stop not UTF-8");
    p.stop = NULL;
    p.n_stop = 0;
    p.sampling.greedy = false;
    p.sampling.temperature = -1.0f;
    expect(r1_session_complete(session, "Once upon a time", &p, NULL, NULL, &result), R1_ERROR_INVALID_ARGUMENT,
           "temperature", "negative temperature");
    p = r1_gen_params_default();
    p.max_tokens = 4;
    p.sampling.seed = 7;
    expect(r1_session_complete(session, "Once upon a time", &p, NULL, NULL, &result), R1_OK, NULL, "complete");
    CHECK(result.finish_reason == R1_FINISH_MAX_TOKENS, "finish %d", (int)result.finish_reason);
    /* A prompt longer than the context. */
    size_t ctx = r1_model_context_length(model);
    char *long_prompt = malloc(ctx * 4 + 1);
    for (size_t i = 0; i < ctx * 2; i++) {
        long_prompt[2 * i] = 'a';
        long_prompt[2 * i + 1] = ' ';
    }
    long_prompt[ctx * 4] = '\0';
    expect(r1_session_complete(session, long_prompt, &p, NULL, NULL, &result), R1_ERROR_CONTEXT_FULL, NULL,
           "prompt past the context");
    free(long_prompt);
    expect(r1_session_reset(session), R1_OK, NULL, "reset");
}

static void traces(void) {
    const char *out = "Add them.\n\nWait, 2+2=4.</think>So \\boxed{4}.<\xef\xbd\x9ctool\xe2\x96\x81" "calls\xe2\x96\x81"
                      "begin\xef\xbd\x9c>";
    r1_trace *t = NULL;
    expect(r1_trace_parse(out, strlen(out), true, &t), R1_OK, NULL, "parse");
    CHECK(strcmp(r1_trace_reasoning(t), "Add them.\n\nWait, 2+2=4.") == 0, "reasoning: %s", r1_trace_reasoning(t));
    CHECK(r1_trace_final_answer(t) != NULL && strcmp(r1_trace_final_answer(t), "4") == 0, "final answer");
    CHECK(r1_trace_step_count(t) == 2, "steps: %zu", r1_trace_step_count(t));
    CHECK(r1_trace_step(t, 2) == NULL, "step past the end");
    CHECK(!r1_trace_truncated(t), "not truncated");
    CHECK(r1_trace_tool_call_name(t, 0) == NULL, "no tool call");
    r1_trace_free(t);
}

static void load_stopped_by_progress(const char *fixture) {
    int calls = 0;
    r1_load_params p = r1_load_params_default();
    p.progress = stop_loading;
    p.progress_user_data = &calls;
    r1_model *m = NULL;
    expect(r1_model_load(fixture, &p, &m), R1_ERROR_CANCELLED, "progress callback", "load stopped");
    CHECK(m == NULL && calls == 2, "calls %d", calls);
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: test_api FIXTURE TRUNCATED LOGITS_F32 INPUT_IDS USER_MESSAGE GREEDY_IDS\n");
        return 2;
    }
    r1_model *model = NULL;
    expect(r1_model_load(argv[1], NULL, &model), R1_OK, NULL, "load");
    if (model == NULL) {
        return 1;
    }
    r1_session *session = NULL;
    expect(r1_session_new(model, &session), R1_OK, NULL, "session");
    null_arguments(model, session);
    bad_files(argv[2]);
    strings_and_buffers(model);
    logits_against_transformers(model, argv[3], argv[4]);
    greedy_chat(session, argv[5], argv[6]);
    cancel_and_stop(model, session);
    traces();
    load_stopped_by_progress(argv[1]);
    /* The session keeps the model alive after the model's handle is freed. */
    r1_model_free(model);
    r1_message msg = {"user", "still here?"};
    r1_gen_params p = r1_gen_params_default();
    p.max_tokens = 2;
    expect(r1_session_chat(session, &msg, 1, &p, NULL, NULL, NULL), R1_OK, NULL, "session outlives its model");
    r1_session_free(session);
    printf("%d checks, %d failures\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
