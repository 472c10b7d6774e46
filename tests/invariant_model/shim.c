/* A fake kernel for tests/invariant_model.rs, loaded into the kvmtune binary with
 * LD_PRELOAD. It changes nothing in kvmtune: it answers two system calls the way
 * the model's fake world says.
 *
 * sched_setaffinity(TID, mask): when KVMTUNE_MODEL_FAKE_PROC is set, the thread is
 *   looked up as $KVMTUNE_MODEL_FAKE_PROC/<pid>/task/<TID>/status (the fake /proc
 *   the hook reads through KVMTUNE_PROC_ROOT) and its Cpus_allowed_list line is
 *   rewritten; a TID not there fails with ESRCH, an empty mask with EINVAL, as the
 *   kernel does. The real call is never made, so the fixture host's CPU numbers
 *   (0-31) need not exist on the test machine and no real thread is touched.
 * clock_gettime(CLOCK_REALTIME*): adds the seconds in $KVMTUNE_MODEL_CLOCK_FILE
 *   (an NTP-like step of the wall clock); CLOCK_MONOTONIC/BOOTTIME are untouched.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

__attribute__((constructor)) static void probe(void) {
    const char *p = getenv("KVMTUNE_MODEL_SHIM_PROBE");
    if (p) {
        int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) close(fd);
    }
}

static int find_status(const char *root, int tid, char *out, size_t n) {
    DIR *d = opendir(root);
    if (!d) return -1;
    struct dirent *e;
    int found = -1;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        snprintf(out, n, "%s/%s/task/%d/status", root, e->d_name, tid);
        if (access(out, F_OK) == 0) { found = 0; break; }
    }
    closedir(d);
    return found;
}

int sched_setaffinity(pid_t tid, size_t size, const cpu_set_t *mask) {
    const char *root = getenv("KVMTUNE_MODEL_FAKE_PROC");
    if (!root) {
        int (*real)(pid_t, size_t, const cpu_set_t *) = dlsym(RTLD_NEXT, "sched_setaffinity");
        return real(tid, size, mask);
    }
    char path[4096];
    if (find_status(root, tid, path, sizeof path) != 0) { errno = ESRCH; return -1; }
    char list[8192]; size_t len = 0; list[0] = 0;
    int ncpu = (int)(size * 8), cpu = 0, any = 0;
    while (cpu < ncpu) {
        if (!CPU_ISSET_S(cpu, size, mask)) { cpu++; continue; }
        int start = cpu;
        while (cpu + 1 < ncpu && CPU_ISSET_S(cpu + 1, size, mask)) cpu++;
        len += snprintf(list + len, sizeof list - len, "%s%d", any ? "," : "", start);
        if (cpu > start) len += snprintf(list + len, sizeof list - len, "-%d", cpu);
        any = 1; cpu++;
    }
    if (!any) { errno = EINVAL; return -1; }
    FILE *f = fopen(path, "r");
    if (!f) { errno = ESRCH; return -1; }
    char text[16384]; size_t tn = fread(text, 1, sizeof text - 1, f); fclose(f); text[tn] = 0;
    char outbuf[32768]; size_t on = 0; char *line = text;
    while (line && *line) {
        char *nl = strchr(line, '\n');
        size_t ll = nl ? (size_t)(nl - line) : strlen(line);
        if (strncmp(line, "Cpus_allowed_list:", 18) == 0)
            on += snprintf(outbuf + on, sizeof outbuf - on, "Cpus_allowed_list:\t%s\n", list);
        else
            on += snprintf(outbuf + on, sizeof outbuf - on, "%.*s\n", (int)ll, line);
        line = nl ? nl + 1 : NULL;
    }
    char tmp[4200]; snprintf(tmp, sizeof tmp, "%s.%d.tmp", path, getpid());
    f = fopen(tmp, "w");
    if (!f) { errno = EPERM; return -1; }
    fwrite(outbuf, 1, on, f); fclose(f);
    if (rename(tmp, path) != 0) { unlink(tmp); errno = ESRCH; return -1; }
    return 0;
}

int clock_gettime(clockid_t clk, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = dlsym(RTLD_NEXT, "clock_gettime");
    int r = real(clk, ts);
    if (r == 0 && (clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE)) {
        const char *p = getenv("KVMTUNE_MODEL_CLOCK_FILE");
        if (p) {
            FILE *f = fopen(p, "r");
            if (f) { long off = 0; if (fscanf(f, "%ld", &off) == 1) ts->tv_sec += off; fclose(f); }
        }
    }
    return r;
}
