"""tmpdiff web app: `python app.py [--model M] [--db PATH] [--host 127.0.0.1] [--port 7860] [--share]`.

The entry point of a checkout and of a Hugging Face Space; the code is `tmpdiff/ui/serve.py`, which an
installed tmpdiff runs as `tmpdiff-app`.
"""

import sys

from tmpdiff.ui.serve import build, main, parse_args, port_in_use

__all__ = ["build", "main", "parse_args", "port_in_use"]

if __name__ == "__main__":
    sys.exit(main())
