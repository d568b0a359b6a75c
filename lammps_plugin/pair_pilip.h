// pair_style pilip: pilip machine-learned potentials (exported ONNX models) in LAMMPS, through pilip's C API.
#ifndef LMP_PAIR_PILIP_H
#define LMP_PAIR_PILIP_H

#include "pair.h"
#include "pilip.hpp"

#include <memory>
#include <string>
#include <vector>

namespace LAMMPS_NS {

class PairPilip : public Pair {
public:
    PairPilip(class LAMMPS *);
    ~PairPilip() override;
    void compute(int, int) override;
    void settings(int, char **) override;
    void coeff(int, char **) override;
    void init_style() override;
    double init_one(int, int) override;

protected:
    void load_model(const std::string &path, const char *command);
    std::unique_ptr<pilip::Model> model;
    std::string options_json;       // from pair_style keywords
    std::string settings_text;      // "engine E, threads N", for error messages
    std::string model_path;         // the loaded model's file (reloaded when pair_style is re-issued)
    std::string model_options;      // the options_json the loaded model was created with
    double model_cutoff = 0.0;
    std::vector<int32_t> type_z;    // atomic number per LAMMPS type (index 1..ntypes), 0 = NULL
    bool has_null_types = false;
    // per-step buffers
    std::vector<int32_t> z_all, centers, counts, flat;
    std::vector<const int32_t *> lists;
    std::vector<double> vatom9;

    void allocate();
    void check_units() const;
};

}  // namespace LAMMPS_NS

#endif
