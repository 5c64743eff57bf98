"""`python -m chexvision_lib.cli` (and `torchrun -m chexvision_lib.cli`) is `chexvision`."""

import sys

from chexvision_lib.cli.main import main

sys.exit(main())
