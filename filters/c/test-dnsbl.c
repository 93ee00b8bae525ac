/*
 * test-dnsbl: the DNS code of filter-dnsbl.c (white-box: the program is included whole,
 * its main renamed).  A query and its answers; every truncation of an answer, every
 * byte of it changed, compression loops and random bytes must be refused or read
 * within bounds (run under ASan and UBSan by `make check` when the compiler has them).
 */
#define main	dnsbl_main
#include "filter-dnsbl.c"
#undef main

static int	failures, checks;

#define CHECK(c) do {							\
	checks++;							\
	if (!(c)) {							\
		fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__,	\
		    __LINE__, #c);					\
		failures++;						\
	}								\
} while (0)

/* An answer to query `q` (n bytes) with rcode and one record of `type`. */
static size_t
answer(unsigned char *m, const unsigned char *q, size_t n, int rcode, uint16_t type,
    const unsigned char *rdata, size_t rdlen)
{
	memcpy(m, q, n);
	m[2] = 0x81;
	m[3] = (unsigned char)(0x80 | rcode);
	if (rdata == NULL)
		return n;
	m[7] = 1;
	m[n++] = 0xc0;
	m[n++] = 12;
	m[n++] = type >> 8;
	m[n++] = type & 0xff;
	memcpy(m + n, "\0\1\0\0\0\74", 6);
	n += 6;
	m[n++] = (unsigned char)(rdlen >> 8);
	m[n++] = rdlen & 0xff;
	memcpy(m + n, rdata, rdlen);
	return n + rdlen;
}

int
main(void)
{
	unsigned char	 q[512], m[1024], bad[1024];
	char		 text[MAX_REASON + 1];
	struct query	 qa, qt;
	size_t		 n, an, k;
	uint32_t	 x = 12345;
	int		 i, j;

	memset(&qa, 0, sizeof(qa));
	qa.id = 0x1234;
	qa.qtype = T_A;
	strcpy(qa.name, "2.0.0.127.bl.test");
	qt = qa;
	qt.qtype = T_TXT;

	n = make_query(q, sizeof(q), qa.id, qa.name, T_A);
	CHECK(n == 12 + 19 + 4);
	an = answer(m, q, n, 0, T_A, (const unsigned char *)"\177\0\0\2", 4);
	CHECK(parse(m, an, &qa, text, sizeof(text)) == R_LISTED);
	an = answer(m, q, n, 0, T_A, (const unsigned char *)"\177\377\377\1", 4);
	CHECK(parse(m, an, &qa, text, sizeof(text)) == R_NONE);
	CHECK(parse(m, answer(m, q, n, 3, 0, NULL, 0), &qa, text, sizeof(text)) == R_NONE);
	CHECK(parse(m, answer(m, q, n, 2, 0, NULL, 0), &qa, text, sizeof(text)) == R_FAIL);
	qa.id++;
	CHECK(parse(m, an, &qa, text, sizeof(text)) == -1);	/* another id */
	qa.id--;

	n = make_query(q, sizeof(q), qt.id, qt.name, T_TXT);
	an = answer(m, q, n, 0, T_TXT, (const unsigned char *)"\6Listed\3\tby", 11);
	CHECK(parse(m, an, &qt, text, sizeof(text)) == R_TEXT);
	CHECK(strcmp(text, "Listed by") == 0);

	/* Every truncation, every byte changed: refused or read within bounds. */
	for (k = 0; k < an; k++)
		CHECK(parse(m, k, &qt, text, sizeof(text)) == -1);
	for (k = 0; k < an; k++)
		for (j = 0; j < 256; j += 7) {
			memcpy(bad, m, an);
			bad[k] = (unsigned char)j;
			(void)parse(bad, an, &qt, text, sizeof(text));
		}
	/* A name that points at itself. */
	memcpy(bad, m, 12);
	bad[12] = 0xc0;
	bad[13] = 12;
	CHECK(parse(bad, 14 + 4, &qt, text, sizeof(text)) == -1);
	/* Random bytes behind a right header. */
	for (i = 0; i < 20000; i++) {
		memcpy(bad, m, 12);
		for (k = 12; k < sizeof(bad); k++) {
			x = x * 1103515245 + 12345;
			bad[k] = (unsigned char)(x >> 16);
		}
		(void)parse(bad, 12 + (x >> 8) % (sizeof(bad) - 12), &qt, text, sizeof(text));
	}
	/* Names that cannot be asked. */
	CHECK(make_query(q, sizeof(q), 1, "a..b", T_A) == 0);
	memset(text, 'a', 64);
	text[64] = '\0';
	CHECK(make_query(q, sizeof(q), 1, text, T_A) == 0);

	printf("test-dnsbl: %d checks, %d failures\n", checks, failures);
	return failures ? 1 : 0;
}
