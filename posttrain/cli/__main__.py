"""``python -m posttrain.cli``: the same as the ``posttrain`` command."""

import sys

from posttrain.cli import main

if __name__ == "__main__":  # importing the module (tests import every module) runs nothing
    sys.exit(main())
