/*
 * A small stand-alone driver for LLVMFuzzerTestOneInput, for compilers without
 * libFuzzer (gcc). Not coverage guided: it replays the seeds, then feeds the
 * target random mutations of them.
 *
 *   fuzz_url [-n ITERATIONS] [-s SEED] [-t SECONDS] [-o CRASH_FILE] SEED_FILE_OR_DIR...
 *
 *   -n  mutated inputs to run after the seeds (default 1000000; 0: seeds only)
 *   -t  stop the mutation loop after this many seconds (default 0: no limit);
 *       the loop ends at whichever of -n and -t comes first
 *   -s  PRNG seed (default: from the clock; printed either way, so a run can
 *       be repeated)
 *   -o  when the target crashes (sanitizer report, trap, abort), write the
 *       input that did it to this file
 *
 * Directories are read recursively, files in name order. A crashing input is
 * also printed in hex on stderr; run it again by giving its file as the only
 * seed with -n 0.
 *
 * Last line on stdout: "fuzz: N executions, M seeds, T.Ts".
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_LEN 8192   /* longest mutated input */
#define RING_SIZE 256  /* recent mutants, mutated again for deeper changes */
#define MAX_MUTATIONS 8

/* ---- crash reporting ----------------------------------------------------
 * The only file-scope state: which input is running, so a sanitizer's death
 * callback or a signal handler can say what crashed. Written with write(2)
 * only, so it is safe from a signal handler. */

static const uint8_t *volatile current_data;
static volatile size_t current_size;
static const char *crash_file;

static void write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        c += w;
        n -= (size_t)w;
    }
}

static void write_str(int fd, const char *s)
{
    write_all(fd, s, strlen(s));
}

static void write_size(int fd, size_t v)
{
    char digits[32];
    size_t i = sizeof digits;
    do {
        digits[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v && i > 0);
    write_all(fd, digits + i, sizeof digits - i);
}

static void report_current_input(void)
{
    const uint8_t *data = current_data;
    size_t size = current_size;
    if (!data)
        return;
    static const char hex[] = "0123456789abcdef";
    write_str(2, "\nfuzz: crashing input (");
    write_size(2, size);
    write_str(2, " bytes): ");
    char chunk[128];
    size_t used = 0;
    for (size_t i = 0; i < size; i++) {
        chunk[used++] = hex[data[i] >> 4];
        chunk[used++] = hex[data[i] & 15];
        if (used == sizeof chunk) {
            write_all(2, chunk, used);
            used = 0;
        }
    }
    write_all(2, chunk, used);
    write_str(2, "\n");
    if (crash_file) {
        int fd = open(crash_file, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            write_all(fd, data, size);
            close(fd);
            write_str(2, "fuzz: crashing input written to ");
            write_str(2, crash_file);
            write_str(2, "\n");
        }
    }
    current_data = NULL;
}

static void on_fatal_signal(int sig)
{
    report_current_input();
    raise(sig); /* SA_RESETHAND: the default action, once this returns */
}

/* Present when linked with a sanitizer runtime; NULL otherwise. With gcc,
 * ASan and UBSan are two shared runtimes and this finds only ASan's... */
extern void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

/* ...so UBSan is reached through its monitor hook instead: the runtime holds
 * a weak no-op __ubsan_on_report and calls it on every report, before
 * halt_on_error ends the process; this definition replaces it. */
void __ubsan_on_report(void);
void __ubsan_on_report(void)
{
    report_current_input();
}

static void install_crash_reporting(void)
{
    if (__sanitizer_set_death_callback)
        __sanitizer_set_death_callback(report_current_input);
    /* The sanitizers handle SIGSEGV/SIGBUS/SIGFPE themselves (and then call
     * the death callback); SIGILL (a trap) and SIGABRT are left to us. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_fatal_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND;
    sigaction(SIGILL, &sa, NULL);
    sigaction(SIGABRT, &sa, NULL);
    sigaction(SIGTRAP, &sa, NULL);
}

static void run_one(const uint8_t *data, size_t size)
{
    current_size = size;
    current_data = data;
    LLVMFuzzerTestOneInput(data, size);
    current_data = NULL;
}

/* ---- PRNG: splitmix64 ---------------------------------------------------- */

static uint64_t next_u64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

/* Uniform in [0, bound); bound > 0. (The modulo bias is irrelevant here.) */
static size_t below(uint64_t *rng, size_t bound)
{
    return (size_t)(next_u64(rng) % bound);
}

/* ---- seeds ------------------------------------------------------------------ */

struct blob {
    uint8_t *data;
    size_t size;
};

struct corpus {
    struct blob *items;
    size_t count, cap;
};

static void die(const char *what, const char *path)
{
    fprintf(stderr, "fuzz: %s %s: %s\n", what, path, strerror(errno));
    exit(2);
}

static void corpus_add(struct corpus *c, uint8_t *data, size_t size)
{
    if (c->count == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        struct blob *items = realloc(c->items, cap * sizeof *items);
        if (!items) {
            fprintf(stderr, "fuzz: out of memory\n");
            exit(2);
        }
        c->items = items;
        c->cap = cap;
    }
    c->items[c->count].data = data;
    c->items[c->count].size = size;
    c->count++;
}

static void load_file(struct corpus *c, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        die("cannot open", path);
    size_t cap = 4096, size = 0;
    uint8_t *data = malloc(cap);
    if (!data)
        die("out of memory reading", path);
    for (;;) {
        if (size == cap) {
            cap *= 2;
            uint8_t *grown = realloc(data, cap);
            if (!grown)
                die("out of memory reading", path);
            data = grown;
        }
        size_t got = fread(data + size, 1, cap - size, f);
        size += got;
        if (got == 0) {
            if (ferror(f))
                die("cannot read", path);
            break;
        }
    }
    fclose(f);
    corpus_add(c, data, size);
}

static void load_path(struct corpus *c, const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        die("cannot stat", path);
    if (!S_ISDIR(st.st_mode)) {
        load_file(c, path);
        return;
    }
    struct dirent **names;
    int n = scandir(path, &names, NULL, alphasort);
    if (n < 0)
        die("cannot list", path);
    for (int i = 0; i < n; i++) {
        const char *name = names[i]->d_name;
        if (strcmp(name, ".") != 0 && strcmp(name, "..") != 0) {
            size_t len = strlen(path) + 1 + strlen(name) + 1;
            char *child = malloc(len);
            if (!child)
                die("out of memory listing", path);
            snprintf(child, len, "%s/%s", path, name);
            struct stat cst;
            if (stat(child, &cst) != 0)
                die("cannot stat", child);
            if (S_ISDIR(cst.st_mode) || S_ISREG(cst.st_mode))
                load_path(c, child);
            free(child);
        }
        free(names[i]);
    }
    free(names);
}

/* ---- mutations ---------------------------------------------------------- */

static const uint8_t interesting_bytes[] = {
    0x00, ':', '[', ']', '%', '/', '.', '9', 0xff, 0x80, '0', '1', '5', '6', 'a', 'f', 'F',
    'x', 'z', ':', '@', '?', '#', '\\', ' ', 0x7f, 0x20, 0x1f, '\n', '-', '_', '~', '+',
};

struct token {
    const char *text;
    size_t len;
};
#define TOKEN(s) {s, sizeof(s) - 1}
static const struct token tokens[] = {
    TOKEN("tcp://"), TOKEN("udp://"), TOKEN("ssl://"), TOKEN("tls://"), TOKEN("unix://"),
    TOKEN("udg://"), TOKEN("sslv2://"), TOKEN("sslv3://"), TOKEN("tlsv1.0://"),
    TOKEN("tlsv1.1://"), TOKEN("tlsv1.2://"), TOKEN("tlsv1.3://"), TOKEN("TLSv1.3://"),
    TOKEN("UNIX://"), TOKEN("http://"), TOKEN("://"), TOKEN(":/"), TOKEN("[::1]"),
    TOKEN("[::1]:"), TOKEN("["), TOKEN("]"), TOKEN("]:"), TOKEN("::"), TOKEN(":"),
    TOKEN("%"), TOKEN("%eth0"), TOKEN("%25"), TOKEN("::1"), TOKEN("::ffff:"),
    TOKEN("::ffff:1.2.3.4"), TOKEN("1.2.3.4"), TOKEN("fe80::"), TOKEN("2001:db8::"),
    TOKEN("0:0:0:0:0:0:0:0"), TOKEN("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"),
    TOKEN("65535"), TOKEN("65536"), TOKEN("99999"), TOKEN("4294967296"), TOKEN("0"),
    TOKEN("00000"), TOKEN("localhost"), TOKEN("example.com"), TOKEN("/tmp/sock"),
    TOKEN("\0"), TOKEN("\0abstract"), TOKEN("\xff\xfe"), TOKEN("\xc3\xa9"),
};

static const char *const run_alphabets[] = {
    "0123456789", ":", "9", "0", "a", "f", "0123456789abcdef:", ":.", "/", "[", "]", "%",
    "\xff", "\x80", "\0",
};

/* Inserts n bytes (src, or random when src is NULL) at pos, clipped to MAX_LEN. */
static void insert_bytes(uint8_t *buf, size_t *len, size_t pos, const uint8_t *src, size_t n,
                         uint64_t *rng)
{
    if (*len >= MAX_LEN)
        return;
    if (n > MAX_LEN - *len)
        n = MAX_LEN - *len;
    memmove(buf + pos + n, buf + pos, *len - pos);
    if (src)
        memmove(buf + pos, src, n);
    else
        for (size_t i = 0; i < n; i++)
            buf[pos + i] = (uint8_t)next_u64(rng);
    *len += n;
}

/* A length for a range: mostly short, now and then long. */
static size_t range_len(uint64_t *rng, size_t max)
{
    if (max == 0)
        return 0;
    size_t limit = below(rng, 8) == 0 ? max : (max < 16 ? max : 16);
    return 1 + below(rng, limit);
}

static void mutate_once(uint8_t *buf, size_t *len, const struct corpus *seeds, uint64_t *rng)
{
    size_t n = *len;
    switch (below(rng, 14)) {
    case 0: /* flip one bit */
        if (n)
            buf[below(rng, n)] ^= (uint8_t)(1u << below(rng, 8));
        break;
    case 1: /* set a byte to an interesting value */
    case 2:
        if (n)
            buf[below(rng, n)] = interesting_bytes[below(rng, sizeof interesting_bytes)];
        break;
    case 3: /* set a byte to a random value */
        if (n)
            buf[below(rng, n)] = (uint8_t)next_u64(rng);
        break;
    case 4: /* insert interesting or random bytes */
    {
        size_t pos = below(rng, n + 1);
        size_t count = 1 + below(rng, 4);
        if (below(rng, 2)) {
            for (size_t i = 0; i < count; i++) {
                uint8_t b = interesting_bytes[below(rng, sizeof interesting_bytes)];
                insert_bytes(buf, len, pos, &b, 1, rng);
            }
        } else {
            insert_bytes(buf, len, pos, NULL, count, rng);
        }
        break;
    }
    case 5: /* delete a range */
        if (n) {
            size_t pos = below(rng, n);
            size_t count = range_len(rng, n - pos);
            memmove(buf + pos, buf + pos + count, n - pos - count);
            *len = n - count;
        }
        break;
    case 6: /* duplicate a range somewhere */
        if (n) {
            size_t from = below(rng, n);
            size_t count = range_len(rng, n - from);
            uint8_t tmp[MAX_LEN];
            memcpy(tmp, buf + from, count);
            insert_bytes(buf, len, below(rng, n + 1), tmp, count, rng);
        }
        break;
    case 7: /* overwrite a range with a copy of another */
        if (n >= 2) {
            size_t from = below(rng, n), to = below(rng, n);
            size_t max = n - (from > to ? from : to);
            size_t count = range_len(rng, max);
            memmove(buf + to, buf + from, count);
        }
        break;
    case 8: /* splice: our head, another seed's tail (or a chunk of it inserted) */
    {
        const struct blob *other = &seeds->items[below(rng, seeds->count)];
        size_t olen = other->size < MAX_LEN ? other->size : MAX_LEN;
        if (olen == 0)
            break;
        size_t ofrom = below(rng, olen);
        if (below(rng, 2)) {
            size_t cut = below(rng, n + 1);
            size_t count = olen - ofrom;
            if (count > MAX_LEN - cut)
                count = MAX_LEN - cut;
            memcpy(buf + cut, other->data + ofrom, count);
            *len = cut + count;
        } else {
            size_t count = range_len(rng, olen - ofrom);
            insert_bytes(buf, len, below(rng, n + 1), other->data + ofrom, count, rng);
        }
        break;
    }
    case 9: /* a long run of digits, colons or one character, appended or inserted */
    {
        const char *alphabet = run_alphabets[below(rng, sizeof run_alphabets / sizeof *run_alphabets)];
        size_t alen = alphabet[0] ? strlen(alphabet) : 1;
        size_t count = below(rng, 4) == 0 ? 1 + below(rng, 4096) : 1 + below(rng, 300);
        uint8_t tmp[4096];
        for (size_t i = 0; i < count; i++)
            tmp[i] = (uint8_t)alphabet[below(rng, alen)];
        size_t pos = below(rng, 2) ? n : below(rng, n + 1);
        insert_bytes(buf, len, pos, tmp, count, rng);
        break;
    }
    case 10: /* insert a token */
    case 11:
    {
        const struct token *t = &tokens[below(rng, sizeof tokens / sizeof *tokens)];
        size_t pos = below(rng, 3) == 0 ? 0 : below(rng, n + 1);
        insert_bytes(buf, len, pos, (const uint8_t *)t->text, t->len, rng);
        break;
    }
    case 12: /* truncate */
        *len = below(rng, n + 1);
        break;
    case 13: /* add or subtract a little from a byte (digits roll over, etc.) */
        if (n) {
            size_t pos = below(rng, n);
            buf[pos] = (uint8_t)(buf[pos] + (below(rng, 2) ? 1 : 255) * (1 + below(rng, 3)));
        }
        break;
    }
}

/* ---- main ------------------------------------------------------------------ */

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s [-n ITERATIONS] [-s SEED] [-t SECONDS] [-o CRASH_FILE] "
            "SEED_FILE_OR_DIR...\n",
            argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    unsigned long long iterations = 1000000;
    double seconds = 0;
    uint64_t seed = 0;
    int have_seed = 0;
    int opt;
    while ((opt = getopt(argc, argv, "n:s:t:o:h")) != -1) {
        char *end = NULL;
        errno = 0;
        switch (opt) {
        case 'n':
            if (optarg[0] == '-')
                usage(argv[0]);
            iterations = strtoull(optarg, &end, 10);
            break;
        case 's':
            if (optarg[0] == '-')
                usage(argv[0]);
            seed = strtoull(optarg, &end, 0);
            have_seed = 1;
            break;
        case 't':
            seconds = strtod(optarg, &end);
            if (seconds < 0)
                usage(argv[0]);
            break;
        case 'o':
            crash_file = optarg;
            break;
        default:
            usage(argv[0]);
        }
        if (end && (*end != '\0' || end == optarg || errno))
            usage(argv[0]);
    }
    if (!have_seed) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = (uint64_t)ts.tv_sec * 1000000007u ^ (uint64_t)ts.tv_nsec ^
               ((uint64_t)getpid() << 32);
    }

    install_crash_reporting();

    struct corpus seeds = {NULL, 0, 0};
    for (int i = optind; i < argc; i++)
        load_path(&seeds, argv[i]);
    size_t seed_files = seeds.count;
    if (seconds > 0)
        printf("fuzz: seed %" PRIu64 ", %zu seed inputs, up to %llu iterations or %.1fs\n",
               seed, seed_files, iterations, seconds);
    else
        printf("fuzz: seed %" PRIu64 ", %zu seed inputs, up to %llu iterations\n", seed,
               seed_files, iterations);
    fflush(stdout);

    double started = now_seconds();
    unsigned long long executions = 0;

    /* Every seed as it is. */
    for (size_t i = 0; i < seeds.count; i++) {
        run_one(seeds.items[i].data, seeds.items[i].size);
        executions++;
    }
    if (seeds.count == 0) {
        uint8_t *empty = malloc(1);
        if (!empty)
            die("out of memory", "");
        corpus_add(&seeds, empty, 0);
    }

    /* Then mutations of them. */
    uint64_t rng = seed;
    uint8_t *buf = malloc(MAX_LEN);
    struct blob ring[RING_SIZE];
    size_t ring_used = 0, ring_next = 0;
    for (size_t i = 0; i < RING_SIZE; i++) {
        ring[i].data = malloc(MAX_LEN);
        ring[i].size = 0;
        if (!ring[i].data)
            die("out of memory", "");
    }
    if (!buf)
        die("out of memory", "");

    for (unsigned long long iter = 0; iter < iterations; iter++) {
        if (seconds > 0 && (iter & 255) == 0 && now_seconds() - started >= seconds)
            break;
        const struct blob *base = ring_used && below(&rng, 4) == 0
                                      ? &ring[below(&rng, ring_used)]
                                      : &seeds.items[below(&rng, seeds.count)];
        size_t len = base->size < MAX_LEN ? base->size : MAX_LEN;
        memcpy(buf, base->data, len);
        size_t rounds = 1 + below(&rng, MAX_MUTATIONS);
        for (size_t r = 0; r < rounds; r++)
            mutate_once(buf, &len, &seeds, &rng);
        run_one(buf, len);
        executions++;

        memcpy(ring[ring_next].data, buf, len);
        ring[ring_next].size = len;
        ring_next = (ring_next + 1) % RING_SIZE;
        if (ring_used < RING_SIZE)
            ring_used++;
    }
    double elapsed = now_seconds() - started;

    for (size_t i = 0; i < RING_SIZE; i++)
        free(ring[i].data);
    free(buf);
    for (size_t i = 0; i < seeds.count; i++)
        free(seeds.items[i].data);
    free(seeds.items);

    printf("fuzz: %llu executions, %zu seeds, %.1fs\n", executions, seed_files, elapsed);
    return 0;
}
