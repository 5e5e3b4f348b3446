// Measurement code for issue 12's spike (docs/replica.md; not product code): a fanotify
// "fetch on first read" daemon. The replica is a placeholder tree (sparse files of the
// right size); the store is a directory standing in for the project (fetch = copy).
// usage: hsm MARK(fs|mount) REPLICA STORE DELAY_MS
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>
#include <sys/wait.h>
#include <linux/falloc.h>
#include <sys/syscall.h>

#ifndef FAN_PRE_ACCESS
#define FAN_PRE_ACCESS 0x00100000
#endif
#ifndef FAN_MARK_EVICTABLE
#define FAN_MARK_EVICTABLE 0x00000200
#endif
#ifndef FAN_MARK_IGNORE
#define FAN_MARK_IGNORE 0x00000400
#endif
#define IGNORE_SURV (FAN_MARK_IGNORE | FAN_MARK_IGNORED_SURV_MODIFY)
#ifndef FAN_EVENT_INFO_TYPE_RANGE
#define FAN_EVENT_INFO_TYPE_RANGE 6
#endif
struct range_info { struct fanotify_event_info_header hdr; __u32 pad; __u64 offset; __u64 count; };
#define WANT "user.cs.want" // on a placeholder not filled yet; removed once its content is durable

static double now_ms(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e3 + t.tv_nsec / 1e6; }


static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int fan; static const char *replica, *store; static size_t rlen; static int delay_ms;
static long fetched, ignored_added;
static int mount_fd;
static FILE *journal; // HSM_JOURNAL: events taken, so that a restarted worker answers the ones its predecessor left
static void jlog(const char *kind, int fd, const char *path) { if (!journal) return; pthread_mutex_lock(&mu); fprintf(journal, "%s %d %s\n", kind, fd, path); fflush(journal); pthread_mutex_unlock(&mu); } // our own mount of the watched filesystem: fills open the event's inode by handle
struct job { int fd; char path[PATH_MAX]; double t0; };
static void respond(int fd, __u32 r) {
    struct fanotify_response resp = { .fd = fd, .response = r };
    pthread_mutex_lock(&mu);
    if (write(fan, &resp, sizeof resp) != sizeof resp) perror("response");
    if (journal) { fprintf(journal, "done %d -\n", fd); fflush(journal); }
    pthread_mutex_unlock(&mu);
}
// A restarted worker: the events its predecessor took and did not answer are still pending,
// known to the kernel only by the descriptor number they were given. Keep those numbers
// taken (so that no new event gets one: a response is matched by number alone), fill the
// files, answer by number.
// HSM_CTL=FIFO, lines `evict REL`: drop a filled file's content (the cache's eviction).
// Order: remove the ignore mark (so that any open from now on is an event), take a write
// lease (refused while anyone, overlayfs included, has the file open), punch the content
// out, mark it wanted again, release the lease.
static void *control(void *arg) {
    const char *fifo = arg;
    for (;;) {
        FILE *f = fopen(fifo, "r");
        char cmd[16], rel[PATH_MAX];
        while (f && fscanf(f, "%15s %4095s", cmd, rel) == 2) {
            char dst[PATH_MAX]; snprintf(dst, sizeof dst, "%s%s", replica, rel);
            int fd = open(dst, O_RDWR | O_CLOEXEC);
            struct stat st;
            if (fd < 0 || fstat(fd, &st)) { fprintf(stderr, "hsm: evict %s: %s\n", rel, strerror(errno)); continue; }
            fanotify_mark(fan, FAN_MARK_REMOVE | FAN_MARK_IGNORE, getenv("HSM_OPEN") ? FAN_OPEN_PERM : FAN_PRE_ACCESS, fd, NULL);
            if (fcntl(fd, F_SETLEASE, F_WRLCK)) {
                fprintf(stderr, "hsm: evict %s: refused, the file is open (%s)\n", rel, strerror(errno));
            } else {
                fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, st.st_size);
                fsetxattr(fd, WANT, "1", 1, 0);
                fcntl(fd, F_SETLEASE, F_UNLCK);
                fstat(fd, &st);
                fprintf(stderr, "hsm: evicted %s (%lld blocks left)\n", rel, (long long)st.st_blocks);
            }
            close(fd);
        }
        if (f) fclose(f);
    }
    return NULL;
}
struct orphan { int fd; char rel[PATH_MAX]; };
static void *answer_orphans(void *arg) {
    struct orphan *o = arg;
    for (; o->fd >= 0; o++) {
        char src[PATH_MAX], dst[PATH_MAX];
        snprintf(src, sizeof src, "%s%s", store, o->rel);
        snprintf(dst, sizeof dst, "%s%s", replica, o->rel);
        int s = open(src, O_RDONLY | O_CLOEXEC), d = open(dst, O_WRONLY | O_CLOEXEC);
        static char b[1 << 20]; off_t off = 0; ssize_t n;
        while (s >= 0 && d >= 0 && (n = pread(s, b, sizeof b, off)) > 0) { if (pwrite(d, b, n, off) != n) break; off += n; }
        if (d >= 0) { fdatasync(d); fremovexattr(d, WANT); close(d); }
        if (s >= 0) close(s);
        fprintf(stderr, "hsm: orphan fd %d (%s) filled, answered\n", o->fd, o->rel);
        respond(o->fd, FAN_ALLOW);
        close(o->fd); // the placeholder descriptor that kept the number taken
    }
    return NULL;
}
// The event's descriptor may be on overlayfs's private read-only clone of the mount, and the
// file may be in the lower or the upper layer: open that very inode for writing by handle.
static int open_same_inode(int fd) {
    struct { struct file_handle h; unsigned char b[128]; } fh;
    fh.h.handle_bytes = 128;
    int mnt_id;
    if (name_to_handle_at(fd, "", &fh.h, &mnt_id, AT_EMPTY_PATH)) return -1;
    return open_by_handle_at(mount_fd, &fh.h, O_WRONLY | O_CLOEXEC);
}
static void *fill(void *arg) {
    struct job *j = arg;
    __u32 r = FAN_ALLOW;
    char v;
    struct stat es;
    if (fstat(j->fd, &es) == 0 && !S_ISREG(es.st_mode)) { respond(j->fd, FAN_ALLOW); close(j->fd); free(j); return NULL; }
    if (fgetxattr(j->fd, WANT, &v, 1) >= 0) {
        char src[PATH_MAX];
        // through overlayfs the path is relative to its private clone of the lower mount
        const char *rel = strncmp(j->path, replica, rlen) == 0 ? j->path + rlen : j->path;
        char dst[PATH_MAX];
        snprintf(src, sizeof src, "%s%s", store, rel);
        snprintf(dst, sizeof dst, "%s%s", replica, rel);
        if (delay_ms) usleep(delay_ms * 1000);
        int s = open(src, O_RDONLY | O_CLOEXEC), d = open_same_inode(j->fd);
        struct stat st;
        if (s < 0 || d < 0 || fstat(s, &st)) {
            fprintf(stderr, "hsm: fetch %s -> %s: %s\n", src, j->path, strerror(errno));
            r = FAN_DENY | (EIO << 24); // FAN_DENY_ERRNO(EIO): the reader gets EIO
        } else {
            static __thread char b[1 << 20];
            off_t o = 0;
            for (;;) { ssize_t n = pread(s, b, sizeof b, o); if (n <= 0) break; if (pwrite(d, b, n, o) != n) { perror("pwrite"); r = FAN_DENY | (EIO << 24); break; } o += n; }
            if (r == FAN_ALLOW) {
                __atomic_add_fetch(&fetched, 1, __ATOMIC_RELAXED);
                if (getenv("HSM_SYNC_FIRST")) { // durable before the reader goes on
                    fdatasync(d);
                    if (fremovexattr(d, WANT)) perror("fremovexattr");
                } else { // the reader goes on now (the page cache has the content); durable after
                    if (fanotify_mark(fan, FAN_MARK_ADD | IGNORE_SURV | FAN_MARK_EVICTABLE, getenv("HSM_OPEN") ? FAN_OPEN_PERM : FAN_PRE_ACCESS, j->fd, NULL) == 0)
                        __atomic_add_fetch(&ignored_added, 1, __ATOMIC_RELAXED);
                    respond(j->fd, r);
                    close(j->fd);
                    j->fd = -1;
                    if (!getenv("HSM_NOSYNC")) fdatasync(d); // then marked fetched: a crash before this refetches
                    if (fremovexattr(d, WANT)) perror("fremovexattr");
                }
            }
        }
        if (s >= 0) close(s);
        if (d >= 0) close(d);
        if (j->fd < 0) { free(j); return NULL; }
    }
    // evictable ignore mark: no further events for this inode while it stays in memory; not on
    // an empty file (a creation: it may become a placeholder; in the product the service
    // makes placeholders itself, and its own opens are allowed without a mark)
    if (r == FAN_ALLOW && es.st_size > 0 && fanotify_mark(fan, FAN_MARK_ADD | IGNORE_SURV | FAN_MARK_EVICTABLE, getenv("HSM_OPEN") ? FAN_OPEN_PERM : FAN_PRE_ACCESS, j->fd, NULL) == 0)
        __atomic_add_fetch(&ignored_added, 1, __ATOMIC_RELAXED);
    respond(j->fd, r);
    if (getenv("HSM_VERBOSE")) fprintf(stderr, "hsm: %s %s %.3f ms\n", j->path, r == FAN_ALLOW ? "allowed" : "denied", now_ms() - j->t0);
    close(j->fd);
    free(j);
    return NULL;
}
int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: hsm fs|mount REPLICA STORE DELAY_MS\n"); return 2; }
    replica = argv[2]; store = argv[3]; delay_ms = atoi(argv[4]); rlen = strlen(replica);
    fan = fanotify_init(FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC | FAN_UNLIMITED_QUEUE | FAN_UNLIMITED_MARKS, O_RDONLY | O_LARGEFILE);
    if (fan < 0) { perror("fanotify_init"); return 1; }
    // Never a filesystem mark on a shared filesystem: every read on it waits for this daemon.
    unsigned int mflag = strcmp(argv[1], "mount") == 0 ? FAN_MARK_MOUNT : FAN_MARK_FILESYSTEM;
    struct stat rs, root;
    if (stat(replica, &rs) || stat("/", &root) || (mflag == FAN_MARK_FILESYSTEM && rs.st_dev == root.st_dev)) {
        fprintf(stderr, "hsm: refusing a filesystem mark on the root filesystem\n"); return 1; }
    __u64 mask = getenv("HSM_OPEN") ? FAN_OPEN_PERM : FAN_PRE_ACCESS; // HSM_OPEN: fill at open, not at read
    if (fanotify_mark(fan, FAN_MARK_ADD | mflag, mask, AT_FDCWD, replica)) { perror("fanotify_mark"); return 1; }
    mount_fd = open(replica, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    fprintf(stderr, "hsm: watching %s (%s mark)\n", replica, argv[1]);
    // HSM_HOLDER: this process only holds the group (and so keeps pending events pending) and
    // forks a worker that handles events; a worker that dies is replaced.
    if (getenv("HSM_HOLDER")) {
        for (;;) {
            pid_t w = fork();
            if (w == 0) break;
            fprintf(stderr, "hsm: holder %d started worker %d\n", getpid(), w);
            int st; waitpid(w, &st, 0);
            fprintf(stderr, "hsm: worker %d ended (status %d), starting another\n", w, st);
        }
    }
    if (getenv("HSM_JOURNAL")) {
        static struct orphan orphans[256]; int no = 0;
        FILE *jr = fopen(getenv("HSM_JOURNAL"), "r");
        char kind[8], rel[PATH_MAX]; int fd;
        while (jr && fscanf(jr, "%7s %d %4095s", kind, &fd, rel) == 3) {
            if (!strcmp(kind, "take") && no < 255) { orphans[no].fd = fd; strcpy(orphans[no].rel, rel); no++; }
            else for (int i = 0; i < no; i++) if (orphans[i].fd == fd) { orphans[i] = orphans[--no]; break; }
        }
        if (jr) fclose(jr);
        orphans[no].fd = -1;
        journal = fopen(getenv("HSM_JOURNAL"), "w");
        if (no) {
            for (int i = 0; i < no; i++) { int z = open("/dev/null", O_RDONLY); dup2(z, orphans[i].fd); close(z); }
            fprintf(stderr, "hsm: worker %d: %d event(s) left by its predecessor\n", getpid(), no);
            pthread_t t; pthread_create(&t, NULL, answer_orphans, orphans); pthread_detach(t);
        }
    }
    if (getenv("HSM_CTL")) { pthread_t t; pthread_create(&t, NULL, control, getenv("HSM_CTL")); pthread_detach(t); }
    char buf[64 * 1024] __attribute__((aligned(8)));
    long events = 0, own = 0;
    pid_t me = getpid();
    for (;;) {
        ssize_t len = read(fan, buf, sizeof buf);
        if (len <= 0) { if (errno == EINTR) continue; perror("read"); if (errno == ETXTBSY || errno == EROFS) continue; return 1; }
        struct fanotify_event_metadata *m = (void *)buf;
        for (; FAN_EVENT_OK(m, len); m = FAN_EVENT_NEXT(m, len)) {
            events++;
            if (m->pid == me) { own++; respond(m->fd, FAN_ALLOW); close(m->fd); continue; } // our own fill
            struct job *j = malloc(sizeof *j);
            j->fd = m->fd; j->t0 = now_ms();
            char proc[64]; snprintf(proc, sizeof proc, "/proc/self/fd/%d", m->fd);
            ssize_t pl = readlink(proc, j->path, sizeof j->path - 1); j->path[pl < 0 ? 0 : pl] = 0;
            jlog("take", m->fd, j->path + (strncmp(j->path, replica, rlen) == 0 ? rlen : 0));
            pthread_t t; pthread_create(&t, NULL, fill, j); pthread_detach(t);
        }
        if (getenv("HSM_STATS")) fprintf(stderr, "hsm: events %ld own %ld fetched %ld ignore-marks %ld\n", events, own, fetched, ignored_added);
    }
}
