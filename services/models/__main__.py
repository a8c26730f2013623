"""`python -m services.models build`: build (or list) the model cache."""

import sys

from services.models.cache import main

if __name__ == "__main__":
    sys.exit(main())
