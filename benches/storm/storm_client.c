/* storm_client.c - an independent lock-step TFTP read client for boot-storm benchmarks.
 *
 * Written from RFC 1350 (TFTP), RFC 2347 (option extension), RFC 2348 (blksize) and RFC 2349
 * (tsize); shares no code with ringtftp or its loadgen. Plain C, libc only, one thread, epoll.
 *
 *   cc -O2 -Wall -Wextra -o storm_client storm_client.c
 *   storm_client --server 127.0.0.1:6969 --file storm.bin --expect /srv/tftp/storm.bin \
 *                --total 2000 --concurrency 500 [--blksize 1468] [--tsize] [--timeout 1] \
 *                [--retries 5] [--sources one|many] [--deadline 600] [--latencies FILE]
 *
 * Each transfer: a new UDP socket on an ephemeral port (bound to 127.0.0.1, or with
 * --sources many to 127.0.0.X, X = 1..250 in turn), an RRQ to the server's port (octet mode,
 * option blksize unless --blksize 0, tsize with --tsize; never windowsize: lock-step only).
 * The source of the first valid reply is the server's TID: OACK -> ACK 0; DATA 1 -> no options
 * (blksize 512). Every DATA is ACKed; the same block again is a duplicate, counted and re-ACKed
 * (RFC 1350). Packets from another TID get ERROR 5 and are otherwise ignored. On a timeout the
 * last packet is sent again; after --retries timeouts in a row the transfer fails. Every byte
 * received is compared with the expected file (loaded in memory); a difference fails it.
 * The last DATA's ACK ends the transfer (no dallying: the socket is closed at once).
 *
 * Output: one JSON line on stdout at the end (by completion or by --deadline); t_start and
 * t_end are CLOCK_MONOTONIC seconds (one clock for all processes), so the wall time of several
 * clients run side by side can be taken from the first start to the last end. With
 * --latencies FILE, every completed transfer's latency (ms, RRQ sent to last ACK sent) is also
 * written to FILE, one per line, so percentiles over several clients can be computed exactly.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { OP_RRQ = 1, OP_WRQ, OP_DATA, OP_ACK, OP_ERROR, OP_OACK };
enum { ST_FREE = 0, ST_FIRST, ST_DATA };
enum { R_TIMEOUT, R_ERROR, R_MISMATCH, R_PROTOCOL, R_SOCKET, R_DEADLINE, R_NSTARTED, R_COUNT };
static const char *reason_name[R_COUNT] = {"timeout",  "server_error", "mismatch",   "protocol",
                                           "socket",   "deadline",     "not_started"};

struct slot {
    int fd;
    int state;
    uint64_t block;          /* blocks received in order so far; next expected is block+1 */
    uint64_t bytes;          /* bytes received and verified */
    size_t blksize;          /* negotiated */
    struct sockaddr_in tid;  /* server's transfer address once known */
    unsigned char last[600]; /* last packet sent (RRQ or ACK) */
    size_t last_len;
    int tries;               /* timeouts in a row */
    double t_start;
    double due;              /* retransmission time */
    int prev, next;          /* timer list (ordered by due, since the timeout is constant) */
};

static struct slot *slots;
static int nslots, t_head = -1, t_tail = -1;
static int *free_stack, nfree; /* free slots */
static long inflight;
static unsigned char *expect;
static size_t expect_len;
static struct sockaddr_in server;
static const char *fname;
static size_t want_blksize = 1468;
static int want_tsize;
static double timeout_s = 1.0;
static int max_retries = 5;
static int many_sources;
static double deadline_s = 600;
static long total = 0, concurrency = 0;
static int epfd;

static long started, ok, failed[R_COUNT], error_codes[256];
static long data_blocks, dup_data, retransmits, stray, other_tid, dup_oack;
static double *lat_ms;
static long nlat;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *m)
{
    fprintf(stderr, "storm_client: %s\n", m);
    exit(2);
}

/* ---- timer list: constant timeout, so appending keeps it ordered by due time ---- */
static void t_unlink(int i)
{
    struct slot *s = &slots[i];
    if (s->prev < 0 && t_head != i) return; /* not linked */
    if (s->prev >= 0) slots[s->prev].next = s->next; else t_head = s->next;
    if (s->next >= 0) slots[s->next].prev = s->prev; else t_tail = s->prev;
    s->prev = s->next = -1;
}

static void t_arm(int i, double t)
{
    t_unlink(i);
    struct slot *s = &slots[i];
    s->due = t + timeout_s;
    s->prev = t_tail;
    s->next = -1;
    if (t_tail >= 0) slots[t_tail].next = i; else t_head = i;
    t_tail = i;
}

/* ---- sending ---- */
static int send_to(struct slot *s, const void *buf, size_t len, const struct sockaddr_in *to)
{
    if (sendto(s->fd, buf, len, 0, (const struct sockaddr *)to, sizeof *to) == (ssize_t)len)
        return 0;
    /* A full queue is a lost packet: the timer sends it again. */
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS || errno == ECONNREFUSED)
        return 0;
    return -1;
}

static void finish(int i, int reason); /* reason < 0: ok */

static void send_last(int i)
{
    struct slot *s = &slots[i];
    const struct sockaddr_in *to = s->state == ST_FIRST ? &server : &s->tid;
    if (send_to(s, s->last, s->last_len, to)) finish(i, R_SOCKET);
}

static void send_ack(int i, uint16_t block, double t)
{
    struct slot *s = &slots[i];
    s->last[0] = 0;
    s->last[1] = OP_ACK;
    s->last[2] = block >> 8;
    s->last[3] = block & 0xff;
    s->last_len = 4;
    t_arm(i, t);
    send_last(i);
}

static void send_error(int fd, const struct sockaddr_in *to, int code, const char *msg)
{
    unsigned char b[128];
    size_t n = strlen(msg);
    if (n > sizeof b - 5) n = sizeof b - 5;
    b[0] = 0;
    b[1] = OP_ERROR;
    b[2] = 0;
    b[3] = code;
    memcpy(b + 4, msg, n);
    b[4 + n] = 0;
    (void)!sendto(fd, b, n + 5, 0, (const struct sockaddr *)to, sizeof *to);
}

/* ---- transfers ---- */
static int start(int i, double t)
{
    struct slot *s = &slots[i];
    memset(s, 0, sizeof *s);
    s->prev = s->next = -1;
    s->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        perror("socket");
        return -1;
    }
    struct sockaddr_in src = {.sin_family = AF_INET};
    src.sin_addr.s_addr = htonl(0x7f000001u + (many_sources ? (uint32_t)((started - 1) % 250) : 0));
    if (bind(s->fd, (struct sockaddr *)&src, sizeof src)) {
        perror("bind");
        close(s->fd);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, s->fd, &ev)) {
        perror("epoll_ctl");
        close(s->fd);
        return -1;
    }
    /* RRQ: opcode, filename, 0, "octet", 0, options */
    size_t n = 0, fl = strlen(fname);
    unsigned char *p = s->last;
    p[n++] = 0;
    p[n++] = OP_RRQ;
    memcpy(p + n, fname, fl + 1);
    n += fl + 1;
    memcpy(p + n, "octet", 6);
    n += 6;
    if (want_blksize) n += (size_t)sprintf((char *)p + n, "blksize%c%zu", 0, want_blksize) + 1;
    if (want_tsize) n += (size_t)sprintf((char *)p + n, "tsize%c0", 0) + 1;
    s->last_len = n;
    s->state = ST_FIRST;
    s->blksize = 512;
    s->t_start = t;
    inflight++;
    t_arm(i, t);
    send_last(i);
    return 0;
}

static void finish(int i, int reason)
{
    struct slot *s = &slots[i];
    if (s->state == ST_FREE) return;
    t_unlink(i);
    close(s->fd);
    s->fd = -1;
    s->state = ST_FREE;
    free_stack[nfree++] = i;
    inflight--;
    if (reason < 0) {
        ok++;
        lat_ms[nlat++] = (now() - s->t_start) * 1e3;
    } else {
        failed[reason]++;
    }
}

/* Parse an OACK: NUL-terminated option/value pairs. Returns 0 when acceptable. */
static int take_oack(struct slot *s, const unsigned char *b, size_t n)
{
    size_t off = 2;
    while (off < n) {
        const char *name = (const char *)b + off;
        const void *z = memchr(b + off, 0, n - off);
        if (!z) return -1;
        off = (size_t)((const unsigned char *)z - b) + 1;
        if (off >= n) return -1;
        const char *val = (const char *)b + off;
        z = memchr(b + off, 0, n - off);
        if (!z) return -1;
        off = (size_t)((const unsigned char *)z - b) + 1;
        char *end;
        unsigned long v = strtoul(val, &end, 10);
        if (*val == 0 || *end != 0) return -1;
        if (!strcasecmp(name, "blksize")) {
            if (!want_blksize || v < 8 || v > want_blksize) return -1;
            s->blksize = v;
        } else if (!strcasecmp(name, "tsize")) {
            if (!want_tsize || v != expect_len) return -1;
        } else {
            return -1; /* an option we did not ask for */
        }
    }
    return 0;
}

static void on_packet(int i, const unsigned char *b, size_t n, const struct sockaddr_in *from,
                      double t)
{
    struct slot *s = &slots[i];
    if (n < 4) {
        stray++;
        return;
    }
    int op = (b[0] << 8) | b[1];
    if (s->state == ST_FIRST) {
        if (from->sin_addr.s_addr != server.sin_addr.s_addr) {
            stray++;
            return;
        }
        /* Only OACK, DATA 1 or ERROR can open a transfer (anything else may be a late packet
         * to an earlier socket that had this port). */
        uint16_t blk = (b[2] << 8) | b[3];
        if (!(op == OP_OACK || op == OP_ERROR || (op == OP_DATA && blk == 1))) {
            stray++;
            return;
        }
        s->tid = *from;
    } else if (from->sin_addr.s_addr != s->tid.sin_addr.s_addr ||
               from->sin_port != s->tid.sin_port) {
        other_tid++;
        send_error(s->fd, from, 5, "Unknown transfer ID");
        return;
    }
    switch (op) {
    case OP_OACK:
        if (s->state == ST_DATA) {
            if (s->block == 0) { /* our ACK 0 was lost or late: ACK again */
                dup_oack++;
                retransmits++;
                send_last(i);
            } else {
                stray++;
            }
            return;
        }
        if (take_oack(s, b, n)) {
            send_error(s->fd, from, 8, "Option refused");
            finish(i, R_PROTOCOL);
            return;
        }
        s->state = ST_DATA;
        s->tries = 0;
        send_ack(i, 0, t);
        return;
    case OP_DATA: {
        uint16_t blk = (b[2] << 8) | b[3];
        size_t len = n - 4;
        if (s->state == ST_FIRST) s->state = ST_DATA; /* DATA 1 without OACK: no options */
        data_blocks++;
        if (blk == (uint16_t)(s->block + 1)) {
            if (len > s->blksize) {
                send_error(s->fd, from, 4, "Block too large");
                finish(i, R_PROTOCOL);
                return;
            }
            if (s->bytes + len > expect_len || memcmp(expect + s->bytes, b + 4, len)) {
                send_error(s->fd, from, 0, "Content differs");
                finish(i, R_MISMATCH);
                return;
            }
            s->bytes += len;
            s->block++;
            s->tries = 0;
            send_ack(i, blk, t);
            if (s->state == ST_FREE) return; /* send failed */
            if (len < s->blksize) finish(i, s->bytes == expect_len ? -1 : R_MISMATCH);
        } else if (blk == (uint16_t)s->block) {
            dup_data++; /* the block we ACKed last: ACK it again (RFC 1350) */
            retransmits++;
            send_last(i);
        } else {
            stray++;
        }
        return;
    }
    case OP_ERROR:
        error_codes[b[3]]++;
        finish(i, R_ERROR);
        return;
    default:
        send_error(s->fd, from, 4, "Illegal TFTP operation");
        finish(i, R_PROTOCOL);
        return;
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double p)
{
    if (!nlat) return 0;
    size_t k = (size_t)(p / 100.0 * (double)(nlat - 1) + 0.5);
    return lat_ms[k];
}

static void usage(void)
{
    fprintf(stderr,
            "usage: storm_client --server HOST:PORT --file NAME --expect PATH --total N\n"
            "         --concurrency C [--blksize B (1468; 0: no option)] [--tsize]\n"
            "         [--timeout SECS (1)] [--retries N (5)] [--sources one|many]\n"
            "         [--deadline SECS (600)] [--latencies FILE]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *srv = NULL, *expect_path = NULL, *sources = "one", *lat_path = NULL;
    static const struct option opts[] = {
        {"server", required_argument, 0, 's'},  {"file", required_argument, 0, 'f'},
        {"expect", required_argument, 0, 'e'},  {"total", required_argument, 0, 'n'},
        {"concurrency", required_argument, 0, 'c'}, {"blksize", required_argument, 0, 'b'},
        {"tsize", no_argument, 0, 'T'},         {"timeout", required_argument, 0, 't'},
        {"retries", required_argument, 0, 'r'}, {"sources", required_argument, 0, 'S'},
        {"deadline", required_argument, 0, 'd'}, {"latencies", required_argument, 0, 'L'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "s:f:e:n:c:b:Tt:r:S:d:L:h", opts, NULL)) != -1) {
        switch (o) {
        case 's': srv = optarg; break;
        case 'f': fname = optarg; break;
        case 'e': expect_path = optarg; break;
        case 'n': total = atol(optarg); break;
        case 'c': concurrency = atol(optarg); break;
        case 'b': want_blksize = strtoul(optarg, NULL, 10); break;
        case 'T': want_tsize = 1; break;
        case 't': timeout_s = atof(optarg); break;
        case 'r': max_retries = atoi(optarg); break;
        case 'S': sources = optarg; break;
        case 'd': deadline_s = atof(optarg); break;
        case 'L': lat_path = optarg; break;
        default: usage();
        }
    }
    if (!srv || !fname || !expect_path || total <= 0 || concurrency <= 0) usage();
    if (strlen(fname) > 400) die("file name too long");
    if (want_blksize && (want_blksize < 8 || want_blksize > 65464)) die("blksize out of 8..65464");
    if (timeout_s <= 0 || max_retries < 0 || deadline_s <= 0) die("bad timeout/retries/deadline");
    if (!strcmp(sources, "many")) many_sources = 1;
    else if (strcmp(sources, "one")) die("--sources is one or many");
    if (concurrency > total) concurrency = total;
    FILE *lf = NULL; /* opened now: a bad path fails before the run, not after it */
    if (lat_path && !(lf = fopen(lat_path, "w"))) die("cannot open --latencies");

    /* server address */
    char host[256];
    const char *colon = strrchr(srv, ':');
    if (!colon || (size_t)(colon - srv) >= sizeof host) die("--server is HOST:PORT");
    memcpy(host, srv, (size_t)(colon - srv));
    host[colon - srv] = 0;
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_DGRAM}, *ai;
    if (getaddrinfo(host, colon + 1, &hints, &ai)) die("cannot resolve --server");
    memcpy(&server, ai->ai_addr, sizeof server);
    freeaddrinfo(ai);

    /* expected content */
    int efd = open(expect_path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (efd < 0 || fstat(efd, &st)) die("cannot open --expect");
    expect_len = (size_t)st.st_size;
    expect = malloc(expect_len ? expect_len : 1);
    if (!expect) die("out of memory");
    for (size_t got = 0; got < expect_len;) {
        ssize_t r = read(efd, expect + got, expect_len - got);
        if (r <= 0) die("cannot read --expect");
        got += (size_t)r;
    }
    close(efd);

    /* descriptors: one per transfer in flight, plus a few */
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rlim_t need = (rlim_t)concurrency + 32;
    if (rl.rlim_cur < need) {
        if (rl.rlim_max < need) rl.rlim_max = need; /* root may raise the hard limit */
        rl.rlim_cur = need;
        if (setrlimit(RLIMIT_NOFILE, &rl)) die("cannot raise RLIMIT_NOFILE to the concurrency");
    }

    nslots = (int)concurrency;
    slots = calloc((size_t)nslots, sizeof *slots);
    lat_ms = calloc((size_t)total, sizeof *lat_ms);
    free_stack = calloc((size_t)nslots, sizeof *free_stack);
    if (!slots || !lat_ms || !free_stack) die("out of memory");
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");

    double t0 = now(), stop_at = t0 + deadline_s;
    for (int i = nslots - 1; i >= 0; i--) free_stack[nfree++] = i;

    struct epoll_event evs[256];
    size_t bufsz = (want_blksize > 512 ? want_blksize : 512) + 64;
    unsigned char *buf = malloc(bufsz);
    if (!buf) die("out of memory");
    int timed_out = 0;
    for (;;) {
        double t = now();
        if (t >= stop_at) {
            timed_out = 1;
            break;
        }
        /* retransmissions due */
        while (t_head >= 0 && slots[t_head].due <= t) {
            int i = t_head;
            struct slot *s = &slots[i];
            if (s->tries >= max_retries) {
                finish(i, R_TIMEOUT);
                continue;
            }
            s->tries++;
            retransmits++;
            t_arm(i, t);
            send_last(i);
        }
        /* refill free slots */
        while (nfree > 0 && started < total) {
            int i = free_stack[--nfree];
            started++;
            if (start(i, t)) {
                failed[R_SOCKET]++;
                free_stack[nfree++] = i;
                break; /* out of descriptors or ports: try again on the next turn */
            }
        }
        if (!inflight && started >= total) break;
        double wake = t_head >= 0 ? slots[t_head].due : t + 1;
        if (wake > stop_at) wake = stop_at;
        int ms = (int)((wake - t) * 1e3) + 1;
        if (ms < 0) ms = 0;
        int k = epoll_wait(epfd, evs, (int)(sizeof evs / sizeof evs[0]), ms);
        if (k < 0 && errno != EINTR) die("epoll_wait");
        t = now();
        for (int j = 0; j < k; j++) {
            int i = (int)evs[j].data.u32;
            /* A slot finished and restarted in this batch: its new socket simply has nothing. */
            for (int burst = 0; burst < 8 && slots[i].state != ST_FREE; burst++) {
                struct sockaddr_in from;
                socklen_t fl = sizeof from;
                ssize_t r = recvfrom(slots[i].fd, buf, bufsz, 0, (struct sockaddr *)&from, &fl);
                if (r < 0) {
                    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
                    if (errno == ECONNREFUSED) continue; /* ICMP from a late packet */
                    finish(i, R_SOCKET);
                    break;
                }
                on_packet(i, buf, (size_t)r, &from, t);
            }
        }
    }
    double t_end = now(), wall = t_end - t0;
    if (timed_out) {
        for (int i = 0; i < nslots; i++)
            if (slots[i].state != ST_FREE) finish(i, R_DEADLINE);
        failed[R_NSTARTED] += total - started;
    }

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double us = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
    double sy = ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    qsort(lat_ms, (size_t)nlat, sizeof *lat_ms, cmp_double);
    if (lf) {
        for (long k = 0; k < nlat; k++) fprintf(lf, "%.6f\n", lat_ms[k]);
        if (fclose(lf)) die("cannot write --latencies");
    }
    long nfail = 0;
    for (int r = 0; r < R_COUNT; r++) nfail += failed[r];

    printf("{\"ok\":%ld,\"failed\":%ld,\"failed_by\":{", ok, nfail);
    int first = 1;
    for (int r = 0; r < R_COUNT; r++)
        if (failed[r]) {
            printf("%s\"%s\":%ld", first ? "" : ",", reason_name[r], failed[r]);
            first = 0;
        }
    printf("},\"error_codes\":{");
    first = 1;
    for (int c = 0; c < 256; c++)
        if (error_codes[c]) {
            printf("%s\"%d\":%ld", first ? "" : ",", c, error_codes[c]);
            first = 0;
        }
    printf("},\"total\":%ld,\"started\":%ld,\"concurrency\":%ld,\"sources\":\"%s\","
           "\"blksize\":%zu,\"file_bytes\":%zu,\"deadline_hit\":%s,"
           "\"t_start\":%.6f,\"t_end\":%.6f,\"wall_s\":%.3f,\"rate\":%.2f,"
           "\"lat_ms\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f},"
           "\"data_blocks\":%ld,\"dup_data\":%ld,\"dup_oack\":%ld,\"retransmits\":%ld,"
           "\"other_tid\":%ld,\"stray\":%ld,\"cpu_s\":%.3f,\"user_s\":%.3f,\"sys_s\":%.3f}\n",
           total, started, concurrency, many_sources ? "many" : "one", want_blksize, expect_len,
           timed_out ? "true" : "false", t0, t_end, wall, wall > 0 ? ok / wall : 0.0, pct(50),
           pct(90), pct(99), nlat ? lat_ms[nlat - 1] : 0.0, data_blocks, dup_data, dup_oack,
           retransmits, other_tid, stray, us + sy, us, sy);
    return nfail ? 1 : 0;
}
