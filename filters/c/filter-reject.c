/*
 * filter-reject: refuses mail from the senders given as arguments (550 5.7.1) and
 * replaces a word in the body of the other messages.
 *
 * usage: filter-reject [-w word=replacement] sender ...
 *
 * A sender is an address (compared without regard to case), "@domain" for every
 * address of a domain, or "<>" for the null sender.  With -w, each occurrence of
 * `word` in the body (not in the header section) becomes `replacement`, and the
 * message gets a header "X-Filter-Reject: N replacement(s)".
 */
#include "filter_api.h"

#include <inttypes.h>
#include <strings.h>

static char	**senders;
static int	  nsenders;
static char	 *word, *replacement;

/* Per session: where the message is, and what was done to it. */
struct msg {
	int		in_body;
	unsigned	replaced;
};

static int
matches(const struct mailaddr *a, const char *pattern)
{
	if (strcmp(pattern, "<>") == 0)
		return a->user[0] == '\0' && a->domain[0] == '\0';
	if (pattern[0] == '@')
		return a->domain[0] != '\0' && strcasecmp(a->domain, pattern + 1) == 0;
	return strcasecmp(filter_api_mailaddr_to_text(a), pattern) == 0;
}

static int
on_mail(uint64_t id, struct mailaddr *a)
{
	char	text[300];
	int	i;

	for (i = 0; i < nsenders; i++)
		if (matches(a, senders[i])) {
			snprintf(text, sizeof(text), "5.7.1 Sender <%s> rejected by filter",
			    filter_api_mailaddr_to_text(a));
			log_info("session %016" PRIx64 ": sender <%s> rejected", id,
			    filter_api_mailaddr_to_text(a));
			filter_api_reject(id, 550, text);
			return 0;
		}
	return 1;
}

static struct msg *
msg_of(uint64_t id)
{
	struct msg	*m = filter_api_session_get(id);

	if (m == NULL) {
		if ((m = calloc(1, sizeof(*m))) == NULL)
			fatal("filter-reject: calloc");
		filter_api_session_set(id, m);
	}
	return m;
}

static void
on_dataline(uint64_t id, const char *line)
{
	struct msg	*m = msg_of(id);
	const char	*p, *hit;
	char		*out, *o;
	size_t		 wl, rl, n;

	if (!m->in_body || word == NULL || strstr(line, word) == NULL) {
		if (line[0] == '\0')
			m->in_body = 1;
		filter_api_writeln(id, line);
		return;
	}
	wl = strlen(word);
	rl = strlen(replacement);
	for (n = 0, p = line; (hit = strstr(p, word)) != NULL; p = hit + wl)
		n++;
	if ((out = malloc(strlen(line) + n * rl + 1)) == NULL)
		fatal("filter-reject: malloc");
	for (o = out, p = line; (hit = strstr(p, word)) != NULL; p = hit + wl) {
		memcpy(o, p, (size_t)(hit - p));
		o += hit - p;
		memcpy(o, replacement, rl);
		o += rl;
	}
	strcpy(o, p);
	m->replaced += (unsigned)n;
	/* A line grown past 65535 bytes cannot be sent: the library refuses the message. */
	filter_api_writeln(id, out);
	free(out);
}

static int
on_eom(uint64_t id, size_t size)
{
	struct msg	*m = filter_api_session_get(id);
	char		 value[64];

	(void)size;
	if (m != NULL) {
		if (m->replaced > 0) {
			snprintf(value, sizeof(value), "%u replacement%s", m->replaced,
			    m->replaced == 1 ? "" : "s");
			filter_api_header_add(id, "X-Filter-Reject", value);
		}
		/* The next message of the session starts afresh. */
		filter_api_session_set(id, NULL);
		free(m);
	}
	return 1;
}

static void
on_disconnect(uint64_t id)
{
	free(filter_api_session_get(id));
}

static void
usage(void)
{
	log_warnx("usage: filter-reject [-w word=replacement] sender ...");
	exit(1);
}

int
main(int argc, char **argv)
{
	int	 ch;
	char	*eq;

	log_init(0);
	while ((ch = getopt(argc, argv, "w:")) != -1) {
		switch (ch) {
		case 'w':
			if ((eq = strchr(optarg, '=')) == NULL || eq == optarg)
				usage();
			*eq = '\0';
			word = optarg;
			replacement = eq + 1;
			break;
		default:
			usage();
		}
	}
	senders = argv + optind;
	nsenders = argc - optind;
	if (nsenders == 0 && word == NULL)
		usage();
	filter_api_set_name("reject");
	filter_api_on_mail(on_mail);
	if (word != NULL) {
		filter_api_on_dataline(on_dataline);
		filter_api_on_eom(on_eom);
		filter_api_on_disconnect(on_disconnect);
	}
	if (filter_api_loop() == -1)
		return 1;
	return 0;
}
