/*
 * gantry-runner: the runner layer's entry point (RUNNER_BINARY_PATH in gantry/resources.py).
 *
 * A static executable, so nothing of the image it runs in (its libc, its dynamic loader)
 * is used to start it. It starts the runner bundle that the layer carries beside it,
 * <prefix>/lib/gantry-runner/, through the bundle's own dynamic loader with the bundle's own
 * libraries: the bundle unpacks nothing at start, and no library of the image is loaded.
 *
 * The variables through which a dynamic loader and a C library can be made to load code
 * (LD_*, GLIBC_TUNABLES, MALLOC_*) are kept away from the bundle's loader: each travels as
 * GANTRY_RUNNER_SAVED_<NAME>, and the runner puts it back before it starts the algorithm,
 * whose environment it belongs to.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

#define SAVED_PREFIX "GANTRY_RUNNER_SAVED_"
#define SELF_VARIABLE "GANTRY_RUNNER_EXECUTABLE="
#define BUNDLE "/lib/gantry-runner"
#define LOADER "/_internal/ld-linux-x86-64.so.2"
#define LIBRARIES "/_internal"
#define PROGRAM "/gantry-runner"

static const char *const LOADER_VARIABLES[] = {"LD_", "GLIBC_TUNABLES=", "MALLOC_", NULL};

static int for_the_loader(const char *entry) {
    for (const char *const *prefix = LOADER_VARIABLES; *prefix; prefix++) {
        if (strncmp(entry, *prefix, strlen(*prefix)) == 0) {
            return 1;
        }
    }
    return 0;
}

static char *joined(const char *a, const char *b) {
    size_t size = strlen(a) + strlen(b) + 1;
    char *out = malloc(size);
    if (!out) {
        perror("gantry-runner");
        exit(127);
    }
    snprintf(out, size, "%s%s", a, b);
    return out;
}

int main(int argc, char **argv) {
    char self[PATH_MAX];
    ssize_t length = readlink("/proc/self/exe", self, sizeof self - 1);
    if (length <= 0) {
        fprintf(stderr, "gantry-runner: cannot find its own path (is /proc mounted?)\n");
        return 127;
    }
    self[length] = '\0';

    /* <prefix>/bin/gantry-runner -> <prefix> */
    char prefix[PATH_MAX];
    memcpy(prefix, self, (size_t)length + 1);
    for (int level = 0; level < 2; level++) {
        char *slash = strrchr(prefix, '/');
        if (!slash) {
            fprintf(stderr, "gantry-runner: unexpected location %s\n", self);
            return 127;
        }
        *slash = '\0';
    }
    char *bundle = joined(prefix, BUNDLE);
    char *loader = joined(bundle, LOADER);
    char *libraries = joined(bundle, LIBRARIES);
    char *program = joined(bundle, PROGRAM);

    size_t count = 0;
    while (environ[count]) {
        count++;
    }
    char **env = calloc(count + 2, sizeof *env);
    if (!env) {
        perror("gantry-runner");
        return 127;
    }
    size_t kept = 0;
    for (size_t i = 0; i < count; i++) {
        if (strncmp(environ[i], SELF_VARIABLE, strlen(SELF_VARIABLE)) == 0) {
            continue;
        }
        env[kept++] = for_the_loader(environ[i]) ? joined(SAVED_PREFIX, environ[i]) : environ[i];
    }
    env[kept++] = joined(SELF_VARIABLE, self);
    env[kept] = NULL;

    /* ld.so --inhibit-cache --library-path LIBS --argv0 PROGRAM PROGRAM ARGS... */
    char **args = calloc((size_t)argc + 8, sizeof *args);
    if (!args) {
        perror("gantry-runner");
        return 127;
    }
    size_t n = 0;
    args[n++] = loader;
    args[n++] = "--inhibit-cache";
    args[n++] = "--library-path";
    args[n++] = libraries;
    /* The bundle finds its files next to the path in argv[0]. */
    args[n++] = "--argv0";
    args[n++] = program;
    args[n++] = program;
    for (int i = 1; i < argc; i++) {
        args[n++] = argv[i];
    }
    args[n] = NULL;
    execve(loader, args, env);
    fprintf(stderr, "gantry-runner: cannot start %s: ", loader);
    perror(NULL);
    return 127;
}
