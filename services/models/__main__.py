"""`python -m services.models build|path|list|fetch`: build the model cache, or fetch a model
source into it (the storage initializer, `services.models.fetch`)."""

import sys

from services.models.cache import main

if __name__ == "__main__":
    sys.exit(main())
