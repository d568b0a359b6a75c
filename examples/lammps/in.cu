# Periodic fcc Cu (256 atoms) with a pilip model: 2 ps NVT at 600 K, then 2 ps NVE, 1 fs steps, with the
# pressure tensor and per-atom energies and virials (compute pe/atom, stress/atom).
# Run: lmp -in in.cu -var model cu.onnx -var plugin /path/to/pilipplugin.so
units metal
atom_style atomic
lattice fcc 3.615
region box block 0 4 0 4 0 4
create_box 1 box
create_atoms 1 box
mass 1 63.546

plugin load ${plugin}
pair_style pilip
pair_coeff * * ${model} Cu

compute pe_atom all pe/atom
compute stress_atom all stress/atom NULL
velocity all create 600 4928459 loop geom
timestep 0.001
thermo 200
thermo_style custom step temp pe ke etotal press pxx pyy pzz

fix nvt all nvt temp 600 600 0.1
run 2000
unfix nvt
fix nve all nve
run 2000
