/*
 * STARTTLS dialogues for the engine: the plaintext exchange smtp, imap, pop3
 * and ftp servers want before a TLS handshake, client side.
 *
 * This is the twin of python/streamsock/starttls.py (same steps, same checks,
 * same messages), so a refusal reads the same on both backends. Each step
 * sends a command (none for the greeting) and reads one reply, which may span
 * lines; the reply's final line must start with the expected text. Nothing
 * may follow the server's go-ahead: those bytes would be taken for TLS
 * records, which is how STARTTLS command injection works.
 */
#include <string.h>

#include "internal.h"

struct step {
    const char *command; /* sent before reading the reply; "" for the greeting */
    const char *name;    /* for messages */
    const char *expect;  /* the reply's final line starts with this */
};

struct protocol {
    const char *name;
    int coded_replies; /* "250-..." continues, "250 ..." ends (smtp, ftp) */
    int tagged;        /* imap: the reply ends at the line with our tag */
    int steps;
    struct step step[3];
};

static const struct protocol protocols[] = {
    [SS_STARTTLS_SMTP] = {"smtp", 1, 0, 3,
                          {{"", "greeting", "220"},
                           {"EHLO streamsock\r\n", "EHLO streamsock", "250"},
                           {"STARTTLS\r\n", "STARTTLS", "220"}}},
    [SS_STARTTLS_IMAP] = {"imap", 0, 1, 2, {{"", "greeting", "* OK"}, {"a001 STARTTLS\r\n", "STARTTLS", "a001 OK"}}},
    [SS_STARTTLS_POP3] = {"pop3", 0, 0, 2, {{"", "greeting", "+OK"}, {"STLS\r\n", "STLS", "+OK"}}},
    [SS_STARTTLS_FTP] = {"ftp", 1, 0, 2, {{"", "greeting", "220"}, {"AUTH TLS\r\n", "AUTH TLS", "234"}}},
};

int ss__starttls_valid(int protocol)
{
    return protocol >= SS_STARTTLS_SMTP && protocol <= SS_STARTTLS_FTP;
}

void ss__starttls_init(struct ss_starttls_dialogue *d, int protocol)
{
    memset(d, 0, sizeof *d);
    d->protocol = protocol;
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Whether line (without its line end) ends the current reply. */
static int reply_done(struct ss_starttls_dialogue *d, const struct protocol *p, const char *line, size_t len)
{
    if (p->coded_replies) {
        if (len < 3 || !is_digit(line[0]) || !is_digit(line[1]) || !is_digit(line[2]))
            return !d->reply_code[0]; /* a reply must start with a code: fail now */
        if (!d->reply_code[0])
            memcpy(d->reply_code, line, 3);
        return memcmp(d->reply_code, line, 3) == 0 && (len == 3 || line[3] == ' ');
    }
    if (p->tagged && d->step > 0)
        return len >= 5 && memcmp(line, "a001 ", 5) == 0; /* untagged "* ..." lines come first */
    return 1;
}

static int refused(struct ss_starttls_dialogue *d, ss_conn_t *conn, const char *line, size_t len, const char *why)
{
    const struct protocol *p = &protocols[d->protocol];
    const char *where = p->step[d->step].name;
    if (why)
        return ss__fail(&conn->err, SS_ERR_STARTTLS_REFUSED, 0, "%s STARTTLS failed at %s: %s", p->name, where,
                        why);
    char shown[SS_STARTTLS_SHOWN + 1];
    size_t n = len < SS_STARTTLS_SHOWN ? len : SS_STARTTLS_SHOWN;
    for (size_t i = 0; i < n; i++)
        shown[i] = line[i] >= 0x20 && line[i] < 0x7f ? line[i] : '?';
    shown[n] = '\0';
    return ss__fail(&conn->err, SS_ERR_STARTTLS_REFUSED, 0, "%s STARTTLS failed at %s: server answered \"%s\"",
                    p->name, where, shown);
}

/* One complete line (with its line end): SS_OK, or an error. */
static int take_line(struct ss_starttls_dialogue *d, ss_conn_t *conn)
{
    const struct protocol *p = &protocols[d->protocol];
    size_t len = d->line_len;
    while (len && (d->line[len - 1] == '\n' || d->line[len - 1] == '\r'))
        len--;
    if (++d->lines > SS_STARTTLS_MAX_LINES)
        return refused(d, conn, d->line, len, "reply too long");
    if (!reply_done(d, p, d->line, len))
        return SS_OK;
    const char *expect = p->step[d->step].expect;
    size_t expect_len = strlen(expect);
    if (len < expect_len || memcmp(d->line, expect, expect_len) != 0)
        return refused(d, conn, d->line, len, NULL);
    d->step++;
    d->lines = 0;
    d->reply_code[0] = '\0';
    d->sent = 0;
    return SS_OK;
}

int ss__starttls_step(struct ss_starttls_dialogue *d, ss_conn_t *conn, unsigned char *greeting, uint32_t *greeting_len,
                      uint32_t greeting_cap)
{
    const struct protocol *p = &protocols[d->protocol];
    char scratch[4096];
    for (;;) {
        if (d->step == p->steps)
            return SS_DONE;
        const char *command = p->step[d->step].command;
        size_t command_len = strlen(command);
        if (d->sent < command_len) {
            int64_t n = ss_conn_write(conn, command + d->sent, command_len - d->sent);
            if (n == SS_IO_WANT_READ || n == SS_IO_WANT_WRITE)
                return n == SS_IO_WANT_READ ? SS_WANT_READ : SS_WANT_WRITE;
            if (n < 0)
                return ss__conn_fail(conn, (int)n);
            d->sent += (size_t)n;
            continue;
        }
        /* Read what is there, then take it line by line. */
        int64_t n = ss_conn_read(conn, scratch, sizeof scratch);
        if (n == SS_IO_WANT_READ || n == SS_IO_WANT_WRITE)
            return n == SS_IO_WANT_READ ? SS_WANT_READ : SS_WANT_WRITE;
        if (n < 0)
            return ss__conn_fail(conn, (int)n);
        if (n == 0)
            return ss__conn_fail(conn, ss__fail(&conn->err, SS_ERR_EOF, 0, "%s STARTTLS failed at %s: connection closed",
                                                p->name, p->step[d->step].name));
        for (int64_t i = 0; i < n; i++) {
            if (d->step == p->steps) /* bytes after the go-ahead */
                return ss__conn_fail(conn, ss__fail(&conn->err, SS_ERR_STARTTLS_BUFFERED, 0, "%s",
                                                    ss_error_message(SS_ERR_STARTTLS_BUFFERED)));
            if (d->line_len == sizeof d->line)
                return ss__conn_fail(conn, refused(d, conn, d->line, d->line_len, "reply line too long"));
            d->line[d->line_len++] = scratch[i];
            if (scratch[i] != '\n')
                continue;
            if (d->step == 0 && greeting) { /* the greeting, as sent, as far as it fits */
                uint32_t room = greeting_cap - *greeting_len;
                uint32_t copy = d->line_len < room ? (uint32_t)d->line_len : room;
                memcpy(greeting + *greeting_len, d->line, copy);
                *greeting_len += copy;
            }
            int rc = take_line(d, conn);
            d->line_len = 0;
            if (rc < 0)
                return ss__conn_fail(conn, rc);
        }
    }
}
