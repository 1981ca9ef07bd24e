/*
 * A fake libxenevtchn (plus xc_map_foreign_range) that lets Debian's oxenstored 4.17 run on a
 * Linux host without a hypervisor. LD_PRELOADed by vm-images/oxenstored/run; built there with
 * `gcc -shared -fPIC -Wl,--version-script=fake_evtchn.map`. See ref/ecosystem.md §2.3 and §2.8.
 *
 * Socket-only mode (FAKE_EVTCHN_FIFO unset): every handle owns a pipe whose read end is never
 * readable, so no event ever fires; binds hand out increasing port numbers.
 *
 * Ring mode (FAKE_EVTCHN_FIFO=<path>, FAKE_XEN_RINGS=<dir>): the first handle opened uses a FIFO as
 * its fd. A test acting as guest N writes its 4-byte native domid into the FIFO to "kick" the
 * event channel; xenevtchn_pending() then returns the port bound to N by bind_interdomain, so
 * oxenstored processes N's ring. xc_map_foreign_range(domid) maps <dir>/<domid> (the "guest's"
 * xenstore page), created and sized on demand. The VIRQ port is never returned: handling it calls
 * xc_domain_getinfolist, which cannot work off Xen.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_PORTS 4096

typedef struct fake_handle {
    int rfd;
    int wfd;              /* -1 for the FIFO handle */
    int is_fifo;
    int32_t port_domid[MAX_PORTS];   /* -1: unbound / not interdomain */
} fake_handle;

static int next_port = 1;
static int fifo_taken = 0;

static fake_handle *new_handle(void)
{
    fake_handle *h = calloc(1, sizeof(*h));
    const char *fifo = getenv("FAKE_EVTCHN_FIFO");
    int i;

    if (!h)
        return NULL;
    for (i = 0; i < MAX_PORTS; i++)
        h->port_domid[i] = -1;
    if (fifo && *fifo && !fifo_taken) {
        if (mkfifo(fifo, 0600) < 0 && errno != EEXIST) {
            free(h);
            return NULL;
        }
        h->rfd = open(fifo, O_RDWR | O_NONBLOCK | O_CLOEXEC);
        if (h->rfd < 0) {
            free(h);
            return NULL;
        }
        h->wfd = -1;
        h->is_fifo = 1;
        fifo_taken = 1;
        return h;
    }
    {
        int p[2];
        if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) {
            free(h);
            return NULL;
        }
        h->rfd = p[0];
        h->wfd = p[1];
    }
    return h;
}

void *xenevtchn_open(void *logger, unsigned open_flags)
{
    (void)logger;
    (void)open_flags;
    return new_handle();
}

void *xenevtchn_fdopen(void *logger, int fd, unsigned open_flags)
{
    (void)fd;
    return xenevtchn_open(logger, open_flags);
}

int xenevtchn_close(void *xce)
{
    fake_handle *h = xce;
    if (!h)
        return 0;
    close(h->rfd);
    if (h->wfd >= 0)
        close(h->wfd);
    free(h);
    return 0;
}

int xenevtchn_fd(void *xce)
{
    return ((fake_handle *)xce)->rfd;
}

int xenevtchn_notify(void *xce, uint32_t port)
{
    (void)xce;
    (void)port;
    return 0;
}

int xenevtchn_bind_virq(void *xce, unsigned int virq)
{
    (void)xce;
    (void)virq;
    return next_port++;
}

int xenevtchn_bind_interdomain(void *xce, uint32_t domid, uint32_t remote_port)
{
    fake_handle *h = xce;
    int port = next_port++;
    (void)remote_port;
    if (port < MAX_PORTS)
        h->port_domid[port] = (int32_t)domid;
    return port;
}

int xenevtchn_unbind(void *xce, uint32_t port)
{
    fake_handle *h = xce;
    if (port < MAX_PORTS)
        h->port_domid[port] = -1;
    return 0;
}

int xenevtchn_pending(void *xce)
{
    fake_handle *h = xce;
    uint32_t domid;
    int i;

    if (!h->is_fifo) {
        errno = EAGAIN;
        return -1;
    }
    for (;;) {
        ssize_t n = read(h->rfd, &domid, sizeof(domid));
        if (n != (ssize_t)sizeof(domid)) {
            errno = EAGAIN;
            return -1;
        }
        /* The newest binding wins: a re-introduced domain gets a new port. */
        for (i = MAX_PORTS - 1; i > 0; i--)
            if (h->port_domid[i] == (int32_t)domid)
                return i;
        /* A kick for a domain that is not bound (yet): drop it, try the next one. */
    }
}

int xenevtchn_unmask(void *xce, uint32_t port)
{
    (void)xce;
    (void)port;
    return 0;
}

void *xc_map_foreign_range(void *xch, uint32_t domid, int size, int prot, unsigned long mfn)
{
    const char *dir = getenv("FAKE_XEN_RINGS");
    char path[4096];
    void *addr;
    struct stat st;
    int fd;

    (void)xch;
    (void)mfn;
    if (!dir || !*dir) {
        errno = EINVAL;
        return NULL;
    }
    snprintf(path, sizeof(path), "%s/%u", dir, domid);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return NULL;
    if (fstat(fd, &st) == 0 && st.st_size < size && ftruncate(fd, size) < 0) {
        close(fd);
        return NULL;
    }
    addr = mmap(NULL, (size_t)size, prot, MAP_SHARED, fd, 0);
    close(fd);
    return addr == MAP_FAILED ? NULL : addr;
}
