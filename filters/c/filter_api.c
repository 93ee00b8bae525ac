/*
 * filter_api.c: the C glue for smtpd filters (see filter_api.h, README.md).
 *
 * The wire format (filters/api/src/codec.rs), all integers big-endian:
 *
 *	frame  = u32 length | u8 kind | u64 session | payload
 *	length = 9 + payload length
 *	string = u16 length | bytes
 *	lines  = u16 count | string * count
 *
 * The filter sends REGISTER, the daemon answers READY or REFUSED, then events come
 * and answers go, in order per session.  Frames are read into a buffer that holds
 * the largest frame; every complete frame is handled; the answers gathered meanwhile
 * are written out (blocking) before the loop polls again, as the Rust glue does.
 * The poll also serves the filter's own descriptors and timers
 * (filter_api_events.c), from which an answer left for later may be given.
 */
#include "filter_api.h"

#include <errno.h>
#include <inttypes.h>
#include <net/if.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/un.h>

/* Event bits of REGISTER. */
#define EV_CONNECT	(1u << 0)
#define EV_HELO		(1u << 1)
#define EV_EHLO		(1u << 2)
#define EV_STARTTLS	(1u << 3)
#define EV_AUTH		(1u << 4)
#define EV_MAIL		(1u << 5)
#define EV_RCPT		(1u << 6)
#define EV_DATA		(1u << 7)
#define EV_DATA_LINES	(1u << 8)
#define EV_EOM		(1u << 9)
#define EV_COMMIT	(1u << 10)
#define EV_ROLLBACK	(1u << 11)
#define EV_DISCONNECT	(1u << 12)
#define EV_PROTOCOL	(1u << 13)
#define EV_TLS		(1u << 14)
#define EV_AUTH_RESULT	(1u << 15)

/* Frame kinds. */
#define K_REGISTER	0x01
#define K_READY		0x02
#define K_REFUSED	0x03
#define K_CONNECT	0x10
#define K_HELO		0x11
#define K_EHLO		0x12
#define K_STARTTLS	0x13
#define K_AUTH		0x14
#define K_MAIL		0x15
#define K_RCPT		0x16
#define K_DATA		0x17
#define K_DATA_LINES	0x18
#define K_DATA_END	0x19
#define K_EOM		0x1a
#define K_COMMIT	0x1b
#define K_ROLLBACK	0x1c
#define K_DISCONNECT	0x1d
#define K_PROTOCOL	0x1e
#define K_TLS		0x40
#define K_AUTH_RESULT	0x41
#define K_PROCEED	0x20
#define K_REJECT	0x21
#define K_TEMPFAIL	0x22
#define K_DISCONNECT_ANSWER 0x23
#define K_JUNK		0x24
#define K_REWRITE	0x25
#define K_ADD_HEADER	0x30
#define K_INSERT_HEADER	0x31
#define K_CHANGE_HEADER	0x32
#define K_REPLACE_BODY	0x33
#define K_ADD_RCPT	0x34
#define K_DEL_RCPT	0x35
#define K_CHANGE_FROM	0x36
#define K_QUARANTINE	0x37
#define K_DISCARD	0x38
#define K_LOG		0x3f

#define FRAME_HEADER	13		/* length, kind, session */
#define MAX_FRAME	(1u << 20)	/* largest frame, header included */
#define MAX_STR		0xffffu		/* largest string */
#define MAX_TEXT	400		/* longest reply text the daemon takes */
#define MAX_REWRITE	255
#define MAX_HNAME	128
#define MAX_HVALUE	8192
#define LINES_PER_FRAME	1024		/* as the Rust glue */
#define LINES_BYTES	(512u * 1024)	/* payload bytes per outgoing DATA_LINES */
#define OUT_FLUSH	(256u * 1024)	/* write out past this many buffered bytes */
#define IN_CAP		(MAX_FRAME + 64u * 1024)

#define DEFAULT_REJECT	"5.7.1 Rejected by filter"
#define DEFAULT_AUTH_REJECT "5.7.8 Authentication refused by filter"
#define BROKEN_REJECT	"4.3.0 Message refused: the filter produced an invalid line"

/* ------------------------------------------------------------------------ */
/* Logging. */

static int	log_level;

static void
vlog(int errnum, const char *fmt, va_list ap)
{
	char	 buf[4096];
	size_t	 n, off;
	ssize_t	 w;
	int	 r, saved = errno;

	r = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	if (r < 0)
		n = 0;
	else if ((size_t)r >= sizeof(buf) - 1)
		n = sizeof(buf) - 2;
	else
		n = (size_t)r;
	if (errnum != 0) {
		r = snprintf(buf + n, sizeof(buf) - 1 - n, ": %s", strerror(errnum));
		if (r > 0)
			n += (size_t)r < sizeof(buf) - 1 - n ? (size_t)r :
			    sizeof(buf) - 2 - n;
	}
	buf[n++] = '\n';
	/* One write per line: smtpd logs each line of the filter's stderr. */
	for (off = 0; off < n; off += (size_t)w) {
		w = write(STDERR_FILENO, buf + off, n - off);
		if (w < 0 && errno == EINTR) {
			w = 0;
			continue;
		}
		if (w <= 0)
			break;
	}
	errno = saved;
}

void
log_init(int debug)
{
	log_level = debug;
}

void
log_verbose(int v)
{
	log_level = v;
}

void
log_warn(const char *fmt, ...)
{
	va_list	ap;
	int	e = errno;

	va_start(ap, fmt);
	vlog(e, fmt, ap);
	va_end(ap);
}

void
log_warnx(const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	vlog(0, fmt, ap);
	va_end(ap);
}

void
log_info(const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	vlog(0, fmt, ap);
	va_end(ap);
}

void
log_debug(const char *fmt, ...)
{
	va_list	ap;

	if (log_level == 0)
		return;
	va_start(ap, fmt);
	vlog(0, fmt, ap);
	va_end(ap);
}

void
fatal(const char *fmt, ...)
{
	va_list	ap;
	int	e = errno;

	va_start(ap, fmt);
	vlog(e, fmt, ap);
	va_end(ap);
	exit(1);
}

void
fatalx(const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	vlog(0, fmt, ap);
	va_end(ap);
	exit(1);
}

/* ------------------------------------------------------------------------ */
/* Callbacks and state. */

static struct {
	int	(*connect)(uint64_t, struct filter_connect *);
	int	(*helo)(uint64_t, const char *);
	int	(*ehlo)(uint64_t, const char *);
	int	(*auth)(uint64_t, const char *, const char *);
	int	(*mail)(uint64_t, struct mailaddr *);
	int	(*rcpt)(uint64_t, struct mailaddr *);
	int	(*data)(uint64_t);
	void	(*dataline)(uint64_t, const char *);
	void	(*dataend)(uint64_t);
	int	(*eom)(uint64_t, size_t);
	void	(*commit)(uint64_t);
	void	(*rollback)(uint64_t);
	void	(*disconnect)(uint64_t);
	void	(*tls)(uint64_t, struct filter_tls *);
	void	(*auth_result)(uint64_t, const char *, const char *, const char *);
} cb;

static char	filter_name[64];

void filter_api_on_connect(int (*f)(uint64_t, struct filter_connect *)) { cb.connect = f; }
void filter_api_on_helo(int (*f)(uint64_t, const char *)) { cb.helo = f; }
void filter_api_on_ehlo(int (*f)(uint64_t, const char *)) { cb.ehlo = f; }
void filter_api_on_mail(int (*f)(uint64_t, struct mailaddr *)) { cb.mail = f; }
void filter_api_on_rcpt(int (*f)(uint64_t, struct mailaddr *)) { cb.rcpt = f; }
void filter_api_on_data(int (*f)(uint64_t)) { cb.data = f; }
void filter_api_on_dataline(void (*f)(uint64_t, const char *)) { cb.dataline = f; }
void filter_api_on_dataend(void (*f)(uint64_t)) { cb.dataend = f; }
void filter_api_on_eom(int (*f)(uint64_t, size_t)) { cb.eom = f; }
void filter_api_on_commit(void (*f)(uint64_t)) { cb.commit = f; }
void filter_api_on_rollback(void (*f)(uint64_t)) { cb.rollback = f; }
void filter_api_on_disconnect(void (*f)(uint64_t)) { cb.disconnect = f; }
void filter_api_on_auth(int (*f)(uint64_t, const char *, const char *)) { cb.auth = f; }
void filter_api_on_tls(void (*f)(uint64_t, struct filter_tls *)) { cb.tls = f; }

void
filter_api_on_auth_result(void (*f)(uint64_t, const char *, const char *, const char *))
{
	cb.auth_result = f;
}

void
filter_api_set_name(const char *name)
{
	size_t	n;

	if (name == NULL)
		name = "";
	n = strlen(name);
	if (n >= sizeof(filter_name))
		n = sizeof(filter_name) - 1;
	memcpy(filter_name, name, n);
	filter_name[n] = '\0';
}

/* An event waiting for its answer, and the answer given so far. */
struct answer {
	int		active;
	uint64_t	sid;
	uint8_t		event;		/* K_CONNECT .. K_EOM */
	int		answered;
	uint8_t		kind;		/* K_PROCEED, K_REJECT, ... */
	uint16_t	code;
	char		text[MAX_TEXT + 1];
	const char	*param;		/* the event's parameter, as sent */
};

/* The event whose callback runs (its answer is sent after the callback). */
static struct answer	cur;

/* A deferred answer being given (sent at once). */
static struct answer	later;

/* The commit being told (for filter_api_msgid). */
static struct {
	int		active;
	uint64_t	sid;
	char		msgid[FILTER_API_MAXMSGID];
} commit_ctx;

/* What the library keeps per session. */
struct session {
	uint64_t	 id;
	void		*data;
	int		 in_data;	/* between its first line and our DATA_END */
	int		 broken;	/* a line we were given could not be sent */
	uint8_t		 later_event;	/* an event answered later (0: none) */
	int		 later_broken;	/* that event is an EOM that must fail */
	struct session	*next;
};

#define SESSION_BUCKETS	1024
static struct session	*sessions[SESSION_BUCKETS];

static struct session *
session_find(uint64_t id, int create)
{
	struct session	**b, *s;

	b = &sessions[(id ^ (id >> 17) ^ (id >> 41)) % SESSION_BUCKETS];
	for (s = *b; s != NULL; s = s->next)
		if (s->id == id)
			return s;
	if (!create)
		return NULL;
	if ((s = calloc(1, sizeof(*s))) == NULL) {
		log_warn("filter_api: session table");
		return NULL;
	}
	s->id = id;
	s->next = *b;
	*b = s;
	return s;
}

static void
session_free(uint64_t id)
{
	struct session	**p, *s;

	p = &sessions[(id ^ (id >> 17) ^ (id >> 41)) % SESSION_BUCKETS];
	for (; (s = *p) != NULL; p = &s->next)
		if (s->id == id) {
			*p = s->next;
			free(s);
			return;
		}
}

/*
 * Sessions that ended while an answer was pending: an answer for one of them comes
 * too late and is dropped without a warning.
 */
#define GONE_RING	256
static uint64_t		gone_ids[GONE_RING];
static unsigned		gone_count, gone_next;

static void
gone_add(uint64_t id)
{
	gone_ids[gone_next] = id;
	gone_next = (gone_next + 1) % GONE_RING;
	if (gone_count < GONE_RING)
		gone_count++;
}

static int
gone(uint64_t id)
{
	unsigned	i;

	for (i = 0; i < gone_count; i++)
		if (gone_ids[i] == id)
			return 1;
	return 0;
}

int
filter_api_session_set(uint64_t id, void *data)
{
	struct session	*s;

	if ((s = session_find(id, data != NULL)) == NULL)
		return data == NULL ? 0 : -1;
	s->data = data;
	return 0;
}

void *
filter_api_session_get(uint64_t id)
{
	struct session	*s = session_find(id, 0);

	return s ? s->data : NULL;
}

const char *
filter_api_param(uint64_t id)
{
	if (cur.active && cur.sid == id)
		return cur.param;
	return NULL;
}

const char *
filter_api_msgid(uint64_t id)
{
	if (commit_ctx.active && commit_ctx.sid == id)
		return commit_ctx.msgid;
	return NULL;
}

/* ------------------------------------------------------------------------ */
/* Frames. */

/* A string of a frame: bytes and their length. */
struct str {
	const unsigned char	*p;
	size_t			 n;
};

struct frame {
	uint8_t		 kind;
	uint64_t	 sid;
	uint16_t	 u16;		/* version, code, TLS bits */
	uint32_t	 u32a, u32b;	/* hooks/max_frame, reports/timeout, index */
	uint64_t	 u64;		/* EOM size */
	uint8_t		 dir;		/* PROTOCOL */
	struct str	 s[4];
	uint16_t	 nlines;	/* DATA_LINES: count, lines at `lines` */
	const unsigned char *lines;
	size_t		 lines_len;
};

/* ------------------------------------------------------------------------ */
/* Output: frames are built in a growing buffer and written out in one go. */

static unsigned char	*obuf;
static size_t		 olen, ocap;
static int		 ofailed;		/* allocation or write failed */
static int		 out_fd = STDOUT_FILENO;
static int		 in_fd = STDIN_FILENO;

/* The largest frame the daemon takes (READY), within [4096, MAX_FRAME]. */
static size_t		 peer_max = MAX_FRAME;

/* The DATA_LINES frame being filled, if any. */
#define NO_FRAME	((size_t)-1)
static size_t		 dl_start = NO_FRAME;
static uint64_t		 dl_sid;
static unsigned		 dl_count;

static int
write_full(int fd, const unsigned char *p, size_t n)
{
	ssize_t	w;

	while (n > 0) {
		w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int
out_flush(void)
{
	if (ofailed)
		return -1;
	if (dl_start != NO_FRAME)
		return 0;	/* only whole frames go out */
	if (olen > 0 && write_full(out_fd, obuf, olen) == -1) {
		log_warn("filter_api: write");
		ofailed = 1;
		return -1;
	}
	olen = 0;
	return 0;
}

static int
out_reserve(size_t n)
{
	unsigned char	*p;
	size_t		 cap;

	if (ofailed)
		return -1;
	if (ocap - olen >= n)
		return 0;
	cap = ocap ? ocap : 64 * 1024;
	while (cap - olen < n)
		cap *= 2;
	if ((p = realloc(obuf, cap)) == NULL) {
		log_warn("filter_api: output buffer");
		ofailed = 1;
		return -1;
	}
	obuf = p;
	ocap = cap;
	return 0;
}

static void
put_be(uint64_t v, size_t n)
{
	if (out_reserve(n) == -1)
		return;
	while (n-- > 0)
		obuf[olen++] = (unsigned char)(v >> (8 * n));
}

static void
poke_be(size_t at, uint64_t v, size_t n)
{
	if (ofailed)
		return;
	while (n-- > 0)
		obuf[at++] = (unsigned char)(v >> (8 * n));
}

static void
put_bytes(const void *p, size_t n)
{
	if (n == 0 || out_reserve(n) == -1)
		return;
	memcpy(obuf + olen, p, n);
	olen += n;
}

/* Strings are checked by the callers to fit a u16; longer ones are cut, as codec.rs. */
static void
put_str(const char *s, size_t n)
{
	if (n > MAX_STR)
		n = MAX_STR;
	put_be(n, 2);
	put_bytes(s, n);
}

static void
dl_close(void)
{
	if (dl_start == NO_FRAME)
		return;
	poke_be(dl_start, olen - dl_start - 4, 4);
	poke_be(dl_start + FRAME_HEADER, dl_count, 2);
	dl_start = NO_FRAME;
	if (olen >= OUT_FLUSH)
		out_flush();
}

static size_t
frame_begin(uint8_t kind, uint64_t sid)
{
	size_t	start;

	dl_close();
	start = olen;
	put_be(0, 4);
	put_be(kind, 1);
	put_be(sid, 8);
	return start;
}

static void
frame_end(size_t start)
{
	poke_be(start, olen - start - 4, 4);
	if (olen >= OUT_FLUSH)
		out_flush();
}

static struct str
str_of(const char *p, size_t n)
{
	struct str	r;

	r.p = (const unsigned char *)(p ? p : "");
	r.n = p ? n : 0;
	return r;
}

static struct str
cstr_of(const char *p)
{
	return str_of(p, p ? strlen(p) : 0);
}

static void
put_s(struct str s)
{
	put_str((const char *)s.p, s.n);
}

/* Appends the encoding of `f` (codec.rs's encode). */
static void
encode_frame(const struct frame *f)
{
	size_t	start = frame_begin(f->kind, f->sid);

	switch (f->kind) {
	case K_REGISTER:
		put_be(f->u16, 2);
		put_be(f->u32a, 4);
		put_be(f->u32b, 4);
		put_s(f->s[0]);
		break;
	case K_READY:
		put_be(f->u16, 2);
		put_be(f->u32a, 4);
		put_be(f->u32b, 4);
		break;
	case K_CONNECT:
		put_s(f->s[0]);
		put_s(f->s[1]);
		put_s(f->s[2]);
		break;
	case K_REFUSED: case K_HELO: case K_EHLO: case K_MAIL:
	case K_RCPT: case K_COMMIT: case K_TEMPFAIL: case K_REWRITE:
	case K_REPLACE_BODY: case K_ADD_RCPT: case K_DEL_RCPT: case K_CHANGE_FROM:
	case K_QUARANTINE: case K_LOG:
		put_s(f->s[0]);
		break;
	case K_TLS:
		put_s(f->s[0]);
		put_s(f->s[1]);
		put_be(f->u16, 2);
		put_s(f->s[2]);
		put_s(f->s[3]);
		break;
	case K_AUTH_RESULT:
		put_s(f->s[0]);
		put_s(f->s[1]);
		put_s(f->s[2]);
		break;
	case K_DATA_LINES:
		/* The lines as they are on the wire (see dl_append to build them). */
		put_be(f->nlines, 2);
		put_bytes(f->lines, f->lines_len);
		break;
	case K_EOM:
		put_be(f->u64, 8);
		break;
	case K_PROTOCOL:
		put_be(f->dir, 1);
		put_s(f->s[0]);
		break;
	case K_REJECT: case K_DISCONNECT_ANSWER:
		put_be(f->u16, 2);
		put_s(f->s[0]);
		break;
	case K_ADD_HEADER: case K_AUTH:
		put_s(f->s[0]);
		put_s(f->s[1]);
		break;
	case K_INSERT_HEADER: case K_CHANGE_HEADER:
		put_be(f->u32a, 4);
		put_s(f->s[0]);
		put_s(f->s[1]);
		break;
	default:	/* no payload */
		break;
	}
	frame_end(start);
}

static void
frame_str(uint8_t kind, uint64_t sid, const char *p, size_t n)
{
	struct frame	f;

	memset(&f, 0, sizeof(f));
	f.kind = kind;
	f.sid = sid;
	f.s[0] = str_of(p, n);
	encode_frame(&f);
}

static void
frame_empty(uint8_t kind, uint64_t sid)
{
	frame_str(kind, sid, NULL, 0);
}

/* Appends one message line to the DATA_LINES frame of `sid`. */
static void
dl_append(uint64_t sid, const char *line, size_t n)
{
	if (dl_start != NO_FRAME && (dl_sid != sid || dl_count >= LINES_PER_FRAME ||
	    olen - dl_start + 2 + n > (peer_max < LINES_BYTES ? peer_max : LINES_BYTES)))
		dl_close();
	if (dl_start == NO_FRAME) {
		dl_start = frame_begin(K_DATA_LINES, sid);
		put_be(0, 2);
		dl_sid = sid;
		dl_count = 0;
	}
	put_str(line, n);
	dl_count++;
}

/* ------------------------------------------------------------------------ */
/* Text checks. */

/*
 * The length of the UTF-8 sequence at `s` (1 for ASCII), with its code point in
 * `*cp`; 0 if it is not a valid one.
 */
static size_t
utf8_seq(const unsigned char *s, uint32_t *cp)
{
	size_t		len, i;
	uint32_t	c;

	if (*s < 0x80) {
		*cp = *s;
		return 1;
	}
	if (*s >= 0xc2 && *s <= 0xdf) {
		len = 2;
		c = *s & 0x1f;
	} else if (*s >= 0xe0 && *s <= 0xef) {
		len = 3;
		c = *s & 0x0f;
	} else if (*s >= 0xf0 && *s <= 0xf4) {
		len = 4;
		c = *s & 0x07;
	} else
		return 0;
	for (i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)	/* also stops at the NUL */
			return 0;
		c = (c << 6) | (s[i] & 0x3f);
	}
	if ((len == 3 && (c < 0x800 || (c >= 0xd800 && c <= 0xdfff))) ||
	    (len == 4 && (c < 0x10000 || c > 0x10ffff)))
		return 0;
	*cp = c;
	return len;
}

/* Whether a code point is a control character (Unicode Cc: C0, DEL, C1). */
static int
is_control(uint32_t c)
{
	return c < 0x20 || (c >= 0x7f && c <= 0x9f);
}

/*
 * Copies at most `max` bytes of `src` into dst[max + 1] as valid UTF-8 without
 * control characters (they become spaces, invalid bytes '?'), never cutting a
 * character in two.  The daemon refuses reply texts with control characters or over
 * 400 bytes once read as UTF-8.
 */
static size_t
clean_text(char *dst, size_t max, const char *src)
{
	const unsigned char	*s = (const unsigned char *)(src ? src : "");
	size_t			 n = 0, len;
	uint32_t		 c;

	while (*s != '\0') {
		len = utf8_seq(s, &c);
		if (len == 0 || is_control(c)) {
			if (n + 1 > max)
				break;
			dst[n++] = len == 0 ? '?' : ' ';
			s += len == 0 ? 1 : len;
			continue;
		}
		if (n + len > max)
			break;
		memcpy(dst + n, s, len);
		n += len;
		s += len;
	}
	dst[n] = '\0';
	return n;
}

/* Whether `s` is valid UTF-8 (for values the daemon reads as text). */
static int
valid_utf8(const char *str)
{
	const unsigned char	*s = (const unsigned char *)str;
	size_t			 len;
	uint32_t		 c;

	while (*s != '\0') {
		if ((len = utf8_seq(s, &c)) == 0)
			return 0;
		s += len;
	}
	return 1;
}

static int
has_ascii_control(const char *s, int allow_fold)
{
	const unsigned char	*p;

	for (p = (const unsigned char *)s; *p != '\0'; p++) {
		if (allow_fold && (*p == '\t' || *p == '\n' ||
		    (*p == '\r' && p[1] == '\n')))
			continue;
		if (*p < 0x20 || *p == 0x7f)
			return 1;
	}
	return 0;
}

/* ------------------------------------------------------------------------ */
/* Answers. */

static void	begin(struct answer *, uint64_t, uint8_t);
static void	send_answer(struct answer *, int);

/*
 * The event of session `id` that an answer may be given to: the one whose callback
 * runs, or one its callback left for later; NULL (logged) if there is none.
 */
static struct answer *
answering(uint64_t id, const char *what)
{
	struct session	*s;

	if (cur.active && cur.sid == id) {
		if (cur.answered) {
			log_warnx("filter_api: %s: session %016" PRIx64
			    " was already answered", what, id);
			return NULL;
		}
		return &cur;
	}
	if ((s = session_find(id, 0)) != NULL && s->later_event != 0) {
		begin(&later, id, s->later_event);
		return &later;
	}
	if (gone(id)) {
		log_debug("filter_api: %s: session %016" PRIx64 " has ended, answer "
		    "dropped", what, id);
		return NULL;
	}
	log_warnx("filter_api: %s: session %016" PRIx64
	    " has no event waiting for an answer", what, id);
	return NULL;
}

/* The answer `a` is given: a deferred one goes out now. */
static int
given(struct answer *a)
{
	struct session	*s;

	a->answered = 1;
	if (a != &later)
		return 0;
	if ((s = session_find(a->sid, 0)) != NULL) {
		if (s->later_broken) {
			a->kind = K_REJECT;
			a->code = 451;
			strcpy(a->text, BROKEN_REJECT);
		}
		s->later_event = 0;
		s->later_broken = 0;
	}
	send_answer(a, 1);
	a->active = 0;
	return 0;
}

static int
set_answer(uint64_t id, const char *what, uint8_t kind, uint16_t code,
    const char *text)
{
	struct answer	*a;

	if ((a = answering(id, what)) == NULL)
		return -1;
	a->kind = kind;
	a->code = code;
	clean_text(a->text, MAX_TEXT, text);
	return given(a);
}

int
filter_api_accept(uint64_t id)
{
	return set_answer(id, "accept", K_PROCEED, 0, NULL);
}

int
filter_api_reject(uint64_t id, uint32_t code, const char *text)
{
	if (code < 400 || code > 599) {
		log_warnx("filter_api: reject: code %" PRIu32 " is not 4xx or 5xx", code);
		return -1;
	}
	return set_answer(id, "reject", K_REJECT, (uint16_t)code, text);
}

int
filter_api_reject_code(uint64_t id, enum filter_status status, uint32_t code,
    const char *text)
{
	switch (status) {
	case FILTER_OK:
		return filter_api_accept(id);
	case FILTER_FAIL:
		return filter_api_reject(id, code, text);
	case FILTER_CLOSE:
		return filter_api_disconnect(id, code, text);
	}
	return -1;
}

int
filter_api_tempfail(uint64_t id, const char *text)
{
	return set_answer(id, "tempfail", K_TEMPFAIL, 0, text);
}

int
filter_api_disconnect(uint64_t id, uint32_t code, const char *text)
{
	if (code < 400 || code > 599) {
		log_warnx("filter_api: disconnect: code %" PRIu32 " is not 4xx or 5xx",
		    code);
		return -1;
	}
	return set_answer(id, "disconnect", K_DISCONNECT_ANSWER, (uint16_t)code, text);
}

int
filter_api_junk(uint64_t id)
{
	return set_answer(id, "junk", K_JUNK, 0, NULL);
}

int
filter_api_rewrite(uint64_t id, const char *value)
{
	struct answer	*a;
	size_t		 n;

	if ((a = answering(id, "rewrite")) == NULL)
		return -1;
	if (a->event != K_HELO && a->event != K_EHLO && a->event != K_MAIL &&
	    a->event != K_RCPT) {
		log_warnx("filter_api: rewrite: only HELO, EHLO, MAIL and RCPT can be "
		    "rewritten");
		return -1;
	}
	n = value ? strlen(value) : 0;
	if (n == 0 || n > MAX_REWRITE || has_ascii_control(value, 0) ||
	    !valid_utf8(value)) {
		log_warnx("filter_api: rewrite: invalid value (1 to %d bytes of UTF-8 "
		    "text wanted)", MAX_REWRITE);
		return -1;
	}
	memcpy(a->text, value, n + 1);
	a->kind = K_REWRITE;
	return given(a);
}

int
filter_api_discard(uint64_t id)
{
	struct answer	*a;

	if ((a = answering(id, "discard")) == NULL)
		return -1;
	if (a->event != K_EOM) {
		log_warnx("filter_api: discard: only at end of message");
		return -1;
	}
	a->kind = K_DISCARD;
	a->code = 0;
	a->text[0] = '\0';
	return given(a);
}

/* Sends the answer to an event: the one given, else from `ok`. */
static void
send_answer(struct answer *a, int ok)
{
	struct frame	f;

	if (!a->answered) {
		a->kind = ok ? K_PROCEED : K_REJECT;
		/* RFC 4954: 535 for credentials that do not let the client in. */
		a->code = a->event == K_AUTH ? 535 : 550;
		strcpy(a->text, a->event == K_AUTH ? DEFAULT_AUTH_REJECT :
		    DEFAULT_REJECT);
	}
	memset(&f, 0, sizeof(f));
	f.kind = a->kind;
	f.sid = a->sid;
	f.u16 = a->code;
	f.s[0] = cstr_of(a->text);
	encode_frame(&f);
}

/*
 * The callback of the current event returned `ok`: its answer goes out, unless the
 * callback left it for later without answering.
 */
static void
finish_answer(int ok, int broken)
{
	struct session	*s;

	if (ok == FILTER_API_LATER && !cur.answered) {
		if ((s = session_find(cur.sid, 1)) == NULL) {
			ofailed = 1;
			cur.active = 0;
			return;
		}
		s->later_event = cur.event;
		s->later_broken = broken;
		cur.active = 0;
		return;
	}
	if (broken) {
		/* A line could not be passed on: this message must not go through. */
		cur.answered = 1;
		cur.kind = K_REJECT;
		cur.code = 451;
		strcpy(cur.text, BROKEN_REJECT);
	}
	send_answer(&cur, ok);
	cur.active = 0;
}

/* ------------------------------------------------------------------------ */
/* Message lines. */

static int
emit_line(struct session *s, const char *line, size_t n)
{
	const char	*why = NULL;

	if (n > FILTER_API_MAXLINE)
		why = "longer than 65535 bytes";
	else if (memchr(line, '\r', n) != NULL || memchr(line, '\n', n) != NULL)
		why = "with CR or LF";
	else if (memchr(line, '\0', n) != NULL)
		why = "with NUL";
	if (why != NULL) {
		if (!s->broken)
			log_warnx("filter_api: session %016" PRIx64 ": a message line %s "
			    "cannot be passed on: the message will be refused", s->id, why);
		s->broken = 1;
		return -1;
	}
	dl_append(s->id, line, n);
	return 0;
}

int
filter_api_writeln(uint64_t id, const char *text)
{
	struct session	*s = session_find(id, 0);
	const char	*p, *nl;
	size_t		 n;
	int		 ret = 0;

	if (s == NULL || !s->in_data) {
		log_warnx("filter_api: writeln: session %016" PRIx64
		    " is not sending a message", id);
		return -1;
	}
	if (text == NULL)
		text = "";
	/* Several lines at once are split at LF (CR LF); a last LF ends the last line. */
	p = text;
	do {
		nl = strchr(p, '\n');
		n = nl ? (size_t)(nl - p) : strlen(p);
		if (nl && n > 0 && p[n - 1] == '\r')
			n--;
		if (emit_line(s, p, n) == -1)
			ret = -1;
		p = nl ? nl + 1 : NULL;
	} while (p != NULL && *p != '\0');
	return ret;
}

/* ------------------------------------------------------------------------ */
/* End-of-message edits. */

static int
editing(uint64_t id, const char *what)
{
	struct session	*s;

	if ((!cur.active || cur.sid != id || cur.event != K_EOM) &&
	    ((s = session_find(id, 0)) == NULL || s->later_event != K_EOM)) {
		log_warnx("filter_api: %s: only in the eom callback of session %016"
		    PRIx64 " or before its later answer", what, id);
		return 0;
	}
	if (cur.active && cur.sid == id && cur.answered && cur.kind != K_PROCEED &&
	    cur.kind != K_JUNK) {
		log_warnx("filter_api: %s: the message is already refused", what);
		return 0;
	}
	return 1;
}

static int
valid_header_name(const char *name)
{
	const unsigned char	*p = (const unsigned char *)name;
	size_t			 n = 0;

	if (name == NULL)
		return 0;
	for (; *p != '\0'; p++, n++)
		if (*p < 33 || *p > 126 || *p == ':')
			return 0;
	return n > 0 && n <= MAX_HNAME;
}

static int
header_edit(uint64_t id, const char *what, uint8_t kind, uint32_t index,
    const char *name, const char *value)
{
	struct frame	f;

	if (!editing(id, what))
		return -1;
	if (value == NULL)
		value = "";
	if (!valid_header_name(name)) {
		log_warnx("filter_api: %s: invalid header name", what);
		return -1;
	}
	if (strlen(value) > MAX_HVALUE || has_ascii_control(value, 1)) {
		log_warnx("filter_api: %s: invalid header value", what);
		return -1;
	}
	memset(&f, 0, sizeof(f));
	f.kind = kind;
	f.sid = id;
	f.u32a = index;
	f.s[0] = cstr_of(name);
	f.s[1] = cstr_of(value);
	encode_frame(&f);
	return 0;
}

int
filter_api_header_add(uint64_t id, const char *name, const char *value)
{
	return header_edit(id, "header_add", K_ADD_HEADER, 0, name, value);
}

int
filter_api_header_insert(uint64_t id, uint32_t index, const char *name,
    const char *value)
{
	return header_edit(id, "header_insert", K_INSERT_HEADER, index, name, value);
}

int
filter_api_header_change(uint64_t id, uint32_t index, const char *name,
    const char *value)
{
	return header_edit(id, "header_change", K_CHANGE_HEADER, index, name, value);
}

int
filter_api_header_delete(uint64_t id, uint32_t index, const char *name)
{
	return header_edit(id, "header_delete", K_CHANGE_HEADER, index, name, "");
}

int
filter_api_body_replace(uint64_t id, const char *text)
{
	size_t	n, cut, i, max;

	if (!editing(id, "body_replace"))
		return -1;
	if (text == NULL)
		text = "";
	n = strlen(text);
	if (n == 0) {
		frame_str(K_REPLACE_BODY, id, "", 0);
		return 0;
	}
	/*
	 * The daemon reads each chunk as UTF-8 and turns its CR LF into LF on its own:
	 * cut after a LF, else never inside a character nor between CR and LF.
	 */
	max = peer_max - FRAME_HEADER - 2 < MAX_STR ? peer_max - FRAME_HEADER - 2 : MAX_STR;
	while (n > 0) {
		cut = n;
		if (cut > max) {
			cut = max;
			for (i = cut; i > 0 && text[i - 1] != '\n'; i--)
				;
			if (i > 0)
				cut = i;
			else {
				while (cut > 1 &&
				    (((unsigned char)text[cut] & 0xc0) == 0x80 ||
				    (text[cut - 1] == '\r' && text[cut] == '\n')))
					cut--;
			}
		}
		frame_str(K_REPLACE_BODY, id, text, cut);
		text += cut;
		n -= cut;
	}
	return 0;
}

static int
addr_edit(uint64_t id, const char *what, uint8_t kind, const char *addr, int null_ok)
{
	size_t	n;

	if (!editing(id, what))
		return -1;
	n = addr ? strlen(addr) : 0;
	if ((n == 0 && !null_ok) || n > MAX_REWRITE ||
	    (addr && (has_ascii_control(addr, 0) || !valid_utf8(addr)))) {
		log_warnx("filter_api: %s: invalid address", what);
		return -1;
	}
	frame_str(kind, id, addr ? addr : "", n);
	return 0;
}

int
filter_api_rcpt_add(uint64_t id, const char *addr)
{
	return addr_edit(id, "rcpt_add", K_ADD_RCPT, addr, 0);
}

int
filter_api_rcpt_del(uint64_t id, const char *addr)
{
	return addr_edit(id, "rcpt_del", K_DEL_RCPT, addr, 0);
}

int
filter_api_mailfrom_change(uint64_t id, const char *addr)
{
	return addr_edit(id, "mailfrom_change", K_CHANGE_FROM, addr, 1);
}

int
filter_api_quarantine(uint64_t id, const char *reason)
{
	char	text[MAX_TEXT + 1];
	size_t	n;

	if (!editing(id, "quarantine"))
		return -1;
	n = clean_text(text, MAX_TEXT, reason);
	frame_str(K_QUARANTINE, id, text, n);
	return 0;
}

/* ------------------------------------------------------------------------ */
/* Addresses. */

static void
copy_text(char *dst, size_t size, const unsigned char *src, size_t n)
{
	if (n >= size)
		n = size - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

static void
parse_sockaddr(const char *text, struct sockaddr_storage *ss)
{
	char			 host[FILTER_API_MAXADDRTEXT];
	const char		*port = NULL, *end;
	char			*scope, *ep;
	unsigned long		 p = 0, sc;
	struct sockaddr_in	*sin = (struct sockaddr_in *)ss;
	struct sockaddr_in6	*sin6 = (struct sockaddr_in6 *)ss;
	struct sockaddr_un	*sunx = (struct sockaddr_un *)ss;
	size_t			 n;

	memset(ss, 0, sizeof(*ss));
	ss->ss_family = AF_UNSPEC;
	if (strcmp(text, "local") == 0) {
		sunx->sun_family = AF_UNIX;
		return;
	}
	if (text[0] == '[') {
		if ((end = strchr(text, ']')) == NULL)
			return;
		n = (size_t)(end - text - 1);
		if (end[1] == ':')
			port = end + 2;
		else if (end[1] != '\0')
			return;
		if (n >= sizeof(host))
			return;
		memcpy(host, text + 1, n);
		host[n] = '\0';
	} else {
		n = strlen(text);
		if (n >= sizeof(host))
			return;
		memcpy(host, text, n + 1);
		if (strchr(host, ':') == strrchr(host, ':') &&
		    (ep = strrchr(host, ':')) != NULL) {
			*ep = '\0';
			port = text + (ep - host) + 1;
		}
	}
	if (port != NULL) {
		if (*port < '0' || *port > '9')
			return;
		errno = 0;
		p = strtoul(port, &ep, 10);
		if (errno != 0 || *ep != '\0' || p > 65535)
			return;
	}
	if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)p);
		return;
	}
	sc = 0;
	if ((scope = strchr(host, '%')) != NULL) {
		*scope++ = '\0';
		sc = strtoul(scope, &ep, 10);
		if (*scope == '\0' || *ep != '\0')
			sc = if_nametoindex(scope);
	}
	if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)p);
		sin6->sin6_scope_id = (uint32_t)sc;
		return;
	}
	memset(ss, 0, sizeof(*ss));
	ss->ss_family = AF_UNSPEC;
}

const char *
filter_api_sockaddr_to_text(const struct sockaddr *sa)
{
	static char	buf[INET6_ADDRSTRLEN + 16];
	size_t		n;

	if (sa == NULL)
		return "unknown";
	switch (sa->sa_family) {
	case AF_INET:
		if (inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr,
		    buf, sizeof(buf)) == NULL)
			return "unknown";
		return buf;
	case AF_INET6: {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)sa;

		if (inet_ntop(AF_INET6, &s6->sin6_addr, buf, sizeof(buf)) == NULL)
			return "unknown";
		if (s6->sin6_scope_id != 0) {
			n = strlen(buf);
			snprintf(buf + n, sizeof(buf) - n, "%%%" PRIu32,
			    (uint32_t)s6->sin6_scope_id);
		}
		return buf;
	}
	case AF_UNIX:
		return "local";
	default:
		return "unknown";
	}
}

static void
parse_mailaddr(const unsigned char *p, size_t n, struct mailaddr *a)
{
	const unsigned char	*at = NULL;
	size_t			 i;

	memset(a, 0, sizeof(*a));
	for (i = n; i > 0; i--)
		if (p[i - 1] == '@') {
			at = p + i - 1;
			break;
		}
	if (at == NULL) {
		copy_text(a->user, sizeof(a->user), p, n);
		return;
	}
	copy_text(a->user, sizeof(a->user), p, (size_t)(at - p));
	copy_text(a->domain, sizeof(a->domain), at + 1, n - (size_t)(at - p) - 1);
}

const char *
filter_api_mailaddr_to_text(const struct mailaddr *a)
{
	static char	buf[SMTPD_MAXLOCALPARTSIZE + SMTPD_MAXDOMAINPARTSIZE + 1];

	if (a == NULL)
		return "";
	if (a->domain[0] == '\0')
		snprintf(buf, sizeof(buf), "%.*s", (int)(sizeof(a->user) - 1), a->user);
	else
		snprintf(buf, sizeof(buf), "%.*s@%.*s", (int)(sizeof(a->user) - 1),
		    a->user, (int)(sizeof(a->domain) - 1), a->domain);
	return buf;
}

/* ------------------------------------------------------------------------ */
/* Decoding. */

struct cursor {
	const unsigned char	*p;
	size_t			 n;
	int			 bad;
};

static uint64_t
take_be(struct cursor *c, size_t n)
{
	uint64_t	v = 0;

	if (c->bad || c->n < n) {
		c->bad = 1;
		return 0;
	}
	while (n-- > 0) {
		v = (v << 8) | *c->p++;
		c->n--;
	}
	return v;
}

static struct str
take_str(struct cursor *c)
{
	struct str	s = { NULL, 0 };
	size_t		n = (size_t)take_be(c, 2);

	if (c->bad || c->n < n) {
		c->bad = 1;
		return s;
	}
	s.p = c->p;
	s.n = n;
	c->p += n;
	c->n -= n;
	return s;
}

/*
 * Decodes the frame in buf[0..len) (len = 4 + its length field, already checked),
 * exactly as codec.rs: every kind known, the payload used up.  Returns 0, or -1 for
 * an unknown kind, -2 for a bad payload.
 */
static int
decode_frame(const unsigned char *buf, size_t len, struct frame *f)
{
	struct cursor	c;
	uint16_t	i;

	memset(f, 0, sizeof(*f));
	if (len < FRAME_HEADER)
		return -2;
	f->kind = buf[4];
	c.p = buf + 5;
	c.n = 8;
	c.bad = 0;
	f->sid = take_be(&c, 8);
	c.p = buf + FRAME_HEADER;
	c.n = len - FRAME_HEADER;
	switch (f->kind) {
	case K_REGISTER:
		f->u16 = (uint16_t)take_be(&c, 2);
		f->u32a = (uint32_t)take_be(&c, 4);
		f->u32b = (uint32_t)take_be(&c, 4);
		f->s[0] = take_str(&c);
		break;
	case K_READY:
		f->u16 = (uint16_t)take_be(&c, 2);
		f->u32a = (uint32_t)take_be(&c, 4);
		f->u32b = (uint32_t)take_be(&c, 4);
		break;
	case K_CONNECT:
		f->s[0] = take_str(&c);
		f->s[1] = take_str(&c);
		f->s[2] = take_str(&c);
		break;
	case K_REFUSED: case K_HELO: case K_EHLO: case K_MAIL:
	case K_RCPT: case K_COMMIT: case K_TEMPFAIL: case K_REWRITE:
	case K_REPLACE_BODY: case K_ADD_RCPT: case K_DEL_RCPT: case K_CHANGE_FROM:
	case K_QUARANTINE: case K_LOG:
		f->s[0] = take_str(&c);
		break;
	case K_TLS:
		f->s[0] = take_str(&c);
		f->s[1] = take_str(&c);
		f->u16 = (uint16_t)take_be(&c, 2);
		f->s[2] = take_str(&c);
		f->s[3] = take_str(&c);
		break;
	case K_AUTH_RESULT:
		f->s[0] = take_str(&c);
		f->s[1] = take_str(&c);
		f->s[2] = take_str(&c);
		break;
	case K_STARTTLS: case K_DATA: case K_DATA_END: case K_ROLLBACK:
	case K_DISCONNECT: case K_PROCEED: case K_JUNK: case K_DISCARD:
		break;
	case K_DATA_LINES:
		f->nlines = (uint16_t)take_be(&c, 2);
		f->lines = c.p;
		for (i = 0; i < f->nlines && !c.bad; i++)
			(void)take_str(&c);
		f->lines_len = (size_t)(c.p - f->lines);
		break;
	case K_EOM:
		f->u64 = take_be(&c, 8);
		break;
	case K_PROTOCOL:
		f->dir = (uint8_t)take_be(&c, 1);
		if (!c.bad && f->dir != '<' && f->dir != '>')
			return -2;
		f->s[0] = take_str(&c);
		break;
	case K_REJECT: case K_DISCONNECT_ANSWER:
		f->u16 = (uint16_t)take_be(&c, 2);
		f->s[0] = take_str(&c);
		break;
	case K_ADD_HEADER: case K_AUTH:
		f->s[0] = take_str(&c);
		f->s[1] = take_str(&c);
		break;
	case K_INSERT_HEADER: case K_CHANGE_HEADER:
		f->u32a = (uint32_t)take_be(&c, 4);
		f->s[0] = take_str(&c);
		f->s[1] = take_str(&c);
		break;
	default:
		return -1;
	}
	if (c.bad || c.n != 0)
		return -2;
	return 0;
}

#define DEC_BAD_LENGTH		(-1)
#define DEC_UNKNOWN_KIND	(-2)
#define DEC_BAD_PAYLOAD		(-3)

/*
 * Decodes one frame from the start of buf[0..avail): 1 and the bytes it used in
 * *used, 0 when more bytes are needed, or a DEC_* error (codec.rs's decode).  A bad
 * length is told as soon as the length field is there.
 */
static int
decode_one(const unsigned char *buf, size_t avail, struct frame *f, size_t *used)
{
	uint32_t	len;
	size_t		total;

	if (avail < 4)
		return 0;
	len = (uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 |
	    (uint32_t)buf[2] << 8 | buf[3];
	if (len < FRAME_HEADER - 4 || len > MAX_FRAME - 4)
		return DEC_BAD_LENGTH;
	total = 4 + (size_t)len;
	if (avail < total)
		return 0;
	switch (decode_frame(buf, total, f)) {
	case -1:
		return DEC_UNKNOWN_KIND;
	case -2:
		return DEC_BAD_PAYLOAD;
	}
	*used = total;
	return 1;
}

/* ------------------------------------------------------------------------ */
/* Dispatch. */

/* Strings handed to callbacks: NUL-terminated copies (a string is at most 65535). */
static char	 sbuf[MAX_STR + 1];

static const char *
cstr(struct str s)
{
	memcpy(sbuf, s.p ? (const void *)s.p : (const void *)"", s.n);
	sbuf[s.n] = '\0';
	return sbuf;
}

/* The strings of a frame that has several: string i in a buffer of its own. */
static char	 xbuf[4][MAX_STR + 1];

static const char *
cstr_at(int i, struct str s)
{
	memcpy(xbuf[i], s.p ? (const void *)s.p : (const void *)"", s.n);
	xbuf[i][s.n] = '\0';
	return xbuf[i];
}

static void
begin(struct answer *a, uint64_t sid, uint8_t event)
{
	a->active = 1;
	a->sid = sid;
	a->event = event;
	a->answered = 0;
	a->kind = K_PROCEED;
	a->code = 0;
	a->text[0] = '\0';
	a->param = NULL;
}

static void
begin_answer(uint64_t sid, uint8_t event)
{
	begin(&cur, sid, event);
}

static void
dispatch_lines(const struct frame *f)
{
	struct session	*s;
	struct cursor	 c;
	struct str	 l;
	uint16_t	 i;

	if ((s = session_find(f->sid, 1)) == NULL) {
		ofailed = 1;
		return;
	}
	if (!s->in_data) {
		s->in_data = 1;
		s->broken = 0;
	}
	c.p = f->lines;
	c.n = f->lines_len;
	c.bad = 0;
	for (i = 0; i < f->nlines; i++) {
		l = take_str(&c);
		if (cb.dataline != NULL)
			cb.dataline(f->sid, cstr(l));
		else
			(void)emit_line(s, l.n ? (const char *)l.p : "", l.n);
	}
	dl_close();
}

static void
dispatch_data_end(const struct frame *f)
{
	struct session	*s;

	if ((s = session_find(f->sid, 1)) == NULL) {
		ofailed = 1;
		return;
	}
	if (!s->in_data) {
		s->in_data = 1;
		s->broken = 0;
	}
	if (cb.dataend != NULL)
		cb.dataend(f->sid);
	frame_empty(K_DATA_END, f->sid);
	s->in_data = 0;
}

static void
dispatch_eom(const struct frame *f)
{
	struct session	*s = session_find(f->sid, 0);
	size_t		 size;
	int		 ok = 1, broken;

	size = f->u64 > (uint64_t)SIZE_MAX ? SIZE_MAX : (size_t)f->u64;
	begin_answer(f->sid, K_EOM);
	if (cb.eom != NULL)
		ok = cb.eom(f->sid, size);
	broken = s != NULL && s->broken;
	if (s != NULL) {
		s->broken = 0;
		s->in_data = 0;
	}
	finish_answer(ok, broken);
}

/* Handles one decoded event; -1 on a protocol error. */
static int
dispatch(const struct frame *f)
{
	struct filter_connect	fc;
	struct filter_tls	tls;
	struct mailaddr		ma;
	struct session		*s;
	int			ok = 1;

	switch (f->kind) {
	case K_CONNECT:
		memset(&fc, 0, sizeof(fc));
		copy_text(fc.local_text, sizeof(fc.local_text), f->s[0].p, f->s[0].n);
		copy_text(fc.remote_text, sizeof(fc.remote_text), f->s[1].p, f->s[1].n);
		copy_text(fc.hostname, sizeof(fc.hostname), f->s[2].p, f->s[2].n);
		parse_sockaddr(fc.local_text, &fc.local);
		parse_sockaddr(fc.remote_text, &fc.remote);
		begin_answer(f->sid, f->kind);
		if (cb.connect != NULL)
			ok = cb.connect(f->sid, &fc);
		break;
	case K_HELO:
	case K_EHLO:
		begin_answer(f->sid, f->kind);
		cur.param = cstr(f->s[0]);
		if (f->kind == K_HELO && cb.helo != NULL)
			ok = cb.helo(f->sid, cur.param);
		else if (f->kind == K_EHLO && cb.ehlo != NULL)
			ok = cb.ehlo(f->sid, cur.param);
		break;
	case K_MAIL:
	case K_RCPT:
		parse_mailaddr(f->s[0].p, f->s[0].n, &ma);
		begin_answer(f->sid, f->kind);
		cur.param = cstr(f->s[0]);
		if (f->kind == K_MAIL && cb.mail != NULL)
			ok = cb.mail(f->sid, &ma);
		else if (f->kind == K_RCPT && cb.rcpt != NULL)
			ok = cb.rcpt(f->sid, &ma);
		break;
	case K_DATA:
		begin_answer(f->sid, f->kind);
		if (cb.data != NULL)
			ok = cb.data(f->sid);
		break;
	case K_AUTH:
		begin_answer(f->sid, f->kind);
		cur.param = cstr_at(1, f->s[1]);
		if (cb.auth != NULL)
			ok = cb.auth(f->sid, cstr_at(0, f->s[0]), cur.param);
		break;
	case K_STARTTLS:
		/* Reserved; never registered.  Let it through if it comes. */
		begin_answer(f->sid, f->kind);
		break;
	case K_TLS:
		if (cb.tls != NULL) {
			memset(&tls, 0, sizeof(tls));
			tls.version = cstr_at(0, f->s[0]);
			tls.cipher = cstr_at(1, f->s[1]);
			tls.bits = f->u16;
			tls.sni = cstr_at(2, f->s[2]);
			tls.subject = cstr_at(3, f->s[3]);
			cb.tls(f->sid, &tls);
		}
		return 0;
	case K_AUTH_RESULT:
		if (cb.auth_result != NULL)
			cb.auth_result(f->sid, cstr_at(0, f->s[0]), cstr_at(1, f->s[1]),
			    cstr_at(2, f->s[2]));
		return 0;
	case K_DATA_LINES:
		dispatch_lines(f);
		return 0;
	case K_DATA_END:
		dispatch_data_end(f);
		return 0;
	case K_EOM:
		dispatch_eom(f);
		return 0;
	case K_COMMIT:
		if (cb.commit != NULL) {
			commit_ctx.active = 1;
			commit_ctx.sid = f->sid;
			copy_text(commit_ctx.msgid, sizeof(commit_ctx.msgid), f->s[0].p,
			    f->s[0].n);
			cb.commit(f->sid);
			commit_ctx.active = 0;
		}
		return 0;
	case K_ROLLBACK:
		if (cb.rollback != NULL)
			cb.rollback(f->sid);
		return 0;
	case K_DISCONNECT:
		/* An answer still pending is not wanted any more. */
		if ((s = session_find(f->sid, 0)) != NULL && s->later_event != 0) {
			s->later_event = 0;
			gone_add(f->sid);
		}
		if (cb.disconnect != NULL)
			cb.disconnect(f->sid);
		session_free(f->sid);
		return 0;
	case K_PROTOCOL:
		return 0;
	case K_READY:
		log_debug("filter_api: READY again, ignored");
		return 0;
	case K_REFUSED:
		log_warnx("filter_api: refused by the daemon: %s", cstr(f->s[0]));
		return -1;
	default:
		/* A well-formed frame the daemon never sends to filters: ignored. */
		log_debug("filter_api: frame kind 0x%02x ignored", f->kind);
		return 0;
	}
	finish_answer(ok, 0);
	return 0;
}

/* ------------------------------------------------------------------------ */
/* The loop. */

/* One turn of the loop over the filter's own work (filter_api_events.c). */
int	filter_api_events_wait(int);

static unsigned char	*ibuf;
static int		 running;

static void
default_name(void)
{
	FILE	*fp;
	char	 buf[64];
	size_t	 n;

	if (filter_name[0] != '\0')
		return;
	if ((fp = fopen("/proc/self/comm", "r")) != NULL) {
		if (fgets(buf, sizeof(buf), fp) != NULL) {
			n = strcspn(buf, "\r\n");
			buf[n] = '\0';
			filter_api_set_name(buf);
		}
		fclose(fp);
	}
	if (filter_name[0] == '\0')
		filter_api_set_name("filter");
}

static void
send_register(void)
{
	uint32_t	hooks = 0, reports = EV_DISCONNECT;
	struct frame	f;

	if (cb.connect)
		hooks |= EV_CONNECT;
	if (cb.helo)
		hooks |= EV_HELO;
	if (cb.ehlo)
		hooks |= EV_EHLO;
	if (cb.auth)
		hooks |= EV_AUTH;
	if (cb.mail)
		hooks |= EV_MAIL;
	if (cb.rcpt)
		hooks |= EV_RCPT;
	if (cb.data)
		hooks |= EV_DATA;
	/* A filter of lines also answers EOM: a line it cannot pass on fails the message. */
	if (cb.dataline || cb.dataend)
		hooks |= EV_DATA_LINES | EV_EOM;
	if (cb.eom)
		hooks |= EV_EOM;
	if (cb.commit)
		reports |= EV_COMMIT;
	if (cb.rollback)
		reports |= EV_ROLLBACK;
	if (cb.tls)
		reports |= EV_TLS;
	if (cb.auth_result)
		reports |= EV_AUTH_RESULT;
	memset(&f, 0, sizeof(f));
	f.kind = K_REGISTER;
	f.u16 = FILTER_API_PROTOCOL_VERSION;
	f.u32a = hooks;
	f.u32b = reports;
	f.s[0] = cstr_of(filter_name);
	encode_frame(&f);
}

static int
serve(void)
{
	size_t		 ilen = 0, off, flen = 0;
	ssize_t		 n;
	struct frame	 f;
	int		 ready = 0, r;

	send_register();
	if (out_flush() == -1)
		return -1;
	for (;;) {
		off = 0;
		/*
		 * A daemon that heard nothing from us for a second may have taken us for a
		 * filter of OpenSMTPD's protocol and sent its configuration lines: they come
		 * before READY and start with 'c', where a frame starts with a zero byte.
		 */
		while (!ready && off < ilen && ibuf[off] == 'c') {
			uint8_t *nl = memchr(ibuf + off, '\n', ilen - off);

			if (nl == NULL)
				break;
			off = (size_t)(nl - ibuf) + 1;
		}
		while ((ready || off >= ilen || ibuf[off] != 'c') &&
		    (r = decode_one(ibuf + off, ilen - off, &f, &flen)) != 0) {
			if (r == DEC_BAD_LENGTH) {
				log_warnx("filter_api: bad frame length %" PRIu32,
				    (uint32_t)ibuf[off] << 24 | (uint32_t)ibuf[off + 1] << 16 |
				    (uint32_t)ibuf[off + 2] << 8 | ibuf[off + 3]);
				return -1;
			}
			if (r == DEC_UNKNOWN_KIND) {
				log_warnx("filter_api: unknown frame kind 0x%02x", f.kind);
				return -1;
			}
			if (r == DEC_BAD_PAYLOAD) {
				log_warnx("filter_api: malformed payload for kind 0x%02x",
				    f.kind);
				return -1;
			}
			off += flen;
			if (!ready) {
				if (f.kind == K_READY) {
					ready = 1;
					peer_max = f.u32a < 4096 ? 4096 :
					    f.u32a > MAX_FRAME ? MAX_FRAME : f.u32a;
					if (f.u16 != FILTER_API_PROTOCOL_VERSION)
						log_warnx("filter_api: the daemon speaks "
						    "protocol version %u", f.u16);
					continue;
				}
				if (f.kind == K_REFUSED) {
					log_warnx("filter_api: refused by the daemon: %s",
					    cstr(f.s[0]));
					return -1;
				}
				log_warnx("filter_api: event before READY");
				return -1;
			}
			if (dispatch(&f) == -1 || ofailed)
				return -1;
		}
		if (out_flush() == -1)
			return -1;
		if (off > 0) {
			memmove(ibuf, ibuf + off, ilen - off);
			ilen -= off;
		}
		/* The filter's own descriptors and timers, until the daemon writes. */
		while ((r = filter_api_events_wait(in_fd)) == 0)
			if (ofailed || out_flush() == -1)
				return -1;
		if (r == -1 || ofailed || out_flush() == -1)
			return -1;
		do
			n = read(in_fd, ibuf + ilen, IN_CAP - ilen);
		while (n < 0 && errno == EINTR);
		if (n < 0) {
			log_warn("filter_api: read");
			return -1;
		}
		if (n == 0) {
			if (ilen > 0)
				log_warnx("filter_api: end of input inside a frame");
			return 0;
		}
		ilen += (size_t)n;
	}
}

int
filter_api_loop(void)
{
	struct sigaction	sa;
	int			r;

	if (running) {
		log_warnx("filter_api: filter_api_loop is already running");
		return -1;
	}
	running = 1;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	sigemptyset(&sa.sa_mask);
	(void)sigaction(SIGPIPE, &sa, NULL);
	default_name();
	if (ibuf == NULL && (ibuf = malloc(IN_CAP)) == NULL) {
		log_warn("filter_api: input buffer");
		running = 0;
		return -1;
	}
	r = serve();
	running = 0;
	return r;
}
