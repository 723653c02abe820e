"""The command line: python -m symad {demo, ir, bench} --help."""

import subprocess
import sys
import textwrap


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "symad", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def test_help():
    r = run("--help")
    assert r.returncode == 0 and "demo" in r.stdout and "ir" in r.stdout
    for sub in ("demo", "ir", "bench"):
        r = run(sub, "--help")
        assert r.returncode == 0 and "usage" in r.stdout


def test_demo_prints_graphs_gradient_and_check():
    r = run("demo")
    assert r.returncode == 0, r.stderr
    assert "%2 = log %0" in r.stdout
    assert "gradient = (5.5, 1.7163378145367738)" in r.stdout
    assert "check_grad" in r.stdout and "passed" in r.stdout


def test_ir_of_a_user_function(tmp_path):
    src = tmp_path / "model.py"
    src.write_text(textwrap.dedent("""
        import numpy as np
        def energy(x, k):
            return k * np.sum(np.cos(x))
    """))
    r = run("ir", f"{src}:energy", "--args", "[0.1, 0.2], 2.0", "--show", "grad")
    assert r.returncode == 0, r.stderr
    assert "graph energy(%0 x[0], %1 x[1], %2 k):" in r.stdout and "sin" in r.stdout
    r = run("ir", f"{src}:energy", "--args", "[0.1, 0.2], 2.0", "--show", "opt")
    assert r.returncode == 0, r.stderr
    assert "define" in r.stdout
    r = run("ir", f"{src}:missing", "--args", "1.0")
    assert r.returncode != 0 and "defines no 'missing'" in r.stderr
