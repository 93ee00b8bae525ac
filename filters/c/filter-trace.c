/*
 * filter-trace: prints every event it sees, with its parameters, on standard error
 * (which smtpd logs as "filter NAME: ..."), and lets everything through.  The lines
 * are those of the Rust filters/examples/src/bin/filter-trace.rs.
 */
#include "filter_api.h"

#include <inttypes.h>

static int
on_connect(uint64_t id, struct filter_connect *c)
{
	log_info("%016" PRIx64 " connect local=%s remote=%s hostname=%s", id,
	    c->local_text, c->remote_text, c->hostname);
	return 1;
}

static int
on_helo(uint64_t id, const char *helo)
{
	log_info("%016" PRIx64 " helo %s", id, helo);
	return 1;
}

static int
on_ehlo(uint64_t id, const char *helo)
{
	log_info("%016" PRIx64 " ehlo %s", id, helo);
	return 1;
}

static int
on_auth(uint64_t id, const char *mechanism, const char *user)
{
	log_info("%016" PRIx64 " auth mechanism=%s user=%s", id, mechanism, user);
	return 1;
}

/* The address as the daemon sent it (the struct cannot tell "a" from "a@"). */
static const char *
address(uint64_t id, struct mailaddr *a)
{
	const char	*raw = filter_api_param(id);

	return raw ? raw : filter_api_mailaddr_to_text(a);
}

static int
on_mail(uint64_t id, struct mailaddr *a)
{
	log_info("%016" PRIx64 " mail <%s>", id, address(id, a));
	return 1;
}

static int
on_rcpt(uint64_t id, struct mailaddr *a)
{
	log_info("%016" PRIx64 " rcpt <%s>", id, address(id, a));
	return 1;
}

static int
on_data(uint64_t id)
{
	log_info("%016" PRIx64 " data", id);
	return 1;
}

static void
on_dataline(uint64_t id, const char *line)
{
	log_info("%016" PRIx64 " data-line %s", id, line);
	filter_api_writeln(id, line);
}

static int
on_eom(uint64_t id, size_t size)
{
	log_info("%016" PRIx64 " eom size=%zu", id, size);
	return 1;
}

static void
on_commit(uint64_t id)
{
	const char	*msgid = filter_api_msgid(id);

	log_info("%016" PRIx64 " commit %s", id, msgid ? msgid : "");
}

static void
on_rollback(uint64_t id)
{
	log_info("%016" PRIx64 " rollback", id);
}

static void
on_disconnect(uint64_t id)
{
	log_info("%016" PRIx64 " disconnect", id);
}

static void
on_tls(uint64_t id, struct filter_tls *t)
{
	log_info("%016" PRIx64 " tls version=%s cipher=%s bits=%u sni=%s subject=%s", id,
	    t->version, t->cipher, t->bits, t->sni, t->subject);
}

static void
on_auth_result(uint64_t id, const char *mechanism, const char *user,
    const char *result)
{
	log_info("%016" PRIx64 " auth-result mechanism=%s user=%s result=%s", id,
	    mechanism, user, result);
}

int
main(int argc, char **argv)
{
	int	ch;

	log_init(0);
	while ((ch = getopt(argc, argv, "")) != -1) {
		log_warnx("usage: filter-trace");
		return 1;
	}
	if (argc != optind) {
		log_warnx("usage: filter-trace");
		return 1;
	}
	filter_api_set_name("trace");
	filter_api_on_connect(on_connect);
	filter_api_on_helo(on_helo);
	filter_api_on_ehlo(on_ehlo);
	filter_api_on_auth(on_auth);
	filter_api_on_mail(on_mail);
	filter_api_on_rcpt(on_rcpt);
	filter_api_on_data(on_data);
	filter_api_on_dataline(on_dataline);
	filter_api_on_eom(on_eom);
	filter_api_on_commit(on_commit);
	filter_api_on_rollback(on_rollback);
	filter_api_on_disconnect(on_disconnect);
	filter_api_on_tls(on_tls);
	filter_api_on_auth_result(on_auth_result);
	return filter_api_loop() == 0 ? 0 : 1;
}
