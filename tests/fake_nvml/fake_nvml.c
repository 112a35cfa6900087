/*
 * A fake libnvidia-ml.so.1 for gpupool's tests.
 *
 * It implements the few NVML C functions that gpupool's NVMLProvider reaches
 * through the real nvidia-ml-py (pynvml) ctypes bindings, so those bindings
 * are exercised for real on machines without a GPU.  The struct layouts
 * follow the public nvml.h, as mirrored by pynvml's ctypes classes.
 *
 * Every call re-reads the state file named by $FAKE_NVML_STATE, so a test
 * changes the machine by rewriting that file.  The file holds `key=value`
 * lines (see tests/fake_nvml/__init__.py, which writes it):
 *
 *   init_error=9                   nvmlInit* returns this code
 *   driver_version=550.54.15
 *   count=2                        physical GPUs
 *   gpu.0.uuid=GPU-...             gpu.N.name, gpu.N.bus_id
 *   gpu.0.total=..., .reserved=..., .used=...   bytes
 *   gpu.0.util=37                  percent
 *   gpu.0.error=15                 every query on GPU 0 (and its MIG devices) fails so
 *   gpu.0.memory_error=3, gpu.0.memory_v2_error=25, gpu.0.util_error=3,
 *   gpu.0.procs_error=6, gpu.0.handle_error=15, gpu.0.uuid_error=15, gpu.0.name_error=15
 *   gpu.0.procs=123:1048576,456:-  pid:bytes ('-': not available)
 *   gpu.0.mig=1                    MIG mode enabled
 *   gpu.0.mig_max=7                MIG slots; gpu.0.mig.S.* as for a GPU
 *
 * Handles are opaque pointers encoding (gpu + 1) * 256 + (slot + 1) for MIG
 * devices and (gpu + 1) * 256 for whole GPUs.
 *
 * Build variants (for the fallback paths of old drivers):
 *   -DFAKE_NVML_NO_MEMORY_V2      no nvmlDeviceGetMemoryInfo_v2 symbol
 *   -DFAKE_NVML_NO_INIT_WITH_FLAGS no nvmlInitWithFlags symbol
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

typedef struct {
    char busIdLegacy[16];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

#define NVML_MEMORY_V2 (unsigned int)(sizeof(nvmlMemory_v2_t) | (2 << 24U))
#define MAX_PROCS 64

static int init_count = 0;

/* Test hook: how many nvmlInit calls are not yet matched by nvmlShutdown. */
int fakeNvmlInitCount(void) { return init_count; }

/* ---- the state file ---------------------------------------------------- */

static int lookup(const char *key, char *out, size_t out_size) {
    const char *path = getenv("FAKE_NVML_STATE");
    if (path == NULL) return 0;
    FILE *f = fopen(path, "r");
    if (f == NULL) return 0;
    char line[4096];
    size_t key_len = strlen(key);
    int found = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, key, key_len) == 0 && line[key_len] == '=') {
            char *value = line + key_len + 1;
            value[strcspn(value, "\r\n")] = '\0';
            snprintf(out, out_size, "%s", value);
            found = 1;
            break;
        }
    }
    fclose(f);
    return found;
}

static long long lookup_ll(const char *key, long long fallback) {
    char buf[64];
    if (!lookup(key, buf, sizeof buf)) return fallback;
    return strtoll(buf, NULL, 10);
}

static int state_exists(void) {
    const char *path = getenv("FAKE_NVML_STATE");
    if (path == NULL) return 0;
    FILE *f = fopen(path, "r");
    if (f == NULL) return 0;
    fclose(f);
    return 1;
}

/* ---- handles ----------------------------------------------------------- */

typedef struct {
    int gpu;  /* physical index */
    int slot; /* MIG slot, or -1 for the whole GPU */
} dev_ref;

static nvmlDevice_t make_handle(int gpu, int slot) {
    return (nvmlDevice_t)(size_t)((gpu + 1) * 256 + (slot + 1));
}

static int decode(nvmlDevice_t handle, dev_ref *ref) {
    size_t raw = (size_t)handle;
    if (raw < 256) return 0;
    ref->gpu = (int)(raw / 256) - 1;
    ref->slot = (int)(raw % 256) - 1;
    if (ref->gpu >= lookup_ll("count", 0)) return 0;
    return 1;
}

/* The key prefix of a device: "gpu.N" or "gpu.N.mig.S". */
static void prefix(const dev_ref *ref, char *out, size_t size) {
    if (ref->slot < 0)
        snprintf(out, size, "gpu.%d", ref->gpu);
    else
        snprintf(out, size, "gpu.%d.mig.%d", ref->gpu, ref->slot);
}

static long long field_ll(const dev_ref *ref, const char *name, long long fallback) {
    char key[128], pre[64];
    prefix(ref, pre, sizeof pre);
    snprintf(key, sizeof key, "%s.%s", pre, name);
    return lookup_ll(key, fallback);
}

static int field_str(const dev_ref *ref, const char *name, char *out, size_t size) {
    char key[128], pre[64];
    prefix(ref, pre, sizeof pre);
    snprintf(key, sizeof key, "%s.%s", pre, name);
    return lookup(key, out, size);
}

/* Common entry checks: initialised, valid handle, and the injected errors
 * (the whole GPU's `error` also breaks its MIG devices). */
static nvmlReturn_t enter(nvmlDevice_t handle, dev_ref *ref, const char *error_field) {
    if (init_count <= 0) return NVML_ERROR_UNINITIALIZED;
    if (!decode(handle, ref)) return NVML_ERROR_INVALID_ARGUMENT;
    char key[64];
    snprintf(key, sizeof key, "gpu.%d.error", ref->gpu);
    nvmlReturn_t err = (nvmlReturn_t)lookup_ll(key, 0);
    if (err != NVML_SUCCESS) return err;
    if (ref->slot >= 0 && (err = (nvmlReturn_t)field_ll(ref, "error", 0)) != NVML_SUCCESS)
        return err;
    if (error_field != NULL) return (nvmlReturn_t)field_ll(ref, error_field, 0);
    return NVML_SUCCESS;
}

static nvmlReturn_t copy_string(const char *value, char *out, unsigned int length) {
    if (out == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(value) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(out, value);
    return NVML_SUCCESS;
}

/* ---- init -------------------------------------------------------------- */

static nvmlReturn_t do_init(void) {
    if (!state_exists()) return NVML_ERROR_DRIVER_NOT_LOADED;
    nvmlReturn_t err = (nvmlReturn_t)lookup_ll("init_error", 0);
    if (err != NVML_SUCCESS) return err;
    init_count++;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) { return do_init(); }
nvmlReturn_t nvmlInit(void) { return do_init(); }

#ifndef FAKE_NVML_NO_INIT_WITH_FLAGS
nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    return do_init();
}
#endif

nvmlReturn_t nvmlShutdown(void) {
    if (init_count <= 0) return NVML_ERROR_UNINITIALIZED;
    init_count--;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
        case NVML_SUCCESS: return "Success";
        case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
        case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
        case NVML_ERROR_NOT_FOUND: return "Not Found";
        case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
        default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (init_count <= 0) return NVML_ERROR_UNINITIALIZED;
    char buf[80];
    if (!lookup("driver_version", buf, sizeof buf)) snprintf(buf, sizeof buf, "999.99.99");
    return copy_string(buf, version, length);
}

/* ---- devices ----------------------------------------------------------- */

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (init_count <= 0) return NVML_ERROR_UNINITIALIZED;
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *count = (unsigned int)lookup_ll("count", 0);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (init_count <= 0) return NVML_ERROR_UNINITIALIZED;
    if (device == NULL || (long long)index >= lookup_ll("count", 0))
        return NVML_ERROR_INVALID_ARGUMENT;
    dev_ref ref = {(int)index, -1};
    nvmlReturn_t err = (nvmlReturn_t)field_ll(&ref, "handle_error", 0);
    if (err != NVML_SUCCESS) return err;
    *device = make_handle((int)index, -1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    dev_ref ref;
    nvmlReturn_t err = enter(device, &ref, "uuid_error");
    if (err != NVML_SUCCESS) return err;
    char buf[96];
    if (!field_str(&ref, "uuid", buf, sizeof buf)) return NVML_ERROR_UNKNOWN;
    return copy_string(buf, uuid, length);
}

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    if (init_count <= 0) return NVML_ERROR_UNINITIALIZED;
    if (uuid == NULL || device == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    int count = (int)lookup_ll("count", 0);
    char buf[96];
    for (int gpu = 0; gpu < count; gpu++) {
        dev_ref ref = {gpu, -1};
        if (field_str(&ref, "uuid", buf, sizeof buf) && strcmp(buf, uuid) == 0) {
            *device = make_handle(gpu, -1);
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    dev_ref ref;
    nvmlReturn_t err = enter(device, &ref, "name_error");
    if (err != NVML_SUCCESS) return err;
    char buf[96];
    if (!field_str(&ref, "name", buf, sizeof buf)) snprintf(buf, sizeof buf, "Fake NVML GPU");
    return copy_string(buf, name, length);
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci) {
    dev_ref ref;
    nvmlReturn_t err = enter(device, &ref, NULL);
    if (err != NVML_SUCCESS) return err;
    if (ref.slot >= 0) return NVML_ERROR_NOT_SUPPORTED; /* as for real MIG handles */
    if (pci == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    memset(pci, 0, sizeof *pci);
    char buf[32];
    if (!field_str(&ref, "bus_id", buf, sizeof buf))
        snprintf(buf, sizeof buf, "00000000:%02X:00.0", 0x10 + ref.gpu);
    snprintf(pci->busId, sizeof pci->busId, "%s", buf);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%.15s", buf + 4);
    pci->bus = (unsigned int)(0x10 + ref.gpu);
    return NVML_SUCCESS;
}

static void memory(const dev_ref *ref, unsigned long long *total, unsigned long long *reserved,
                   unsigned long long *used) {
    *total = (unsigned long long)field_ll(ref, "total", 0);
    *reserved = (unsigned long long)field_ll(ref, "reserved", 0);
    *used = (unsigned long long)field_ll(ref, "used", 0);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *out) {
    dev_ref ref;
    nvmlReturn_t err = enter(device, &ref, "memory_error");
    if (err != NVML_SUCCESS) return err;
    if (out == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned long long total, reserved, used;
    memory(&ref, &total, &reserved, &used);
    /* v1 counts the driver's reserved memory as used. */
    out->total = total;
    out->used = reserved + used;
    out->free = total - out->used;
    return NVML_SUCCESS;
}

#ifndef FAKE_NVML_NO_MEMORY_V2
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *out) {
    dev_ref ref;
    nvmlReturn_t err = enter(device, &ref, "memory_error");
    if (err != NVML_SUCCESS) return err;
    if ((err = (nvmlReturn_t)field_ll(&ref, "memory_v2_error", 0)) != NVML_SUCCESS) return err;
    if (out == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (out->version != NVML_MEMORY_V2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    memory(&ref, &out->total, &out->reserved, &out->used);
    out->free = out->total - out->reserved - out->used;
    return NVML_SUCCESS;
}
#endif

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *out) {
    dev_ref ref;
    nvmlReturn_t err = enter(device, &ref, "util_error");
    if (err != NVML_SUCCESS) return err;
    if (ref.slot >= 0) return NVML_ERROR_NOT_SUPPORTED; /* as for real MIG handles */
    if (out == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    out->gpu = (unsigned int)field_ll(&ref, "util", 0);
    out->memory = 0;
    return NVML_SUCCESS;
}

/* Parses "pid:bytes,pid:-,..." into procs; returns how many. */
static unsigned int parse_procs(const dev_ref *ref, nvmlProcessInfo_t *procs) {
    char buf[4096];
    if (!field_str(ref, "procs", buf, sizeof buf)) return 0;
    unsigned int n = 0;
    for (char *item = strtok(buf, ","); item != NULL && n < MAX_PROCS; item = strtok(NULL, ",")) {
        char *colon = strchr(item, ':');
        procs[n].pid = (unsigned int)strtoul(item, NULL, 10);
        if (colon == NULL || colon[1] == '-')
            procs[n].usedGpuMemory = ~0ULL; /* NVML_VALUE_NOT_AVAILABLE */
        else
            procs[n].usedGpuMemory = strtoull(colon + 1, NULL, 10);
        procs[n].gpuInstanceId = ref->slot < 0 ? ~0U : (unsigned int)ref->slot;
        procs[n].computeInstanceId = ref->slot < 0 ? ~0U : 0;
        n++;
    }
    return n;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                     nvmlProcessInfo_t *infos) {
    dev_ref ref;
    nvmlReturn_t err = enter(device, &ref, "procs_error");
    if (err != NVML_SUCCESS) return err;
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlProcessInfo_t procs[MAX_PROCS];
    unsigned int n = parse_procs(&ref, procs);
    if (*count < n || (infos == NULL && n > 0)) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    *count = n;
    if (n > 0) memcpy(infos, procs, n * sizeof *procs);
    return NVML_SUCCESS;
}

/* ---- MIG --------------------------------------------------------------- */

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *current,
                                  unsigned int *pending) {
    dev_ref ref;
    nvmlReturn_t err = enter(device, &ref, NULL);
    if (err != NVML_SUCCESS) return err;
    if (ref.slot >= 0) return NVML_ERROR_NOT_SUPPORTED;
    long long mode = field_ll(&ref, "mig", -1);
    if (mode < 0) return NVML_ERROR_NOT_SUPPORTED; /* not a MIG-capable GPU */
    if (current == NULL || pending == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *current = *pending = (unsigned int)mode;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
    dev_ref ref;
    nvmlReturn_t err = enter(device, &ref, NULL);
    if (err != NVML_SUCCESS) return err;
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *count = (unsigned int)field_ll(&ref, "mig_max", 0);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                 nvmlDevice_t *mig) {
    dev_ref ref;
    nvmlReturn_t err = enter(device, &ref, NULL);
    if (err != NVML_SUCCESS) return err;
    if (ref.slot >= 0 || mig == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if ((long long)index >= field_ll(&ref, "mig_max", 0)) return NVML_ERROR_INVALID_ARGUMENT;
    dev_ref child = {ref.gpu, (int)index};
    char buf[96];
    if (!field_str(&child, "uuid", buf, sizeof buf)) return NVML_ERROR_NOT_FOUND;
    *mig = make_handle(ref.gpu, (int)index);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *is_mig) {
    dev_ref ref;
    if (init_count <= 0) return NVML_ERROR_UNINITIALIZED;
    if (!decode(device, &ref) || is_mig == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *is_mig = ref.slot >= 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t mig, nvmlDevice_t *device) {
    dev_ref ref;
    if (init_count <= 0) return NVML_ERROR_UNINITIALIZED;
    if (!decode(mig, &ref) || ref.slot < 0 || device == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *device = make_handle(ref.gpu, -1);
    return NVML_SUCCESS;
}
