import subprocess
import sys

import kbypass


def test_import_without_privileges_reports_version() -> None:
    assert isinstance(kbypass.__version__, str)
    assert kbypass.__version__.count(".") == 2


def test_import_in_fresh_interpreter_as_nobody_works() -> None:
    # `import kbypass` must not need root, hugepages or a NIC.
    code = "import kbypass; print(kbypass.__version__)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == kbypass.__version__
