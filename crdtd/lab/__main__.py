"""``python -m crdtd.lab``: see `crdtd.lab.cli`."""

from crdtd.lab.cli import main

raise SystemExit(main())
