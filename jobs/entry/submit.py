"""The file spark-submit runs: ``spark-submit [--jars ...] jobs/entry/submit.py ingest --service green ...``.

Absolute import, so it works both from an installed package and from ``--py-files taxi_jobs.zip`` on a cluster.
"""

import sys

from jobs.entry.cli import main

if __name__ == "__main__":
    sys.exit(main())
