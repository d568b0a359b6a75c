"""Small structures shared by the Python tests."""
import numpy as np


def ethanol():
    """An ethanol geometry (Å) and its atomic numbers (C C O H H H H H H)."""
    pos = np.array([
        [-0.0014, 0.5727, 0.0000], [1.2155, -0.3297, 0.0000], [-1.1678, -0.2269, 0.0000],
        [-0.0456, 1.2168, 0.8834], [-0.0456, 1.2168, -0.8834], [2.1432, 0.2520, 0.0000],
        [1.2012, -0.9640, 0.8880], [1.2012, -0.9640, -0.8880], [-1.9547, 0.3327, 0.0000]])
    return pos, np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])
