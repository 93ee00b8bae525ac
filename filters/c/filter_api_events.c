/*
 * filter_api_events.c: the filter's own work in the loop of filter_api_loop().
 *
 * A filter that looks something up (a DNS query, a socket to a service) registers
 * the descriptor it waits on with filter_api_fd() and its deadlines with
 * filter_api_timer(); the loop polls them beside the daemon's pipe, so the filter
 * answers an event later (FILTER_API_LATER) without a thread and without stopping
 * the other sessions.  Single-threaded: call these from the filter's own thread.
 */
#include "filter_api.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <time.h>

/* Internal, for filter_api.c: one turn of the loop (see there). */
int	filter_api_events_wait(int);

struct watch {
	int	  fd;
	int	  events;	/* FILTER_API_READ | FILTER_API_WRITE */
	void	(*cb)(int, int, void *);
	void	 *arg;
};

struct timer {
	int		 id;
	uint64_t	 due;		/* milliseconds, monotonic */
	uint64_t	 round;		/* the turn it was set in */
	void		(*cb)(int, void *);
	void		*arg;
};

static struct watch	*watches;
static size_t		 nwatches, capwatches;
static struct timer	*timers;
static size_t		 ntimers, captimers;
static int		 next_id;
static uint64_t		 turn;
static struct pollfd	*pfds;
static size_t		 cappfds;

static uint64_t
now_ms(void)
{
	struct timespec	ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) == -1)
		return 0;
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Grows `*p` (of `*cap` items of `size` bytes) to hold `want`; -1 if it cannot. */
static int
grow(void **p, size_t *cap, size_t want, size_t size)
{
	void	*q;
	size_t	 n;

	if (want <= *cap)
		return 0;
	n = *cap ? *cap * 2 : 16;
	while (n < want)
		n *= 2;
	if ((q = realloc(*p, n * size)) == NULL) {
		log_warn("filter_api: events");
		return -1;
	}
	*p = q;
	*cap = n;
	return 0;
}

int
filter_api_fd(int fd, int events, void (*cb)(int, int, void *), void *arg)
{
	size_t	i;

	if (fd < 0 || (events & ~(FILTER_API_READ | FILTER_API_WRITE)) != 0 ||
	    (events != 0 && cb == NULL)) {
		log_warnx("filter_api: fd: invalid arguments");
		return -1;
	}
	for (i = 0; i < nwatches; i++)
		if (watches[i].fd == fd)
			break;
	if (events == 0) {
		if (i == nwatches)
			return -1;
		watches[i] = watches[--nwatches];
		return 0;
	}
	if (i == nwatches) {
		if (grow((void **)&watches, &capwatches, nwatches + 1,
		    sizeof(*watches)) == -1)
			return -1;
		nwatches++;
	}
	watches[i].fd = fd;
	watches[i].events = events;
	watches[i].cb = cb;
	watches[i].arg = arg;
	return 0;
}

int
filter_api_timer(unsigned int ms, void (*cb)(int, void *), void *arg)
{
	struct timer	*t;
	size_t		 i;

	if (cb == NULL) {
		log_warnx("filter_api: timer: no callback");
		return -1;
	}
	if (grow((void **)&timers, &captimers, ntimers + 1, sizeof(*timers)) == -1)
		return -1;
	/* Ids are positive and unique among the timers set. */
	for (;;) {
		next_id = next_id == INT_MAX ? 1 : next_id + 1;
		for (i = 0; i < ntimers; i++)
			if (timers[i].id == next_id)
				break;
		if (i == ntimers)
			break;
	}
	t = &timers[ntimers++];
	t->id = next_id;
	t->due = now_ms() + ms;
	t->round = turn;
	t->cb = cb;
	t->arg = arg;
	return t->id;
}

int
filter_api_timer_cancel(int id)
{
	size_t	i;

	for (i = 0; i < ntimers; i++)
		if (timers[i].id == id) {
			timers[i] = timers[--ntimers];
			return 0;
		}
	return -1;
}

/* Runs the timers due, those set before this turn only (a 0 ms timer waits a turn). */
static void
run_timers(void)
{
	struct timer	t;
	uint64_t	now = now_ms();
	size_t		i;

	for (i = 0; i < ntimers;) {
		if (timers[i].due > now || timers[i].round == turn) {
			i++;
			continue;
		}
		t = timers[i];
		timers[i] = timers[--ntimers];
		t.cb(t.id, t.arg);
		i = 0;	/* the callback may have set or cancelled timers */
	}
}

/* Milliseconds until the first timer, -1 if none (poll's "forever"). */
static int
poll_timeout(void)
{
	uint64_t	now = now_ms(), first = UINT64_MAX;
	size_t		i;

	for (i = 0; i < ntimers; i++)
		if (timers[i].due < first)
			first = timers[i].due;
	if (first == UINT64_MAX)
		return -1;
	if (first <= now)
		return 0;
	return first - now > INT_MAX ? INT_MAX : (int)(first - now);
}

/*
 * One turn: waits for the daemon's pipe `in_fd`, the registered descriptors and the
 * first timer; runs the callbacks of what is ready and the timers due.  Returns 1 if
 * `in_fd` can be read, 0 if not (yet), -1 on an error of poll().
 */
int
filter_api_events_wait(int in_fd)
{
	size_t	i, j, n;
	int	r, revents;

	turn++;
	n = nwatches + 1;
	if (grow((void **)&pfds, &cappfds, n, sizeof(*pfds)) == -1)
		return -1;
	pfds[0].fd = in_fd;
	pfds[0].events = POLLIN;
	pfds[0].revents = 0;
	for (i = 0; i < nwatches; i++) {
		pfds[i + 1].fd = watches[i].fd;
		pfds[i + 1].events = (short)(((watches[i].events & FILTER_API_READ) ?
		    POLLIN : 0) | ((watches[i].events & FILTER_API_WRITE) ? POLLOUT : 0));
		pfds[i + 1].revents = 0;
	}
	r = poll(pfds, (nfds_t)n, poll_timeout());
	if (r == -1) {
		if (errno == EINTR)
			return 0;
		log_warn("filter_api: poll");
		return -1;
	}
	for (i = 1; i < n; i++) {
		if (pfds[i].revents == 0)
			continue;
		revents = 0;
		if (pfds[i].revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL))
			revents |= FILTER_API_READ;
		if (pfds[i].revents & (POLLOUT | POLLHUP | POLLERR | POLLNVAL))
			revents |= FILTER_API_WRITE;
		/* A callback may have removed or replaced this descriptor's watch. */
		for (j = 0; j < nwatches; j++)
			if (watches[j].fd == pfds[i].fd)
				break;
		if (j == nwatches || (watches[j].events & revents) == 0)
			continue;
		watches[j].cb(pfds[i].fd, watches[j].events & revents, watches[j].arg);
	}
	run_timers();
	return pfds[0].revents != 0;
}
