/*
 * Host-name lookups off the engine's thread.
 *
 * getaddrinfo blocks (DNS can take seconds), so the engine hands names to a
 * few worker threads and keeps driving its other connections; a finished
 * lookup is queued and an eventfd, which the engine watches on its epoll set,
 * becomes readable. Workers start on demand, up to max_threads, and stay for
 * the engine's lifetime.
 *
 * Ownership: the engine and every worker hold a reference. Freeing the
 * resolver never waits for a worker stuck in a slow lookup: it marks the
 * resolver closing, closes the eventfd (workers only write it under the lock
 * and not once closing) and drops its reference; the last worker to finish
 * frees what is left.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "internal.h"

struct ss_resolver {
    pthread_mutex_t lock;
    pthread_cond_t work;
    int refs;
    int closing;
    int event_fd;
    int threads;
    int idle;
    int queued; /* lookups waiting for a worker */
    int max_threads;
    struct ss_lookup *todo_head, *todo_tail;
    struct ss_lookup *done_head, *done_tail;
};

static void push(struct ss_lookup **head, struct ss_lookup **tail, struct ss_lookup *item)
{
    item->next = NULL;
    if (*tail)
        (*tail)->next = item;
    else
        *head = item;
    *tail = item;
}

static struct ss_lookup *pop(struct ss_lookup **head, struct ss_lookup **tail)
{
    struct ss_lookup *item = *head;
    if (item) {
        *head = item->next;
        if (!*head)
            *tail = NULL;
    }
    return item;
}

void ss__lookup_free(struct ss_lookup *item)
{
    if (!item)
        return;
    if (item->result)
        freeaddrinfo(item->result);
    free(item);
}

static void free_all(struct ss_lookup *item)
{
    while (item) {
        struct ss_lookup *next = item->next;
        ss__lookup_free(item);
        item = next;
    }
}

/* Called with the lock held; frees the resolver when this was the last reference. */
static void unref_locked(ss_resolver_t *r)
{
    if (--r->refs > 0) {
        pthread_mutex_unlock(&r->lock);
        return;
    }
    pthread_mutex_unlock(&r->lock);
    free_all(r->todo_head);
    free_all(r->done_head);
    pthread_cond_destroy(&r->work);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

static void *worker(void *arg)
{
    ss_resolver_t *r = arg;
    pthread_mutex_lock(&r->lock);
    for (;;) {
        while (!r->closing && !r->todo_head) {
            r->idle++;
            pthread_cond_wait(&r->work, &r->lock);
            r->idle--;
        }
        if (r->closing)
            break;
        struct ss_lookup *item = pop(&r->todo_head, &r->todo_tail);
        r->queued--;
        pthread_mutex_unlock(&r->lock);
        item->gai_rc = ss__lookup(item->host, item->port, item->socktype, 0, &item->result, &item->sys_errno);
        pthread_mutex_lock(&r->lock);
        if (r->closing) {
            ss__lookup_free(item);
            break;
        }
        push(&r->done_head, &r->done_tail, item);
        uint64_t one = 1;
        ssize_t ignored = write(r->event_fd, &one, sizeof one); /* cannot fill: the engine drains it */
        (void)ignored;
    }
    unref_locked(r);
    return NULL;
}

ss_resolver_t *ss__resolver_new(int max_threads)
{
    ss_resolver_t *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->event_fd < 0) {
        free(r);
        return NULL;
    }
    if (pthread_mutex_init(&r->lock, NULL) != 0) {
        close(r->event_fd);
        free(r);
        return NULL;
    }
    if (pthread_cond_init(&r->work, NULL) != 0) {
        pthread_mutex_destroy(&r->lock);
        close(r->event_fd);
        free(r);
        return NULL;
    }
    r->refs = 1;
    r->max_threads = max_threads > 0 ? max_threads : 1;
    return r;
}

int ss__resolver_fd(const ss_resolver_t *r)
{
    return r->event_fd;
}

int ss__resolver_submit(ss_resolver_t *r, uint64_t tag, const char *host, int port, int socktype)
{
    size_t host_len = strlen(host);
    struct ss_lookup *item = calloc(1, sizeof *item + host_len + 1);
    if (!item)
        return SS_ERR_NOMEM;
    item->tag = tag;
    item->port = port;
    item->socktype = socktype;
    memcpy(item->host, host, host_len + 1);
    pthread_mutex_lock(&r->lock);
    push(&r->todo_head, &r->todo_tail, item);
    r->queued++;
    int rc = SS_OK;
    if (r->queued > r->idle && r->threads < r->max_threads) {
        pthread_t thread;
        pthread_attr_t attr;
        int started = pthread_attr_init(&attr) == 0;
        if (started) {
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            started = pthread_create(&thread, &attr, worker, r) == 0;
            pthread_attr_destroy(&attr);
        }
        if (started) {
            r->threads++;
            r->refs++;
        } else if (r->threads == 0) { /* nobody would ever look it up */
            pop(&r->todo_head, &r->todo_tail);
            r->queued--;
            free(item);
            rc = SS_ERR_NOMEM;
        }
    }
    pthread_cond_signal(&r->work);
    pthread_mutex_unlock(&r->lock);
    return rc;
}

struct ss_lookup *ss__resolver_take(ss_resolver_t *r)
{
    pthread_mutex_lock(&r->lock);
    struct ss_lookup *item = pop(&r->done_head, &r->done_tail);
    if (!item) { /* drained: reset the eventfd so it reads as not ready */
        uint64_t count;
        ssize_t ignored = read(r->event_fd, &count, sizeof count);
        (void)ignored;
    }
    pthread_mutex_unlock(&r->lock);
    return item;
}

void ss__resolver_free(ss_resolver_t *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->lock);
    r->closing = 1;
    close(r->event_fd);
    r->event_fd = -1;
    pthread_cond_broadcast(&r->work);
    unref_locked(r);
}
