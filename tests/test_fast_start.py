"""A warm command loads nothing it does not use (issue 21.5): facts about imports, not timings.

``python -m patentqa.data +exp=smoke`` on a warm cache spent ~2.5 s importing torch only to learn
that the GME embedder would run on the CPU, when every page and question vector was cached and no
model was loaded. On a machine with no GPU driver the device is known without torch.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_gme_embedder_on_a_machine_without_gpu_decides_cpu_without_torch(tmp_path: Path) -> None:
    tiny = tmp_path / "gme"  # a tiny test model (its marker file): may run on the CPU, no NoGPU
    tiny.mkdir()
    (tiny / "tiny.json").write_text("{}")
    probe = (f"import json, sys\n"
             f"from patentqa.data.embed import GmeEmbedder\nfrom patentqa.device import gpu_driver_present\n"
             f"e = GmeEmbedder({str(tiny)!r}, {str(tmp_path / 'cache')!r}, min_pixels=1, max_pixels=2, "
             f"query_instruction='q', device='auto')\n"
             f"print(json.dumps([e.device, e.dtype, 'torch' in sys.modules, gpu_driver_present()]))")
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    device, dtype, torch_loaded, reported = json.loads(out.strip().splitlines()[-1])
    # a GPU kernel driver's device files, looked at here (NVIDIA, AMD ROCm, WSL), not by the function under test
    dev = Path("/dev")
    driver = (Path("/proc/driver/nvidia").exists() or (dev / "kfd").exists() or (dev / "dxg").exists()
              or any(dev.glob("nvidia*")))
    assert reported == driver and torch_loaded == driver  # torch is asked only where CUDA could work
    if not driver:  # this machine and CI: no GPU
        assert (device, dtype) == ("cpu", "float32")
