"""`python -m tf_gru4rec.cli`: the `tf-gru4rec` command without the huge-page restart."""

import sys

from tf_gru4rec.cli.main import main

sys.exit(main())
