/*
 * check.h: the C test programs' check macro. CHECK(cond, fmt, ...) counts a check and, when
 * cond is false, a failure, printed with r1's last error message.
 */
#ifndef R1_TEST_CHECK_H
#define R1_TEST_CHECK_H

#include "r1.h"

#include <stdio.h>

static int failures = 0;
static int checks = 0;

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        checks++;                                                               \
        if (!(cond)) {                                                          \
            failures++;                                                         \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);     \
            fprintf(stderr, __VA_ARGS__);                                       \
            fprintf(stderr, " [last error: %s]\n", r1_last_error_message());   \
        }                                                                       \
    } while (0)

#endif
