/*
 * chat.c: a multi-turn chat with r1 from C. Each argument after the model is one user message;
 * the reply streams with the reasoning set apart, then the usage.
 *
 *   cc -std=c99 examples/c/chat.c -Iinclude -Ltarget/release -lr1 -o chat
 *   LD_LIBRARY_PATH=target/release ./chat [--greedy] [--max-tokens N] MODEL "message" ["message" ...]
 */
#include "r1.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Prints each piece of text; a header when the channel changes. */
static bool on_token(void *user_data, r1_channel channel, const char *text, size_t len, uint32_t token) {
    int *current = (int *)user_data;
    (void)token;
    if (len == 0) {
        return true;
    }
    if (*current != (int)channel) {
        fputs(channel == R1_CHANNEL_REASONING ? "[reasoning]\n" : "\n[answer]\n", stdout);
        *current = (int)channel;
    }
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return true;
}

static int fail(const char *what, r1_status status) {
    fprintf(stderr, "chat: %s: %s: %s\n", what, r1_status_name(status), r1_last_error_message());
    return 1;
}

int main(int argc, char **argv) {
    r1_gen_params params = r1_gen_params_default();
    int i = 1;
    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        if (strcmp(argv[i], "--greedy") == 0) {
            params.sampling.greedy = true;
        } else if (strcmp(argv[i], "--max-tokens") == 0 && i + 1 < argc) {
            params.max_tokens = (uint32_t)strtoul(argv[++i], NULL, 10);
        } else {
            fprintf(stderr, "chat: unknown flag %s\n", argv[i]);
            return 2;
        }
    }
    if (i + 1 >= argc) {
        fprintf(stderr, "usage: chat [--greedy] [--max-tokens N] MODEL MESSAGE...\n");
        return 2;
    }
    r1_model *model = NULL;
    r1_status st = r1_model_load(argv[i], NULL, &model);
    if (st != R1_OK) {
        return fail("loading", st);
    }
    r1_session *session = NULL;
    st = r1_session_new(model, &session);
    if (st != R1_OK) {
        r1_model_free(model);
        return fail("session", st);
    }
    int n_user = argc - i - 1;
    /* The conversation so far: user messages and the answers r1 gave. */
    r1_message *messages = calloc((size_t)(2 * n_user), sizeof(r1_message));
    char **answers = calloc((size_t)n_user, sizeof(char *));
    size_t n = 0;
    int rc = 0;
    for (int turn = 0; turn < n_user && rc == 0; turn++) {
        messages[n].role = "user";
        messages[n].content = argv[i + 1 + turn];
        n++;
        printf("> %s\n", argv[i + 1 + turn]);
        int current = -1;
        r1_result result;
        st = r1_session_chat(session, messages, n, &params, on_token, &current, &result);
        if (st != R1_OK) {
            rc = fail("generating", st);
            break;
        }
        printf("\n[usage] prompt %u tokens (%u cached), reasoning %u, answer %u; %.1f tok/s\n",
               result.usage.prompt_tokens, result.usage.cached_prompt_tokens, result.usage.reasoning_tokens,
               result.usage.answer_tokens, result.usage.decode_tokens_per_s);
        r1_trace *trace = NULL;
        if (r1_session_trace(session, &trace) == R1_OK) {
            const char *answer = r1_trace_answer(trace);
            answers[turn] = malloc(strlen(answer) + 1);
            strcpy(answers[turn], answer);
            r1_trace_free(trace);
            messages[n].role = "assistant";
            messages[n].content = answers[turn];
            n++;
        }
    }
    for (int t = 0; t < n_user; t++) {
        free(answers[t]);
    }
    free(answers);
    free(messages);
    r1_session_free(session);
    r1_model_free(model);
    return rc;
}
