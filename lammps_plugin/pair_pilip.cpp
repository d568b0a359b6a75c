// pair_style pilip — see docs/lammps.md. Talks to pilip only through include/pilip.hpp (the C API).
#include "pair_pilip.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

using namespace LAMMPS_NS;

namespace {

// A JSON string literal of `s`: options_json carries user paths, which may hold '"', '\' or control characters.
std::string json_string(const std::string &s) {
    std::string out = "\"";
    for (unsigned char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += static_cast<char>(c);
        } else if (c < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
            out += buf;
        } else {
            out += static_cast<char>(c);  // UTF-8 bytes pass through unchanged
        }
    }
    return out + "\"";
}

std::string joined(const std::vector<std::string> &words) {
    std::string s;
    for (const std::string &w : words) s += (s.empty() ? "" : " ") + w;
    return s;
}

}  // namespace

PairPilip::PairPilip(LAMMPS *lmp) : Pair(lmp) {
    single_enable = 0;
    restartinfo = 0;
    one_coeff = 1;
    manybody_flag = 1;
    centroidstressflag = CENTROID_NOTAVAIL;
}

PairPilip::~PairPilip() {
    if (allocated) {
        memory->destroy(setflag);
        memory->destroy(cutsq);
    }
}

void PairPilip::allocate() {
    allocated = 1;
    int n = atom->ntypes + 1;
    memory->create(setflag, n, n, "pair:setflag");
    memory->create(cutsq, n, n, "pair:cutsq");
    map = new int[n];  // freed by Pair::~Pair, filled by map_element2type
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) setflag[i][j] = 0;
}

void PairPilip::check_units() const {
    if (strcmp(update->unit_style, "metal") != 0)
        error->all(FLERR,
                   "pair_style pilip requires 'units metal' (eV, Angstrom), got 'units {}'; pilip models are "
                   "trained in eV and Angstrom",
                   update->unit_style);
}

// pair_style pilip [engine native|tract|ort] [ort_library PATH] [threads N]
void PairPilip::settings(int narg, char **arg) {
    std::string engine = "native", library, threads = "1";
    for (int i = 0; i < narg; i += 2) {
        std::string key = arg[i];
        if (i + 1 >= narg)
            error->all(FLERR, "pair_style pilip: keyword '{}' needs a value (expected: engine native|tract|ort, "
                              "ort_library PATH, threads N)", key);
        std::string value = arg[i + 1];
        if (key == "engine") {
            if (value != "native" && value != "tract" && value != "ort")
                error->all(FLERR, "pair_style pilip: expected 'native', 'tract' or 'ort' after 'engine', got '{}'",
                           value);
            engine = value;
        } else if (key == "ort_library") {
            library = value;
        } else if (key == "threads") {
            char *end = nullptr;
            long t = strtol(value.c_str(), &end, 10);
            if (*end != '\0' || t < 1)
                error->all(FLERR, "pair_style pilip: expected a positive integer after 'threads', got '{}'", value);
            threads = value;
        } else {
            error->all(FLERR, "pair_style pilip: unknown keyword '{}' (expected: engine, ort_library, threads)", key);
        }
    }
    options_json = "{\"engine\": " + json_string(engine) + ", \"threads\": " + threads;
    if (!library.empty()) options_json += ", \"ort_library\": " + json_string(library);
    options_json += "}";
    settings_text = "engine " + engine + ", threads " + threads;
    // Re-issuing pair_style keeps the pair_coeff mapping (LAMMPS only calls settings() again): reload the model
    // so that new keywords take effect now, not silently at the next pair_coeff.
    if (model && options_json != model_options) load_model(model_path, "pair_style pilip");
}

// `command` names what the user typed, for the error message.
void PairPilip::load_model(const std::string &path, const char *command) {
    try {
        model = std::make_unique<pilip::Model>(path, options_json);
    } catch (const pilip::Error &e) {
        // A bad file is the model's fault; otherwise name the pair_style settings the library refused or
        // could not honour (e.g. a missing ort_library, more threads than the library allows).
        if (e.status() == PILIP_ERROR_IO || e.status() == PILIP_ERROR_MODEL)
            error->all(FLERR, "{}: cannot load model '{}': {}", command, path, e.what());
        error->all(FLERR, "{}: cannot load model '{}' ({}): {}", command, path, settings_text, e.what());
    }
    model_path = path;
    model_options = options_json;
}

// pair_coeff * * MODEL.onnx E1 ... En
void PairPilip::coeff(int narg, char **arg) {
    check_units();
    const int ntypes = atom->ntypes;
    if (narg != 3 + ntypes)
        error->all(FLERR,
                   "pair_coeff for pair_style pilip: expected '* * MODEL.onnx' followed by one element (or NULL) "
                   "for each of the {} atom types, got {} arguments",
                   ntypes, narg);
    if (strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
        error->all(FLERR, "pair_coeff for pair_style pilip: the first two arguments must be '* *', got '{} {}'",
                   arg[0], arg[1]);
    if (!allocated) allocate();
    load_model(arg[2], "pair_coeff for pair_style pilip");
    std::vector<int32_t> species;
    std::vector<std::string> symbols;
    try {
        model_cutoff = model->cutoff();
        species = model->species();
        symbols = model->symbols();
    } catch (const pilip::Error &e) {
        error->all(FLERR, "pair_coeff for pair_style pilip: model '{}': {}", arg[2], e.what());
    }
    type_z.assign(ntypes + 1, 0);
    has_null_types = false;
    for (int t = 1; t <= ntypes; t++) {
        std::string sym = arg[2 + t];
        if (sym == "NULL") {
            has_null_types = true;
            continue;
        }
        // The model's own symbols name its species: no element table of our own to disagree with it.
        size_t k = 0;
        while (k < symbols.size() && symbols[k] != sym) k++;
        if (k == symbols.size())
            error->all(FLERR,
                       "pair_coeff for pair_style pilip: element '{}' (atom type {}) is not in model '{}', which "
                       "knows: {}",
                       sym, t, arg[2], joined(symbols));
        type_z[t] = species[k];
    }
    map_element2type(ntypes, arg + 3);
    if (comm->me == 0)
        utils::logmesg(lmp, "pair_style pilip: model {} (pilip {}, format version {}), species {}, cutoff {} A\n",
                       arg[2], pilip::version(), PILIP_MODEL_FORMAT_VERSION, joined(symbols), model_cutoff);
}

void PairPilip::init_style() {
    check_units();
    if (!model) error->all(FLERR, "pair_style pilip: no model loaded; use 'pair_coeff * * MODEL.onnx E1 ... En'");
    if (force->newton_pair == 0)
        error->all(FLERR, "pair_style pilip requires 'newton on' (newton pair on): forces on ghost atoms are "
                          "reverse-communicated; remove 'newton off' from the input");
    if (atom->tag_enable == 0) error->all(FLERR, "pair_style pilip requires atom IDs (atom_modify id yes)");
    neighbor->add_request(this, NeighConst::REQ_FULL);
}

double PairPilip::init_one(int, int) { return model_cutoff; }

void PairPilip::compute(int eflag, int vflag) {
    ev_init(eflag, vflag);
    const int nlocal = atom->nlocal;
    const int nall = nlocal + atom->nghost;
    const int *type = atom->type;
    z_all.resize(nall);
    for (int i = 0; i < nall; i++) z_all[i] = type_z[type[i]];

    // Centres: the list's atoms of mapped types. With NULL types, neighbour lists are filtered into a copy;
    // otherwise LAMMPS's own arrays are passed unchanged (the library masks the special-bond bits).
    const int inum = list->inum;
    centers.clear();
    for (int ii = 0; ii < inum; ii++)
        if (z_all[list->ilist[ii]] != 0) centers.push_back(list->ilist[ii]);
    const int32_t *counts_ptr = list->numneigh;
    const int32_t *const *lists_ptr = list->firstneigh;
    if (has_null_types) {
        counts.assign(nall, 0);
        lists.assign(nall, nullptr);
        flat.clear();
        std::vector<size_t> start(nall, 0);
        for (int i : centers) {
            start[i] = flat.size();
            for (int k = 0; k < list->numneigh[i]; k++) {
                int j = list->firstneigh[i][k] & NEIGHMASK;
                if (z_all[j] != 0) flat.push_back(j);
            }
            counts[i] = static_cast<int32_t>(flat.size() - start[i]);
        }
        for (int i : centers) lists[i] = flat.data() + start[i];
        counts_ptr = counts.data();
        lists_ptr = lists.data();
    }

    double energy = 0.0;
    double virial9[9] = {0.0};
    const bool explicit_virial = vflag_global && !vflag_fdotr;
    if (vflag_atom) vatom9.assign(9 * static_cast<size_t>(nall), 0.0);
    try {
        model->compute_neighbors(nall, nall ? &atom->x[0][0] : nullptr, z_all.data(), centers.size(), centers.data(),
                                 counts_ptr, lists_ptr, eflag_global ? &energy : nullptr,
                                 eflag_atom ? eatom : nullptr, nall ? &atom->f[0][0] : nullptr, explicit_virial ? virial9 : nullptr,
                                 vflag_atom ? vatom9.data() : nullptr);
    } catch (const pilip::Error &e) {
        error->one(FLERR, "pair_style pilip: {}", e.what());
    }
    if (eflag_global) eng_vdwl += energy;
    if (explicit_virial) {
        virial[0] += virial9[0];
        virial[1] += virial9[4];
        virial[2] += virial9[8];
        virial[3] += 0.5 * (virial9[1] + virial9[3]);
        virial[4] += 0.5 * (virial9[2] + virial9[6]);
        virial[5] += 0.5 * (virial9[5] + virial9[7]);
    }
    if (vflag_atom) {
        for (int i = 0; i < nall; i++) {
            const double *w = &vatom9[9 * static_cast<size_t>(i)];
            vatom[i][0] += w[0];
            vatom[i][1] += w[4];
            vatom[i][2] += w[8];
            vatom[i][3] += 0.5 * (w[1] + w[3]);
            vatom[i][4] += 0.5 * (w[2] + w[6]);
            vatom[i][5] += 0.5 * (w[5] + w[7]);
        }
    }
    if (vflag_fdotr) virial_fdotr_compute();
}
