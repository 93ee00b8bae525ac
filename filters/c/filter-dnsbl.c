/*
 * filter-dnsbl [-s] [-t MS] [-r RESOLV.CONF] ZONE...: refuses clients listed in DNS
 * blocklists (RFC 5782) with 554 5.7.1 and the zone's reason (its TXT record).
 *
 * At connect the client's address is looked up under each zone with non-blocking UDP
 * queries to the first name server of RESOLV.CONF (default /etc/resolv.conf).  The
 * callback returns FILTER_API_LATER and the session is answered from the socket's
 * callback when the answers come; the other sessions go on meanwhile.  An A record in
 * 127.0.0.0/8 lists the client and its TXT record gives the reason.  A lookup that
 * takes more than MS milliseconds (default 2000), or fails, lets the client in (fail
 * open) and is logged.  -s waits for the answers inside the callback, as a filter
 * without deferred answers would (for comparison).
 */
#include "filter_api.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <strings.h>
#include <time.h>

#define T_A		1
#define T_TXT		16
#define MAX_ZONES	16
#define MAX_NAME	255
#define MAX_REASON	200
#define MAX_QUERIES	4096

struct query {
	int		 used;
	uint16_t	 id;
	uint64_t	 session;
	int		 zone;
	uint16_t	 qtype;
	char		 name[MAX_NAME + 1];
};

struct lookup {
	uint64_t	 session;
	int		 zones_left;
	int		 listed;	/* the zone whose TXT was asked, or -1 */
	int		 timer;		/* 0: none */
	uint64_t	*timer_arg;	/* freed by the timer, or when it is cancelled */
	struct lookup	*next;
};

static const char		*zones[MAX_ZONES];
static int			 nzones;
static int			 sock = -1;
static struct sockaddr_storage	 server;
static socklen_t		 server_len;
static struct query		 queries[MAX_QUERIES];
static struct query		*by_id[65536];	/* the query in flight of each id */
static int			 free_hint;	/* where to look for a free slot first */
static struct lookup		*lookups;
static uint64_t			 seed;
static int			 sync_mode;
static unsigned int		 timeout_ms = 2000;

static struct lookup *
lookup_find(uint64_t session, struct lookup ***where)
{
	struct lookup	**p, *l;

	for (p = &lookups; (l = *p) != NULL; p = &l->next)
		if (l->session == session) {
			if (where != NULL)
				*where = p;
			return l;
		}
	return NULL;
}

/* Forgets a session's lookup, its queries and its timer. */
static void
lookup_end(uint64_t session)
{
	struct lookup	**p, *l;
	int		  i;

	if ((l = lookup_find(session, &p)) == NULL)
		return;
	*p = l->next;
	if (l->timer > 0 && filter_api_timer_cancel(l->timer) == 0)
		free(l->timer_arg);
	free(l);
	for (i = 0; i < MAX_QUERIES; i++)
		if (queries[i].used && queries[i].session == session) {
			queries[i].used = 0;
			by_id[queries[i].id] = NULL;
		}
}

static uint16_t
next_id(void)
{
	seed ^= seed << 13;
	seed ^= seed >> 7;
	seed ^= seed << 17;
	return (uint16_t)(seed >> 24);
}

/* A DNS query (RFC 1035 §4.1) for `name`, `qtype`, recursion desired; its length or 0. */
static size_t
make_query(unsigned char *b, size_t cap, uint16_t id, const char *name, uint16_t qtype)
{
	size_t		 n = 12, len;
	const char	*p = name, *dot;

	if (cap < 12 + MAX_NAME + 1 + 4)
		return 0;
	memset(b, 0, 12);
	b[0] = id >> 8;
	b[1] = id & 0xff;
	b[2] = 0x01;		/* RD */
	b[5] = 1;		/* one question */
	while (*p != '\0') {
		dot = strchr(p, '.');
		len = dot ? (size_t)(dot - p) : strlen(p);
		if (len == 0 || len > 63 || n + 1 + len > 12 + MAX_NAME - 1)
			return 0;
		b[n++] = (unsigned char)len;
		memcpy(b + n, p, len);
		n += len;
		p += len;
		if (*p == '.')
			p++;
	}
	b[n++] = 0;
	b[n++] = qtype >> 8;
	b[n++] = qtype & 0xff;
	b[n++] = 0;
	b[n++] = 1;		/* IN */
	return n;
}

static int
ask(uint64_t session, int zone, const char *name, uint16_t qtype)
{
	unsigned char	 b[512];
	struct query	*q = NULL;
	size_t		 n;
	uint16_t	 id;
	int		 i, tries;

	for (i = 0; i < MAX_QUERIES; i++)
		if (!queries[(free_hint + i) % MAX_QUERIES].used) {
			q = &queries[(free_hint + i) % MAX_QUERIES];
			free_hint = (free_hint + i + 1) % MAX_QUERIES;
			break;
		}
	if (q == NULL || strlen(name) > MAX_NAME)
		return -1;
	/* An id not in flight (at most MAX_QUERIES of 65536 are). */
	for (tries = 0; tries < 1000; tries++)
		if (by_id[id = next_id()] == NULL)
			break;
	if (by_id[id] != NULL)
		return -1;
	if ((n = make_query(b, sizeof(b), id, name, qtype)) == 0)
		return -1;
	if (sendto(sock, b, n, 0, (struct sockaddr *)&server, server_len) != (ssize_t)n)
		return -1;
	q->used = 1;
	q->id = id;
	by_id[id] = q;
	q->session = session;
	q->zone = zone;
	q->qtype = qtype;
	strcpy(q->name, name);
	return 0;
}

static int
be16(const unsigned char *m, size_t len, size_t at, uint16_t *v)
{
	if (at + 2 > len)
		return -1;
	*v = (uint16_t)(m[at] << 8 | m[at + 1]);
	return 0;
}

/* Reads the name at `at` (pointers followed, bounded) lowercased into `name`; returns
 * the offset after it, or 0 if malformed. */
static size_t
read_name(const unsigned char *m, size_t len, size_t at, char *name)
{
	size_t	n = 0, end = 0, l, i;
	int	hops;

	name[0] = '\0';
	for (hops = 0; hops < 64; hops++) {
		if (at >= len)
			return 0;
		l = m[at];
		if (l == 0)
			return end ? end : at + 1;
		if ((l & 0xc0) == 0xc0) {
			if (at + 2 > len)
				return 0;
			if (end == 0)
				end = at + 2;
			at = (size_t)(l & 0x3f) << 8 | m[at + 1];
			continue;
		}
		if ((l & 0xc0) != 0 || at + 1 + l > len || n + l + 1 > MAX_NAME)
			return 0;
		if (n > 0)
			name[n++] = '.';
		for (i = 0; i < l; i++) {
			unsigned char c = m[at + 1 + i];
			name[n++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
		}
		name[n] = '\0';
		at += 1 + l;
	}
	return 0;
}

enum reply { R_NONE, R_LISTED, R_TEXT, R_FAIL };

/*
 * The reply of message `m` to query `q`: -1 if it is not its answer (or malformed),
 * else R_* (text: the TXT strings end to end, cleaned, into `text`).
 */
static int
parse(const unsigned char *m, size_t len, const struct query *q, char *text, size_t tcap)
{
	char		 name[MAX_NAME + 1];
	uint16_t	 flags, qd, an, t, c, rdlen, i;
	size_t		 at, r, tn = 0, k;
	int		 listed = 0, any_txt = 0;

	if (len < 12 || (uint16_t)(m[0] << 8 | m[1]) != q->id)
		return -1;
	flags = (uint16_t)(m[2] << 8 | m[3]);
	qd = (uint16_t)(m[4] << 8 | m[5]);
	an = (uint16_t)(m[6] << 8 | m[7]);
	if ((flags & 0x8000) == 0 || qd != 1)
		return -1;
	if ((at = read_name(m, len, 12, name)) == 0 || strcasecmp(name, q->name) != 0 ||
	    be16(m, len, at, &t) == -1 || be16(m, len, at + 2, &c) == -1 ||
	    t != q->qtype || c != 1)
		return -1;
	at += 4;
	if (flags & 0x0200)
		return R_FAIL;		/* truncated */
	if ((flags & 0xf) == 3)
		return R_NONE;
	if ((flags & 0xf) != 0)
		return R_FAIL;
	for (i = 0; i < an; i++) {
		if ((at = read_name(m, len, at, name)) == 0 ||
		    be16(m, len, at, &t) == -1 || be16(m, len, at + 8, &rdlen) == -1 ||
		    at + 10 + rdlen > len)
			return -1;
		r = at + 10;
		at = r + rdlen;
		if (t == T_A && q->qtype == T_A && rdlen == 4 && m[r] == 127 &&
		    m[r + 1] != 255)
			listed = 1;
		if (t == T_TXT && q->qtype == T_TXT) {
			if (any_txt && tn + 1 < tcap)
				text[tn++] = ' ';
			any_txt = 1;
			for (k = r; k < at;) {
				size_t	sl = m[k];

				if (k + 1 + sl > at)
					return -1;
				for (k++; sl > 0; sl--, k++)
					if (tn + 1 < tcap)
						text[tn++] = (m[k] >= 0x20 && m[k] < 0x7f) ?
						    (char)m[k] : ' ';
			}
		}
	}
	if (tcap > 0)
		text[tn < tcap ? tn : tcap - 1] = '\0';
	if (q->qtype == T_A)
		return listed ? R_LISTED : R_NONE;
	return any_txt ? R_TEXT : R_NONE;
}

/* The session is decided: answer it (reason NULL: accept). */
static void
decide(uint64_t session, const char *reason)
{
	char	buf[MAX_REASON + 16];

	lookup_end(session);
	if (reason == NULL) {
		filter_api_accept(session);
		return;
	}
	snprintf(buf, sizeof(buf), "5.7.1 %s", reason);
	filter_api_reject(session, 554, buf);
}

/* One datagram; the session it decides, if any, in *done (0 if none). */
static void
on_message(const unsigned char *m, size_t len, uint64_t *done, const char **reason)
{
	static char	 text[MAX_REASON + 1];
	static char	 why[MAX_REASON + 1];
	struct query	*q = NULL;
	struct lookup	*l;
	uint16_t	 id;
	int		 r;

	*done = 0;
	if (len < 2)
		return;
	id = (uint16_t)(m[0] << 8 | m[1]);
	q = by_id[id];
	if (q == NULL || (r = parse(m, len, q, text, sizeof(text))) == -1)
		return;
	q->used = 0;
	by_id[id] = NULL;
	if ((l = lookup_find(q->session, NULL)) == NULL)
		return;
	if (q->qtype == T_TXT) {
		if (r != R_TEXT || text[0] == '\0')
			snprintf(text, sizeof(text), "Listed by %s", zones[q->zone]);
		log_info("%016" PRIx64 " dnsbl listed by %s: %s", q->session,
		    zones[q->zone], text);
		*done = q->session;
		*reason = text;
		return;
	}
	l->zones_left--;
	if (r == R_LISTED && l->listed == -1) {
		l->listed = q->zone;
		if (ask(q->session, q->zone, q->name, T_TXT) == 0)
			return;
		snprintf(why, sizeof(why), "Listed by %s", zones[q->zone]);
		*done = q->session;
		*reason = why;
		return;
	}
	if (r == R_FAIL)
		log_info("%016" PRIx64 " dnsbl %s failed for %s", q->session,
		    zones[q->zone], q->name);
	if (l->zones_left == 0 && l->listed == -1) {
		*done = q->session;
		*reason = NULL;
	}
}

/* Takes the datagrams waiting; answers the sessions they decide. */
static void
on_readable(int fd, int events, void *arg)
{
	unsigned char		 m[4096];
	struct sockaddr_storage	 from;
	socklen_t		 fl;
	ssize_t			 n;
	uint64_t		 done;
	const char		*reason;

	(void)events;
	(void)arg;
	for (;;) {
		fl = sizeof(from);
		n = recvfrom(fd, m, sizeof(m), 0, (struct sockaddr *)&from, &fl);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return;
		on_message(m, (size_t)n, &done, &reason);
		if (done != 0)
			decide(done, reason);
	}
}

static void
on_timeout(int id, void *arg)
{
	uint64_t	session = *(uint64_t *)arg;
	struct lookup	*l;

	free(arg);
	if ((l = lookup_find(session, NULL)) == NULL || l->timer != id)
		return;
	l->timer = 0;
	log_info("%016" PRIx64 " dnsbl lookup timed out: accepted", session);
	decide(session, NULL);
}

static void
reversed(const struct sockaddr_storage *ss, const char *zone, char *out, size_t cap)
{
	const unsigned char	*a;
	size_t			 n = 0;
	int			 i;

	if (ss->ss_family == AF_INET) {
		a = (const unsigned char *)&((const struct sockaddr_in *)ss)->sin_addr;
		snprintf(out, cap, "%u.%u.%u.%u.%s", a[3], a[2], a[1], a[0], zone);
		return;
	}
	a = (const unsigned char *)&((const struct sockaddr_in6 *)ss)->sin6_addr;
	out[0] = '\0';
	for (i = 15; i >= 0 && n + 4 < cap; i--)
		n += (size_t)snprintf(out + n, cap - n, "%x.%x.", a[i] & 0xf, a[i] >> 4);
	snprintf(out + n, cap - n, "%s", zone);
}

static uint64_t
now_ms(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* -s: waits for the session's answers here. */
static int
wait_here(uint64_t session)
{
	unsigned char	 m[4096];
	struct pollfd	 p;
	uint64_t	 until = now_ms() + timeout_ms, now, done;
	const char	*reason;
	ssize_t		 n;

	p.fd = sock;
	p.events = POLLIN;
	while ((now = now_ms()) < until) {
		if (poll(&p, 1, (int)(until - now)) <= 0)
			continue;
		while ((n = recv(sock, m, sizeof(m), 0)) > 0) {
			on_message(m, (size_t)n, &done, &reason);
			if (done == session) {
				decide(session, reason);
				return 1;
			}
		}
	}
	log_info("%016" PRIx64 " dnsbl lookup timed out: accepted", session);
	decide(session, NULL);
	return 1;
}

static int
on_connect(uint64_t session, struct filter_connect *c)
{
	char		 name[MAX_NAME + 64];
	struct lookup	*l;
	uint64_t	*arg;
	int		 z, sent = 0;

	if (c->remote.ss_family != AF_INET && c->remote.ss_family != AF_INET6)
		return 1;
	if ((l = calloc(1, sizeof(*l))) == NULL)
		return 1;
	l->session = session;
	l->listed = -1;
	l->next = lookups;
	lookups = l;
	for (z = 0; z < nzones; z++) {
		reversed(&c->remote, zones[z], name, sizeof(name));
		if (ask(session, z, name, T_A) == 0)
			sent++;
	}
	l->zones_left = sent;
	if (sent == 0) {
		log_info("%016" PRIx64 " dnsbl lookup failed for %s: accepted", session,
		    c->remote_text);
		lookup_end(session);
		return 1;
	}
	if (sync_mode)
		return wait_here(session);
	if ((arg = malloc(sizeof(*arg))) != NULL) {
		*arg = session;
		if ((l->timer = filter_api_timer(timeout_ms, on_timeout, arg)) == -1) {
			l->timer = 0;
			free(arg);
		} else
			l->timer_arg = arg;
	}
	return FILTER_API_LATER;
}

static void
on_disconnect(uint64_t session)
{
	lookup_end(session);
}

static int
name_server(const char *path)
{
	FILE			*fp;
	char			 line[512], *w, *save;
	struct sockaddr_in	*s4 = (struct sockaddr_in *)&server;
	struct sockaddr_in6	*s6 = (struct sockaddr_in6 *)&server;

	if ((fp = fopen(path, "r")) == NULL)
		return -1;
	memset(&server, 0, sizeof(server));
	while (fgets(line, sizeof(line), fp) != NULL) {
		if ((w = strtok_r(line, " \t\r\n", &save)) == NULL ||
		    strcmp(w, "nameserver") != 0 ||
		    (w = strtok_r(NULL, " \t\r\n", &save)) == NULL)
			continue;
		if (inet_pton(AF_INET, w, &s4->sin_addr) == 1) {
			s4->sin_family = AF_INET;
			s4->sin_port = htons(53);
			server_len = sizeof(*s4);
			break;
		}
		if (inet_pton(AF_INET6, w, &s6->sin6_addr) == 1) {
			s6->sin6_family = AF_INET6;
			s6->sin6_port = htons(53);
			server_len = sizeof(*s6);
			break;
		}
	}
	fclose(fp);
	return server_len ? 0 : -1;
}

static void
usage(void)
{
	fprintf(stderr, "usage: filter-dnsbl [-s] [-t MS] [-r RESOLV.CONF] ZONE...\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	const char	*resolv = "/etc/resolv.conf";
	char		*end;
	long		 v;
	int		 ch;

	log_init(-1);
	while ((ch = getopt(argc, argv, "r:st:")) != -1) {
		switch (ch) {
		case 'r':
			resolv = optarg;
			break;
		case 's':
			sync_mode = 1;
			break;
		case 't':
			v = strtol(optarg, &end, 10);
			if (*end != '\0' || v <= 0 || v > 3600000)
				usage();
			timeout_ms = (unsigned int)v;
			break;
		default:
			usage();
		}
	}
	for (; optind < argc && nzones < MAX_ZONES; optind++) {
		size_t	n = strlen(argv[optind]);

		if (n > 0 && argv[optind][n - 1] == '.')
			argv[optind][n - 1] = '\0';
		if (argv[optind][0] != '\0')
			zones[nzones++] = argv[optind];
	}
	if (nzones == 0 || optind < argc)
		usage();
	if (name_server(resolv) == -1)
		fatalx("%s: no nameserver", resolv);
	if ((sock = socket(server.ss_family, SOCK_DGRAM, 0)) == -1)
		fatal("socket");
	if (fcntl(sock, F_SETFL, fcntl(sock, F_GETFL) | O_NONBLOCK) == -1)
		fatal("fcntl");
	seed = ((uint64_t)getpid() << 32) ^ now_ms() ^ (uint64_t)time(NULL) << 20;
	if (seed == 0)
		seed = 1;
	filter_api_set_name("dnsbl");
	filter_api_on_connect(on_connect);
	filter_api_on_disconnect(on_disconnect);
	if (filter_api_fd(sock, FILTER_API_READ, on_readable, NULL) == -1)
		fatalx("cannot watch the socket");
	return filter_api_loop() == 0 ? 0 : 1;
}
