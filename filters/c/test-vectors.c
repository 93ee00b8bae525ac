/*
 * test-vectors: replays the golden vectors of filters/api/tests/vectors (format in
 * its README) against this library's own encoder and decoder, as
 * filters/api/tests/vectors.rs does against the Rust codec:
 *
 *  - "kind" vectors: the described frame encodes to exactly the bytes (message
 *    lines also through the path the library sends them by); the bytes decode to
 *    the described session and fields using all of them; the decoded frame encodes
 *    to the bytes again; every shorter prefix asks for more bytes; bytes after the
 *    frame are left for the next one;
 *  - "invalid" vectors: decoding fails with the error and value named;
 *  - "incomplete" vectors: decoding asks for more bytes;
 *  - each file's frames, end to end, decode as one stream read in pieces of 1, 2,
 *    3, 5, 7, 13, 64 bytes and whole.
 *
 * usage: test-vectors DIR      (exits 0 with a note when DIR does not exist)
 */
#include "filter_api.c"

#include <dirent.h>

static int	failures, nvectors, nframes;

static void
fail(const char *at, const char *fmt, ...) FILTER_API_PRINTF(2, 3);

static void
fail(const char *at, const char *fmt, ...)
{
	va_list	ap;

	fprintf(stderr, "%s: ", at);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	failures++;
}

static void
hexdump(const char *what, const unsigned char *b, size_t n)
{
	size_t	i;

	fprintf(stderr, "    %s:", what);
	for (i = 0; i < n; i++)
		fprintf(stderr, " %02x", b[i]);
	fprintf(stderr, "\n");
}

static void *
xmalloc(size_t n)
{
	void	*p = malloc(n ? n : 1);

	if (p == NULL) {
		perror("malloc");
		exit(2);
	}
	return p;
}

/* ------------------------------------------------------------------------ */
/* Descriptions. */

enum vtype { V_INT, V_STR, V_LIST };

struct val {
	enum vtype	 type;
	uint64_t	 n;
	unsigned char	*s;		/* string bytes, or a list encoded as on the wire */
	size_t		 len;
	unsigned	 count;		/* list: number of strings */
};

#define MAX_FIELDS	8

struct desc {
	char		word[16];	/* kind, invalid, incomplete */
	char		what[32];	/* kind name, or error name */
	uint64_t	session;
	int		nfields;
	char		key[MAX_FIELDS][32];
	struct val	val[MAX_FIELDS];
};

struct parser {
	const char	*s;
	const char	*err;
};

static void
skip_ws(struct parser *p)
{
	while (*p->s == ' ' || *p->s == '\t' || *p->s == '\r')
		p->s++;
}

static int
word(struct parser *p, char *out, size_t size)
{
	size_t	n = 0;

	skip_ws(p);
	while (*p->s != '\0' && *p->s != ' ' && *p->s != '\t' && *p->s != '\r' &&
	    *p->s != '=') {
		if (n + 1 >= size) {
			p->err = "word too long";
			return -1;
		}
		out[n++] = *p->s++;
	}
	out[n] = '\0';
	if (n == 0) {
		p->err = "a word was expected";
		return -1;
	}
	return 0;
}

static int
number(struct parser *p, uint64_t *v)
{
	char	w[32], *end;

	if (word(p, w, sizeof(w)) == -1)
		return -1;
	errno = 0;
	if (w[0] == '0' && w[1] == 'x')
		*v = strtoull(w + 2, &end, 16);
	else
		*v = strtoull(w, &end, 10);
	if (errno != 0 || *end != '\0' || w[0] == '-' || (w[0] == '0' && w[1] == 'x' &&
	    w[2] == '\0')) {
		p->err = "bad number";
		return -1;
	}
	return 0;
}

static int
hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* A quoted string into a fresh buffer. */
static int
string(struct parser *p, unsigned char **out, size_t *len)
{
	unsigned char	*b;
	size_t		 n = 0;
	int		 h1, h2;

	skip_ws(p);
	if (*p->s != '"') {
		p->err = "a quoted string was expected";
		return -1;
	}
	p->s++;
	b = xmalloc(strlen(p->s) + 1);
	for (;;) {
		if (*p->s == '\0') {
			p->err = "unterminated string";
			free(b);
			return -1;
		}
		if (*p->s == '"') {
			p->s++;
			break;
		}
		if (*p->s != '\\') {
			b[n++] = (unsigned char)*p->s++;
			continue;
		}
		p->s++;
		switch (*p->s++) {
		case '\\': b[n++] = '\\'; break;
		case '"': b[n++] = '"'; break;
		case 'r': b[n++] = '\r'; break;
		case 'n': b[n++] = '\n'; break;
		case 't': b[n++] = '\t'; break;
		case '0': b[n++] = '\0'; break;
		case 'x':
			if ((h1 = hexval(p->s[0])) < 0 || (h2 = hexval(p->s[1])) < 0) {
				p->err = "bad \\x escape";
				free(b);
				return -1;
			}
			b[n++] = (unsigned char)(h1 << 4 | h2);
			p->s += 2;
			break;
		default:
			p->err = "unknown escape";
			free(b);
			return -1;
		}
	}
	*out = b;
	*len = n;
	return 0;
}

static int
value(struct parser *p, struct val *v)
{
	unsigned char	*s, *blob;
	size_t		 n, cap = 64;

	memset(v, 0, sizeof(*v));
	skip_ws(p);
	if (*p->s == '"') {
		v->type = V_STR;
		return string(p, &v->s, &v->len);
	}
	if (*p->s != '[') {
		v->type = V_INT;
		return number(p, &v->n);
	}
	p->s++;
	v->type = V_LIST;
	blob = xmalloc(cap);
	for (;;) {
		skip_ws(p);
		if (*p->s == ']') {
			p->s++;
			v->s = blob;
			return 0;
		}
		if (v->count > 0) {
			if (*p->s != ',') {
				p->err = "',' or ']' expected in a list";
				free(blob);
				return -1;
			}
			p->s++;
		}
		if (string(p, &s, &n) == -1) {
			free(blob);
			return -1;
		}
		if (n > 0xffff) {
			p->err = "string too long";
			free(s);
			free(blob);
			return -1;
		}
		while (v->len + 2 + n > cap)
			cap *= 2;
		if ((blob = realloc(blob, cap)) == NULL) {
			perror("realloc");
			exit(2);
		}
		blob[v->len++] = (unsigned char)(n >> 8);
		blob[v->len++] = (unsigned char)n;
		if (n > 0)
			memcpy(blob + v->len, s, n);
		v->len += n;
		v->count++;
		free(s);
	}
}

static void
desc_free(struct desc *d)
{
	int	i;

	for (i = 0; i < d->nfields; i++)
		free(d->val[i].s);
	d->nfields = 0;
}

/* The text after "# ". */
static int
parse_desc(const char *line, struct desc *d, const char **err)
{
	struct parser	p;
	char		w[16];
	int		i;

	memset(d, 0, sizeof(*d));
	p.s = line;
	p.err = NULL;
	if (word(&p, d->word, sizeof(d->word)) == -1)
		goto bad;
	if (strcmp(d->word, "kind") == 0) {
		if (word(&p, d->what, sizeof(d->what)) == -1 ||
		    word(&p, w, sizeof(w)) == -1)
			goto bad;
		if (strcmp(w, "session") != 0) {
			p.err = "'session' expected after the kind";
			goto bad;
		}
		if (number(&p, &d->session) == -1)
			goto bad;
	} else if (strcmp(d->word, "invalid") == 0) {
		if (word(&p, d->what, sizeof(d->what)) == -1)
			goto bad;
	} else if (strcmp(d->word, "incomplete") != 0) {
		p.err = "unknown vector type";
		goto bad;
	}
	for (;;) {
		skip_ws(&p);
		if (*p.s == '\0')
			break;
		if (d->nfields == MAX_FIELDS) {
			p.err = "too many fields";
			goto bad;
		}
		if (word(&p, d->key[d->nfields], sizeof(d->key[0])) == -1)
			goto bad;
		if (*p.s != '=') {
			p.err = "'=' expected after a field name";
			goto bad;
		}
		p.s++;
		for (i = 0; i < d->nfields; i++)
			if (strcmp(d->key[i], d->key[d->nfields]) == 0) {
				p.err = "field given twice";
				goto bad;
			}
		if (value(&p, &d->val[d->nfields]) == -1)
			goto bad;
		d->nfields++;
	}
	if (strcmp(d->word, "incomplete") == 0 && d->nfields != 0) {
		p.err = "nothing may follow 'incomplete'";
		goto bad;
	}
	return 0;
bad:
	*err = p.err ? p.err : "bad description";
	desc_free(d);
	return -1;
}

/* ------------------------------------------------------------------------ */
/* Frames from descriptions. */

enum slot { S_NONE, S_U16, S_U32A, S_U32B, S_U64, S_S0, S_S1, S_S2, S_S3, S_DIR,
    S_LINES };

static const struct kinddef {
	const char	*name;
	uint8_t		 kind;
	const char	*fields[5];
	enum slot	 slots[5];
} kinds[] = {
	{ "REGISTER", K_REGISTER, { "version", "hooks", "reports", "name" },
	    { S_U16, S_U32A, S_U32B, S_S0 } },
	{ "READY", K_READY, { "version", "max_frame", "timeout_ms" },
	    { S_U16, S_U32A, S_U32B } },
	{ "REFUSED", K_REFUSED, { "reason" }, { S_S0 } },
	{ "CONNECT", K_CONNECT, { "local", "remote", "hostname" }, { S_S0, S_S1, S_S2 } },
	{ "HELO", K_HELO, { "name" }, { S_S0 } },
	{ "EHLO", K_EHLO, { "name" }, { S_S0 } },
	{ "STARTTLS", K_STARTTLS, { NULL }, { S_NONE } },
	{ "AUTH", K_AUTH, { "mechanism", "user" }, { S_S0, S_S1 } },
	{ "MAIL", K_MAIL, { "address" }, { S_S0 } },
	{ "RCPT", K_RCPT, { "address" }, { S_S0 } },
	{ "DATA", K_DATA, { NULL }, { S_NONE } },
	{ "DATA_LINES", K_DATA_LINES, { "lines" }, { S_LINES } },
	{ "DATA_END", K_DATA_END, { NULL }, { S_NONE } },
	{ "EOM", K_EOM, { "size" }, { S_U64 } },
	{ "COMMIT", K_COMMIT, { "msgid" }, { S_S0 } },
	{ "ROLLBACK", K_ROLLBACK, { NULL }, { S_NONE } },
	{ "DISCONNECT", K_DISCONNECT, { NULL }, { S_NONE } },
	{ "PROTOCOL", K_PROTOCOL, { "dir", "line" }, { S_DIR, S_S0 } },
	{ "TLS", K_TLS, { "version", "cipher", "bits", "sni", "subject" },
	    { S_S0, S_S1, S_U16, S_S2, S_S3 } },
	{ "AUTH_RESULT", K_AUTH_RESULT, { "mechanism", "user", "result" },
	    { S_S0, S_S1, S_S2 } },
	{ "PROCEED", K_PROCEED, { NULL }, { S_NONE } },
	{ "REJECT", K_REJECT, { "code", "text" }, { S_U16, S_S0 } },
	{ "TEMPFAIL", K_TEMPFAIL, { "text" }, { S_S0 } },
	{ "DISCONNECT_ANSWER", K_DISCONNECT_ANSWER, { "code", "text" }, { S_U16, S_S0 } },
	{ "JUNK", K_JUNK, { NULL }, { S_NONE } },
	{ "REWRITE", K_REWRITE, { "value" }, { S_S0 } },
	{ "ADD_HEADER", K_ADD_HEADER, { "name", "value" }, { S_S0, S_S1 } },
	{ "INSERT_HEADER", K_INSERT_HEADER, { "index", "name", "value" },
	    { S_U32A, S_S0, S_S1 } },
	{ "CHANGE_HEADER", K_CHANGE_HEADER, { "index", "name", "value" },
	    { S_U32A, S_S0, S_S1 } },
	{ "REPLACE_BODY", K_REPLACE_BODY, { "chunk" }, { S_S0 } },
	{ "ADD_RCPT", K_ADD_RCPT, { "address" }, { S_S0 } },
	{ "DEL_RCPT", K_DEL_RCPT, { "address" }, { S_S0 } },
	{ "CHANGE_FROM", K_CHANGE_FROM, { "address" }, { S_S0 } },
	{ "QUARANTINE", K_QUARANTINE, { "reason" }, { S_S0 } },
	{ "DISCARD", K_DISCARD, { NULL }, { S_NONE } },
	{ "LOG", K_LOG, { "text" }, { S_S0 } },
};

/* The frame a description means; its strings point into the description. */
static int
frame_of(const struct desc *d, struct frame *f, const char **err)
{
	const struct kinddef	*k = NULL;
	const struct val	*v;
	size_t			 i;
	int			 j, used = 0;

	for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
		if (strcmp(kinds[i].name, d->what) == 0)
			k = &kinds[i];
	if (k == NULL) {
		*err = "unknown kind name";
		return -1;
	}
	memset(f, 0, sizeof(*f));
	f->kind = k->kind;
	f->sid = d->session;
	for (i = 0; i < 5 && k->fields[i] != NULL; i++) {
		for (j = 0, v = NULL; j < d->nfields; j++)
			if (strcmp(d->key[j], k->fields[i]) == 0)
				v = &d->val[j];
		if (v == NULL) {
			*err = "a field of the kind is missing";
			return -1;
		}
		used++;
		switch (k->slots[i]) {
		case S_U16:
		case S_U32A:
		case S_U32B:
		case S_U64:
			if (v->type != V_INT ||
			    (k->slots[i] == S_U16 && v->n > 0xffff) ||
			    ((k->slots[i] == S_U32A || k->slots[i] == S_U32B) &&
			    v->n > 0xffffffffu)) {
				*err = "a number field has a bad value";
				return -1;
			}
			if (k->slots[i] == S_U16)
				f->u16 = (uint16_t)v->n;
			else if (k->slots[i] == S_U32A)
				f->u32a = (uint32_t)v->n;
			else if (k->slots[i] == S_U32B)
				f->u32b = (uint32_t)v->n;
			else
				f->u64 = v->n;
			break;
		case S_S0:
		case S_S1:
		case S_S2:
		case S_S3:
			if (v->type != V_STR || v->len > 0xffff) {
				*err = "a string field has a bad value";
				return -1;
			}
			f->s[k->slots[i] - S_S0].p = v->s;
			f->s[k->slots[i] - S_S0].n = v->len;
			break;
		case S_DIR:
			if (v->type != V_STR || v->len != 1) {
				*err = "dir is a one-byte string";
				return -1;
			}
			f->dir = v->s[0];
			break;
		case S_LINES:
			if (v->type != V_LIST || v->count > 0xffff) {
				*err = "lines is a list of strings";
				return -1;
			}
			f->nlines = (uint16_t)v->count;
			f->lines = v->s;
			f->lines_len = v->len;
			break;
		case S_NONE:
			break;
		}
	}
	if (used != d->nfields) {
		*err = "a field the kind does not have";
		return -1;
	}
	return 0;
}

static int
str_eq(struct str a, struct str b)
{
	return a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0);
}

static int
frame_eq(const struct frame *a, const struct frame *b)
{
	return a->kind == b->kind && a->sid == b->sid && a->u16 == b->u16 &&
	    a->u32a == b->u32a && a->u32b == b->u32b && a->u64 == b->u64 &&
	    a->dir == b->dir && str_eq(a->s[0], b->s[0]) && str_eq(a->s[1], b->s[1]) &&
	    str_eq(a->s[2], b->s[2]) && str_eq(a->s[3], b->s[3]) &&
	    a->nlines == b->nlines &&
	    a->lines_len == b->lines_len &&
	    (a->lines_len == 0 || memcmp(a->lines, b->lines, a->lines_len) == 0);
}

/* The library's encoding of `f`, in obuf[0..olen). */
static void
encode_fresh(const struct frame *f)
{
	olen = 0;
	encode_frame(f);
}

/* ------------------------------------------------------------------------ */
/* Checking. */

static void
check_frame(const char *at, const struct desc *d, const unsigned char *b, size_t n)
{
	struct frame	 want, got;
	const char	*err;
	unsigned char	*more;
	size_t		 used = 0, k, pos;
	int		 r;

	if (frame_of(d, &want, &err) == -1) {
		fail(at, "%s", err);
		return;
	}
	nframes++;
	/* 1. The description encodes to the bytes. */
	encode_fresh(&want);
	if (olen != n || memcmp(obuf, b, n) != 0) {
		fail(at, "the description encodes differently");
		hexdump("got ", obuf, olen);
		hexdump("want", b, n);
	}
	/* Message lines also through the path the library sends them by. */
	if (want.kind == K_DATA_LINES && want.nlines > 0) {
		olen = 0;
		for (k = 0, pos = 0; k < want.nlines; k++) {
			size_t	len = (size_t)want.lines[pos] << 8 | want.lines[pos + 1];

			dl_append(want.sid, (const char *)want.lines + pos + 2, len);
			pos += 2 + len;
		}
		dl_close();
		if (olen != n || memcmp(obuf, b, n) != 0) {
			fail(at, "the lines, written one by one, encode differently");
			hexdump("got ", obuf, olen);
			hexdump("want", b, n);
		}
	}
	/* 2. The bytes decode to the description, using them all. */
	r = decode_one(b, n, &got, &used);
	if (r != 1 || used != n || !frame_eq(&got, &want)) {
		fail(at, "decoding gave %d using %zu of %zu bytes%s", r, used, n,
		    r == 1 && !frame_eq(&got, &want) ? ", not the described frame" : "");
		return;
	}
	/* 3. The decoded frame encodes to the bytes again. */
	encode_fresh(&got);
	if (olen != n || memcmp(obuf, b, n) != 0)
		fail(at, "the decoded frame encodes differently");
	/* 4. Every shorter prefix asks for more; bytes after the frame stay. */
	for (k = 0; k < n; k++)
		if ((r = decode_one(b, k, &got, &used)) != 0) {
			fail(at, "the first %zu bytes give %d, not 'more bytes'", k, r);
			break;
		}
	more = xmalloc(n + 2);
	memcpy(more, b, n);
	more[n] = more[n + 1] = 0;
	used = 0;
	if (decode_one(more, n + 2, &got, &used) != 1 || used != n)
		fail(at, "with trailing bytes, %zu bytes used instead of %zu", used, n);
	free(more);
}

static void
check_invalid(const char *at, const struct desc *d, const unsigned char *b, size_t n)
{
	struct frame	f;
	size_t		used = 0;
	int		r, want;
	uint64_t	value;
	const char	*key;

	if (strcmp(d->what, "bad-length") == 0) {
		want = DEC_BAD_LENGTH;
		key = "length";
	} else if (strcmp(d->what, "unknown-kind") == 0) {
		want = DEC_UNKNOWN_KIND;
		key = "kind";
	} else if (strcmp(d->what, "bad-payload") == 0) {
		want = DEC_BAD_PAYLOAD;
		key = "kind";
	} else {
		fail(at, "unknown error %s", d->what);
		return;
	}
	if (d->nfields != 1 || strcmp(d->key[0], key) != 0 || d->val[0].type != V_INT) {
		fail(at, "invalid %s takes exactly %s=N", d->what, key);
		return;
	}
	value = d->val[0].n;
	memset(&f, 0, sizeof(f));
	r = decode_one(b, n, &f, &used);
	if (r != want) {
		fail(at, "decoding gave %d, want %d (%s)", r, want, d->what);
		return;
	}
	if (want == DEC_BAD_LENGTH) {
		uint64_t	len = (uint64_t)b[0] << 24 | (uint64_t)b[1] << 16 |
				    (uint64_t)b[2] << 8 | b[3];

		if (len != value)
			fail(at, "bad length %" PRIu64 ", want %" PRIu64, len, value);
		/* Told from the length field alone. */
		if (decode_one(b, 4, &f, &used) != DEC_BAD_LENGTH)
			fail(at, "the bad length is not told from the first 4 bytes");
	} else if (f.kind != value)
		fail(at, "error for kind 0x%02x, want 0x%02" PRIx64, f.kind, value);
}

static void
check_incomplete(const char *at, const unsigned char *b, size_t n)
{
	struct frame	f;
	size_t		used;
	int		r;

	if ((r = decode_one(b, n, &f, &used)) != 0)
		fail(at, "decoding gave %d, want 'more bytes'", r);
}

/* The frames of a file end to end, read in pieces: the same frames, in order. */
static void
check_stream(const char *file, const unsigned char *wire, size_t wlen,
    const size_t *ends, int count)
{
	static const size_t	 chunks[] = { 1, 2, 3, 5, 7, 13, 64, 0 };
	unsigned char		*buf = xmalloc(wlen);
	struct frame		 f;
	size_t			 c, have, off, used, step, start;
	int			 i, r;

	for (c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
		step = chunks[c] ? chunks[c] : wlen;
		have = off = 0;
		i = 0;
		while (have < wlen || off < have) {
			if (have < wlen) {
				size_t	n = wlen - have < step ? wlen - have : step;

				memcpy(buf + have, wire + have, n);
				have += n;
			}
			while ((r = decode_one(buf + off, have - off, &f, &used)) == 1) {
				start = i == 0 ? 0 : ends[i - 1];
				encode_fresh(&f);
				if (i >= count || off != start || used != ends[i] - start ||
				    olen != used || memcmp(obuf, wire + start, used) != 0) {
					fail(file, "stream in pieces of %zu: frame %d differs",
					    step, i);
					goto next;
				}
				off += used;
				i++;
			}
			if (r != 0) {
				fail(file, "stream in pieces of %zu: error %d at byte %zu", step,
				    r, off);
				goto next;
			}
			if (have == wlen && off < have) {
				fail(file, "stream in pieces of %zu: %zu bytes left", step,
				    have - off);
				goto next;
			}
		}
		if (i != count)
			fail(file, "stream in pieces of %zu: %d frames, want %d", step, i,
			    count);
next:
		;
	}
	free(buf);
}

/* ------------------------------------------------------------------------ */
/* Files. */

struct pending {
	int		 active;
	char		 at[300];
	char		*line;
	unsigned char	*bytes;
	size_t		 n, cap;
	int		 odd;		/* a hex digit waiting for its pair */
	int		 bad;
};

static unsigned char	*wire;
static size_t		 wire_len, wire_cap;
static size_t		*ends;
static int		 nends, ends_cap;

static void
finish_vector(struct pending *v)
{
	struct desc	 d;
	const char	*err;

	if (!v->active)
		return;
	v->active = 0;
	nvectors++;
	if (v->bad || v->odd >= 0) {
		fail(v->at, v->bad ? "bad hex digit" : "odd number of hex digits");
		goto out;
	}
	if (parse_desc(v->line, &d, &err) == -1) {
		fail(v->at, "bad description: %s", err);
		goto out;
	}
	if (v->n == 0 && strcmp(d.word, "kind") != 0) {
		fail(v->at, "no bytes");
	} else if (strcmp(d.word, "kind") == 0) {
		check_frame(v->at, &d, v->bytes, v->n);
		while (wire_len + v->n > wire_cap) {
			wire_cap = wire_cap ? wire_cap * 2 : 4096;
			if ((wire = realloc(wire, wire_cap)) == NULL)
				exit(2);
		}
		if (v->n > 0)
			memcpy(wire + wire_len, v->bytes, v->n);
		wire_len += v->n;
		if (nends == ends_cap) {
			ends_cap = ends_cap ? ends_cap * 2 : 64;
			if ((ends = realloc(ends, (size_t)ends_cap * sizeof(*ends))) == NULL)
				exit(2);
		}
		ends[nends++] = wire_len;
	} else if (strcmp(d.word, "invalid") == 0)
		check_invalid(v->at, &d, v->bytes, v->n);
	else
		check_incomplete(v->at, v->bytes, v->n);
	desc_free(&d);
out:
	free(v->line);
	v->line = NULL;
}

static void
add_hex(struct pending *v, const char *s)
{
	int	h;

	for (; *s != '\0'; s++) {
		if (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')
			continue;
		if ((h = hexval(*s)) < 0) {
			v->bad = 1;
			continue;
		}
		if (v->odd < 0) {
			v->odd = h;
			continue;
		}
		if (v->n == v->cap) {
			v->cap = v->cap ? v->cap * 2 : 256;
			if ((v->bytes = realloc(v->bytes, v->cap)) == NULL)
				exit(2);
		}
		v->bytes[v->n++] = (unsigned char)(v->odd << 4 | h);
		v->odd = -1;
	}
}

static int
blank(const char *s)
{
	for (; *s != '\0'; s++)
		if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\n')
			return 0;
	return 1;
}

static void
replay_file(const char *dir, const char *name)
{
	char		 path[1024], *line = NULL, *nl;
	FILE		*fp;
	struct pending	 v;
	size_t		 cap = 0;
	ssize_t		 len;
	int		 lineno = 0;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	if ((fp = fopen(path, "r")) == NULL) {
		fail(path, "%s", strerror(errno));
		return;
	}
	memset(&v, 0, sizeof(v));
	wire_len = 0;
	nends = 0;
	while ((len = getline(&line, &cap, fp)) != -1) {
		lineno++;
		if ((nl = strchr(line, '\n')) != NULL)
			*nl = '\0';
		if (blank(line))
			continue;
		if (strncmp(line, "# kind ", 7) == 0 || strncmp(line, "# invalid ", 10) == 0 ||
		    strncmp(line, "# incomplete", 12) == 0) {
			finish_vector(&v);
			v.active = 1;
			snprintf(v.at, sizeof(v.at), "%s:%d", name, lineno);
			v.line = strdup(line + 2);
			v.n = 0;
			v.odd = -1;
			v.bad = 0;
			if (v.line == NULL)
				exit(2);
			continue;
		}
		if (line[0] == '#')
			continue;
		if (!v.active) {
			char	at[300];

			snprintf(at, sizeof(at), "%s:%d", name, lineno);
			fail(at, "hex digits outside a vector");
			continue;
		}
		add_hex(&v, line);
	}
	finish_vector(&v);
	free(v.bytes);
	free(line);
	fclose(fp);
	if (nends > 0)
		check_stream(name, wire, wire_len, ends, nends);
}

static int
by_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int
main(int argc, char **argv)
{
	DIR		*d;
	struct dirent	*e;
	char		**names = NULL;
	size_t		 n = 0, i, len;

	if (argc != 2) {
		fprintf(stderr, "usage: test-vectors DIR\n");
		return 2;
	}
	if ((d = opendir(argv[1])) == NULL) {
		printf("test-vectors: no %s (%s): skipped\n", argv[1], strerror(errno));
		return 0;
	}
	while ((e = readdir(d)) != NULL) {
		len = strlen(e->d_name);
		if (len < 5 || strcmp(e->d_name + len - 4, ".hex") != 0)
			continue;
		if ((names = realloc(names, (n + 1) * sizeof(*names))) == NULL ||
		    (names[n++] = strdup(e->d_name)) == NULL)
			exit(2);
	}
	closedir(d);
	if (n == 0) {
		fprintf(stderr, "test-vectors: no .hex file in %s\n", argv[1]);
		return 1;
	}
	qsort(names, n, sizeof(*names), by_name);
	for (i = 0; i < n; i++) {
		replay_file(argv[1], names[i]);
		free(names[i]);
	}
	free(names);
	free(wire);
	free(ends);
	printf("test-vectors: %zu files, %d vectors (%d frames), %d failures\n", n,
	    nvectors, nframes, failures);
	return failures ? 1 : 0;
}
