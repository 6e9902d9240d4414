"""``python -m pspnet`` (and ``torchrun -m pspnet train``)."""

import sys

from pspnet.cli import main

if __name__ == "__main__":
    sys.exit(main())
