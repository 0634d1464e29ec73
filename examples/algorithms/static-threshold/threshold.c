/* A threshold algorithm as one static executable: the image holds nothing else (no shell,
 * no Python, no libc), the way distroless and scratch images are built.
 *
 * Reads the first .mha in /input/images/ct-image/ (uncompressed, MET_SHORT, MET_FLOAT or
 * MET_UCHAR), writes /output/images/segmentation/segmentation.mha (MET_UCHAR, voxel > 0,
 * the input's geometry) and /output/results.json. Exit status 1 with a message on stderr
 * when the input cannot be read.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define INPUT_DIR "/input/images/ct-image"
#define OUTPUT_DIR "/output/images/segmentation"

static int fail(const char *what) {
    fprintf(stderr, "threshold: %s\n", what);
    return 1;
}

static int starts_with(const char *line, const char *key) {
    size_t n = strlen(key);
    return strncmp(line, key, n) == 0 && (line[n] == ' ' || line[n] == '=');
}

int main(void) {
    DIR *dir = opendir(INPUT_DIR);
    if (!dir) return fail("cannot open " INPUT_DIR);
    char path[4096] = "";
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        size_t len = strlen(entry->d_name);
        if (len > 4 && strcmp(entry->d_name + len - 4, ".mha") == 0) {
            snprintf(path, sizeof path, "%s/%s", INPUT_DIR, entry->d_name);
            break;
        }
    }
    closedir(dir);
    if (!path[0]) return fail("no .mha image in " INPUT_DIR);
    FILE *in = fopen(path, "rb");
    if (!in) return fail("cannot open the input image");

    static const char *geometry[] = {"NDims", "DimSize", "ElementSpacing", "Offset",
                                     "TransformMatrix", "CenterOfRotation",
                                     "AnatomicalOrientation"};
    char header[8192] = "ObjectType = Image\n";
    char line[1024], type[64] = "";
    long voxels = 1;
    int local = 0;
    while (fgets(line, sizeof line, in)) {
        for (size_t i = 0; i < sizeof geometry / sizeof *geometry; i++)
            if (starts_with(line, geometry[i])) strncat(header, line, sizeof header - strlen(header) - 1);
        if (starts_with(line, "DimSize")) {
            char *p = strchr(line, '=') + 1, *end;
            voxels = 1;
            for (long d = strtol(p, &end, 10); end != p; p = end, d = strtol(p, &end, 10)) voxels *= d;
        }
        if (starts_with(line, "CompressedData") && strstr(line, "True"))
            return fail("compressed .mha images are not supported");
        if (starts_with(line, "ElementType")) sscanf(strchr(line, '=') + 1, "%63s", type);
        if (starts_with(line, "ElementDataFile")) { local = strstr(line, "LOCAL") != NULL; break; }
    }
    if (!local) return fail("only single-file .mha images are supported");
    size_t size = strcmp(type, "MET_SHORT") == 0 ? 2 : strcmp(type, "MET_FLOAT") == 0 ? 4
                : strcmp(type, "MET_UCHAR") == 0 ? 1 : 0;
    if (!size) return fail("unsupported ElementType");

    unsigned char *mask = malloc(voxels);
    unsigned char value[4];
    long foreground = 0;
    for (long i = 0; i < voxels; i++) {
        if (fread(value, size, 1, in) != 1) return fail("the image data is truncated");
        double v = size == 2 ? *(short *)value : size == 4 ? *(float *)value : *value;
        mask[i] = v > 0;
        foreground += mask[i];
    }
    fclose(in);

    mkdir("/output/images", 0755);
    if (mkdir(OUTPUT_DIR, 0755) != 0 && errno != EEXIST) return fail("cannot create " OUTPUT_DIR);
    FILE *out = fopen(OUTPUT_DIR "/segmentation.mha", "wb");
    if (!out) return fail("cannot write the segmentation");
    fprintf(out, "%sBinaryData = True\nBinaryDataByteOrderMSB = False\nCompressedData = False\n"
                 "ElementType = MET_UCHAR\nElementDataFile = LOCAL\n", header);
    fwrite(mask, 1, voxels, out);
    fclose(out);
    FILE *results = fopen("/output/results.json", "w");
    if (!results) return fail("cannot write results.json");
    fprintf(results, "{\"foreground_voxels\": %ld, \"static\": true}\n", foreground);
    fclose(results);
    printf("segmented %ld voxels\n", foreground);
    return 0;
}
