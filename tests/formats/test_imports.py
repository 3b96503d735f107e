from __future__ import annotations

import subprocess
import sys


def test_formats_imports_no_torch_and_none_of_the_other_packages() -> None:
    code = ("import sys, formats.images, formats.rle, formats.names, formats.coco, formats.panoptic; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'app', 'train', 'resi_core', 'storage')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
