/*
 * floor-milter: the cheapest milter that still writes a header, the floor
 * any milter is measured against (issue 11). It negotiates away every stage
 * but end of message, adds one header there and accepts.
 *
 * Built at run time by package floormilter (bench/internal/floormilter) from
 * Debian's libmilter-dev:
 *     cc -O2 -o floor-milter floor-milter.c -lmilter -lpthread
 * Usage: floor-milter unix:/path | inet:port@host
 *
 * libmilter writes the header edit and the reply with separate write(2)s and
 * does not set TCP_NODELAY, so over TCP Nagle would hold the reply until the
 * edit is acknowledged. This file defines accept(2) and read(2) itself: the
 * dynamic linker resolves libmilter's calls to them (the executable comes
 * first in the lookup scope), which set TCP_NODELAY on every accepted TCP
 * connection and re-arm TCP_QUICKACK after every read, so the macro packets
 * Postfix sends without expecting a reply are acknowledged at once instead
 * of after the kernel's delayed-ACK timer (Postfix's own Nagle waits for it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <libmilter/mfapi.h>

#define MAXFD 65536
static volatile unsigned char is_tcp[MAXFD];

int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
	int c = accept4(fd, addr, len, 0);
	if (c >= 0 && c < MAXFD) {
		int one = 1;
		is_tcp[c] = setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0;
		if (is_tcp[c])
			setsockopt(c, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
	}
	return c;
}

ssize_t read(int fd, void *buf, size_t n)
{
	ssize_t r = syscall(SYS_read, fd, buf, n);
	if (r > 0 && fd >= 0 && fd < MAXFD && is_tcp[fd]) {
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
	}
	return r;
}

static sfsistat floor_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2,
				unsigned long f3, unsigned long *pf0, unsigned long *pf1, unsigned long *pf2,
				unsigned long *pf3)
{
	unsigned long off = SMFIP_NOCONNECT | SMFIP_NOHELO | SMFIP_NOMAIL | SMFIP_NORCPT | SMFIP_NOBODY |
			    SMFIP_NOHDRS | SMFIP_NOEOH | SMFIP_NOUNKNOWN | SMFIP_NODATA;
	(void)ctx;
	(void)f2;
	(void)f3;
	if (!(f0 & SMFIF_ADDHDRS))
		return SMFIS_REJECT;
	*pf0 = SMFIF_ADDHDRS;
	*pf1 = f1 & off;
	*pf2 = 0;
	*pf3 = 0;
	return SMFIS_CONTINUE;
}

static sfsistat floor_eom(SMFICTX *ctx)
{
	if (smfi_addheader(ctx, "X-Floor-Milter", "1") != MI_SUCCESS)
		return SMFIS_TEMPFAIL;
	return SMFIS_ACCEPT;
}

static struct smfiDesc desc = {
	.xxfi_name = "floor-milter",
	.xxfi_version = SMFI_VERSION,
	.xxfi_flags = SMFIF_ADDHDRS,
	.xxfi_eom = floor_eom,
	.xxfi_negotiate = floor_negotiate,
};

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s unix:/path | inet:port@host\n", argv[0]);
		return 2;
	}
	/* Postfix's smtpd and cleanup connect as the postfix user. */
	umask(0);
	if (strncmp(argv[1], "unix:", 5) == 0)
		unlink(argv[1] + 5);
	if (smfi_setconn(argv[1]) != MI_SUCCESS || smfi_register(desc) != MI_SUCCESS) {
		fprintf(stderr, "floor-milter: cannot set up %s\n", argv[1]);
		return 1;
	}
	if (smfi_opensocket(1) != MI_SUCCESS) {
		fprintf(stderr, "floor-milter: cannot open %s\n", argv[1]);
		return 1;
	}
	return smfi_main() == MI_SUCCESS ? 0 : 1;
}
