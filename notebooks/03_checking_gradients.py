# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Checking gradients
#
# Numerical differentiation is a **checker**, not a method: it is slow (two function
# evaluations per input) and inexact, but it needs nothing but the function, so it is the
# independent witness against which AD gradients are tested. This notebook shows
#
# 1. central differences and their $O(h^2)$ error, down to the round-off floor;
# 2. the random-direction test `symad.check_grad` uses;
# 3. what a wrong gradient looks like to these checks.

# %%
import json

import matplotlib.pyplot as plt
import numpy as np

import symad

EPS = np.finfo(np.float64).eps


def f(x1, x2):
    return np.log(x1) + x1 * x2 - np.sin(x2)


x0 = (2.0, 5.0)
exact = symad.grad(f, (0, 1))(*x0)
print("AD gradient at (2, 5):", exact, " (exact: 1/x1 + x2 = 5.5, x1 - cos x2)")

# %% [markdown]
# ## 1. Central differences: error against step size
#
# $\frac{f(x+h) - f(x-h)}{2h} = f'(x) + \frac{h^2}{6} f'''(x) + O(h^4)$: the truncation
# error falls as $h^2$. But $f(x \pm h)$ carry round-off of about $\varepsilon |f|$, which
# the division by $2h$ magnifies to $\sim \varepsilon |f| / h$. The total error is smallest
# near $h \approx \sqrt[3]{\varepsilon} \approx 6 \cdot 10^{-6}$, where it is about
# $\varepsilon^{2/3} \approx 4 \cdot 10^{-11}$ (relative). Forward differences
# $\frac{f(x+h) - f(x)}{h}$ are only $O(h)$, with their optimum near $\sqrt{\varepsilon}$.

# %%
hs = np.logspace(-14, -1, 53)
d_exact = float(exact[0])          # d f / d x1 at (2, 5)


def f1(x):
    return f(x, x0[1])


central = np.array([abs((f1(x0[0] + h) - f1(x0[0] - h)) / (2 * h) - d_exact) for h in hs])
forward = np.array([abs((f1(x0[0] + h) - f1(x0[0])) / h - d_exact) for h in hs])
central_rel, forward_rel = central / abs(d_exact), forward / abs(d_exact)

# truncation model for central differences: h^2 |f'''| / 6, with f''' = 2 / x1^3
trunc = hs**2 * (2 / x0[0] ** 3) / 6 / abs(d_exact)
roundoff = EPS * abs(f1(x0[0])) / hs / abs(d_exact)

fig, ax = plt.subplots(figsize=(7, 5))
ax.loglog(hs, central_rel, "o-", ms=3, label="central difference")
ax.loglog(hs, forward_rel, "s-", ms=3, alpha=0.6, label="forward difference")
ax.loglog(hs, trunc, "--", color="grey", label=r"$h^2 |f'''| / 6$ (truncation)")
ax.loglog(hs, roundoff, ":", color="grey", label=r"$\varepsilon |f| / h$ (round-off)")
ax.axvline(EPS ** (1 / 3), color="k", lw=0.5)
ax.text(EPS ** (1 / 3) * 1.3, 1e-3, r"$h = \sqrt[3]{\varepsilon}$")
ax.set_ylim(1e-17, 1)
ax.set_xlabel("step h")
ax.set_ylabel("relative error")
ax.set_title(r"Error of finite differences for $\partial f / \partial x_1$")
ax.legend(loc="lower left")
plt.show()

# %% [markdown]
# The slope of the central-difference curve on the right (truncation region) is 2, on
# the left (round-off region) about −1; the best error is at most about $\varepsilon^{2/3}$.

# %%
right = (hs > 1e-4) & (hs < 1e-1)
slope_trunc = np.polyfit(np.log(hs[right]), np.log(central_rel[right]), 1)[0]
left = hs < 1e-9
slope_round = np.polyfit(np.log(hs[left]), np.log(central_rel[left] + 1e-300), 1)[0]
best = int(np.argmin(central_rel))
print(f"slope in truncation region: {slope_trunc:.2f} (expected 2)")
print(f"slope in round-off region:  {slope_round:.2f} (expected about -1, noisy)")
print(f"best h = {hs[best]:.1e}, relative error {central_rel[best]:.1e} "
      f"(cbrt(eps) = {EPS ** (1 / 3):.1e}, eps^(2/3) = {EPS ** (2 / 3):.1e})")
best_forward = int(np.argmin(forward_rel))
print(f"forward differences: best h = {hs[best_forward]:.1e}, "
      f"relative error {forward_rel[best_forward]:.1e}")

# %% [markdown]
# `symad.numerical_grad` uses that step, scaled by $\max(1, |x_i|)$:

# %%
ng = symad.numerical_grad(f, *x0)
print("numerical:", ng)
print("AD:       ", exact)
print("relative errors:", [abs(a - b) / abs(b) for a, b in zip(ng, exact)])

# %% [markdown]
# ## 2. The random-direction test
#
# Checking every input with central differences costs 2n evaluations. Instead, pick a
# random unit direction $\delta$ and compare one directional derivative with the
# gradient: $\delta^\top \nabla f(x) \approx \frac{f(x + \epsilon\delta) -
# f(x - \epsilon\delta)}{2\epsilon}$. A wrong gradient component would have to be exactly
# orthogonal to a random $\delta$ to slip through. `symad.check_grad` runs this for
# reverse mode and forward mode (and with `order=2` for second derivatives), with seeded
# directions, and raises `symad.GradientCheckError` on a mismatch.

# %%
rng = np.random.default_rng(0)
W = rng.standard_normal((4, 6))


def loss(w):
    return np.sum(np.tanh(W @ w) ** 2) + 0.1 * np.sum(w**2)


w0 = rng.standard_normal(6)
g_ad = symad.grad(loss)(w0)
eps_dir = 1e-5
print(f"{'direction':>10} {'<delta, grad> (AD)':>22} {'central difference':>22} {'rel err':>9}")
dir_errors = []
for k in range(5):
    delta = rng.standard_normal(6)
    delta /= np.linalg.norm(delta)
    lhs = float(delta @ g_ad)
    rhs = (loss(w0 + eps_dir * delta) - loss(w0 - eps_dir * delta)) / (2 * eps_dir)
    dir_errors.append(abs(lhs - rhs) / abs(rhs))
    print(f"{k:>10} {lhs:>22.12f} {rhs:>22.12f} {dir_errors[-1]:>9.1e}")

symad.check_grad(loss, w0, order=2)
print("symad.check_grad(loss, w0, order=2): passed (reverse, forward, second order)")

# %% [markdown]
# ## 3. What a wrong gradient looks like
#
# Suppose we had derived the gradient of `loss` by hand and dropped the factor 2 of the
# chain rule through the square: $\partial/\partial w \sum \tanh(Ww)^2 =
# W^\top (2 \tanh(Ww)(1 - \tanh^2(Ww)))$.


# %%
def loss_grad_by_hand(w, buggy=True):
    t = np.tanh(W @ w)
    factor = 1.0 if buggy else 2.0
    return W.T @ (factor * t * (1 - t**2)) + 0.2 * w


print("AD vs correct hand gradient: max |diff| =",
      np.max(np.abs(g_ad - loss_grad_by_hand(w0, buggy=False))))
rng = np.random.default_rng(1)
bug_errors = []
for k in range(3):
    delta = rng.standard_normal(6)
    delta /= np.linalg.norm(delta)
    lhs = float(delta @ loss_grad_by_hand(w0))
    rhs = (loss(w0 + eps_dir * delta) - loss(w0 - eps_dir * delta)) / (2 * eps_dir)
    bug_errors.append(abs(lhs - rhs) / abs(rhs))
    print(f"direction {k}: <delta, buggy grad> = {lhs:.8f}, "
          f"central difference = {rhs:.8f}, rel err {bug_errors[-1]:.1e}")

# %% [markdown]
# A right gradient agrees to ~$10^{-10}$ (limited by the finite difference); a wrong one
# disagrees at the level of the bug, here tens of percent. Nothing in between is
# ambiguous, which is why a loose tolerance such as `rtol=1e-5` is enough.
#
# symad's own gradients can also *look* wrong to the checker where the function is not
# differentiable: at a jump of `floor`, the AD derivative is the documented convention
# (`floor' = 0`) while the finite difference straddles the jump. `check_grad` then says
# exactly which check failed and by how much:

# %%
def staircase(x):
    return np.floor(4 * x) + x


try:
    symad.check_grad(staircase, 0.25)     # 4 * 0.25 == 1.0: right on a jump
    caught = None
except symad.GradientCheckError as e:
    caught = str(e)
    print("GradientCheckError:", caught)
symad.check_grad(staircase, 0.3)           # away from the jumps the check passes
print("at x = 0.3 the check passes: floor' = 0 there, and d/dx staircase = 1")

# %% [markdown]
# The numbers this notebook's test checks (`tests/test_notebooks.py`):

# %%
KEY = {
    "slope_truncation": float(slope_trunc),
    "best_h": float(hs[best]),
    "best_rel_error": float(central_rel[best]),
    "max_direction_rel_error": float(max(dir_errors)),
    "min_buggy_rel_error": float(min(bug_errors)),
    "floor_jump_caught": caught is not None,
}
print("SYMAD_KEY_NUMBERS " + json.dumps(KEY))
