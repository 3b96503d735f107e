from __future__ import annotations

import subprocess
import sys


def test_storage_imports_no_torch_and_no_other_layers() -> None:
    code = ("import sys, storage.repo, storage.export, storage.cli, storage.db, storage.files, storage.importer; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'app', 'train', 'resi_core')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
