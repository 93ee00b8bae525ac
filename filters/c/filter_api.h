/*
 * filter_api.h: write smtpd filters in C.
 *
 * A filter is a program that smtpd starts (`filter NAME proc-exec "COMMAND"` in
 * smtpd.conf) and talks to over its standard input and output, in the binary
 * protocol of filters/api/src/codec.rs.  This library speaks that protocol: register
 * callbacks for the events you want, then call filter_api_loop().
 *
 *	static int
 *	on_mail(uint64_t id, struct mailaddr *a)
 *	{
 *		if (strcmp(a->domain, "spammer.example") == 0)
 *			return filter_api_reject(id, 550, "5.7.1 go away"), 0;
 *		return 1;
 *	}
 *
 *	int
 *	main(void)
 *	{
 *		log_init(-1);
 *		filter_api_on_mail(on_mail);
 *		return filter_api_loop() == 0 ? 0 : 1;
 *	}
 *
 * See filters/c/README.md for the whole interface.  C99, libc only, single-threaded.
 */
#ifndef FILTER_API_H
#define FILTER_API_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define FILTER_API_PRINTF(f, a)	__attribute__((__format__(__printf__, f, a)))
#define FILTER_API_DEAD		__attribute__((__noreturn__))
#else
#define FILTER_API_PRINTF(f, a)
#define FILTER_API_DEAD
#endif

/* Version of the filter protocol this library speaks. */
#define FILTER_API_PROTOCOL_VERSION	1

/* Sizes of the text buffers handed to callbacks (NUL included). */
#define SMTPD_MAXLOCALPARTSIZE		(255 + 1)
#define SMTPD_MAXDOMAINPARTSIZE		(255 + 1)
#define FILTER_API_MAXHOSTNAME		(255 + 1)
#define FILTER_API_MAXADDRTEXT		(127 + 1)
#define FILTER_API_MAXMSGID		(63 + 1)

/* Longest message line the daemon takes back from a filter (RFC 5321 text line). */
#define FILTER_API_MAXLINE		65535

/* An envelope address, split at its last '@' (both empty for the null sender <>). */
struct mailaddr {
	char	user[SMTPD_MAXLOCALPARTSIZE];
	char	domain[SMTPD_MAXDOMAINPARTSIZE];
};

/* What a connect event tells. */
struct filter_connect {
	/* Parsed from "ip:port", "[v6]:port"; AF_UNIX for "local"; AF_UNSPEC else. */
	struct sockaddr_storage	local;
	struct sockaddr_storage	remote;
	/* The client's resolved host name, or "". */
	char			hostname[FILTER_API_MAXHOSTNAME];
	/* The daemon's own text for both addresses (e.g. "127.0.0.1:25", "local"). */
	char			local_text[FILTER_API_MAXADDRTEXT];
	char			remote_text[FILTER_API_MAXADDRTEXT];
};

/* What a TLS report tells; the strings are valid during the callback only. */
struct filter_tls {
	const char	*version;	/* "TLSv1.2" or "TLSv1.3" */
	const char	*cipher;	/* the cipher suite's IANA name */
	unsigned int	 bits;		/* its key length in bits */
	const char	*sni;		/* the server name the client asked for, or "" */
	const char	*subject;	/* the verified client certificate's subject, or "" */
};

/* Returned by a callback of an answered event: the answer will come later. */
#define FILTER_API_LATER	2

/* Events of filter_api_fd(). */
#define FILTER_API_READ		0x1
#define FILTER_API_WRITE	0x2

/* For filter_api_reject_code(), as in OpenSMTPD. */
enum filter_status {
	FILTER_OK,
	FILTER_FAIL,
	FILTER_CLOSE
};

/*
 * Callbacks.  The ones returning int answer the event: 1 lets it through, 0 refuses
 * it with "550 5.7.1 Rejected by filter" (at AUTH: "535 5.7.8 Authentication
 * refused by filter") -- unless the callback already answered
 * with one of the answer functions below, in which case the return value is ignored.
 * FILTER_API_LATER answers nothing now: the filter answers that session's event
 * later, with an answer function called from another callback (a descriptor, a
 * timer or another session's event), before the daemon's deadline.
 * Registering a callback again replaces the previous one; NULL removes it.
 */
void	filter_api_on_connect(int (*)(uint64_t, struct filter_connect *));
void	filter_api_on_helo(int (*)(uint64_t, const char *));
void	filter_api_on_ehlo(int (*)(uint64_t, const char *));
/* The client's credentials were accepted: mechanism, user (never the password). */
void	filter_api_on_auth(int (*)(uint64_t, const char *, const char *));
void	filter_api_on_mail(int (*)(uint64_t, struct mailaddr *));
void	filter_api_on_rcpt(int (*)(uint64_t, struct mailaddr *));
void	filter_api_on_data(int (*)(uint64_t));
void	filter_api_on_dataline(void (*)(uint64_t, const char *));
void	filter_api_on_dataend(void (*)(uint64_t));
void	filter_api_on_eom(int (*)(uint64_t, size_t));
void	filter_api_on_commit(void (*)(uint64_t));
void	filter_api_on_rollback(void (*)(uint64_t));
void	filter_api_on_disconnect(void (*)(uint64_t));
/* Reports: the TLS handshake completed; an AUTH exchange ended (mechanism, user,
 * result: "ok", "permfail" or "tempfail"). */
void	filter_api_on_tls(void (*)(uint64_t, struct filter_tls *));
void	filter_api_on_auth_result(void (*)(uint64_t, const char *, const char *,
	    const char *));

/* The name the filter registers under (default: the program's name). */
void	filter_api_set_name(const char *);

/*
 * Registers, waits for the daemon's READY, then serves events until the daemon
 * closes the connection: returns 0 then, -1 on a refusal, an I/O or protocol error
 * (logged).
 */
int	filter_api_loop(void);

/*
 * The filter's own work, served by filter_api_loop() beside the daemon's pipe.
 * filter_api_fd: calls cb(fd, ready events, arg) when `fd` is ready for `events`
 * (FILTER_API_READ, FILTER_API_WRITE or both; 0 removes the watch, a second call
 * replaces it); 0, or -1.  filter_api_timer: calls cb(id, arg) once, `ms`
 * milliseconds from now; returns the timer's id (> 0), or -1.
 * filter_api_timer_cancel: 0 if the timer was pending, -1 if not (already run).
 */
int	filter_api_fd(int, int, void (*)(int, int, void *), void *);
int	filter_api_timer(unsigned int, void (*)(int, void *), void *);
int	filter_api_timer_cancel(int);

/*
 * Answers, from inside the callback of the event being answered (id = its session),
 * or later for an event whose callback returned FILTER_API_LATER (then the answer is
 * sent at once).  Each returns 0, or -1 (and answers nothing) when called out of
 * place, for another session, a second time, or with an invalid value; an answer for
 * a session that ended while it was pending returns -1 and is dropped without a
 * warning.  Texts are cut at 400 bytes and
 * control characters become spaces; a text may begin with an enhanced status code.
 */
int	filter_api_accept(uint64_t);
int	filter_api_reject(uint64_t, uint32_t, const char *);
int	filter_api_reject_code(uint64_t, enum filter_status, uint32_t, const char *);
int	filter_api_tempfail(uint64_t, const char *);
int	filter_api_disconnect(uint64_t, uint32_t, const char *);
int	filter_api_junk(uint64_t);
int	filter_api_rewrite(uint64_t, const char *);
int	filter_api_discard(uint64_t);

/* Message lines: pass a line on (from the dataline or dataend callback). */
int	filter_api_writeln(uint64_t, const char *);

/*
 * End-of-message edits, from inside the eom callback or, when it returned
 * FILTER_API_LATER, before its answer; applied if the message passes.
 */
int	filter_api_header_add(uint64_t, const char *, const char *);
int	filter_api_header_insert(uint64_t, uint32_t, const char *, const char *);
int	filter_api_header_change(uint64_t, uint32_t, const char *, const char *);
int	filter_api_header_delete(uint64_t, uint32_t, const char *);
int	filter_api_body_replace(uint64_t, const char *);
int	filter_api_rcpt_add(uint64_t, const char *);
int	filter_api_rcpt_del(uint64_t, const char *);
int	filter_api_mailfrom_change(uint64_t, const char *);
int	filter_api_quarantine(uint64_t, const char *);

/*
 * The parameter of the event being answered exactly as the daemon sent it (HELO or
 * EHLO name, MAIL or RCPT address, AUTH user), else NULL.
 */
const char	*filter_api_param(uint64_t);

/* The id of the message just committed (in the commit callback), else NULL. */
const char	*filter_api_msgid(uint64_t);

/* Per-session data, forgotten after the disconnect callback (which may free it). */
int	 filter_api_session_set(uint64_t, void *);
void	*filter_api_session_get(uint64_t);

/* Helpers; both return a static buffer. */
const char	*filter_api_sockaddr_to_text(const struct sockaddr *);
const char	*filter_api_mailaddr_to_text(const struct mailaddr *);

/* Logging to standard error, which smtpd logs as "filter NAME: LINE". */
void	log_init(int);
void	log_verbose(int);
void	log_warn(const char *, ...) FILTER_API_PRINTF(1, 2);
void	log_warnx(const char *, ...) FILTER_API_PRINTF(1, 2);
void	log_info(const char *, ...) FILTER_API_PRINTF(1, 2);
void	log_debug(const char *, ...) FILTER_API_PRINTF(1, 2);
void	fatal(const char *, ...) FILTER_API_PRINTF(1, 2) FILTER_API_DEAD;
void	fatalx(const char *, ...) FILTER_API_PRINTF(1, 2) FILTER_API_DEAD;

#ifdef __cplusplus
}
#endif

#endif /* FILTER_API_H */
