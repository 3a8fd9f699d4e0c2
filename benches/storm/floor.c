/* floor.c - the kernel floor of a lock-step TFTP storm on this machine: what a server must at
 * least spend per DATA/ACK cycle (receive a 4-byte ACK, send one DATA datagram back) with
 * nothing else to do. Not a TFTP server: no files, no protocol, no timers.
 *
 *   cc -O2 -Wall -Wextra -o floor floor.c
 *   floor SHAPE N CYCLES [--payload BYTES (1472)] [--server-cpu C] [--client-cpu C]
 *
 * SHAPE one:  the server has one unconnected UDP socket; it reads a batch of ACKs with recvmmsg
 *             and answers each sender with sendmmsg (the single-port server shape).
 * SHAPE many: the server has one socket per client, connected to it; epoll_wait, then recv +
 *             send on each ready socket (the per-transfer-port shape of RFC 1350 servers).
 * N clients in lock-step (send 4 bytes, wait for the reply, again) live in a forked child
 * (pinned to --client-cpu), the server in the parent (pinned to --server-cpu); the sockets are
 * made and paired before the fork, so no ports are chosen by hand. The parent prints one JSON
 * line: the server's own CPU (getrusage, from its first packet to the end) per cycle.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double cpu(double *user, double *sys)
{
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    *user = r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6;
    *sys = r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
    return *user + *sys;
}

static void die(const char *m)
{
    perror(m);
    exit(2);
}

static void pin(int c)
{
    if (c < 0) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(c, &set);
    if (sched_setaffinity(0, sizeof set, &set)) die("sched_setaffinity");
}

static int udp(int rcvbuf)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) die("socket");
    if (rcvbuf && setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf))
        (void)setsockopt(s, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001u)};
    if (bind(s, (struct sockaddr *)&a, sizeof a)) die("bind");
    return s;
}

static struct sockaddr_in addr_of(int s)
{
    struct sockaddr_in a;
    socklen_t l = sizeof a;
    if (getsockname(s, (struct sockaddr *)&a, &l)) die("getsockname");
    return a;
}

static void link_to(int s, int peer)
{
    struct sockaddr_in a = addr_of(peer);
    if (connect(s, (struct sockaddr *)&a, sizeof a)) die("connect");
}

/* The clients: N connected sockets in lock-step, CYCLES replies in all, then "STOP". */
static void client(int *fd, int n, long cycles, int stop_fd)
{
    int ep = epoll_create1(0);
    char ack[4] = {0, 4, 0, 1}, buf[70000];
    char *waiting = calloc((size_t)n, 1);
    long sent = 0, got = 0;
    for (int i = 0; i < n; i++) {
        struct epoll_event e = {.events = EPOLLIN, .data.u32 = (unsigned)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd[i], &e)) die("epoll_ctl");
    }
    for (int i = 0; i < n && sent < cycles; i++, sent++) {
        waiting[i] = 1;
        (void)!send(fd[i], ack, 4, 0);
    }
    struct epoll_event ev[BATCH];
    double quiet_since = now();
    while (got < cycles) {
        int k = epoll_wait(ep, ev, BATCH, 100);
        if (k <= 0) {
            if (now() - quiet_since > 10) break; /* give up: the server is gone */
            for (int i = 0; i < n; i++) /* a lost datagram: ask again */
                if (waiting[i]) (void)!send(fd[i], ack, 4, 0);
            continue;
        }
        quiet_since = now();
        for (int j = 0; j < k; j++) {
            int i = (int)ev[j].data.u32;
            while (recv(fd[i], buf, sizeof buf, MSG_DONTWAIT) > 0) {
                if (!waiting[i]) continue;
                waiting[i] = 0;
                got++;
                if (sent < cycles) {
                    sent++;
                    waiting[i] = 1;
                    (void)!send(fd[i], ack, 4, 0);
                }
            }
        }
    }
    usleep(100000);
    (void)!send(stop_fd, "STOP", 4, 0);
    _exit(got >= cycles ? 0 : 1);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: floor one|many N CYCLES [--payload BYTES] [--server-cpu C] "
                        "[--client-cpu C]\n");
        return 2;
    }
    int many = !strcmp(argv[1], "many");
    if (!many && strcmp(argv[1], "one")) return 2;
    int n = atoi(argv[2]), scpu = -1, ccpu = -1;
    long cycles = atol(argv[3]);
    size_t payload = 1472;
    for (int i = 4; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--payload")) payload = strtoul(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--server-cpu")) scpu = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--client-cpu")) ccpu = atoi(argv[i + 1]);
        else return 2;
    }
    if (n <= 0 || cycles <= 0 || payload < 4 || payload > 65507) return 2;

    struct rlimit rl = {.rlim_cur = (rlim_t)2 * n + 64, .rlim_max = (rlim_t)2 * n + 64};
    struct rlimit cur;
    getrlimit(RLIMIT_NOFILE, &cur);
    if (cur.rlim_cur < rl.rlim_cur) {
        if (cur.rlim_max > rl.rlim_max) rl.rlim_max = cur.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl)) die("setrlimit");
    }

    int *cfd = calloc((size_t)n, sizeof *cfd), *sfd = calloc((size_t)(many ? n : 1), sizeof *sfd);
    if (!many) sfd[0] = udp(16 << 20);
    for (int i = 0; i < n; i++) {
        cfd[i] = udp(0);
        if (many) {
            sfd[i] = udp(0);
            link_to(sfd[i], cfd[i]);
        }
        link_to(cfd[i], many ? sfd[i] : sfd[0]);
    }
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        pin(ccpu);
        for (int i = 0; i < (many ? n : 1); i++) close(sfd[i]);
        client(cfd, n, cycles, cfd[0]);
    }
    pin(scpu);
    for (int i = 0; i < n; i++) close(cfd[i]);
    alarm(600); /* bounded, whatever happens */

    static char data[BATCH][65536], ack[BATCH][64];
    for (int i = 0; i < BATCH; i++) memset(data[i], 'x', payload);
    long cyc = 0;
    double t0 = 0, u0 = 0, s0 = 0, c0 = 0;
    int stop = 0;
    if (!many) {
        struct mmsghdr in[BATCH], out[BATCH];
        struct iovec ii[BATCH], oi[BATCH];
        struct sockaddr_in from[BATCH];
        while (!stop) {
            for (int i = 0; i < BATCH; i++) {
                ii[i] = (struct iovec){ack[i], sizeof ack[i]};
                in[i] = (struct mmsghdr){.msg_hdr = {.msg_name = &from[i],
                                                     .msg_namelen = sizeof from[i],
                                                     .msg_iov = &ii[i],
                                                     .msg_iovlen = 1}};
            }
            int k = recvmmsg(sfd[0], in, BATCH, MSG_WAITFORONE, NULL);
            if (k <= 0) {
                if (errno == EINTR) continue;
                die("recvmmsg");
            }
            if (!t0) {
                t0 = now();
                c0 = cpu(&u0, &s0);
            }
            int m = 0;
            for (int i = 0; i < k; i++) {
                if (in[i].msg_len == 4 && !memcmp(ack[i], "STOP", 4)) {
                    stop = 1;
                    continue;
                }
                oi[m] = (struct iovec){data[m], payload};
                out[m] = (struct mmsghdr){.msg_hdr = {.msg_name = &from[i],
                                                      .msg_namelen = sizeof from[i],
                                                      .msg_iov = &oi[m],
                                                      .msg_iovlen = 1}};
                m++;
            }
            for (int d = 0; d < m;) {
                int r = sendmmsg(sfd[0], out + d, (unsigned)(m - d), 0);
                if (r <= 0) break; /* dropped: the client asks again */
                d += r;
            }
            cyc += m;
        }
    } else {
        int ep = epoll_create1(0);
        for (int i = 0; i < n; i++) {
            struct epoll_event e = {.events = EPOLLIN, .data.u32 = (unsigned)i};
            if (epoll_ctl(ep, EPOLL_CTL_ADD, sfd[i], &e)) die("epoll_ctl");
        }
        struct epoll_event ev[BATCH];
        while (!stop) {
            int k = epoll_wait(ep, ev, BATCH, -1);
            if (k < 0) {
                if (errno == EINTR) continue;
                die("epoll_wait");
            }
            if (!t0) {
                t0 = now();
                c0 = cpu(&u0, &s0);
            }
            for (int j = 0; j < k; j++) {
                int i = (int)ev[j].data.u32;
                ssize_t r = recv(sfd[i], ack[0], sizeof ack[0], MSG_DONTWAIT);
                if (r <= 0) continue;
                if (r == 4 && !memcmp(ack[0], "STOP", 4)) {
                    stop = 1;
                    continue;
                }
                if (send(sfd[i], data[0], payload, 0) == (ssize_t)payload) cyc++;
            }
        }
    }
    double u1, s1, c1 = cpu(&u1, &s1), wall = now() - t0;
    int status = 0;
    waitpid(child, &status, 0);
    int client_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    printf("{\"shape\":\"%s\",\"n\":%d,\"cycles\":%ld,\"payload\":%zu,\"wall_s\":%.3f,"
           "\"rate\":%.0f,\"server_cpu_s\":%.3f,\"user_us_per_cycle\":%.3f,"
           "\"sys_us_per_cycle\":%.3f,\"cpu_us_per_cycle\":%.3f,\"client_ok\":%s}\n",
           many ? "many" : "one", n, cyc, payload, wall, wall > 0 ? cyc / wall : 0, c1 - c0,
           cyc ? (u1 - u0) * 1e6 / cyc : 0, cyc ? (s1 - s0) * 1e6 / cyc : 0,
           cyc ? (c1 - c0) * 1e6 / cyc : 0, client_ok ? "true" : "false");
    return client_ok ? 0 : 1;
}
