/* Connection-churn workload for the tcptrace-bpf benchmark.
 *
 * One listening socket on 127.0.0.1:PORT, shared (inherited) by S accepting processes, and C
 * connecting processes. Each client loops: socket(), connect() (blocking), close() with
 * SO_LINGER {1, 0} so the close sends an RST and leaves no TIME_WAIT; each server loops:
 * accept(), close() with SO_LINGER {1, 0}. Every connection is therefore one active open and
 * one passive open (both reach ESTABLISHED), and no ephemeral port stays busy after close.
 *
 * The clients run for a fixed duration from a common start; the parent then prints one JSON
 * line on stdout:
 *   {"connections": N, "connect_ok": K, "connect_reset": R, "connect_errors": E,
 *    "accepted": A, "elapsed_s": T, "conn_per_s": N/T, "clients": C, "servers": S, "port": P}
 * `connections` = K + R: handshakes that completed. K connect() calls returned 0; R returned
 * ECONNRESET because the server had already accepted and RST-closed the established
 * connection before the client woke up (both sides reached ESTABLISHED). Each connection is
 * one active and one passive open that reached ESTABLISHED. E counts any other failure.
 *
 * usage: churn [-d SECONDS] [-c CLIENTS] [-s SERVERS] [-p PORT] [-b BACKLOG]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_PROCS 64

struct slot {                  /* one per process, in shared memory; padded to a cache line */
	volatile uint64_t ok, reset, err;
	char pad[40];
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static void rst_close(int fd)
{
	struct linger lg = {1, 0};
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
}

static void client(struct sockaddr_in *addr, struct slot *me, int go_fd, double duration)
{
	char c;
	prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive an interrupted run */
	if (read(go_fd, &c, 1) < 0) /* blocks until the parent closes the write end */
		die("read");
	double end = now_s() + duration;
	uint64_t n = 0;
	while ((n & 63) || now_s() < end) { /* check the clock every 64 connections */
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0)
			die("socket");
		if (connect(fd, (struct sockaddr *)addr, sizeof(*addr)) == 0)
			me->ok++;
		else if (errno == ECONNRESET)
			me->reset++; /* established, then the server's RST beat connect()'s return */
		else
			me->err++;
		rst_close(fd);
		n++;
	}
	exit(0);
}

static void server(int lfd, struct slot *me)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	for (;;) {
		int fd = accept(lfd, NULL, NULL);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			exit(0); /* listener shut down by the parent */
		}
		me->ok++;
		rst_close(fd);
	}
}

int main(int argc, char **argv)
{
	double duration = 10;
	int nclients = 4, nservers = 2, port = 0, backlog = 4096, opt;

	while ((opt = getopt(argc, argv, "d:c:s:p:b:")) != -1) {
		switch (opt) {
		case 'd': duration = atof(optarg); break;
		case 'c': nclients = atoi(optarg); break;
		case 's': nservers = atoi(optarg); break;
		case 'p': port = atoi(optarg); break;
		case 'b': backlog = atoi(optarg); break;
		default:
			fprintf(stderr, "usage: %s [-d SECONDS] [-c CLIENTS] [-s SERVERS] [-p PORT] [-b BACKLOG]\n", argv[0]);
			return 2;
		}
	}
	if (nclients < 1 || nservers < 1 || nclients + nservers > MAX_PROCS || duration <= 0) {
		fprintf(stderr, "churn: bad arguments\n");
		return 2;
	}

	struct slot *slots = mmap(NULL, sizeof(struct slot) * MAX_PROCS, PROT_READ | PROT_WRITE,
				  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (slots == MAP_FAILED)
		die("mmap");
	memset(slots, 0, sizeof(struct slot) * MAX_PROCS);

	int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	if (lfd < 0)
		die("socket");
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		die("bind");
	if (listen(lfd, backlog) < 0)
		die("listen");
	socklen_t alen = sizeof(addr);
	getsockname(lfd, (struct sockaddr *)&addr, &alen);

	int go[2];
	if (pipe(go) < 0)
		die("pipe");
	pid_t pids[MAX_PROCS];
	for (int i = 0; i < nservers; i++) {
		if ((pids[i] = fork()) == 0) {
			close(go[0]);
			close(go[1]);
			server(lfd, &slots[i]);
		}
	}
	for (int i = 0; i < nclients; i++) {
		if ((pids[nservers + i] = fork()) == 0) {
			close(go[1]);
			close(lfd);
			client(&addr, &slots[nservers + i], go[0], duration);
		}
	}
	close(go[0]);
	double t0 = now_s();
	close(go[1]); /* start: every client's read() returns */
	for (int i = 0; i < nclients; i++)
		waitpid(pids[nservers + i], NULL, 0);
	double elapsed = now_s() - t0;

	/* let the servers take what is still queued, then stop them */
	usleep(200 * 1000);
	shutdown(lfd, SHUT_RDWR);
	for (int i = 0; i < nservers; i++) {
		kill(pids[i], SIGTERM);
		waitpid(pids[i], NULL, 0);
	}
	close(lfd);

	uint64_t ok = 0, reset = 0, err = 0, accepted = 0;
	for (int i = 0; i < nservers; i++)
		accepted += slots[i].ok;
	for (int i = 0; i < nclients; i++) {
		ok += slots[nservers + i].ok;
		reset += slots[nservers + i].reset;
		err += slots[nservers + i].err;
	}
	uint64_t conns = ok + reset;
	printf("{\"connections\": %llu, \"connect_ok\": %llu, \"connect_reset\": %llu, "
	       "\"connect_errors\": %llu, \"accepted\": %llu, \"elapsed_s\": %.6f, "
	       "\"conn_per_s\": %.1f, \"clients\": %d, \"servers\": %d, \"port\": %d}\n",
	       (unsigned long long)conns, (unsigned long long)ok, (unsigned long long)reset,
	       (unsigned long long)err, (unsigned long long)accepted, elapsed, conns / elapsed,
	       nclients, nservers, ntohs(addr.sin_port));
	return 0;
}
