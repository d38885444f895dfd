/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Checks for the C tests: every failure names file:line, the expression and
 * the values it saw.  A failed check counts and the test goes on (report the
 * count with check_result() at the end of main); a test whose later steps
 * need the earlier ones sets check_fatal and stops at the first failure.
 *
 *   CHECK(cond)                    cond holds
 *   CHECK_MSG(cond, fmt, ...)      the same, with a printf-style message
 *   CHECK_EQ(a, b)                 a == b as integers, both printed
 *   CHECK_ERR(expr, err)           expr, a 0-or-negative-errno result, is err
 *                                  (0, -EINVAL ...), both printed with names
 *   CHECK_ERRNO(ok, err)           ok (a call's success) is false with errno err
 *   CHECK_FAIL(fmt, ...)           a failure the test found itself, with a message
 *   CHECK_R(expr, msg)             expr, a -errno result, is >= 0; else the
 *                                  error and msg (a string: the callee's message)
 *   REQUIRE(cond)                  cond holds, or the test cannot go on: exit 1
 *                                  at once, with errno (setup: files, sockets)
 *
 * Include it from every file of a test that checks (the state is shared).
 */
#pragma once

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * The state of a test program's checks.  Weak definitions: one instance per
 * program even when several of its files include this (a test and its
 * helper library).
 */
/* Failed checks so far. */
__attribute__((weak)) int check_failures;
/* Exit 1 at the first failure instead of counting. */
__attribute__((weak)) bool check_fatal;
/* Called after a failure's line, before a fatal exit, with errno as it was
 * at the failure: the test's context (its name, a daemon's log ...). */
__attribute__((weak)) void (*check_context)(int err);

static inline const char *check_errname(int e)
{
        const char *name = e > 0 ? strerrorname_np(e) : NULL;

        return name ? name : "?";
}

/* Report a failure; fmt and *ap: a message, or NULL. */
static inline void check_vfail_(const char *file, int line, const char *what, const char *fmt,
                                va_list *ap)
{
        int err = errno;

        fprintf(stderr, "%s:%d: check failed%s%s", file, line, *what ? ": " : "", what);
        if (fmt) {
                fputs(": ", stderr);
                errno = err; /* for %m */
                vfprintf(stderr, fmt, *ap);
        }
        fputc('\n', stderr);
        check_failures++;
        if (check_context)
                check_context(err);
        if (check_fatal)
                exit(1);
        errno = err;
}

static inline void check_failf_(const char *file, int line, const char *what, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static inline void check_failf_(const char *file, int line, const char *what, const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        check_vfail_(file, line, what, fmt, &ap);
        va_end(ap);
}

static inline void check_fail_(const char *file, int line, const char *what)
{
        check_vfail_(file, line, what, NULL, NULL);
}

#define CHECK(cond)                                                                                \
        do {                                                                                       \
                if (!(cond))                                                                       \
                        check_fail_(__FILE__, __LINE__, #cond);                                    \
        } while (0)

#define CHECK_MSG(cond, ...)                                                                       \
        do {                                                                                       \
                if (!(cond))                                                                       \
                        check_failf_(__FILE__, __LINE__, #cond, __VA_ARGS__);                      \
        } while (0)

#define CHECK_FAIL(...) check_failf_(__FILE__, __LINE__, "", __VA_ARGS__)

#define CHECK_EQ(a, b)                                                                             \
        do {                                                                                       \
                long long a_ = (long long)(a), b_ = (long long)(b);                                \
                if (a_ != b_)                                                                      \
                        check_failf_(__FILE__, __LINE__, #a " == " #b, "%lld != %lld", a_, b_);    \
        } while (0)

#define CHECK_ERR(expr, err)                                                                       \
        do {                                                                                       \
                long long r_ = (long long)(expr), e_ = (long long)(err);                           \
                if (r_ != e_)                                                                      \
                        check_failf_(__FILE__, __LINE__, #expr " == " #err,                        \
                                     "got %lld (%s), want %lld (%s)", r_,                          \
                                     r_ ? check_errname((int)-r_) : "ok", e_,                      \
                                     e_ ? check_errname((int)-e_) : "ok");                         \
        } while (0)

#define CHECK_ERRNO(ok, err)                                                                       \
        do {                                                                                       \
                errno = 0;                                                                         \
                bool ok_ = (ok);                                                                   \
                int e_ = errno;                                                                    \
                if (ok_ || e_ != (err))                                                            \
                        check_failf_(__FILE__, __LINE__, "!(" #ok ") with errno " #err,            \
                                     "got %s, errno %d %s (%s)", ok_ ? "success" : "failure", e_,  \
                                     check_errname(e_), strerror(e_));                             \
        } while (0)

#define CHECK_R(expr, msg)                                                                         \
        do {                                                                                       \
                int r_ = (expr);                                                                   \
                if (r_ < 0)                                                                        \
                        check_failf_(__FILE__, __LINE__, #expr " >= 0", "%d %s (%s): %s", r_,      \
                                     check_errname(-r_), strerror(-r_), (msg) ? (msg) : "");       \
        } while (0)

#define REQUIRE(cond)                                                                              \
        do {                                                                                       \
                if (!(cond)) {                                                                     \
                        int e_ = errno;                                                            \
                        check_failf_(__FILE__, __LINE__, #cond, "fatal, errno %d %s (%s)", e_,     \
                                     check_errname(e_), strerror(e_));                             \
                        exit(1);                                                                   \
                }                                                                                  \
        } while (0)

/* main's return: 0 if every check passed, else 1 (with the count on stderr). */
static inline int check_result(const char *name)
{
        if (check_failures) {
                fprintf(stderr, "%s: %d check(s) failed\n", name, check_failures);
                return 1;
        }
        printf("%s: all checks passed\n", name);
        return 0;
}
