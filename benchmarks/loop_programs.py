"""Programs that loop in Python over data points or model parts (issue 19's build-time
problems), and their build time, call times and peak build memory.

Each is written the way its users write it, with plain numpy and Python loops, so tracing
unrolls the loops into a large graph: a Gaussian-mixture log-likelihood with a loop over
points and a log-sum-exp per point, a hand-skinning model (a loop over bones composing 4x4
rigid transforms, then a loop over skinned points), and a two-layer LSTM over a character
sequence. ``python -m benchmarks.loop_programs [--small] [--jax]`` prints one row each:
first-call build time (trace + AD + LLVM), value and value+gradient call times, their
ratio, and the peak Python memory of the build (tracemalloc; the LLVM heap is not counted).
With ``--jax`` the same functions written with ``jax.numpy`` are timed for ``jit`` build
and calls (run with a Python that has jax: ``/work/benchvenv`` or the ``[bench]`` extra).
"""

from __future__ import annotations

import argparse
import functools
import time
import tracemalloc

import numpy as np

# ---- the programs (m: numpy, or jax.numpy) ----------------------------------------------------

def gmm_loop(m, theta, X, K):
    """Negative log-likelihood of the points X under K diagonal Gaussians, a loop over the
    points with a log-sum-exp over the components per point."""
    d = X.shape[1]
    p = theta.reshape(K, 2 * d + 1)
    mu, log_s, logit = p[:, :d], p[:, d:2 * d], p[:, 2 * d]
    log_w = logit - m.log(m.sum(m.exp(logit)))
    inv_var = m.exp(-2.0 * log_s)
    log_norm = log_w - m.sum(log_s, axis=1) - 0.5 * d * np.log(2.0 * np.pi)
    total = 0.0
    for x in X:
        diff = x - mu
        log_p = log_norm - 0.5 * m.sum(diff * diff * inv_var, axis=1)
        top = m.max(log_p)
        total = total - (top + m.log(m.sum(m.exp(log_p - top))))
    return total


def _rotation(m, axis_angle):
    """Rodrigues' formula, written per entry (as skinning code often does)."""
    ax, ay, az = axis_angle[0], axis_angle[1], axis_angle[2]
    t = m.sqrt(ax * ax + ay * ay + az * az + 1e-12)
    kx, ky, kz = ax / t, ay / t, az / t
    c, s = m.cos(t), m.sin(t)
    v = 1.0 - c
    return [[c + kx * kx * v, kx * ky * v - kz * s, kx * kz * v + ky * s],
            [ky * kx * v + kz * s, c + ky * ky * v, ky * kz * v - kx * s],
            [kz * kx * v - ky * s, kz * ky * v + kx * s, c + kz * kz * v]]


def skinning(m, pose, rest, weights, offsets, parents, targets):
    """Squared distance of linearly skinned points to targets: a loop over bones building
    4x4 rigid transforms down the kinematic chain, then a loop over the skinned points."""
    n_bones = len(parents)
    world = []
    for b in range(n_bones):
        r = _rotation(m, pose[3 * b:3 * b + 3])
        local = [[r[0][0], r[0][1], r[0][2], offsets[b, 0]],
                 [r[1][0], r[1][1], r[1][2], offsets[b, 1]],
                 [r[2][0], r[2][1], r[2][2], offsets[b, 2]],
                 [0.0, 0.0, 0.0, 1.0]]
        if parents[b] < 0:
            world.append(local)
        else:
            pw = world[parents[b]]
            world.append([[sum(pw[i][k] * local[k][j] for k in range(4)) for j in range(4)]
                          for i in range(4)])
    loss = 0.0
    for p in range(rest.shape[0]):
        x = [0.0, 0.0, 0.0]
        for b in range(n_bones):
            w = weights[p, b]
            if w == 0.0:
                continue
            tb = world[b]
            for i in range(3):
                x[i] = x[i] + w * (tb[i][0] * rest[p, 0] + tb[i][1] * rest[p, 1]
                                   + tb[i][2] * rest[p, 2] + tb[i][3])
        for i in range(3):
            loss = loss + (x[i] - targets[p, i]) ** 2
    return loss


def lstm(m, params, text, vocab, hidden):
    """Cross-entropy of a two-layer LSTM predicting each next character of ``text``."""
    sizes = _lstm_sizes(vocab, hidden)
    parts, start = {}, 0
    for name, shape in sizes:
        n = int(np.prod(shape))
        parts[name] = params[start:start + n].reshape(shape)
        start += n

    def sigmoid(z):
        return 1.0 / (1.0 + m.exp(-z))

    def cell(x, h, c, W, b):
        gates = W @ m.concatenate([x, h]) + b
        i, f = sigmoid(gates[:hidden]), sigmoid(gates[hidden:2 * hidden])
        o, g = sigmoid(gates[2 * hidden:3 * hidden]), m.tanh(gates[3 * hidden:])
        c = f * c + i * g
        return o * m.tanh(c), c

    h1 = c1 = h2 = c2 = np.zeros(hidden)
    loss = 0.0
    eye = np.eye(vocab)
    for t in range(len(text) - 1):
        h1, c1 = cell(eye[text[t]], h1, c1, parts["W1"], parts["b1"])
        h2, c2 = cell(h1, h2, c2, parts["W2"], parts["b2"])
        logits = parts["Wy"] @ h2 + parts["by"]
        top = m.max(logits)
        loss = loss + top + m.log(m.sum(m.exp(logits - top))) - logits[text[t + 1]]
    return loss / (len(text) - 1)


def _lstm_sizes(vocab, hidden):
    return [("W1", (4 * hidden, vocab + hidden)), ("b1", (4 * hidden,)),
            ("W2", (4 * hidden, 2 * hidden)), ("b2", (4 * hidden,)),
            ("Wy", (vocab, hidden)), ("by", (vocab,))]


# ---- problem instances ----------------------------------------------------------------------

def make_programs(small: bool = False):
    """(name, fn(m, x), x0) for the three programs at the issue's sizes (``small``: a
    tenth, for a quick check)."""
    rng = np.random.default_rng(19)
    n_points = 100 if small else 1000
    K, d = 3, 2
    means = rng.normal(0.0, 3.0, (K, d))
    X = means[rng.integers(0, K, n_points)] + rng.normal(0.0, 1.0, (n_points, d))
    theta0 = np.concatenate([means, np.zeros((K, d)), np.zeros((K, 1))], axis=1).ravel()

    n_bones, n_skin = (6, 10) if small else (22, 100)
    parents = [-1] + [int(rng.integers(0, b)) for b in range(1, n_bones)]
    offsets = rng.normal(0.0, 0.3, (n_bones, 3))
    rest = rng.normal(0.0, 1.0, (n_skin, 3))
    weights = np.zeros((n_skin, n_bones))
    for p in range(n_skin):             # each point follows up to 3 bones
        bones = rng.choice(n_bones, 3, replace=False)
        weights[p, bones] = rng.dirichlet(np.ones(3))
    targets = rest + rng.normal(0.0, 0.1, rest.shape)
    pose0 = rng.normal(0.0, 0.2, 3 * n_bones)

    vocab, hidden, length = (4, 4, 32) if small else (8, 8, 256)
    text = rng.integers(0, vocab, length)
    n_params = sum(int(np.prod(s)) for _, s in _lstm_sizes(vocab, hidden))
    params0 = rng.normal(0.0, 0.3, n_params)
    return [
        ("gmm_loop", lambda m, x: gmm_loop(m, x, X, K), theta0),
        ("skinning", lambda m, x: skinning(m, x, rest, weights, offsets, parents, targets),
         pose0),
        ("lstm", lambda m, x: lstm(m, x, text, vocab, hidden), params0),
    ]


def _per_call(fn, x, budget=0.3) -> float:
    fn(x)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < budget:
        fn(x)
        n += 1
    return (time.perf_counter() - t0) / max(n, 1)


def measure_symad(name, fn, x0) -> dict:
    import symad
    f = functools.partial(fn, np)
    value = symad.compile(f)
    vg = symad.compile_grad(f, argnums=0)
    tracemalloc.start()
    t = time.perf_counter()
    vg(x0)
    build = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    value(x0)
    t_value, t_vg = _per_call(value, x0), _per_call(vg, x0)
    return {"program": name, "system": "symad", "build_s": build, "peak_build_MiB":
            peak / 2**20, "value_us": t_value * 1e6, "value_grad_us": t_vg * 1e6,
            "ratio": t_vg / t_value, "nodes": vg.stats["nodes"],
            "kernel": vg.stats["kernel"]["kind"]}


def measure_jax(name, fn, x0) -> dict:
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    f = functools.partial(fn, jnp)
    value, vg = jax.jit(f), jax.jit(jax.value_and_grad(f))
    t = time.perf_counter()
    jax.block_until_ready(vg(x0))
    build = time.perf_counter() - t
    jax.block_until_ready(value(x0))
    t_value = _per_call(lambda x: jax.block_until_ready(value(x)), x0)
    t_vg = _per_call(lambda x: jax.block_until_ready(vg(x)), x0)
    return {"program": name, "system": "jax", "build_s": build,
            "value_us": t_value * 1e6, "value_grad_us": t_vg * 1e6, "ratio": t_vg / t_value}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="a tenth of the sizes")
    ap.add_argument("--jax", action="store_true", help="time jax.jit instead of symad")
    ap.add_argument("--only", help="one program's name")
    args = ap.parse_args(argv)
    for name, fn, x0 in make_programs(args.small):
        if args.only and name != args.only:
            continue
        row = (measure_jax if args.jax else measure_symad)(name, fn, x0)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()},
              flush=True)


if __name__ == "__main__":
    main()
