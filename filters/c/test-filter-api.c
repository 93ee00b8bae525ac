/*
 * test-filter-api: plays the daemon against the library and the example filters.
 *
 * The library is included whole (white-box: its static helpers are tested too) and
 * each scenario forks a child that registers callbacks and runs filter_api_loop() on
 * one end of a socketpair, as smtpd runs a filter.  The daemon side here has its own
 * encoder, so the library's frames are checked byte for byte against an independent
 * encoding of codec.rs.
 *
 * usage: test-filter-api [DIR]    (DIR: where filter-stub, -trace, -reject are)
 */
#include "filter_api.c"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/wait.h>

static int		 failures, checks;
static const char	*bindir = ".";

#define CHECK(c) do {							\
	checks++;							\
	if (!(c)) {							\
		fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__,	\
		    __LINE__, #c);					\
		failures++;						\
	}								\
} while (0)

/* ------------------------------------------------------------------------ */
/* The daemon's encoder (independent of the library's). */

struct enc {
	unsigned char	*b;
	size_t		 n, cap, start;
};

static void
e_init(struct enc *e)
{
	e->cap = 4u << 20;
	if ((e->b = malloc(e->cap)) == NULL)
		abort();
	e->n = e->start = 0;
}

static void
e_reset(struct enc *e)
{
	e->n = e->start = 0;
}

static void
e_int(struct enc *e, uint64_t v, int bytes)
{
	int	i;

	if (e->n + (size_t)bytes > e->cap)
		abort();
	for (i = bytes - 1; i >= 0; i--)
		e->b[e->n++] = (unsigned char)(v >> (8 * i));
}

static void
e_raw(struct enc *e, const void *p, size_t n)
{
	if (n == 0)
		return;
	if (e->n + n > e->cap)
		abort();
	memcpy(e->b + e->n, p, n);
	e->n += n;
}

static void
e_strn(struct enc *e, const char *s, size_t n)
{
	e_int(e, n, 2);
	e_raw(e, s, n);
}

static void
e_str(struct enc *e, const char *s)
{
	e_strn(e, s, strlen(s));
}

static void
e_begin(struct enc *e, int kind, uint64_t sid)
{
	e->start = e->n;
	e_int(e, 0, 4);
	e_int(e, (uint64_t)kind, 1);
	e_int(e, sid, 8);
}

static void
e_end(struct enc *e)
{
	uint32_t	len = (uint32_t)(e->n - e->start - 4);

	e->b[e->start] = (unsigned char)(len >> 24);
	e->b[e->start + 1] = (unsigned char)(len >> 16);
	e->b[e->start + 2] = (unsigned char)(len >> 8);
	e->b[e->start + 3] = (unsigned char)len;
}

static void
e_empty(struct enc *e, int kind, uint64_t sid)
{
	e_begin(e, kind, sid);
	e_end(e);
}

static void
e_one(struct enc *e, int kind, uint64_t sid, const char *s)
{
	e_begin(e, kind, sid);
	e_str(e, s);
	e_end(e);
}

static void
e_reject(struct enc *e, int kind, uint64_t sid, int code, const char *s)
{
	e_begin(e, kind, sid);
	e_int(e, (uint64_t)code, 2);
	e_str(e, s);
	e_end(e);
}

static uint32_t	ready_max = MAX_FRAME;

static void
e_ready(struct enc *e)
{
	e_begin(e, K_READY, 0);
	e_int(e, 1, 2);
	e_int(e, ready_max, 4);
	e_int(e, 30000, 4);
	e_end(e);
}

static void
e_connect(struct enc *e, uint64_t sid, const char *l, const char *r, const char *h)
{
	e_begin(e, K_CONNECT, sid);
	e_str(e, l);
	e_str(e, r);
	e_str(e, h);
	e_end(e);
}

static void
e_eom(struct enc *e, uint64_t sid, uint64_t size)
{
	e_begin(e, K_EOM, sid);
	e_int(e, size, 8);
	e_end(e);
}

static void
e_strs(struct enc *e, int kind, uint64_t sid, const char *a, const char *b,
    const char *c)
{
	e_begin(e, kind, sid);
	e_str(e, a);
	e_str(e, b);
	if (c != NULL)
		e_str(e, c);
	e_end(e);
}

static void
e_tls(struct enc *e, uint64_t sid, const char *version, const char *cipher,
    unsigned bits, const char *sni, const char *subject)
{
	e_begin(e, K_TLS, sid);
	e_str(e, version);
	e_str(e, cipher);
	e_int(e, bits, 2);
	e_str(e, sni);
	e_str(e, subject);
	e_end(e);
}

/* DATA_LINES with the lines of `text` separated by '|'. */
static void
e_lines(struct enc *e, uint64_t sid, const char *text)
{
	const char	*p = text, *bar;
	size_t		 count_at;
	unsigned	 n = 0;

	e_begin(e, K_DATA_LINES, sid);
	count_at = e->n;
	e_int(e, 0, 2);
	for (;;) {
		bar = strchr(p, '|');
		e_strn(e, p, bar ? (size_t)(bar - p) : strlen(p));
		n++;
		if (bar == NULL)
			break;
		p = bar + 1;
	}
	e->b[count_at] = (unsigned char)(n >> 8);
	e->b[count_at + 1] = (unsigned char)n;
	e_end(e);
}

/* ------------------------------------------------------------------------ */
/* Talking to a child filter. */

struct child {
	pid_t		 pid;
	int		 fd;
	char		 errpath[64];
	unsigned char	*rbuf;		/* read ahead while sending */
	size_t		 rlen, roff, rcap;
};

static int
wait_fd(int fd, int ms)
{
	struct pollfd	pfd;
	int		r;

	pfd.fd = fd;
	pfd.events = POLLIN;
	do
		r = poll(&pfd, 1, ms);
	while (r < 0 && errno == EINTR);
	return r;
}

/* Reads exactly n bytes within 5 s (what was read ahead first); -1 on EOF or timeout. */
static int
read_n(struct child *c, unsigned char *p, size_t n)
{
	ssize_t	r;
	size_t	k;

	k = c->rlen - c->roff < n ? c->rlen - c->roff : n;
	if (k > 0)
		memcpy(p, c->rbuf + c->roff, k);
	c->roff += k;
	p += k;
	n -= k;
	while (n > 0) {
		if (wait_fd(c->fd, 5000) <= 0)
			return -1;
		r = read(c->fd, p, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

/*
 * Writes bytes to the filter while reading what it sends meanwhile (kept for
 * read_n), as the daemon's event loop does: no deadlock on big exchanges.
 */
static int
send_bytes(struct child *c, const unsigned char *p, size_t n)
{
	struct pollfd	pfd;
	ssize_t		r;

	while (n > 0) {
		pfd.fd = c->fd;
		pfd.events = POLLIN | POLLOUT;
		if (poll(&pfd, 1, 5000) <= 0)
			return -1;
		if (pfd.revents & POLLIN) {
			if (c->roff == c->rlen)
				c->roff = c->rlen = 0;
			if (c->rlen == c->rcap) {
				c->rcap = c->rcap ? c->rcap * 2 : 65536;
				if ((c->rbuf = realloc(c->rbuf, c->rcap)) == NULL)
					abort();
			}
			r = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
			if (r > 0)
				c->rlen += (size_t)r;
			else if (r == 0 || errno != EINTR)
				pfd.revents &= ~POLLIN;
		}
		if (pfd.revents & (POLLOUT | POLLERR | POLLHUP)) {
			r = write(c->fd, p, n);
			if (r < 0 && errno != EINTR && errno != EAGAIN)
				return -1;
			if (r > 0) {
				p += r;
				n -= (size_t)r;
			}
		}
	}
	return 0;
}

static void
send_all(struct child *c, const struct enc *e)
{
	CHECK(send_bytes(c, e->b, e->n) == 0);
}

/* Sends the bytes one write at a time, in pieces of `step`. */
static void
send_pieces(struct child *c, const struct enc *e, size_t step)
{
	size_t	off, n;

	for (off = 0; off < e->n; off += n) {
		n = e->n - off < step ? e->n - off : step;
		CHECK(send_bytes(c, e->b + off, n) == 0);
	}
}

/* Reads what the filter sends and compares it with `want`, byte for byte. */
static int
expect_bytes(struct child *c, const struct enc *want, const char *what)
{
	unsigned char	*got;
	size_t		 i;

	if ((got = malloc(want->n ? want->n : 1)) == NULL)
		abort();
	checks++;
	if (read_n(c, got, want->n) == -1) {
		fprintf(stderr, "%s: EOF or timeout waiting for %zu bytes\n", what,
		    want->n);
		failures++;
		free(got);
		return -1;
	}
	if (memcmp(got, want->b, want->n) != 0) {
		for (i = 0; i < want->n && got[i] == want->b[i]; i++)
			;
		fprintf(stderr, "%s: differs at byte %zu of %zu (got 0x%02x, want 0x%02x)\n",
		    what, i, want->n, got[i], want->b[i]);
		for (i = 0; i < want->n && i < 256; i++)
			fprintf(stderr, "%02x%s", got[i], (i % 32 == 31) ? "\n" : " ");
		fprintf(stderr, "\n");
		failures++;
		free(got);
		return -1;
	}
	free(got);
	return 0;
}

/* Reads one frame: returns its length (header included) into buf, or -1. */
static long
read_frame(struct child *c, unsigned char *buf, size_t cap)
{
	uint32_t	len;

	if (read_n(c, buf, 4) == -1)
		return -1;
	len = (uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 |
	    (uint32_t)buf[2] << 8 | buf[3];
	if (len < 9 || 4 + (size_t)len > cap)
		return -1;
	if (read_n(c, buf + 4, len) == -1)
		return -1;
	return (long)(4 + len);
}

/* Nothing more comes within `ms`. */
static int
quiet(struct child *c, int ms)
{
	return c->roff == c->rlen && wait_fd(c->fd, ms) == 0;
}

typedef void	(*setup_fn)(void);

static void
start(struct child *c, setup_fn setup, const char *prog, char *const argv[])
{
	int	sv[2], errfd;

	memset(c, 0, sizeof(*c));
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
	snprintf(c->errpath, sizeof(c->errpath), "/tmp/test-filter-api.XXXXXX");
	if ((errfd = mkstemp(c->errpath)) == -1)
		abort();
	fflush(stdout);
	fflush(stderr);
	if ((c->pid = fork()) == -1)
		abort();
	if (c->pid == 0) {
		close(sv[0]);
		dup2(sv[1], 0);
		dup2(sv[1], 1);
		dup2(errfd, 2);
		close(sv[1]);
		close(errfd);
		alarm(30);
		if (prog != NULL) {
			execv(prog, argv);
			_exit(127);
		}
		setup();
		_exit(filter_api_loop() == 0 ? 0 : 3);
	}
	close(sv[1]);
	close(errfd);
	c->fd = sv[0];
}

/* Closes the daemon's end and returns the child's exit status (-1: a signal). */
static int
finish(struct child *c, char *err, size_t errsz)
{
	int	 st, fd;
	ssize_t	 n;

	close(c->fd);
	free(c->rbuf);
	c->rbuf = NULL;
	while (waitpid(c->pid, &st, 0) == -1 && errno == EINTR)
		;
	if (err != NULL && errsz > 0) {
		err[0] = '\0';
		if ((fd = open(c->errpath, O_RDONLY)) != -1) {
			n = read(fd, err, errsz - 1);
			err[n > 0 ? n : 0] = '\0';
			close(fd);
		}
	}
	unlink(c->errpath);
	if (WIFSIGNALED(st)) {
		fprintf(stderr, "child killed by signal %d\n", WTERMSIG(st));
		return -1;
	}
	return WEXITSTATUS(st);
}

/* Reads the REGISTER and checks it; answers READY. */
static void
handshake(struct child *c, uint32_t hooks, uint32_t reports, const char *name)
{
	struct enc	want, ready;

	e_init(&want);
	e_begin(&want, K_REGISTER, 0);
	e_int(&want, 1, 2);
	e_int(&want, hooks, 4);
	e_int(&want, reports, 4);
	e_str(&want, name);
	e_end(&want);
	expect_bytes(c, &want, "REGISTER");
	e_init(&ready);
	e_ready(&ready);
	send_all(c, &ready);
	free(want.b);
	free(ready.b);
}

/* ------------------------------------------------------------------------ */
/* White-box tests of the helpers. */

static void
test_helpers(void)
{
	struct sockaddr_storage	 ss;
	struct sockaddr_in	*sin = (struct sockaddr_in *)&ss;
	struct sockaddr_in6	*sin6 = (struct sockaddr_in6 *)&ss;
	struct mailaddr		 a;
	char			 buf[MAX_TEXT + 1], big[600];
	unsigned char		 fr[64];
	struct frame		 f;

	parse_sockaddr("127.0.0.1:25", &ss);
	CHECK(ss.ss_family == AF_INET && ntohs(sin->sin_port) == 25);
	CHECK(strcmp(filter_api_sockaddr_to_text((struct sockaddr *)&ss), "127.0.0.1") == 0);
	parse_sockaddr("[::1]:2525", &ss);
	CHECK(ss.ss_family == AF_INET6 && ntohs(sin6->sin6_port) == 2525);
	CHECK(strcmp(filter_api_sockaddr_to_text((struct sockaddr *)&ss), "::1") == 0);
	parse_sockaddr("[fe80::1%7]:1", &ss);
	CHECK(ss.ss_family == AF_INET6 && sin6->sin6_scope_id == 7);
	CHECK(strcmp(filter_api_sockaddr_to_text((struct sockaddr *)&ss), "fe80::1%7") == 0);
	parse_sockaddr("local", &ss);
	CHECK(ss.ss_family == AF_UNIX);
	CHECK(strcmp(filter_api_sockaddr_to_text((struct sockaddr *)&ss), "local") == 0);
	parse_sockaddr("unknown", &ss);
	CHECK(ss.ss_family == AF_UNSPEC);
	CHECK(strcmp(filter_api_sockaddr_to_text((struct sockaddr *)&ss), "unknown") == 0);
	parse_sockaddr("1.2.3.4:99999", &ss);
	CHECK(ss.ss_family == AF_UNSPEC);
	parse_sockaddr("[::1", &ss);
	CHECK(ss.ss_family == AF_UNSPEC);
	parse_sockaddr("[::1]x", &ss);
	CHECK(ss.ss_family == AF_UNSPEC);
	parse_sockaddr("1.2.3.4:-1", &ss);
	CHECK(ss.ss_family == AF_UNSPEC);
	parse_sockaddr("10.0.0.1", &ss);
	CHECK(ss.ss_family == AF_INET && sin->sin_port == 0);
	CHECK(strcmp(filter_api_sockaddr_to_text(NULL), "unknown") == 0);

	parse_mailaddr((const unsigned char *)"a@b@c.example", 13, &a);
	CHECK(strcmp(a.user, "a@b") == 0 && strcmp(a.domain, "c.example") == 0);
	CHECK(strcmp(filter_api_mailaddr_to_text(&a), "a@b@c.example") == 0);
	parse_mailaddr((const unsigned char *)"", 0, &a);
	CHECK(a.user[0] == '\0' && a.domain[0] == '\0');
	CHECK(strcmp(filter_api_mailaddr_to_text(&a), "") == 0);
	parse_mailaddr((const unsigned char *)"postmaster", 10, &a);
	CHECK(strcmp(a.user, "postmaster") == 0 && a.domain[0] == '\0');
	memset(big, 'x', sizeof(big));
	parse_mailaddr((const unsigned char *)big, sizeof(big), &a);
	CHECK(strlen(a.user) == sizeof(a.user) - 1);

	CHECK(clean_text(buf, MAX_TEXT, "a\tb\x01" "c\x7f") == 6 &&
	    strcmp(buf, "a b c ") == 0);
	CHECK(clean_text(buf, MAX_TEXT, "caf\xc3\xa9 \xff!") == 8 &&
	    strcmp(buf, "caf\xc3\xa9 ?!") == 0);
	CHECK(clean_text(buf, MAX_TEXT, "x\xc2\x85y") == 3 && strcmp(buf, "x y") == 0);
	CHECK(clean_text(buf, 4, "abc\xc3\xa9") == 3);		/* no half character */
	CHECK(clean_text(buf, MAX_TEXT, "\xed\xa0\x80") == 3 && strcmp(buf, "???") == 0);
	CHECK(clean_text(buf, MAX_TEXT, NULL) == 0);
	CHECK(valid_utf8("x\xe2\x82\xac") && !valid_utf8("\xc3") && !valid_utf8("\xc0\x80"));
	CHECK(valid_header_name("X-Test") && !valid_header_name("X Test") &&
	    !valid_header_name("a:b") && !valid_header_name("") && !valid_header_name(NULL));

	/* The decoder refuses what codec.rs refuses. */
	memcpy(fr, "\0\0\0\x09\x20\0\0\0\0\0\0\0\x01", 13);		/* PROCEED */
	CHECK(decode_frame(fr, 13, &f) == 0 && f.kind == K_PROCEED && f.sid == 1);
	fr[4] = 0x7f;
	CHECK(decode_frame(fr, 13, &f) == -1);
	memcpy(fr, "\0\0\0\x0c\x11\0\0\0\0\0\0\0\x01\0\x09x", 16);	/* HELO, len 9 > 1 */
	CHECK(decode_frame(fr, 16, &f) == -2);
	memcpy(fr, "\0\0\0\x0a\x20\0\0\0\0\0\0\0\x01\0", 14);	/* trailing byte */
	CHECK(decode_frame(fr, 14, &f) == -2);
	memcpy(fr, "\0\0\0\x0c\x1e\0\0\0\0\0\0\0\x01" "x\0\0", 16);	/* PROTOCOL dir */
	CHECK(decode_frame(fr, 16, &f) == -2);
	memcpy(fr, "\0\0\0\x0c\x1e\0\0\0\0\0\0\0\x01" "<\0\0", 16);
	CHECK(decode_frame(fr, 16, &f) == 0 && f.dir == '<');
}

/* The REGISTER of codec.rs's worked example, from the library's own encoder. */
static void
test_register_bytes(void)
{
	static const unsigned char	want[] = {
		0, 0, 0, 0x19, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1,
		0, 0, 0x10, 0, 0, 4, 's', 't', 'u', 'b'
	};
	struct frame	f;

	olen = 0;
	memset(&f, 0, sizeof(f));
	f.kind = K_REGISTER;
	f.u16 = 1;
	f.u32a = EV_CONNECT;
	f.u32b = EV_DISCONNECT;
	f.s[0] = cstr_of("stub");
	encode_frame(&f);
	/* codec.rs's example has reports 0; ours always observes DISCONNECT. */
	CHECK(olen == sizeof(want) && memcmp(obuf, want, sizeof(want)) == 0);
	olen = 0;
}

/* ------------------------------------------------------------------------ */
/* Scenario: answers, the classic way. */

static int
a_connect(uint64_t id, struct filter_connect *c)
{
	const struct sockaddr_in	*r = (const struct sockaddr_in *)&c->remote;
	char				 remote[64];

	/* The text is in a static buffer: copy it before the next call. */
	snprintf(remote, sizeof(remote), "%s",
	    filter_api_sockaddr_to_text((struct sockaddr *)&c->remote));
	log_info("connect %s port %u host=%s local=%s", remote, ntohs(r->sin_port),
	    c->hostname, filter_api_sockaddr_to_text((struct sockaddr *)&c->local));
	filter_api_session_set(id, strdup("state"));
	return 1;
}

static int
a_helo(uint64_t id, const char *h)
{
	char	longtext[1000];

	if (strcmp(h, "bad") == 0)
		return 0;
	if (strcmp(h, "temp") == 0)
		return filter_api_tempfail(id, "try later"), 1;
	if (strcmp(h, "rw") == 0)
		return filter_api_rewrite(id, "new.example"), 0;
	if (strcmp(h, "twice") == 0) {
		filter_api_accept(id);
		if (filter_api_reject(id, 550, "no") != -1)
			log_warnx("second answer taken");
		return 0;
	}
	if (strcmp(h, "disc") == 0)
		return filter_api_disconnect(id, 421, "4.7.0 bye"), 1;
	if (strcmp(h, "junk") == 0)
		return filter_api_junk(id), 0;
	if (strcmp(h, "badcode") == 0) {
		if (filter_api_reject(id, 250, "x") != -1)
			log_warnx("code 250 taken");
		return 0;
	}
	if (strcmp(h, "ctl") == 0)
		return filter_api_reject(id, 554, "a\tb\001c"), 1;
	if (strcmp(h, "long") == 0) {
		memset(longtext, 'y', sizeof(longtext) - 1);
		longtext[sizeof(longtext) - 1] = '\0';
		return filter_api_reject(id, 550, longtext), 1;
	}
	if (strcmp(h, "wrongid") == 0) {
		if (filter_api_accept(id + 1) != -1)
			log_warnx("answer for another session taken");
		return 1;
	}
	if (strcmp(h, "misplaced") == 0) {
		if (filter_api_discard(id) != -1 ||
		    filter_api_header_add(id, "X-A", "b") != -1)
			log_warnx("EOM-only answer taken at HELO");
		return 1;
	}
	if (strcmp(h, "code") == 0)
		return filter_api_reject_code(id, FILTER_CLOSE, 421, "closing"), 1;
	return 1;
}

static int
a_ehlo(uint64_t id, const char *h)
{
	if (filter_api_rewrite(id, "") != -1 || filter_api_rewrite(id, "a\nb") != -1)
		log_warnx("invalid rewrite taken");
	(void)h;
	return 1;
}

static int
a_mail(uint64_t id, struct mailaddr *a)
{
	log_info("mail user=%s domain=%s param=%s", a->user, a->domain,
	    filter_api_param(id));
	if (filter_api_param(id + 1) != NULL)
		log_warnx("param of another session taken");
	if (strcmp(a->user, "rw") == 0)
		filter_api_rewrite(id, "other@example.org");
	return 1;
}

static int
a_rcpt(uint64_t id, struct mailaddr *a)
{
	(void)id;
	return strcmp(a->domain, "blocked.example") != 0;
}

static int
a_data(uint64_t id)
{
	return filter_api_session_get(id) != NULL;
}

static void
a_dataline(uint64_t id, const char *line)
{
	static char	buf[FILTER_API_MAXLINE + 2];

	if (strcmp(line, "split") == 0)
		filter_api_writeln(id, "a\r\nb\n");
	else if (strcmp(line, "drop") == 0)
		;
	else if (strcmp(line, "dup") == 0) {
		filter_api_writeln(id, line);
		filter_api_writeln(id, line);
	} else if (strcmp(line, "toolong") == 0) {
		memset(buf, 'x', FILTER_API_MAXLINE + 1);
		buf[FILTER_API_MAXLINE + 1] = '\0';
		if (filter_api_writeln(id, buf) != -1)
			log_warnx("65536-byte line taken");
	} else if (strcmp(line, "max") == 0) {
		memset(buf, 'x', FILTER_API_MAXLINE);
		buf[FILTER_API_MAXLINE] = '\0';
		filter_api_writeln(id, buf);
	} else if (strcmp(line, "cr") == 0) {
		if (filter_api_writeln(id, "a\rb") != -1)
			log_warnx("bare CR taken");
	} else if (strcmp(line, "other") == 0) {
		if (filter_api_writeln(id + 100, "x") != -1)
			log_warnx("line for a session out of DATA taken");
		filter_api_writeln(id, line);
	} else
		filter_api_writeln(id, line);
}

static void
a_dataend(uint64_t id)
{
	filter_api_writeln(id, "-- added at the end");
}

static char	*bigbody;

static int
a_eom(uint64_t id, size_t size)
{
	if (size == 1) {
		filter_api_header_add(id, "X-Test", "1");
		filter_api_header_insert(id, 0, "X-First", "v");
		filter_api_header_change(id, 1, "Subject", "new\r\n subject");
		filter_api_header_delete(id, 2, "Received");
		if (filter_api_header_add(id, "Bad Name", "x") != -1 ||
		    filter_api_header_add(id, "X-B", "a\rb") != -1)
			log_warnx("bad header taken");
		filter_api_body_replace(id, "new body\n");
		filter_api_rcpt_add(id, "new@example.org");
		filter_api_rcpt_del(id, "old@example.org");
		filter_api_mailfrom_change(id, "");
		filter_api_quarantine(id, "why\n");
		return 1;
	}
	if (size == 2)
		return filter_api_discard(id), 0;
	if (size == 3) {
		filter_api_body_replace(id, bigbody);
		return 1;
	}
	if (size == 4) {
		filter_api_reject(id, 554, "5.7.1 no");
		if (filter_api_header_add(id, "X-Late", "1") != -1)
			log_warnx("edit after a refusal taken");
		return 1;
	}
	return 1;
}

static void
a_commit(uint64_t id)
{
	const char	*m = filter_api_msgid(id);

	log_info("commit %s %s", m ? m : "(null)", filter_api_msgid(id + 1) ? "bad" : "ok");
}

static void
a_rollback(uint64_t id)
{
	log_info("rollback %016" PRIx64, id);
}

static void
a_disconnect(uint64_t id)
{
	char	*s = filter_api_session_get(id);

	log_info("disconnect %s", s ? s : "(none)");
	free(s);
}

static void
setup_all(void)
{
	filter_api_set_name("test");
	filter_api_on_connect(a_connect);
	filter_api_on_helo(a_helo);
	filter_api_on_ehlo(a_ehlo);
	filter_api_on_mail(a_mail);
	filter_api_on_rcpt(a_rcpt);
	filter_api_on_data(a_data);
	filter_api_on_dataline(a_dataline);
	filter_api_on_dataend(a_dataend);
	filter_api_on_eom(a_eom);
	filter_api_on_commit(a_commit);
	filter_api_on_rollback(a_rollback);
	filter_api_on_disconnect(a_disconnect);
}

#define ALL_HOOKS	(EV_CONNECT | EV_HELO | EV_EHLO | EV_MAIL | EV_RCPT | EV_DATA | \
			    EV_DATA_LINES | EV_EOM)
#define ALL_REPORTS	(EV_COMMIT | EV_ROLLBACK | EV_DISCONNECT)

/* One exchange: `in` to the filter (sent in pieces of `step`), `out` expected back. */
static void
exchange(struct child *c, struct enc *in, struct enc *out, size_t step,
    const char *what)
{
	if (step)
		send_pieces(c, in, step);
	else
		send_all(c, in);
	expect_bytes(c, out, what);
	e_reset(in);
	e_reset(out);
}

static void
scenario_answers(size_t step)
{
	struct child	 c;
	struct enc	 in, out;
	char		 err[16384], longtext[401];
	const uint64_t	 s = 0x0123456789abcdefULL;
	int		 i;

	e_init(&in);
	e_init(&out);
	start(&c, setup_all, NULL, NULL);
	handshake(&c, ALL_HOOKS, ALL_REPORTS, "test");

	e_connect(&in, s, "127.0.0.1:25", "192.0.2.7:4321", "mx.example.org");
	e_empty(&out, K_PROCEED, s);
	exchange(&c, &in, &out, step, "connect");

	/* Every HELO variant in one write: the answers come back in order. */
	e_one(&in, K_HELO, s, "good");		e_empty(&out, K_PROCEED, s);
	e_one(&in, K_HELO, s, "bad");		e_reject(&out, K_REJECT, s, 550, DEFAULT_REJECT);
	e_one(&in, K_HELO, s, "temp");		e_one(&out, K_TEMPFAIL, s, "try later");
	e_one(&in, K_HELO, s, "rw");		e_one(&out, K_REWRITE, s, "new.example");
	e_one(&in, K_HELO, s, "twice");		e_empty(&out, K_PROCEED, s);
	e_one(&in, K_HELO, s, "disc");		e_reject(&out, K_DISCONNECT_ANSWER, s, 421, "4.7.0 bye");
	e_one(&in, K_HELO, s, "junk");		e_empty(&out, K_JUNK, s);
	e_one(&in, K_HELO, s, "badcode");	e_reject(&out, K_REJECT, s, 550, DEFAULT_REJECT);
	e_one(&in, K_HELO, s, "ctl");		e_reject(&out, K_REJECT, s, 554, "a b c");
	memset(longtext, 'y', 400);
	longtext[400] = '\0';
	e_one(&in, K_HELO, s, "long");		e_reject(&out, K_REJECT, s, 550, longtext);
	e_one(&in, K_HELO, s, "wrongid");	e_empty(&out, K_PROCEED, s);
	e_one(&in, K_HELO, s, "misplaced");	e_empty(&out, K_PROCEED, s);
	e_one(&in, K_HELO, s, "code");		e_reject(&out, K_DISCONNECT_ANSWER, s, 421, "closing");
	e_one(&in, K_EHLO, s, "e");		e_empty(&out, K_PROCEED, s);
	exchange(&c, &in, &out, step, "helo variants");

	e_one(&in, K_MAIL, s, "a@b@c.example");	e_empty(&out, K_PROCEED, s);
	e_one(&in, K_MAIL, s, "");		e_empty(&out, K_PROCEED, s);
	e_one(&in, K_MAIL, s, "rw@x");		e_one(&out, K_REWRITE, s, "other@example.org");
	e_one(&in, K_RCPT, s, "u@ok.example");	e_empty(&out, K_PROCEED, s);
	e_one(&in, K_RCPT, s, "u@blocked.example"); e_reject(&out, K_REJECT, s, 550, DEFAULT_REJECT);
	e_one(&in, K_RCPT, s, "postmaster");	e_empty(&out, K_PROCEED, s);
	e_empty(&in, K_DATA, s);		e_empty(&out, K_PROCEED, s);
	exchange(&c, &in, &out, step, "mail rcpt data");

	/* Lines: kept, split, dropped, doubled; then the end with an added line. */
	e_lines(&in, s, "Subject: x||split|drop|dup|.dot|other");
	e_lines(&out, s, "Subject: x||a|b|dup|dup|.dot|other");
	exchange(&c, &in, &out, step, "lines");
	e_lines(&in, s, "max");
	e_begin(&out, K_DATA_LINES, s);
	e_int(&out, 1, 2);
	e_int(&out, FILTER_API_MAXLINE, 2);
	for (i = 0; i < FILTER_API_MAXLINE; i++)
		e_raw(&out, "x", 1);
	e_end(&out);
	exchange(&c, &in, &out, step, "65535-byte line");
	e_empty(&in, K_DATA_END, s);
	e_lines(&out, s, "-- added at the end");
	e_empty(&out, K_DATA_END, s);
	exchange(&c, &in, &out, step, "data end");

	/* EOM with every edit, then the decision. */
	e_eom(&in, s, 1);
	e_begin(&out, K_ADD_HEADER, s); e_str(&out, "X-Test"); e_str(&out, "1"); e_end(&out);
	e_begin(&out, K_INSERT_HEADER, s); e_int(&out, 0, 4); e_str(&out, "X-First");
	e_str(&out, "v"); e_end(&out);
	e_begin(&out, K_CHANGE_HEADER, s); e_int(&out, 1, 4); e_str(&out, "Subject");
	e_str(&out, "new\r\n subject"); e_end(&out);
	e_begin(&out, K_CHANGE_HEADER, s); e_int(&out, 2, 4); e_str(&out, "Received");
	e_str(&out, ""); e_end(&out);
	e_one(&out, K_REPLACE_BODY, s, "new body\n");
	e_one(&out, K_ADD_RCPT, s, "new@example.org");
	e_one(&out, K_DEL_RCPT, s, "old@example.org");
	e_one(&out, K_CHANGE_FROM, s, "");
	e_one(&out, K_QUARANTINE, s, "why ");
	e_empty(&out, K_PROCEED, s);
	exchange(&c, &in, &out, step, "eom edits");

	e_one(&in, K_COMMIT, s, "0badcafe");
	e_empty(&in, K_ROLLBACK, s);
	e_eom(&in, s, 2);
	e_empty(&out, K_DISCARD, s);
	e_eom(&in, s, 4);
	e_reject(&out, K_REJECT, s, 554, "5.7.1 no");
	exchange(&c, &in, &out, step, "discard, refusal");

	/* A line that cannot be passed on: the message is refused at EOM. */
	e_lines(&in, s, "ok|toolong|cr|ok2");
	e_lines(&out, s, "ok|ok2");
	e_empty(&in, K_DATA_END, s);
	e_lines(&out, s, "-- added at the end");
	e_empty(&out, K_DATA_END, s);
	e_eom(&in, s, 9);
	e_reject(&out, K_REJECT, s, 451, BROKEN_REJECT);
	exchange(&c, &in, &out, step, "broken message");
	/* The next message of the session is not affected. */
	e_lines(&in, s, "fine");
	e_lines(&out, s, "fine");
	e_empty(&in, K_DATA_END, s);
	e_lines(&out, s, "-- added at the end");
	e_empty(&out, K_DATA_END, s);
	e_eom(&in, s, 9);
	e_empty(&out, K_PROCEED, s);
	exchange(&c, &in, &out, step, "next message");

	/* Reports and unknown-to-us frames get no answer; writeln outside DATA fails. */
	e_begin(&in, K_PROTOCOL, s); e_int(&in, '<', 1); e_str(&in, "QUIT"); e_end(&in);
	e_empty(&in, K_DISCONNECT, s);
	e_empty(&in, K_DISCONNECT, s + 1);	/* a session never seen */
	send_all(&c, &in);
	e_reset(&in);
	CHECK(quiet(&c, 300));
	CHECK(finish(&c, err, sizeof(err)) == 0);
	CHECK(strstr(err, "connect 192.0.2.7 port 4321 host=mx.example.org local=127.0.0.1\n") != NULL);
	CHECK(strstr(err, "mail user=a@b domain=c.example param=a@b@c.example\n") != NULL);
	CHECK(strstr(err, "mail user= domain= param=\n") != NULL);
	CHECK(strstr(err, "commit 0badcafe ok\n") != NULL);
	CHECK(strstr(err, "rollback 0123456789abcdef\n") != NULL);
	CHECK(strstr(err, "disconnect state\n") != NULL);
	CHECK(strstr(err, "disconnect (none)\n") != NULL);
	CHECK(strstr(err, "taken") == NULL);
	CHECK(strstr(err, "a message line longer than 65535 bytes cannot be passed on") != NULL);
	if (failures)
		fprintf(stderr, "--- filter stderr:\n%s---\n", err);
	free(in.b);
	free(out.b);
}

/* ------------------------------------------------------------------------ */
/* Scenario: large frames and bodies. */

static void
scenario_big(void)
{
	struct child	 c;
	struct enc	 in, out;
	unsigned char	*fr;
	char		 line[1000];
	size_t		 i, got_lines = 0, body_len = 0, pos;
	long		 n;
	unsigned	 cnt, k, ok = 1;
	const uint64_t	 s = 7;

	e_init(&in);
	e_init(&out);
	if ((fr = malloc(2u << 20)) == NULL)
		abort();
	start(&c, setup_all, NULL, NULL);
	handshake(&c, ALL_HOOKS, ALL_REPORTS, "test");

	/* 1040 lines of 998 bytes: one frame of about 1 MB, near the largest. */
	memset(line, 'z', 998);
	e_begin(&in, K_DATA_LINES, s);
	e_int(&in, 1040, 2);
	for (i = 0; i < 1040; i++)
		e_strn(&in, line, 998);
	e_end(&in);
	CHECK(in.n <= MAX_FRAME);
	send_all(&c, &in);
	e_reset(&in);
	while (got_lines < 1040 && (n = read_frame(&c, fr, 2u << 20)) > 0) {
		CHECK(fr[4] == K_DATA_LINES && (size_t)n <= LINES_BYTES + FRAME_HEADER + 2);
		cnt = (unsigned)fr[13] << 8 | fr[14];
		CHECK(cnt <= LINES_PER_FRAME);
		for (k = 0, pos = 15; k < cnt; k++) {
			if ((fr[pos] << 8 | fr[pos + 1]) != 998 ||
			    memcmp(fr + pos + 2, line, 998) != 0)
				ok = 0;
			pos += 2 + 998;
		}
		CHECK(pos == (size_t)n);
		got_lines += cnt;
	}
	CHECK(got_lines == 1040 && ok);
	e_empty(&in, K_DATA_END, s);
	e_lines(&out, s, "-- added at the end");
	e_empty(&out, K_DATA_END, s);
	exchange(&c, &in, &out, 0, "big data end");

	/* A 200 kB body: chunks of at most 65535 bytes, cut after a LF. */
	e_eom(&in, s, 3);
	send_all(&c, &in);
	e_reset(&in);
	for (;;) {
		if ((n = read_frame(&c, fr, 2u << 20)) <= 0) {
			CHECK(0);
			break;
		}
		if (fr[4] != K_REPLACE_BODY)
			break;
		pos = (size_t)(fr[13] << 8 | fr[14]);
		CHECK(pos <= MAX_STR && (size_t)n == 15 + pos);
		CHECK(memcmp(fr + 15, bigbody + body_len, pos) == 0);
		CHECK(pos == 0 || fr[15 + pos - 1] == '\n' || body_len + pos == strlen(bigbody));
		body_len += pos;
	}
	CHECK(fr[4] == K_PROCEED);
	CHECK(body_len == strlen(bigbody));
	CHECK(finish(&c, NULL, 0) == 0);
	free(fr);
	free(in.b);
	free(out.b);
}

/* The daemon's max_frame of READY bounds what the filter sends. */
static void
scenario_small_frames(void)
{
	struct child	 c;
	struct enc	 in;
	unsigned char	 fr[8192];
	char		 line[998];
	size_t		 got = 0, i;
	long		 n;

	e_init(&in);
	ready_max = 4096;
	start(&c, setup_all, NULL, NULL);
	handshake(&c, ALL_HOOKS, ALL_REPORTS, "test");
	ready_max = MAX_FRAME;
	memset(line, 'w', sizeof(line));
	e_begin(&in, K_DATA_LINES, 3);
	e_int(&in, 10, 2);
	for (i = 0; i < 10; i++)
		e_strn(&in, line, sizeof(line));
	e_end(&in);
	send_all(&c, &in);
	while (got < 10 && (n = read_frame(&c, fr, sizeof(fr))) > 0) {
		CHECK(n <= 4096 && fr[4] == K_DATA_LINES);
		got += (size_t)(fr[13] << 8 | fr[14]);
	}
	CHECK(got == 10);
	CHECK(finish(&c, NULL, 0) == 0);
	free(in.b);
}

/* ------------------------------------------------------------------------ */
/* Scenario: what the daemon must never send makes the loop return -1, no crash. */

static void
setup_name_only(void)
{
	filter_api_set_name("x");
	setup_all();
}

static void
bad_input(const char *what, const unsigned char *bytes, size_t n, int ready,
    int want_status)
{
	struct child	c;
	struct enc	in;
	int		st;

	e_init(&in);
	start(&c, setup_name_only, NULL, NULL);
	if (ready)
		handshake(&c, ALL_HOOKS, ALL_REPORTS, "test");
	e_raw(&in, bytes, n);
	if (n > 0)
		(void)send_bytes(&c, in.b, in.n);
	shutdown(c.fd, SHUT_WR);
	/* Whatever it answers, it must end by itself. */
	while (read_frame(&c, (unsigned char *)in.b, in.cap) > 0)
		;
	st = finish(&c, NULL, 0);
	checks++;
	if (st != want_status) {
		fprintf(stderr, "bad input %s: exit status %d, wanted %d\n", what, st,
		    want_status);
		failures++;
	}
	free(in.b);
}

static uint32_t	rnd_state = 2463534242u;

static uint32_t
rnd(void)
{
	rnd_state ^= rnd_state << 13;
	rnd_state ^= rnd_state >> 17;
	rnd_state ^= rnd_state << 5;
	return rnd_state;
}

static void
scenario_bad(void)
{
	static char	huge[65535];
	struct enc	e;
	unsigned char	b[64];
	int		i, j, st, kinds[] = { K_CONNECT, K_HELO, K_MAIL, K_RCPT,
			    K_DATA_LINES, K_DATA_END, K_EOM, K_COMMIT, K_PROTOCOL,
			    K_READY, K_REJECT, K_INSERT_HEADER, K_DISCONNECT };
	struct child	c;

	e_init(&e);
	bad_input("EOF at once", NULL, 0, 0, 0);
	bad_input("EOF after READY", NULL, 0, 1, 0);
	bad_input("length 1", (const unsigned char *)"\0\0\0\x01\0", 5, 1, 3);
	bad_input("length 2^32-1", (const unsigned char *)"\xff\xff\xff\xff", 4, 1, 3);
	bad_input("length MAX_FRAME", (const unsigned char *)"\0\x10\0\0", 4, 1, 3);
	bad_input("unknown kind", (const unsigned char *)
	    "\0\0\0\x09\x7f\0\0\0\0\0\0\0\x01", 13, 1, 3);
	bad_input("string past the frame", (const unsigned char *)
	    "\0\0\0\x0c\x11\0\0\0\0\0\0\0\x01\0\x09x", 16, 1, 3);
	bad_input("trailing byte", (const unsigned char *)
	    "\0\0\0\x0a\x17\0\0\0\0\0\0\0\x01\0", 14, 1, 3);
	bad_input("lines count past the frame", (const unsigned char *)
	    "\0\0\0\x0d\x18\0\0\0\0\0\0\0\x01\xff\xff\0\0", 17, 1, 3);
	bad_input("truncated frame", (const unsigned char *)"\0\0\0\x20\x11\0", 6, 1, 0);
	bad_input("event before READY", (const unsigned char *)
	    "\0\0\0\x09\x17\0\0\0\0\0\0\0\x01", 13, 0, 3);
	e_one(&e, K_REFUSED, 0, "unsupported protocol version");
	bad_input("REFUSED", e.b, e.n, 0, 3);
	e_reset(&e);
	/* A frame of exactly the largest size is taken. */
	e_begin(&e, K_HELO, 1);
	e_int(&e, 0, 2);
	e.n = MAX_FRAME;		/* a string too short for the frame: bad payload */
	memset(e.b + 15, 'h', MAX_FRAME - 15);
	e_end(&e);
	bad_input("largest frame, bad payload", e.b, e.n, 1, 3);
	e_reset(&e);
	e_begin(&e, K_DATA_LINES, 1);
	e_int(&e, 15, 2);
	memset(huge, 'q', sizeof(huge));
	for (i = 0; i < 15; i++)
		e_strn(&e, huge, sizeof(huge));
	e_end(&e);
	CHECK(e.n <= MAX_FRAME);
	bad_input("lines of 65535 bytes (cannot be passed on)", e.b, e.n, 1, 0);
	e_reset(&e);

	/* Random frames of valid lengths and kinds: never a crash, never a hang. */
	for (i = 0; i < 300; i++) {
		start(&c, setup_all, NULL, NULL);
		handshake(&c, ALL_HOOKS, ALL_REPORTS, "test");
		e_reset(&e);
		for (j = 0; j < 20; j++) {
			size_t	len = rnd() % 40, k;

			e_begin(&e, kinds[rnd() % (sizeof(kinds) / sizeof(kinds[0]))],
			    rnd() % 3);
			for (k = 0; k < len; k++)
				e_int(&e, (rnd() % 4 == 0) ? 0 : rnd() % 256, 1);
			e_end(&e);
		}
		(void)send_bytes(&c, e.b, e.n);
		shutdown(c.fd, SHUT_WR);
		while (read_frame(&c, b, sizeof(b)) > 0)
			;
		while (wait_fd(c.fd, 2000) > 0 && read(c.fd, b, sizeof(b)) > 0)
			;
		st = finish(&c, NULL, 0);
		CHECK(st == 0 || st == 3);
	}
	free(e.b);
}

/* ------------------------------------------------------------------------ */
/* Scenario: TLS and AUTH. */

static void
t_tls(uint64_t id, struct filter_tls *t)
{
	log_info("%016" PRIx64 " tls %s %s %u sni=%s subject=%s", id, t->version,
	    t->cipher, t->bits, t->sni, t->subject);
}

static int
t_auth(uint64_t id, const char *mechanism, const char *user)
{
	const char	*p = filter_api_param(id);

	log_info("auth %s %s param=%s", mechanism, user, p ? p : "(null)");
	if (strcmp(user, "mallory") == 0)
		return 0;
	if (strcmp(user, "later") == 0)
		return filter_api_tempfail(id, "directory down"), 1;
	if (strcmp(user, "eve") == 0)
		return filter_api_reject(id, 550, "5.7.1 not from here"), 1;
	if (filter_api_rewrite(id, "root") != -1 || filter_api_discard(id) != -1)
		log_warnx("rewrite or discard taken at AUTH");
	return 1;
}

static void
t_result(uint64_t id, const char *mechanism, const char *user, const char *result)
{
	log_info("%016" PRIx64 " auth-result %s %s %s", id, mechanism, user, result);
}

static void
setup_tls_auth(void)
{
	filter_api_set_name("ta");
	filter_api_on_auth(t_auth);
	filter_api_on_tls(t_tls);
	filter_api_on_auth_result(t_result);
}

static void
scenario_tls_auth(void)
{
	struct child	 c;
	struct enc	 in, out;
	char		 err[4096];
	const char	*want =
	    "0000000000000009 tls TLSv1.3 TLS_AES_256_GCM_SHA384 256 "
	    "sni=mx.example.org subject=\n"
	    "0000000000000009 tls TLSv1.2 TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 128 "
	    "sni= subject=CN=client,O=Example\n"
	    "auth PLAIN alice param=alice\n"
	    "filter_api: rewrite: only HELO, EHLO, MAIL and RCPT can be rewritten\n"
	    "filter_api: discard: only at end of message\n"
	    "0000000000000009 auth-result PLAIN alice ok\n"
	    "auth LOGIN mallory param=mallory\n"
	    "auth PLAIN later param=later\n"
	    "auth PLAIN eve param=eve\n"
	    "0000000000000009 auth-result LOGIN  tempfail\n";

	e_init(&in);
	e_init(&out);
	start(&c, setup_tls_auth, NULL, NULL);
	handshake(&c, EV_AUTH, EV_DISCONNECT | EV_TLS | EV_AUTH_RESULT, "ta");
	e_tls(&in, 9, "TLSv1.3", "TLS_AES_256_GCM_SHA384", 256, "mx.example.org", "");
	e_tls(&in, 9, "TLSv1.2", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", 128, "",
	    "CN=client,O=Example");
	e_strs(&in, K_AUTH, 9, "PLAIN", "alice", NULL);
	e_empty(&out, K_PROCEED, 9);
	e_strs(&in, K_AUTH_RESULT, 9, "PLAIN", "alice", "ok");
	e_strs(&in, K_AUTH, 9, "LOGIN", "mallory", NULL);
	e_reject(&out, K_REJECT, 9, 535, "5.7.8 Authentication refused by filter");
	e_strs(&in, K_AUTH, 9, "PLAIN", "later", NULL);
	e_one(&out, K_TEMPFAIL, 9, "directory down");
	e_strs(&in, K_AUTH, 9, "PLAIN", "eve", NULL);
	e_reject(&out, K_REJECT, 9, 550, "5.7.1 not from here");
	e_strs(&in, K_AUTH_RESULT, 9, "LOGIN", "", "tempfail");
	e_empty(&in, K_DISCONNECT, 9);
	exchange(&c, &in, &out, 3, "tls and auth");
	CHECK(quiet(&c, 200));
	CHECK(finish(&c, err, sizeof(err)) == 0);
	CHECK(strcmp(err, want) == 0);
	if (strcmp(err, want) != 0)
		fprintf(stderr, "--- tls and auth:\n%s---\n", err);
	free(in.b);
	free(out.b);
}

/* ------------------------------------------------------------------------ */
/* Answers given later, from timers and descriptors. */

static int	later_pipe[2] = { -1, -1 };

static void
l_reject(int id, void *arg)
{
	(void)id;
	CHECK(filter_api_reject(*(uint64_t *)arg, 550, "5.7.1 listed") == 0);
	free(arg);
}

static void
l_accept(int id, void *arg)
{
	int	r;

	(void)id;
	r = filter_api_accept(*(uint64_t *)arg);
	log_info("%016" PRIx64 " late accept %d", *(uint64_t *)arg, r);
	free(arg);
}

static void
l_never(int id, void *arg)
{
	(void)id;
	(void)arg;
	log_info("cancelled timer ran");
}

static void
l_readable(int fd, int events, void *arg)
{
	char	c;

	CHECK(events == FILTER_API_READ);
	CHECK(read(fd, &c, 1) == 1);
	CHECK(filter_api_fd(fd, 0, NULL, NULL) == 0);
	CHECK(filter_api_header_add(*(uint64_t *)arg, "X-Later", "yes") == 0);
	CHECK(filter_api_accept(*(uint64_t *)arg) == 0);
	CHECK(filter_api_accept(*(uint64_t *)arg) == -1);
	free(arg);
}

static uint64_t *
sid_copy(uint64_t id)
{
	uint64_t	*p;

	if ((p = malloc(sizeof(*p))) == NULL)
		abort();
	*p = id;
	return p;
}

static int
l_mail(uint64_t id, struct mailaddr *a)
{
	int	t;

	if (strcmp(a->user, "slow") == 0) {
		CHECK(filter_api_timer(300, l_accept, sid_copy(id)) > 0);
		return FILTER_API_LATER;
	}
	if (strcmp(a->user, "fast") == 0) {
		t = filter_api_timer(20, l_never, NULL);
		CHECK(t > 0);
		CHECK(filter_api_timer_cancel(t) == 0);
		CHECK(filter_api_timer_cancel(t) == -1);
		CHECK(filter_api_timer(40, l_reject, sid_copy(id)) > 0);
		return FILTER_API_LATER;
	}
	if (strcmp(a->user, "now") == 0) {
		/* Answered in the callback: the answer goes, LATER is moot. */
		filter_api_tempfail(id, "busy");
		return FILTER_API_LATER;
	}
	return 1;
}

static int
l_eom(uint64_t id, size_t size)
{
	(void)size;
	CHECK(filter_api_fd(later_pipe[0], FILTER_API_READ, l_readable,
	    sid_copy(id)) == 0);
	CHECK(write(later_pipe[1], "x", 1) == 1);
	return FILTER_API_LATER;
}

static void
setup_later(void)
{
	if (pipe(later_pipe) == -1)
		abort();
	filter_api_set_name("later");
	filter_api_on_mail(l_mail);
	filter_api_on_eom(l_eom);
	/* Nothing outside a callback or a pending event. */
	CHECK(filter_api_accept(1) == -1);
}

static void
scenario_later(void)
{
	struct child	 c;
	struct enc	 in, out;
	char		 err[4096];
	const uint64_t	 a = 0xa, b = 0xb, d = 0xd;
	const char	*want =
	    "filter_api: accept: session 0000000000000001 has no event waiting for "
	    "an answer\n"
	    "000000000000000a late accept 0\n"
	    "filter_api: accept: session 000000000000000b has no event waiting for "
	    "an answer\n"
	    "000000000000000d late accept -1\n";

	e_init(&in);
	e_init(&out);
	start(&c, setup_later, NULL, NULL);
	handshake(&c, EV_MAIL | EV_EOM, EV_DISCONNECT, "later");

	/* A waits 300 ms, B 40 ms: B's answer comes first. */
	e_one(&in, K_MAIL, a, "slow@example.org");
	e_one(&in, K_MAIL, b, "fast@example.org");
	e_reject(&out, K_REJECT, b, 550, "5.7.1 listed");
	e_empty(&out, K_PROCEED, a);
	exchange(&c, &in, &out, 0, "later: B before A");

	/* Answered in the callback although it returned LATER. */
	e_one(&in, K_MAIL, b, "now@example.org");
	e_one(&out, K_TEMPFAIL, b, "busy");
	exchange(&c, &in, &out, 0, "later: answered at once");

	/* End of message answered from a descriptor, with an edit before it. */
	e_eom(&in, b, 10);
	e_strs(&out, K_ADD_HEADER, b, "X-Later", "yes", NULL);
	e_empty(&out, K_PROCEED, b);
	exchange(&c, &in, &out, 0, "later: eom from a descriptor");

	/* D ends while its answer is pending: nothing is sent for it, nothing warned. */
	e_one(&in, K_MAIL, d, "slow@example.org");
	e_empty(&in, K_DISCONNECT, d);
	send_all(&c, &in);
	e_reset(&in);
	CHECK(quiet(&c, 600));

	CHECK(finish(&c, err, sizeof(err)) == 0);
	CHECK(strcmp(err, want) == 0);
	if (strcmp(err, want) != 0)
		fprintf(stderr, "--- later:\n%s---\n", err);
	free(in.b);
	free(out.b);
}

/* ------------------------------------------------------------------------ */
/* The example programs. */

static void
path_of(char *buf, size_t n, const char *prog)
{
	snprintf(buf, n, "%s/%s", bindir, prog);
}

static void
test_stub(void)
{
	struct child	 c;
	struct enc	 in, out;
	char		 path[1024], err[4096];
	char		*argv[] = { "filter-stub", NULL };

	path_of(path, sizeof(path), "filter-stub");
	e_init(&in);
	e_init(&out);
	start(&c, NULL, path, argv);
	handshake(&c, EV_CONNECT, EV_DISCONNECT, "filter-stub");
	e_connect(&in, 42, "[::1]:25", "[::1]:50000", "");
	e_empty(&out, K_PROCEED, 42);
	exchange(&c, &in, &out, 0, "stub connect");
	CHECK(finish(&c, err, sizeof(err)) == 1);
	CHECK(strcmp(err, "filter-stub: OHAI, SOMEONE CONNECTED !\n"
	    "warn: filter-stub: exiting\n") == 0);
	free(in.b);
	free(out.b);
}

static void
test_trace(void)
{
	struct child	 c;
	struct enc	 in, out;
	char		 path[1024], err[4096];
	char		*argv[] = { "filter-trace", NULL };
	const char	*want =
	    "0000000000000001 connect local=127.0.0.1:25 remote=127.0.0.1:4000 hostname=\n"
	    "0000000000000001 tls version=TLSv1.3 cipher=TLS_AES_128_GCM_SHA256 bits=128 "
	    "sni=mx.test subject=\n"
	    "0000000000000001 ehlo client.test\n"
	    "0000000000000001 auth mechanism=LOGIN user=alice\n"
	    "0000000000000001 auth-result mechanism=LOGIN user=alice result=ok\n"
	    "0000000000000001 mail <>\n"
	    "0000000000000001 rcpt <postmaster@>\n"
	    "0000000000000001 data\n"
	    "0000000000000001 data-line Subject: hi\n"
	    "0000000000000001 data-line \n"
	    "0000000000000001 data-line .dot\n"
	    "0000000000000001 eom size=123\n"
	    "0000000000000001 commit 01234567\n"
	    "0000000000000001 rollback\n"
	    "0000000000000001 disconnect\n";

	path_of(path, sizeof(path), "filter-trace");
	e_init(&in);
	e_init(&out);
	start(&c, NULL, path, argv);
	handshake(&c, ALL_HOOKS | EV_AUTH, ALL_REPORTS | EV_TLS | EV_AUTH_RESULT, "trace");
	e_connect(&in, 1, "127.0.0.1:25", "127.0.0.1:4000", "");
	e_tls(&in, 1, "TLSv1.3", "TLS_AES_128_GCM_SHA256", 128, "mx.test", "");
	e_one(&in, K_EHLO, 1, "client.test");
	e_strs(&in, K_AUTH, 1, "LOGIN", "alice", NULL);
	e_strs(&in, K_AUTH_RESULT, 1, "LOGIN", "alice", "ok");
	e_one(&in, K_MAIL, 1, "");
	e_one(&in, K_RCPT, 1, "postmaster@");
	e_empty(&in, K_DATA, 1);
	e_lines(&in, 1, "Subject: hi||.dot");
	e_empty(&in, K_DATA_END, 1);
	e_eom(&in, 1, 123);
	e_one(&in, K_COMMIT, 1, "01234567");
	e_empty(&in, K_ROLLBACK, 1);
	e_empty(&in, K_DISCONNECT, 1);
	e_empty(&out, K_PROCEED, 1);
	e_empty(&out, K_PROCEED, 1);
	e_empty(&out, K_PROCEED, 1);
	e_empty(&out, K_PROCEED, 1);
	e_empty(&out, K_PROCEED, 1);
	e_empty(&out, K_PROCEED, 1);
	e_lines(&out, 1, "Subject: hi||.dot");
	e_empty(&out, K_DATA_END, 1);
	e_empty(&out, K_PROCEED, 1);
	exchange(&c, &in, &out, 1, "trace session");
	CHECK(quiet(&c, 200));
	CHECK(finish(&c, err, sizeof(err)) == 0);
	CHECK(strcmp(err, want) == 0);
	if (strcmp(err, want) != 0)
		fprintf(stderr, "--- trace:\n%s---\n", err);
	free(in.b);
	free(out.b);
}

static void
test_reject(void)
{
	struct child	 c;
	struct enc	 in, out;
	char		 path[1024], err[4096];
	char		*argv[] = { "filter-reject", "-w", "colour=color",
			    "spammer@bad.example", "@worse.example", "<>", NULL };

	path_of(path, sizeof(path), "filter-reject");
	e_init(&in);
	e_init(&out);
	start(&c, NULL, path, argv);
	handshake(&c, EV_MAIL | EV_DATA_LINES | EV_EOM, EV_DISCONNECT, "reject");
	e_one(&in, K_MAIL, 5, "Spammer@Bad.Example");
	e_reject(&out, K_REJECT, 5, 550,
	    "5.7.1 Sender <Spammer@Bad.Example> rejected by filter");
	e_one(&in, K_MAIL, 5, "x@worse.example");
	e_reject(&out, K_REJECT, 5, 550, "5.7.1 Sender <x@worse.example> rejected by filter");
	e_one(&in, K_MAIL, 5, "");
	e_reject(&out, K_REJECT, 5, 550, "5.7.1 Sender <> rejected by filter");
	e_one(&in, K_MAIL, 5, "friend@good.example");
	e_empty(&out, K_PROCEED, 5);
	e_lines(&in, 5, "Subject: colour||the colour of colours|plain");
	e_lines(&out, 5, "Subject: colour||the color of colors|plain");
	e_empty(&in, K_DATA_END, 5);
	e_empty(&out, K_DATA_END, 5);
	e_eom(&in, 5, 10);
	e_begin(&out, K_ADD_HEADER, 5);
	e_str(&out, "X-Filter-Reject");
	e_str(&out, "2 replacements");
	e_end(&out);
	e_empty(&out, K_PROCEED, 5);
	exchange(&c, &in, &out, 0, "reject filter");
	/* The next message starts in its header section again. */
	e_lines(&in, 5, "Subject: colour||colour");
	e_lines(&out, 5, "Subject: colour||color");
	e_empty(&in, K_DATA_END, 5);
	e_empty(&out, K_DATA_END, 5);
	e_empty(&in, K_DISCONNECT, 5);
	exchange(&c, &in, &out, 0, "reject filter, second message");
	CHECK(finish(&c, err, sizeof(err)) == 0);
	free(in.b);
	free(out.b);
}

int
main(int argc, char **argv)
{
	size_t	i;

	if (argc > 1)
		bindir = argv[1];
	signal(SIGPIPE, SIG_IGN);
	if ((bigbody = malloc(200001)) == NULL)
		abort();
	for (i = 0; i < 200000; i++)
		bigbody[i] = (i % 77 == 76) ? '\n' : (char)('a' + i % 26);
	bigbody[200000] = '\0';

	test_helpers();
	test_register_bytes();
	scenario_answers(0);
	scenario_answers(1);
	scenario_answers(7);
	scenario_big();
	scenario_small_frames();
	scenario_bad();
	scenario_tls_auth();
	scenario_later();
	test_stub();
	test_trace();
	test_reject();
	printf("test-filter-api: %d checks, %d failures\n", checks, failures);
	return failures ? 1 : 0;
}
