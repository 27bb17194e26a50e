/*
 * The acceptor: a listening socket plus the TLS handshakes of the connections
 * it accepted, all on an epoll set of its own, so that no client's handshake
 * holds up another's and a client that stalls costs only its slot until its
 * deadline.
 *
 * One call, ss_acceptor_run, accepts what waits in the backlog, steps the
 * handshakes whose sockets are ready, ends those past their deadline and
 * hands over the connections that are established; a plaintext listener's
 * connections are established as they are accepted. A driver calls it when
 * the epoll fd is readable (asyncio: one callback for any number of sockets)
 * or lets it wait (a blocking accept). At most max_handshakes run at once;
 * beyond that, and for 100 ms after the process ran out of descriptors, the
 * listener leaves the epoll set and new clients wait in the listen backlog,
 * so a flood or an fd shortage never turns into a busy loop.
 *
 * Established connections leave the set before they are handed over; the
 * caller owns them from then on (ss_conn_free). The listener stays the
 * caller's: the acceptor never closes it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define TAG_LISTENER 0
#define TAG_WAKE 1
#define TAG_FIRST_SLOT 2
#define EVENTS_PER_WAIT 64
#define DEFAULT_MAX_HANDSHAKES 1024
#define FD_SHORTAGE_PAUSE_MS 100

struct handshake {
    ss_conn_t *conn;      /* NULL: a free slot */
    int64_t deadline_ms;  /* -1: none */
    uint32_t events;      /* registered on the epoll set; 0: not registered */
    uint64_t epoch;       /* the epoch it was accepted in */
};

struct ss_acceptor {
    ss_conn_t *listener;
    int epoll_fd;
    int wake_fd;
    int listening;            /* the listener is on the epoll set */
    int64_t resume_at_ms;     /* accepting paused (fd shortage) until then; -1: not paused */
    int32_t timeout_ms;
    uint32_t max;
    struct handshake *slots;
    uint32_t *free_slots;     /* a stack of free slot indices */
    uint32_t free_count;
    int64_t earliest_ms;      /* no deadline comes before this; -1: no handshake pending */
    ss_conn_t **ready;        /* established, not yet handed over */
    uint32_t ready_len;
    uint64_t handshake_failures;
    uint64_t accept_errors;
    ss_error_info_t last_handshake_error;
    ss_error_info_t last_accept_error;
    uint64_t epoch;               /* ss_acceptor_begin's count */
    uint64_t epoch_failures;      /* failed handshakes accepted in this epoch */
    ss_error_info_t epoch_error;  /* the last of them */
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int watch(ss_acceptor_t *a, int op, int fd, uint32_t events, uint64_t tag)
{
    struct epoll_event ev = {.events = events, .data.u64 = tag};
    return epoll_ctl(a->epoll_fd, op, fd, op == EPOLL_CTL_DEL ? NULL : &ev);
}

static void set_listening(ss_acceptor_t *a, int on)
{
    if (on == a->listening)
        return;
    int fd = ss_conn_fd(a->listener);
    if (fd >= 0 && watch(a, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, fd, EPOLLIN, TAG_LISTENER) == 0)
        a->listening = on;
}

ss_acceptor_t *ss_acceptor_new(ss_conn_t *listener, const ss_acceptor_options_t *opts, ss_error_info_t *err)
{
    ss__fail(err, SS_OK, 0, "%s", "");
    if (ss_conn_state(listener) != SS_STATE_LISTENING || listener->socktype != SOCK_STREAM) {
        ss__fail(err, SS_ERR_STATE, 0, "an acceptor needs a listening stream socket");
        return NULL;
    }
    ss_acceptor_t *a = calloc(1, sizeof *a);
    if (!a) {
        ss__fail(err, SS_ERR_NOMEM, ENOMEM, "out of memory");
        return NULL;
    }
    a->listener = listener;
    a->epoll_fd = a->wake_fd = -1;
    a->resume_at_ms = -1;
    a->earliest_ms = -1;
    a->timeout_ms = opts->handshake_timeout_ms;
    a->max = opts->max_handshakes ? opts->max_handshakes : DEFAULT_MAX_HANDSHAKES;
    a->slots = calloc(a->max, sizeof *a->slots);
    a->free_slots = calloc(a->max, sizeof *a->free_slots);
    a->ready = calloc(a->max, sizeof *a->ready);
    if (!a->slots || !a->free_slots || !a->ready) {
        ss_acceptor_free(a);
        ss__fail(err, SS_ERR_NOMEM, ENOMEM, "out of memory");
        return NULL;
    }
    for (uint32_t i = 0; i < a->max; i++)
        a->free_slots[i] = a->max - 1 - i;
    a->free_count = a->max;
    a->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    a->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (a->epoll_fd < 0 || a->wake_fd < 0 || watch(a, EPOLL_CTL_ADD, a->wake_fd, EPOLLIN, TAG_WAKE) < 0) {
        ss__fail(err, SS_ERR_SYSTEM, errno, "cannot set up the acceptor's epoll set: %s", strerror(errno));
        ss_acceptor_free(a);
        return NULL;
    }
    set_listening(a, 1);
    if (!a->listening) {
        ss__fail(err, SS_ERR_SYSTEM, errno, "cannot watch the listening socket: %s", strerror(errno));
        ss_acceptor_free(a);
        return NULL;
    }
    return a;
}

void ss_acceptor_free(ss_acceptor_t *a)
{
    if (!a)
        return;
    for (uint32_t i = 0; a->slots && i < a->max; i++)
        ss_conn_free(a->slots[i].conn);
    for (uint32_t i = 0; i < a->ready_len; i++)
        ss_conn_free(a->ready[i]);
    if (a->listening && ss_conn_fd(a->listener) >= 0)
        watch(a, EPOLL_CTL_DEL, ss_conn_fd(a->listener), 0, 0);
    if (a->epoll_fd >= 0)
        close(a->epoll_fd);
    if (a->wake_fd >= 0)
        close(a->wake_fd);
    free(a->slots);
    free(a->free_slots);
    free(a->ready);
    free(a);
}

int ss_acceptor_fd(const ss_acceptor_t *a)
{
    return a->epoll_fd;
}

void ss_acceptor_wake(ss_acceptor_t *a)
{
    uint64_t one = 1;
    ssize_t n = write(a->wake_fd, &one, sizeof one); /* EAGAIN: already woken */
    (void)n;
}

uint64_t ss_acceptor_stats(const ss_acceptor_t *a, uint64_t *accept_errors, ss_error_info_t *last_handshake_error,
                           ss_error_info_t *last_accept_error)
{
    *accept_errors = a->accept_errors;
    if (last_handshake_error)
        *last_handshake_error = a->last_handshake_error;
    if (last_accept_error)
        *last_accept_error = a->last_accept_error;
    return a->handshake_failures;
}

uint64_t ss_acceptor_begin(ss_acceptor_t *a)
{
    a->epoch_failures = 0;
    return ++a->epoch;
}

uint64_t ss_acceptor_epoch_failures(const ss_acceptor_t *a, ss_error_info_t *last)
{
    *last = a->epoch_error;
    return a->epoch_failures;
}

int32_t ss_acceptor_next_timer(const ss_acceptor_t *a)
{
    int64_t at = a->earliest_ms;
    if (a->resume_at_ms >= 0 && (at < 0 || a->resume_at_ms < at))
        at = a->resume_at_ms;
    if (at < 0)
        return -1;
    int64_t left = at - now_ms();
    return left > 0 ? (int32_t)(left > INT32_MAX ? INT32_MAX : left) : 0;
}

/* Listen while there is room (ready ones and handshakes in progress share the
 * max slots) and accepting is not paused. */
static void update_listening(ss_acceptor_t *a)
{
    set_listening(a, a->resume_at_ms < 0 && a->ready_len < a->free_count);
}

/* A handshake's slot goes back to the free stack. */
static void release_slot(ss_acceptor_t *a, uint32_t index)
{
    struct handshake *h = &a->slots[index];
    if (h->events && ss_conn_fd(h->conn) >= 0)
        watch(a, EPOLL_CTL_DEL, ss_conn_fd(h->conn), 0, 0);
    h->conn = NULL;
    h->events = 0;
    a->free_slots[a->free_count++] = index;
}

static void handshake_failed(ss_acceptor_t *a, ss_conn_t *conn, uint64_t epoch)
{
    a->handshake_failures++;
    ss_conn_error(conn, &a->last_handshake_error);
    if (epoch == a->epoch) {
        a->epoch_failures++;
        a->epoch_error = a->last_handshake_error;
    }
    ss_conn_free(conn);
}

/* One step of the handshake in slot `index`: on, done (handed to ready) or failed. */
static void step(ss_acceptor_t *a, uint32_t index)
{
    struct handshake *h = &a->slots[index];
    ss_conn_t *conn = h->conn;
    int rc = ss_conn_step(conn);
    if (rc == SS_WANT_READ || rc == SS_WANT_WRITE) {
        uint32_t events = rc == SS_WANT_READ ? EPOLLIN : EPOLLOUT;
        if (events != h->events) {
            if (watch(a, h->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, ss_conn_fd(conn), events, TAG_FIRST_SLOT + index) < 0) {
                ss__conn_fail(conn, ss__fail(&conn->err, SS_ERR_SYSTEM, errno, "epoll_ctl failed: %s", strerror(errno)));
                uint64_t epoch = h->epoch;
                release_slot(a, index);
                handshake_failed(a, conn, epoch);
                return;
            }
            h->events = events;
        }
        return;
    }
    uint64_t epoch = h->epoch;
    release_slot(a, index);
    if (rc == SS_DONE)
        a->ready[a->ready_len++] = conn;
    else
        handshake_failed(a, conn, epoch);
}

static int fd_shortage(int e)
{
    return e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM;
}

/* Accepts while there is room: handshakes in progress and established
 * connections not yet handed over share the max slots (ready_len stays at
 * most free_count), so neither ever outgrows its array. */
static void accept_waiting(ss_acceptor_t *a, int64_t now)
{
    while (a->ready_len < a->free_count) {
        ss_error_info_t err;
        ss_conn_t *conn = ss_conn_accept(a->listener, &err);
        if (!conn) {
            if (err.code == SS_OK)
                return; /* the backlog is empty */
            a->accept_errors++;
            a->last_accept_error = err;
            if (fd_shortage(err.sys_errno)) { /* pause rather than spin on a listener that stays readable */
                a->resume_at_ms = now + FD_SHORTAGE_PAUSE_MS;
                update_listening(a);
                return;
            }
            continue; /* ECONNABORTED and the like: that client is gone, the next may not be */
        }
        if (ss_conn_state(conn) == SS_STATE_ESTABLISHED) { /* plaintext */
            a->ready[a->ready_len++] = conn;
            continue;
        }
        uint32_t index = a->free_slots[--a->free_count];
        struct handshake *h = &a->slots[index];
        h->conn = conn;
        h->events = 0;
        h->epoch = a->epoch;
        h->deadline_ms = a->timeout_ms > 0 ? now + a->timeout_ms : -1;
        if (h->deadline_ms >= 0 && (a->earliest_ms < 0 || h->deadline_ms < a->earliest_ms))
            a->earliest_ms = h->deadline_ms;
        step(a, index); /* the ClientHello is often here already */
    }
    update_listening(a); /* no room: new clients wait in the backlog */
}

/* Ends the handshakes past their deadline and finds the next deadline. */
static void expire(ss_acceptor_t *a, int64_t now)
{
    if (a->earliest_ms < 0 || now < a->earliest_ms)
        return;
    int64_t earliest = -1;
    for (uint32_t i = 0; i < a->max; i++) {
        struct handshake *h = &a->slots[i];
        if (!h->conn || h->deadline_ms < 0)
            continue;
        if (h->deadline_ms <= now) {
            ss_conn_t *conn = h->conn;
            ss__conn_fail(conn, ss__fail(&conn->err, SS_ERR_TIMEOUT, ETIMEDOUT, "TLS handshake timed out"));
            uint64_t epoch = h->epoch;
            release_slot(a, i);
            handshake_failed(a, conn, epoch);
            update_listening(a);
        } else if (earliest < 0 || h->deadline_ms < earliest) {
            earliest = h->deadline_ms;
        }
    }
    a->earliest_ms = earliest;
}

static int32_t hand_over(ss_acceptor_t *a, ss_conn_t **out, uint32_t cap)
{
    uint32_t n = a->ready_len < cap ? a->ready_len : cap;
    memcpy(out, a->ready, n * sizeof *out);
    memmove(a->ready, a->ready + n, (a->ready_len - n) * sizeof *a->ready);
    a->ready_len -= n;
    update_listening(a);
    return (int32_t)n;
}

int32_t ss_acceptor_run(ss_acceptor_t *a, int32_t timeout_ms, ss_conn_t **out, uint32_t cap)
{
    int64_t until = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    uint64_t failures = a->epoch_failures;
    struct epoll_event events[EVENTS_PER_WAIT];
    for (;;) {
        int64_t now = now_ms();
        expire(a, now);
        if (a->resume_at_ms >= 0 && now >= a->resume_at_ms) {
            a->resume_at_ms = -1;
            update_listening(a);
        }
        if (a->ready_len && cap)
            return hand_over(a, out, cap);
        /* Wait no longer than the caller allows, the next deadline, or the end of a pause. */
        int64_t wake_at = until;
        if (a->earliest_ms >= 0 && (wake_at < 0 || a->earliest_ms < wake_at))
            wake_at = a->earliest_ms;
        if (a->resume_at_ms >= 0 && (wake_at < 0 || a->resume_at_ms < wake_at))
            wake_at = a->resume_at_ms;
        int wait_ms = wake_at < 0 ? -1 : wake_at > now ? (int)(wake_at - now > INT32_MAX ? INT32_MAX : wake_at - now) : 0;
        int n = epoll_wait(a->epoll_fd, events, EVENTS_PER_WAIT, wait_ms);
        if (n < 0) {
            if (errno == EINTR)
                return SS_IO_INTERRUPTED;
            return ss__fail(&a->last_accept_error, SS_ERR_SYSTEM, errno, "epoll_wait failed: %s", strerror(errno));
        }
        int woken = 0;
        now = now_ms();
        for (int i = 0; i < n; i++) {
            uint64_t tag = events[i].data.u64;
            if (tag == TAG_WAKE) {
                uint64_t count;
                ssize_t got = read(a->wake_fd, &count, sizeof count);
                (void)got;
                woken = 1;
            } else if (tag == TAG_LISTENER) {
                accept_waiting(a, now);
            } else if (a->slots[tag - TAG_FIRST_SLOT].conn) {
                step(a, (uint32_t)(tag - TAG_FIRST_SLOT));
            }
        }
        update_listening(a);
        if (a->ready_len && cap)
            return hand_over(a, out, cap);
        if (woken)
            return SS_IO_INTERRUPTED;
        if (a->epoch_failures != failures)
            return 0; /* a blocking accept reports its own clients' failures, as PHP's does */
        if (until >= 0 && now_ms() >= until) {
            expire(a, now_ms());
            return 0;
        }
    }
}
