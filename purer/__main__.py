import sys

from purer.cli.main import main

sys.exit(main())
