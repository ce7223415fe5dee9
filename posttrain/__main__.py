"""``python -m posttrain``: the CLI, for launchers that start a module (``torchrun -m posttrain train CONFIG``)."""

import sys

from posttrain.cli import main

if __name__ == "__main__":  # importing the module (tests import every module) runs nothing
    sys.exit(main())
