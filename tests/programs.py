"""Array programs several test modules compile: numpy code as users write it."""

import numpy as np


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def lennard_jones(x):
    n = x.shape[0] // 3
    p = x.reshape(n, 3)
    i, j = np.triu_indices(n, 1)
    d = p[i] - p[j]
    r2 = np.sum(d * d, axis=-1)
    s6 = 1.0 / (r2 * r2 * r2)
    return np.sum(4.0 * (s6 * s6 - s6))
