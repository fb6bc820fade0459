/* What a program inside a sandbox does to its network, for tests/network.rs: a UDP round trip,
 * a burst of connections held open, a SYN flood from a raw socket. Static (the busybox image has
 * no libc); every mode prints one line a test parses. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in addr(const char *ip, const char *port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(port));
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
        fprintf(stderr, "netprobe: bad address %s\n", ip);
        exit(2);
    }
    return a;
}

/* udp ADDR PORT MESSAGE: prints "reply MESSAGE" or "udp ERROR". */
static int udp(const char *ip, const char *port, const char *msg) {
    struct sockaddr_in a = addr(ip, port);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct timeval tv = {2, 0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(s, (struct sockaddr *)&a, sizeof a) != 0 || send(s, msg, strlen(msg), 0) < 0) {
        printf("udp %s\n", strerror(errno));
        return 1;
    }
    char buf[2048];
    ssize_t n = recv(s, buf, sizeof buf - 1, 0);
    if (n < 0) {
        printf("udp %s\n", strerror(errno));
        return 1;
    }
    buf[n] = 0;
    printf("reply %s\n", buf);
    return 0;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* hold ADDR PORT N SECONDS: starts N connections at once and keeps them open; after SECONDS
 * prints "connected C refused R other O pending P". */
static int hold(const char *ip, const char *port, int n, int seconds) {
    struct sockaddr_in a = addr(ip, port);
    struct pollfd *p = calloc(n, sizeof *p);
    int connected = 0, refused = 0, other = 0, open = 0;
    for (int i = 0; i < n; i++) {
        int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (s < 0) {
            other++;
            p[i].fd = -1;
            continue;
        }
        if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) {
            connected++;
            p[i].fd = -1;
            continue;
        }
        if (errno != EINPROGRESS) {
            if (errno == ECONNREFUSED) refused++; else other++;
            close(s);
            p[i].fd = -1;
            continue;
        }
        p[i].fd = s;
        p[i].events = POLLOUT;
        open++;
    }
    double end = now() + seconds;
    while (open > 0 && now() < end) {
        int r = poll(p, n, 100);
        if (r <= 0) continue;
        for (int i = 0; i < n; i++) {
            if (p[i].fd < 0 || !p[i].revents) continue;
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(p[i].fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err == 0) connected++;
            else if (err == ECONNREFUSED || err == ECONNRESET) refused++;
            else other++;
            if (err) close(p[i].fd);
            p[i].fd = -1;
            open--;
        }
    }
    printf("connected %d refused %d other %d pending %d\n", connected, refused, other, open);
    return 0;
}

static unsigned short csum(const void *data, int len, unsigned int sum) {
    const unsigned short *w = data;
    for (; len > 1; len -= 2) sum += *w++;
    if (len) sum += *(const unsigned char *)w;
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (unsigned short)~sum;
}

/* synflood SRC DST PORT N: N SYNs from SRC (any address: the IP header is ours) and random
 * ports, that never complete; prints "sent N". */
static int synflood(const char *src, const char *dst, const char *port, int n) {
    struct sockaddr_in d = addr(dst, port), s = addr(src, "0");
    int fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    int on = 1;
    if (fd < 0 || setsockopt(fd, IPPROTO_IP, IP_HDRINCL, &on, sizeof on) != 0) {
        printf("synflood %s\n", strerror(errno));
        return 1;
    }
    int sent = 0;
    srand((unsigned)time(NULL));
    for (int i = 0; i < n; i++) {
        struct { struct iphdr ip; struct tcphdr t; } p;
        memset(&p, 0, sizeof p);
        p.ip.ihl = 5;
        p.ip.version = 4;
        p.ip.tot_len = htons(sizeof p);
        p.ip.ttl = 64;
        p.ip.protocol = IPPROTO_TCP;
        p.ip.saddr = s.sin_addr.s_addr;
        p.ip.daddr = d.sin_addr.s_addr;
        p.ip.check = csum(&p.ip, sizeof p.ip, 0);
        p.t.source = htons((unsigned short)(1024 + rand() % 60000));
        p.t.dest = d.sin_port;
        p.t.seq = htonl((unsigned)rand());
        p.t.doff = 5;
        p.t.syn = 1;
        p.t.window = htons(65535);
        struct { unsigned int s, d; unsigned char z, p; unsigned short l; } ph = {s.sin_addr.s_addr, d.sin_addr.s_addr, 0, IPPROTO_TCP, htons(sizeof p.t)};
        unsigned int sum = 0;
        const unsigned short *w = (const unsigned short *)&ph;
        for (size_t k = 0; k < sizeof ph / 2; k++) sum += w[k];
        p.t.check = csum(&p.t, sizeof p.t, sum);
        if (sendto(fd, &p, sizeof p, 0, (struct sockaddr *)&d, sizeof d) == sizeof p) sent++;
    }
    printf("sent %d\n", sent);
    return 0;
}

/* dnstcp SERVER NAME: one A query over TCP; prints "rcode N" and the first address, if any. */
static int dnstcp(const char *server, const char *name) {
    unsigned char q[512], r[4096];
    int n = 0;
    q[n++] = 0; q[n++] = 0; /* length, filled below */
    q[n++] = 0x12; q[n++] = 0x34; q[n++] = 0x01; q[n++] = 0x00;
    q[n++] = 0; q[n++] = 1; q[n++] = 0; q[n++] = 0; q[n++] = 0; q[n++] = 0; q[n++] = 0; q[n++] = 0;
    const char *p = name;
    while (*p) {
        const char *dot = strchr(p, '.');
        int len = dot ? (int)(dot - p) : (int)strlen(p);
        q[n++] = (unsigned char)len;
        memcpy(q + n, p, len);
        n += len;
        p += len + (dot ? 1 : 0);
    }
    q[n++] = 0;
    q[n++] = 0; q[n++] = 1; q[n++] = 0; q[n++] = 1;
    q[0] = (unsigned char)((n - 2) >> 8);
    q[1] = (unsigned char)(n - 2);
    struct sockaddr_in a = addr(server, "53");
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = {3, 0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(s, (struct sockaddr *)&a, sizeof a) != 0 || write(s, q, n) != n) {
        printf("dnstcp %s\n", strerror(errno));
        return 1;
    }
    int got = 0;
    while (got < 2 || got < 2 + ((r[0] << 8) | r[1])) {
        ssize_t k = read(s, r + got, sizeof r - got);
        if (k <= 0) {
            printf("dnstcp short answer\n");
            return 1;
        }
        got += (int)k;
    }
    unsigned char *m = r + 2;
    int len = (r[0] << 8) | r[1];
    printf("rcode %d", m[3] & 0x0f);
    /* The first A record: skip the question, then look for type 1 with 4 bytes of data. */
    int off = 12;
    while (off < len && m[off]) off += m[off] + 1;
    off += 5;
    int answers = (m[6] << 8) | m[7];
    for (int i = 0; i < answers && off + 12 <= len; i++) {
        if ((m[off] & 0xc0) == 0xc0) off += 2; else { while (off < len && m[off]) off += m[off] + 1; off++; }
        int type = (m[off] << 8) | m[off + 1], rdlen = (m[off + 8] << 8) | m[off + 9];
        off += 10;
        if (type == 1 && rdlen == 4 && off + 4 <= len) {
            printf(" %d.%d.%d.%d", m[off], m[off + 1], m[off + 2], m[off + 3]);
            break;
        }
        off += rdlen;
    }
    printf("\n");
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* latency ADDR PORT N: N times connect, send one byte, read the first byte back, close;
 * prints "p50 US p99 US" (microseconds, connect to first byte). */
static int latency(const char *ip, const char *port, int n) {
    struct sockaddr_in a = addr(ip, port);
    double *t = calloc(n, sizeof *t);
    for (int i = 0; i < n; i++) {
        double start = now();
        int s = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        char c = 'x';
        if (connect(s, (struct sockaddr *)&a, sizeof a) != 0 || write(s, &c, 1) != 1 || read(s, &c, 1) != 1) {
            printf("latency %s\n", strerror(errno));
            return 1;
        }
        t[i] = (now() - start) * 1e6;
        close(s);
    }
    qsort(t, n, sizeof *t, cmp_double);
    printf("p50 %.0f p99 %.0f\n", t[n / 2], t[(n * 99) / 100]);
    return 0;
}

/* serve ADDR PORT: accepts forever; answers each connection's first byte with one byte. */
static int serve(const char *ip, const char *port) {
    struct sockaddr_in a = addr(ip, port);
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 1024) != 0) {
        printf("serve %s\n", strerror(errno));
        return 1;
    }
    for (;;) {
        int c = accept(l, NULL, NULL);
        if (c < 0) continue;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        char b;
        if (read(c, &b, 1) == 1) (void)!write(c, &b, 1);
        close(c);
    }
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc == 5 && !strcmp(argv[1], "udp")) return udp(argv[2], argv[3], argv[4]);
    if (argc == 6 && !strcmp(argv[1], "hold")) return hold(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]));
    if (argc == 6 && !strcmp(argv[1], "synflood")) return synflood(argv[2], argv[3], argv[4], atoi(argv[5]));
    if (argc == 4 && !strcmp(argv[1], "dnstcp")) return dnstcp(argv[2], argv[3]);
    if (argc == 5 && !strcmp(argv[1], "latency")) return latency(argv[2], argv[3], atoi(argv[4]));
    if (argc == 4 && !strcmp(argv[1], "serve")) return serve(argv[2], argv[3]);
    fprintf(stderr, "usage: netprobe udp ADDR PORT MSG | hold ADDR PORT N SECONDS | synflood SRC DST PORT N | dnstcp SERVER NAME | latency ADDR PORT N | serve ADDR PORT\n");
    return 2;
}
