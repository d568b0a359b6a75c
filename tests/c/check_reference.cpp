// The C++ wrapper (pilip.hpp): same reference comparison as check_reference.c, through RAII and exceptions.
// Usage: check_reference_cpp MODEL.onnx REFERENCE.txt
#include <cmath>
#include <fstream>
#include <iostream>
#include <thread>

#include "pilip.hpp"

int main(int argc, char **argv) {
    if (argc != 3) {
        std::cerr << "usage: " << argv[0] << " MODEL.onnx REFERENCE.txt\n";
        return 2;
    }
    int failures = 0;
    auto expect = [&](bool ok, const char *what) {
        if (!ok) {
            std::cerr << "FAILED: " << what << "\n";
            failures++;
        }
    };
    pilip::Model model(argv[1]);
    expect(model.cutoff() > 0.0, "cutoff");
    expect(!model.species().empty(), "species");
    const std::vector<std::string> symbols = model.symbols();
    expect(!symbols.empty() && symbols.size() == model.species().size() && !symbols[0].empty(), "one symbol per species");
    std::ifstream ref(argv[2]);
    int n_structures = 0;
    ref >> n_structures;
    for (int s = 0; s < n_structures; s++) {
        size_t n = 0;
        int periodic = 0;
        ref >> n >> periodic;
        std::vector<double> cell(9), pos(3 * n), ref_ae(n), ref_f(3 * n);
        std::vector<int32_t> z(n);
        for (auto &c : cell) ref >> c;
        for (size_t i = 0; i < n; i++) {
            ref >> z[i] >> pos[3 * i] >> pos[3 * i + 1] >> pos[3 * i + 2] >> ref_ae[i] >> ref_f[3 * i] >>
                ref_f[3 * i + 1] >> ref_f[3 * i + 2];
        }
        double ref_energy = 0.0;
        std::array<double, 9> ref_virial{};
        ref >> ref_energy;
        for (auto &v : ref_virial) ref >> v;
        if (!ref) {
            std::cerr << "malformed reference file\n";
            return 2;
        }
        std::array<bool, 3> pbc{periodic != 0, periodic != 0, periodic != 0};
        auto r = model.compute(pos, z, periodic ? cell : std::vector<double>{}, pbc);
        auto rel = [](double a, double b) { return std::fabs(a - b) / std::max(std::fabs(b), 1.0); };
        double worst = rel(r.energy, ref_energy);
        for (size_t i = 0; i < n; i++) {
            worst = std::max(worst, rel(r.atomic_energies[i], ref_ae[i]));
            for (int k = 0; k < 3; k++) worst = std::max(worst, rel(r.forces[3 * i + k], ref_f[3 * i + k]));
        }
        for (int k = 0; k < 9; k++) worst = std::max(worst, rel(r.virial[k], ref_virial[k]));
        std::cout << "structure " << s << ": " << n << " atoms, max relative deviation from Rust " << worst << "\n";
        expect(worst < 1e-12, "results equal the Rust results");

        // Four threads share the model and get the serial result bit for bit.
        std::vector<std::thread> threads;
        std::vector<double> energies(4);
        for (int t = 0; t < 4; t++)
            threads.emplace_back([&, t] { energies[t] = model.compute(pos, z, periodic ? cell : std::vector<double>{}, pbc).energy; });
        for (auto &t : threads) t.join();
        for (double e : energies) expect(e == r.energy, "threads agree with the serial call");
    }
    try {
        pilip::Model missing("/nonexistent/model.onnx");
        expect(false, "loading a missing file throws");
    } catch (const pilip::Error &e) {
        expect(e.status() == PILIP_ERROR_IO, "missing file status");
        expect(std::string(e.what()).find("/nonexistent/model.onnx") != std::string::npos, "message names the file");
    }
    pilip::Model moved = std::move(model);
    expect(moved.cutoff() > 0.0, "moved model works");
    if (failures == 0) std::cout << "C++ API: all checks passed\n";
    return failures == 0 ? 0 : 1;
}
