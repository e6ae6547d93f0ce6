"""Run the profile service: `python -m cdp_profile`."""

from cdp_profile.main import main

main()
