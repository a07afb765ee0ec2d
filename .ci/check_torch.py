"""CI's install check: the installed torch is the version constraints.txt pins, and it computes on the CPU.

It prints which build pip chose (CPU, or CUDA x.y): that depends on where pip looked (README.md,
"Which torch build"), not on the project. CI machines have no GPU, so the tests run on the CPU either way.
"""

import re
import sys
from pathlib import Path

import torch

pin = re.search(r"^torch==(\S+)$", Path("constraints.txt").read_text(), re.MULTILINE)
if pin is None:
    sys.exit("constraints.txt does not pin torch (expected a line torch==X.Y.Z)")
installed = torch.__version__.split("+")[0]
if installed != pin.group(1):
    sys.exit(f"torch {torch.__version__} is installed, but constraints.txt pins torch=={pin.group(1)}")
product = (torch.ones(2, 3) @ torch.ones(3, 2)).sum().item()
if product != 12.0:
    sys.exit(f"torch {torch.__version__} computed a wrong CPU matmul ({product} != 12)")
build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
print(f"torch {torch.__version__}: the pinned version, {build} build, CPU matmul correct")
