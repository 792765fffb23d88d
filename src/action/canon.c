/*
 * ccb-canon: `readlink -f PATH`, `realpath -s PATH`, `realpath -ms PATH` and `mkdir -p DIR`
 * for a host-tools step (src/action/native.rs), bind-mounted over the image's readlink,
 * realpath and mkdir.
 *
 * Why C, and without a C library: mkinitramfs starts these programs about 11,000 times per
 * initramfs (three times per module copied). On the build machines here a process start costs
 * ~0.8 ms, and half of that is glibc's start-up asking the CPU about its caches: some 80 CPUID
 * instructions, each a hypervisor exit (6.4 us measured). A program that does not link glibc
 * (static, its own _start and system calls) starts in half the time. Rust's std links glibc,
 * and a no_std binary cannot be built beside the crate's unwinding ones.
 *
 * Only what succeeds is answered here, for absolute paths: the same text GNU coreutils prints.
 * Any other use (another option, a relative path, a trailing slash, an error of any kind)
 * runs the image's own program, copied to FALLBACK_DIR/<name>.image (or $CCB_CANON_FALLBACK),
 * which gives GNU's own answer and message. x86-64 Linux only.
 */

#define FALLBACK_DIR "/tmp/ccb/native"
#define PATH_MAX_ 4096
#define MAX_LINKS 40

typedef unsigned long u64;
typedef long i64;

struct kstat {
    u64 st_dev, st_ino, st_nlink;
    unsigned int st_mode, st_uid, st_gid, pad0;
    u64 st_rdev;
    i64 st_size, st_blksize, st_blocks;
    u64 st_atime_, st_atime_ns, st_mtime_, st_mtime_ns, st_ctime_, st_ctime_ns;
    i64 unused[3];
};

#define S_IFMT 0170000
#define S_IFDIR 0040000
#define S_IFLNK 0120000
#define AT_FDCWD (-100)
#define AT_SYMLINK_NOFOLLOW 0x100

static i64 sys3(i64 n, i64 a, i64 b, i64 c) {
    i64 ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return ret;
}

static i64 sys4(i64 n, i64 a, i64 b, i64 c, i64 d) {
    i64 ret;
    register i64 r10 __asm__("r10") = d;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
                     : "rcx", "r11", "memory");
    return ret;
}

#define SYS_write 1
#define SYS_execve 59
#define SYS_exit_group 231
#define SYS_readlinkat 267
#define SYS_newfstatat 262
#define SYS_mkdir 83
#define SYS_umask 95

static void quit(int code) {
    for (;;) sys3(SYS_exit_group, code, 0, 0);
}

/* The compiler may emit calls to these for copies and clears. */
void *memcpy(void *d, const void *s, u64 n) {
    char *dp = d;
    const char *sp = s;
    while (n--) *dp++ = *sp++;
    return d;
}

void *memset(void *d, int c, u64 n) {
    char *dp = d;
    while (n--) *dp++ = (char)c;
    return d;
}

static u64 len(const char *s) {
    u64 n = 0;
    while (s[n]) n++;
    return n;
}

static int same(const char *a, const char *b) {
    while (*a && *a == *b) a++, b++;
    return *a == *b;
}

#define ENOENT 2
#define EEXIST 17

/* 0, or the negated errno. */
static i64 stat_at(const char *path, struct kstat *st, int follow) {
    return sys4(SYS_newfstatat, AT_FDCWD, (i64)path, (i64)st, follow ? 0 : AT_SYMLINK_NOFOLLOW);
}

static char **argv_;
static char **envp_;

/* Runs the image's own program with the same arguments; never returns. */
static void fallback(const char *name) {
    static char path[PATH_MAX_];
    const char *dir = FALLBACK_DIR;
    for (char **e = envp_; *e; e++) {
        const char *p = *e, *k = "CCB_CANON_FALLBACK=";
        while (*k && *p == *k) p++, k++;
        if (!*k) dir = p;
    }
    u64 d = len(dir), n = len(name);
    if (d + n + 8 >= PATH_MAX_) quit(1);
    memcpy(path, dir, d);
    path[d] = '/';
    memcpy(path + d + 1, name, n);
    memcpy(path + d + 1 + n, ".image", 7);
    sys3(SYS_execve, (i64)path, (i64)argv_, (i64)envp_);
    static const char msg[] = "ccb-canon: cannot run the image's program\n";
    sys3(SYS_write, 2, (i64)msg, sizeof msg - 1);
    quit(1);
}

/* What is resolved so far (no trailing slash but for the root) and the path still to walk. */
static char out[PATH_MAX_];
static u64 out_len;
static char todo[PATH_MAX_];

/* Drops the last component of `out` (`..`); the root stays the root. */
static void pop(void) {
    while (out_len > 1 && out[out_len - 1] != '/') out_len--;
    if (out_len > 1) out_len--;
    out[out_len] = 0;
}

/* Appends `/comp` (n bytes) to `out`; 0 when it does not fit. */
static int push(const char *comp, u64 n) {
    if (out_len + n + 2 >= PATH_MAX_) return 0;
    if (out_len > 1) out[out_len++] = '/';
    memcpy(out + out_len, comp, n);
    out_len += n;
    out[out_len] = 0;
    return 1;
}

/*
 * Resolves the absolute `path` into `out` as coreutils' canonicalize does. follow: symlinks
 * are followed (readlink -f), else the path is taken as written (realpath -s). check: every
 * component but the last must exist as a directory (readlink -f, realpath -s), else nothing is
 * looked up (realpath -m). Returns 0 for anything to leave to the image's program.
 */
static int resolve(const char *path, int follow, int check) {
    u64 n = len(path);
    if (n == 0 || path[0] != '/' || n >= PATH_MAX_) return 0;
    /* A trailing slash asks for a directory: GNU's rules, not ours. */
    if (n > 1 && path[n - 1] == '/') return 0;
    memcpy(todo, path, n + 1);
    out[0] = '/', out[1] = 0, out_len = 1;
    int links = 0;
    u64 at = 0;
    for (;;) {
        while (todo[at] == '/') at++;
        if (!todo[at]) break;
        u64 start = at;
        while (todo[at] && todo[at] != '/') at++;
        u64 clen = at - start;
        int last = 1;
        for (u64 i = at; todo[i]; i++)
            if (todo[i] != '/') { last = 0; break; }
        if (clen == 1 && todo[start] == '.') continue;
        if (clen == 2 && todo[start] == '.' && todo[start + 1] == '.') {
            pop();
            continue;
        }
        if (!push(todo + start, clen)) return 0;
        if (!check) continue;
        /* readlink -f looks at the link itself; realpath -s through it (GNU's stat). */
        struct kstat st;
        i64 err = stat_at(out, &st, !follow);
        if (err) {
            /* Missing: fine for the last component only; any other error (a loop, a file
             * taken for a directory) is GNU's to say. */
            if (last && err == -ENOENT) continue;
            return 0;
        }
        if (follow && (st.st_mode & S_IFMT) == S_IFLNK) {
            static char target[PATH_MAX_];
            if (++links > MAX_LINKS) return 0;
            i64 t = sys4(SYS_readlinkat, AT_FDCWD, (i64)out, (i64)target, PATH_MAX_ - 1);
            /* An empty target, or one whose trailing slash asks for a directory: GNU's. */
            if (t <= 0 || target[t - 1] == '/') return 0;
            target[t] = 0;
            /* The rest of the walk becomes the link's contents then what followed the link. */
            u64 rest = len(todo + at);
            if ((u64)t + 1 + rest >= PATH_MAX_) return 0;
            static char joined[PATH_MAX_];
            memcpy(joined, target, (u64)t);
            joined[t] = '/';
            memcpy(joined + t + 1, todo + at, rest + 1);
            memcpy(todo, joined, (u64)t + 2 + rest);
            at = 0;
            if (target[0] == '/') {
                out[0] = '/', out[1] = 0, out_len = 1;
            } else {
                pop();
            }
            continue;
        }
        /* Not the last: it must be a directory. */
        if (!last && (st.st_mode & S_IFMT) != S_IFDIR) return 0;
    }
    return 1;
}

/*
 * mkdir -p for the absolute `path`: every missing directory made with 0777 less the umask, as
 * GNU mkdir does when the umask leaves the owner write and search. Returns 0 for anything to
 * leave to the image's program (another umask, `.` or `..`, an error, a file in the way).
 */
static int make_dirs(const char *path) {
    u64 n = len(path);
    if (n < 2 || path[0] != '/' || n >= PATH_MAX_) return 0;
    i64 mask = sys3(SYS_umask, 0, 0, 0);
    sys3(SYS_umask, mask, 0, 0);
    if (mask & 0300) return 0;
    memcpy(todo, path, n + 1);
    u64 at = 0;
    while (todo[at]) {
        while (todo[at] == '/') at++;
        if (!todo[at]) break;
        u64 start = at;
        while (todo[at] && todo[at] != '/') at++;
        if (todo[start] == '.' && (at - start == 1 || (at - start == 2 && todo[start + 1] == '.')))
            return 0;
        char saved = todo[at];
        todo[at] = 0;
        i64 err = sys3(SYS_mkdir, (i64)todo, 0777, 0);
        if (err == -EEXIST) {
            struct kstat st;
            if (stat_at(todo, &st, 1) || (st.st_mode & S_IFMT) != S_IFDIR) return 0;
        } else if (err) {
            return 0;
        }
        todo[at] = saved;
    }
    return 1;
}

static void answer(void) {
    out[out_len] = '\n';
    if (sys3(SYS_write, 1, (i64)out, (i64)out_len + 1) != (i64)out_len + 1) quit(1);
    quit(0);
}

__attribute__((used)) void ccb_main(i64 *sp) {
    int argc = (int)sp[0];
    argv_ = (char **)(sp + 1);
    envp_ = argv_ + argc + 1;
    const char *name = argc > 0 ? argv_[0] : "";
    for (const char *p = name; *p; p++)
        if (*p == '/') name = p + 1;
    int readlink = same(name, "readlink"), realpath = same(name, "realpath");
    if (same(name, "mkdir")) {
        if (argc == 3 && same(argv_[1], "-p") && make_dirs(argv_[2])) quit(0);
        fallback("mkdir");
    }
    if (!readlink && !realpath) {
        static const char msg[] = "ccb-canon: run as readlink, realpath or mkdir\n";
        sys3(SYS_write, 2, (i64)msg, sizeof msg - 1);
        quit(2);
    }
    if (argc == 3) {
        const char *opt = argv_[1], *path = argv_[2];
        if (readlink && same(opt, "-f") && resolve(path, 1, 1)) answer();
        if (realpath && same(opt, "-s") && resolve(path, 0, 1)) answer();
        if (realpath && (same(opt, "-ms") || same(opt, "-sm")) && resolve(path, 0, 0)) answer();
    }
    fallback(readlink ? "readlink" : "realpath");
}

__asm__(".globl _start\n"
        "_start:\n"
        "  xor %rbp, %rbp\n"
        "  mov %rsp, %rdi\n"
        "  and $-16, %rsp\n"
        "  call ccb_main\n"
        "  hlt\n");
