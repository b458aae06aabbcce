"""Names and CF attributes shared by everything dynfield reads and writes.

One place for them, so the solver, the loaders, the codec and the analysis
never disagree on what a dimension or a variable is called.
"""

SAMPLE, TIME, Z, Y, X = "sample", "time", "z", "y", "x"
DIMS = (SAMPLE, TIME, Z, Y, X)
SPATIAL_DIMS = (Z, Y, X)

CF_CONVENTIONS = "CF-1.8"

# Attributes of the variables the built-in turbulence data set writes.
# Units are those of the nondimensional solver (box of side 2*pi).
VARIABLE_ATTRS = {
    "u": {"units": "1", "long_name": "x-component of velocity", "standard_name": "eastward_velocity"},
    "v": {"units": "1", "long_name": "y-component of velocity", "standard_name": "northward_velocity"},
    "vorticity": {"units": "1", "long_name": "vertical vorticity (dv/dx - du/dy)"},
    "scalar": {"units": "1", "long_name": "passive scalar concentration"},
}

COORD_ATTRS = {
    X: {"units": "1", "long_name": "x coordinate (periodic, length 2*pi)", "axis": "X"},
    Y: {"units": "1", "long_name": "y coordinate (periodic, length 2*pi)", "axis": "Y"},
    SAMPLE: {"long_name": "snapshot index"},
}

# Velocity components by the spatial axis they point along. A flip of that
# axis negates the component; loaders and augmentations read this table.
VELOCITY_COMPONENTS = {X: ("u", "vx", "velocity_x", "ux"), Y: ("v", "vy", "velocity_y", "uy"), Z: ("w", "vz", "velocity_z", "uz")}

# Pseudo-scalars: channels that change sign when one horizontal axis is
# reflected, like the vertical vorticity dv/dx - du/dy (under x -> -x, u -> -u
# and d/dx -> -d/dx, so the curl flips sign) and the stream function. Matched
# case-insensitively, like VELOCITY_COMPONENTS. "zeta" and "omega" are left out
# on purpose: models also use them for sea-surface height and pressure velocity.
PSEUDO_SCALARS = ("vorticity", "vort", "streamfunction", "psi")

COORD_ATTRS[TIME] = {"units": "1", "long_name": "time (nondimensional)", "axis": "T"}

# Channel names read as the vertical vorticity itself (matched case-insensitively).
VORTICITY_NAMES = ("vorticity", "vort")

# The one channel of a channel-agnostic tokenizer: any 2D field, normalised by its own mean and std.
AGNOSTIC_CHANNEL = "field"
