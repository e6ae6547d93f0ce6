"""Run the segment service: `python -m cdp_segment`."""

from cdp_segment.main import main

main()
