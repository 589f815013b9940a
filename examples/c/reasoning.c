/*
 * reasoning.c: r1's reasoning features from C, on one question.
 *   1. a step verifier that rejects reasoning steps containing a phrase (each sampled again);
 *   2. self-consistency: N samples and a vote on their final answers;
 *   3. the samples written to a distillation dataset (JSONL or safetensors, by extension).
 *
 *   cc examples/c/reasoning.c $(pkg-config --cflags --libs r1) -o reasoning
 *   ./reasoning MODEL "QUESTION" REJECTED_PHRASE N DATASET
 */
#include "r1.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Rejects a step that contains the phrase (user_data), as a rule-based verifier would. */
static int32_t reject_phrase(void *user_data, const char *step, size_t step_len, const char *reasoning,
                             size_t reasoning_len) {
    (void)reasoning;
    (void)reasoning_len;
    const char *phrase = user_data;
    size_t n = strlen(phrase);
    for (size_t i = 0; n > 0 && i + n <= step_len; i++) {
        if (memcmp(step + i, phrase, n) == 0) {
            return R1_VERDICT_REJECT;
        }
    }
    return R1_VERDICT_ACCEPT;
}

static bool print_sample(void *user_data, uint32_t sample, r1_channel channel, const char *text, size_t len,
                         uint32_t token) {
    (void)token;
    uint32_t *current = user_data;
    if (*current != sample) {
        printf("\n[sample %u]\n", sample);
        *current = sample;
    }
    if (channel == R1_CHANNEL_ANSWER) {
        fwrite(text, 1, len, stdout);
    }
    return true;
}

static int fail(const char *what) {
    fprintf(stderr, "%s: %s\n", what, r1_last_error_message());
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: reasoning MODEL QUESTION REJECTED_PHRASE N DATASET\n");
        return 2;
    }
    r1_model *model = NULL;
    if (r1_model_load(argv[1], NULL, &model) != R1_OK) {
        return fail("load");
    }
    r1_message chat[] = {{"user", argv[2]}};

    /* 1. A verified chat: steps holding the phrase are sampled again, up to 4 times. */
    r1_session *session = NULL;
    if (r1_session_new(model, &session) != R1_OK) {
        return fail("session");
    }
    r1_gen_params p = r1_gen_params_default();
    p.max_tokens = 256;
    p.sampling.seed = 1;
    p.verifier = reject_phrase;
    p.verifier_user_data = argv[3];
    p.max_step_retries = 4;
    r1_result result;
    if (r1_session_chat(session, chat, 1, &p, NULL, NULL, &result) != R1_OK) {
        return fail("chat");
    }
    printf("[verified] %zu steps, %u rejected\n", r1_session_step_count(session), result.usage.rejected_steps);
    for (size_t i = 0; i < r1_session_step_count(session); i++) {
        const char *text = NULL;
        uint32_t tries = 0;
        if (r1_session_step(session, i, &text, &tries, NULL, NULL) == R1_OK) {
            printf("  step %zu (%u %s): %.60s\n", i, tries, tries == 1 ? "try" : "tries", text);
        }
    }
    r1_session_free(session);

    /* 2. Self-consistency, with log-probabilities kept for the dataset. */
    r1_gen_params s = r1_gen_params_default();
    s.max_tokens = 256;
    s.sampling.seed = 100;
    s.top_logprobs = 5;
    uint32_t current = UINT32_MAX;
    r1_consensus *votes = NULL;
    if (r1_self_consistency(model, chat, 1, &s, (uint32_t)atoi(argv[4]), print_sample, &current, &votes) != R1_OK) {
        return fail("self-consistency");
    }
    printf("\n[vote] %s:", r1_consensus_answer(votes) ? r1_consensus_answer(votes) : "(no answer)");
    for (size_t i = 0; i < r1_consensus_vote_count(votes); i++) {
        const char *answer = NULL;
        uint32_t n = 0;
        if (r1_consensus_vote(votes, i, &answer, &n) == R1_OK) {
            printf(" \"%s\" %u", answer, n);
        }
    }
    printf("\n");

    /* 3. Every sample into the dataset (resumed if it exists). */
    r1_distill *dataset = NULL;
    if (r1_distill_open(argv[5], 5, &dataset) != R1_OK) {
        return fail("dataset");
    }
    for (size_t i = 0; i < r1_consensus_sample_count(votes); i++) {
        if (r1_distill_write_sample(dataset, votes, i) != R1_OK) {
            return fail("write");
        }
    }
    printf("[dataset] %zu generations in %s\n", r1_distill_count(dataset), argv[5]);
    if (r1_distill_close(dataset) != R1_OK) {
        return fail("close");
    }
    r1_consensus_free(votes);
    r1_model_free(model);
    return 0;
}
