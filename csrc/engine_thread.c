/*
 * An engine on a thread of its own.
 *
 * Driven from Python, the engine stops whenever the interpreter turns
 * finished probes into objects or hands over new targets, and a server that
 * waits for our next handshake message waits that long too. Here a thread
 * runs the engine without pause while the caller does that work.
 *
 * New probes come in through `incoming` (under the lock); the thread moves
 * them into the engine between runs. Results travel in three batches that
 * change places: the thread writes into `filling` with no lock held and
 * publishes it as `ready` once the caller has emptied that; take() swaps
 * `ready` with `taken`, the batch the caller held until then. When the caller
 * falls behind and `filling` is full, the engine keeps driving what is in
 * flight and holds finished probes back (ss_engine_run with cap 0).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define BATCH_RECORDS 256
#define BATCH_ARENA (2u << 20)
#define ARENA_MIN (1u << 20) /* offered to every run, as one probe's data may need */

struct batch {
    ss_probe_result_t *records;
    unsigned char *arena;
    uint32_t count;
    uint32_t arena_used;
};

struct incoming_probe {
    uint64_t id;
    ss_conn_t *conn;
    ss_tls_ctx_t *starttls_tls; /* our own reference, or NULL */
};

struct ss_engine_thread {
    ss_engine_t *engine;
    pthread_t thread;
    int started;
    pid_t owner;            /* the process whose thread this is (a fork's child has none) */
    pthread_mutex_t lock;
    pthread_cond_t work;    /* the thread waits here when it has nothing to drive */
    pthread_cond_t results; /* the caller waits here for a batch */
    /* Under the lock: */
    struct incoming_probe *incoming;
    uint32_t incoming_len, incoming_cap;
    struct batch *ready;
    uint32_t unreported; /* added and not yet taken */
    int idle;            /* the thread waits on `work` */
    int starving;        /* the engine has nothing queued to start */
    int held_back;       /* the thread waits to publish its batch */
    int filling_full;    /* and that batch is full: its runs hold finished probes back */
    int stopping;
    int32_t error;       /* what stopped the thread */
    /* The thread's alone: */
    struct batch *filling;
    /* The caller's alone: */
    struct batch *taken;
    struct batch batches[3];
};

static int batch_full(const struct batch *b)
{
    return b->count == BATCH_RECORDS || BATCH_ARENA - b->arena_used < ARENA_MIN;
}

/* One engine run into the filling batch; SS_OK or the engine's error. */
static int32_t fill(ss_engine_thread_t *t)
{
    struct batch *b = t->filling;
    int full = batch_full(b);
    uint32_t base = b->arena_used;
    int32_t n = ss_engine_run(t->engine, -1, b->records + b->count, full ? 0 : BATCH_RECORDS - b->count,
                              b->arena + base, full ? 0 : BATCH_ARENA - base);
    for (int32_t i = 0; i < n; i++) { /* offsets were relative to where this run began */
        ss_probe_result_t *r = &b->records[b->count + (uint32_t)i];
        r->banner_off += base;
        r->certs_off += base;
        if (r->certs_off + r->certs_len > b->arena_used) /* the certificates follow the banner */
            b->arena_used = r->certs_off + r->certs_len;
    }
    if (n < 0)
        return n;
    b->count += (uint32_t)n;
    return SS_OK;
}

static void *drive(void *arg)
{
    ss_engine_thread_t *t = arg;
    struct incoming_probe *adding = NULL;
    uint32_t adding_cap = 0;
    pthread_setname_np(pthread_self(), "streamsock"); /* as top -H and perf show it */
    pthread_mutex_lock(&t->lock);
    while (!t->stopping) {
        int published = t->filling->count && !t->ready->count;
        if (published) {
            struct batch *batch = t->filling;
            t->filling = t->ready;
            t->ready = batch;
        }
        /* Swap arrays with `incoming`: the caller goes on adding while these are moved. */
        uint32_t n = t->incoming_len;
        struct incoming_probe *swap = t->incoming;
        uint32_t swap_cap = t->incoming_cap;
        t->incoming = adding;
        t->incoming_cap = adding_cap;
        t->incoming_len = 0;
        adding = swap;
        adding_cap = swap_cap;
        int nothing_to_drive = n == 0 && ss_engine_pending(t->engine) == 0;
        /* Records that could not be published wait for take() to make room, and
         * take() then wakes us: the engine's next run may otherwise sleep until
         * a deadline far off (a hanging lookup) with them unpublished. */
        t->held_back = t->filling->count != 0;
        t->filling_full = batch_full(t->filling);
        t->starving = ss__engine_queued(t->engine) == 0;
        /* Nothing more can happen without the caller (ss__engine_thread_wait_stalled). */
        int stalled = t->ready->count && (t->filling_full || nothing_to_drive);
        if (nothing_to_drive) {
            if (published || stalled)
                pthread_cond_signal(&t->results);
            t->idle = 1;
            pthread_cond_wait(&t->work, &t->lock);
            t->idle = 0;
            continue;
        }
        pthread_mutex_unlock(&t->lock);
        if (published || stalled) /* after unlocking: the caller wakes to a free lock */
            pthread_cond_signal(&t->results);
        int32_t rc = SS_OK;
        for (uint32_t i = 0; i < n; i++) {
            if (rc == SS_OK)
                rc = ss_engine_add(t->engine, adding[i].id, adding[i].conn, adding[i].starttls_tls);
            else
                ss_conn_free(adding[i].conn);
            ss_tls_ctx_free(adding[i].starttls_tls); /* the engine took its own reference */
        }
        if (rc == SS_OK)
            rc = fill(t);
        pthread_mutex_lock(&t->lock);
        if (rc < 0) {
            t->error = rc;
            pthread_cond_signal(&t->results);
            break;
        }
    }
    pthread_mutex_unlock(&t->lock);
    free(adding);
    return NULL;
}

ss_engine_thread_t *ss_engine_thread_new(const ss_engine_options_t *opts, ss_error_info_t *err)
{
    ss_engine_t *engine = ss_engine_new(opts, err);
    if (!engine)
        return NULL;
    ss_engine_thread_t *t = calloc(1, sizeof *t);
    if (!t) {
        ss_engine_free(engine);
        ss__fail(err, SS_ERR_NOMEM, ENOMEM, "out of memory");
        return NULL;
    }
    t->engine = engine;
    pthread_mutex_init(&t->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC); /* take()'s timeout ignores wall-clock jumps */
    pthread_cond_init(&t->work, &attr);
    pthread_cond_init(&t->results, &attr);
    pthread_condattr_destroy(&attr);
    for (int i = 0; i < 3; i++) {
        t->batches[i].records = malloc(BATCH_RECORDS * sizeof(ss_probe_result_t));
        t->batches[i].arena = malloc(BATCH_ARENA);
        if (!t->batches[i].records || !t->batches[i].arena) {
            ss_engine_thread_free(t);
            ss__fail(err, SS_ERR_NOMEM, ENOMEM, "out of memory");
            return NULL;
        }
    }
    t->filling = &t->batches[0];
    t->ready = &t->batches[1];
    t->taken = &t->batches[2];
    /* Signals stay with the caller's threads (Python handles them on its main thread). */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&t->thread, NULL, drive, t);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        ss_engine_thread_free(t);
        ss__fail(err, SS_ERR_SYSTEM, rc, "cannot start the engine's thread: %s", strerror(rc));
        return NULL;
    }
    t->started = 1;
    t->owner = getpid();
    return t;
}

void ss_engine_thread_free(ss_engine_thread_t *t)
{
    if (!t)
        return;
    if (t->started && getpid() != t->owner)
        return; /* a forked child: the thread is the parent's, its lock may be held for good */
    if (t->started) {
        pthread_mutex_lock(&t->lock);
        t->stopping = 1;
        pthread_cond_signal(&t->work);
        pthread_mutex_unlock(&t->lock);
        ss_engine_interrupt(t->engine);
        pthread_join(t->thread, NULL);
    }
    for (uint32_t i = 0; i < t->incoming_len; i++) {
        ss_conn_free(t->incoming[i].conn);
        ss_tls_ctx_free(t->incoming[i].starttls_tls);
    }
    free(t->incoming);
    ss_engine_free(t->engine);
    for (int i = 0; i < 3; i++) {
        free(t->batches[i].records);
        free(t->batches[i].arena);
    }
    pthread_cond_destroy(&t->results);
    pthread_cond_destroy(&t->work);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

int ss_engine_thread_add(ss_engine_thread_t *t, uint64_t id, ss_conn_t *conn, ss_tls_ctx_t *starttls_tls)
{
    if (getpid() != t->owner) {
        ss_conn_free(conn);
        return SS_ERR_STATE;
    }
    pthread_mutex_lock(&t->lock);
    int rc = t->error;
    if (rc == SS_OK && t->incoming_len == t->incoming_cap) {
        uint32_t cap = t->incoming_cap ? 2 * t->incoming_cap : 64;
        struct incoming_probe *grown = realloc(t->incoming, cap * sizeof *grown);
        if (grown) {
            t->incoming = grown;
            t->incoming_cap = cap;
        } else {
            rc = SS_ERR_NOMEM;
        }
    }
    if (rc != SS_OK) {
        pthread_mutex_unlock(&t->lock);
        ss_conn_free(conn);
        return rc;
    }
    t->incoming[t->incoming_len++] =
        (struct incoming_probe){id, conn, starttls_tls ? ss__tls_ctx_ref(starttls_tls) : NULL};
    t->unreported++;
    /* A busy engine takes new probes in when it next returns; one that has
     * nothing to start is woken, once for a whole batch of adds. */
    int interrupt = !t->idle && t->starving && t->incoming_len == 1;
    if (t->idle)
        pthread_cond_signal(&t->work);
    pthread_mutex_unlock(&t->lock);
    if (interrupt)
        ss_engine_interrupt(t->engine);
    return SS_OK;
}

/* timeout_ms (when positive) from now on CLOCK_MONOTONIC, for pthread_cond_timedwait. */
static struct timespec deadline(int32_t timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    if (timeout_ms > 0) {
        until.tv_sec += timeout_ms / 1000;
        until.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
        if (until.tv_nsec >= 1000000000) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000;
        }
    }
    return until;
}

int32_t ss_engine_thread_take(ss_engine_thread_t *t, int32_t timeout_ms, const ss_probe_result_t **records,
                              const unsigned char **arena)
{
    if (getpid() != t->owner)
        return SS_ERR_STATE;
    struct timespec until = deadline(timeout_ms);
    pthread_mutex_lock(&t->lock);
    t->taken->count = t->taken->arena_used = 0; /* given back */
    while (!t->ready->count && !t->error && t->unreported && timeout_ms != 0) {
        if (timeout_ms < 0)
            pthread_cond_wait(&t->results, &t->lock);
        else if (pthread_cond_timedwait(&t->results, &t->lock, &until) == ETIMEDOUT)
            break;
    }
    int32_t n = 0;
    int interrupt = 0;
    if (t->ready->count) {
        struct batch *batch = t->ready;
        t->ready = t->taken;
        t->taken = batch;
        n = (int32_t)batch->count;
        t->unreported -= batch->count;
        if (t->held_back) { /* the thread may publish its batch now */
            if (t->idle)
                pthread_cond_signal(&t->work);
            else
                interrupt = 1;
        }
    } else if (t->error) {
        n = t->error;
    }
    pthread_mutex_unlock(&t->lock);
    if (interrupt)
        ss_engine_interrupt(t->engine);
    *records = t->taken->records;
    *arena = t->taken->arena;
    return n;
}

int32_t ss__engine_thread_wait_stalled(ss_engine_thread_t *t, int32_t timeout_ms)
{
    if (getpid() != t->owner)
        return SS_ERR_STATE;
    struct timespec until = deadline(timeout_ms);
    int32_t rc = 0;
    pthread_mutex_lock(&t->lock);
    for (;;) {
        if (t->error) {
            rc = t->error;
            break;
        }
        if (!t->unreported)
            break;
        /* `ready` is only filled at the top of the thread's loop, in the
         * same hold of the lock that sets filling_full (and idle): these
         * never describe a batch already taken. */
        if (t->ready->count && (t->filling_full || t->idle)) {
            rc = 1;
            break;
        }
        if (timeout_ms == 0)
            break;
        if (timeout_ms < 0)
            pthread_cond_wait(&t->results, &t->lock);
        else if (pthread_cond_timedwait(&t->results, &t->lock, &until) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&t->lock);
    return rc;
}
