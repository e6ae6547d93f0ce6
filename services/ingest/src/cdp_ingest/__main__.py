"""Run the ingest service: `python -m cdp_ingest`."""

from cdp_ingest.main import main

main()
