/* Loads a pilip model through the C API, computes the structures of a reference file written by the Rust test
 * (tests/runtime.rs) and compares energy, per-atom energies, forces and virial. Also checks error handling.
 * Usage: check_reference MODEL.onnx REFERENCE.txt; exit status 0 when everything agrees. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pilip.h"

/* Test-only export of libpilip, deliberately not in pilip.h: panics inside the library. */
pilip_status_t pilip_debug_panic(void);

static int failures = 0;

static void expect(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "FAILED: %s\n", what);
        failures++;
    }
}

static double rel(double a, double b) { return fabs(a - b) / (fabs(b) > 1.0 ? fabs(b) : 1.0); }

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL.onnx REFERENCE.txt\n", argv[0]);
        return 2;
    }
    printf("pilip %s (ABI %d, model format %d)\n", pilip_version(), PILIP_ABI_VERSION, PILIP_MODEL_FORMAT_VERSION);

    pilip_model_t *model = NULL;
    pilip_status_t status = pilip_model_load(argv[1], NULL, &model);
    if (status != PILIP_SUCCESS) {
        fprintf(stderr, "load failed (%d): %s\n", status, pilip_last_error());
        return 1;
    }
    double cutoff = 0.0;
    expect(pilip_model_cutoff(model, &cutoff) == PILIP_SUCCESS && cutoff > 0.0, "cutoff");
    size_t n_species = 0;
    expect(pilip_model_species(model, NULL, 0, &n_species) == PILIP_SUCCESS && n_species > 0, "species count");
    int32_t species[16];
    expect(pilip_model_species(model, species, 16, &n_species) == PILIP_SUCCESS, "species");
    const char *json = NULL;
    expect(pilip_model_metadata_json(model, &json) == PILIP_SUCCESS && strstr(json, "\"format_version\":1") != NULL,
           "metadata json");

    FILE *ref = fopen(argv[2], "r");
    if (!ref) {
        fprintf(stderr, "cannot open %s\n", argv[2]);
        return 2;
    }
    int n_structures = 0;
    if (fscanf(ref, "%d", &n_structures) != 1) return 2;
    for (int s = 0; s < n_structures; s++) {
        size_t n = 0;
        int periodic = 0;
        if (fscanf(ref, "%zu %d", &n, &periodic) != 2) return 2;
        double *pos = malloc(3 * n * sizeof(double)), *ref_ae = malloc(n * sizeof(double));
        double *ref_f = malloc(3 * n * sizeof(double)), *ae = malloc(n * sizeof(double));
        double *f = malloc(3 * n * sizeof(double));
        int32_t *z = malloc(n * sizeof(int32_t));
        double cell[9], ref_virial[9], virial[9], ref_energy = 0.0, energy = 0.0;
        bool pbc[3] = {periodic, periodic, periodic};
        for (int k = 0; k < 9; k++)
            if (fscanf(ref, "%lf", &cell[k]) != 1) return 2;
        for (size_t i = 0; i < n; i++) {
            if (fscanf(ref, "%d %lf %lf %lf %lf %lf %lf %lf", &z[i], &pos[3 * i], &pos[3 * i + 1], &pos[3 * i + 2],
                       &ref_ae[i], &ref_f[3 * i], &ref_f[3 * i + 1], &ref_f[3 * i + 2]) != 8)
                return 2;
        }
        if (fscanf(ref, "%lf", &ref_energy) != 1) return 2;
        for (int k = 0; k < 9; k++)
            if (fscanf(ref, "%lf", &ref_virial[k]) != 1) return 2;

        status = pilip_model_compute(model, n, pos, z, periodic ? cell : NULL, pbc, &energy, ae, f, virial);
        if (status != PILIP_SUCCESS) {
            fprintf(stderr, "compute failed (%d): %s\n", status, pilip_last_error());
            return 1;
        }
        double worst = rel(energy, ref_energy);
        for (size_t i = 0; i < n; i++) {
            double a = rel(ae[i], ref_ae[i]);
            worst = a > worst ? a : worst;
            for (int k = 0; k < 3; k++) {
                double d = rel(f[3 * i + k], ref_f[3 * i + k]);
                worst = d > worst ? d : worst;
            }
        }
        for (int k = 0; k < 9; k++) {
            double d = rel(virial[k], ref_virial[k]);
            worst = d > worst ? d : worst;
        }
        printf("structure %d: %zu atoms, E = %.10f eV, max relative deviation from Rust %.2e\n", s, n, energy, worst);
        expect(worst < 1e-12, "results equal the Rust results");
        /* Skipping outputs with NULL must work. */
        expect(pilip_model_compute(model, n, pos, z, periodic ? cell : NULL, pbc, NULL, NULL, NULL, NULL) ==
                   PILIP_SUCCESS,
               "all outputs NULL");
        free(pos), free(ref_ae), free(ref_f), free(ae), free(f), free(z);
    }
    fclose(ref);

    /* Errors are status codes with messages, never crashes. */
    double e = 0.0;
    expect(pilip_model_compute(NULL, 0, NULL, NULL, NULL, NULL, &e, NULL, NULL, NULL) == PILIP_ERROR_INVALID_ARGUMENT,
           "NULL model");
    expect(strstr(pilip_last_error(), "model") != NULL, "NULL model message");
    pilip_model_t *missing = (pilip_model_t *)0x1;
    expect(pilip_model_load("/nonexistent/model.onnx", NULL, &missing) == PILIP_ERROR_IO && missing == NULL,
           "missing file");
    expect(strstr(pilip_last_error(), "/nonexistent/model.onnx") != NULL, "missing file message names the file");
    expect(pilip_debug_panic() == PILIP_ERROR_INTERNAL, "panic becomes a status");
    pilip_model_free(NULL);
    pilip_model_free(model);
    if (failures == 0) printf("C API: all checks passed\n");
    return failures == 0 ? 0 : 1;
}
