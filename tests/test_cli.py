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


def test_ir_of_a_function_in_an_importable_module(tmp_path):
    (tmp_path / "mymodel.py").write_text("import numpy as np\n"
                                         "def energy(x):\n    return np.sum(np.cos(x))\n")
    import os
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path),
                                                        os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "symad", "ir", "mymodel:energy", "--args",
                        "[0.1, 0.2]"], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "graph energy(%0 x[0], %1 x[1]):" in r.stdout and "cos" in r.stdout
    r = run("ir", "no_such_module_xyz:f", "--args", "1.0")
    assert r.returncode != 0 and "cannot import module 'no_such_module_xyz'" in r.stderr


def test_a_closed_pipe_ends_quietly():
    # `symad ir ... | head -2`: the reader goes away after two lines.
    src = "import symad.__main__ as m, sys; sys.exit(m.main(['demo', '--ir']))"
    p = subprocess.Popen([sys.executable, "-c", src], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 0
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_every_help_shows_an_example():
    for sub in ((), ("demo",), ("ir",), ("bench",), ("cache",)):
        r = run(*sub, "--help")
        assert r.returncode == 0 and "example" in r.stdout and "symad " in r.stdout


def test_bench_passes_its_options_to_the_runner_and_names_missing_systems(tmp_path):
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = run("bench", "--list", cwd=root)
    assert r.returncode == 0, r.stderr
    assert "system  symad      installed=True" in r.stdout
    sys.path.insert(0, root)
    from benchmarks import runner
    assert runner.expected_seconds(2, 3, 8.0, True, 20.0, False) == 2 * 3 * 6.0 + 20.0
