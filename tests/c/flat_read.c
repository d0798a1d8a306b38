/* flat_read.c: read every tensor of a mobilenet-np flat binary file (.bin, docs/golden_format.md).
 *
 *   cc -std=c99 -O2 -o flat_read flat_read.c && ./flat_read golden.bin
 *
 * Prints one line per tensor, in the file's order:
 *   NAME DTYPE SHAPE NBYTES CHECKSUM SUM
 * SHAPE is "1x3x224x224" ("scalar" for rank 0), CHECKSUM the sum over the tensor's bytes b[i] of
 * (i + 1) * b[i] modulo 2^64 in hex, SUM the sum of the values as doubles (float32 / float64 / int
 * types). Exit status 0, or 1 with a message on stderr when the file is not valid.
 * No library beyond C99's: the JSON index is read by the small parser below, which knows JSON
 * strings, numbers, objects, arrays, true, false and null. Assumes nothing about the host's byte
 * order: every number is assembled from little-endian bytes.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_NAME 256
#define MAX_RANK 8

typedef struct { const char *text; size_t length, at; } Json;

typedef struct {
    char name[MAX_NAME], dtype[16];
    int rank;
    uint64_t shape[MAX_RANK], offset, nbytes;
} Entry;

static int fail(const char *message) { fprintf(stderr, "flat_read: %s\n", message); exit(1); return 1; }

static uint64_t little_endian(const unsigned char *bytes, int count) {
    uint64_t value = 0;
    for (int i = count - 1; i >= 0; i--) value = (value << 8) | bytes[i];
    return value;
}

/* ---- a JSON reader just big enough for the index ---- */
static void skip_space(Json *j) {
    while (j->at < j->length && strchr(" \t\r\n", j->text[j->at])) j->at++;
}
static int peek(Json *j) { skip_space(j); return j->at < j->length ? j->text[j->at] : -1; }
static void expect(Json *j, char c) { if (peek(j) != c) fail("malformed JSON index"); j->at++; }

static void read_string(Json *j, char *out, size_t capacity) {       /* out may be NULL: skip */
    size_t n = 0;
    expect(j, '"');
    while (j->at < j->length && j->text[j->at] != '"') {
        char c = j->text[j->at++];
        if (c == '\\') {
            if (j->at >= j->length) break;
            c = j->text[j->at++];
            if (c == 'u') { j->at += 4; c = '?'; }                     /* names are ASCII; others: '?' */
            else if (c == 'n') c = '\n'; else if (c == 't') c = '\t'; else if (c == 'r') c = '\r';
            else if (c == 'b') c = '\b'; else if (c == 'f') c = '\f';  /* '"', '\\', '/' stand for themselves */
        }
        if (out && n + 1 < capacity) out[n++] = c;
    }
    expect(j, '"');
    if (out) out[n] = '\0';
}

static uint64_t read_integer(Json *j) {
    uint64_t value = 0;
    if (peek(j) < '0' || peek(j) > '9') fail("expected a non-negative integer in the index");
    while (j->at < j->length && j->text[j->at] >= '0' && j->text[j->at] <= '9')
        value = value * 10 + (uint64_t)(j->text[j->at++] - '0');
    return value;
}

static void skip_value(Json *j) {
    int c = peek(j);
    if (c == '"') { read_string(j, NULL, 0); return; }
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        j->at++;
        if (peek(j) == close) { j->at++; return; }
        for (;;) {
            if (close == '}') { read_string(j, NULL, 0); expect(j, ':'); }
            skip_value(j);
            if (peek(j) == ',') { j->at++; continue; }
            expect(j, close);
            return;
        }
    }
    while (j->at < j->length && !strchr(",]} \t\r\n", j->text[j->at])) j->at++;   /* number, true, false, null */
}

static void read_entry(Json *j, Entry *e) {
    char key[32];
    memset(e, 0, sizeof *e);
    expect(j, '{');
    while (peek(j) != '}') {
        read_string(j, key, sizeof key);
        expect(j, ':');
        if (!strcmp(key, "name")) read_string(j, e->name, sizeof e->name);
        else if (!strcmp(key, "dtype")) read_string(j, e->dtype, sizeof e->dtype);
        else if (!strcmp(key, "offset")) e->offset = read_integer(j);
        else if (!strcmp(key, "nbytes")) e->nbytes = read_integer(j);
        else if (!strcmp(key, "shape")) {
            expect(j, '[');
            while (peek(j) != ']') {
                if (e->rank == MAX_RANK) fail("tensor of too high a rank");
                e->shape[e->rank++] = read_integer(j);
                if (peek(j) == ',') j->at++;
            }
            expect(j, ']');
        } else skip_value(j);
        if (peek(j) == ',') j->at++;
    }
    expect(j, '}');
}

/* ---- the values ---- */
static int item_size(const char *dtype) {
    static const char *names[] = {"float64", "float32", "float16", "int64", "int32", "int16", "int8",
                                  "uint64", "uint32", "uint16", "uint8", "bool"};
    static const int sizes[] = {8, 4, 2, 8, 4, 2, 1, 8, 4, 2, 1, 1};
    for (int i = 0; i < 12; i++) if (!strcmp(dtype, names[i])) return sizes[i];
    return 0;
}

static double value_at(const unsigned char *p, const char *dtype) {
    uint64_t bits = little_endian(p, item_size(dtype));
    if (!strcmp(dtype, "float32")) { uint32_t b = (uint32_t)bits; float f; memcpy(&f, &b, 4); return f; }
    if (!strcmp(dtype, "float64")) { double d; memcpy(&d, &bits, 8); return d; }
    if (!strcmp(dtype, "int64")) return (double)(int64_t)bits;
    if (!strcmp(dtype, "int32")) return (double)(int32_t)(uint32_t)bits;
    if (!strcmp(dtype, "int16")) return (double)(int16_t)(uint16_t)bits;
    if (!strcmp(dtype, "int8")) return (double)(int8_t)(uint8_t)bits;
    return (double)bits;                                               /* unsigned types, bool */
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s FILE.bin\n", argv[0]); return 2; }
    FILE *file = fopen(argv[1], "rb");
    if (!file) fail("cannot open the file");
    fseek(file, 0, SEEK_END);
    uint64_t file_size = (uint64_t)ftell(file);
    fseek(file, 0, SEEK_SET);

    unsigned char preamble[24];                      /* magic[8], version u32, alignment u32, index length u64 */
    if (fread(preamble, 1, 24, file) != 24 || memcmp(preamble, "MNPFLAT\0", 8)) fail("not a flat binary file");
    uint64_t version = little_endian(preamble + 8, 4), alignment = little_endian(preamble + 12, 4);
    uint64_t index_length = little_endian(preamble + 16, 8);
    if (version != 1) fail("unsupported version (this reader knows version 1)");
    if (alignment == 0 || 24 + index_length > file_size) fail("bad preamble");
    char *index = malloc(index_length + 1);
    if (fread(index, 1, index_length, file) != index_length) fail("index cut short");
    index[index_length] = '\0';
    uint64_t data_start = (24 + index_length + alignment - 1) / alignment * alignment;

    Json j = {index, (size_t)index_length, 0};
    char key[32];
    int found = 0;
    expect(&j, '{');
    while (peek(&j) != '}') {
        read_string(&j, key, sizeof key);
        expect(&j, ':');
        if (strcmp(key, "tensors")) { skip_value(&j); }
        else {
            found = 1;
            expect(&j, '[');
            while (peek(&j) != ']') {
                Entry e;
                read_entry(&j, &e);
                uint64_t count = 1;
                for (int d = 0; d < e.rank; d++) count *= e.shape[d];
                int size = item_size(e.dtype);
                if (!size) fail("unknown dtype");
                if (count * (uint64_t)size != e.nbytes) fail("nbytes does not match dtype and shape");
                if (e.offset % alignment) fail("tensor not aligned");
                if (data_start + e.offset + e.nbytes > file_size) fail("tensor beyond the end of the file");
                unsigned char *data = malloc(e.nbytes ? e.nbytes : 1);
                fseek(file, (long)(data_start + e.offset), SEEK_SET);
                if (fread(data, 1, e.nbytes, file) != e.nbytes) fail("read failed");
                uint64_t checksum = 0;
                for (uint64_t i = 0; i < e.nbytes; i++) checksum += (i + 1) * data[i];
                double sum = 0;
                for (uint64_t i = 0; i < count; i++) sum += value_at(data + i * size, e.dtype);
                printf("%s %s ", e.name, e.dtype);
                if (e.rank == 0) printf("scalar");
                for (int d = 0; d < e.rank; d++) printf(d ? "x%llu" : "%llu", (unsigned long long)e.shape[d]);
                printf(" %llu %016llx %.17g\n", (unsigned long long)e.nbytes, (unsigned long long)checksum, sum);
                free(data);
                if (peek(&j) == ',') j.at++;
            }
            expect(&j, ']');
        }
        if (peek(&j) == ',') j.at++;
    }
    if (!found) fail("index has no \"tensors\" list");
    free(index);
    fclose(file);
    return 0;
}
