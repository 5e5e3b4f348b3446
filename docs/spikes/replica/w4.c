// Measurement code (issue 12 spike): W4 as cs-bench does it: open+read 2,000 files by name, 3 passes.
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    static char buf[65536], p[4096];
    long bytes = 0;
    double t0 = now(), pass[3];
    for (int k = 0; k < 3; k++) {
        double tp = now();
        for (int i = 0; i < 2000; i++) {
            snprintf(p, sizeof p, "%s/d%02d/f%04d", argv[1], i / 100, i);
            int fd = open(p, O_RDONLY);
            if (fd < 0) { perror(p); return 1; }
            ssize_t n;
            while ((n = read(fd, buf, sizeof buf)) > 0) bytes += n;
            close(fd);
        }
        pass[k] = now() - tp;
    }
    printf("%.4f %.4f %.4f %.4f %ld\n", now() - t0, pass[0], pass[1], pass[2], bytes);
    return 0;
}
