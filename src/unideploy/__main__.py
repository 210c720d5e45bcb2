import sys

from unideploy.cli.main import main

sys.exit(main())
