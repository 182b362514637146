"""The runtime checks the compiler rather than agreeing with it: it must never import ``pimc``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RUNTIME = Path(__file__).resolve().parent.parent / "runtime"


def test_runtime_modules_load_no_pimc_module():
    mods = sorted(p.stem for p in RUNTIME.glob("*.py") if p.stem != "__init__")
    assert {"executor", "kernels", "cost", "report", "intmath"} <= set(mods)
    code = (
        "import sys, importlib\n"
        f"for m in {mods!r}:\n"
        "    importlib.import_module('runtime.' + m)\n"
        "bad = sorted(m for m in sys.modules if m == 'pimc' or m.startswith('pimc.'))\n"
        "print(','.join(bad))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"runtime imported {res.stdout.strip()}"


def test_running_a_program_loads_no_pimc_module():
    code = (
        "import sys, numpy as np\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_executor import dense_program\n"
        "from runtime.executor import run_program\n"
        "from runtime.report import summary\n"
        "out, rep = run_program(dense_program(np.array([[1, -1], [2, 3]])), {'x': np.ones((2, 2), np.float32)}, fast_path=False)\n"
        "summary(rep)\n"
        "bad = sorted(m for m in sys.modules if m == 'pimc' or m.startswith('pimc.'))\n"
        "print(','.join(bad))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"running a program imported {res.stdout.strip()}"
