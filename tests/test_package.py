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


def test_ci_runs_the_readme_commands_word_for_word() -> None:
    # A fresh machine must pass with nothing but the README's second command (the one that
    # installs what the tests need), so CI runs exactly that line and nothing installs before it.
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text().split("```sh\n", 1)[1].split("```", 1)[0]
    test_cmd = readme.splitlines()[1].split("   #", 1)[0].strip()
    assert test_cmd.startswith("bash .ci/install-system-deps && pip install '.[test]'")
    ci = (root / ".ci" / "run").read_text()
    assert f"\n{test_cmd} || " in ci, "the README's test command and .ci/run differ"
    before = ci.split(f"\n{test_cmd} || ", 1)[0]
    for installer in ("apt-get", "pip install", "install-system-deps"):
        assert installer not in before, f".ci/run installs with {installer} before the README line"
