"""`python -m renderfarm.manager`: run the manager with the settings of the environment."""

import logging
import sys

from renderfarm.config import load_settings
from renderfarm.errors import RenderFarmError
from renderfarm.manager import run_manager


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_manager(load_settings())
    except RenderFarmError as e:
        print(f"farm manager: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
