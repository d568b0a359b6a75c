// pilip — header-only C++17 wrapper of the C API in pilip.h: RAII model handle, status codes turned into
// exceptions, std::vector outputs. Units, layouts and the virial sign are those of pilip.h.
#ifndef PILIP_HPP
#define PILIP_HPP

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "pilip.h"

namespace pilip {

/// Thrown for any non-zero status; `status()` is the C status code (PILIP_ERROR_INVALID_ARGUMENT, _IO, _MODEL,
/// _ENGINE or _INTERNAL), `what()` the library's message.
class Error : public std::runtime_error {
public:
    Error(pilip_status_t status, const std::string &message) : std::runtime_error(message), status_(status) {}
    pilip_status_t status() const noexcept { return status_; }

private:
    pilip_status_t status_;
};

inline void check(pilip_status_t status) {
    if (status != PILIP_SUCCESS) {
        throw Error(status, pilip_last_error());
    }
}

inline std::string version() { return pilip_version(); }

/// Results of a whole-system computation.
struct Result {
    double energy = 0.0;
    std::vector<double> atomic_energies;  // [n]
    std::vector<double> forces;           // [n][3], row-major
    std::array<double, 9> virial{};       // [3][3], row-major
};

/// A loaded model (move-only). Const methods may be called from several threads at once.
class Model {
public:
    explicit Model(const std::string &path, const std::string &options_json = "") {
        check(pilip_model_load(path.c_str(), options_json.c_str(), &model_));
    }
    ~Model() { pilip_model_free(model_); }
    Model(const Model &) = delete;
    Model &operator=(const Model &) = delete;
    Model(Model &&other) noexcept : model_(std::exchange(other.model_, nullptr)) {}
    Model &operator=(Model &&other) noexcept {
        if (this != &other) {
            pilip_model_free(model_);
            model_ = std::exchange(other.model_, nullptr);
        }
        return *this;
    }

    double cutoff() const {
        double c = 0.0;
        check(pilip_model_cutoff(model_, &c));
        return c;
    }

    std::vector<int32_t> species() const {
        size_t n = 0;
        check(pilip_model_species(model_, nullptr, 0, &n));
        std::vector<int32_t> z(n);
        check(pilip_model_species(model_, z.data(), z.size(), &n));
        return z;
    }

    /// Element symbols of species(), in the same order (e.g. "Cu"): the names the library uses.
    std::vector<std::string> symbols() const {
        size_t n = 0;
        check(pilip_model_species(model_, nullptr, 0, &n));
        std::vector<std::string> s;
        s.reserve(n);
        for (size_t i = 0; i < n; i++) {
            const char *symbol = nullptr;
            check(pilip_model_symbol(model_, i, &symbol));
            s.emplace_back(symbol);
        }
        return s;
    }

    std::string metadata_json() const {
        const char *json = nullptr;
        check(pilip_model_metadata_json(model_, &json));
        return json;
    }

    /// Whole system; `cell` (9 values, rows = lattice vectors) may be empty for an open system.
    Result compute(const std::vector<double> &positions, const std::vector<int32_t> &atomic_numbers,
                   const std::vector<double> &cell = {}, std::array<bool, 3> pbc = {false, false, false}) const {
        const size_t n = atomic_numbers.size();
        if (positions.size() != 3 * n) {
            throw Error(PILIP_ERROR_INVALID_ARGUMENT, "pilip::Model::compute: positions must hold 3 values per atom");
        }
        if (!cell.empty() && cell.size() != 9) {
            throw Error(PILIP_ERROR_INVALID_ARGUMENT, "pilip::Model::compute: cell must hold 9 values or none");
        }
        Result r;
        r.atomic_energies.resize(n);
        r.forces.resize(3 * n);
        check(pilip_model_compute(model_, n, positions.data(), atomic_numbers.data(),
                                  cell.empty() ? nullptr : cell.data(), pbc.data(), &r.energy,
                                  r.atomic_energies.data(), r.forces.data(), r.virial.data()));
        return r;
    }

    /// Local + ghost atoms with the caller's full neighbour list; every output pointer may be null and is
    /// added to (see pilip_model_compute_neighbors in pilip.h).
    void compute_neighbors(size_t n_total, const double *positions, const int32_t *atomic_numbers, size_t n_centers,
                           const int32_t *centers, const int32_t *neighbor_counts,
                           const int32_t *const *neighbors, double *energy, double *atomic_energies,
                           double *forces, double *virial, double *atomic_virial) const {
        check(pilip_model_compute_neighbors(model_, n_total, positions, atomic_numbers, n_centers, centers,
                                            neighbor_counts, neighbors, energy, atomic_energies, forces, virial,
                                            atomic_virial));
    }

    const pilip_model_t *get() const noexcept { return model_; }

private:
    pilip_model_t *model_ = nullptr;
};

}  // namespace pilip

#endif  // PILIP_HPP
