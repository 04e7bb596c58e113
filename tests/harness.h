/* harness.h - the test runner: one OK/FAILED line per test, failures with file:line and values,
   NaN fails every near-compare, --filter SUBSTRING, failed names listed at the end, exit 0 or 1. */
#ifndef RESBM_HARNESS_H
#define RESBM_HARNESS_H

#include <math.h>
#include <stdio.h>
#include <string.h>

static int th_fail_now, th_passed, th_failed;
static const char *th_failed_names[512];

#define CHECK(cond, ...)                                                                            \
    do {                                                                                            \
        if (!(cond)) {                                                                              \
            printf("    %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);                     \
            printf(__VA_ARGS__);                                                                    \
            printf("\n");                                                                           \
            th_fail_now = 1;                                                                        \
        }                                                                                           \
    } while (0)

#define CHECK_RC(expr, want)                                                                        \
    do {                                                                                            \
        int rc_ = (expr), want_ = (want);                                                           \
        if (rc_ != want_) {                                                                         \
            printf("    %s:%d: %s returned %d (%s), expected %d (%s)\n", __FILE__, __LINE__, #expr, \
                   rc_, resbm_strerror(rc_), want_, resbm_strerror(want_));                         \
            th_fail_now = 1;                                                                        \
        }                                                                                           \
    } while (0)

/* |a - b| <= tol; NaN never passes. */
#define CHECK_NEAR(a, b, tol)                                                                       \
    do {                                                                                            \
        double a_ = (double)(a), b_ = (double)(b), t_ = (double)(tol);                              \
        if (!(fabs(a_ - b_) <= t_)) {                                                               \
            printf("    %s:%d: %s = %.9g, expected %s = %.9g (tol %.3g)\n", __FILE__, __LINE__, #a, \
                   a_, #b, b_, t_);                                                                 \
            th_fail_now = 1;                                                                        \
        }                                                                                           \
    } while (0)

static void th_run(const char *name, void (*fn)(void), const char *filter) {
    if (filter && !strstr(name, filter)) return;
    th_fail_now = 0;
    fn();
    if (th_fail_now) {
        printf("FAILED %s\n", name);
        if (th_failed < 512) th_failed_names[th_failed] = name;
        th_failed++;
    } else {
        printf("OK     %s\n", name);
        th_passed++;
    }
    fflush(stdout);
}

static int th_finish(void) {
    int i;
    if (th_passed + th_failed == 0) { /* a --filter that matches nothing is a mistake, not a pass */
        printf("no test matches the filter\n0 passed, 1 failed\n");
        return 1;
    }
    if (th_failed) {
        printf("failed tests:");
        for (i = 0; i < th_failed && i < 512; i++) printf(" %s", th_failed_names[i]);
        printf("\n");
    }
    printf("%d passed, %d failed\n", th_passed, th_failed);
    return th_failed ? 1 : 0;
}

#define RUN(fn) th_run(#fn, fn, filter)

#endif
